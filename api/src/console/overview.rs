//! The overview: sends per minute over the last hour, queue depths,
//! workers online, and each account's health, circuit and quota. The live
//! part is re-read every few seconds (htmx polling of [`live`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup};
use platform::db::{messages, worker_leases};

use super::{error_box, layout, respond, short_id, when, Nav, Session};
use crate::auth::Admin;
use crate::error::ApiError;
use crate::routes::{email_accounts, queues};
use crate::state::AppState;

/// The series of the chart, in the order drawn.
const SERIES: [&str; 4] = ["accepted", "sent", "failed", "bounced"];
const MINUTES: i64 = 60;

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
) -> Response {
    let content = content(&state, &session, admin.ok()).await;
    respond(
        StatusCode::OK,
        layout(
            Some(&session),
            Nav::Overview,
            "Overview",
            html! {
                div #live hx-get="/console/overview/live" hx-trigger="every 5s" hx-swap="innerHTML" {
                    (content)
                }
            },
        ),
    )
}

/// The overview's content alone, for the polling.
pub async fn live(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
) -> Response {
    respond(StatusCode::OK, content(&state, &session, admin.ok()).await)
}

async fn content(state: &AppState, session: &Session, admin: Option<Admin>) -> Markup {
    let now = Utc::now();
    let start =
        now.duration_trunc(Duration::minutes(1)).unwrap_or(now) - Duration::minutes(MINUTES - 1);
    let chart =
        match messages::per_minute(&state.pool, start, session.principal.owner_filter()).await {
            Ok(rows) => chart(start, &rows),
            Err(e) => error_box(&e.into()),
        };
    html! {
        p.updated { "Updated " time datetime=(now.to_rfc3339()) { (when(&now)) } }
        section aria-labelledby="sends" {
            h2 #sends { "Sends per minute, last hour" @if !session.is_admin() { " (your key's messages)" } }
            (chart)
        }
        @if let Some(admin) = admin {
            (admin_sections(state, admin).await)
        }
    }
}

async fn admin_sections(state: &AppState, admin: Admin) -> Markup {
    let queues = queues::list(State(state.clone()), admin.clone()).await;
    let workers = worker_leases::live(&state.pool).await;
    let accounts = email_accounts::list(State(state.clone()), admin).await;
    html! {
        div.columns {
            section aria-labelledby="queues" {
                h2 #queues { "Queues" }
                @match queues {
                    Ok(axum::Json(data)) => {
                        table {
                            thead { tr { th scope="col" { "Queue" } th scope="col" { "Role" } th.num scope="col" { "Ready" } th.num scope="col" { "Consumers" } } }
                            tbody {
                                @for q in &data.data {
                                    tr {
                                        td { code { (q.name) } }
                                        td { (q.role) @if !q.exists { " (not declared)" } }
                                        td.num { (q.messages) }
                                        td.num { (q.consumers) }
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => (error_box(&e)),
                }
            }
            section aria-labelledby="workers" {
                h2 #workers { "Workers online" }
                @match workers {
                    Ok(workers) => {
                        p.big { (workers.len()) }
                        ul.plain {
                            @for w in &workers { li { code { (w.worker_id) } " lease until " (when(&w.expires_at)) } }
                        }
                    }
                    Err(e) => (error_box(&e.into())),
                }
            }
        }
        section aria-labelledby="accounts" {
            h2 #accounts { "Accounts" }
            @match accounts {
                Ok(axum::Json(data)) => {
                    @if data.data.is_empty() { p { "No SMTP account yet. " a href="/console/accounts" { "Add one" } "." } }
                    @else {
                        table {
                            thead { tr {
                                th scope="col" { "Account" } th scope="col" { "Health" } th scope="col" { "Circuit" }
                                th scope="col" { "Quota used today" } th scope="col" { "Last error" }
                            } }
                            tbody {
                                @for a in &data.data {
                                    tr {
                                        td { (a.email) br; small { (short_id(&a.id.to_string())) } }
                                        td { span class={"health " (a.health)} { (a.health) } }
                                        td {
                                            @if let Some(until) = a.circuit_open_until.filter(|u| *u > Utc::now()) {
                                                "open until " (when(&until))
                                            } @else { "closed" }
                                            @if a.consecutive_failures > 0 { br; small { (a.consecutive_failures) " failures in a row" } }
                                        }
                                        td {
                                            label.quota {
                                                progress value=(a.daily_sent_count) max=(a.effective_daily_limit.max(1)) {}
                                                " " (a.daily_sent_count) " / " (a.effective_daily_limit)
                                            }
                                        }
                                        td { @if let Some(e) = &a.last_error { (e) @if let Some(at) = a.last_error_at { br; small { (when(&at)) } } } @else { "—" } }
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => (error_box(&e)),
            }
        }
    }
}

/// The per-minute counts as an inline SVG line chart (one line per
/// series), with the totals as a table for screen readers and a legend.
fn chart(start: DateTime<Utc>, rows: &[(DateTime<Utc>, String, i64)]) -> Markup {
    let mut counts: BTreeMap<&str, Vec<i64>> = SERIES
        .iter()
        .map(|s| (*s, vec![0; MINUTES as usize]))
        .collect();
    for (minute, kind, count) in rows {
        let index = (*minute - start).num_minutes();
        if let (Some(series), true) = (counts.get_mut(kind.as_str()), (0..MINUTES).contains(&index))
        {
            series[index as usize] = *count;
        }
    }
    let max = counts.values().flatten().copied().max().unwrap_or(0).max(1);
    let (width, height, left, bottom, top) = (720.0, 200.0, 40.0, 24.0, 10.0);
    let plot_w = width - left - 10.0;
    let plot_h = height - bottom - top;
    let x = |i: usize| left + plot_w * i as f64 / (MINUTES - 1) as f64;
    let y = |v: i64| top + plot_h - plot_h * v as f64 / max as f64;
    let totals: Vec<(&str, i64)> = SERIES
        .iter()
        .map(|s| (*s, counts[s].iter().sum()))
        .collect();
    let label = totals
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        figure.chart {
            svg viewBox={"0 0 " (width) " " (height)} role="img" aria-label={"Sends per minute in the last hour: " (label)} {
                title { "Sends per minute in the last hour" }
                @for tick in [0, max / 2, max] {
                    line.gridline x1=(left) x2=(width - 10.0) y1=(y(tick)) y2=(y(tick)) {}
                    text.axis x=(left - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (tick) }
                }
                @for (i, label) in [(0usize, "-60 min"), (30, "-30 min"), (59, "now")] {
                    text.axis x=(x(i)) y=(height - 6.0) text-anchor="middle" { (label) }
                }
                @for series in SERIES {
                    polyline class={"series " (series)} fill="none"
                        points=(counts[series].iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect::<Vec<_>>().join(" ")) {}
                }
            }
            figcaption {
                ul.legend {
                    @for (series, total) in &totals {
                        li { span class={"swatch " (series)} aria-hidden="true" {} (series) ": " strong { (total) } }
                    }
                }
            }
        }
    }
}

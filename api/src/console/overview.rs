//! The overview: sends per minute over the last hour, queue depths,
//! workers online, and each account's health, circuit and quota. The live
//! part is re-read every few seconds (htmx polling of [`live`]); the last
//! day, per hour, is drawn with the page (it changes slowly, and reading a
//! day of records every few seconds would cost the database).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup};
use platform::db::messages::{self, Bucket};
use platform::db::worker_leases;

use super::{error_box, layout, respond, short_id, when, Nav, Session};
use crate::auth::Admin;
use crate::error::ApiError;
use crate::routes::{email_accounts, queues};
use crate::state::AppState;

/// The series of the chart, in the order drawn.
const SERIES: [&str; 4] = ["accepted", "sent", "failed", "bounced"];

/// What one chart covers: `buckets` of `width` ending now.
struct Window {
    bucket: Bucket,
    buckets: i64,
    width: Duration,
    title: &'static str,
    /// Axis labels at the start, the middle and the end.
    ticks: [&'static str; 3],
}

const LAST_HOUR: Window = Window {
    bucket: Bucket::Minute,
    buckets: 60,
    width: Duration::minutes(1),
    title: "Sends per minute in the last hour",
    ticks: ["-60 min", "-30 min", "now"],
};

const LAST_DAY: Window = Window {
    bucket: Bucket::Hour,
    buckets: 24,
    width: Duration::hours(1),
    title: "Sends per hour in the last day",
    ticks: ["-24 h", "-12 h", "now"],
};

impl Window {
    /// The start of the oldest bucket.
    fn start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.duration_trunc(self.width).unwrap_or(now) - self.width * (self.buckets - 1) as i32
    }
}

/// A window's chart, or the error in words.
async fn sends_chart(state: &AppState, session: &Session, window: &Window) -> Markup {
    let start = window.start(Utc::now());
    let owner = session.principal.owner_filter();
    match messages::per_bucket(&state.pool, start, window.bucket, owner).await {
        Ok(rows) => chart(window, start, &rows),
        Err(e) => error_box(&e.into()),
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
) -> Response {
    let content = content(&state, &session, admin.ok()).await;
    let day = sends_chart(&state, &session, &LAST_DAY).await;
    let mine = (!session.is_admin()).then_some(" (your key's messages)");
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
                section aria-labelledby="day" {
                    h2 #day { "Sends per hour, last day" @if let Some(mine) = mine { (mine) } }
                    (day)
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
    let chart = sends_chart(state, session, &LAST_HOUR).await;
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

/// The counts per bucket as an inline SVG line chart (one line per
/// series), with the totals in its label for screen readers and a legend.
fn chart(window: &Window, start: DateTime<Utc>, rows: &[(DateTime<Utc>, String, i64)]) -> Markup {
    let buckets = window.buckets;
    let mut counts: BTreeMap<&str, Vec<i64>> = SERIES
        .iter()
        .map(|s| (*s, vec![0; buckets as usize]))
        .collect();
    for (at, kind, count) in rows {
        let index = (*at - start).num_seconds() / window.width.num_seconds().max(1);
        if let (Some(series), true) = (counts.get_mut(kind.as_str()), (0..buckets).contains(&index))
        {
            series[index as usize] = *count;
        }
    }
    let max = counts.values().flatten().copied().max().unwrap_or(0).max(1);
    let (width, height, left, bottom, top) = (720.0, 200.0, 40.0, 24.0, 10.0);
    let plot_w = width - left - 10.0;
    let plot_h = height - bottom - top;
    let x = |i: usize| left + plot_w * i as f64 / (buckets - 1) as f64;
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
            svg viewBox={"0 0 " (width) " " (height)} role="img" aria-label={(window.title) ": " (label)} {
                title { (window.title) }
                @for tick in [0, max / 2, max] {
                    line.gridline x1=(left) x2=(width - 10.0) y1=(y(tick)) y2=(y(tick)) {}
                    text.axis x=(left - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (tick) }
                }
                @for (i, label) in [0, buckets as usize / 2, buckets as usize - 1].into_iter().zip(window.ticks) {
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

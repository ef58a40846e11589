//! Campaigns (admin, as in the REST API): list and create, with the next
//! runs shown in the campaign's time zone as the cron expression is typed;
//! a campaign's page with "run now" and its runs, whose progress bars
//! follow delivery live (htmx polls the runs fragment every second while a
//! run is unfinished, and stops when all are).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::accounts::Done;
use super::messages::time;
use super::{
    error_box, error_page, invalid, layout, notice, respond, short_id, status_of, when, Nav,
    Session,
};
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::routes::campaigns::{self as rest, CampaignRequest, CampaignView, RunView};
use crate::routes::lists::{self, ListView};
use crate::routes::templates::{self, ListTemplatesQuery, TemplateView};
use crate::state::AppState;

mod schedule;
pub use schedule::next_runs;

const TITLE: &str = "Campaigns";

/// Time zones offered as suggestions; any IANA name is accepted.
const ZONES: [&str; 12] = [
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
];

/// The create form as typed. Read from the body by hand: the lists are a
/// repeated field, which `Form` does not collect.
#[derive(Debug, Default)]
pub struct CampaignForm {
    pub name: String,
    pub template_id: String,
    pub list_ids: Vec<String>,
    pub cron: String,
    pub time_zone: String,
    pub variables: String,
    pub starts_at: String,
    pub ends_at: String,
    pub is_active: bool,
    pub missed_run_policy: String,
    pub unsubscribe_scope: String,
}

impl CampaignForm {
    fn blank() -> CampaignForm {
        CampaignForm {
            time_zone: "UTC".into(),
            is_active: true,
            missed_run_policy: "skip".into(),
            unsubscribe_scope: "list".into(),
            ..CampaignForm::default()
        }
    }

    fn from_body(body: &[u8]) -> CampaignForm {
        let mut form = CampaignForm::default();
        for (k, v) in url::form_urlencoded::parse(body) {
            let v = v.into_owned();
            match k.as_ref() {
                "name" => form.name = v,
                "template_id" => form.template_id = v,
                "list_ids" => form.list_ids.push(v),
                "cron" => form.cron = v,
                "time_zone" => form.time_zone = v,
                "variables" => form.variables = v,
                "starts_at" => form.starts_at = v,
                "ends_at" => form.ends_at = v,
                "is_active" => form.is_active = true,
                "missed_run_policy" => form.missed_run_policy = v,
                "unsubscribe_scope" => form.unsubscribe_scope = v,
                _ => {}
            }
        }
        form
    }

    /// The form as the API's create body; what is not even of the right
    /// type is refused naming its field, as the API would.
    fn request(&self) -> Result<CampaignRequest, ApiError> {
        let uuid = |field: &str, raw: &str| {
            raw.trim()
                .parse::<Uuid>()
                .map_err(|_| ApiError::validation(field, format!("choose a {field}")))
        };
        let template_id = uuid("template", &self.template_id)?;
        let list_ids = self
            .list_ids
            .iter()
            .map(|l| uuid("list", l))
            .collect::<Result<Vec<_>, _>>()?;
        let variables: Map<String, Value> = if self.variables.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str(&self.variables) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(ApiError::validation(
                        "variables",
                        "variables must be a JSON object, e.g. {\"name\": \"friend\"}",
                    ))
                }
            }
        };
        let body = json!({
            "name": self.name,
            "template_id": template_id,
            "list_ids": list_ids,
            "variables": variables,
            "cron": self.cron,
            "time_zone": self.time_zone.trim(),
            "starts_at": time("starts_at", &self.starts_at)?,
            "ends_at": time("ends_at", &self.ends_at)?,
            "is_active": self.is_active,
            "missed_run_policy": self.missed_run_policy,
            "unsubscribe_scope": self.unsubscribe_scope,
        });
        serde_json::from_value(body).map_err(crate::extract::invalid_body)
    }
}

/// The templates (first 100 by name) and lists a campaign can use.
async fn choices(
    state: &AppState,
    admin: &Admin,
) -> Result<(Vec<TemplateView>, Vec<ListView>), ApiError> {
    let axum::Json(t) = templates::list(
        State(state.clone()),
        admin.0.clone(),
        QueryParams(ListTemplatesQuery {
            limit: Some(100),
            cursor: None,
        }),
    )
    .await?;
    let axum::Json(l) = lists::list(State(state.clone()), admin.clone()).await?;
    Ok((t.data.items, l.data))
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
) -> Response {
    match admin {
        Ok(admin) => render_index(&state, &session, admin, &CampaignForm::blank(), None).await,
        Err(e) => error_page(Some(&session), Nav::Campaigns, TITLE, e),
    }
}

async fn render_index(
    state: &AppState,
    session: &Session,
    admin: Admin,
    form: &CampaignForm,
    error: Option<&ApiError>,
) -> Response {
    let campaigns = match rest::list(State(state.clone()), admin.clone()).await {
        Ok(axum::Json(data)) => data.data,
        Err(e) => return error_page(Some(session), Nav::Campaigns, TITLE, e),
    };
    let (templates, lists) = match choices(state, &admin).await {
        Ok(found) => found,
        Err(e) => return error_page(Some(session), Nav::Campaigns, TITLE, e),
    };
    let template_names: HashMap<Uuid, &str> =
        templates.iter().map(|t| (t.id, t.name.as_str())).collect();
    let list_names: HashMap<Uuid, &str> = lists.iter().map(|l| (l.id, l.name.as_str())).collect();
    let preview = next_runs(&form.cron, &form.time_zone, None, None, Utc::now());
    let body = html! {
        @if campaigns.is_empty() { p { "No campaign yet." } }
        @else {
            table #campaigns-table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Template" } th scope="col" { "Lists" }
                    th scope="col" { "Schedule" } th scope="col" { "Next run" } th scope="col" { "State" }
                } }
                tbody {
                    @for c in &campaigns {
                        @let template_id = c.template_id.to_string();
                        tr data-campaign=(c.name) {
                            td { a href={"/console/campaigns/" (c.id)} { (c.name) } }
                            td { (template_names.get(&c.template_id).copied().unwrap_or(short_id(&template_id))) }
                            td { @for (i, l) in c.list_ids.iter().enumerate() { @if i > 0 { ", " } (list_names.get(l).copied().unwrap_or("?")) } }
                            td { code { (c.cron) } " " small { (c.time_zone) } }
                            td { @if let Some(at) = c.next_run_at { (schedule::local(&at, &c.time_zone)) } @else { "—" } }
                            td { @if c.is_active { "active" } @else { "inactive" } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="new-campaign" {
            h2 #new-campaign { "Create a campaign" }
            @if let Some(error) = error { (error_box(error)) }
            @if templates.is_empty() || lists.is_empty() {
                p.hint { "A campaign mails a " a href="/console/templates" { "template" } " to the members of " a href="/console/lists" { "lists" } "; create both first." }
            }
            form.card #create-campaign method="post" action="/console/campaigns" {
                (session.csrf_field())
                div.grid {
                    p { label for="name" { "Name" } input #name name="name" type="text" required maxlength="200" value=(form.name) aria-invalid=[invalid(error, "name")]; }
                    p {
                        label for="template_id" { "Template" }
                        select #template_id name="template_id" required aria-invalid=[invalid(error, "template_id").or(invalid(error, "template"))] {
                            option value="" { "choose…" }
                            @for t in &templates { option value=(t.id) selected[form.template_id == t.id.to_string()] { (t.name) } }
                        }
                    }
                    p { label for="cron" { "Cron (5 fields, or 6 with seconds first)" } input #cron name="cron" type="text" required value=(form.cron) placeholder="0 9 * * MON" aria-invalid=[invalid(error, "cron")] aria-describedby="next-runs-box"; }
                    p {
                        label for="time_zone" { "Time zone (IANA name)" }
                        input #time_zone name="time_zone" type="text" required list="zones" value=(form.time_zone) aria-invalid=[invalid(error, "time_zone")];
                        datalist #zones { @for z in ZONES { option value=(z) {} } }
                    }
                    p { label for="starts_at" { "Starts (UTC, optional)" } input #starts_at name="starts_at" type="datetime-local" value=(form.starts_at) aria-invalid=[invalid(error, "starts_at")]; }
                    p { label for="ends_at" { "Ends (UTC, optional)" } input #ends_at name="ends_at" type="datetime-local" value=(form.ends_at) aria-invalid=[invalid(error, "ends_at")]; }
                    p {
                        label for="missed_run_policy" { "Runs missed while no scheduler ran" }
                        select #missed_run_policy name="missed_run_policy" aria-invalid=[invalid(error, "missed_run_policy")] {
                            @for (v, l) in [("skip", "skip them"), ("run_once", "send the latest once")] { option value=(v) selected[form.missed_run_policy == v] { (l) } }
                        }
                    }
                    p {
                        label for="unsubscribe_scope" { "Unsubscribe link" }
                        select #unsubscribe_scope name="unsubscribe_scope" aria-invalid=[invalid(error, "unsubscribe_scope")] {
                            @for (v, l) in [("list", "leaves this campaign's lists"), ("global", "suppresses the address for all mail")] { option value=(v) selected[form.unsubscribe_scope == v] { (l) } }
                        }
                    }
                }
                fieldset aria-invalid=[invalid(error, "list_ids").or(invalid(error, "list"))] {
                    legend { "Lists (the audience; an address on several is mailed once)" }
                    @if lists.is_empty() { p.hint { "No list yet." } }
                    @for l in &lists {
                        label { input type="checkbox" name="list_ids" value=(l.id) checked[form.list_ids.contains(&l.id.to_string())]; " " (l.name) " (" (l.member_count) ")" }
                    }
                }
                p { label for="variables" { "Variables for every recipient (JSON, optional; a member's own win)" } textarea #variables name="variables" rows="2" aria-invalid=[invalid(error, "variables")] { (form.variables) } }
                p { label { input #is_active type="checkbox" name="is_active" value="on" checked[form.is_active]; " Active (runs on its schedule)" } }
                section.card #next-runs-box aria-live="polite"
                    hx-get="/console/campaigns/next-runs" hx-trigger="input delay:400ms from:#cron, input delay:400ms from:#time_zone, change from:#time_zone"
                    hx-include="#cron, #time_zone" hx-sync="this:replace" {
                    (preview)
                }
                p { button type="submit" { "Create campaign" } }
            }
        }
    };
    let status = error.map_or(StatusCode::OK, status_of);
    respond(status, layout(Some(session), Nav::Campaigns, TITLE, body))
}

/// `POST /api/v1/campaigns`, then the campaign's page.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    admin: Result<Admin, ApiError>,
    body: Bytes,
) -> Response {
    let (actor, admin) = match (actor, admin) {
        (Ok(actor), Ok(admin)) => (actor, admin),
        (Err(e), _) | (_, Err(e)) => return error_page(Some(&session), Nav::Campaigns, TITLE, e),
    };
    let form = CampaignForm::from_body(&body);
    let created = match form.request() {
        Ok(request) => rest::create(State(state.clone()), actor, JsonBody(request))
            .await
            .map(|(_, axum::Json(data))| data.data.id),
        Err(e) => Err(e),
    };
    match created {
        Ok(id) => Redirect::to(&format!("/console/campaigns/{id}?done=created")).into_response(),
        Err(e) => render_index(&state, &session, admin, &form, Some(&e)).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ScheduleQuery {
    #[serde(default)]
    pub cron: String,
    #[serde(default)]
    pub time_zone: String,
}

/// The next-run preview fragment (htmx), as the cron is typed.
pub async fn preview(_session: Session, Query(q): Query<ScheduleQuery>) -> Response {
    respond(
        StatusCode::OK,
        next_runs(&q.cron, &q.time_zone, None, None, Utc::now()),
    )
}

/// A campaign's page: its settings, next runs, "run now" and its runs.
pub async fn show(
    State(state): State<AppState>,
    session: Session,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
    Query(done): Query<Done>,
) -> Response {
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => return error_page(Some(&session), Nav::Campaigns, TITLE, e),
    };
    let campaign: CampaignView =
        match rest::get(State(state.clone()), admin.clone(), PathParam(id)).await {
            Ok(axum::Json(data)) => data.data,
            Err(e) => return error_page(Some(&session), Nav::Campaigns, TITLE, e),
        };
    let runs = match runs_fragment(&state, admin.clone(), id).await {
        Ok(markup) => markup,
        Err(e) => return error_page(Some(&session), Nav::Campaigns, TITLE, e),
    };
    let top = notice(match done.done.as_deref() {
        Some("created") => Some("Campaign created."),
        Some("run") => Some("Run started: the scheduler is sending it to the lists."),
        _ => None,
    });
    let (template, lists) = audience(&state, &admin, &campaign).await;
    let upcoming = next_runs(
        &campaign.cron,
        &campaign.time_zone,
        campaign.starts_at,
        campaign.ends_at,
        Utc::now(),
    );
    let body = html! {
        p { a href="/console/campaigns" { "← All campaigns" } }
        (top)
        dl.facts {
            dt { "Template" } dd { a href={"/console/templates/" (campaign.template_id)} { (template) } }
            dt { "Lists" } dd {
                @for (i, (list_id, name)) in lists.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={"/console/lists/" (list_id)} { (name) }
                }
            }
            dt { "Schedule" } dd { code { (campaign.cron) } " in " (campaign.time_zone) }
            dt { "State" } dd { @if campaign.is_active { "active" } @else { "inactive: it runs only when run by hand" } }
            @if let Some(at) = campaign.starts_at { dt { "Starts" } dd { (when(&at)) } }
            @if let Some(at) = campaign.ends_at { dt { "Ends" } dd { (when(&at)) } }
            dt { "Missed runs" } dd { (campaign.missed_run_policy) }
            @if !campaign.variables.is_empty() { dt { "Variables" } dd { code { (Value::Object(campaign.variables.clone()).to_string()) } } }
            dt { "Messages" } dd { a href={"/console/messages?campaign_id=" (id)} { "this campaign's messages" } }
        }
        section aria-labelledby="upcoming" {
            h2 #upcoming { @if campaign.is_active { "Next runs" } @else { "Its schedule's next times (if made active)" } }
            (upcoming)
        }
        form #run-now method="post" action={"/console/campaigns/" (id) "/run"} {
            (session.csrf_field())
            button type="submit" { "Run now" }
        }
        section aria-labelledby="runs-title" {
            h2 #runs-title { "Runs" }
            (runs)
        }
    };
    respond(
        StatusCode::OK,
        layout(
            Some(&session),
            Nav::Campaigns,
            &format!("Campaign {}", campaign.name),
            body,
        ),
    )
}

/// The names of a campaign's template and lists (their ids when one cannot
/// be read: the page still shows the rest).
async fn audience(
    state: &AppState,
    admin: &Admin,
    campaign: &CampaignView,
) -> (String, Vec<(Uuid, String)>) {
    let template = templates::get(
        State(state.clone()),
        admin.0.clone(),
        PathParam(campaign.template_id),
    )
    .await
    .map_or_else(|_| campaign.template_id.to_string(), |t| t.0.data.name);
    let mut names = Vec::with_capacity(campaign.list_ids.len());
    for id in &campaign.list_ids {
        let name = lists::get(State(state.clone()), admin.clone(), PathParam(*id))
            .await
            .map_or_else(|_| id.to_string(), |l| l.0.data.name);
        names.push((*id, name));
    }
    (template, names)
}

/// `POST /api/v1/campaigns/{id}/run`.
pub async fn run(
    State(state): State<AppState>,
    session: Session,
    actor: Result<AdminActor, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let result = match actor {
        Ok(actor) => rest::run(State(state), actor, PathParam(id)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/console/campaigns/{id}?done=run")).into_response(),
        Err(e) => error_page(Some(&session), Nav::Campaigns, TITLE, e),
    }
}

/// The runs fragment (htmx polls it while a run is unfinished).
pub async fn runs(
    State(state): State<AppState>,
    _session: Session,
    admin: Result<Admin, ApiError>,
    PathParam(id): PathParam<Uuid>,
) -> Response {
    let result = match admin {
        Ok(admin) => runs_fragment(&state, admin, id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(markup) => respond(StatusCode::OK, markup),
        Err(e) => respond(status_of(&e), error_box(&e)),
    }
}

/// How far a run has come: (messages with an outcome, out of how many,
/// percent, finished).
fn progress(run: &RunView) -> (i64, i64, i64, bool) {
    let done = run.sent + run.failed + run.bounced + run.complained;
    let total = i64::from(run.recipients).max(done);
    let finished = run.status != "running" && run.queued == 0;
    let percent = match total {
        0 if finished => 100,
        0 => 0,
        _ => done * 100 / total,
    };
    // 100% only once fanned out and delivered: while the fan-out runs,
    // the recipients enqueued so far may all be done.
    let percent = if finished { percent } else { percent.min(99) };
    (done, total, percent, finished)
}

async fn runs_fragment(state: &AppState, admin: Admin, id: Uuid) -> Result<Markup, ApiError> {
    let axum::Json(data) = rest::runs(State(state.clone()), admin, PathParam(id)).await?;
    let runs = data.data;
    let live = runs.iter().any(|r| !progress(r).3);
    Ok(html! {
        div #runs hx-get=[live.then(|| format!("/console/campaigns/{id}/runs"))]
            hx-trigger=[live.then_some("every 1s")] hx-swap="outerHTML" {
            @if runs.is_empty() { p { "No run yet." } }
            @else {
                table #runs-table {
                    thead { tr {
                        th scope="col" { "Run" } th scope="col" { "Status" } th scope="col" { "Progress" }
                        th.num scope="col" { "Sent" } th.num scope="col" { "Failed" } th.num scope="col" { "Waiting" }
                        th.num scope="col" { "Suppressed" } th.num scope="col" { "Skipped" }
                    } }
                    tbody {
                        @for r in &runs {
                            @let (done, total, percent, finished) = progress(r);
                            tr.run data-run=(r.id) data-finished=(finished) {
                                td { (when(&r.scheduled_for)) br; small { (r.trigger) " · " (short_id(&r.id.to_string())) } }
                                td { span class={"status " (r.status)} { (r.status) } @if let Some(e) = &r.error { br; small { (e) } } }
                                td {
                                    label.quota {
                                        progress value=(done) max=(total.max(1)) aria-label={"Run " (short_id(&r.id.to_string())) " progress"} {}
                                        " " span.percent { (percent) "%" }
                                        " " small { (done) " / " (total) }
                                    }
                                }
                                td.num { (r.sent) }
                                td.num { (r.failed) }
                                td.num { (r.queued) }
                                td.num { (r.suppressed) }
                                td.num { (r.skipped) }
                            }
                        }
                    }
                }
            }
        }
    })
}

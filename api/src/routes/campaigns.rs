//! `/api/v1/campaigns`: a template mailed to the members of lists on a cron
//! schedule in a time zone (admin). The scheduler's leader fires due runs
//! and fans them out to the bulk queue; `POST .../run` fires one now.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::campaigns::{self, Campaign, CampaignContent, Run};
use platform::db::{lists, templates};
use platform::mail::unsubscribe::Scope;
use platform::schedule::CronSchedule;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{
    AdminAccess, BadJson, BadPath, BadPathOrJson, CampaignRefused, NotFound,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use crate::validate;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "weekly digest", "template_id": "0190c7a4-0000-7000-8000-000000000001",
    "list_ids": ["0190c7a4-0000-7000-8000-000000000002"], "cron": "0 9 * * MON",
    "time_zone": "Europe/Paris", "missed_run_policy": "skip"}))]
pub struct CampaignRequest {
    /// 1 to 200 characters (trimmed).
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    pub template_id: Uuid,
    /// The audience: 1 to 100 lists; an address on several is mailed once.
    #[schema(min_items = 1, max_items = 100)]
    pub list_ids: Vec<Uuid>,
    /// Template variables for every recipient (a member's own win).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
    /// Standard 5-field cron (`30 9 * * MON-FRI`) or 6/7 fields with seconds first.
    pub cron: String,
    /// IANA time zone the cron expression is read in; default UTC.
    #[serde(default = "utc")]
    pub time_zone: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    pub is_active: bool,
    /// `skip` (default): times missed while no scheduler ran are not sent;
    /// `run_once`: the latest missed time is sent once.
    #[serde(default = "skip")]
    #[schema(value_type = crate::docs::schemas::MissedRunPolicy)]
    pub missed_run_policy: String,
    /// What the `List-Unsubscribe` link of its emails does: `list`
    /// (default) ends the member's subscription to this campaign's lists;
    /// `global` suppresses the address for all mail.
    #[serde(default = "list_scope")]
    pub unsubscribe_scope: Scope,
}

fn list_scope() -> Scope {
    Scope::List
}

fn utc() -> String {
    "UTC".into()
}
fn yes() -> bool {
    true
}
fn skip() -> String {
    "skip".into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    pub name: String,
    pub template_id: Uuid,
    pub list_ids: Vec<Uuid>,
    #[schema(value_type = Object)]
    pub variables: Map<String, Value>,
    pub cron: String,
    pub time_zone: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub missed_run_policy: String,
    pub unsubscribe_scope: Scope,
    /// When it fires next (none when inactive or past `ends_at`).
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Campaign> for CampaignView {
    fn from(c: Campaign) -> Self {
        CampaignView {
            // Before `c`'s fields move out.
            unsubscribe_scope: c.unsubscribe_scope(),
            id: c.id,
            name: c.name,
            template_id: c.template_id,
            list_ids: c.list_ids,
            variables: c.variables.0,
            cron: c.cron,
            time_zone: c.time_zone,
            starts_at: c.starts_at,
            ends_at: c.ends_at,
            is_active: c.is_active,
            missed_run_policy: c.missed_run_policy,
            next_run_at: c.next_run_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub campaign_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// `running` (being fanned out), `completed` or `failed`.
    pub status: String,
    /// Messages enqueued so far.
    pub recipients: i32,
    /// Members on the suppression list (not mailed).
    pub suppressed: i32,
    /// Members whose email could not be rendered (a missing variable).
    pub skipped: i32,
    /// Delivery of the enqueued messages, by status.
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
    /// Sent, then bounced back (hard bounce) or reported as unwanted.
    pub bounced: i64,
    pub complained: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn run_view(run: Run, counts: &HashMap<(Uuid, String), i64>) -> RunView {
    let count = |s: &str| counts.get(&(run.id, s.to_string())).copied().unwrap_or(0);
    RunView {
        queued: count("queued") + count("sending"),
        sent: count("sent"),
        failed: count("failed") + count("suppressed"),
        bounced: count("bounced"),
        complained: count("complained"),
        id: run.id,
        campaign_id: run.campaign_id,
        scheduled_for: run.scheduled_for,
        trigger: run.trigger,
        status: run.status,
        recipients: run.recipients,
        suppressed: run.suppressed,
        skipped: run.skipped,
        error: run.error,
        created_at: run.created_at,
        finished_at: run.finished_at,
    }
}

/// Validates a request into the stored form, with `next_run_at` computed.
async fn content(state: &AppState, req: CampaignRequest) -> Result<CampaignContent, ApiError> {
    let name = validate::name(&req.name)?;
    let schedule =
        CronSchedule::parse(&req.cron, &req.time_zone).map_err(validate::schedule_error)?;
    if !["skip", "run_once"].contains(&req.missed_run_policy.as_str()) {
        return Err(ApiError::validation(
            "missed_run_policy",
            "missed_run_policy must be skip or run_once",
        ));
    }
    if let (Some(start), Some(end)) = (req.starts_at, req.ends_at) {
        if end <= start {
            return Err(ApiError::validation(
                "ends_at",
                "ends_at must be after starts_at",
            ));
        }
    }
    if templates::get(&state.pool, req.template_id, None)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid(
            "unknown_template",
            "template_id",
            "no template has this id",
        ));
    }
    let mut list_ids = req.list_ids;
    // Counted as given, duplicates too: the limit the document states.
    let given = list_ids.len();
    list_ids.sort();
    list_ids.dedup();
    if given == 0 || given > 100 {
        return Err(ApiError::validation("list_ids", "give 1 to 100 lists"));
    }
    let found = lists::existing(&state.pool, &list_ids).await?;
    if let Some(missing) = list_ids.iter().find(|id| !found.contains(id)) {
        return Err(ApiError::invalid(
            "unknown_list",
            "list_ids",
            format!("no list has the id {missing}"),
        ));
    }
    let next_run_at = if req.is_active {
        schedule.next_within(Utc::now(), req.starts_at, req.ends_at)
    } else {
        None
    };
    Ok(CampaignContent {
        name,
        template_id: req.template_id,
        list_ids,
        variables: req.variables,
        cron: req.cron.trim().to_string(),
        time_zone: req.time_zone.trim().to_string(),
        starts_at: req.starts_at,
        ends_at: req.ends_at,
        is_active: req.is_active,
        missed_run_policy: req.missed_run_policy,
        next_run_at,
        unsubscribe_scope: req.unsubscribe_scope,
    })
}

/// Creates a campaign; its cron expression and time zone are validated and
/// `next_run_at` is computed.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns", request_body = CampaignRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Data<CampaignView>), AdminAccess, BadJson, CampaignRefused))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<CampaignRequest>,
) -> Result<(StatusCode, Json<Data<CampaignView>>), ApiError> {
    let content = content(&state, req).await?;
    let mut tx = state.pool.begin().await?;
    let campaign = campaigns::insert(&mut *tx, &content).await?;
    actor
        .commit(
            tx,
            "campaign.create",
            "campaign",
            campaign.id,
            summary(&campaign),
        )
        .await?;
    Ok((StatusCode::CREATED, Data::new(campaign.into())))
}

fn summary(c: &Campaign) -> Value {
    json!({"name": c.name, "cron": c.cron, "time_zone": c.time_zone, "is_active": c.is_active})
}

/// Lists campaigns, newest first.
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<CampaignView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_admin): Admin,
) -> Result<Json<Data<Vec<CampaignView>>>, ApiError> {
    let rows = campaigns::list(&state.pool).await?;
    Ok(Data::new(rows.into_iter().map(Into::into).collect()))
}

/// One campaign.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<CampaignView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    let campaign = campaigns::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("campaign"))?;
    Ok(Data::new(campaign.into()))
}

/// Replaces a campaign's settings; `next_run_at` is computed afresh.
#[utoipa::path(put, path = "/api/v1/campaigns/{id}", tag = "campaigns", request_body = CampaignRequest,
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<CampaignView>), AdminAccess, BadPathOrJson, NotFound, CampaignRefused))]
pub async fn replace(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<CampaignRequest>,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    let content = content(&state, req).await?;
    let mut tx = state.pool.begin().await?;
    let campaign = campaigns::replace(&mut *tx, id, &content)
        .await?
        .ok_or(ApiError::NotFound("campaign"))?;
    actor
        .commit(tx, "campaign.update", "campaign", id, summary(&campaign))
        .await?;
    Ok(Data::new(campaign.into()))
}

/// Deletes a campaign and its run history (messages already enqueued are sent).
#[utoipa::path(delete, path = "/api/v1/campaigns/{id}", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !campaigns::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("campaign"));
    }
    actor
        .commit(tx, "campaign.delete", "campaign", id, json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fires a run now (whatever the schedule); the scheduler fans it out.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/run", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 202, body = Data<RunView>), AdminAccess, BadPath, NotFound,
        (status = 409, body = ErrorBody, description = "`run_exists`: a run for this instant exists")))]
pub async fn run(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<(StatusCode, Json<Data<RunView>>), ApiError> {
    let mut tx = state.pool.begin().await?;
    if campaigns::get(&mut *tx, id).await?.is_none() {
        return Err(ApiError::NotFound("campaign"));
    }
    let run = campaigns::insert_run(&mut *tx, id, Utc::now(), "manual")
        .await?
        .ok_or_else(|| ApiError::conflict("run_exists", "a run for this instant exists"))?;
    actor
        .commit(
            tx,
            "campaign.run",
            "campaign",
            id,
            json!({"run_id": run.id}),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Data::new(run_view(run, &HashMap::new())),
    ))
}

/// A campaign's runs, newest first (at most 100), with delivery progress.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/runs", tag = "campaigns", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<Vec<RunView>>), AdminAccess, BadPath, NotFound))]
pub async fn runs(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<Vec<RunView>>>, ApiError> {
    if campaigns::get(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("campaign"));
    }
    let runs = campaigns::runs(&state.pool, id, 100).await?;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let counts: HashMap<(Uuid, String), i64> = campaigns::run_message_counts(&state.pool, &ids)
        .await?
        .into_iter()
        .map(|(run, status, n)| ((run, status), n))
        .collect();
    Ok(Data::new(
        runs.into_iter().map(|r| run_view(r, &counts)).collect(),
    ))
}

//! `/api/v1/admin/email-accounts`: the SMTP account pool (admin scope).
//! Passwords are sealed with AES-256-GCM on the way in and never returned.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::db::email_accounts::{
    self, AccountPatch, EmailAccount, NewEmailAccount, TlsMode, PASSWORD_PURPOSE,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::{Actor, AdminActor};
use crate::auth::Admin;
use crate::docs::responses::{
    AccountExists, AdminAccess, BadJson, BadPath, BadPathOrJson, InvalidFields, NotFound,
};
use crate::error::{on_unique, ApiError, ErrorBody};
use crate::extract::{self, JsonBody, PathParam};
use crate::state::AppState;
use crate::validate;

pub(crate) const MAX_DAILY_LIMIT: i64 = 10_000_000;
pub(crate) const PRIORITY_RANGE: (i64, i64) = (-1000, 1000);
pub(crate) const MAX_PASSWORD: usize = 1024;
const MAX_RATE: i64 = 1_000_000;
const MAX_CONNECTIONS: i64 = 1000;
/// Most accounts in one import.
pub const MAX_IMPORT: usize = 1000;

/// Not `Debug`: it holds a password, and must never reach a log line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEmailAccount {
    /// Address used as From.
    #[schema(value_type = crate::docs::schemas::Address)]
    pub email: String,
    /// A host name or IP address (at most 253 characters, no spaces or `/`).
    #[schema(
        max_length = 253,
        pattern = r"^\s*[^\s/\u0000-\u001F\u007F-\u009F]+\s*$"
    )]
    pub smtp_host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub smtp_port: u16,
    /// Defaults to `email`. At most 320 characters.
    #[schema(
        max_length = 320,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub smtp_username: Option<String>,
    /// Stored AES-256-GCM encrypted; never returned. 1 to 1024 characters.
    #[schema(min_length = 1, max_length = 1024)]
    pub smtp_password: String,
    /// At most 128 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: String,
    /// `implicit` (SMTPS), `starttls` or `none`. Defaults by port: 465 implicit, otherwise starttls.
    #[schema(value_type = Option<platform::db::email_accounts::TlsMode>, example = "starttls")]
    pub tls_mode: Option<TlsMode>,
    /// Sends per day (days turn over at midnight in `TZ`). Default 500.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub daily_limit: Option<i64>,
    /// Higher is used first. Default 0.
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i64>,
    pub is_active: Option<bool>,
    /// Sends per rolling minute, held across all workers. Absent: no limit.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_minute: Option<i64>,
    /// Concurrent SMTP transactions, held across all workers. Absent: no limit.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<i64>,
}

/// Every field is optional; absent fields keep their value. Not `Debug`:
/// it may hold a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEmailAccount {
    #[schema(value_type = Option<crate::docs::schemas::Address>)]
    pub email: Option<String>,
    #[schema(
        max_length = 253,
        pattern = r"^\s*[^\s/\u0000-\u001F\u007F-\u009F]+\s*$"
    )]
    pub smtp_host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub smtp_port: Option<u16>,
    #[schema(
        max_length = 320,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub smtp_username: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    pub smtp_password: Option<String>,
    #[schema(max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: Option<String>,
    #[schema(value_type = Option<platform::db::email_accounts::TlsMode>, example = "starttls")]
    pub tls_mode: Option<TlsMode>,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub daily_limit: Option<i64>,
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i64>,
    pub is_active: Option<bool>,
    /// Sends per rolling minute; 0 removes the limit.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub rate_limit_per_minute: Option<i64>,
    /// Concurrent SMTP transactions; 0 removes the limit.
    #[schema(minimum = 0, maximum = 1000)]
    pub max_connections: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailAccountView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub smtp_host: String,
    pub smtp_port: i32,
    pub smtp_username: String,
    pub tls_mode: String,
    pub daily_limit: i32,
    /// Sends counted today (in `TZ`).
    pub daily_sent_count: i32,
    pub remaining_today: i32,
    pub priority: i32,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub max_connections: Option<i32>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `healthy`, `failing` (recent consecutive failures), `circuit_open`
    /// (out of rotation until `circuit_open_until`) or `disabled`.
    pub health: &'static str,
    /// Account-level failures in a row.
    pub consecutive_failures: i32,
    pub circuit_open_until: Option<DateTime<Utc>>,
    /// Why the platform paused the account (its bounce or complaint rate
    /// crossed a threshold); cleared when it is resumed.
    pub paused_reason: Option<String>,
    /// Its sends, bounces and complaints over the last
    /// `BOUNCE_RATE_WINDOW_DAYS` days.
    pub deliverability: DeliverabilityView,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct DeliverabilityView {
    pub window_days: i32,
    /// Sends counted in the window (the daily counters).
    pub sent: i64,
    pub hard_bounces: i64,
    pub soft_bounces: i64,
    pub complaints: i64,
    /// Hard bounces per send (0 to 1).
    pub bounce_rate: f64,
    /// Complaints per send (0 to 1).
    pub complaint_rate: f64,
}

/// Fills in each view's deliverability figures.
async fn with_rates(
    state: &AppState,
    mut views: Vec<EmailAccountView>,
) -> Result<Vec<EmailAccountView>, ApiError> {
    let window_days = state
        .settings
        .bounces
        .as_ref()
        .map_or(7, |b| b.pause.window_days);
    let only = match views.as_slice() {
        [one] => Some(one.id),
        _ => None,
    };
    let rates = platform::db::bounces::account_rates(
        &state.pool,
        platform::today(&state.settings),
        window_days,
        only,
    )
    .await?;
    for view in &mut views {
        let r = rates.get(&view.id).copied().unwrap_or_default();
        view.deliverability = DeliverabilityView {
            window_days,
            sent: r.sent,
            hard_bounces: r.hard_bounces,
            soft_bounces: r.soft_bounces,
            complaints: r.complaints,
            bounce_rate: r.bounce_rate(),
            complaint_rate: r.complaint_rate(),
        };
    }
    Ok(views)
}

async fn view_with_rates(
    state: &AppState,
    account: EmailAccount,
) -> Result<EmailAccountView, ApiError> {
    let mut views = with_rates(state, vec![account.into()]).await?;
    views.pop().ok_or(ApiError::NotFound("email account"))
}

impl From<EmailAccount> for EmailAccountView {
    fn from(a: EmailAccount) -> Self {
        let health = if !a.is_active {
            "disabled"
        } else if a.circuit_open_until.is_some_and(|t| t > Utc::now()) {
            "circuit_open"
        } else if a.consecutive_failures > 0 {
            "failing"
        } else {
            "healthy"
        };
        EmailAccountView {
            health,
            consecutive_failures: a.consecutive_failures,
            circuit_open_until: a.circuit_open_until,
            id: a.id,
            remaining_today: (a.daily_limit - a.sent_today).max(0),
            email: a.email,
            display_name: a.display_name,
            smtp_host: a.smtp_host,
            smtp_port: a.smtp_port,
            smtp_username: a.smtp_username,
            tls_mode: a.tls_mode,
            daily_limit: a.daily_limit,
            daily_sent_count: a.sent_today,
            priority: a.priority,
            is_active: a.is_active,
            rate_limit_per_minute: a.rate_limit_per_minute,
            max_connections: a.max_connections,
            last_used_at: a.last_used_at,
            last_error: a.last_error,
            last_error_at: a.last_error_at,
            paused_reason: a.paused_reason,
            deliverability: DeliverabilityView::default(),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// The account `id`, with today's count.
async fn find(state: &AppState, id: Uuid) -> Result<EmailAccount, ApiError> {
    email_accounts::get(&state.pool, platform::today(&state.settings), id)
        .await?
        .ok_or(ApiError::NotFound("email account"))
}

fn duplicate() -> ApiError {
    ApiError::Conflict {
        code: "account_exists",
        message: "an email account with this address already exists".into(),
    }
}

pub(crate) fn host(value: &str) -> Result<String, ApiError> {
    let host = validate::header_text("smtp_host", value, true, 253)?;
    if host.contains(char::is_whitespace) || host.contains('/') {
        return Err(ApiError::validation(
            "smtp_host",
            "smtp_host must be a host name or IP address",
        ));
    }
    Ok(host)
}

pub(crate) fn port(value: u16) -> Result<u16, ApiError> {
    if value == 0 {
        return Err(ApiError::validation(
            "smtp_port",
            "smtp_port must be between 1 and 65535",
        ));
    }
    Ok(value)
}

pub(crate) fn password(value: &str) -> Result<&str, ApiError> {
    if value.is_empty() || value.chars().count() > MAX_PASSWORD {
        return Err(ApiError::validation(
            "smtp_password",
            format!("smtp_password must be 1 to {MAX_PASSWORD} characters"),
        ));
    }
    Ok(value)
}

fn new_account(state: &AppState, req: &CreateEmailAccount) -> Result<NewEmailAccount, ApiError> {
    let email = validate::email("email", &req.email)?;
    let smtp_port = port(req.smtp_port)?;
    Ok(NewEmailAccount {
        smtp_host: host(&req.smtp_host)?,
        smtp_port,
        smtp_username: validate::header_text(
            "smtp_username",
            req.smtp_username.as_deref().unwrap_or(email.as_str()),
            true,
            320,
        )?,
        password: state
            .settings
            .keyring
            .seal(password(&req.smtp_password)?, PASSWORD_PURPOSE),
        display_name: validate::header_text("display_name", &req.display_name, false, 128)?,
        tls_mode: req
            .tls_mode
            .unwrap_or_else(|| TlsMode::default_for_port(smtp_port)),
        daily_limit: validate::in_range(
            "daily_limit",
            req.daily_limit.unwrap_or(500),
            0,
            MAX_DAILY_LIMIT,
        )?,
        priority: validate::in_range(
            "priority",
            req.priority.unwrap_or(0),
            PRIORITY_RANGE.0,
            PRIORITY_RANGE.1,
        )?,
        is_active: req.is_active.unwrap_or(true),
        rate_limit_per_minute: req
            .rate_limit_per_minute
            .map(|l| validate::in_range("rate_limit_per_minute", l, 1, MAX_RATE))
            .transpose()?,
        max_connections: req
            .max_connections
            .map(|c| validate::in_range("max_connections", c, 1, MAX_CONNECTIONS))
            .transpose()?,
        email: email.to_string(),
    })
}

/// What the audit log keeps of an account: never the password.
fn summary(a: &EmailAccount) -> Value {
    json!({
        "email": a.email, "smtp_host": a.smtp_host, "smtp_port": a.smtp_port,
        "smtp_username": a.smtp_username, "tls_mode": a.tls_mode, "daily_limit": a.daily_limit,
        "priority": a.priority, "is_active": a.is_active,
    })
}

/// Adds an SMTP account to the pool.
#[utoipa::path(post, path = "/api/v1/admin/email-accounts", tag = "email-accounts",
    request_body = CreateEmailAccount, security(("bearer" = [])),
    responses((status = 201, body = Data<EmailAccountView>), AdminAccess, BadJson,
        AccountExists,
        (status = 422, body = ErrorBody, description = "`validation_error` (`field` names it), `invalid_body`, `invalid_text` (NUL in text)")))]
pub async fn create(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(req): JsonBody<CreateEmailAccount>,
) -> Result<(StatusCode, Json<Data<EmailAccountView>>), ApiError> {
    let new = new_account(&state, &req)?;
    let account = insert_audited(&state, &actor, &new).await?;
    tracing::info!(account_id = %account.id, actor = %actor.principal.key_id, "email account created");
    Ok((StatusCode::CREATED, Data::new(account.into())))
}

async fn insert_audited(
    state: &AppState,
    actor: &Actor,
    new: &NewEmailAccount,
) -> Result<EmailAccount, ApiError> {
    let mut tx = state.pool.begin().await?;
    let account = email_accounts::insert(&mut *tx, platform::today(&state.settings), new)
        .await
        .map_err(on_unique("email_accounts_email_key", duplicate))?;
    actor
        .commit(
            tx,
            "email_account.create",
            "email_account",
            account.id,
            summary(&account),
        )
        .await?;
    Ok(account)
}

/// The outcome of one imported account.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportItem {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub imported: usize,
    pub rejected: usize,
    pub results: Vec<ImportItem>,
}

/// Imports up to 1000 accounts. Each entry is validated like a create
/// (passwords encrypted the same way); invalid or duplicate entries are
/// reported by index and the others are imported.
#[utoipa::path(post, path = "/api/v1/admin/email-accounts/import", tag = "email-accounts",
    request_body = crate::docs::schemas::AccountImport, security(("bearer" = [])),
    responses((status = 200, body = Data<ImportReport>), AdminAccess, BadJson,
        (status = 422, body = ErrorBody, description = "`validation_error` (empty or over 1000 entries), `invalid_body`, `invalid_text` (NUL in text) (not an array)")))]
pub async fn import(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    JsonBody(entries): JsonBody<Vec<Value>>,
) -> Result<Json<Data<ImportReport>>, ApiError> {
    if entries.is_empty() || entries.len() > MAX_IMPORT {
        return Err(ApiError::validation(
            "accounts",
            format!("import 1 to {MAX_IMPORT} accounts"),
        ));
    }
    let mut results = Vec::with_capacity(entries.len());
    for (index, raw) in entries.into_iter().enumerate() {
        let outcome = async {
            let req: CreateEmailAccount =
                serde_json::from_value(raw).map_err(extract::invalid_body)?;
            let new = new_account(&state, &req)?;
            insert_audited(&state, &actor, &new).await
        }
        .await;
        results.push(match outcome {
            Ok(account) => ImportItem {
                index,
                id: Some(account.id),
                error: None,
            },
            Err(e @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => return Err(e),
            Err(e) => ImportItem {
                index,
                id: None,
                error: Some(e.detail()),
            },
        });
    }
    let imported = results.iter().filter(|r| r.error.is_none()).count();
    tracing::info!(imported, rejected = results.len() - imported, actor = %actor.principal.key_id, "email accounts imported");
    Ok(Data::new(ImportReport {
        imported,
        rejected: results.len() - imported,
        results,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTest {
    /// True when the server accepted the connection (and TLS and AUTH as configured).
    pub ok: bool,
    /// What happened, including the server's error reply on failure.
    pub message: String,
}

/// Connects and authenticates to the account's SMTP server, as the worker
/// would, and reports the outcome. Sends nothing.
#[utoipa::path(post, path = "/api/v1/admin/email-accounts/{id}/test", tag = "email-accounts",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<ConnectionTest>), AdminAccess, BadPath, NotFound))]
pub async fn test(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<ConnectionTest>>, ApiError> {
    let account = find(&state, id).await?;
    let timeout = state.settings.email_timeout;
    let result = match platform::mail::build_transport(&account, &state.settings.keyring, timeout) {
        Err(e) => ConnectionTest {
            ok: false,
            message: e.to_string(),
        },
        Ok(transport) => {
            match tokio::time::timeout(
                timeout + std::time::Duration::from_secs(1),
                transport.test_connection(),
            )
            .await
            {
                Ok(Ok(true)) => ConnectionTest {
                    ok: true,
                    message: format!(
                        "connected to {}:{} and authenticated",
                        account.smtp_host, account.smtp_port
                    ),
                },
                Ok(Ok(false)) => ConnectionTest {
                    ok: false,
                    message: "the server did not answer NOOP".into(),
                },
                Ok(Err(e)) => ConnectionTest {
                    ok: false,
                    message: e.to_string(),
                },
                Err(_) => ConnectionTest {
                    ok: false,
                    message: format!("no answer within {timeout:?}"),
                },
            }
        }
    };
    actor
        .record(
            &state.pool,
            "email_account.test",
            "email_account",
            id,
            json!({"ok": result.ok}),
        )
        .await?;
    Ok(Data::new(result))
}

/// Lists the pool, highest priority first.
#[utoipa::path(get, path = "/api/v1/admin/email-accounts", tag = "email-accounts", security(("bearer" = [])),
    responses((status = 200, body = Data<Vec<EmailAccountView>>), AdminAccess))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
) -> Result<Json<Data<Vec<EmailAccountView>>>, ApiError> {
    let accounts = email_accounts::list(&state.pool, platform::today(&state.settings)).await?;
    let views = with_rates(&state, accounts.into_iter().map(Into::into).collect()).await?;
    Ok(Data::new(views))
}

#[utoipa::path(get, path = "/api/v1/admin/email-accounts/{id}", tag = "email-accounts", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<EmailAccountView>), AdminAccess, BadPath, NotFound))]
pub async fn get(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<EmailAccountView>>, ApiError> {
    let account = find(&state, id).await?;
    Ok(Data::new(view_with_rates(&state, account).await?))
}

/// Changes an account; disabling it (`is_active: false`) takes it out of
/// rotation for every message claimed after the change.
#[utoipa::path(patch, path = "/api/v1/admin/email-accounts/{id}", tag = "email-accounts", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateEmailAccount,
    responses((status = 200, body = Data<EmailAccountView>), AdminAccess, BadPathOrJson, NotFound, AccountExists, InvalidFields))]
pub async fn update(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<UpdateEmailAccount>,
) -> Result<Json<Data<EmailAccountView>>, ApiError> {
    let changed: Vec<&str> = [
        ("email", req.email.is_some()),
        ("smtp_host", req.smtp_host.is_some()),
        ("smtp_port", req.smtp_port.is_some()),
        ("smtp_username", req.smtp_username.is_some()),
        ("smtp_password", req.smtp_password.is_some()),
        ("display_name", req.display_name.is_some()),
        ("tls_mode", req.tls_mode.is_some()),
        ("daily_limit", req.daily_limit.is_some()),
        ("priority", req.priority.is_some()),
        ("is_active", req.is_active.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let patch = AccountPatch {
        email: req
            .email
            .as_deref()
            .map(|e| validate::email("email", e))
            .transpose()?
            .map(|e| e.to_string()),
        display_name: req
            .display_name
            .as_deref()
            .map(|n| validate::header_text("display_name", n, false, 128))
            .transpose()?,
        smtp_host: req.smtp_host.as_deref().map(host).transpose()?,
        smtp_port: req.smtp_port.map(port).transpose()?,
        smtp_username: req
            .smtp_username
            .as_deref()
            .map(|u| validate::header_text("smtp_username", u, true, 320))
            .transpose()?,
        password: req
            .smtp_password
            .as_deref()
            .map(|p| password(p).map(|p| state.settings.keyring.seal(p, PASSWORD_PURPOSE)))
            .transpose()?,
        tls_mode: req.tls_mode,
        daily_limit: req
            .daily_limit
            .map(|l| validate::in_range("daily_limit", l, 0, MAX_DAILY_LIMIT))
            .transpose()?,
        priority: req
            .priority
            .map(|p| validate::in_range("priority", p, PRIORITY_RANGE.0, PRIORITY_RANGE.1))
            .transpose()?,
        is_active: req.is_active,
        rate_limit_per_minute: req
            .rate_limit_per_minute
            .map(|l| validate::in_range("rate_limit_per_minute", l, 0, MAX_RATE))
            .transpose()?,
        max_connections: req
            .max_connections
            .map(|c| validate::in_range("max_connections", c, 0, MAX_CONNECTIONS))
            .transpose()?,
    };
    let mut tx = state.pool.begin().await?;
    let account = email_accounts::update(&mut *tx, platform::today(&state.settings), id, &patch)
        .await
        .map_err(on_unique("email_accounts_email_key", duplicate))?
        .ok_or(ApiError::NotFound("email account"))?;
    let mut details = summary(&account);
    details["changed"] = json!(changed);
    actor
        .commit(tx, "email_account.update", "email_account", id, details)
        .await?;
    tracing::info!(account_id = %id, actor = %actor.principal.key_id, "email account updated");
    Ok(Data::new(account.into()))
}

#[utoipa::path(delete, path = "/api/v1/admin/email-accounts/{id}", tag = "email-accounts", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), AdminAccess, BadPath, NotFound))]
pub async fn delete(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !email_accounts::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("email account"));
    }
    actor
        .commit(tx, "email_account.delete", "email_account", id, json!({}))
        .await?;
    tracing::info!(account_id = %id, actor = %actor.principal.key_id, "email account deleted");
    Ok(StatusCode::NO_CONTENT)
}

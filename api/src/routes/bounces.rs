//! Bounces and complaints (admin scope): `GET /api/v1/admin/bounces`, the
//! reports received and what they did; and the IMAP side of an account,
//! `/api/v1/admin/email-accounts/{id}/mailbox`, where the scheduler's
//! bounce processor reads them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use platform::bounces::Kind;
use platform::db::account_mailboxes::{self, AccountMailbox, Endpoint, MailboxSettings};
use platform::db::bounces::{self, Bounce, BounceFilter};
use platform::db::email_accounts::{self, TlsMode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Data;
use crate::audit::AdminActor;
use crate::auth::Admin;
use crate::docs::responses::{
    AdminAccess, BadPage, BadPath, BadPathOrJson, BadQuery, InvalidFields, NotFound,
};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::pagination::{self, Page};
use crate::state::AppState;
use crate::validate;

/// The longest mailbox name accepted.
const MAX_MAILBOX: usize = 200;

#[derive(Debug, Serialize, ToSchema)]
pub struct BounceView {
    pub id: i64,
    /// `hard` (5.x.x), `soft` (4.x.x or delayed) or `complaint`.
    #[schema(example = "hard")]
    pub kind: String,
    /// The address reported, lower-cased; absent when neither the report
    /// nor the message named one.
    pub recipient: Option<String>,
    /// Our message the report is about; absent when it matched none.
    pub message_id: Option<Uuid>,
    /// The account that sent it (or whose mailbox held the report).
    pub account_id: Option<Uuid>,
    /// `imap`, or the provider whose webhook reported it.
    #[schema(example = "imap")]
    pub source: String,
    /// The enhanced status code, e.g. `5.1.1`.
    pub status_code: Option<String>,
    /// The remote server's words, or a complaint's feedback type.
    pub diagnostic: Option<String>,
    /// What the message became: `bounced`, `complained`, `soft` (counted),
    /// or absent (not ours, or already settled).
    pub outcome: Option<String>,
    /// Whether this report put the address on the suppression list.
    pub suppressed: bool,
    pub created_at: DateTime<Utc>,
}

impl From<Bounce> for BounceView {
    fn from(b: Bounce) -> Self {
        BounceView {
            id: b.id,
            kind: b.kind,
            recipient: b.recipient,
            message_id: b.message_id,
            account_id: b.account_id,
            source: b.source,
            status_code: b.status_code,
            diagnostic: b.diagnostic,
            outcome: b.outcome,
            suppressed: b.suppressed,
            created_at: b.created_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BounceQuery {
    /// `hard`, `soft` or `complaint`.
    pub kind: Option<String>,
    pub recipient: Option<String>,
    pub account_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    /// `imap`, `ses`, `sendgrid`, `postmark` or `mailgun`.
    pub source: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Bounce and complaint reports, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/v1/admin/bounces", tag = "bounces", security(("bearer" = [])),
    params(BounceQuery),
    responses((status = 200, body = Data<Page<BounceView>>), AdminAccess, BadQuery, BadPage))]
pub async fn list(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    QueryParams(query): QueryParams<BounceQuery>,
) -> Result<Json<Data<Page<BounceView>>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before_id = query
        .cursor
        .as_deref()
        .map(pagination::decode_id)
        .transpose()?;
    let kind = query
        .kind
        .as_deref()
        .map(|k| {
            Kind::parse(k).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_kind",
                    "kind",
                    "kind must be hard, soft or complaint",
                )
            })
        })
        .transpose()?;
    let filter = BounceFilter {
        kind,
        recipient: query.recipient,
        account_id: query.account_id,
        message_id: query.message_id,
        source: query.source,
        from: query.created_after,
        until: query.created_before,
        before_id,
    };
    let rows = bounces::list(&state.pool, &filter, limit + 1).await?;
    Ok(Data::new(Page::from_rows(rows, limit, |b| {
        pagination::encode_id(b.id)
    })))
}

/// The IMAP side of an account. Any field left out takes the SMTP side's
/// value; the password is always the account's SMTP password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMailbox {
    /// Read the mailbox for bounces. Default true.
    pub enabled: Option<bool>,
    /// Default: the SMTP host with `smtp.` replaced by `imap.`.
    #[schema(max_length = 253)]
    pub imap_host: Option<String>,
    /// Default: 993 for `implicit`, 143 otherwise.
    #[schema(minimum = 1, maximum = 65535)]
    pub imap_port: Option<u16>,
    /// Default: the SMTP user name.
    #[schema(max_length = 320)]
    pub imap_username: Option<String>,
    /// `implicit` (IMAPS), `starttls` or `none`. Default `implicit`.
    #[schema(value_type = Option<platform::db::email_accounts::TlsMode>)]
    pub imap_tls_mode: Option<TlsMode>,
    /// The folder bounces arrive in. Default `INBOX`.
    #[schema(max_length = 200)]
    pub mailbox: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailboxView {
    pub account_id: Uuid,
    pub enabled: bool,
    /// Where the processor logs in, defaults resolved.
    pub imap_host: String,
    pub imap_port: u16,
    pub imap_username: String,
    #[schema(value_type = platform::db::email_accounts::TlsMode)]
    pub imap_tls_mode: TlsMode,
    pub mailbox: String,
    /// The last message read (a UID within `uid_validity`).
    pub last_uid: i64,
    pub uid_validity: Option<i64>,
    pub polled_at: Option<DateTime<Utc>>,
    /// Why the last read failed; cleared by the next good one.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Reports applied (flagged `\Seen $NotifyProcessed` in the mailbox).
    pub reports: i64,
    /// Reports about no message of ours: left unflagged.
    pub unmatched: i64,
    /// Reports that could not be read: left unflagged.
    pub malformed: i64,
    /// Mail that is no report (replies, auto-replies): left unflagged.
    pub ignored: i64,
    pub updated_at: DateTime<Utc>,
}

fn view(m: AccountMailbox, smtp_host: &str, smtp_username: &str) -> MailboxView {
    let endpoint = Endpoint::resolve(
        m.host.as_deref(),
        m.port.and_then(|p| u16::try_from(p).ok()),
        m.username.as_deref(),
        m.tls_mode.as_deref().and_then(TlsMode::parse),
        smtp_host,
        smtp_username,
    );
    MailboxView {
        account_id: m.account_id,
        enabled: m.enabled,
        imap_host: endpoint.host,
        imap_port: endpoint.port,
        imap_username: endpoint.username,
        imap_tls_mode: endpoint.tls,
        mailbox: m.mailbox,
        last_uid: m.last_uid,
        uid_validity: m.uid_validity,
        polled_at: m.polled_at,
        last_error: m.last_error,
        last_error_at: m.last_error_at,
        reports: m.reports,
        unmatched: m.unmatched,
        malformed: m.malformed,
        ignored: m.ignored,
        updated_at: m.updated_at,
    }
}

async fn account(state: &AppState, id: Uuid) -> Result<email_accounts::EmailAccount, ApiError> {
    email_accounts::get(&state.pool, platform::today(&state.settings), id)
        .await?
        .ok_or(ApiError::NotFound("email account"))
}

fn mailbox_name(value: &str) -> Result<String, ApiError> {
    let name = validate::header_text("mailbox", value, true, MAX_MAILBOX)?;
    // It goes into an IMAP command as a quoted string.
    if name.contains(['"', '\\']) {
        return Err(ApiError::validation(
            "mailbox",
            "mailbox must not contain quotes or backslashes",
        ));
    }
    Ok(name)
}

/// Sets the IMAP side of an account, where its bounces and complaints
/// arrive; the scheduler reads it from then on.
#[utoipa::path(put, path = "/api/v1/admin/email-accounts/{id}/mailbox", tag = "bounces",
    security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = PutMailbox,
    responses((status = 200, body = Data<MailboxView>), AdminAccess, BadPathOrJson, NotFound, InvalidFields))]
pub async fn put_mailbox(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
    JsonBody(req): JsonBody<PutMailbox>,
) -> Result<Json<Data<MailboxView>>, ApiError> {
    let settings = MailboxSettings {
        enabled: req.enabled.unwrap_or(true),
        host: req
            .imap_host
            .as_deref()
            .map(|h| {
                super::email_accounts::host(h).map_err(|_| {
                    ApiError::validation("imap_host", "imap_host must be a host name or IP address")
                })
            })
            .transpose()?,
        port: req
            .imap_port
            .map(|p| {
                super::email_accounts::port(p).map_err(|_| {
                    ApiError::validation("imap_port", "imap_port must be between 1 and 65535")
                })
            })
            .transpose()?,
        username: req
            .imap_username
            .as_deref()
            .map(|u| validate::header_text("imap_username", u, true, 320))
            .transpose()?,
        tls_mode: req.imap_tls_mode,
        mailbox: req
            .mailbox
            .as_deref()
            .map(mailbox_name)
            .transpose()?
            .unwrap_or_else(|| "INBOX".into()),
    };
    let account = account(&state, id).await?;
    let mut tx = state.pool.begin().await?;
    let mailbox = account_mailboxes::upsert(&mut *tx, id, &settings).await?;
    let view = view(mailbox, &account.smtp_host, &account.smtp_username);
    let details = json!({
        "enabled": view.enabled, "imap_host": view.imap_host, "imap_port": view.imap_port,
        "imap_username": view.imap_username, "imap_tls_mode": view.imap_tls_mode,
        "mailbox": view.mailbox,
    });
    actor
        .commit(
            tx,
            "email_account.mailbox.set",
            "email_account",
            id,
            details,
        )
        .await?;
    Ok(Data::new(view))
}

#[utoipa::path(get, path = "/api/v1/admin/email-accounts/{id}/mailbox", tag = "bounces",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Data<MailboxView>), AdminAccess, BadPath, NotFound))]
pub async fn get_mailbox(
    State(state): State<AppState>,
    Admin(_principal): Admin,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<Data<MailboxView>>, ApiError> {
    let account = account(&state, id).await?;
    let mailbox = account_mailboxes::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("mailbox"))?;
    Ok(Data::new(view(
        mailbox,
        &account.smtp_host,
        &account.smtp_username,
    )))
}

/// Stops reading the account's mailbox and forgets its read position.
#[utoipa::path(delete, path = "/api/v1/admin/email-accounts/{id}/mailbox", tag = "bounces",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "Removed"), AdminAccess, BadPath, NotFound))]
pub async fn delete_mailbox(
    State(state): State<AppState>,
    AdminActor(actor): AdminActor,
    PathParam(id): PathParam<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    if !account_mailboxes::delete(&mut *tx, id).await? {
        return Err(ApiError::NotFound("mailbox"));
    }
    actor
        .commit(
            tx,
            "email_account.mailbox.delete",
            "email_account",
            id,
            json!({}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/u/{token}`: one-click unsubscribe (RFC 8058), the target of the
//! `List-Unsubscribe` link in campaign mail (and in sends that ask).
//!
//! GET shows a small page whose button POSTs; it changes nothing, since
//! link scanners and previews follow links. POST with the form body
//! `List-Unsubscribe=One-Click` (what mailbox providers send) unsubscribes
//! at once: from the campaign's lists, or from all mail (a suppression),
//! as the token says. No authentication: the signed token is the
//! credential. Browsers get HTML; a client asking for `application/json`
//! gets the API's JSON (with a machine-readable `code` on errors).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::db::{campaigns, lists, message_events, messages, suppressions, webhooks};
use platform::mail::unsubscribe::{Claims, Scope, Target, TokenError, UnsubscribeLinks};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::Data;
use crate::client_addr::ClientAddr;
use crate::error::{ApiError, ErrorBody};
use crate::extract::PathParam;
use crate::state::AppState;

/// The suppression reason of a global unsubscribe.
pub const REASON: &str = "unsubscribe";

/// Where an address stands with respect to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Still receiving mail: POSTing the link unsubscribes (GET only).
    Subscribed,
    /// This request unsubscribed it (POST only).
    Unsubscribed,
    /// It was unsubscribed before (by this link, another, or an operator).
    AlreadyUnsubscribed,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnsubscribeView {
    pub status: Standing,
    /// `list`: the lists of the campaign that sent the email; `global`: all mail.
    pub scope: Scope,
    pub address: String,
}

/// The form one-click clients POST (RFC 8058 §3.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OneClickForm {
    #[schema(
        rename = "List-Unsubscribe",
        pattern = "^One-Click$",
        example = "One-Click"
    )]
    list_unsubscribe: String,
}

/// The confirmation page of an unsubscribe link: who would be
/// unsubscribed from what, and a button that POSTs. Nothing changes.
#[utoipa::path(get, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "The signed token of the email's List-Unsubscribe link.",
        pattern = "^[A-Za-z0-9_-]+$")),
    responses(
        (status = 200, description = "The confirmation page (its button POSTs to the same URL), or with \
            `Accept: application/json` where the address stands",
            content((String = "text/html"), (Data<UnsubscribeView> = "application/json"))),
        (status = 400, description = "`invalid_unsubscribe_token`: the link was altered, or not signed \
            with this platform's UNSUBSCRIBE_SECRET",
            content((String = "text/html"), (ErrorBody = "application/json")))))]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParam(token): PathParam<String>,
) -> Result<Response, ApiError> {
    let json = wants_json(&headers);
    let claims = match verify(&state, &token) {
        Ok(c) => c,
        Err(e) => return Ok(invalid_token(json, &e)),
    };
    let status = if still_subscribed(&state, &claims).await? {
        Standing::Subscribed
    } else {
        Standing::AlreadyUnsubscribed
    };
    Ok(reply(json, &claims, status))
}

/// One-click unsubscribe: with the form body `List-Unsubscribe=One-Click`
/// (urlencoded or multipart), the address leaves the campaign's lists
/// (`list`) or is suppressed with reason `unsubscribe` (`global`), at once.
/// The message's timeline gets `unsubscribed` and its key's endpoints an
/// `email.unsubscribed` event, in the same transaction. Repeating it
/// answers 200 `already_unsubscribed` and changes nothing.
#[utoipa::path(post, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "The signed token of the email's List-Unsubscribe link.",
        pattern = "^[A-Za-z0-9_-]+$")),
    request_body(content = OneClickForm, content_type = "application/x-www-form-urlencoded",
        description = "`List-Unsubscribe=One-Click`, as RFC 8058 clients send it (multipart/form-data is accepted too)"),
    responses(
        (status = 200, description = "Unsubscribed now (`unsubscribed`) or before (`already_unsubscribed`)",
            content((String = "text/html"), (Data<UnsubscribeView> = "application/json"))),
        (status = 400, description = "`invalid_unsubscribe_token` (altered, forged, or naming an address \
            the email was not sent to) or `not_one_click` (the body lacks `List-Unsubscribe=One-Click`)",
            content((String = "text/html"), (ErrorBody = "application/json")))))]
pub async fn unsubscribe(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    PathParam(token): PathParam<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let json = wants_json(&headers);
    let claims = match verify(&state, &token) {
        Ok(c) => c,
        Err(e) => return Ok(invalid_token(json, &e)),
    };
    let body = body.map_err(crate::extract::body_rejection)?;
    if !is_one_click(&headers, &body) {
        let message = "the body must be the form List-Unsubscribe=One-Click (RFC 8058)";
        return Ok(error(json, "not_one_click", message));
    }
    match apply(&state, &claims, client).await? {
        Applied::Changed => Ok(reply(json, &claims, Standing::Unsubscribed)),
        Applied::Unchanged => Ok(reply(json, &claims, Standing::AlreadyUnsubscribed)),
        Applied::NotARecipient => Ok(invalid_token(json, &TokenError::BadSignature)),
    }
}

fn verify(state: &AppState, token: &str) -> Result<Claims, TokenError> {
    let links: &UnsubscribeLinks = state
        .settings
        .unsubscribe
        .as_ref()
        .ok_or(TokenError::BadSignature)?;
    links.key.verify(token)
}

/// Whether the token's address still receives what the link would stop.
async fn still_subscribed(state: &AppState, claims: &Claims) -> Result<bool, ApiError> {
    Ok(match claims.target {
        Target::Everything => suppressions::get(&state.pool, &claims.address)
            .await?
            .is_none(),
        Target::CampaignLists(id) => match campaigns::get(&state.pool, id).await? {
            Some(c) => lists::is_subscribed(&state.pool, &c.list_ids, &claims.address).await?,
            None => false,
        },
    })
}

/// What an unsubscribe did.
enum Applied {
    Changed,
    /// Nothing left to end: unsubscribed before (or the campaign is gone).
    Unchanged,
    /// The token's message was not sent to its address.
    NotARecipient,
}

/// Unsubscribes in one transaction with the message's timeline entry, its
/// webhook event and (for a suppression) the audit entry. The message may
/// be gone (retention): the unsubscribe still holds, without the events.
#[tracing::instrument(level = "debug", skip_all, fields(message_id = %claims.message_id))]
async fn apply(state: &AppState, claims: &Claims, client: ClientAddr) -> Result<Applied, ApiError> {
    let mut tx = state.pool.begin().await?;
    let message = messages::get_locked(&mut *tx, claims.message_id).await?;
    if let Some(m) = &message {
        let recipients = m.to_addrs.iter().chain(&m.cc_addrs).chain(&m.bcc_addrs);
        if !recipients
            .map(|a| a.to_lowercase())
            .any(|a| a == claims.address)
        {
            return Ok(Applied::NotARecipient);
        }
    }
    let scope = claims.target.scope();
    let changed = match claims.target {
        Target::Everything => {
            let added = suppressions::insert_if_absent(
                &mut *tx,
                &claims.address,
                REASON,
                message.as_ref().and_then(|m| m.api_key_id),
            )
            .await?;
            if added {
                platform::db::audit_log::insert(
                    &mut *tx,
                    &platform::db::audit_log::NewAuditEntry {
                        actor_key_id: None,
                        action: "suppression.create",
                        target_type: "suppression",
                        target_id: claims.address.clone(),
                        details: json!({"reason": REASON, "message_id": claims.message_id}),
                        client_addr: client.to_text(),
                    },
                )
                .await?;
            }
            added
        }
        Target::CampaignLists(id) => match campaigns::get(&mut *tx, id).await? {
            Some(c) => lists::unsubscribe(&mut *tx, &c.list_ids, &claims.address).await? > 0,
            None => false,
        },
    };
    if !changed {
        tx.commit().await?;
        return Ok(Applied::Unchanged);
    }
    if let Some(m) = &message {
        let detail = json!({"scope": scope.as_str(), "address": claims.address});
        message_events::insert(&mut *tx, m.id, "unsubscribed", &m.status, &detail).await?;
        webhooks::record_message_event(&mut *tx, m.id, "email.unsubscribed").await?;
    }
    tx.commit().await?;
    metrics::counter!("unsubscribes_total", "scope" => scope.as_str()).increment(1);
    tracing::info!(message_id = %claims.message_id, scope = scope.as_str(), "unsubscribed");
    Ok(Applied::Changed)
}

/// The body a one-click client sends: `List-Unsubscribe=One-Click` as a
/// urlencoded form, or as a multipart/form-data field.
fn is_one_click(headers: &HeaderMap, body: &[u8]) -> bool {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let text = String::from_utf8_lossy(body);
        return text.contains("name=\"List-Unsubscribe\"") && text.contains("One-Click");
    }
    url::form_urlencoded::parse(body).any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click")
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn invalid_token(json: bool, e: &TokenError) -> Response {
    error(json, "invalid_unsubscribe_token", &e.to_string())
}

fn error(json: bool, code: &'static str, message: &str) -> Response {
    if json {
        return ApiError::BadRequest {
            code,
            message: message.to_string(),
        }
        .into_response();
    }
    let body = format!(
        "<h1>This link does not work</h1><p>{}.</p><p>Use the unsubscribe link of the email \
         exactly as it came, or reply to the email.</p>",
        escape(message)
    );
    html(StatusCode::BAD_REQUEST, &body)
}

fn reply(json: bool, claims: &Claims, status: Standing) -> Response {
    let scope = claims.target.scope();
    if json {
        let view = UnsubscribeView {
            status,
            scope,
            address: claims.address.clone(),
        };
        let mut response = Data::new(view).into_response();
        no_store(&mut response);
        return response;
    }
    let address = escape(&claims.address);
    let what = match scope {
        Scope::List => "the mailing lists this email was sent to",
        Scope::Global => "all email from us",
    };
    let body = match status {
        Standing::Subscribed => format!(
            "<h1>Unsubscribe?</h1><p><b>{address}</b> will no longer receive {what}.</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
             value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>"
        ),
        Standing::Unsubscribed => format!(
            "<h1>You are unsubscribed</h1><p><b>{address}</b> will no longer receive {what}.</p>"
        ),
        Standing::AlreadyUnsubscribed => format!(
            "<h1>Already unsubscribed</h1><p><b>{address}</b> is already unsubscribed from {what}.</p>"
        ),
    };
    html(StatusCode::OK, &body)
}

fn html(status: StatusCode, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>Unsubscribe</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;\
         line-height:1.5}}button{{font-size:1rem;padding:.5rem 1.25rem;cursor:pointer}}</style>\
         </head><body><main>{body}</main></body></html>"
    );
    let mut response = (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        page,
    )
        .into_response();
    no_store(&mut response);
    response
}

/// The token is a credential in the URL: keep it out of caches and of the
/// Referer of anything the page links to.
fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_click_body_is_recognised_in_both_encodings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(is_one_click(&headers, b"List-Unsubscribe=One-Click"));
        assert!(!is_one_click(&headers, b"List-Unsubscribe=Later"));
        assert!(!is_one_click(&headers, b""));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=x"),
        );
        let multipart = b"--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--\r\n";
        assert!(is_one_click(&headers, multipart));
    }

    #[test]
    fn addresses_are_escaped_in_pages() {
        assert_eq!(escape("<a&b>\"'"), "&lt;a&amp;b&gt;&quot;&#39;");
    }
}

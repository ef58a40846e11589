//! Console sessions.
//!
//! Signing in exchanges the key and secret for an access token through the
//! same code as `POST /api/v1/auth/token` (credential check, throttle,
//! audit). The browser keeps that token in a cookie that scripts cannot
//! read (`HttpOnly`), that no other site's request carries
//! (`SameSite=Strict`), and that travels only over TLS when the console is
//! served over TLS (`Secure`). A row in `console_sessions` per token makes
//! sign-out revoke it before it expires, and holds the sign-in's CSRF
//! token, which every form carries and every POST must present.
//!
//! Each request turns the cookie into the `Authorization` header the REST
//! routes read, and the API's own [`Principal`] extractor checks it: an
//! expired token or a revoked key ends the session like a sign-out. An
//! active session's token is renewed before it expires
//! ([`super::renewal`]).

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use platform::db::console_sessions;
use rand::RngCore;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::auth::{Principal, Scope, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// The cookie holding the access token.
pub const SESSION_COOKIE: &str = "notify_console";
/// The cookie of the sign-in form's CSRF token (double-submit: there is no
/// session yet to bind it to).
pub const SIGN_IN_CSRF_COOKIE: &str = "notify_console_csrf";
/// The form field and header every POST carries its CSRF token in.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Largest console form body read for its CSRF token.
const MAX_FORM: usize = 2 * 1024 * 1024;

/// The signed-in key of a console request.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: Uuid,
    pub token_id: Uuid,
    pub csrf: String,
    pub principal: Principal,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.principal.has(Scope::Admin)
    }

    /// The hidden field every form of this session carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(CSRF_FIELD) value=(self.csrf); }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| to_sign_in(&parts.headers))
    }
}

/// A random token, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request reached us over TLS: the console is served over
/// plain HTTP behind a TLS-terminating proxy, which says so in
/// `X-Forwarded-Proto` (believed only from `TRUSTED_PROXIES`).
pub fn over_tls(parts: &Parts, state: &AppState) -> bool {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let trusted = peer.is_some_and(|ip| {
        state
            .settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    });
    trusted
        && parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for the console's cookies (`max_age` 0 deletes).
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are hex or JWT characters")
}

/// Sends the browser to the sign-in page (htmx requests are told to
/// navigate there rather than swapping it into a fragment), forgetting the
/// session cookie.
pub fn to_sign_in(headers: &HeaderMap) -> Response {
    let clear = set_cookie(SESSION_COOKIE, "", 0, false);
    if headers.contains_key("hx-request") {
        return (
            StatusCode::OK,
            [
                (
                    header::HeaderName::from_static("hx-redirect"),
                    HeaderValue::from_static("/console/sign-in"),
                ),
                (header::SET_COOKIE, clear),
            ],
        )
            .into_response();
    }
    (
        [(header::SET_COOKIE, clear)],
        Redirect::to("/console/sign-in"),
    )
        .into_response()
}

/// Constant-time comparison of CSRF tokens.
pub fn same_token(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The CSRF token of a form body (`csrf=`), if any.
pub fn form_token(body: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned())
}

/// Refuses a POST without the right CSRF token: 403 and a page that says so.
pub fn csrf_refused() -> Response {
    super::respond(
        StatusCode::FORBIDDEN,
        super::layout(
            None,
            super::Nav::None,
            "Not allowed",
            html! {
                div.error role="alert" {
                    p { strong { "The form's security token is missing or wrong." } }
                    p { "Reload the page and try again." }
                    p.code { "error code: " code { "csrf_token_invalid" } }
                }
            },
        ),
    )
}

/// Middleware of every page behind sign-in: the session from the cookie,
/// the principal from its token (revoked keys and expired tokens end the
/// session), and on POST the CSRF token.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
        return to_sign_in(&parts.headers);
    };
    let Ok(claims) = state.tokens.verify(&token, TokenKind::Access) else {
        return to_sign_in(&parts.headers);
    };
    let found = match console_sessions::find_live(&state.pool, claims.jti).await {
        Ok(found) => found,
        Err(e) => return super::error_page(None, super::Nav::None, "Error", e.into()),
    };
    let Some(row) = found.filter(|s| s.api_key_id == claims.sub) else {
        return to_sign_in(&parts.headers);
    };
    let secure = over_tls(&parts, &state);
    // The REST routes' own authentication, from here on.
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return to_sign_in(&parts.headers);
    };
    parts.headers.insert(header::AUTHORIZATION, bearer);
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(ApiError::Unauthorized { .. }) => return to_sign_in(&parts.headers),
        Err(e) => return super::error_page(None, super::Nav::None, "Error", e),
    };
    let session = Session {
        key_id: claims.sub,
        token_id: claims.jti,
        csrf: row.csrf_token.clone(),
        principal,
    };
    let body = if parts.method == Method::POST {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            // Over the limit (or cut off): said as such, not as a CSRF fault.
            return super::error_page(
                None,
                super::Nav::None,
                "Too large",
                ApiError::PayloadTooLarge(format!(
                    "the form is larger than {} MiB",
                    MAX_FORM / (1024 * 1024)
                )),
            );
        };
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| form_token(&bytes));
        if !given.is_some_and(|g| same_token(&g, &session.csrf)) {
            tracing::warn!(key_id = %session.key_id, path = %parts.uri.path(), "console POST without a valid CSRF token");
            return csrf_refused();
        }
        Body::from(bytes)
    } else {
        body
    };
    // After the key check above: a revoked key's session is not renewed.
    let renewed = match super::renewal::renew_if_due(&state, &claims, &row, secure).await {
        Ok(renewed) => renewed,
        Err(e) => {
            // The token of this request still works; the next one retries.
            tracing::warn!(error = ?e, key_id = %claims.sub, "console session renewal failed");
            None
        }
    };
    parts.extensions.insert(session);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(cookie) = renewed {
        // A response that set the session cookie itself (sign-out) keeps it.
        let sets_session = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.as_bytes().starts_with(SESSION_COOKIE.as_bytes()));
        if !sets_session {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    response
}

//! Sign-in (API key and secret) and sign-out.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use maud::html;
use platform::db::console_sessions;
use serde::Deserialize;

use super::session::{
    self, cookie, csrf_refused, random_token, same_token, set_cookie, Session, SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
};
use super::{error_box, layout, respond, status_of, Nav};
use crate::auth::TokenKind;
use crate::client_addr::ClientAddr;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::auth::{self, TokenRequest};
use crate::state::AppState;

/// How long the sign-in form's CSRF cookie lives.
const FORM_TTL_SECONDS: u64 = 3600;

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub api_secret: String,
    #[serde(default)]
    pub csrf: String,
}

/// The sign-in form, with a fresh CSRF token in it and in a cookie.
pub fn form_response(
    secure: bool,
    status: StatusCode,
    api_key: &str,
    error: Option<&ApiError>,
) -> Response {
    let csrf = random_token();
    let body = html! {
        @if let Some(error) = error { (error_box(error)) }
        form.card method="post" action="/console/sign-in" {
            input type="hidden" name="csrf" value=(csrf);
            p {
                label for="api_key" { "API key" }
                input #api_key name="api_key" type="text" required autocomplete="username"
                    placeholder="noti_..." value=(api_key) autofocus;
            }
            p {
                label for="api_secret" { "API secret" }
                input #api_secret name="api_secret" type="password" required autocomplete="current-password";
            }
            p { button type="submit" { "Sign in" } }
        }
        p.hint { "Admin keys see everything; other keys see their own messages." }
    };
    let mut response = respond(status, layout(None, Nav::None, "Sign in", body));
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_CSRF_COOKIE, &csrf, FORM_TTL_SECONDS, secure),
    );
    response
}

pub async fn form(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let secure = session::over_tls(&parts, &state);
    form_response(secure, StatusCode::OK, "", None)
}

/// Checks the key and secret as `POST /api/v1/auth/token` does (it is that
/// handler), then records the session and sets its cookie.
pub async fn sign_in(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let secure = session::over_tls(&parts, &state);
    let expected = cookie(&parts.headers, SIGN_IN_CSRF_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let Ok(client) = ClientAddr::from_request_parts(&mut parts, &state).await;
    let Ok(Form(form)) =
        Form::<SignInForm>::from_request(Request::from_parts(parts, body), &state).await
    else {
        return csrf_refused();
    };
    if !same_token(&form.csrf, &expected) {
        return csrf_refused();
    }
    let issued = auth::issue_token(
        State(state.clone()),
        client,
        JsonBody(TokenRequest {
            api_key: form.api_key.clone(),
            api_secret: form.api_secret,
        }),
    )
    .await;
    let pair = match issued {
        Ok(axum::Json(data)) => data.data,
        Err(error) => {
            let key = form.api_key.chars().take(256).collect::<String>();
            let status = status_of(&error);
            return form_response(secure, status, &key, Some(&error));
        }
    };
    match start(&state, &pair.access_token).await {
        Ok(()) => {}
        Err(error) => {
            let status = status_of(&error);
            return form_response(secure, status, &form.api_key, Some(&error));
        }
    }
    let ttl = state.tokens.access_ttl.as_secs();
    // Appended: both cookies are set (an array of headers would keep one).
    (
        axum::response::AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &pair.access_token, ttl, secure),
            ),
            (
                header::SET_COOKIE,
                set_cookie(SIGN_IN_CSRF_COOKIE, "", 0, secure),
            ),
        ]),
        Redirect::to("/console"),
    )
        .into_response()
}

/// Records the sign-in of `access_token` with a CSRF token of its own.
async fn start(state: &AppState, access_token: &str) -> Result<(), ApiError> {
    let claims = state.tokens.verify(access_token, TokenKind::Access)?;
    let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now);
    console_sessions::prune(&state.pool).await?;
    // Renewals keep an active session going up to the bound a REST
    // client's refresh tokens have.
    let ends_at = Utc::now() + state.tokens.refresh_ttl;
    console_sessions::insert(
        &state.pool,
        &console_sessions::NewToken {
            token_id: claims.jti,
            session_id: claims.jti,
            api_key_id: claims.sub,
            csrf_token: &random_token(),
            expires_at,
            ends_at,
        },
    )
    .await?;
    tracing::info!(key_id = %claims.sub, "console sign-in");
    Ok(())
}

/// Revokes the session (none of its tokens opens a page any more) and
/// forgets the cookie.
pub async fn sign_out(State(state): State<AppState>, session: Session) -> Response {
    if let Err(e) = console_sessions::revoke(&state.pool, session.token_id).await {
        return super::error_page(Some(&session), Nav::None, "Sign out", e.into());
    }
    tracing::info!(key_id = %session.key_id, "console sign-out");
    (
        [(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, false))],
        Redirect::to("/console/sign-in?signed_out=1"),
    )
        .into_response()
}

//! The audit trail of administrative changes: who (API key), what, to
//! what, and from which client address. Details never carry secrets.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use platform::db::audit_log::{self, NewAuditEntry};
use serde_json::Value;
use sqlx::{PgExecutor, Postgres, Transaction};

use crate::auth::{scoped_extractor, Principal, Scope};
use crate::client_addr::ClientAddr;
use crate::error::ApiError;
use crate::state::AppState;

/// The caller of a change: its key and address (see [`crate::client_addr`]:
/// the TCP peer, or what trusted proxies say of the client).
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub client_addr: Option<String>,
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Ok(addr) = ClientAddr::from_request_parts(parts, state).await;
        Ok(Actor {
            principal,
            client_addr: addr.to_text(),
        })
    }
}

impl Actor {
    /// Records one change. `details` must already be free of secrets.
    pub async fn record(
        &self,
        executor: impl PgExecutor<'_>,
        action: &str,
        target_type: &str,
        target_id: impl ToString,
        details: Value,
    ) -> Result<(), ApiError> {
        audit_log::insert(
            executor,
            &NewAuditEntry {
                actor_key_id: Some(self.principal.key_id),
                action,
                target_type,
                target_id: target_id.to_string(),
                details: redact(details),
                client_addr: self.client_addr.clone(),
            },
        )
        .await?;
        Ok(())
    }

    /// Records one change in `tx` and commits it: the change and its
    /// audit entry stand or fall together.
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        action: &str,
        target_type: &str,
        target_id: impl ToString,
        details: Value,
    ) -> Result<(), ApiError> {
        self.record(&mut *tx, action, target_type, target_id, details)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Removes any field whose name suggests a secret, at any depth: a second
/// line of defence behind handlers that build details without them.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if ["password", "secret", "token", "ciphertext", "nonce"]
                        .iter()
                        .any(|s| lower.contains(s))
                    {
                        (k, Value::String("[redacted]".into()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

impl AsRef<Principal> for Actor {
    fn as_ref(&self) -> &Principal {
        &self.principal
    }
}

scoped_extractor!(
    /// An [`Actor`] with the admin scope, checked before the body is read.
    AdminActor(Actor),
    Scope::Admin
);

scoped_extractor!(
    /// An [`Actor`] with the send scope, checked before the body is read.
    SendActor(Actor),
    Scope::Send
);

//! The caller of a protected route, from its bearer token.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use super::TokenKind;
use crate::error::ApiError;
use crate::ratelimit::DecisionSlot;
use crate::state::AppState;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Send,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| s == scope.as_str())
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }

    /// Requires `scope` unless the key has one of `alternatives`; the 403
    /// names `scope`.
    pub fn require_or(&self, scope: Scope, alternatives: &[Scope]) -> Result<(), ApiError> {
        if alternatives.iter().any(|s| self.has(*s)) {
            Ok(())
        } else {
            self.require(scope)
        }
    }

    /// Reading resources a key owns (templates, webhooks): `read`, or a
    /// key that may change them (`send`) or everything (`admin`).
    pub fn require_read(&self) -> Result<(), ApiError> {
        self.require_or(Scope::Read, &[Scope::Send, Scope::Admin])
    }

    /// The key whose messages this caller may see and change: its own,
    /// or `None` (every key's) with the admin scope.
    pub fn owner_filter(&self) -> Option<Uuid> {
        (!self.has(Scope::Admin)).then_some(self.key_id)
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "Authorization: Bearer <token> is required")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_token",
                    "Authorization header must be `Bearer <token>`",
                )
            })?;
        if let Some(known) = parts.extensions.get::<Principal>() {
            return Ok(known.clone());
        }
        let claims = state.tokens.verify(token, TokenKind::Access)?;
        // Checked on every request (through a cache that a key change evicts
        // at once) so that revoking a key stops its tokens.
        let Some(key_limit) = state.keys.usable_limit(&state.pool, claims.sub).await? else {
            return Err(ApiError::unauthorized(
                "key_revoked",
                "the API key behind this token is revoked",
            ));
        };
        if let Some(decision) = state.rate_limiter.hit(claims.sub, key_limit).await {
            if let Some(slot) = parts.extensions.get::<DecisionSlot>() {
                slot.set(decision);
            }
            if !decision.allowed {
                return Err(ApiError::RateLimited {
                    limit: decision.limit,
                    retry_after: decision.reset.max(1),
                });
            }
        }
        let principal = Principal {
            key_id: claims.sub,
            scopes: claims.scopes,
        };
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// Declares an extractor that extracts `$inner` (anything that is
/// `AsRef<Principal>`) and requires `$scope` of it. As an extractor it runs
/// before the body is read, so a caller without the scope gets 403
/// whatever it sent.
macro_rules! scoped_extractor {
    ($(#[$doc:meta])* $name:ident($inner:ty), $scope:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub $inner);

        impl ::axum::extract::FromRequestParts<$crate::state::AppState> for $name {
            type Rejection = $crate::error::ApiError;

            async fn from_request_parts(
                parts: &mut ::axum::http::request::Parts,
                state: &$crate::state::AppState,
            ) -> Result<Self, Self::Rejection> {
                let inner = <$inner as ::axum::extract::FromRequestParts<
                    $crate::state::AppState,
                >>::from_request_parts(parts, state)
                .await?;
                AsRef::<$crate::auth::Principal>::as_ref(&inner).require($scope)?;
                Ok($name(inner))
            }
        }
    };
}
pub(crate) use scoped_extractor;

impl AsRef<Principal> for Principal {
    fn as_ref(&self) -> &Principal {
        self
    }
}

scoped_extractor!(
    /// A principal with the admin scope.
    Admin(Principal),
    Scope::Admin
);

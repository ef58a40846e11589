//! HS256 JWTs with the algorithm pinned and `exp`, `nbf`, `iat`, `jti`,
//! `sub` and scopes in every token.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

const ISSUER: &str = "notify-api";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The API key's id.
    pub sub: Uuid,
    pub scopes: Vec<String>,
    pub typ: TokenKind,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(settings: &platform::config::JwtSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Only HS256 is accepted: a token claiming `none` or RS256 is refused.
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss"]);
        TokenIssuer {
            encoding: EncodingKey::from_secret(settings.secret_bytes()),
            decoding: DecodingKey::from_secret(settings.secret_bytes()),
            validation,
            access_ttl: settings.access_ttl,
            refresh_ttl: settings.refresh_ttl,
        }
    }

    /// An access token for `key_id` with `scopes`, valid for `access_ttl`.
    pub fn issue(&self, key_id: Uuid, scopes: &[String]) -> Result<String, ApiError> {
        let exp = Utc::now().timestamp() + self.access_ttl.as_secs() as i64;
        self.sign(key_id, scopes, TokenKind::Access, exp, Uuid::new_v4())
    }

    /// A refresh token with the id `jti` (recorded server-side, so that it
    /// can be used once), expiring at `exp` (seconds since the epoch). It
    /// carries no scopes: a refresh reads them from the key.
    pub fn issue_refresh(&self, key_id: Uuid, jti: Uuid, exp: i64) -> Result<String, ApiError> {
        self.sign(key_id, &[], TokenKind::Refresh, exp, jti)
    }

    fn sign(
        &self,
        key_id: Uuid,
        scopes: &[String],
        kind: TokenKind,
        exp: i64,
        jti: Uuid,
    ) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: key_id,
            scopes: scopes.to_vec(),
            typ: kind,
            iss: ISSUER.into(),
            iat: now,
            nbf: now,
            exp,
            jti,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(e.into()))
    }

    pub fn verify(&self, token: &str, expected: TokenKind) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "token has expired")
                }
                ErrorKind::ImmatureSignature => {
                    ApiError::unauthorized("invalid_token", "token is not valid yet")
                }
                _ => ApiError::unauthorized("invalid_token", "token is invalid"),
            })?;
        if data.claims.typ != expected {
            return Err(ApiError::unauthorized(
                "invalid_token",
                format!("expected an {expected:?} token").to_lowercase(),
            ));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn issuer(secret: &str) -> TokenIssuer {
        TokenIssuer::new(&platform::config::JwtSettings {
            secret: SecretString::from(secret.to_string()),
            access_ttl: Duration::from_secs(60),
            refresh_ttl: Duration::from_secs(600),
        })
    }

    #[test]
    fn issued_tokens_verify_and_carry_scopes() {
        let issuer = issuer("s".repeat(32).as_str());
        let id = Uuid::new_v4();
        let token = issuer.issue(id, &["send".into()]).unwrap();
        let claims = issuer.verify(&token, TokenKind::Access).unwrap();
        assert_eq!(claims.sub, id);
        assert_eq!(claims.scopes, vec!["send"]);
        assert!(issuer.verify(&token, TokenKind::Refresh).is_err());
    }

    #[test]
    fn other_keys_and_algorithms_are_refused() {
        let issuer_a = issuer("a".repeat(32).as_str());
        let token = issuer("b".repeat(32).as_str())
            .issue(Uuid::new_v4(), &[])
            .unwrap();
        assert!(issuer_a.verify(&token, TokenKind::Access).is_err());

        // alg=none with the same claims
        let (_, payload_and_sig) = token.split_once('.').unwrap();
        let payload = payload_and_sig.split('.').next().unwrap();
        let none_token = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(issuer_a.verify(&none_token, TokenKind::Access).is_err());
    }
}

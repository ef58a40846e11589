//! Secrets: the API's token signing key (`JWT_SECRET_KEY`, `JWT_ALGORITHM`,
//! `JWT_EXPIRE_MINUTES`, `JWT_REFRESH_EXPIRE_DAYS`) and the keyring of
//! stored SMTP passwords (`ENCRYPTION_KEY`, `ENCRYPTION_KEY_ID`,
//! `ENCRYPTION_PREVIOUS_KEYS`). In production, placeholder, short or
//! published secrets are refused.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::vars::Vars;
use super::{ConfigError, Environment};
use crate::crypto::{KeyId, Keyring, MasterKey};

#[derive(Clone)]
pub struct JwtSettings {
    pub secret: SecretString,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &"[redacted]")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish()
    }
}

impl JwtSettings {
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.expose_secret().as_bytes()
    }
}

/// Placeholders that ship in documentation and `.env.example`; refused in production.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "your",
    "change",
    "placeholder",
    "example",
    "secret_key",
    "dev-only",
    "insecure",
];

/// Keys published in `.env.example` and the tests; refused in production.
const DEVELOPMENT_KEYS: &[&str] = &[
    "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzJieXRlcyE=",
    "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE=",
];

/// `JWT_SECRET_KEY` (required) and the tokens' lifetimes; only HS256 is
/// accepted as `JWT_ALGORITHM`.
pub(super) fn jwt(vars: &Vars<'_>, env: Environment) -> Result<JwtSettings, ConfigError> {
    let secret = vars.required("JWT_SECRET_KEY")?;
    let algorithm = vars.get("JWT_ALGORITHM").unwrap_or_else(|| "HS256".into());
    if algorithm != "HS256" {
        return Err(ConfigError::Invalid {
            var: "JWT_ALGORITHM",
            reason: format!("only HS256 is supported, got {algorithm:?}"),
        });
    }
    if env.is_production() {
        check_production_secret("JWT_SECRET_KEY", &secret)?;
    }
    Ok(JwtSettings {
        secret: SecretString::from(secret),
        access_ttl: Duration::from_secs(60 * vars.parse_positive_or("JWT_EXPIRE_MINUTES", 60u64)?),
        refresh_ttl: Duration::from_secs(
            86_400 * vars.parse_positive_or("JWT_REFRESH_EXPIRE_DAYS", 7u64)?,
        ),
    })
}

/// `ENCRYPTION_KEY` as given, required when `vars` is read (`None` for a
/// binary that holds no keyring): the keyring's current key, and the
/// importer's Fernet key when `PYTHON_ENCRYPTION_KEY` is unset.
pub(super) fn encryption_key(vars: &Vars<'_>) -> Result<Option<String>, ConfigError> {
    if !vars.is_read() {
        return Ok(None);
    }
    vars.required("ENCRYPTION_KEY").map(Some)
}

/// The keyring: `encryption_key` is the current key (base64 of 32 bytes, so
/// a Fernet key from the Python platform is accepted); `ENCRYPTION_KEY_ID`
/// names it so stored values say which key sealed them;
/// `ENCRYPTION_PREVIOUS_KEYS` holds `id:base64key` pairs, comma separated,
/// still accepted for decryption while values are re-encrypted during a
/// rotation.
pub(super) fn keyring(
    vars: &Vars<'_>,
    env: Environment,
    encryption_key: &str,
) -> Result<Keyring, ConfigError> {
    if env.is_production() {
        check_production_secret("ENCRYPTION_KEY", encryption_key)?;
    }
    let current = decode_key("ENCRYPTION_KEY", encryption_key)?;
    if env.is_production() && DEVELOPMENT_KEYS.contains(&encryption_key) {
        return Err(ConfigError::Insecure {
            var: "ENCRYPTION_KEY",
            reason: "this is the published development key from .env.example; generate one".into(),
        });
    }
    if env.is_production() && current.is_weak() {
        return Err(ConfigError::Insecure {
            var: "ENCRYPTION_KEY",
            reason: "key bytes are not random".into(),
        });
    }
    let id_raw = vars.get("ENCRYPTION_KEY_ID").unwrap_or_else(|| "k1".into());
    let current_id = KeyId::parse(&id_raw).map_err(|reason| ConfigError::Invalid {
        var: "ENCRYPTION_KEY_ID",
        reason,
    })?;
    let mut previous = HashMap::new();
    if let Some(list) = vars.get("ENCRYPTION_PREVIOUS_KEYS") {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry.split_once(':').ok_or_else(|| ConfigError::Invalid {
                var: "ENCRYPTION_PREVIOUS_KEYS",
                reason: "entries must look like id:base64key".into(),
            })?;
            let id = KeyId::parse(id).map_err(|reason| ConfigError::Invalid {
                var: "ENCRYPTION_PREVIOUS_KEYS",
                reason,
            })?;
            // A repeated id would silently replace a key: values sealed
            // under the lost one would no longer open.
            if id == current_id || previous.contains_key(&id) {
                return Err(ConfigError::Invalid {
                    var: "ENCRYPTION_PREVIOUS_KEYS",
                    reason: format!(
                        "key id {:?} appears twice (ENCRYPTION_KEY_ID and ENCRYPTION_PREVIOUS_KEYS \
                         must name each key once)",
                        id.as_str()
                    ),
                });
            }
            previous.insert(id, decode_key("ENCRYPTION_PREVIOUS_KEYS", key)?);
        }
    }
    Ok(Keyring::new(current_id, current, previous))
}

pub(super) fn check_production_secret(var: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.len() < 32 {
        return Err(ConfigError::Insecure {
            var,
            reason: "must be at least 32 characters".into(),
        });
    }
    let lower = value.to_ascii_lowercase();
    if let Some(marker) = PLACEHOLDER_MARKERS.iter().find(|m| lower.contains(*m)) {
        return Err(ConfigError::Insecure {
            var,
            reason: format!(
                "looks like a placeholder (contains {marker:?}); generate a random value"
            ),
        });
    }
    Ok(())
}

fn decode_key(var: &'static str, raw: &str) -> Result<MasterKey, ConfigError> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ];
    let bytes = engines
        .iter()
        .find_map(|engine| engine.decode(raw.as_bytes()).ok())
        .ok_or_else(|| ConfigError::Invalid {
            var,
            reason: "must be base64 (generate one with `openssl rand -base64 32`)".into(),
        })?;
    MasterKey::from_slice(&bytes).ok_or_else(|| ConfigError::Invalid {
        var,
        reason: format!("must decode to 32 bytes, got {}", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::super::tests::{assert_refused, base, load, load_for, with};
    use super::super::{ConfigError, Role};

    const PRODUCTION: (&str, &str) = ("ENV", "production");
    /// A secret that passes the production checks.
    const RANDOM_SECRET: (&str, &str) = ("JWT_SECRET_KEY", "Zk3q9XrT2vLmP8sYwA1bC4dE6fG7hJ0kN5oQ");

    #[test]
    fn short_encryption_key_is_refused() {
        assert_refused(&[("ENCRYPTION_KEY", "c2hvcnQ=")], &["32 bytes"]);
    }

    #[test]
    fn a_key_id_named_twice_is_refused() {
        let other = STANDARD.encode([9u8; 32]);
        // The current key's id again: one of the two keys would be lost.
        assert_refused(
            &[("ENCRYPTION_PREVIOUS_KEYS", &format!("k1:{other}"))],
            &["ENCRYPTION_PREVIOUS_KEYS", "\"k1\" appears twice"],
        );
        assert_refused(
            &[(
                "ENCRYPTION_PREVIOUS_KEYS",
                &format!("k0:{other}, k0:{other}"),
            )],
            &["\"k0\" appears twice"],
        );
    }

    #[test]
    fn production_refuses_placeholder_secrets() {
        assert_refused(
            &[
                PRODUCTION,
                ("JWT_SECRET_KEY", "your-jwt-secret-key-at-least-32-chars"),
            ],
            &["JWT_SECRET_KEY", "placeholder"],
        );
        let short = with(&[PRODUCTION, ("JWT_SECRET_KEY", "short")]);
        assert!(matches!(load(&short), Err(ConfigError::Insecure { .. })));
        let weak_key = STANDARD.encode([7u8; 32]);
        assert_refused(
            &[PRODUCTION, RANDOM_SECRET, ("ENCRYPTION_KEY", &weak_key)],
            &["ENCRYPTION_KEY"],
        );
    }

    #[test]
    fn production_refuses_placeholder_secrets_in_every_binary_that_uses_them() {
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        let key = STANDARD.encode(key);
        let placeholder = ("JWT_SECRET_KEY", "your-jwt-secret-change-me");
        // The unsubscribe links' settings, which production requires of
        // the API and the worker (config/unsubscribe.rs).
        let links = [
            ("UNSUBSCRIBE_SECRET", "m2Qv8ZpL4xKc9WnR1tYb6HsJ3fGd7AeU"),
            ("PUBLIC_BASE_URL", "https://mail.example.com"),
        ];
        let vars = with(&[
            PRODUCTION,
            placeholder,
            ("ENCRYPTION_KEY", &key),
            links[0],
            links[1],
        ]);
        let err = load_for(Role::Api, &vars).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET_KEY"), "{err}");
        // The worker and the scheduler sign no tokens.
        assert!(load_for(Role::Worker, &vars).is_ok());
        assert!(load_for(Role::Scheduler, &vars).is_ok());
        // Every binary holds the keyring (the scheduler opens webhook
        // secrets), and refuses the published key.
        let published = (
            "ENCRYPTION_KEY",
            "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzJieXRlcyE=",
        );
        let vars = with(&[PRODUCTION, RANDOM_SECRET, published]);
        for role in Role::ALL {
            let err = load_for(role, &vars).unwrap_err();
            assert!(
                err.to_string().contains("ENCRYPTION_KEY"),
                "{role:?}: {err}"
            );
        }
    }

    #[test]
    fn every_binary_requires_the_encryption_key() {
        let vars = with(&[("ENCRYPTION_KEY", "")]);
        for role in Role::ALL {
            let err = load_for(role, &vars).unwrap_err();
            assert!(
                matches!(err, ConfigError::Missing("ENCRYPTION_KEY")),
                "{role:?}: {err}"
            );
        }
        let scheduler = load_for(Role::Scheduler, &base()).unwrap();
        assert_eq!(scheduler.keyring().unwrap().current_key_id(), "k1");
    }

    #[test]
    fn only_hs256_is_accepted() {
        assert!(load(&with(&[("JWT_ALGORITHM", "none")])).is_err());
    }

    #[test]
    fn fernet_style_url_safe_key_is_accepted() {
        let key = "_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-8=";
        assert!(load(&with(&[("ENCRYPTION_KEY", key)])).is_ok());
    }
}

//! One-click unsubscribe links (RFC 8058): the base of the links
//! (`PUBLIC_BASE_URL`), the key that signs their tokens
//! (`UNSUBSCRIBE_SECRET`) and an optional `mailto:` address offered beside
//! them (`UNSUBSCRIBE_MAILTO`). The worker signs, the API verifies, so
//! both read this section. In production the secret and the base URL
//! (https) are required and a placeholder secret is refused; elsewhere a
//! published development secret and `http://localhost:8000` stand in.

use secrecy::SecretString;

use super::security::check_production_secret;
use super::vars::{check_url, Vars};
use super::{ConfigError, Environment};
use crate::mail::unsubscribe::{UnsubscribeKey, UnsubscribeLinks};
use crate::mail::EmailAddress;

/// Signs links outside production when `UNSUBSCRIBE_SECRET` is unset; the
/// production check refuses it (it says `dev-only`).
const DEVELOPMENT_SECRET: &str = "dev-only-unsubscribe-secret-0123456789abcdef";
const DEVELOPMENT_BASE_URL: &str = "http://localhost:8000";

pub(super) fn settings(vars: &Vars<'_>, env: Environment) -> Result<UnsubscribeLinks, ConfigError> {
    let production = env.is_production();
    let secret = match vars.get("UNSUBSCRIBE_SECRET") {
        Some(secret) => secret,
        None if production => return Err(ConfigError::Missing("UNSUBSCRIBE_SECRET")),
        None => DEVELOPMENT_SECRET.to_string(),
    };
    if production {
        check_production_secret("UNSUBSCRIBE_SECRET", &secret)?;
    }
    let base_url = match vars.get("PUBLIC_BASE_URL") {
        Some(url) => url,
        None if production => return Err(ConfigError::Missing("PUBLIC_BASE_URL")),
        None => DEVELOPMENT_BASE_URL.to_string(),
    };
    // Mailbox providers only offer one-click unsubscribe over https.
    let schemes: &[&str] = if production {
        &["https"]
    } else {
        &["https", "http"]
    };
    check_url("PUBLIC_BASE_URL", &base_url, schemes)?;
    if base_url.contains(['?', '#']) {
        return Err(ConfigError::Invalid {
            var: "PUBLIC_BASE_URL",
            reason: "must not have a query or fragment (links append /u/<token>)".into(),
        });
    }
    let mailto = vars
        .get("UNSUBSCRIBE_MAILTO")
        .map(|raw| {
            EmailAddress::parse(&raw)
                .map(|a| a.as_str().to_string())
                .map_err(|e| ConfigError::Invalid {
                    var: "UNSUBSCRIBE_MAILTO",
                    reason: e.to_string(),
                })
        })
        .transpose()?;
    Ok(UnsubscribeLinks {
        base_url: base_url.trim_end_matches('/').to_string(),
        key: UnsubscribeKey::new(SecretString::from(secret)),
        mailto,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{load_for, with};
    use super::super::{ConfigError, Role};

    const PRODUCTION: (&str, &str) = ("ENV", "production");
    const JWT: (&str, &str) = ("JWT_SECRET_KEY", "Zk3q9XrT2vLmP8sYwA1bC4dE6fG7hJ0kN5oQ");
    const KEY: (&str, &str) = (
        "ENCRYPTION_KEY",
        "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",
    );
    const SECRET: (&str, &str) = ("UNSUBSCRIBE_SECRET", "m2Qv8ZpL4xKc9WnR1tYb6HsJ3fGd7AeU");
    const BASE: (&str, &str) = ("PUBLIC_BASE_URL", "https://mail.example.com/");

    #[test]
    fn development_has_defaults_and_the_api_and_worker_read_the_section() {
        let api = load_for(Role::Api, &with(&[])).unwrap();
        let links = api.unsubscribe.expect("the API verifies tokens");
        assert_eq!(links.base_url, "http://localhost:8000");
        assert!(links.mailto.is_none());
        let worker = load_for(Role::Worker, &with(&[BASE])).unwrap();
        assert_eq!(
            worker.unsubscribe.expect("the worker signs").base_url,
            "https://mail.example.com"
        );
        let scheduler = load_for(Role::Scheduler, &with(&[])).unwrap();
        assert!(scheduler.unsubscribe.is_none());
    }

    #[test]
    fn production_requires_a_real_secret_and_an_https_base_url() {
        for role in [Role::Api, Role::Worker] {
            let err = load_for(role, &with(&[PRODUCTION, JWT, KEY, BASE])).unwrap_err();
            assert!(
                matches!(err, ConfigError::Missing("UNSUBSCRIBE_SECRET")),
                "{role:?}: {err}"
            );
            let placeholder = (
                "UNSUBSCRIBE_SECRET",
                "dev-only-unsubscribe-secret-0123456789abcdef",
            );
            let err = load_for(role, &with(&[PRODUCTION, JWT, KEY, BASE, placeholder]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("UNSUBSCRIBE_SECRET"), "{role:?}: {err}");
            let err = load_for(role, &with(&[PRODUCTION, JWT, KEY, SECRET])).unwrap_err();
            assert!(
                matches!(err, ConfigError::Missing("PUBLIC_BASE_URL")),
                "{role:?}: {err}"
            );
            let http = ("PUBLIC_BASE_URL", "http://mail.example.com");
            let err = load_for(role, &with(&[PRODUCTION, JWT, KEY, SECRET, http]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("PUBLIC_BASE_URL"), "{role:?}: {err}");
            assert!(load_for(role, &with(&[PRODUCTION, JWT, KEY, SECRET, BASE])).is_ok());
        }
    }

    #[test]
    fn a_bad_mailto_or_base_url_is_refused() {
        let err = load_for(
            Role::Api,
            &with(&[("UNSUBSCRIBE_MAILTO", "not an address")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("UNSUBSCRIBE_MAILTO"), "{err}");
        let err = load_for(
            Role::Api,
            &with(&[("PUBLIC_BASE_URL", "https://x.example/?a=1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("PUBLIC_BASE_URL"), "{err}");
        let ok = load_for(
            Role::Api,
            &with(&[("UNSUBSCRIBE_MAILTO", "leave@example.com")]),
        )
        .unwrap();
        assert_eq!(
            ok.unsubscribe.unwrap().mailto.as_deref(),
            Some("leave@example.com")
        );
    }
}

//! Switching from the Python platform: its database (`PYTHON_DATABASE_URL`),
//! which the workers reserve sends in while both platforms run and which
//! `notify-api import-python` reads, and its Fernet key
//! (`PYTHON_ENCRYPTION_KEY`), for the importer only.

use secrecy::SecretString;

use super::vars::{check_url, Vars};
use super::ConfigError;

/// `PYTHON_DATABASE_URL`, a PostgreSQL URL; none when unset.
pub(super) fn database_url(vars: &Vars<'_>) -> Result<Option<String>, ConfigError> {
    let url = vars.get("PYTHON_DATABASE_URL");
    if let Some(url) = &url {
        check_url("PYTHON_DATABASE_URL", url, &["postgres", "postgresql"])?;
    }
    Ok(url)
}

/// `PYTHON_ENCRYPTION_KEY` (several, comma-separated, as for MultiFernet),
/// else `encryption_key`, our own `ENCRYPTION_KEY` as given.
pub(super) fn encryption_keys(vars: &Vars<'_>, encryption_key: &str) -> SecretString {
    SecretString::from(
        vars.get("PYTHON_ENCRYPTION_KEY")
            .unwrap_or_else(|| encryption_key.to_string()),
    )
}

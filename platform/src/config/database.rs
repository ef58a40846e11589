//! PostgreSQL: `DATABASE_URL` (required) and `DB_POOL_SIZE`.

use super::vars::{check_url, Vars};
use super::ConfigError;

/// `DATABASE_URL`, a `postgres://` or `postgresql://` URL.
pub(super) fn url(vars: &Vars<'_>) -> Result<String, ConfigError> {
    let url = vars.required("DATABASE_URL")?;
    check_url("DATABASE_URL", &url, &["postgres", "postgresql"])?;
    Ok(url)
}

/// `DB_POOL_SIZE`: connections per process.
pub(super) fn pool_size(vars: &Vars<'_>) -> Result<u32, ConfigError> {
    vars.parse_positive_or("DB_POOL_SIZE", 10)
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_refused;

    #[test]
    fn missing_database_url_is_named() {
        assert_refused(&[("DATABASE_URL", "")], &["DATABASE_URL"]);
    }
}

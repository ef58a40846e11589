//! What every process reads about itself: the environment it runs in
//! (`ENV`, `DEBUG`), its logs (`LOG_LEVEL`), the time zone of daily quotas
//! (`TZ`) and, for tests only, a shifted calendar
//! (`TEST_CLOCK_OFFSET_DAYS`), and the worker's and scheduler's metrics
//! listener (`METRICS_PORT`).

use std::str::FromStr;

use chrono_tz::Tz;

use super::vars::Vars;
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn is_production(self) -> bool {
        self == Environment::Production
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "staging" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "expected development, test, staging or production, got {other:?}"
            )),
        }
    }
}

/// `ENV`, development by default.
pub(super) fn environment(vars: &Vars<'_>) -> Result<Environment, ConfigError> {
    vars.parse_or("ENV", Environment::Development)
}

/// `DEBUG`, refused in production.
pub(super) fn debug(vars: &Vars<'_>, env: Environment) -> Result<bool, ConfigError> {
    let debug = vars.parse_bool_or("DEBUG", false)?;
    if env.is_production() && debug {
        return Err(ConfigError::Insecure {
            var: "DEBUG",
            reason: "must be false in production".into(),
        });
    }
    Ok(debug)
}

/// `LOG_LEVEL`, as given (see `telemetry::init_tracing`).
pub(super) fn log_level(vars: &Vars<'_>) -> String {
    vars.get("LOG_LEVEL").unwrap_or_else(|| "info".into())
}

/// `TZ`, an IANA name; UTC by default.
pub(super) fn time_zone(vars: &Vars<'_>) -> Result<Tz, ConfigError> {
    let name = vars.get("TZ").unwrap_or_else(|| "UTC".into());
    Tz::from_str(&name).map_err(|_| ConfigError::Invalid {
        var: "TZ",
        reason: format!("{name:?} is not an IANA time zone name"),
    })
}

/// `TEST_CLOCK_OFFSET_DAYS`: days added to the date that daily quotas
/// and warm-up schedules go by (`platform::today`), so that a test can
/// play the days of a warm-up without waiting for them. Nothing else
/// (tokens, schedules, retention) sees it. Refused in production.
pub(super) fn clock_offset_days(vars: &Vars<'_>, env: Environment) -> Result<i64, ConfigError> {
    let days: i64 = vars.parse_or("TEST_CLOCK_OFFSET_DAYS", 0)?;
    if days != 0 && env.is_production() {
        return Err(ConfigError::Insecure {
            var: "TEST_CLOCK_OFFSET_DAYS",
            reason: "is for tests only; unset it in production".into(),
        });
    }
    if days.abs() > 36_500 {
        return Err(ConfigError::Invalid {
            var: "TEST_CLOCK_OFFSET_DAYS",
            reason: "must be within 36500 days".into(),
        });
    }
    Ok(days)
}

/// `METRICS_PORT`: none when unset.
pub(super) fn metrics_port(vars: &Vars<'_>) -> Result<Option<u16>, ConfigError> {
    vars.parse("METRICS_PORT")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(env: Environment, value: &str) -> Result<i64, ConfigError> {
        let lookup = |k: &str| (k == "TEST_CLOCK_OFFSET_DAYS").then(|| value.to_string());
        clock_offset_days(&Vars::new(&lookup), env)
    }

    #[test]
    fn the_test_clock_moves_by_whole_days_outside_production_only() {
        assert_eq!(offset(Environment::Test, "3").unwrap(), 3);
        assert_eq!(offset(Environment::Development, "-2").unwrap(), -2);
        assert_eq!(offset(Environment::Production, "0").unwrap(), 0);
        let err = offset(Environment::Production, "1").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Insecure {
                var: "TEST_CLOCK_OFFSET_DAYS",
                ..
            }
        ));
        assert!(offset(Environment::Test, "1.5").is_err());
        assert!(offset(Environment::Test, "40000").is_err());
    }
}

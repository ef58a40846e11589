//! Reading variables: the lookup every section parses from, and the checks
//! several sections share.

use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;

/// The variables, trimmed, an empty value counting as unset. A view of a
/// section the binary does not read ([`Vars::only_if`]) sees every variable
/// unset, so the section's values there are its defaults.
#[derive(Clone, Copy)]
pub(super) struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    read: bool,
}

impl<'a> Vars<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Vars { lookup, read: true }
    }

    /// These variables when `read`, else a view in which none is set.
    pub(super) fn only_if(self, read: bool) -> Self {
        Vars {
            read: self.read && read,
            ..self
        }
    }

    /// Whether this view sees the variables (see [`Vars::only_if`]).
    pub(super) fn is_read(&self) -> bool {
        self.read
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        if !self.read {
            return None;
        }
        (self.lookup)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        self.get(key).ok_or(ConfigError::Missing(key))
    }

    /// The parsed value, `None` when unset.
    pub(super) fn parse<T: FromStr>(&self, key: &'static str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|raw| {
                raw.parse().map_err(|e: T::Err| ConfigError::Invalid {
                    var: key,
                    reason: format!("{raw:?}: {e}"),
                })
            })
            .transpose()
    }

    pub(super) fn parse_or<T: FromStr>(
        &self,
        key: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    pub(super) fn parse_positive_or<T>(
        &self,
        key: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default,
        T::Err: std::fmt::Display,
    {
        let value = self.parse_or(key, default)?;
        if value <= T::default() {
            return Err(ConfigError::Invalid {
                var: key,
                reason: "must be greater than zero".into(),
            });
        }
        Ok(value)
    }

    /// A positive number of seconds.
    pub(super) fn seconds_or(
        &self,
        key: &'static str,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        self.parse_positive_or(key, default)
            .map(Duration::from_secs)
    }

    pub(super) fn parse_bool_or(
        &self,
        key: &'static str,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(ConfigError::Invalid {
                var: key,
                reason: format!("{v:?} is not a boolean (true/false)"),
            }),
        }
    }
}

/// Checks that `raw` is a URL with one of `schemes`.
pub(super) fn check_url(var: &'static str, raw: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("not a URL: {e}"),
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("scheme must be one of {schemes:?}, got {:?}", url.scheme()),
        });
    }
    Ok(())
}

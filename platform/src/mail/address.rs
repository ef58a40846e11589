//! An email address checked once, at the edge.

use std::fmt;
use std::str::FromStr;

/// Longest address SMTP allows in a path (RFC 5321 §4.5.3.1.3).
const MAX_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not a valid email address")]
    Invalid(String),
    #[error("email address is longer than {MAX_LEN} characters")]
    TooLong,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let trimmed = raw.trim();
        if trimmed.len() > MAX_LEN {
            return Err(AddressError::TooLong);
        }
        // Control characters would let a caller inject headers or SMTP commands.
        if trimmed.chars().any(char::is_control) {
            return Err(AddressError::Invalid(trimmed.escape_debug().to_string()));
        }
        lettre::Address::from_str(trimmed)
            .map(|_| EmailAddress(trimmed.to_string()))
            .map_err(|_| AddressError::Invalid(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.org",
            " spaced@example.com ",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_and_injected_addresses() {
        for bad in [
            "",
            "plain",
            "a@",
            "@example.com",
            "a b@example.com",
            "a@example.com\r\nBcc: x@y.z",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            EmailAddress::parse(&format!("{}@example.com", "a".repeat(250))),
            Err(AddressError::TooLong)
        );
    }
}

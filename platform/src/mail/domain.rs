//! Recipient domains, as per-domain throttles name them: a domain an
//! operator types is checked once ([`Domain::parse`]), and a recipient's
//! domain is read the same way from its address ([`recipient_domain`]).

use std::fmt;

/// Longest domain name (RFC 1035 §2.3.4, without the trailing dot).
pub const MAX_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0:?} is not a domain name (labels of letters, digits and hyphens, separated by dots; internationalised names in their xn-- form)")]
    Invalid(String),
    #[error("a domain name has at most {MAX_LEN} characters")]
    TooLong,
}

/// A domain name in lower case, such as `gmail.com`. Internationalised
/// names are given in their ASCII (`xn--`) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Domain(String);

impl Domain {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.len() > MAX_LEN {
            return Err(DomainError::TooLong);
        }
        let invalid = || DomainError::Invalid(raw.escape_debug().to_string());
        let labels: Vec<&str> = raw.split('.').collect();
        if labels.len() < 2 {
            return Err(invalid());
        }
        for label in labels {
            let ok = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(invalid());
            }
        }
        Ok(Domain(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The domain of a recipient's address as throttles match it: after the
/// last `@`, without a trailing dot, in lower case, and an
/// internationalised name in its `xn--` form. `None` for an address
/// without a domain.
pub fn recipient_domain(address: &str) -> Option<String> {
    let (_, domain) = address.trim().rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    match url::Host::parse(domain) {
        Ok(url::Host::Domain(ascii)) => Some(ascii),
        _ => Some(domain.to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_domains_and_lower_cases_them() {
        for (raw, want) in [
            ("gmail.com", "gmail.com"),
            ("Outlook.COM", "outlook.com"),
            ("mail-1.example.co.uk", "mail-1.example.co.uk"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(Domain::parse(raw).unwrap().as_str(), want);
        }
    }

    #[test]
    fn refuses_what_is_not_a_domain_name() {
        for bad in [
            "",
            "localhost",
            "gmail.com.",
            ".gmail.com",
            "gmail..com",
            "-gmail.com",
            "gmail-.com",
            "gm ail.com",
            "user@gmail.com",
            "bücher.example",
            " gmail.com",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert_eq!(Domain::parse(&long), Err(DomainError::TooLong));
        assert!(Domain::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn a_recipient_domain_is_compared_in_its_ascii_lower_case_form() {
        assert_eq!(
            recipient_domain("Ann@GMail.com").as_deref(),
            Some("gmail.com")
        );
        assert_eq!(
            recipient_domain("\"a@b\"@example.org.").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            recipient_domain("x@Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(recipient_domain("nobody"), None);
    }
}

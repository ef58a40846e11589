//! One-click unsubscribe (RFC 8058): the signed token in a message's
//! `List-Unsubscribe` link, and the two headers that carry it.
//!
//! A token names the message, the recipient's address and what the
//! recipient leaves: the lists of one campaign, or all mail (a
//! suppression). It is `base64url(payload || HMAC-SHA256(key, payload))`,
//! so the link needs no database row and cannot be altered: another
//! address, message or scope changes the payload and the MAC with it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// The value of `List-Unsubscribe-Post` (RFC 8058 §3.1), and the form
/// body a one-click POST carries.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// The payload's format; a token of another version is refused.
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Version, scope, message id.
const FIXED_LEN: usize = 1 + 1 + 16;

/// What an unsubscribe leaves, as a campaign (`unsubscribe_scope`) or a
/// message record stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
// `Scope` alone would take the name of the API keys' scopes in the
// OpenAPI components.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = UnsubscribeScope))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The lists of the campaign that sent the message.
    List,
    /// All mail: the address is suppressed.
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::List => "list",
            Scope::Global => "global",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "list" => Some(Scope::List),
            "global" => Some(Scope::Global),
            _ => None,
        }
    }
}

/// What a token asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Leave the lists of this campaign.
    CampaignLists(Uuid),
    /// Receive no more mail at all.
    Everything,
}

impl Target {
    pub fn scope(self) -> Scope {
        match self {
            Target::CampaignLists(_) => Scope::List,
            Target::Everything => Scope::Global,
        }
    }
}

/// What a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub message_id: Uuid,
    /// Lower-cased.
    pub address: String,
    pub target: Target,
}

impl Claims {
    pub fn new(message_id: Uuid, address: &str, target: Target) -> Self {
        Claims {
            message_id,
            address: address.trim().to_lowercase(),
            target,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 16 + self.address.len());
        out.push(VERSION);
        match self.target {
            Target::CampaignLists(_) => out.push(b'L'),
            Target::Everything => out.push(b'G'),
        }
        out.extend_from_slice(self.message_id.as_bytes());
        if let Target::CampaignLists(campaign) = self.target {
            out.extend_from_slice(campaign.as_bytes());
        }
        out.extend_from_slice(self.address.as_bytes());
        out
    }

    fn from_payload(payload: &[u8]) -> Option<Self> {
        if payload.len() < FIXED_LEN || payload[0] != VERSION {
            return None;
        }
        let message_id = Uuid::from_slice(&payload[2..FIXED_LEN]).ok()?;
        let (target, rest) = match payload[1] {
            b'G' => (Target::Everything, &payload[FIXED_LEN..]),
            b'L' if payload.len() >= FIXED_LEN + 16 => {
                let campaign = Uuid::from_slice(&payload[FIXED_LEN..FIXED_LEN + 16]).ok()?;
                (Target::CampaignLists(campaign), &payload[FIXED_LEN + 16..])
            }
            _ => return None,
        };
        let address = std::str::from_utf8(rest).ok()?;
        if address.is_empty() || address != address.to_lowercase() {
            return None;
        }
        Some(Claims {
            message_id,
            address: address.to_string(),
            target,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the unsubscribe link is malformed")]
    Malformed,
    #[error("the unsubscribe link is not one this platform signed")]
    BadSignature,
}

/// The key tokens are signed with (`UNSUBSCRIBE_SECRET`).
#[derive(Clone)]
pub struct UnsubscribeKey(SecretString);

impl std::fmt::Debug for UnsubscribeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsubscribeKey([redacted])")
    }
}

impl UnsubscribeKey {
    pub fn new(secret: SecretString) -> Self {
        UnsubscribeKey(secret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// The token for `claims` (URL-safe, no padding).
    pub fn sign(&self, claims: &Claims) -> String {
        let mut token = claims.payload();
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The claims of a token this key signed; anything else is refused
    /// (the MAC is compared in constant time).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() < FIXED_LEN + 1 + MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        Claims::from_payload(payload).ok_or(TokenError::Malformed)
    }
}

/// Where links point and what signs them: the worker builds the headers
/// with it, the API checks the tokens that come back.
#[derive(Debug, Clone)]
pub struct UnsubscribeLinks {
    /// `PUBLIC_BASE_URL` without a trailing slash.
    pub base_url: String,
    pub key: UnsubscribeKey,
    /// `UNSUBSCRIBE_MAILTO`: a `mailto:` link beside the HTTPS one.
    pub mailto: Option<String>,
}

impl UnsubscribeLinks {
    /// The one-click URL for `claims`: `{PUBLIC_BASE_URL}/u/{token}`.
    pub fn url(&self, claims: &Claims) -> String {
        format!("{}/u/{}", self.base_url, self.key.sign(claims))
    }

    /// The `List-Unsubscribe` header's value: the HTTPS link, then the
    /// `mailto:` one when configured (RFC 2369 order of preference).
    pub fn header_value(&self, claims: &Claims) -> String {
        let token = self.key.sign(claims);
        let mut value = format!("<{}/u/{token}>", self.base_url);
        if let Some(mailto) = &self.mailto {
            value.push_str(&format!(
                ", <mailto:{mailto}?subject=unsubscribe%20{token}>"
            ));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> UnsubscribeKey {
        UnsubscribeKey::new(SecretString::from(secret.to_string()))
    }

    fn claims(address: &str, target: Target) -> Claims {
        Claims::new(
            Uuid::parse_str("0193a1c2-6b00-7e00-8a00-000000000001").unwrap(),
            address,
            target,
        )
    }

    #[test]
    fn a_token_round_trips_for_each_scope() {
        let k = key("unit-test-unsubscribe-secret");
        for target in [Target::Everything, Target::CampaignLists(Uuid::now_v7())] {
            let c = claims("Ann@Example.org", target);
            let token = k.sign(&c);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            let back = k.verify(&token).unwrap();
            assert_eq!(back, c);
            assert_eq!(back.address, "ann@example.org");
            assert_eq!(back.target.scope(), target.scope());
        }
    }

    #[test]
    fn a_tampered_or_forged_token_is_refused() {
        let k = key("unit-test-unsubscribe-secret");
        let token = k.sign(&claims("ann@example.org", Target::Everything));
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Flip a bit of the message id.
        raw[5] ^= 1;
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(TokenError::BadSignature)
        );
        // Signed with another key.
        let forged = key("another-secret").sign(&claims("ann@example.org", Target::Everything));
        assert_eq!(k.verify(&forged), Err(TokenError::BadSignature));
        // Not a token at all.
        assert_eq!(k.verify("not a token"), Err(TokenError::Malformed));
        assert_eq!(k.verify("abc"), Err(TokenError::Malformed));
        assert_eq!(k.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_cannot_be_moved_to_another_address_or_scope() {
        let k = key("unit-test-unsubscribe-secret");
        let campaign = Uuid::now_v7();
        let token = k.sign(&claims("ann@example.org", Target::CampaignLists(campaign)));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        // The same MAC with bob's address in the payload.
        let mut moved = payload[..payload.len() - "ann@example.org".len()].to_vec();
        moved.extend_from_slice(b"bob@example.org");
        moved.extend_from_slice(tag);
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(&moved)),
            Err(TokenError::BadSignature)
        );
        // The same MAC turned into a global unsubscribe.
        let mut widened = vec![VERSION, b'G'];
        widened.extend_from_slice(&payload[2..FIXED_LEN]);
        widened.extend_from_slice(b"ann@example.org");
        widened.extend_from_slice(tag);
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(&widened)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn the_header_names_the_https_link_first_and_mailto_only_when_configured() {
        let mut links = UnsubscribeLinks {
            base_url: "https://mail.example.com".into(),
            key: key("unit-test-unsubscribe-secret"),
            mailto: None,
        };
        let c = claims("ann@example.org", Target::Everything);
        let value = links.header_value(&c);
        let token = links.key.sign(&c);
        assert_eq!(value, format!("<https://mail.example.com/u/{token}>"));
        assert_eq!(links.url(&c), format!("https://mail.example.com/u/{token}"));
        links.mailto = Some("unsubscribe@example.com".into());
        let value = links.header_value(&c);
        assert!(
            value.starts_with(&format!(
                "<https://mail.example.com/u/{token}>, <mailto:unsubscribe@example.com?"
            )),
            "{value}"
        );
    }
}

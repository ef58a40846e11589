//! Standard Webhooks signing: `webhook-signature` is `v1,` and the base64
//! HMAC-SHA256 of `{id}.{timestamp}.{body}` under the endpoint's secret.
//! Secrets are shown to users as `whsec_` and the base64 of the raw key,
//! which is what the spec's libraries take.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Associated data bound into every sealed webhook secret.
pub const SECRET_PURPOSE: &str = "webhook_endpoints.secret";

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is `whsec_` and base64 of at least 24 bytes")]
pub struct MalformedSecret;

/// A signing key. Its bytes never appear in `Debug` output.
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// A new random 32-byte key, with its `whsec_` form to show once.
    pub fn generate() -> (SigningKey, SecretString) {
        let mut bytes = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text = SecretString::from(format!("{PREFIX}{}", STANDARD.encode(&bytes)));
        (SigningKey(bytes), text)
    }

    /// The key of a `whsec_...` secret (as stored, once opened).
    pub fn parse(secret: &SecretString) -> Result<SigningKey, MalformedSecret> {
        let raw = secret.expose_secret();
        let encoded = raw.strip_prefix(PREFIX).ok_or(MalformedSecret)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| MalformedSecret)?;
        if bytes.len() < 24 {
            return Err(MalformedSecret);
        }
        Ok(SigningKey(bytes))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per key, space-separated
/// (the current secret's, then during a rotation's grace period the
/// previous one's).
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's test vectors
    /// (the reference libraries' `test_sign_function`).
    #[test]
    fn signs_as_the_specification_example() {
        let key = SigningKey::parse(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        ))
        .unwrap();
        let signature = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_parse_back_and_sign_alike() {
        let (key, text) = SigningKey::generate();
        assert!(text.expose_secret().starts_with("whsec_"));
        let again = SigningKey::parse(&text).unwrap();
        assert_eq!(key.sign("a", 1, b"b"), again.sign("a", 1, b"b"));
        assert!(!format!("{key:?}").contains(&text.expose_secret()[6..]));
    }

    #[test]
    fn two_keys_give_two_signatures() {
        let keys = [SigningKey::generate().0, SigningKey::generate().0];
        let header = signature_header(&keys, "id", 5, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
    }
}

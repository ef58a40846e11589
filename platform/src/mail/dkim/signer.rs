//! Signing (RFC 6376 §3.5, §3.7, §5.4; Ed25519 per RFC 8463): one
//! `DKIM-Signature` field per key, relaxed/relaxed, computed over the
//! message exactly as it goes on the wire.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::Signer as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::Pkcs1v15Sign;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::canonical::{self, Field, MessageError};
use super::{Algorithm, DkimKeyError};

/// The header fields each signature covers: what a receiver shows or acts
/// on (RFC 8058 requires the List-Unsubscribe pair to be signed for
/// one-click unsubscribe). Each is listed once per instance in the message
/// and once more, so that a copy added in transit (a second From, a
/// Reply-To where there was none) breaks the signature (§8.15).
pub const SIGNED_HEADERS: [&str; 12] = [
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
];

/// Folded lines of the signature field stay within RFC 5322's 78 characters.
const LINE: usize = 78;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the message cannot be signed: {0}")]
    Message(#[from] MessageError),
    #[error("RSA signing failed: {0}")]
    Rsa(#[from] rsa::Error),
}

enum PrivateKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl PrivateKey {
    fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Rsa(_) => Algorithm::Rsa,
            PrivateKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The `b=` bytes for a header hash. rsa-sha256 is RSASSA-PKCS1-v1_5
    /// over that SHA-256 digest; ed25519-sha256 is PureEdDSA whose message
    /// is the 32-byte digest itself (RFC 8463 §3), not the hashed bytes.
    fn sign(&self, header_hash: &[u8; 32]) -> Result<Vec<u8>, SignError> {
        match self {
            PrivateKey::Rsa(key) => Ok(key.sign_with_rng(
                &mut rand::rngs::OsRng,
                Pkcs1v15Sign::new::<Sha256>(),
                header_hash,
            )?),
            PrivateKey::Ed25519(key) => Ok(key.sign(header_hash).to_bytes().to_vec()),
        }
    }
}

/// One key ready to sign mail from its domain. Not `Debug`-printable
/// beyond its names: it holds a private key.
pub struct Signer {
    domain: String,
    selector: String,
    key: PrivateKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.key.algorithm())
            .finish_non_exhaustive()
    }
}

/// A domain or selector as it may stand in a tag value: DNS characters only.
fn dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Signer {
    /// `private_key` in the form [`super::KeyPair`] keeps it: RSA as PKCS#1
    /// (or PKCS#8) PEM, Ed25519 as the base64 of its 32-byte seed.
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        private_key: &SecretString,
    ) -> Result<Signer, DkimKeyError> {
        if !dns_name_ok(domain) || !dns_name_ok(selector) {
            return Err(DkimKeyError::Name);
        }
        let secret = private_key.expose_secret().trim();
        let key = match algorithm {
            Algorithm::Rsa => rsa::RsaPrivateKey::from_pkcs1_pem(secret)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(secret))
                .map(|k| PrivateKey::Rsa(Box::new(k)))
                .map_err(|_| DkimKeyError::Unreadable("RSA"))?,
            Algorithm::Ed25519 => {
                let seed: [u8; 32] = STANDARD
                    .decode(secret)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or(DkimKeyError::Unreadable("Ed25519"))?;
                PrivateKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
        };
        Ok(Signer {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The `DKIM-Signature` field (folded, with its CRLF) for `message`,
    /// which must have CRLF line endings ([`canonical::crlf_lines`]) and be
    /// byte for byte what is sent; `t=` is `timestamp` (Unix seconds).
    pub fn signature(&self, message: &[u8], timestamp: i64) -> Result<String, SignError> {
        let (fields, body) = canonical::split(message)?;
        let body_hash = STANDARD.encode(Sha256::digest(canonical::relaxed_body(body)));
        let names = signed_names(&fields);
        let unsigned = self.unsigned_field(&names, &body_hash, timestamp);
        let value = &unsigned[FIELD_NAME.len() + 1..];
        let input = canonical::header_hash_input(
            &fields,
            &names,
            Field {
                name: FIELD_NAME.as_bytes(),
                value: value.as_bytes(),
            },
        );
        let signature = STANDARD.encode(self.key.sign(&Sha256::digest(&input).into())?);
        Ok(format!("{unsigned}{}\r\n", fold_b(&signature)))
    }

    /// The field with every tag but `b=`'s value, folded at tag boundaries
    /// (and inside `h=` after a colon) and ending with `\r\n b=`. Folding
    /// only ever adds CRLF before white space, or CRLF and a space where
    /// the syntax allows FWS, and the hash is taken over the relaxed form
    /// of exactly this text, so a verifier's unfolding gives the same
    /// string whatever it does with the line breaks.
    fn unsigned_field(&self, names: &[&str], body_hash: &str, timestamp: i64) -> String {
        // (word, whether it continues the previous word without a space)
        let mut words: Vec<(String, bool)> = vec![
            ("v=1;".into(), false),
            (format!("a={};", self.key.algorithm().tag()), false),
            ("c=relaxed/relaxed;".into(), false),
            (format!("d={};", self.domain), false),
            (format!("s={};", self.selector), false),
            (format!("t={timestamp};"), false),
        ];
        for (i, name) in names.iter().enumerate() {
            let end = if i + 1 == names.len() { ";" } else { ":" };
            if i == 0 {
                words.push((format!("h={name}{end}"), false));
            } else {
                words.push((format!("{name}{end}"), true));
            }
        }
        words.push((format!("bh={body_hash};"), false));

        let mut out = format!("{FIELD_NAME}:");
        let mut line = out.len();
        for (word, joined) in words {
            let space = usize::from(!joined);
            if line + space + word.len() > LINE {
                out.push_str("\r\n ");
                line = 1;
            } else if !joined {
                out.push(' ');
                line += 1;
            }
            out.push_str(&word);
            line += word.len();
        }
        // `b=` starts its own line, so its value (deleted whole, with any
        // FWS in it, by the verifier) never shares a line with other tags.
        out.push_str("\r\n b=");
        out
    }
}

const FIELD_NAME: &str = "DKIM-Signature";

/// The `h=` names for a message: each of [`SIGNED_HEADERS`] once per
/// instance and once more.
fn signed_names(fields: &[Field<'_>]) -> Vec<&'static str> {
    let mut names = Vec::new();
    for name in SIGNED_HEADERS {
        let present = fields
            .iter()
            .filter(|f| {
                f.name
                    .trim_ascii_end()
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .count();
        names.extend(std::iter::repeat_n(name, present + 1));
    }
    names
}

/// The base64 signature after ` b=`: the first line takes what fits after
/// those three characters, each next line a space and up to 77 more.
fn fold_b(signature: &str) -> String {
    let mut out = String::with_capacity(signature.len() + signature.len() / 64 * 3);
    // base64 is ASCII: every index is a char boundary.
    let mut start = signature.len().min(LINE - 3);
    out.push_str(&signature[..start]);
    while start < signature.len() {
        let end = (start + LINE - 1).min(signature.len());
        out.push_str("\r\n ");
        out.push_str(&signature[start..end]);
        start = end;
    }
    out
}

/// The message as sent: its CRLF form ([`canonical::crlf_lines`]) with one
/// `DKIM-Signature` field per signer on top. Each signature covers the
/// message's own header fields and body, not the other signatures, so
/// they are independent of each other and of their order.
pub fn signed(message: &[u8], signers: &[Arc<Signer>]) -> Result<Vec<u8>, SignError> {
    let message = canonical::crlf_lines(message);
    let timestamp = chrono::Utc::now().timestamp();
    let mut out = Vec::with_capacity(message.len() + 700 * signers.len());
    for signer in signers {
        out.extend_from_slice(signer.signature(&message, timestamp)?.as_bytes());
    }
    out.extend_from_slice(&message);
    Ok(out)
}

#[cfg(test)]
#[path = "signer_tests.rs"]
mod tests;

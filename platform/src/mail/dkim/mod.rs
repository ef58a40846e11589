//! DKIM (RFC 6376; Ed25519 per RFC 8463): the keys of a sending domain
//! ([`keys`]: generated here or imported, and the DNS record that
//! publishes each), the relaxed canonical forms ([`canonical`]), and the
//! signing of an outgoing message with every active key of its From
//! domain ([`signer`]): an RSA and an Ed25519 signature side by side, as
//! RFC 8463 advises, since not every receiver checks Ed25519 yet.

mod canonical;
mod keys;
mod signer;

pub use canonical::MessageError;
pub use keys::{dns_record, DkimKeyError, KeyPair, RSA_BITS, RSA_MAX_BITS, RSA_MIN_BITS};
pub use signer::{signed, SignError, Signer, SIGNED_HEADERS};

/// Bound as associated data when a private key is sealed.
pub const PRIVATE_KEY_PURPOSE: &str = "dkim_private_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    /// As stored, and as the DNS record's `k=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "rsa" => Some(Algorithm::Rsa),
            "ed25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }

    /// The signature's `a=`.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        }
    }
}

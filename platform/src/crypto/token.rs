//! API credentials: generation and hashing.
//!
//! Keys and secrets are 256-bit random values, so a single SHA-256 is the
//! right hash (as for GitHub tokens): a slow password hash would add latency
//! to every token exchange without adding resistance against guessing.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

pub struct ApiCredentials {
    /// Public identifier, `noti_` followed by 40 alphanumerics.
    pub key: String,
    /// Shown once at creation; only its hash is stored.
    pub secret: String,
}

pub fn generate_api_credentials() -> ApiCredentials {
    ApiCredentials {
        key: format!("noti_{}", random_alphanumeric(40)),
        secret: format!("secret_{}", random_alphanumeric(48)),
    }
}

fn random_alphanumeric(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_have_the_documented_shape() {
        let c = generate_api_credentials();
        assert!(c.key.starts_with("noti_") && c.key.len() == 45);
        assert!(c.secret.starts_with("secret_"));
        assert_ne!(generate_api_credentials().key, c.key);
        assert_eq!(hash_token("abc").len(), 64);
    }
}

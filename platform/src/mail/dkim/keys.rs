//! A sending domain's DKIM keys: generated here (RSA 2048 or Ed25519) or
//! imported, in the form they are sealed in, and the DNS record that
//! publishes each.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::pkcs8::EncodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use secrecy::SecretString;

use super::Algorithm;

/// Size of generated RSA keys, and the accepted range for imported ones.
pub const RSA_BITS: usize = 2048;
pub const RSA_MIN_BITS: usize = 1024;
pub const RSA_MAX_BITS: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DkimKeyError {
    #[error("the private key is neither PKCS#1 nor PKCS#8 PEM for {0}")]
    Unreadable(&'static str),
    #[error("an RSA key must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {0}")]
    RsaSize(usize),
    #[error("a domain or selector may hold only letters, digits, '-', '_' and '.'")]
    Name,
    #[error("cannot encode the key: {0}")]
    Encoding(String),
}

/// A key pair: the private half in the form the signer reads (PKCS#1 PEM
/// for RSA, the base64 seed for Ed25519) and the public half as the DNS
/// record's `p=`.
pub struct KeyPair {
    pub algorithm: Algorithm,
    pub private_key: SecretString,
    pub public_key: String,
}

impl KeyPair {
    /// A new key: RSA 2048 or Ed25519.
    pub fn generate(algorithm: Algorithm) -> Result<KeyPair, DkimKeyError> {
        let mut rng = rand::rngs::OsRng;
        match algorithm {
            Algorithm::Rsa => {
                let key = rsa::RsaPrivateKey::new(&mut rng, RSA_BITS)
                    .map_err(|e| DkimKeyError::Encoding(e.to_string()))?;
                rsa_pair(&key)
            }
            Algorithm::Ed25519 => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rng, &mut seed);
                Ok(ed25519_pair(&ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
        }
    }

    /// An operator's existing key: RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`)
    /// or PKCS#8 (`BEGIN PRIVATE KEY`) PEM; Ed25519 as PKCS#8 PEM or the
    /// base64 of its 32-byte seed.
    pub fn import(algorithm: Algorithm, pem: &str) -> Result<KeyPair, DkimKeyError> {
        let pem = pem.trim();
        match algorithm {
            Algorithm::Rsa => {
                let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
                    .map_err(|_| DkimKeyError::Unreadable("RSA"))?;
                let bits = key.size() * 8;
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(DkimKeyError::RsaSize(bits));
                }
                rsa_pair(&key)
            }
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                    .ok()
                    .or_else(|| {
                        let seed: [u8; 32] = STANDARD.decode(pem).ok()?.try_into().ok()?;
                        Some(ed25519_dalek::SigningKey::from_bytes(&seed))
                    })
                    .ok_or(DkimKeyError::Unreadable("Ed25519"))?;
                Ok(ed25519_pair(&key))
            }
        }
    }
}

fn rsa_pair(key: &rsa::RsaPrivateKey) -> Result<KeyPair, DkimKeyError> {
    let private = key
        .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .map_err(|e| DkimKeyError::Encoding(e.to_string()))?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| DkimKeyError::Encoding(e.to_string()))?;
    Ok(KeyPair {
        algorithm: Algorithm::Rsa,
        private_key: SecretString::from(private.to_string()),
        public_key: STANDARD.encode(public.as_bytes()),
    })
}

fn ed25519_pair(key: &ed25519_dalek::SigningKey) -> KeyPair {
    KeyPair {
        algorithm: Algorithm::Ed25519,
        private_key: SecretString::from(STANDARD.encode(key.to_bytes())),
        public_key: STANDARD.encode(key.verifying_key().to_bytes()),
    }
}

/// The TXT record that publishes a key: its name and its value.
pub fn dns_record(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    public_key: &str,
) -> (String, String) {
    (
        format!("{selector}._domainkey.{domain}"),
        format!("v=DKIM1; k={}; p={public_key}", algorithm.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_keys_import_again_and_publish_their_public_half() {
        for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
            let pair = KeyPair::generate(algorithm).unwrap();
            let again = KeyPair::import(algorithm, pair.private_key.expose_secret()).unwrap();
            assert_eq!(again.public_key, pair.public_key);
            let (name, value) = dns_record("example.com", "s1", algorithm, &pair.public_key);
            assert_eq!(name, "s1._domainkey.example.com");
            assert!(value.starts_with(&format!("v=DKIM1; k={}; p=", algorithm.as_str())));
            super::super::Signer::new("example.com", "s1", algorithm, &pair.private_key).unwrap();
        }
    }

    #[test]
    fn unreadable_and_weak_keys_are_refused() {
        assert_eq!(
            KeyPair::import(Algorithm::Rsa, "not a key").err(),
            Some(DkimKeyError::Unreadable("RSA"))
        );
        assert_eq!(
            KeyPair::import(Algorithm::Ed25519, "c2hvcnQ=").err(),
            Some(DkimKeyError::Unreadable("Ed25519"))
        );
        let weak = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 512).unwrap();
        let pem = weak.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        assert_eq!(
            KeyPair::import(Algorithm::Rsa, &pem).err(),
            Some(DkimKeyError::RsaSize(512))
        );
    }
}

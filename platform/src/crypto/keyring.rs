//! AES-256-GCM sealing of stored secrets under named keys.
//!
//! Each value gets a fresh random 96-bit nonce and records the id of the key
//! that sealed it, so the key can be rotated: new values use the current key
//! while values sealed under a previous key still open until re-encrypted.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("value was sealed under key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("value could not be decrypted (wrong key or tampered data)")]
    Tampered,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
}

/// A 256-bit key. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(MasterKey)
    }

    /// A key whose bytes are all equal is a typed placeholder, not a random key.
    pub fn is_weak(&self) -> bool {
        self.0.iter().all(|b| *b == self.0[0])
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(KeyId(raw.to_string()))
        } else {
            Err(format!("{raw:?} must be 1-32 characters of [A-Za-z0-9_-]"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A sealed value as stored in the database.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

#[derive(Clone)]
pub struct Keyring {
    current_id: KeyId,
    ciphers: Arc<HashMap<KeyId, Aes256Gcm>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current_id", &self.current_id)
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

impl Keyring {
    pub fn new(current_id: KeyId, current: MasterKey, previous: HashMap<KeyId, MasterKey>) -> Self {
        let mut ciphers: HashMap<KeyId, Aes256Gcm> = previous
            .into_iter()
            .map(|(id, key)| (id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.0))))
            .collect();
        ciphers.insert(
            current_id.clone(),
            Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&current.0)),
        );
        Keyring {
            current_id,
            ciphers: Arc::new(ciphers),
        }
    }

    pub fn current_key_id(&self) -> &str {
        self.current_id.as_str()
    }

    /// Seals `plaintext` under the current key. `purpose` is bound as
    /// associated data, so a value sealed for one column cannot be passed
    /// off as another.
    pub fn seal(&self, plaintext: &str, purpose: &str) -> Sealed {
        let cipher = &self.ciphers[&self.current_id];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: purpose.as_bytes(),
                },
            )
            // AES-GCM encryption only fails for inputs beyond 64 GiB.
            .expect("AES-GCM encryption of a short secret");
        Sealed {
            key_id: self.current_id.as_str().to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, sealed: &Sealed, purpose: &str) -> Result<SecretString, CryptoError> {
        let cipher = KeyId::parse(&sealed.key_id)
            .ok()
            .and_then(|id| self.ciphers.get(&id))
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::Tampered);
        }
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| CryptoError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn ring(id: &str, byte: u8) -> Keyring {
        Keyring::new(
            KeyId::parse(id).unwrap(),
            MasterKey([byte; 32]),
            HashMap::new(),
        )
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let ring = ring("k1", 1);
        let a = ring.seal("hunter2", "smtp");
        let b = ring.seal("hunter2", "smtp");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ring.open(&a, "smtp").unwrap().expose_secret(), "hunter2");
    }

    #[test]
    fn tampering_and_wrong_purpose_are_detected() {
        let ring = ring("k1", 1);
        let mut sealed = ring.seal("hunter2", "smtp");
        assert!(matches!(
            ring.open(&sealed, "other"),
            Err(CryptoError::Tampered)
        ));
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(
            ring.open(&sealed, "smtp"),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn previous_keys_still_open_after_rotation() {
        let old = ring("k1", 1);
        let sealed = old.seal("hunter2", "smtp");
        let rotated = Keyring::new(
            KeyId::parse("k2").unwrap(),
            MasterKey([2; 32]),
            HashMap::from([(KeyId::parse("k1").unwrap(), MasterKey([1; 32]))]),
        );
        assert_eq!(
            rotated.open(&sealed, "smtp").unwrap().expose_secret(),
            "hunter2"
        );
        assert_eq!(rotated.seal("x", "smtp").key_id, "k2");
        assert!(matches!(
            ring("k3", 3).open(&sealed, "smtp"),
            Err(CryptoError::UnknownKey(_))
        ));
    }
}

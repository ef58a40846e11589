//! Cryptography: sealing stored secrets (SMTP passwords) and hashing API
//! credentials.

pub mod fernet;
mod keyring;
pub mod secret_hash;
mod token;

pub use keyring::{CryptoError, KeyId, Keyring, MasterKey, Sealed};
pub use secret_hash::SecretScheme;
pub use token::{generate_api_credentials, hash_token, ApiCredentials};

//! Cryptography: sealing stored secrets (SMTP passwords) and hashing API
//! credentials.

mod keyring;
mod token;

pub use keyring::{CryptoError, KeyId, Keyring, MasterKey, Sealed};
pub use token::{generate_api_credentials, hash_token, ApiCredentials};

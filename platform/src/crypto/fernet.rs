//! Fernet, as the Python platform sealed SMTP passwords with
//! `cryptography.fernet` under its `ENCRYPTION_KEY`. Only read here (by
//! the importer): every token's HMAC is verified before it is decrypted.

use secrecy::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FernetError {
    #[error("{0:?} is not a Fernet key (url-safe base64 of 32 bytes)")]
    BadKey(String),
    #[error("no Fernet key given")]
    NoKey,
    #[error(
        "Fernet token does not verify under the given key(s): wrong key, or the token was altered"
    )]
    Unverified,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
}

/// One key or several (Python's `MultiFernet`, during a key rotation):
/// a token opens if any of them verifies it.
pub struct FernetKeys(fernet::MultiFernet);

impl FernetKeys {
    /// Comma-separated Fernet keys, as Python's `Fernet.generate_key()`
    /// prints them. A key that does not parse is named by its position
    /// only: key material never reaches an error message.
    pub fn parse(spec: &str) -> Result<Self, FernetError> {
        let mut keys = Vec::new();
        for (n, raw) in spec
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            let key = fernet::Fernet::new(raw)
                .ok_or_else(|| FernetError::BadKey(format!("key #{}", n + 1)))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(FernetError::NoKey);
        }
        Ok(FernetKeys(fernet::MultiFernet::new(keys)))
    }

    pub fn decrypt(&self, token: &str) -> Result<SecretString, FernetError> {
        let plain = self
            .0
            .decrypt(token.trim())
            .map_err(|_| FernetError::Unverified)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| FernetError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn tokens_open_under_any_listed_key_and_altered_ones_are_refused() {
        let old = fernet::Fernet::generate_key();
        let new = fernet::Fernet::generate_key();
        let token = fernet::Fernet::new(&old).unwrap().encrypt(b"p@ss");
        let keys = FernetKeys::parse(&format!("{new}, {old}")).unwrap();
        assert_eq!(keys.decrypt(&token).unwrap().expose_secret(), "p@ss");

        // One character of the body changed, still valid base64.
        let mut altered: Vec<char> = token.chars().collect();
        let i = altered.len() / 2;
        altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
        let altered: String = altered.into_iter().collect();
        assert_eq!(keys.decrypt(&altered).unwrap_err(), FernetError::Unverified);

        let only_new = FernetKeys::parse(&new).unwrap();
        assert_eq!(
            only_new.decrypt(&token).unwrap_err(),
            FernetError::Unverified
        );
        assert_eq!(
            FernetKeys::parse("short").err(),
            Some(FernetError::BadKey("key #1".into()))
        );
        assert_eq!(FernetKeys::parse(" , ").err(), Some(FernetError::NoKey));
    }
}

//! How a stored API secret hash is verified.
//!
//! Our own keys store the SHA-256 (hex) of a 256-bit random secret (see
//! `token.rs`). Keys imported from the Python platform keep the hash it
//! stored, so applications keep their credentials: the scheme is detected
//! from the hash's format at import and stored beside it.
//!
//! | scheme            | stored as                                            |
//! |-------------------|------------------------------------------------------|
//! | `sha256`          | 64 hex digits: SHA-256 of the secret                 |
//! | `bcrypt`          | `$2a$`, `$2b$`, `$2y$` (cost at most 16)             |
//! | `passlib_pbkdf2`  | passlib `$pbkdf2-sha256$rounds$salt$hash` (or -sha512) |
//! | `werkzeug_pbkdf2` | `pbkdf2:sha256:iterations$salt$hexhash` (or sha512)  |
//! | `argon2`          | PHC string `$argon2id$v=19$m=..,t=..,p=..$salt$hash` |
//!
//! Anything else (MD5-crypt, plain text, SHA-1 PBKDF2, costs above the caps
//! below) cannot be verified safely and is refused at import.

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// Above these costs a single token exchange would hold a core for seconds.
const MAX_PBKDF2_ROUNDS: u32 = 2_000_000;
const MAX_BCRYPT_COST: u32 = 16;
const MAX_ARGON2_KIB: u32 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretScheme {
    Sha256,
    Bcrypt,
    PasslibPbkdf2,
    WerkzeugPbkdf2,
    Argon2,
}

impl SecretScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretScheme::Sha256 => "sha256",
            SecretScheme::Bcrypt => "bcrypt",
            SecretScheme::PasslibPbkdf2 => "passlib_pbkdf2",
            SecretScheme::WerkzeugPbkdf2 => "werkzeug_pbkdf2",
            SecretScheme::Argon2 => "argon2",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            SecretScheme::Sha256,
            SecretScheme::Bcrypt,
            SecretScheme::PasslibPbkdf2,
            SecretScheme::WerkzeugPbkdf2,
            SecretScheme::Argon2,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// Deliberately slow schemes: verified off the async runtime.
    pub fn is_slow(self) -> bool {
        self != SecretScheme::Sha256
    }

    /// The scheme of a stored hash, or why it cannot be verified.
    pub fn detect(stored: &str) -> Result<Self, String> {
        if stored.len() == 64 && stored.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(SecretScheme::Sha256);
        }
        if ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|p| stored.starts_with(p))
        {
            let cost: u32 = stored
                .get(4..6)
                .and_then(|c| c.parse().ok())
                .ok_or("malformed bcrypt hash")?;
            if cost > MAX_BCRYPT_COST {
                return Err(format!("bcrypt cost {cost} is above {MAX_BCRYPT_COST}"));
            }
            return stored
                .parse::<bcrypt::HashParts>()
                .map(|_| SecretScheme::Bcrypt)
                .map_err(|_| "malformed bcrypt hash".into());
        }
        if stored.starts_with("$pbkdf2-") {
            return parse_passlib(stored).map(|_| SecretScheme::PasslibPbkdf2);
        }
        if stored.starts_with("pbkdf2:") {
            return parse_werkzeug(stored).map(|_| SecretScheme::WerkzeugPbkdf2);
        }
        if stored.starts_with("$argon2") {
            let hash = argon2::PasswordHash::new(stored).map_err(|_| "malformed argon2 hash")?;
            let kib = hash
                .params
                .get_decimal("m")
                .ok_or("argon2 hash without its memory cost")?;
            if kib > MAX_ARGON2_KIB {
                return Err(format!(
                    "argon2 memory cost {kib} KiB is above {MAX_ARGON2_KIB}"
                ));
            }
            return Ok(SecretScheme::Argon2);
        }
        let what = match stored {
            s if s.starts_with("$1$") => "MD5-crypt",
            s if s.starts_with("$pbkdf2$") => "PBKDF2-SHA1",
            s if s.starts_with("$5$") || s.starts_with("$6$") => "SHA-crypt",
            _ => "an unrecognised format (perhaps the secret in clear)",
        };
        Err(format!(
            "secret stored as {what}, which cannot be verified safely"
        ))
    }
}

/// Whether `secret` matches `stored` under `scheme` (constant time where
/// the comparison is ours).
pub fn verify(scheme: SecretScheme, stored: &str, secret: &str) -> bool {
    match scheme {
        SecretScheme::Sha256 => constant_time_eq(
            hex::encode(Sha256::digest(secret.as_bytes())).as_bytes(),
            stored.to_ascii_lowercase().as_bytes(),
        ),
        SecretScheme::Bcrypt => bcrypt::verify(secret, stored).unwrap_or(false),
        SecretScheme::PasslibPbkdf2 => parse_passlib(stored)
            .map(|p| p.matches(secret))
            .unwrap_or(false),
        SecretScheme::WerkzeugPbkdf2 => parse_werkzeug(stored)
            .map(|p| p.matches(secret))
            .unwrap_or(false),
        SecretScheme::Argon2 => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(stored)
                .map(|hash| {
                    argon2::Argon2::default()
                        .verify_password(secret.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false)
        }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone, Copy)]
enum Digest2 {
    Sha256,
    Sha512,
}

struct Pbkdf2 {
    digest: Digest2,
    rounds: u32,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

impl Pbkdf2 {
    fn matches(&self, secret: &str) -> bool {
        let mut out = vec![0u8; self.expected.len()];
        match self.digest {
            Digest2::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), &self.salt, self.rounds, &mut out)
            }
            Digest2::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(secret.as_bytes(), &self.salt, self.rounds, &mut out)
            }
        }
        constant_time_eq(&out, &self.expected)
    }
}

fn checked_rounds(raw: &str) -> Result<u32, String> {
    let rounds: u32 = raw.parse().map_err(|_| "malformed PBKDF2 rounds")?;
    if rounds == 0 || rounds > MAX_PBKDF2_ROUNDS {
        return Err(format!(
            "PBKDF2 rounds {rounds} outside 1..={MAX_PBKDF2_ROUNDS}"
        ));
    }
    Ok(rounds)
}

/// passlib: `$pbkdf2-sha256$<rounds>$<salt>$<checksum>`, salt and checksum
/// in passlib's "adapted base64" (`.` for `+`, no padding).
fn parse_passlib(stored: &str) -> Result<Pbkdf2, String> {
    let parts: Vec<&str> = stored.split('$').collect();
    let [_, ident, rounds, salt, checksum] = parts[..] else {
        return Err("malformed passlib PBKDF2 hash".into());
    };
    let digest = match ident {
        "pbkdf2-sha256" => Digest2::Sha256,
        "pbkdf2-sha512" => Digest2::Sha512,
        other => return Err(format!("passlib scheme {other} is not supported")),
    };
    let ab64 = |s: &str| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s.replace('.', "+"))
            .map_err(|_| "malformed passlib PBKDF2 hash".to_string())
    };
    let expected = ab64(checksum)?;
    if expected.is_empty() {
        return Err("malformed passlib PBKDF2 hash".into());
    }
    Ok(Pbkdf2 {
        digest,
        rounds: checked_rounds(rounds)?,
        salt: ab64(salt)?,
        expected,
    })
}

/// werkzeug: `pbkdf2:sha256:<iterations>$<salt>$<hex>`; the salt is used
/// as text. Without iterations werkzeug's default changed between
/// releases, so the hash is refused rather than guessed.
fn parse_werkzeug(stored: &str) -> Result<Pbkdf2, String> {
    let mut fields = stored.splitn(3, '$');
    let (Some(method), Some(salt), Some(hex_hash)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("malformed werkzeug PBKDF2 hash".into());
    };
    let mut method = method.split(':');
    let (Some("pbkdf2"), Some(digest), Some(rounds), None) =
        (method.next(), method.next(), method.next(), method.next())
    else {
        return Err("werkzeug PBKDF2 hash without its iteration count".into());
    };
    let digest = match digest {
        "sha256" => Digest2::Sha256,
        "sha512" => Digest2::Sha512,
        other => return Err(format!("werkzeug PBKDF2 digest {other} is not supported")),
    };
    let expected = hex::decode(hex_hash).map_err(|_| "malformed werkzeug PBKDF2 hash")?;
    if expected.is_empty() {
        return Err("malformed werkzeug PBKDF2 hash".into());
    }
    Ok(Pbkdf2 {
        digest,
        rounds: checked_rounds(rounds)?,
        salt: salt.as_bytes().to_vec(),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced by passlib 1.7.4 / werkzeug's format / bcrypt for "s3cret".
    fn pbkdf2_hex(secret: &str, salt: &[u8], rounds: u32) -> String {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), salt, rounds, &mut out);
        hex::encode(out)
    }

    #[test]
    fn sha256_hex_is_detected_and_verified() {
        let stored = hex::encode(Sha256::digest(b"s3cret"));
        assert_eq!(SecretScheme::detect(&stored), Ok(SecretScheme::Sha256));
        assert!(verify(SecretScheme::Sha256, &stored, "s3cret"));
        assert!(verify(
            SecretScheme::Sha256,
            &stored.to_uppercase(),
            "s3cret"
        ));
        assert!(!verify(SecretScheme::Sha256, &stored, "s3creT"));
    }

    #[test]
    fn bcrypt_is_detected_and_verified() {
        let stored = bcrypt::hash("s3cret", 4).unwrap();
        assert_eq!(SecretScheme::detect(&stored), Ok(SecretScheme::Bcrypt));
        assert!(verify(SecretScheme::Bcrypt, &stored, "s3cret"));
        assert!(!verify(SecretScheme::Bcrypt, &stored, "other"));
        let costly = stored.replacen("$04$", "$17$", 1);
        assert!(SecretScheme::detect(&costly)
            .unwrap_err()
            .contains("cost 17"));
    }

    #[test]
    fn werkzeug_and_passlib_pbkdf2_are_verified() {
        let werkzeug = format!(
            "pbkdf2:sha256:1000$abcdSALT${}",
            pbkdf2_hex("s3cret", b"abcdSALT", 1000)
        );
        assert_eq!(
            SecretScheme::detect(&werkzeug),
            Ok(SecretScheme::WerkzeugPbkdf2)
        );
        assert!(verify(SecretScheme::WerkzeugPbkdf2, &werkzeug, "s3cret"));
        assert!(!verify(SecretScheme::WerkzeugPbkdf2, &werkzeug, "s3creT"));
        assert!(SecretScheme::detect("pbkdf2:sha256$abc$00").is_err());

        let salt = b"0123456789abcdef";
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"s3cret", salt, 1000, &mut out);
        let ab64 = |b: &[u8]| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(b)
                .replace('+', ".")
        };
        let passlib = format!("$pbkdf2-sha256$1000${}${}", ab64(salt), ab64(&out));
        assert_eq!(
            SecretScheme::detect(&passlib),
            Ok(SecretScheme::PasslibPbkdf2)
        );
        assert!(verify(SecretScheme::PasslibPbkdf2, &passlib, "s3cret"));
        assert!(!verify(SecretScheme::PasslibPbkdf2, &passlib, "nope"));
        let slow = passlib.replacen("$1000$", "$9000000$", 1);
        assert!(SecretScheme::detect(&slow).is_err());
    }

    #[test]
    fn argon2_is_verified() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let stored = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        assert_eq!(SecretScheme::detect(&stored), Ok(SecretScheme::Argon2));
        assert!(verify(SecretScheme::Argon2, &stored, "s3cret"));
        assert!(!verify(SecretScheme::Argon2, &stored, "nope"));
    }

    #[test]
    fn unverifiable_formats_are_refused_with_their_name() {
        let md5 = SecretScheme::detect("$1$abcdefgh$0123456789abcdefghijkl").unwrap_err();
        assert!(md5.contains("MD5-crypt"), "{md5}");
        assert!(SecretScheme::detect("secret_in_clear")
            .unwrap_err()
            .contains("unrecognised"));
        for s in [
            "sha256",
            "bcrypt",
            "passlib_pbkdf2",
            "werkzeug_pbkdf2",
            "argon2",
        ] {
            assert_eq!(SecretScheme::parse(s).map(SecretScheme::as_str), Some(s));
        }
    }
}

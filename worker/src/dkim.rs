//! The DKIM signers of each sending domain, read from `dkim_keys` and kept
//! for a while: a domain's keys are asked for the first time it sends and
//! again every [`REFRESH`], so a key added or turned off takes effect on a
//! busy worker within that time, without a query per email.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use platform::crypto::Keyring;
use platform::db::dkim_keys;
use platform::mail::dkim::{Algorithm, Signer, PRIVATE_KEY_PURPOSE};
use sqlx::PgPool;

/// How long a domain's keys are used before they are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

type Signers = Arc<Vec<Arc<Signer>>>;

pub struct DkimSigners {
    keyring: Keyring,
    by_domain: Mutex<HashMap<String, (Instant, Signers)>>,
}

impl DkimSigners {
    pub fn new(keyring: Keyring) -> Self {
        DkimSigners {
            keyring,
            by_domain: Mutex::new(HashMap::new()),
        }
    }

    /// The signers for mail from `domain` (none: the mail goes unsigned).
    /// When the keys cannot be read, the last known ones are used, or none.
    pub async fn for_domain(&self, pool: &PgPool, domain: &str) -> Signers {
        let cached = self.lock().get(domain).cloned();
        if let Some((at, signers)) = &cached {
            if at.elapsed() < REFRESH {
                return signers.clone();
            }
        }
        let signers = match dkim_keys::active_for_domain(pool, domain).await {
            Ok(keys) => Arc::new(keys.iter().filter_map(|k| self.signer(k)).collect()),
            Err(e) => {
                tracing::warn!(domain, error = %e, "reading DKIM keys");
                return cached.map(|(_, s)| s).unwrap_or_default();
            }
        };
        self.lock()
            .insert(domain.to_string(), (Instant::now(), Arc::clone(&signers)));
        signers
    }

    fn signer(&self, key: &dkim_keys::SigningKey) -> Option<Arc<Signer>> {
        let algorithm = Algorithm::parse(&key.algorithm)?;
        let opened = self
            .keyring
            .open(&key.sealed, PRIVATE_KEY_PURPOSE)
            .map_err(|e| tracing::error!(dkim_key = %key.id, error = %e, "cannot decrypt a DKIM key; mail goes out without its signature"))
            .ok()?;
        Signer::new(&key.domain, &key.selector, algorithm, &opened)
            .map_err(|e| tracing::error!(dkim_key = %key.id, error = %e, "unusable DKIM key"))
            .ok()
            .map(Arc::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Signers)>> {
        self.by_domain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

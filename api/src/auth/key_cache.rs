//! Which API keys are usable, remembered between requests.
//!
//! Checking the key on every request costs a database round trip; the
//! answer rarely changes. A trigger announces every change that can make a
//! key unusable (`api_key_changed`), and a listener evicts the key at once,
//! so revocation still takes effect immediately on every instance. While
//! the listener is not connected, nothing is served from the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(60);
const CHANNEL: &str = "api_key_changed";

#[derive(Default)]
pub struct KeyCache {
    usable: Mutex<HashMap<Uuid, Instant>>,
    listening: AtomicBool,
    /// Bumped on every eviction: an answer read from the database before a
    /// change arrived must not be cached after it.
    generation: AtomicU64,
}

impl KeyCache {
    /// Starts the change listener; the cache serves hits only while it runs.
    pub fn start(pool: PgPool) -> Arc<Self> {
        let cache = Arc::new(KeyCache::default());
        let listener_cache = cache.clone();
        tokio::spawn(async move { listener_cache.listen(pool).await });
        cache
    }

    async fn listen(&self, pool: PgPool) {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if listener.listen(CHANNEL).await.is_ok() {
                        self.listening.store(true, Ordering::SeqCst);
                        while let Ok(notification) = listener.recv().await {
                            self.generation.fetch_add(1, Ordering::SeqCst);
                            if let Ok(id) = notification.payload().parse::<Uuid>() {
                                self.lock().remove(&id);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "API key change listener cannot connect"),
            }
            // Notifications may have been missed: forget everything.
            self.listening.store(false, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.lock().clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.usable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn is_usable(&self, pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
        let listening = self.listening.load(Ordering::SeqCst);
        if listening && self.lock().get(&id).is_some_and(|at| at.elapsed() < TTL) {
            return Ok(true);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let usable = platform::db::api_keys::is_usable(pool, id).await?;
        if usable && listening && self.generation.load(Ordering::SeqCst) == generation {
            self.lock().insert(id, Instant::now());
        }
        Ok(usable)
    }
}

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
    /// Usable keys, with their own rate limit, and when they were read.
    usable: Mutex<HashMap<Uuid, (Option<i32>, Instant)>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Option<i32>, Instant)>> {
        self.usable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops a key this instance just changed, without waiting for the
    /// notification.
    pub fn forget(&self, id: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.lock().remove(&id);
    }

    /// `None` when the key is revoked or unknown; otherwise its own rate
    /// limit, if it has one.
    pub async fn usable_limit(
        &self,
        pool: &PgPool,
        id: Uuid,
    ) -> Result<Option<Option<i32>>, sqlx::Error> {
        let listening = self.listening.load(Ordering::SeqCst);
        if listening {
            if let Some((limit, at)) = self.lock().get(&id) {
                if at.elapsed() < TTL {
                    return Ok(Some(*limit));
                }
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let usable = platform::db::api_keys::usable_limit(pool, id).await?;
        if let Some(limit) = usable {
            if listening && self.generation.load(Ordering::SeqCst) == generation {
                self.lock().insert(id, (limit, Instant::now()));
            }
        }
        Ok(usable)
    }
}

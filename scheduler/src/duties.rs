//! The leader's periodic duties.

use std::time::Duration;

use platform::outbox::OutboxWaker;
use platform::Settings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the leader looks for due work.
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Duties {
    pool: PgPool,
    settings: Settings,
    waker: OutboxWaker,
}

impl Duties {
    pub fn new(pool: PgPool, settings: Settings, waker: OutboxWaker) -> Self {
        Duties {
            pool,
            settings,
            waker,
        }
    }

    /// Runs until `token` is cancelled (leadership lost, or shutdown).
    pub async fn run(self, token: CancellationToken) {
        let _ = (&self.pool, &self.settings, &self.waker);
        while !token.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = token.cancelled() => {}
            }
        }
    }
}

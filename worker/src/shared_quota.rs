//! Daily limits shared with the Python platform while both run.
//!
//! During a switch, Python Celery workers and ours take tasks from the same
//! queue and send through the same SMTP accounts. Each platform counts its
//! own sends, so each alone would let an account reach its limit twice
//! over. With `PYTHON_DATABASE_URL` set, every reservation made in our
//! `email_accounts` is also taken from the Python platform's count, with
//! the same conditional update its workers use: whichever platform sends,
//! the Python table holds the day's total and neither passes the limit.
//!
//! Reservations given back on our side are not given back there: the
//! Python count can only be high, which holds sends back, never lets one
//! through. When the Python database cannot be reached, nothing is
//! granted (sends wait) rather than risk passing a limit. After the switch,
//! `notify-api import-python --quota-only` carries the total into our
//! counts and the variable is removed.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub struct SharedQuota {
    pool: PgPool,
}

impl SharedQuota {
    /// Connects lazily: a worker starts even while the Python database is
    /// away, and holds sends back until it answers.
    pub fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)?;
        Ok(SharedQuota { pool })
    }

    /// Takes up to `wanted` sends from the account's Python-side count;
    /// returns how many were granted. An account the Python platform does
    /// not have is not shared: all are granted.
    pub async fn take(&self, email: &str, wanted: i32) -> i32 {
        let granted: Result<Option<i32>, sqlx::Error> = sqlx::query_scalar(
            "WITH acct AS (
                SELECT id, GREATEST(LEAST($2, daily_limit - daily_sent_count), 0)::int AS granted
                FROM email_accounts WHERE lower(email) = lower($1)
                ORDER BY id LIMIT 1
                FOR UPDATE
             ), taken AS (
                UPDATE email_accounts e SET daily_sent_count = e.daily_sent_count + acct.granted
                FROM acct WHERE e.id = acct.id AND acct.granted > 0
                RETURNING 1
             )
             SELECT granted FROM acct",
        )
        .bind(email)
        .bind(wanted)
        .fetch_optional(&self.pool)
        .await;
        match granted {
            Ok(Some(granted)) => {
                if granted < wanted {
                    metrics::counter!("shared_quota_refused_total")
                        .increment((wanted - granted) as u64);
                }
                granted
            }
            Ok(None) => wanted,
            Err(e) => {
                tracing::warn!(account = %email, error = %e, "Python platform's database unavailable: holding sends back");
                metrics::counter!("shared_quota_refused_total").increment(wanted.max(0) as u64);
                0
            }
        }
    }
}

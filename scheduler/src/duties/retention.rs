//! Retention: deletes finished message records (with their timelines),
//! requeued dead letters, settled webhook events (with their delivery
//! history), bounce reports and accounts' daily send counts older than
//! `MESSAGE_RETENTION_DAYS`, idempotency keys older than
//! `IDEMPOTENCY_RETENTION_HOURS`, refresh tokens a day after they expire,
//! and lapsed worker leases.

use platform::db::maintenance;
use tokio_util::sync::CancellationToken;

use super::Duties;

impl Duties {
    /// Deletes what is past retention in small batches (each its own
    /// statement, so locks are short), then prunes lapsed worker leases.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn maintain(&self, token: &CancellationToken) -> Result<(), sqlx::Error> {
        let s = &self.scheduler;
        let jobs: [(&str, maintenance::Job); 7] = [
            (
                "message_records",
                maintenance::Job::Messages {
                    days: s.message_retention_days,
                },
            ),
            (
                "idempotency_keys",
                maintenance::Job::IdempotencyKeys {
                    hours: s.idempotency_retention_hours,
                },
            ),
            (
                "dead_letters",
                maintenance::Job::RequeuedDeadLetters {
                    days: s.message_retention_days,
                },
            ),
            (
                "webhook_events",
                maintenance::Job::WebhookEvents {
                    days: s.message_retention_days,
                },
            ),
            (
                "bounces",
                maintenance::Job::Bounces {
                    days: s.message_retention_days,
                },
            ),
            (
                "account_send_days",
                maintenance::Job::AccountSendDays {
                    days: s.message_retention_days,
                },
            ),
            (
                "refresh_tokens",
                maintenance::Job::ExpiredRefreshTokens { hours: 24 },
            ),
        ];
        for (table, job) in jobs {
            let mut total = 0;
            loop {
                if token.is_cancelled() {
                    return Ok(());
                }
                let n = maintenance::delete_batch(&self.pool, job, s.maintenance_batch).await?;
                total += n;
                if (n as i64) < s.maintenance_batch {
                    break;
                }
            }
            if total > 0 {
                tracing::info!(table, deleted = total, "retention cleanup");
                metrics::counter!("scheduler_retention_deleted_total", "table" => table)
                    .increment(total);
            }
        }
        let pruned = platform::db::worker_leases::prune(&self.pool).await?;
        if pruned > 0 {
            tracing::info!(pruned, "lapsed worker leases removed");
        }
        Ok(())
    }
}

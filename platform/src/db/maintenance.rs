//! Retention cleanup, run by the scheduler's leader in small batches.

use sqlx::PgPool;

/// One kind of row to delete.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    /// Message records in a final state created more than `days` ago (their
    /// attachments go with them).
    Messages { days: u32 },
    /// Idempotency records older than `hours`.
    IdempotencyKeys { hours: u32 },
    /// Dead letters requeued more than `days` ago.
    RequeuedDeadLetters { days: u32 },
    /// Webhook events created more than `days` ago that no delivery still
    /// waits on (their deliveries, the attempt history, go with them).
    WebhookEvents { days: u32 },
    /// Refresh tokens expired more than `hours` ago (their JWTs are refused
    /// as expired anyway, so a replay needs no record).
    ExpiredRefreshTokens { hours: u32 },
    /// Bounce and complaint reports received more than `days` ago.
    Bounces { days: u32 },
    /// Accounts' daily send counts older than `days`.
    AccountSendDays { days: u32 },
}

/// Deletes up to `limit` rows of `job`; returns how many.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_batch(pool: &PgPool, job: Job, limit: i64) -> Result<u64, sqlx::Error> {
    let (sql, age) = match job {
        Job::Messages { days } => (
            "DELETE FROM message_records WHERE id IN (
                 SELECT id FROM message_records
                  WHERE status IN ('sent', 'failed', 'suppressed', 'cancelled', 'bounced', 'complained')
                    AND created_at < now() - make_interval(days => $1)
                  LIMIT $2)",
            days,
        ),
        Job::IdempotencyKeys { hours } => (
            "DELETE FROM idempotency_keys WHERE (api_key_id, idempotency_key) IN (
                 SELECT api_key_id, idempotency_key FROM idempotency_keys
                  WHERE created_at < now() - make_interval(hours => $1)
                  LIMIT $2)",
            hours,
        ),
        Job::RequeuedDeadLetters { days } => (
            "DELETE FROM dead_letters WHERE id IN (
                 SELECT id FROM dead_letters
                  WHERE requeued_at < now() - make_interval(days => $1)
                  LIMIT $2)",
            days,
        ),
        Job::WebhookEvents { days } => (
            "DELETE FROM webhook_events WHERE id IN (
                 SELECT v.id FROM webhook_events v
                  WHERE v.created_at < now() - make_interval(days => $1)
                    AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                     WHERE d.event_id = v.id AND d.status = 'pending')
                  LIMIT $2)",
            days,
        ),
        Job::Bounces { days } => (
            "DELETE FROM bounces WHERE id IN (
                 SELECT id FROM bounces
                  WHERE created_at < now() - make_interval(days => $1)
                  LIMIT $2)",
            days,
        ),
        Job::AccountSendDays { days } => (
            "DELETE FROM account_send_days WHERE (account_id, day) IN (
                 SELECT account_id, day FROM account_send_days
                  WHERE day < (now() - make_interval(days => $1))::date
                  LIMIT $2)",
            days,
        ),
        Job::ExpiredRefreshTokens { hours } => (
            "DELETE FROM refresh_tokens WHERE jti IN (
                 SELECT jti FROM refresh_tokens
                  WHERE expires_at < now() - make_interval(hours => $1)
                  LIMIT $2)",
            hours,
        ),
    };
    let done = sqlx::query(sql)
        .bind(i32::try_from(age).unwrap_or(i32::MAX))
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

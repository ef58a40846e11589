//! `webhook_endpoints`, `webhook_events` and `webhook_deliveries`: the
//! endpoints keys register, and the deliveries the scheduler's dispatcher
//! claims and settles. Events themselves are written by triggers on
//! `message_records` (migration V9), in the transaction of the change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::Sealed;

/// An endpoint as shown to its owner: never its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner_key_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub is_active: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT: &str = "id, owner_key_id, url, event_types, description, is_active, \
    disabled_reason, failing_since, previous_secret_expires_at, created_at, updated_at";

#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub is_active: bool,
    pub secret: Sealed,
}

/// The fields a PATCH may change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    owner: Uuid,
    new: &NewEndpoint,
) -> Result<Endpoint, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (id, owner_key_id, url, event_types, description,
            is_active, secret_ciphertext, secret_nonce, secret_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {ENDPOINT}"
    ))
    .bind(Uuid::now_v7())
    .bind(owner)
    .bind(&new.url)
    .bind(&new.event_types)
    .bind(&new.description)
    .bind(new.is_active)
    .bind(&new.secret.ciphertext)
    .bind(&new.secret.nonce)
    .bind(&new.secret.key_id)
    .fetch_one(executor)
    .await
}

/// Endpoints of `owner`, counted under a transaction-scoped lock on the
/// owner so that two concurrent creations cannot both pass the limit.
pub async fn lock_and_count(tx: &mut sqlx::PgConnection, owner: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('webhook_endpoints:' || $1::text, 0))",
    )
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE owner_key_id = $1")
        .bind(owner)
        .fetch_one(&mut *tx)
        .await
}

/// The endpoint `id` if `owner` may see it: `Some(key)` sees only that
/// key's endpoints, `None` (an admin) every endpoint.
pub async fn get(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT} FROM webhook_endpoints
         WHERE id = $1 AND ($2::uuid IS NULL OR owner_key_id = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(executor)
    .await
}

/// Endpoints `owner` may see (as for [`get`]), oldest first, after the
/// keyset position `after`.
pub async fn list(
    executor: impl PgExecutor<'_>,
    owner: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT} FROM webhook_endpoints
         WHERE ($1::uuid IS NULL OR owner_key_id = $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4"
    ))
    .bind(owner)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Applies `patch`. Turning an endpoint on again clears why it was
/// disabled and its failure streak.
pub async fn update(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
    patch: &EndpointPatch,
) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET
            url = COALESCE($3, url),
            event_types = COALESCE($4, event_types),
            description = COALESCE($5, description),
            is_active = COALESCE($6, is_active),
            disabled_reason = CASE WHEN $6 IS NULL THEN disabled_reason END,
            failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END,
            updated_at = now()
         WHERE id = $1 AND ($2::uuid IS NULL OR owner_key_id = $2)
         RETURNING {ENDPOINT}"
    ))
    .bind(id)
    .bind(owner)
    .bind(&patch.url)
    .bind(&patch.event_types)
    .bind(&patch.description)
    .bind(patch.is_active)
    .fetch_optional(executor)
    .await
}

pub async fn delete(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "DELETE FROM webhook_endpoints
         WHERE id = $1 AND ($2::uuid IS NULL OR owner_key_id = $2) RETURNING {ENDPOINT}"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(executor)
    .await
}

/// Makes `secret` the signing secret; the current one keeps signing too
/// for `grace`.
pub async fn rotate_secret(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
    secret: &Sealed,
    grace: Duration,
) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET
            previous_secret_ciphertext = secret_ciphertext,
            previous_secret_nonce = secret_nonce,
            previous_secret_key_id = secret_key_id,
            previous_secret_expires_at = now() + make_interval(secs => $6),
            secret_ciphertext = $3, secret_nonce = $4, secret_key_id = $5,
            updated_at = now()
         WHERE id = $1 AND ($2::uuid IS NULL OR owner_key_id = $2)
         RETURNING {ENDPOINT}"
    ))
    .bind(id)
    .bind(owner)
    .bind(&secret.ciphertext)
    .bind(&secret.nonce)
    .bind(&secret.key_id)
    .bind(grace.as_secs_f64())
    .fetch_optional(executor)
    .await
}

/// One delivery of one event to one endpoint, with its last attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub message_id: Option<Uuid>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_latency_ms: Option<i32>,
    pub last_response: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const DELIVERY: &str = "d.id, d.event_id, v.event_type, v.message_id, d.status, d.attempts, \
    d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_latency_ms, d.last_response, d.last_error, d.delivered_at, d.created_at";

/// The endpoint's deliveries, newest first, after the keyset position `after`.
pub async fn deliveries(
    executor: impl PgExecutor<'_>,
    endpoint: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DELIVERY} FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id
         WHERE d.endpoint_id = $1
           AND ($2::timestamptz IS NULL OR (d.created_at, d.id) < ($2, $3))
         ORDER BY d.created_at DESC, d.id DESC LIMIT $4"
    ))
    .bind(endpoint)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Makes a delivery due now, with a fresh retry window (a delivered one
/// is sent again: same event, same `webhook-id`).
pub async fn redeliver(
    executor: impl PgExecutor<'_>,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now(),
            retry_from = now(), delivered_at = NULL
           FROM webhook_events v
          WHERE v.id = d.event_id AND d.id = $2 AND d.endpoint_id = $1
         RETURNING {DELIVERY}"
    ))
    .bind(endpoint)
    .bind(delivery)
    .fetch_optional(executor)
    .await
}

/// Records a `webhook.test` event for one endpoint and its delivery.
pub async fn insert_test_event(
    tx: &mut sqlx::PgConnection,
    endpoint: Uuid,
) -> Result<(Uuid, Uuid), sqlx::Error> {
    let event_id = Uuid::new_v4();
    let delivery_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_events (id, event_type, payload)
         VALUES ($1, $2, jsonb_build_object('type', $2::text,
             'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
             'data', jsonb_build_object('event_id', $1::uuid, 'endpoint_id', $3::uuid)))",
    )
    .bind(event_id)
    .bind(crate::webhooks::TEST_EVENT)
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO webhook_deliveries (id, event_id, endpoint_id) VALUES ($1, $2, $3)")
        .bind(delivery_id)
        .bind(event_id)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    Ok((event_id, delivery_id))
}

/// A delivery a dispatcher claimed, with what it needs to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub endpoint_id: Uuid,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    pub retry_from: DateTime<Utc>,
    /// The event body, exactly as signed and sent.
    pub body: String,
    pub url: String,
    pub secret_ciphertext: Vec<u8>,
    pub secret_nonce: Vec<u8>,
    pub secret_key_id: String,
    pub previous_secret_ciphertext: Option<Vec<u8>>,
    pub previous_secret_nonce: Option<Vec<u8>>,
    pub previous_secret_key_id: Option<String>,
}

impl Claimed {
    pub fn secret(&self) -> Sealed {
        Sealed {
            key_id: self.secret_key_id.clone(),
            nonce: self.secret_nonce.clone(),
            ciphertext: self.secret_ciphertext.clone(),
        }
    }

    /// The previous secret, still within its grace period (the claim
    /// leaves it out once expired).
    pub fn previous_secret(&self) -> Option<Sealed> {
        Some(Sealed {
            key_id: self.previous_secret_key_id.clone()?,
            nonce: self.previous_secret_nonce.clone()?,
            ciphertext: self.previous_secret_ciphertext.clone()?,
        })
    }
}

/// The advisory lock class of deliveries in flight (the second key is the
/// delivery id's hash): session locks held by a dispatcher's own connection
/// while it sends them, so claiming writes nothing, and a dispatcher that
/// dies (its connection closes) lets go of its deliveries at once. Two
/// deliveries whose ids hash alike only take turns.
const IN_FLIGHT_LOCK: i32 = 0x7768_6b31; // "whk1"

/// Locks up to `limit` due deliveries of active endpoints, oldest due first
/// within each endpoint, and for each endpoint at most `per_endpoint` minus
/// what this dispatcher already has in flight to it (`busy`: endpoint ids
/// with their counts). `held`: the deliveries this connection already
/// locks (a session lock is re-entrant, so they must not be offered again).
/// Rows another dispatcher holds are skipped. Each endpoint's rows come
/// from the index on (endpoint, due time), so a claim costs the same with
/// a backlog of millions. Returns the ids locked; [`locked`] then reads
/// them afresh.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_due(
    conn: &mut PgConnection,
    busy: &[(Uuid, i64)],
    held: &[Uuid],
    per_endpoint: i64,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (busy_ids, busy_counts): (Vec<Uuid>, Vec<i64>) = busy.iter().copied().unzip();
    // Every lookup below is by index, never a join the planner could turn
    // into a scan: these tables grow by thousands of rows a second, faster
    // than statistics follow. The candidates are MATERIALIZED before any
    // lock is tried, so no row is locked that is not returned.
    sqlx::query_scalar(
        "WITH slots AS (
             SELECT e.id, $3 - COALESCE(b.n, 0) AS free
               FROM webhook_endpoints e
               LEFT JOIN UNNEST($1::uuid[], $2::bigint[]) AS b(id, n) ON b.id = e.id
              WHERE e.is_active
         ), candidates AS MATERIALIZED (
             SELECT c.id FROM slots s
              CROSS JOIN LATERAL (
                  SELECT d.id FROM webhook_deliveries d
                   WHERE d.endpoint_id = s.id AND d.status = 'pending'
                     AND d.next_attempt_at <= now() AND d.id <> ALL ($6::uuid[])
                   ORDER BY d.next_attempt_at
                   LIMIT GREATEST(s.free, 0)) c
              LIMIT $4
         )
         SELECT id FROM candidates WHERE pg_try_advisory_lock($5, hashtext(id::text))",
    )
    .bind(busy_ids)
    .bind(busy_counts)
    .bind(per_endpoint)
    .bind(limit)
    .bind(IN_FLIGHT_LOCK)
    .bind(held)
    .fetch_all(conn)
    .await
}

/// The locked deliveries that are still due, with what sending needs,
/// each looked up by its id: the LIMIT keeps the planner from turning the
/// lookup into a join, which it may plan as a scan of the whole table
/// (from the endpoint, or hashed) when its statistics are older than the
/// table's growth. A fresh statement, so it sees what committed before the locks were
/// taken: a delivery another dispatcher settled and let go of a moment
/// ago is no longer pending, and is not sent twice.
pub async fn locked(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.event_id, d.endpoint_id, d.attempts + 1 AS attempts, d.retry_from,
                (SELECT v.event_type FROM webhook_events v WHERE v.id = d.event_id) AS event_type,
                (SELECT v.payload::text FROM webhook_events v WHERE v.id = d.event_id) AS body,
                e.url, e.secret_ciphertext, e.secret_nonce, e.secret_key_id,
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_ciphertext END
                    AS previous_secret_ciphertext,
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_nonce END
                    AS previous_secret_nonce,
                CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_key_id END
                    AS previous_secret_key_id
           FROM UNNEST($1::uuid[]) AS x(id)
          CROSS JOIN LATERAL (SELECT * FROM webhook_deliveries d WHERE d.id = x.id LIMIT 1) d
           JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.is_active
          WHERE d.status = 'pending' AND d.next_attempt_at <= now()",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Lets go of deliveries this connection locked: once their outcome is
/// committed, or when [`locked`] found them no longer due.
pub async fn unlock(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_unlock($2, hashtext(id::text)) FROM UNNEST($1::uuid[]) id")
        .bind(ids)
        .bind(IN_FLIGHT_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one attempt got back.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The HTTP status, when there was a response.
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// The start of the response body.
    pub response: Option<String>,
    /// Why there was no 2xx (connection refused, timeout, status).
    pub error: Option<String>,
}

/// 2xx answers: the deliveries are done and their endpoints' failure
/// streaks end. One statement for a whole burst (`delivered`: each claimed
/// delivery's id with its attempt), so settling costs one round trip and
/// one commit however many requests ended together.
pub async fn record_delivered(
    pool: &PgPool,
    delivered: &[(Uuid, Attempt)],
) -> Result<(), sqlx::Error> {
    if delivered.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = delivered.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<Option<i32>> = delivered.iter().map(|(_, a)| a.status).collect();
    let latencies: Vec<i32> = delivered.iter().map(|(_, a)| a.latency_ms).collect();
    let responses: Vec<Option<String>> =
        delivered.iter().map(|(_, a)| a.response.clone()).collect();
    // Each row is found by a lookup on its primary key (a scalar subquery
    // the planner cannot turn into a join, which on stale statistics it
    // may plan as a scan) and updated by its ctid; its values are taken
    // from the arrays by position.
    sqlx::query(
        "WITH d AS (
             UPDATE webhook_deliveries d SET status = 'delivered', delivered_at = now(),
                 attempts = d.attempts + 1, last_attempt_at = now(),
                 last_status = ($2::int[])[array_position($1::uuid[], d.id)],
                 last_latency_ms = ($3::int[])[array_position($1::uuid[], d.id)],
                 last_response = ($4::text[])[array_position($1::uuid[], d.id)],
                 last_error = NULL
              WHERE d.ctid = ANY (ARRAY(
                        SELECT (SELECT x.ctid FROM webhook_deliveries x WHERE x.id = i)
                          FROM UNNEST($1::uuid[]) AS i))
                AND d.id = ANY ($1)
             RETURNING d.endpoint_id)
         UPDATE webhook_endpoints e SET failing_since = NULL
          WHERE e.id IN (SELECT endpoint_id FROM d) AND e.failing_since IS NOT NULL",
    )
    .bind(ids)
    .bind(statuses)
    .bind(latencies)
    .bind(responses)
    .execute(pool)
    .await?;
    Ok(())
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    /// The delivery gave up (its retry window has passed).
    pub gave_up: bool,
    /// The endpoint has failed for the whole window and is now disabled.
    pub endpoint_disabled: bool,
}

/// Anything but a 2xx: the delivery is due again after `retry_in`, or
/// fails for good once `window` has passed since its `retry_from`; an
/// endpoint that has failed for `window` is disabled with a reason.
pub async fn record_failed(
    pool: &PgPool,
    delivery: &Claimed,
    attempt: &Attempt,
    retry_in: Duration,
    window: Duration,
) -> Result<FailureOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gave_up: bool = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET
            status = CASE WHEN retry_from + make_interval(secs => $6) <= now()
                          THEN 'failed' ELSE 'pending' END,
            next_attempt_at = now() + make_interval(secs => $5),
            attempts = attempts + 1, last_attempt_at = now(), last_status = $2, last_latency_ms = $3, last_response = $4, last_error = $7
         WHERE id = $1 RETURNING status = 'failed'",
    )
    .bind(delivery.id)
    .bind(attempt.status)
    .bind(attempt.latency_ms)
    .bind(&attempt.response)
    .bind(retry_in.as_secs_f64())
    .bind(window.as_secs_f64())
    .bind(&attempt.error)
    .fetch_one(&mut *tx)
    .await?;
    let endpoint_disabled: bool = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET
            failing_since = COALESCE(failing_since, now()),
            is_active = is_active
                AND COALESCE(failing_since, now()) + make_interval(secs => $2) > now(),
            disabled_reason = CASE
                WHEN COALESCE(failing_since, now()) + make_interval(secs => $2) <= now()
                THEN 'every delivery failed for ' || round($2 / 3600) || ' hours; last: ' || $3
                ELSE disabled_reason END
         WHERE id = $1
         RETURNING NOT is_active",
    )
    .bind(delivery.endpoint_id)
    .bind(window.as_secs_f64())
    .bind(attempt.error.as_deref().unwrap_or("failed"))
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(false);
    tx.commit().await?;
    Ok(FailureOutcome {
        gave_up,
        endpoint_disabled,
    })
}

/// Turns up to `max` of the events that message changes recorded
/// (`webhook_pending_events`) into events and deliveries, in one
/// transaction (`webhook_fan_out`, migration V20). Returns how many it
/// took: 0 when none waits or another instance is fanning out.
#[tracing::instrument(level = "debug", skip(pool))]
pub async fn fan_out(pool: &PgPool, max: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT webhook_fan_out($1)")
        .bind(max)
        .fetch_one(pool)
        .await
}

/// How long the oldest due delivery of an active endpoint has waited (one
/// in flight counts as waiting, for at most the request timeout), or the
/// oldest event not yet fanned out, if it is older. Through the
/// per-endpoint index, one short scan per endpoint.
pub async fn oldest_due_age(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - least(
                    min(x.due),
                    (SELECT p.created_at FROM webhook_pending_events p ORDER BY p.id LIMIT 1)))::float8, 0)
           FROM webhook_endpoints e
          CROSS JOIN LATERAL (
              SELECT d.next_attempt_at AS due FROM webhook_deliveries d
               WHERE d.endpoint_id = e.id AND d.status = 'pending'
                 AND d.next_attempt_at <= now()
               ORDER BY d.next_attempt_at LIMIT 1) x
          WHERE e.is_active",
    )
    .fetch_one(pool)
    .await
}

/// A sealed endpoint secret as stored, for key rotation: the signing one,
/// or the previous one while its grace period lasts.
pub struct StoredSecret {
    pub endpoint: Uuid,
    pub previous: bool,
    pub sealed: Sealed,
}

/// Every sealed secret, previous ones included.
pub async fn stored_secrets(pool: &PgPool) -> Result<Vec<StoredSecret>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        previous: bool,
        key_id: String,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, false AS previous, secret_key_id AS key_id, secret_nonce AS nonce,
                secret_ciphertext AS ciphertext
           FROM webhook_endpoints
         UNION ALL
         SELECT id, true, previous_secret_key_id, previous_secret_nonce, previous_secret_ciphertext
           FROM webhook_endpoints WHERE previous_secret_ciphertext IS NOT NULL
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredSecret {
            endpoint: r.id,
            previous: r.previous,
            sealed: Sealed {
                key_id: r.key_id,
                nonce: r.nonce,
                ciphertext: r.ciphertext,
            },
        })
        .collect())
}

/// Replaces a sealed secret with its re-encryption, only if the row still
/// holds exactly the old one (a rotation through the API meanwhile is
/// already under the current key). Returns whether it changed.
pub async fn reseal_secret(
    pool: &PgPool,
    stored: &StoredSecret,
    new: &Sealed,
) -> Result<bool, sqlx::Error> {
    let column = if stored.previous {
        "previous_secret"
    } else {
        "secret"
    };
    let done = sqlx::query(&format!(
        "UPDATE webhook_endpoints SET
            {column}_ciphertext = $5, {column}_nonce = $6, {column}_key_id = $7
         WHERE id = $1 AND {column}_key_id = $2 AND {column}_nonce = $3
           AND {column}_ciphertext = $4"
    ))
    .bind(stored.endpoint)
    .bind(&stored.sealed.key_id)
    .bind(&stored.sealed.nonce)
    .bind(&stored.sealed.ciphertext)
    .bind(&new.ciphertext)
    .bind(&new.nonce)
    .bind(&new.key_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the webhook event `event_type` of message `message_id` for the
/// active endpoints of its key that want it (`webhook_record_events`,
/// migration V20; nothing when none does), for events no trigger writes.
/// The scheduler's fan-out turns it into an event and deliveries.
#[tracing::instrument(level = "debug", skip(executor))]
pub async fn record_message_event(
    executor: impl PgExecutor<'_>,
    message_id: Uuid,
    event_type: &str,
) -> Result<(), sqlx::Error> {
    let changes = serde_json::json!([{"id": message_id, "event_type": event_type}]);
    sqlx::query("SELECT webhook_record_events($1)")
        .bind(sqlx::types::Json(changes))
        .execute(executor)
        .await?;
    Ok(())
}

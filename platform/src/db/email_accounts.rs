//! `email_accounts`: the SMTP account pool, and the atomic quota reservation
//! that keeps several workers together under each account's daily limit.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::crypto::Sealed;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS (usually port 587).
    Starttls,
    /// No TLS at all: only for loopback or trusted networks.
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "implicit" => Some(TlsMode::Implicit),
            "starttls" => Some(TlsMode::Starttls),
            "none" => Some(TlsMode::None),
            _ => None,
        }
    }

    /// The usual mode for a port, when the caller does not say.
    pub fn default_for_port(port: u16) -> Self {
        match port {
            465 => TlsMode::Implicit,
            587 => TlsMode::Starttls,
            _ => TlsMode::Starttls,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailAccount {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub smtp_host: String,
    pub smtp_port: i32,
    pub smtp_username: String,
    pub smtp_password_ciphertext: Vec<u8>,
    pub smtp_password_nonce: Vec<u8>,
    pub smtp_password_key_id: String,
    pub tls_mode: String,
    pub daily_limit: i32,
    /// Sends counted today (in TZ); zero when the counter belongs to a past day.
    pub sent_today: i32,
    pub priority: i32,
    pub is_active: bool,
    /// Sends per rolling minute across all workers; `None`: no limit.
    pub rate_limit_per_minute: Option<i32>,
    /// Concurrent SMTP transactions across all workers; `None`: no limit.
    pub max_connections: Option<i32>,
    /// The warm-up schedule, when the account has one.
    #[sqlx(flatten)]
    pub warmup: WarmupColumns,
    /// What the account may send today: `daily_limit`, or less on a
    /// warm-up day (see [`Warmup`]).
    pub effective_daily_limit: i32,
    pub consecutive_failures: i32,
    pub circuit_open_until: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Why the platform paused it (its bounce or complaint rate); cleared
    /// when it is resumed.
    pub paused_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EmailAccount {
    pub fn sealed_password(&self) -> Sealed {
        Sealed {
            key_id: self.smtp_password_key_id.clone(),
            nonce: self.smtp_password_nonce.clone(),
            ciphertext: self.smtp_password_ciphertext.clone(),
        }
    }

    pub fn tls(&self) -> TlsMode {
        TlsMode::parse(&self.tls_mode).unwrap_or(TlsMode::Starttls)
    }
}

/// A warm-up schedule: on day `d` after `started_on` (in TZ; before it,
/// day 0) the account may send `floor(start_limit * growth_factor^d)`,
/// never more than its `daily_limit`. So 50 doubling reaches 400 on the
/// fourth day (50, 100, 200, 400).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub started_on: NaiveDate,
    pub start_limit: i32,
    pub growth_factor: f64,
}

/// Growth factors a schedule may have: below 1.1 a warm-up would take
/// years; above 10 it is hardly one.
pub const WARMUP_GROWTH: (f64, f64) = (1.1, 10.0);

/// The exponent is capped so that `start_limit * growth_factor^d` stays a
/// finite double: 10^300 times 10^7 is below f64::MAX, and 1.1^300 is far
/// above any daily limit.
const WARMUP_MAX_EXPONENT: i64 = 300;

impl Warmup {
    /// The day of the schedule `today` is (0 on `started_on` and before).
    pub fn day(&self, today: NaiveDate) -> i64 {
        (today - self.started_on).num_days().max(0)
    }

    /// The schedule's limit for `today`, capped at `daily_limit`: what the
    /// quota reservation computes in SQL (`effective_limit!`).
    pub fn limit_on(&self, today: NaiveDate, daily_limit: i32) -> i32 {
        let exponent = self.day(today).min(WARMUP_MAX_EXPONENT) as f64;
        let limit = (f64::from(self.start_limit) * self.growth_factor.powf(exponent)).floor();
        limit.min(f64::from(daily_limit)) as i32
    }

    /// The first day on which the schedule reaches `daily_limit`.
    pub fn completes_on(&self, daily_limit: i32) -> NaiveDate {
        let start = f64::from(self.start_limit.max(1));
        let days = if start >= f64::from(daily_limit) {
            0
        } else {
            // Rounding aside, the first d with start × growth^d ≥ daily_limit;
            // then checked with the schedule's own arithmetic.
            let estimate = ((f64::from(daily_limit) / start).ln() / self.growth_factor.ln())
                .ceil()
                .clamp(0.0, WARMUP_MAX_EXPONENT as f64) as u64;
            let at = |d: u64| self.started_on.checked_add_days(chrono::Days::new(d));
            (estimate.saturating_sub(1)..=estimate + 1)
                .find(|&d| at(d).is_some_and(|on| self.limit_on(on, daily_limit) >= daily_limit))
                .unwrap_or(estimate)
        };
        self.started_on
            .checked_add_days(chrono::Days::new(days))
            .unwrap_or(NaiveDate::MAX)
    }
}

/// The warm-up columns, all set or none (a table constraint says so).
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct WarmupColumns {
    pub warmup_started_on: Option<NaiveDate>,
    pub warmup_start_limit: Option<i32>,
    pub warmup_growth_factor: Option<f64>,
}

impl WarmupColumns {
    pub fn schedule(&self) -> Option<Warmup> {
        Some(Warmup {
            started_on: self.warmup_started_on?,
            start_limit: self.warmup_start_limit?,
            growth_factor: self.warmup_growth_factor?,
        })
    }
}

/// Associated data bound into every sealed SMTP password.
pub const PASSWORD_PURPOSE: &str = "email_accounts.smtp_password";

/// What an account may send on `$1` (today in TZ): its `daily_limit`, or
/// on a warm-up day the schedule's limit when lower ([`Warmup::limit_on`]
/// computes the same).
macro_rules! effective_limit {
    () => {
        "(CASE WHEN warmup_start_limit IS NULL THEN daily_limit \
          ELSE LEAST(daily_limit::float8, floor(warmup_start_limit * power(warmup_growth_factor, \
               LEAST(GREATEST($1 - warmup_started_on, 0), 300))))::int END)"
    };
}

/// `$1` is today's date in TZ.
const COLUMNS: &str = concat!(
    "id, email, display_name, smtp_host, smtp_port, smtp_username, \
    smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id, tls_mode, daily_limit, \
    (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END) AS sent_today, \
    priority, is_active, rate_limit_per_minute, max_connections, consecutive_failures, circuit_open_until, \
    last_used_at, last_error, last_error_at, paused_reason, created_at, updated_at, \
    warmup_started_on, warmup_start_limit, warmup_growth_factor, ",
    effective_limit!(),
    " AS effective_daily_limit"
);

/// An account can take a send: active, and its circuit not open.
const USABLE: &str = "is_active AND (circuit_open_until IS NULL OR circuit_open_until <= now())";

pub struct NewEmailAccount {
    pub email: String,
    pub display_name: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_username: String,
    pub password: Sealed,
    pub tls_mode: TlsMode,
    pub daily_limit: i32,
    pub priority: i32,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub max_connections: Option<i32>,
    pub warmup: Option<Warmup>,
}

#[derive(Default)]
pub struct AccountPatch {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_username: Option<String>,
    pub password: Option<Sealed>,
    pub tls_mode: Option<TlsMode>,
    pub daily_limit: Option<i32>,
    pub priority: Option<i32>,
    pub is_active: Option<bool>,
    /// `Some(0)` removes the limit.
    pub rate_limit_per_minute: Option<i32>,
    /// `Some(0)` removes the limit.
    pub max_connections: Option<i32>,
    /// `Some(None)` removes the warm-up schedule.
    pub warmup: Option<Option<Warmup>>,
}

pub async fn insert(
    executor: impl PgExecutor<'_>,
    today: NaiveDate,
    new: &NewEmailAccount,
) -> Result<EmailAccount, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO email_accounts (id, email, display_name, smtp_host, smtp_port, smtp_username,
            smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id, tls_mode,
            daily_limit, priority, is_active, rate_limit_per_minute, max_connections,
            warmup_started_on, warmup_start_limit, warmup_growth_factor)
         VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         RETURNING {COLUMNS}"
    ))
    .bind(today)
    .bind(Uuid::now_v7())
    .bind(&new.email)
    .bind(&new.display_name)
    .bind(&new.smtp_host)
    .bind(i32::from(new.smtp_port))
    .bind(&new.smtp_username)
    .bind(&new.password.ciphertext)
    .bind(&new.password.nonce)
    .bind(&new.password.key_id)
    .bind(new.tls_mode.as_str())
    .bind(new.daily_limit)
    .bind(new.priority)
    .bind(new.is_active)
    .bind(new.rate_limit_per_minute)
    .bind(new.max_connections)
    .bind(new.warmup.map(|w| w.started_on))
    .bind(new.warmup.map(|w| w.start_limit))
    .bind(new.warmup.map(|w| w.growth_factor))
    .fetch_one(executor)
    .await
}

pub async fn list(pool: &PgPool, today: NaiveDate) -> Result<Vec<EmailAccount>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM email_accounts ORDER BY priority DESC, created_at"
    ))
    .bind(today)
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    today: NaiveDate,
    id: Uuid,
) -> Result<Option<EmailAccount>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM email_accounts WHERE id = $2"
    ))
    .bind(today)
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn update(
    executor: impl PgExecutor<'_>,
    today: NaiveDate,
    id: Uuid,
    patch: &AccountPatch,
) -> Result<Option<EmailAccount>, sqlx::Error> {
    let (ciphertext, nonce, key_id) = match &patch.password {
        Some(s) => (Some(&s.ciphertext), Some(&s.nonce), Some(&s.key_id)),
        None => (None, None, None),
    };
    let warmup = patch.warmup.flatten();
    sqlx::query_as(&format!(
        "UPDATE email_accounts SET
            email = COALESCE($3, email),
            display_name = COALESCE($4, display_name),
            smtp_host = COALESCE($5, smtp_host),
            smtp_port = COALESCE($6, smtp_port),
            smtp_username = COALESCE($7, smtp_username),
            smtp_password_ciphertext = COALESCE($8, smtp_password_ciphertext),
            smtp_password_nonce = COALESCE($9, smtp_password_nonce),
            smtp_password_key_id = COALESCE($10, smtp_password_key_id),
            tls_mode = COALESCE($11, tls_mode),
            daily_limit = COALESCE($12, daily_limit),
            priority = COALESCE($13, priority),
            is_active = COALESCE($14, is_active),
            -- Resuming an account clears why the platform paused it.
            paused_reason = CASE WHEN $14 THEN NULL ELSE paused_reason END,
            rate_limit_per_minute = CASE WHEN $15 IS NULL THEN rate_limit_per_minute ELSE NULLIF($15, 0) END,
            max_connections = CASE WHEN $16 IS NULL THEN max_connections ELSE NULLIF($16, 0) END,
            warmup_started_on = CASE WHEN $17 THEN $18 ELSE warmup_started_on END,
            warmup_start_limit = CASE WHEN $17 THEN $19 ELSE warmup_start_limit END,
            warmup_growth_factor = CASE WHEN $17 THEN $20 ELSE warmup_growth_factor END,
            updated_at = now()
         WHERE id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(today)
    .bind(id)
    .bind(&patch.email)
    .bind(&patch.display_name)
    .bind(&patch.smtp_host)
    .bind(patch.smtp_port.map(i32::from))
    .bind(&patch.smtp_username)
    .bind(ciphertext)
    .bind(nonce)
    .bind(key_id)
    .bind(patch.tls_mode.map(TlsMode::as_str))
    .bind(patch.daily_limit)
    .bind(patch.priority)
    .bind(patch.is_active)
    .bind(patch.rate_limit_per_minute)
    .bind(patch.max_connections)
    .bind(patch.warmup.is_some())
    .bind(warmup.map(|w| w.started_on))
    .bind(warmup.map(|w| w.start_limit))
    .bind(warmup.map(|w| w.growth_factor))
    .fetch_optional(executor)
    .await
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM email_accounts WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    /// Account-level failures in a row that open the circuit.
    pub threshold: i32,
    /// How long an open circuit keeps the account out of rotation; after
    /// it the account is tried again (half-open) and one more failure
    /// reopens it at once.
    pub cooldown: std::time::Duration,
}

/// Records an account-level failure (refused authentication, unreachable
/// server). `open_now` opens the circuit whatever the count: a refused
/// password will not get better by retrying. Returns whether it is open.
pub async fn record_failure(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    breaker: Breaker,
    open_now: bool,
) -> Result<bool, sqlx::Error> {
    let open: Option<bool> = sqlx::query_scalar(
        "UPDATE email_accounts SET
            consecutive_failures = consecutive_failures + 1,
            last_error = $2, last_error_at = now(),
            circuit_open_until = CASE WHEN $3 OR consecutive_failures + 1 >= $4
                THEN now() + make_interval(secs => $5) ELSE circuit_open_until END
         WHERE id = $1
         RETURNING circuit_open_until > now()",
    )
    .bind(id)
    .bind(error)
    .bind(open_now)
    .bind(breaker.threshold)
    .bind(breaker.cooldown.as_secs_f64())
    .fetch_optional(pool)
    .await?
    .flatten();
    Ok(open == Some(true))
}

/// A success closes the circuit and resets the failure count.
pub async fn record_success(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_accounts SET consecutive_failures = 0, circuit_open_until = NULL
         WHERE id = $1 AND (consecutive_failures > 0 OR circuit_open_until IS NOT NULL)",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reservation {
    #[sqlx(flatten)]
    pub account: EmailAccount,
    /// Sends reserved on the account: at most what was asked, and at most
    /// the room the caller gave it.
    pub granted: i32,
    /// What was asked of the account: fewer granted means its quota ran out.
    #[sqlx(skip)]
    pub asked: i32,
}

/// Reserves up to `wanted` sends on the best account with quota left, not
/// in `exclude`: highest priority first, and among equals the one that sent
/// least today. `room(id, max_connections)` caps what one account takes
/// (the caller's backlog for an account with a connection cap); an
/// account without room is passed over.
///
/// The candidate is read without locks, then its row is locked while the
/// count is read and raised in one statement, so concurrent workers never
/// pass the limit; a candidate another worker used up meanwhile is passed
/// over for the next one, preserving priority order. `None` when no
/// account has quota (and room) left.
#[tracing::instrument(level = "debug", skip(pool, exclude, room))]
pub async fn reserve(
    pool: &PgPool,
    today: NaiveDate,
    exclude: &[Uuid],
    wanted: i32,
    room: impl Fn(Uuid, Option<i32>) -> i32,
) -> Result<Option<Reservation>, sqlx::Error> {
    let mut passed: Vec<Uuid> = exclude.to_vec();
    loop {
        let candidate: Option<(Uuid, Option<i32>)> = sqlx::query_as(&format!(
            "SELECT id, max_connections FROM email_accounts
             WHERE {USABLE} AND {} > (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END)
               AND id <> ALL($2)
             ORDER BY priority DESC,
                      (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END),
                      last_used_at NULLS FIRST
             LIMIT 1",
            effective_limit!()
        ))
        .bind(today)
        .bind(&passed)
        .fetch_optional(pool)
        .await?;
        let Some((id, max_connections)) = candidate else {
            return Ok(None);
        };
        let asked = wanted.max(1).min(room(id, max_connections));
        if asked <= 0 {
            passed.push(id);
            continue;
        }
        let reserved: Option<Reservation> = sqlx::query_as(&format!(
            "WITH old AS (
                SELECT id AS acct, (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END) AS used,
                       {} AS lim
                FROM email_accounts WHERE id = $2 AND {USABLE} FOR UPDATE
             )
             UPDATE email_accounts SET
                daily_sent_count = old.used + LEAST($3, old.lim - old.used),
                quota_day = $1,
                last_used_at = now()
             FROM old
             WHERE id = old.acct AND old.lim > old.used
             RETURNING {COLUMNS}, LEAST($3, old.lim - old.used) AS granted",
            effective_limit!()
        ))
        .bind(today)
        .bind(id)
        .bind(asked)
        .fetch_optional(pool)
        .await?;
        match reserved {
            Some(r) => return Ok(Some(Reservation { asked, ..r })),
            None => passed.push(id),
        }
    }
}

/// Gives back `count` reservations that did not result in an accepted email.
pub async fn release(
    pool: &PgPool,
    today: NaiveDate,
    id: Uuid,
    count: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_accounts SET daily_sent_count = GREATEST(daily_sent_count - $3, 0)
         WHERE id = $1 AND quota_day = $2",
    )
    .bind(id)
    .bind(today)
    .bind(count)
    .execute(pool)
    .await?;
    Ok(())
}

/// Per-account state for the scrape-time gauges of `/metrics`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountGauges {
    pub id: Uuid,
    pub email: String,
    pub daily_limit: i32,
    /// `daily_limit`, or less on a warm-up day.
    pub effective_daily_limit: i32,
    /// `effective_daily_limit` minus today's sends (in TZ), never below zero.
    pub quota_remaining: i32,
    pub circuit_open: bool,
    pub is_active: bool,
}

/// `$1` is today's date in TZ, as for the quota counters.
pub async fn gauges(pool: &PgPool, today: NaiveDate) -> Result<Vec<AccountGauges>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, email, daily_limit, ",
        effective_limit!(),
        " AS effective_daily_limit, GREATEST(",
        effective_limit!(),
        " - (CASE WHEN quota_day = $1 THEN daily_sent_count ELSE 0 END), 0) AS quota_remaining,
                COALESCE(circuit_open_until > now(), false) AS circuit_open,
                is_active
         FROM email_accounts ORDER BY email"
    ))
    .bind(today)
    .fetch_all(pool)
    .await
}

/// One stored SMTP password, for key rotation.
#[derive(Debug, Clone)]
pub struct StoredPassword {
    pub id: Uuid,
    pub email: String,
    pub sealed: Sealed,
}

/// Every account's sealed password (no quota columns needed).
pub async fn stored_passwords(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<StoredPassword>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        email: String,
        smtp_password_key_id: String,
        smtp_password_nonce: Vec<u8>,
        smtp_password_ciphertext: Vec<u8>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, email, smtp_password_key_id, smtp_password_nonce, smtp_password_ciphertext
         FROM email_accounts ORDER BY created_at, id",
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredPassword {
            id: r.id,
            email: r.email,
            sealed: Sealed {
                key_id: r.smtp_password_key_id,
                nonce: r.smtp_password_nonce,
                ciphertext: r.smtp_password_ciphertext,
            },
        })
        .collect())
}

/// Replaces a sealed password with its re-encryption, only if the row still
/// holds exactly `old` (a password changed meanwhile through the API is
/// already under the current key and must not be overwritten). One
/// statement, so one short transaction per row. Returns whether it changed.
pub async fn reseal_password(
    pool: &PgPool,
    id: Uuid,
    old: &Sealed,
    new: &Sealed,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE email_accounts SET
            smtp_password_ciphertext = $5, smtp_password_nonce = $6, smtp_password_key_id = $7
         WHERE id = $1 AND smtp_password_key_id = $2 AND smtp_password_nonce = $3
           AND smtp_password_ciphertext = $4",
    )
    .bind(id)
    .bind(&old.key_id)
    .bind(&old.nonce)
    .bind(&old.ciphertext)
    .bind(&new.ciphertext)
    .bind(&new.nonce)
    .bind(&new.key_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An account carried over from the Python platform.
pub struct ImportedAccount {
    pub account: NewEmailAccount,
    /// Whether the password differs from the one stored (an existing row
    /// keeps its sealed password otherwise: sealing again would change the
    /// row on every run).
    pub password_changed: bool,
}

/// Inserts an imported account, or brings an earlier import of it (same
/// address) up to date; a row that already matches is not written, so
/// re-running an import changes nothing. Our own settings that the Python
/// platform did not have (rate limit, connection cap) are left alone.
pub async fn upsert_imported(
    executor: impl PgExecutor<'_>,
    imported: &ImportedAccount,
) -> Result<crate::db::api_keys::Upserted, sqlx::Error> {
    use crate::db::api_keys::Upserted;
    let a = &imported.account;
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO email_accounts (id, email, display_name, smtp_host, smtp_port, smtp_username,
            smtp_password_ciphertext, smtp_password_nonce, smtp_password_key_id, tls_mode,
            daily_limit, priority, is_active)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (email) DO UPDATE SET
            display_name = EXCLUDED.display_name, smtp_host = EXCLUDED.smtp_host,
            smtp_port = EXCLUDED.smtp_port, smtp_username = EXCLUDED.smtp_username,
            smtp_password_ciphertext = CASE WHEN $14 THEN EXCLUDED.smtp_password_ciphertext
                                            ELSE email_accounts.smtp_password_ciphertext END,
            smtp_password_nonce = CASE WHEN $14 THEN EXCLUDED.smtp_password_nonce
                                       ELSE email_accounts.smtp_password_nonce END,
            smtp_password_key_id = CASE WHEN $14 THEN EXCLUDED.smtp_password_key_id
                                        ELSE email_accounts.smtp_password_key_id END,
            tls_mode = EXCLUDED.tls_mode, daily_limit = EXCLUDED.daily_limit,
            priority = EXCLUDED.priority, is_active = EXCLUDED.is_active,
            updated_at = now()
         WHERE $14 OR
               (email_accounts.display_name, email_accounts.smtp_host, email_accounts.smtp_port,
                email_accounts.smtp_username, email_accounts.tls_mode, email_accounts.daily_limit,
                email_accounts.priority, email_accounts.is_active)
           IS DISTINCT FROM
               (EXCLUDED.display_name, EXCLUDED.smtp_host, EXCLUDED.smtp_port,
                EXCLUDED.smtp_username, EXCLUDED.tls_mode, EXCLUDED.daily_limit,
                EXCLUDED.priority, EXCLUDED.is_active)
         RETURNING (xmax = 0)",
    )
    .bind(Uuid::now_v7())
    .bind(&a.email)
    .bind(&a.display_name)
    .bind(&a.smtp_host)
    .bind(i32::from(a.smtp_port))
    .bind(&a.smtp_username)
    .bind(&a.password.ciphertext)
    .bind(&a.password.nonce)
    .bind(&a.password.key_id)
    .bind(a.tls_mode.as_str())
    .bind(a.daily_limit)
    .bind(a.priority)
    .bind(a.is_active)
    .bind(imported.password_changed)
    .fetch_optional(executor)
    .await?;
    Ok(Upserted::from_returned(inserted))
}

/// Raises an account's count for `today` to at least `sent_today` (sends
/// made elsewhere, e.g. by the Python platform, the same day); never
/// lowers it, so concurrent workers' reservations are kept. Whether it
/// changed anything.
pub async fn carry_quota(
    executor: impl PgExecutor<'_>,
    email: &str,
    today: NaiveDate,
    sent_today: i32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE email_accounts SET daily_sent_count = $3, quota_day = $2
         WHERE email = $1 AND (CASE WHEN quota_day = $2 THEN daily_sent_count ELSE 0 END) < $3",
    )
    .bind(email)
    .bind(today)
    .bind(sent_today.max(0))
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every account's id by address.
pub async fn ids_by_email(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as("SELECT email, id FROM email_accounts")
        .fetch_all(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap() + chrono::Days::new(d)
    }

    #[test]
    fn a_warm_up_ramps_to_the_daily_limit() {
        let w = Warmup {
            started_on: day(0),
            start_limit: 50,
            growth_factor: 2.0,
        };
        let limits: Vec<i32> = (0..6).map(|d| w.limit_on(day(d), 500)).collect();
        assert_eq!(limits, [50, 100, 200, 400, 500, 500]);
        assert_eq!(w.completes_on(500), day(4));
        // Before its start, day 0's limit; a start above the limit is done at once.
        let later = Warmup {
            started_on: day(3),
            ..w
        };
        assert_eq!(later.limit_on(day(0), 500), 50);
        assert_eq!(later.day(day(0)), 0);
        assert_eq!(w.completes_on(40), day(0));
        // Slow growth over many days stays finite and reaches the limit.
        let slow = Warmup {
            started_on: day(0),
            start_limit: 1,
            growth_factor: 1.1,
        };
        let done = slow.completes_on(10_000_000);
        assert_eq!(slow.limit_on(done, 10_000_000), 10_000_000);
        assert!(slow.limit_on(done - chrono::Days::new(1), 10_000_000) < 10_000_000);
        assert_eq!(slow.limit_on(day(100_000), 10_000_000), 10_000_000);
    }
}

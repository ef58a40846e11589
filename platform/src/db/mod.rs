//! Schema access: the connection pool, migrations, and one module per table.

pub mod account_mailboxes;
pub mod api_keys;
pub mod attachments;
pub mod audit_log;
pub mod bounces;
pub mod campaigns;
pub mod console_sessions;
pub mod dead_letters;
pub mod dkim_keys;
pub mod domain_throttles;
pub mod email_accounts;
pub mod idempotency;
pub mod lists;
pub mod maintenance;
pub mod message_events;
pub mod messages;
pub mod outbox;
pub mod periodic_tasks;
pub mod refresh_tokens;
pub mod suppressions;
pub mod templates;
pub mod webhooks;
pub mod worker_leases;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Settings;

/// Runs a statement that changes at most the rows it names; whether it
/// changed any (a delete that found its row, an insert not skipped by
/// `ON CONFLICT DO NOTHING`).
pub(crate) async fn changed_any(
    statement: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    executor: impl sqlx::PgExecutor<'_>,
) -> Result<bool, sqlx::Error> {
    Ok(statement.execute(executor).await?.rows_affected() > 0)
}

mod embedded {
    refinery::embed_migrations!("../migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to PostgreSQL to migrate: {0}")]
    Connect(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Refinery(#[from] refinery::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("migrating the database: {0}")]
    Migrate(#[from] MigrateError),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[from] sqlx::Error),
}

/// What every binary and command does first: applies pending migrations,
/// then opens the pool.
pub async fn open(settings: &Settings) -> Result<PgPool, OpenError> {
    migrate(&settings.database_url).await?;
    Ok(connect(settings).await?)
}

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.db_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(settings)?)
        .await
}

/// `DATABASE_URL` with JIT compilation off. The platform's statements are
/// short, but a table's cost estimates before its first ANALYZE (a fresh
/// database, a queue table that empties between samples) can pass
/// `jit_above_cost`, and then every execution compiles for most of a second:
/// measured as 0.9 s of JIT in each webhook fan-out of a few hundred rows.
fn connect_options(settings: &Settings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = settings.database_url.parse()?;
    Ok(options.options([("jit", "off")]))
}

/// A pool of `size` connections whose commits do not wait for the WAL to
/// reach disk (`synchronous_commit = off`): a crash of PostgreSQL may lose
/// the last fraction of a second of their writes, never corrupt anything.
/// Only for bookkeeping that is safe to redo, such as the webhook
/// dispatcher's claims and outcomes (a lost one means an event is sent
/// again with the same `webhook-id`, as after a dispatcher crash), where a
/// disk flush per event would cost more than the event.
pub async fn connect_async_commit(settings: &Settings, size: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(settings)?.options([("synchronous_commit", "off")]))
        .await
}

/// Applies pending migrations. Several processes may start at once, so the
/// run is serialized by an advisory lock.
pub async fn migrate(database_url: &str) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) =
        tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    const LOCK: i64 = 0x6e6f_7469_6679; // "notify"
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// Whether a database error may pass by itself, so the same statement is
/// worth trying again. Everything is, except a refusal of the statement's
/// data (see [`refuses_data`]): a lost connection, a restart, a conflict
/// with another transaction, and also a schema that does not match the
/// code (a deploy whose migration has not run yet), which must not fail
/// messages for good.
pub fn is_transient(e: &sqlx::Error) -> bool {
    !refuses_data(e)
}

/// Whether the database refused the values a statement carried: a data
/// exception (SQLSTATE class 22, such as a NUL character in text) or a
/// value over its size limits (class 54). Trying again fails the same way
/// forever, so the message that carried them is at fault.
pub fn refuses_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// A short description of a database error that is safe to show or store:
/// its SQLSTATE and class, never the server's message (which may quote the
/// data, or describe the schema).
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let class = match code.get(..2).unwrap_or("") {
                "22" => "a value the database cannot store",
                "23" => "a value that breaks a constraint",
                "54" => "a value over the database's size limits",
                _ => "a statement the database refused",
            };
            format!("{class} (SQLSTATE {code})")
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            "the database is unreachable".into()
        }
        _ => "a database error".into(),
    }
}

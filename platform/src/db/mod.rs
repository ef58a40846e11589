//! Schema access: the connection pool, migrations, and one module per table.

pub mod api_keys;
pub mod attachments;
pub mod audit_log;
pub mod campaigns;
pub mod dead_letters;
pub mod email_accounts;
pub mod idempotency;
pub mod lists;
pub mod maintenance;
pub mod messages;
pub mod outbox;
pub mod periodic_tasks;
pub mod suppressions;
pub mod templates;
pub mod worker_leases;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Settings;

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

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.db_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&settings.database_url)
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

/// Whether a database error may pass by itself (the connection, the server's
/// state or a conflict with another transaction), so the same statement is
/// worth trying again; otherwise the statement's data is at fault (a value
/// PostgreSQL refuses, say) and trying again fails the same way forever.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08 connection, 53 resources, 57 operator intervention
            // (shutdown, cancel), 58 system; serialization failure and
            // deadlock; lock not available.
            ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
                || ["40001", "40P01", "55P03"].contains(&code.as_ref())
        }),
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

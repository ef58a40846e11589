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

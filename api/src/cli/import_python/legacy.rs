//! Reading the Python platform's tables, read-only.
//!
//! The reader goes by the tables the Python platform's Alembic migrations
//! created (`email_accounts`, `api_keys`, `message_records`), finds which
//! columns exist, and tolerates the optional ones being absent (older
//! revisions lacked `is_admin`, `expires_at`, `last_reset_date`...). A
//! missing required column is an error naming it. Naive timestamps are
//! read as UTC, as the Python platform wrote them (`datetime.utcnow`).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("Python database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Python database has no table {0}")]
    MissingTable(&'static str),
    #[error("Python table {table} has none of the columns {wanted:?}")]
    MissingColumn {
        table: &'static str,
        wanted: &'static [&'static str],
    },
}

/// A read-only connection to the Python platform's database.
pub struct Legacy {
    pool: PgPool,
    /// Column name → data type, per table.
    columns: HashMap<String, HashMap<String, String>>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct LegacyAccount {
    pub email: String,
    pub smtp_host: String,
    pub smtp_port: i32,
    pub smtp_username: String,
    /// The Fernet token.
    pub smtp_password: String,
    pub display_name: String,
    pub daily_limit: i32,
    pub daily_sent_count: i32,
    pub priority: i32,
    pub is_active: bool,
    /// Whether `daily_sent_count` belongs to today (the old beat resets it
    /// at midnight and stamps `last_reset_date`).
    pub counts_today: bool,
}

#[derive(Debug, sqlx::FromRow)]
pub struct LegacyKey {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub api_key: String,
    pub secret_hash: String,
    pub is_active: bool,
    pub is_admin: bool,
    pub rate_limit: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct LegacyMessage {
    pub id: i64,
    pub task_id: Option<String>,
    pub api_key: Option<String>,
    pub to_email: String,
    pub subject: String,
    pub content: String,
    pub status: String,
    pub account_email: Option<String>,
    pub error: Option<String>,
    pub retries: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Legacy {
    pub async fn connect(url: &str) -> Result<Self, LegacyError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            // Nothing here may write to the platform being replaced.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text
             FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND table_name IN ('email_accounts', 'api_keys', 'message_records')",
        )
        .fetch_all(&pool)
        .await?;
        let mut columns: HashMap<String, HashMap<String, String>> = HashMap::new();
        for (table, column, data_type) in rows {
            columns.entry(table).or_default().insert(column, data_type);
        }
        Ok(Legacy { pool, columns })
    }

    pub async fn close(self) {
        self.pool.close().await;
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.columns.contains_key(table)
    }

    fn table(&self, table: &'static str) -> Result<&HashMap<String, String>, LegacyError> {
        self.columns
            .get(table)
            .ok_or(LegacyError::MissingTable(table))
    }

    /// The first of `names` the table has, as a SQL expression cast to
    /// `cast`; timestamps without time zone are read as UTC.
    fn column(
        &self,
        table: &'static str,
        names: &'static [&'static str],
        cast: &str,
    ) -> Result<String, LegacyError> {
        self.optional(table, names, cast)?
            .ok_or(LegacyError::MissingColumn {
                table,
                wanted: names,
            })
    }

    fn optional(
        &self,
        table: &'static str,
        names: &'static [&'static str],
        cast: &str,
    ) -> Result<Option<String>, LegacyError> {
        let columns = self.table(table)?;
        // Columns are qualified by the table's alias in every query.
        let alias = &table[..1];
        Ok(names.iter().find_map(|name| {
            let data_type = columns.get(*name)?;
            Some(if data_type == "timestamp without time zone" {
                format!("({alias}.{name} AT TIME ZONE 'UTC')")
            } else {
                format!("{alias}.{name}::{cast}")
            })
        }))
    }

    fn or_default(
        &self,
        table: &'static str,
        names: &'static [&'static str],
        cast: &str,
        default: &str,
    ) -> Result<String, LegacyError> {
        Ok(match self.optional(table, names, cast)? {
            Some(expr) => format!("COALESCE({expr}, {default})"),
            None => default.to_string(),
        })
    }

    pub async fn accounts(&self, today: NaiveDate) -> Result<Vec<LegacyAccount>, LegacyError> {
        const T: &str = "email_accounts";
        let sql = format!(
            "SELECT {id} AS id, {email} AS email, {host} AS smtp_host, {port} AS smtp_port,
                    {user} AS smtp_username, {password} AS smtp_password,
                    {display} AS display_name, {limit} AS daily_limit, {sent} AS daily_sent_count,
                    {priority} AS priority, {active} AS is_active, {today} AS counts_today
             FROM {T} e ORDER BY 1",
            id = self.column(T, &["id"], "bigint")?,
            email = self.column(T, &["email"], "text")?,
            host = self.column(T, &["smtp_host"], "text")?,
            port = self.column(T, &["smtp_port"], "int")?,
            user = self.or_default(T, &["smtp_username", "username"], "text", "e.email::text")?,
            password = self.column(T, &["smtp_password", "encrypted_password"], "text")?,
            display = self.or_default(T, &["display_name"], "text", "''")?,
            limit = self.or_default(T, &["daily_limit"], "int", "500")?,
            sent = self.or_default(T, &["daily_sent_count"], "int", "0")?,
            priority = self.or_default(T, &["priority"], "int", "0")?,
            active = self.or_default(T, &["is_active"], "boolean", "true")?,
            // Without a reset stamp the count is taken as today's: carrying
            // too much only holds sends back, too little could pass a limit.
            today = match self.optional(T, &["last_reset_date"], "date")? {
                Some(expr) => format!("({expr} IS NULL OR {expr}::date >= $1)"),
                None => "true".into(),
            },
        );
        Ok(sqlx::query_as(&sql)
            .bind(today)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn keys(&self) -> Result<Vec<LegacyKey>, LegacyError> {
        const T: &str = "api_keys";
        let admin = match self.optional(T, &["is_admin"], "boolean")? {
            Some(expr) => format!("COALESCE({expr}, false)"),
            // A scopes/permissions list, as text, an array or JSON.
            None => match self.optional(T, &["scopes", "permissions"], "text")? {
                Some(expr) => format!("COALESCE({expr} ~ '\\madmin\\M', false)"),
                None => "false".into(),
            },
        };
        let sql = format!(
            "SELECT {id} AS id, {name} AS name, {description} AS description, {key} AS api_key,
                    {hash} AS secret_hash, {active} AS is_active, {admin} AS is_admin,
                    {rate} AS rate_limit, {expires} AS expires_at, {created} AS created_at
             FROM {T} a ORDER BY 1",
            id = self.column(T, &["id"], "bigint")?,
            name = self.or_default(T, &["name"], "text", "''")?,
            description = self.or_default(T, &["description"], "text", "''")?,
            key = self.column(T, &["api_key", "key"], "text")?,
            hash = self.column(
                T,
                &[
                    "api_secret_hash",
                    "secret_hash",
                    "hashed_secret",
                    "api_secret"
                ],
                "text"
            )?,
            active = self.or_default(T, &["is_active"], "boolean", "true")?,
            rate = self
                .optional(T, &["rate_limit", "rate_limit_per_minute"], "int")?
                .unwrap_or("NULL::int".into()),
            expires = self
                .optional(T, &["expires_at"], "timestamptz")?
                .unwrap_or("NULL::timestamptz".into()),
            created = self
                .optional(T, &["created_at"], "timestamptz")?
                .unwrap_or("NULL::timestamptz".into()),
        );
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// Up to `limit` records created since `since` whose id is above
    /// `after` (the last id of the previous page), in id order.
    pub async fn messages(
        &self,
        since: DateTime<Utc>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LegacyMessage>, LegacyError> {
        const T: &str = "message_records";
        let null = |e: Option<String>, null: &str| e.unwrap_or_else(|| null.to_string());
        let created = self.column(T, &["created_at"], "timestamptz")?;
        let key_join =
            self.optional(T, &["api_key_id"], "bigint")?.is_some() && self.has_table("api_keys");
        let account_join = self.optional(T, &["account_id"], "bigint")?.is_some()
            && self.has_table("email_accounts");
        let sql = format!(
            "SELECT m.id::bigint AS id, {task} AS task_id, {key} AS api_key,
                    {to} AS to_email, {subject} AS subject, {content} AS content,
                    lower({status}) AS status, {account} AS account_email, {error} AS error,
                    {retries} AS retries, {created} AS created_at, {finished} AS finished_at
             FROM {T} m {key_from} {account_from}
             WHERE {created} >= $1 AND m.id > $2
             ORDER BY m.id
             LIMIT $3",
            task = null(
                self.optional(T, &["task_id", "celery_task_id"], "text")?,
                "NULL::text"
            ),
            key = if key_join {
                "ak.api_key::text"
            } else {
                "NULL::text"
            },
            to = self.column(T, &["to_email", "recipient", "to_addrs"], "text")?,
            subject = self.or_default(T, &["subject"], "text", "''")?,
            content = self.column(T, &["content", "html_body", "body"], "text")?,
            status = self.column(T, &["status"], "text")?,
            account = if account_join {
                "ea.email::text"
            } else {
                "NULL::text"
            },
            error = null(
                self.optional(T, &["error_message", "error"], "text")?,
                "NULL::text"
            ),
            retries = self.or_default(T, &["retry_count", "retries"], "int", "0")?,
            finished = null(
                self.optional(T, &["sent_at", "updated_at"], "timestamptz")?,
                "NULL::timestamptz"
            ),
            key_from = if key_join {
                "LEFT JOIN api_keys ak ON ak.id = m.api_key_id"
            } else {
                ""
            },
            account_from = if account_join {
                "LEFT JOIN email_accounts ea ON ea.id = m.account_id"
            } else {
                ""
            },
        );
        Ok(sqlx::query_as(&sql)
            .bind(since)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}

//! `mailing_lists` and `list_members`: the audiences of campaigns.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MailingList {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    pub id: i64,
    pub address: String,
    pub variables: sqlx::types::Json<Map<String, Value>>,
    pub created_at: DateTime<Utc>,
    /// When the member left the list through an unsubscribe link.
    #[sqlx(default)]
    pub unsubscribed_at: Option<DateTime<Utc>>,
}

const SELECT_LIST: &str = "SELECT l.id, l.name, l.description, l.created_at, l.updated_at,
        (SELECT count(*) FROM list_members m WHERE m.list_id = l.id) AS member_count
   FROM mailing_lists l";

pub async fn insert(
    executor: impl PgExecutor<'_>,
    name: &str,
    description: Option<&str>,
) -> Result<MailingList, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query_as(
        "INSERT INTO mailing_lists (id, name, description) VALUES ($1, $2, $3)
         RETURNING id, name, description, created_at, updated_at, 0::bigint AS member_count",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .fetch_one(executor)
    .await
}

pub async fn get(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<MailingList>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_LIST} WHERE l.id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<MailingList>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_LIST} ORDER BY l.name LIMIT 1000"))
        .fetch_all(executor)
        .await
}

pub async fn delete(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let statement = sqlx::query("DELETE FROM mailing_lists WHERE id = $1").bind(id);
    super::changed_any(statement, executor).await
}

/// Adds members (addresses already validated and lower-cased, distinct);
/// an address already on the list gets the new variables. Returns how many
/// were new.
pub async fn upsert_members(
    executor: impl PgExecutor<'_>,
    list_id: Uuid,
    addresses: &[String],
    variables: &[Value],
) -> Result<u64, sqlx::Error> {
    // xmax = 0 only for freshly inserted rows.
    let inserted: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO list_members (list_id, address, variables)
         SELECT $1, a, v FROM unnest($2::text[], $3::jsonb[]) AS t(a, v)
         ON CONFLICT (list_id, address) DO UPDATE SET variables = EXCLUDED.variables
         RETURNING (xmax = 0)",
    )
    .bind(list_id)
    .bind(addresses)
    .bind(variables)
    .fetch_all(executor)
    .await?;
    Ok(inserted.into_iter().filter(|new| *new).count() as u64)
}

pub async fn remove_member(
    executor: impl PgExecutor<'_>,
    list_id: Uuid,
    address: &str,
) -> Result<bool, sqlx::Error> {
    let statement =
        sqlx::query("DELETE FROM list_members WHERE list_id = $1 AND address = lower($2)")
            .bind(list_id)
            .bind(address);
    super::changed_any(statement, executor).await
}

/// Members of one list in id order, after `after`.
pub async fn members(
    executor: impl PgExecutor<'_>,
    list_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, address, variables, created_at, unsubscribed_at FROM list_members
          WHERE list_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(list_id)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The audience of `lists` after member id `after`, in id order: each
/// subscribed address once (as its lowest subscribed member id across the
/// lists), so a recipient on two lists is mailed once and one who left
/// (an unsubscribe link marks every list of the campaign) not at all.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn audience_after(
    executor: impl PgExecutor<'_>,
    lists: &[Uuid],
    after: i64,
    limit: i64,
) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.id, m.address, m.variables, m.created_at FROM list_members m
          WHERE m.list_id = ANY($1) AND m.id > $2 AND m.unsubscribed_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM list_members o
                             WHERE o.list_id = ANY($1) AND o.address = m.address AND o.id < m.id
                               AND o.unsubscribed_at IS NULL)
          ORDER BY m.id LIMIT $3",
    )
    .bind(lists)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Which of `ids` are existing lists.
pub async fn existing(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM mailing_lists WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(executor)
        .await
}

/// Marks `address` unsubscribed on each of `lists` where it is a member
/// and still subscribed; returns how many memberships that ended.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn unsubscribe(
    executor: impl PgExecutor<'_>,
    lists: &[Uuid],
    address: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE list_members SET unsubscribed_at = now()
          WHERE list_id = ANY($1) AND address = lower($2) AND unsubscribed_at IS NULL",
    )
    .bind(lists)
    .bind(address)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Whether `address` is a subscribed member of any of `lists`.
pub async fn is_subscribed(
    executor: impl PgExecutor<'_>,
    lists: &[Uuid],
    address: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM list_members
                         WHERE list_id = ANY($1) AND address = lower($2) AND unsubscribed_at IS NULL)",
    )
    .bind(lists)
    .bind(address)
    .fetch_one(executor)
    .await
}

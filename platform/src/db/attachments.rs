//! `message_attachments`: files attached to a message, stored with it and
//! loaded by the worker when it builds the email.

use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

#[tracing::instrument(level = "debug", skip_all, fields(message_id = %message_id))]
pub async fn insert_all(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    attachments: &[Attachment],
) -> Result<(), sqlx::Error> {
    for (position, a) in attachments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO message_attachments (message_id, position, filename, content_type, content)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(message_id)
        .bind(position as i32)
        .bind(&a.filename)
        .bind(&a.content_type)
        .bind(&a.content)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// A message's attachments, in the order they were given.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn for_message(
    executor: impl PgExecutor<'_>,
    message_id: Uuid,
) -> Result<Vec<Attachment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT filename, content_type, content FROM message_attachments
         WHERE message_id = $1 ORDER BY position",
    )
    .bind(message_id)
    .fetch_all(executor)
    .await
}

/// The attachments of several messages at once, by message id.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn for_messages(
    executor: impl PgExecutor<'_>,
    message_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<Attachment>>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT message_id, filename, content_type, content FROM message_attachments
         WHERE message_id = ANY($1) ORDER BY message_id, position",
    )
    .bind(message_ids)
    .fetch_all(executor)
    .await?;
    let mut by_message: std::collections::HashMap<Uuid, Vec<Attachment>> =
        std::collections::HashMap::new();
    for (id, filename, content_type, content) in rows {
        by_message.entry(id).or_default().push(Attachment {
            filename,
            content_type,
            content,
        });
    }
    Ok(by_message)
}

//! Celery's Redis result backend: `celery-task-meta-<id>` holds the task's
//! state as JSON, and the same document is PUBLISHed on a channel of that
//! name, which `AsyncResult.get()` subscribes to.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use deadpool_redis::{Config, Pool, Runtime};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Started,
    Retry,
    Success,
    Failure,
    Revoked,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Started => "STARTED",
            TaskState::Retry => "RETRY",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Revoked => "REVOKED",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result backend URL: {0}")]
    Config(String),
    #[error("result backend unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("result backend: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct ResultBackend {
    pub(super) pool: Pool,
    pub(super) expires: Duration,
}

/// Celery's form of a result's `children`: `[[id, parent], null]` per
/// task (`AsyncResult.as_tuple()`), what `AsyncResult.children` reads.
fn children_value(children: &[String]) -> Value {
    Value::Array(
        children
            .iter()
            .map(|id| json!([[id, Value::Null], Value::Null]))
            .collect(),
    )
}

pub fn key_for(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

impl ResultBackend {
    pub fn new(url: &str, expires: Duration) -> Result<Self, ResultError> {
        let pool = Config::from_url(url)
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| ResultError::Config(e.to_string()))?;
        Ok(ResultBackend { pool, expires })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stores a successful result or a state without a result.
    pub async fn store(
        &self,
        task_id: &str,
        state: TaskState,
        result: Value,
    ) -> Result<(), ResultError> {
        self.write(task_id, state, result, Value::Null).await
    }

    /// Stores a failure the way Celery serializes exceptions, so that
    /// `AsyncResult.get()` raises `exc_type(message)` in Python.
    pub async fn store_failure(
        &self,
        task_id: &str,
        exc_type: &str,
        message: &str,
    ) -> Result<(), ResultError> {
        let result = json!({
            "exc_type": exc_type,
            "exc_message": [message],
            "exc_module": "builtins",
        });
        let traceback = format!("{exc_type}: {message}");
        self.write(
            task_id,
            TaskState::Failure,
            result,
            Value::String(traceback),
        )
        .await
    }

    /// Stores several results in one round trip, each with the ids of the
    /// tasks it applied (`children`).
    pub async fn store_many(
        &self,
        results: &[(String, TaskState, Value, Vec<String>)],
    ) -> Result<(), ResultError> {
        if results.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (task_id, state, result, children) in results {
            let document = Self::document(task_id, *state, result.clone(), Value::Null, children);
            let key = key_for(task_id);
            pipe.set_ex(&key, &document, self.expires.as_secs().max(1))
                .ignore()
                .publish(&key, &document)
                .ignore();
        }
        let mut conn = self.pool.get().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    fn document(
        task_id: &str,
        state: TaskState,
        result: Value,
        traceback: Value,
        children: &[String],
    ) -> String {
        json!({
            "status": state.as_str(),
            "result": result,
            "traceback": traceback,
            "children": children_value(children),
            "date_done": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false),
            "task_id": task_id,
        })
        .to_string()
    }

    /// Stores a state with its result and traceback as given (a failure
    /// copied from another task's, a `ChordError`).
    pub async fn write(
        &self,
        task_id: &str,
        state: TaskState,
        result: Value,
        traceback: Value,
    ) -> Result<(), ResultError> {
        let document = Self::document(task_id, state, result, traceback, &[]);
        let key = key_for(task_id);
        let mut conn = self.pool.get().await?;
        redis::pipe()
            .set_ex(&key, &document, self.expires.as_secs().max(1))
            .ignore()
            .publish(&key, &document)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    pub async fn fetch(&self, task_id: &str) -> Result<Option<Value>, ResultError> {
        let mut conn = self.pool.get().await?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(key_for(task_id))
            .query_async(&mut *conn)
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    pub async fn ping(&self) -> Result<(), ResultError> {
        let mut conn = self.pool.get().await?;
        redis::cmd("PING").query_async::<()>(&mut *conn).await?;
        Ok(())
    }
}

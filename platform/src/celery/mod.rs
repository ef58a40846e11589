//! The Celery wire contract (protocol v2 with JSON bodies) and the Redis
//! result backend, as a Python `celery` client expects them.

mod aliases;
mod amqp_table;
pub mod canvas;
mod chord;
pub mod compression;
pub mod events;
mod message;
pub mod pidbox;
mod result;

pub use aliases::{AliasError, TaskAliases, SEND_EMAIL_POSITIONAL};
pub use amqp_table::{json_to_table, table_to_json};
pub use chord::{ChordPart, GROUP_PREFIX};
pub use message::amqp_properties;
pub use message::{DecodeError, TaskHeaders, TaskMessage};
pub use result::{key_for as result_key, ResultBackend, ResultError, TaskState};

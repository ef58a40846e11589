//! The REST API of the notification platform.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod client_addr;
pub mod console;
pub mod docs;
pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod idempotency;
pub mod ingest;
pub mod pagination;
pub mod ratelimit;
pub mod readiness;
pub mod routes;
pub mod send_request;
pub mod startup;
pub mod state;
pub mod templating;
pub mod validate;

pub use startup::Application;

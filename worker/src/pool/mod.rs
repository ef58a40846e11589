//! The SMTP account pool: quota reservations and pooled connections.

mod transport;

pub use transport::{SendError, Transport, TransportCache, TransportError};

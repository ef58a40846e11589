//! The SMTP account pool: quota reservations and pooled connections.

mod throttle;
mod transport;

pub use throttle::{Lease, Throttle, ThrottleError};

pub use transport::{SendError, Transport, TransportCache, TransportError};

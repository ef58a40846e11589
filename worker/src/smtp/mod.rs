//! SMTP connections (a cache of pooled transports per account) and the
//! accounts' own throttles (sends per minute, concurrent connections),
//! held across all workers in Redis.

mod throttle;
mod transport;

pub use throttle::{ConnectionSlot, Throttle};

pub use transport::{SendError, Transport, TransportCache, TransportError};

//! SMTP connections (a pool of warm, authenticated connections per
//! account) and the accounts' own throttles (sends per minute, concurrent
//! connections), held across all workers in Redis.

mod connections;
mod deadline;
mod throttle;
mod transport;

pub use connections::TransportCache;
pub use throttle::{ConnectionLease, Throttle};
pub use transport::{SendError, Transport, TransportError};

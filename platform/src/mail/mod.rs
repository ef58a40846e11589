//! Email addresses, the rules every email keeps to, and the composition of
//! outgoing messages.

mod address;
mod compose;
pub mod rules;
mod transport;

pub use address::{AddressError, EmailAddress};
pub use compose::{compose, ComposeError, ComposedEmail, Envelope};
pub use transport::{build_transport, SmtpTransport, TransportError};

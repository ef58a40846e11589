//! Email addresses and the composition of outgoing messages.

mod address;
mod compose;
mod transport;

pub use address::{AddressError, EmailAddress};
pub use compose::{compose, ComposeError, ComposedEmail, Envelope};
pub use transport::{build_transport, SmtpTransport, TransportError};

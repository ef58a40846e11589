//! Email addresses and their domains, the rules every email keeps to, the
//! composition of outgoing messages, and their one-click unsubscribe links.

mod address;
mod compose;
pub mod domain;
pub mod rules;
mod transport;
pub mod unsubscribe;

pub use address::{AddressError, EmailAddress};
pub use compose::{compose, ComposeError, ComposedEmail, Envelope};
pub use transport::{build_transport, SmtpTransport, TransportError};

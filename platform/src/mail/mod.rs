//! Email addresses and their domains, the rules every email keeps to, the
//! composition of outgoing messages, their one-click unsubscribe links, and
//! their DKIM signatures.

mod address;
mod compose;
pub mod dkim;
pub mod domain;
pub mod rules;
mod transport;
pub mod unsubscribe;

pub use address::{AddressError, EmailAddress};
pub use compose::{compose, ComposeError, ComposedEmail, Envelope};
pub use transport::{build_transport, SmtpTransport, TransportError};

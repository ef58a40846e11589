//! Email addresses and the composition of outgoing messages.

mod address;
mod compose;

pub use address::{AddressError, EmailAddress};
pub use compose::{compose, ComposeError, ComposedEmail, Envelope};

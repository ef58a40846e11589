//! Event webhooks as the API and the dispatcher both see them: the event
//! types an endpoint may ask for, signing (Standard Webhooks) and which
//! addresses a request may go to.

pub mod address;
pub mod signature;

/// The event types an endpoint may subscribe to, as the triggers on
/// `message_records` (migration V9) name them.
pub const EVENT_TYPES: [&str; 6] = [
    "email.accepted",
    "email.sent",
    "email.failed",
    "email.retrying",
    "email.suppressed",
    "email.cancelled",
];

/// The type of the event `POST /webhooks/{id}/test` sends; always
/// delivered to the endpoint it is sent to, whatever it subscribes to.
pub const TEST_EVENT: &str = "webhook.test";

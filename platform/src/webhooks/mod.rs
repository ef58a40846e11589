//! Event webhooks as the API and the dispatcher both see them: the event
//! types an endpoint may ask for, signing (Standard Webhooks) and which
//! addresses a request may go to.

pub mod address;
pub mod signature;

/// The event types an endpoint may subscribe to, as the triggers name
/// them: message events (on `message_records`, migration V9) for the
/// endpoints of the key that sent the message, then [`ADMIN_EVENT_TYPES`].
pub const EVENT_TYPES: [&str; 14] = [
    "email.accepted",
    "email.sent",
    "email.failed",
    "email.retrying",
    "email.suppressed",
    "email.cancelled",
    // Recorded by the API's unsubscribe route, not by a trigger.
    "email.unsubscribed",
    // From bounce and complaint reports (the message's status).
    "email.bounced",
    "email.complained",
    "campaign.run.started",
    "campaign.run.completed",
    "account.paused",
    "account.circuit_open",
    "endpoint.disabled",
];

/// The events about the platform rather than one key's messages (on
/// `campaign_runs`, `email_accounts` and `webhook_endpoints`, migration
/// V10): only endpoints of admin keys receive them.
pub const ADMIN_EVENT_TYPES: [&str; 5] = [
    "campaign.run.started",
    "campaign.run.completed",
    "account.paused",
    "account.circuit_open",
    "endpoint.disabled",
];

/// The type of the event `POST /webhooks/{id}/test` sends; always
/// delivered to the endpoint it is sent to, whatever it subscribes to.
pub const TEST_EVENT: &str = "webhook.test";

//! Webhook delivery, in two steps, each run by every scheduler instance:
//! - the fan-out turns the events that message changes recorded into
//!   events and deliveries, in bulk (`fan_out`);
//! - the dispatcher claims due deliveries (session advisory locks on its
//!   own connection, so a killed instance's rows are free again at once),
//!   signs them (Standard Webhooks) and posts them, a bounded number per
//!   endpoint at a time, settling them in the database (delivered ones in
//!   bursts, see `settle`).
//!
//! Nothing is kept in memory that a restart would lose: an event not yet
//! fanned out, or an attempt not yet settled, is still in the database.

mod client;
mod dispatch;
mod fan_out;
mod settle;

pub use dispatch::Dispatcher;
pub use fan_out::FanOut;

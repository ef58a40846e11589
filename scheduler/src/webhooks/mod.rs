//! The webhook dispatcher: every scheduler instance claims due deliveries
//! (session advisory locks on its own connection, so a killed instance's
//! rows are free again at once), signs them (Standard Webhooks) and posts them, a bounded number
//! per endpoint at a time, settling them in the database (delivered ones in
//! bursts, see `settle`). Nothing is kept in memory that a restart would
//! lose: an attempt not yet settled is still pending, and comes back.

mod client;
mod dispatch;
mod settle;

pub use dispatch::Dispatcher;

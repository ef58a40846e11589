//! The webhook dispatcher: every scheduler instance claims due deliveries
//! (`FOR UPDATE SKIP LOCKED`, with a lease so a killed instance's rows come
//! back), signs them (Standard Webhooks) and posts them, a bounded number
//! per endpoint at a time, settling them in the database (delivered ones in
//! bursts, see `settle`). Nothing is kept in memory that a restart would
//! lose: an attempt not yet settled is still leased, and comes back.

mod client;
mod dispatch;
mod settle;

pub use dispatch::Dispatcher;

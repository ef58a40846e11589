//! The webhook dispatcher: every scheduler instance claims due deliveries
//! (`FOR UPDATE SKIP LOCKED`, with a lease so a killed instance's rows come
//! back), signs them (Standard Webhooks) and posts them, a bounded number
//! per endpoint at a time, settling each in the database. Nothing is kept
//! in memory that a restart would lose.

mod client;
mod dispatch;

pub use dispatch::Dispatcher;

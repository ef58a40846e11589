//! End-to-end tests against the real PostgreSQL, RabbitMQ and Redis and a
//! loopback SMTP server. One binary, so the workspace links it once.

mod support;

mod auth_and_input;
mod broker_outage;
mod dead_letters;
mod delivery;
mod deployment;
mod priorities;
mod python_interop;
mod quota;
mod resilience;
mod throttle;
mod walkthrough;

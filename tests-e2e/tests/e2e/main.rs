//! End-to-end tests against the real PostgreSQL, RabbitMQ and Redis and a
//! loopback SMTP server. One binary, so the workspace links it once.

mod support;

mod admin;
mod attachments;
mod auth_and_input;
mod batch;
mod bounces;
mod broker_outage;
mod campaigns;
mod celery_control;
mod celery_events;
mod cluster;
mod cutover;
mod database_outage;
mod dead_letters;
mod delivery;
mod deployment;
mod error_codes;
mod etas;
mod hostile_input;
mod inbound;
mod openapi;
mod ownership;
mod periodic;
mod poison;
mod priorities;
mod python_interop;
mod queries;
mod quota;
mod rate_limit;
mod reliability;
mod resilience;
mod scheduler;
mod scheduling;
mod send_batches;
mod sessions;
mod soak;
mod suppressions;
mod template_limits;
mod templates;
mod throttle;
mod timelines;
mod unsubscribe;
mod walkthrough;
mod webhooks;

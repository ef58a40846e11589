//! Per-recipient-domain throttles (`/api/v1/admin/domain-throttles`):
//! the settings, read from PostgreSQL every few seconds ([`cache`]), and
//! the limits themselves, held in Redis across every worker ([`gate`]).
//! A send held back by its domain is not kept in memory: the delivery
//! stage ([`crate::delivery::domains`]) puts it in the delay ladder with
//! the time the gate gives, and sends for other domains go on.

mod cache;
mod gate;

pub use cache::{DomainLimit, LimitCache, Limits};
pub use gate::{Gate, Limit, Pass, Verdict};

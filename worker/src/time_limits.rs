//! Time limits per task type set at run time (`celery control time_limit
//! <task> <soft> [hard]`), used instead of the configured
//! `CELERY_TASK_SOFT_TIME_LIMIT` / `CELERY_TASK_TIME_LIMIT`. As Celery's,
//! they live in the worker that received the command until it stops.
//!
//! They are capped by the configured hard limit: other workers treat a
//! claim older than that limit as abandoned and send its message again, so
//! a send must never be allowed to run longer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::worker_state::lock;

/// A task type's limits: the soft one bounds the SMTP transaction, the
/// hard one the whole attempt (composition, signing and transaction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub soft: Duration,
    pub hard: Duration,
}

pub struct TimeLimits {
    configured: Limits,
    by_task: Mutex<HashMap<String, Limits>>,
}

impl TimeLimits {
    pub fn new(soft: Duration, hard: Duration) -> Self {
        TimeLimits {
            configured: Limits { soft, hard },
            by_task: Mutex::new(HashMap::new()),
        }
    }

    /// Sets `task`'s limits in seconds; a missing or non-positive value
    /// falls back to the configured one, and both are capped by the
    /// configured hard limit (the soft one by the hard one).
    pub fn set(&self, task: &str, soft: Option<f64>, hard: Option<f64>) -> Limits {
        let cap = self.configured.hard;
        let seconds = |v: Option<f64>, default: Duration| {
            v.filter(|s| s.is_finite() && *s > 0.0)
                .map_or(default, Duration::from_secs_f64)
                .min(cap)
        };
        let hard = seconds(hard, cap);
        let soft = seconds(soft, self.configured.soft).min(hard);
        let limits = Limits { soft, hard };
        lock(&self.by_task).insert(task.to_string(), limits);
        limits
    }

    /// The limits that apply to `task`.
    pub fn of(&self, task: &str) -> Limits {
        lock(&self.by_task)
            .get(task)
            .copied()
            .unwrap_or(self.configured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fall_back_and_are_capped_by_the_configured_hard_limit() {
        let limits = TimeLimits::new(Duration::from_secs(10), Duration::from_secs(12));
        assert_eq!(limits.of("t").soft, Duration::from_secs(10));
        let set = limits.set("t", Some(2.0), Some(3.0));
        assert_eq!(set.soft, Duration::from_secs(2));
        assert_eq!(set.hard, Duration::from_secs(3));
        assert_eq!(limits.of("t"), set);
        assert_eq!(limits.of("other").hard, Duration::from_secs(12));
        let capped = limits.set("t", Some(100.0), Some(200.0));
        assert_eq!(capped.hard, Duration::from_secs(12));
        assert_eq!(capped.soft, Duration::from_secs(12));
        let soft_only = limits.set("t", Some(5.0), None);
        assert_eq!(soft_only.hard, Duration::from_secs(12));
        assert_eq!(soft_only.soft, Duration::from_secs(5));
        assert_eq!(
            limits.set("t", Some(f64::NAN), Some(-1.0)).soft,
            Duration::from_secs(10)
        );
    }
}

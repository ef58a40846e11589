//! Cron schedules in an IANA time zone, for campaigns and periodic tasks.
//!
//! Expressions are the `cron` crate's (seconds first, optional year); the
//! standard 5-field form is accepted by prepending a seconds field `0`.
//! Times are computed in the zone, so "0 30 9 * * *" is 09:30 local
//! summer and winter. A local time that does not exist (the spring DST
//! gap) has no run that day; one that exists twice (autumn) runs once, at
//! the first.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("invalid cron expression {0:?}: {1}")]
    Cron(String, String),
    #[error("{0:?} is not an IANA time zone name")]
    TimeZone(String),
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
}

impl CronSchedule {
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let expression = expression.trim();
        let fields = expression.split_whitespace().count();
        let full = if fields == 5 {
            format!("0 {expression}")
        } else {
            expression.to_string()
        };
        let schedule = cron::Schedule::from_str(&full)
            .map_err(|e| ScheduleError::Cron(expression.to_string(), e.to_string()))?;
        let tz = parse_time_zone(time_zone)?;
        Ok(CronSchedule { schedule, tz })
    }

    /// The first time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first time strictly after `after`, no earlier than `start` and
    /// no later than `end`.
    pub fn next_within(
        &self,
        after: DateTime<Utc>,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let from = match start {
            // `start` itself may be a run time.
            Some(start) if start > after => start - chrono::Duration::nanoseconds(1),
            _ => after,
        };
        self.next_after(from)
            .filter(|next| end.is_none_or(|end| *next <= end))
    }
}

impl CronSchedule {
    /// Up to `n` run times after `after` within `start`..`end`, in the
    /// schedule's own zone: what an operator reads as "the next runs".
    pub fn upcoming(
        &self,
        after: DateTime<Utc>,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        n: usize,
    ) -> Vec<DateTime<Tz>> {
        let mut times = Vec::with_capacity(n);
        let mut from = after;
        while times.len() < n {
            let Some(next) = self.next_within(from, start, end) else {
                break;
            };
            times.push(next.with_timezone(&self.tz));
            from = next;
        }
        times
    }
}

pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_run_across_the_spring_dst_change_in_new_york() {
        // 2026-03-08 02:00 EST becomes 03:00 EDT: 02:30 does not exist that day.
        let s = CronSchedule::parse("0 30 2 * * *", "America/New_York").unwrap();
        // 2026-03-07 02:30 EST = 07:30Z; the next is 2026-03-09 02:30 EDT = 06:30Z.
        let after = utc("2026-03-07T07:30:00Z");
        let next = s.next_after(after).unwrap();
        assert_eq!(next, utc("2026-03-09T06:30:00Z"), "no run in the gap");
        let next2 = s.next_after(next).unwrap();
        assert_eq!(next2, utc("2026-03-10T06:30:00Z"));
        // The day before: winter time, 07:30Z.
        assert_eq!(
            s.next_after(utc("2026-03-06T08:00:00Z")).unwrap(),
            utc("2026-03-07T07:30:00Z")
        );
    }

    #[test]
    fn local_time_is_kept_across_the_change() {
        let s = CronSchedule::parse("30 9 * * *", "America/New_York").unwrap();
        let tz = chrono_tz::America::New_York;
        let before = s.next_after(utc("2026-03-07T00:00:00Z")).unwrap();
        let after = s.next_after(utc("2026-03-09T00:00:00Z")).unwrap();
        assert_eq!(before, tz.with_ymd_and_hms(2026, 3, 7, 9, 30, 0).unwrap());
        assert_eq!(after, tz.with_ymd_and_hms(2026, 3, 9, 9, 30, 0).unwrap());
        assert_eq!(after - before, chrono::Duration::hours(47));
    }

    #[test]
    fn five_field_expressions_get_a_seconds_field_and_bad_input_is_named() {
        let s = CronSchedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:01:00Z")).unwrap(),
            utc("2026-01-01T00:05:00Z")
        );
        assert!(matches!(
            CronSchedule::parse("not a cron", "UTC"),
            Err(ScheduleError::Cron(..))
        ));
        assert!(matches!(
            CronSchedule::parse("0 * * * *", "Mars/Olympus"),
            Err(ScheduleError::TimeZone(_))
        ));
    }

    #[test]
    fn upcoming_runs_are_local_times_and_stop_at_the_end() {
        let s = CronSchedule::parse("0 9 * * MON", "Europe/Paris").unwrap();
        let runs = s.upcoming(utc("2026-03-20T00:00:00Z"), None, None, 3);
        let shown: Vec<String> = runs.iter().map(|t| t.to_rfc3339()).collect();
        // 09:00 local: CET before the change of 29 March, CEST after.
        assert_eq!(
            shown,
            [
                "2026-03-23T09:00:00+01:00",
                "2026-03-30T09:00:00+02:00",
                "2026-04-06T09:00:00+02:00"
            ]
        );
        let end = Some(utc("2026-03-31T00:00:00Z"));
        assert_eq!(
            s.upcoming(utc("2026-03-20T00:00:00Z"), None, end, 3).len(),
            2
        );
    }

    #[test]
    fn start_and_end_bound_the_runs() {
        let s = CronSchedule::parse("0 0 * * * *", "UTC").unwrap();
        let start = utc("2026-01-01T05:00:00Z");
        assert_eq!(
            s.next_within(utc("2026-01-01T00:10:00Z"), Some(start), None),
            Some(start)
        );
        assert_eq!(
            s.next_within(
                utc("2026-01-01T00:10:00Z"),
                None,
                Some(utc("2026-01-01T00:30:00Z"))
            ),
            None
        );
    }
}

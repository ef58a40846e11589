//! A campaign's schedule as operators read it: the next run times computed
//! by the scheduler's own cron code ([`CronSchedule`]), each shown in the
//! campaign's time zone, in UTC, and how far off it is.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use platform::schedule::{parse_time_zone, CronSchedule};

use crate::console::error_box;
use crate::validate::schedule_error;

/// How many upcoming runs are shown.
const SHOWN: usize = 3;

/// `at` in `zone` ("Mon 7 Dec 2026, 09:00 CET"), or in UTC when the zone
/// is not one.
pub fn local(at: &DateTime<Utc>, zone: &str) -> String {
    const FORMAT: &str = "%a %-d %b %Y, %H:%M %Z";
    match parse_time_zone(zone) {
        Ok(tz) => at.with_timezone(&tz).format(FORMAT).to_string(),
        Err(_) => at.format(FORMAT).to_string(),
    }
}

/// How far `at` is from `now`, in words ("in 3 days", "in 2 h 5 min").
pub fn from_now(at: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = (*at - now).num_minutes();
    match minutes {
        ..=0 => "in less than a minute".to_string(),
        1..=59 => format!("in {minutes} min"),
        60..=1439 => match minutes % 60 {
            0 => format!("in {} h", minutes / 60),
            m => format!("in {} h {m} min", minutes / 60),
        },
        _ => match minutes / 1440 {
            1 => "in 1 day".to_string(),
            days => format!("in {days} days"),
        },
    }
}

/// The next runs of `cron` in `zone` after `now` (within `start`..`end`),
/// or why the schedule does not parse, in words with its field.
pub fn next_runs(
    cron: &str,
    zone: &str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Markup {
    if cron.trim().is_empty() {
        return html! { p.hint #next-runs-empty { "Type a cron expression to see its next runs." } };
    }
    let schedule = match CronSchedule::parse(cron, zone) {
        Ok(schedule) => schedule,
        Err(e) => return error_box(&schedule_error(e)),
    };
    let times = schedule.upcoming(now, start, end, SHOWN);
    html! {
        @if times.is_empty() { p #next-runs-none { "No run time left in this schedule." } }
        @else {
            ol #next-runs {
                @for t in &times {
                    @let utc = t.with_timezone(&Utc);
                    li {
                        time datetime=(utc.to_rfc3339()) { (t.format("%a %-d %b %Y, %H:%M %Z")) }
                        " (" (utc.format("%H:%M UTC")) ") · " (from_now(&utc, now))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn next_runs_are_shown_in_the_campaign_zone_with_utc_and_distance() {
        let now = utc("2026-12-02T10:00:00Z");
        let shown = next_runs("0 9 * * MON", "Europe/Paris", None, None, now).into_string();
        assert!(
            shown.contains("Mon 7 Dec 2026, 09:00 CET</time> (08:00 UTC) · in 4 days"),
            "{shown}"
        );
        assert_eq!(shown.matches("<li>").count(), 3, "{shown}");
        let refused = next_runs("0 9 * *", "UTC", None, None, now).into_string();
        assert!(refused.contains("invalid_cron"), "{refused}");
        let zone = next_runs("0 9 * * *", "Mars/Base", None, None, now).into_string();
        assert!(
            zone.contains("invalid_time_zone") && zone.contains("time_zone"),
            "{zone}"
        );
    }

    #[test]
    fn distances_read_as_words() {
        let now = utc("2026-12-02T10:00:00Z");
        let at = |s: &str| from_now(&utc(s), now);
        assert_eq!(at("2026-12-02T10:00:30Z"), "in less than a minute");
        assert_eq!(at("2026-12-02T10:45:00Z"), "in 45 min");
        assert_eq!(at("2026-12-02T12:05:00Z"), "in 2 h 5 min");
        assert_eq!(at("2026-12-03T11:00:00Z"), "in 1 day");
    }
}

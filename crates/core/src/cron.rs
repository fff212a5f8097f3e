//! When a scheduled crawl fires: `spec.schedule` parsed, and the timing of its firings in a time
//! zone. Pure: instants and a time zone in, instants out (the caller looks the zone up by name).
//!
//! The syntax is a `CronJob`'s (robfig/cron's standard parser, which Kubernetes uses): five fields
//! `minute hour day-of-month month day-of-week` with `*`, `?`, lists (`1,15`), ranges (`1-5`),
//! steps (`*/10`, `5/15` = `5-59/15`), month names `JAN`-`DEC` and day names `SUN`-`SAT`
//! (day of week 0-6, Sunday 0); the macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly`. When both day fields are restricted, a day matches either (as in
//! Vixie cron and robfig); when either is `*`, both must match. As an extension of `CronJob`'s
//! documented syntax, `@every <duration>` (e.g. `@every 30s`, `@every 1h30m`) fires every
//! duration after the last firing, at least [`MIN_EVERY`] apart.
//!
//! Daylight saving time is handled as robfig/cron does: a schedule fires at every instant whose
//! wall-clock time in the zone matches it. A wall-clock time the zone skips (spring forward) does
//! not fire that day; one it repeats (fall back) fires at both instants. No instant fires twice.

use std::{fmt, str::FromStr, time::Duration};

use jiff::{
    SignedDuration, Span, Timestamp,
    civil::{Date, DateTime, Time},
    tz::{AmbiguousOffset, TimeZone},
};

/// The shortest `@every` interval: a firing is a status write and a new crawl from the seeds,
/// and the controller checks due firings once a second.
pub const MIN_EVERY: Duration = Duration::from_secs(5);

/// How far ahead the next firing is looked for (robfig/cron: five years): a schedule that never
/// matches (`0 0 30 2 *`) has no next firing.
const YEARS_AHEAD: i16 = 5;

/// How far from `t` the zone's transitions are looked at (wider than any real one).
const MAX_SHIFT: SignedDuration = SignedDuration::from_hours(26);

/// A parsed `spec.schedule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `@every`: whole seconds.
    Every(i64),
    Fields(Fields),
}

/// Bit sets of the values each field allows, and whether a day field was `*` (or `?`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    day_of_month: u64,
    month: u64,
    day_of_week: u64,
    day_of_month_star: bool,
    day_of_week_star: bool,
}

/// Why a schedule is refused; the message says what is wrong and what is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), found {0}"
    )]
    FieldCount(usize),
    #[error(
        "unknown macro {0:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or '@every <duration>'"
    )]
    UnknownMacro(String),
    #[error("{field} field: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "@every {0:?}: expected a duration such as 30s, 5m or 1h30m (whole seconds, at least {min}s)",
        min = MIN_EVERY.as_secs()
    )]
    Every(String),
    #[error(
        "a time zone inside the schedule ({0}) is not supported, as in a CronJob: set spec.timeZone instead"
    )]
    InlineTimeZone(String),
}

/// The firings between the last one acted on and now, as a `CronJob` judges them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firings {
    /// The firing to act on now: the most recent one in `(since, now]`, unless it is older than the
    /// starting deadline (earlier ones in that range are superseded by it, as in a `CronJob`).
    pub due: Option<Timestamp>,
    /// The most recent firing in `(since, now]` when it is older than the starting deadline: it
    /// is not run (a `CronJob`'s missed schedule).
    pub missed: Option<Timestamp>,
    /// The first firing after `now` (none within five years: the schedule never matches).
    pub next: Option<Timestamp>,
}

struct FieldSpec {
    name: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 6,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

impl FieldSpec {
    fn error(&self, message: impl Into<String>) -> CronError {
        CronError::Field {
            field: self.name,
            message: message.into(),
        }
    }

    fn value(&self, text: &str) -> Result<u8, CronError> {
        let upper = text.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            // Month names count from 1, day names from 0 (the field's minimum).
            return Ok(self.min + u8::try_from(i).unwrap_or(0));
        }
        let value: u8 = text.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(
                    " or a name ({}-{})",
                    self.names[0],
                    self.names[self.names.len() - 1]
                )
            };
            self.error(format!(
                "{text:?} is not a number from {} to {}{names}",
                self.min, self.max
            ))
        })?;
        if value < self.min || value > self.max {
            return Err(self.error(format!(
                "{value} is out of range: {} to {}",
                self.min, self.max
            )));
        }
        Ok(value)
    }

    /// One field: a comma-separated list of `*`, `?`, `N`, `N-M`, each with an optional `/step`.
    /// Returns the bit set and whether the field is a plain star (`*`, `?` or `*/1`).
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        let mut star = false;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step: u8 = step.parse().map_err(|_| {
                        self.error(format!("step {step:?} in {part:?} is not a number"))
                    })?;
                    if step == 0 {
                        return Err(self.error(format!("step 0 in {part:?}: use 1 or more")));
                    }
                    (range, Some(step))
                }
                None => (part, None),
            };
            let (start, end, is_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else if let Some((low, high)) = range.split_once('-') {
                (self.value(low)?, self.value(high)?, false)
            } else {
                let v = self.value(range)?;
                // `N/step` means `N-max/step`, as in robfig/cron.
                (v, if step.is_some() { self.max } else { v }, false)
            };
            if start > end {
                return Err(self.error(format!(
                    "range {range:?} runs backwards: its start is after its end"
                )));
            }
            let step = step.unwrap_or(1);
            if is_star && step == 1 {
                star = true;
            }
            let mut v = start;
            while v <= end {
                bits |= 1u64 << v;
                v = match v.checked_add(step) {
                    Some(v) => v,
                    None => break,
                };
            }
        }
        Ok((bits, star))
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Some(tz) = trimmed
            .split_whitespace()
            .find(|w| w.starts_with("TZ=") || w.starts_with("CRON_TZ="))
        {
            return Err(CronError::InlineTimeZone(tz.to_owned()));
        }
        let kind = if let Some(every) = trimmed.strip_prefix("@every") {
            Kind::Every(parse_every(every.trim())?)
        } else if trimmed.starts_with('@') {
            let fields = match trimmed {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                other => return Err(CronError::UnknownMacro(other.to_owned())),
            };
            Kind::Fields(parse_fields(fields)?)
        } else {
            Kind::Fields(parse_fields(trimmed)?)
        };
        Ok(Self {
            text: trimmed.to_owned(),
            kind,
        })
    }
}

fn parse_every(text: &str) -> Result<i64, CronError> {
    let bad = || CronError::Every(text.to_owned());
    let duration: SignedDuration = text.parse().map_err(|_| bad())?;
    if duration.subsec_nanos() != 0 {
        return Err(bad());
    }
    let secs = duration.as_secs();
    if secs < i64::try_from(MIN_EVERY.as_secs()).unwrap_or(i64::MAX) {
        return Err(bad());
    }
    Ok(secs)
}

fn parse_fields(text: &str) -> Result<Fields, CronError> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = parts[..] else {
        return Err(CronError::FieldCount(parts.len()));
    };
    let (minute, _) = MINUTE.parse(minute)?;
    let (hour, _) = HOUR.parse(hour)?;
    let (day_of_month, day_of_month_star) = DAY_OF_MONTH.parse(dom)?;
    let (month, _) = MONTH.parse(month)?;
    let (day_of_week, day_of_week_star) = DAY_OF_WEEK.parse(dow)?;
    Ok(Fields {
        minute,
        hour,
        day_of_month,
        month,
        day_of_week,
        day_of_month_star,
        day_of_week_star,
    })
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn has(bits: u64, v: i8) -> bool {
    u32::try_from(v).is_ok_and(|v| v < 64 && bits & (1 << v) != 0)
}

impl Fields {
    fn day_matches(&self, date: Date) -> bool {
        let dom = has(self.day_of_month, date.day());
        let dow = has(self.day_of_week, date.weekday().to_sunday_zero_offset());
        if self.day_of_month_star || self.day_of_week_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first wall-clock minute at or after `c` (a whole minute) that matches, before year
    /// `limit`.
    fn next_civil(&self, mut c: DateTime, limit: i16) -> Option<DateTime> {
        loop {
            if c.year() > limit {
                return None;
            }
            if !has(self.month, c.month()) {
                c = c.first_of_month().checked_add(Span::new().months(1)).ok()?;
                continue;
            }
            if !self.day_matches(c.date()) {
                c = c.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if !has(self.hour, c.hour()) {
                c = c
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(Span::new().hours(1))
                    .ok()?;
                continue;
            }
            if !has(self.minute, c.minute()) {
                c = c.checked_add(Span::new().minutes(1)).ok()?;
                continue;
            }
            return Some(c);
        }
    }
}

impl Cron {
    /// The first firing strictly after `t`, in `tz` (none within five years).
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(secs) => {
                // robfig/cron: the next firing is `every` after `t`, on a whole second.
                let t = Timestamp::from_second(t.as_second()).ok()?;
                t.checked_add(SignedDuration::from_secs(*secs)).ok()
            }
            Kind::Fields(fields) => next_fields(fields, t, tz),
        }
    }

    /// The firings in `(since, now]` and the next one after `now` (see [`Firings`]). `since`:
    /// the last firing acted on (or when the schedule began: the resource's creation). A firing
    /// more than `starting_deadline` before `now` is missed, as a `CronJob`'s
    /// `startingDeadlineSeconds`.
    pub fn firings(
        &self,
        tz: &TimeZone,
        since: Timestamp,
        now: Timestamp,
        starting_deadline: Option<Duration>,
    ) -> Firings {
        let next = match self.kind {
            // Firings are `since + k * every`: the first of them after `now`.
            Kind::Every(secs) => {
                let k = (now.as_second() - since.as_second()).max(0) / secs + 1;
                Timestamp::from_second(since.as_second().saturating_add(k.saturating_mul(secs)))
                    .ok()
            }
            Kind::Fields(_) => self.next_after(now.max(since), tz),
        };
        let latest = self.latest_in(tz, since, now);
        let too_late = |t: Timestamp| {
            starting_deadline.is_some_and(|d| {
                SignedDuration::try_from(d)
                    .ok()
                    .and_then(|d| t.checked_add(d).ok())
                    .is_some_and(|end| end < now)
            })
        };
        match latest {
            Some(t) if too_late(t) => Firings {
                due: None,
                missed: Some(t),
                next,
            },
            due => Firings {
                due,
                missed: None,
                next,
            },
        }
    }

    /// The most recent firing in `(since, now]`. Searched in widening windows back from `now`,
    /// so a controller that was away for a year does not walk every minute of it.
    fn latest_in(&self, tz: &TimeZone, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        if now <= since {
            return None;
        }
        if let Kind::Every(secs) = self.kind {
            // Firings are `since + k * every`, k >= 1.
            let since_s = since.as_second();
            let k = (now.as_second() - since_s) / secs;
            let at = Timestamp::from_second(since_s + k * secs).ok()?;
            return (k >= 1 && at > since && at <= now).then_some(at);
        }
        for hours in [1, 48, 24 * 40, 24 * 400, 24 * 366 * i64::from(YEARS_AHEAD)] {
            let start = now
                .checked_sub(SignedDuration::from_hours(hours))
                .map_or(since, |s| s.max(since));
            let mut latest = None;
            let mut t = start;
            while let Some(next) = self.next_after(t, tz).filter(|n| *n <= now) {
                latest = Some(next);
                t = next;
            }
            if latest.is_some() || start == since {
                return latest;
            }
        }
        None
    }
}

/// The first instant after `t` whose wall-clock time in `tz` matches `fields`. Wall-clock
/// candidates are walked in order, each mapping to no instant (a gap), one, or two (an overlap).
/// Near an overlap a later wall-clock time can be an earlier instant: the walk starts that much
/// before `t`'s wall-clock time and goes that much past the first match.
fn next_fields(fields: &Fields, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    let local = tz.to_datetime(t);
    let limit = local.year().saturating_add(YEARS_AHEAD);
    let back = backward_jump(tz, t);
    let mut c = local
        .checked_sub(back)
        .ok()?
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .ok()?;
    let mut best: Option<(Timestamp, DateTime)> = None;
    while let Some(candidate) = fields.next_civil(c, limit) {
        c = candidate;
        if let Some((_, at)) = best
            && c > at.checked_add(back).ok()?
        {
            break;
        }
        let offsets = match tz.to_ambiguous_timestamp(c).offset() {
            AmbiguousOffset::Unambiguous { offset } => [Some(offset), None],
            AmbiguousOffset::Gap { .. } => [None, None],
            AmbiguousOffset::Fold { before, after } => [Some(before), Some(after)],
        };
        for offset in offsets.into_iter().flatten() {
            let Ok(instant) = offset.to_timestamp(c) else {
                continue;
            };
            if instant > t && best.is_none_or(|(b, _)| instant < b) {
                best = Some((instant, c));
            }
        }
        c = c.checked_add(Span::new().minutes(1)).ok()?;
    }
    best.map(|(b, _)| b)
}

/// The largest backward jump of `tz`'s wall clock (an overlap: the offset decreasing) within
/// a day of `t`; zero for a zone without one there (UTC, fixed offsets, most days).
fn backward_jump(tz: &TimeZone, t: Timestamp) -> SignedDuration {
    let (Ok(from), Ok(to)) = (t.checked_sub(MAX_SHIFT), t.checked_add(MAX_SHIFT)) else {
        return MAX_SHIFT;
    };
    tz.following(from)
        .take_while(|tr| tr.timestamp() <= to)
        .filter_map(|tr| {
            let before = tz.to_offset(
                tr.timestamp()
                    .checked_sub(SignedDuration::from_nanos(1))
                    .ok()?,
            );
            Some(before.duration_since(tr.offset()))
        })
        .filter(SignedDuration::is_positive)
        .max()
        .unwrap_or(SignedDuration::ZERO)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn cron(s: &str) -> Cron {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The firings after `from`, `n` of them.
    fn series(c: &Cron, zone: &TimeZone, from: &str, n: usize) -> Vec<String> {
        let mut t = ts(from);
        (0..n)
            .map(|_| {
                t = c.next_after(t, zone).unwrap();
                t.to_string()
            })
            .collect()
    }

    #[test]
    fn parses_what_a_cronjob_accepts_and_refuses_the_rest_saying_why() {
        for ok in [
            "* * * * *",
            "0 3 * * *",
            "*/15 * * * *",
            "5/15 * * * *",
            "0 9-17 * * MON-FRI",
            "0 0 1,15 * *",
            "0 0 * JAN,jul ?",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@every 30s",
            "@every 1h30m",
            "@every 5s",
        ] {
            assert!(ok.parse::<Cron>().is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("* * * *", "expected 5 fields"),
            ("* * * * * *", "found 6"),
            ("60 * * * *", "minute field: 60 is out of range: 0 to 59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 7", "day-of-week field: 7 is out of range: 0 to 6"),
            ("* * * FOO *", "or a name (JAN-DEC)"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "runs backwards"),
            ("@often", "unknown macro"),
            ("@every 2s", "at least 5s"),
            ("@every 1.5s", "whole seconds"),
            ("@every soon", "expected a duration"),
            ("TZ=UTC 0 3 * * *", "set spec.timeZone instead"),
            (
                "CRON_TZ=Europe/Paris 0 3 * * *",
                "set spec.timeZone instead",
            ),
        ] {
            let e = bad.parse::<Cron>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn fires_on_the_wall_clock_of_its_zone() {
        let utc = TimeZone::UTC;
        assert_eq!(
            series(&cron("0 3 * * *"), &utc, "2025-01-30T04:00:00Z", 3),
            [
                "2025-01-31T03:00:00Z",
                "2025-02-01T03:00:00Z",
                "2025-02-02T03:00:00Z"
            ]
        );
        // 03:00 in Tokyo (UTC+9) is 18:00 UTC the day before.
        assert_eq!(
            series(
                &cron("0 3 * * *"),
                &tz("Asia/Tokyo"),
                "2025-01-30T00:00:00Z",
                1
            ),
            ["2025-01-30T18:00:00Z"]
        );
        assert_eq!(
            series(&cron("@monthly"), &utc, "2025-01-15T00:00:00Z", 2),
            ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"]
        );
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(
            series(&cron("0 0 13 * 5"), &utc, "2025-06-01T00:00:00Z", 3),
            [
                "2025-06-06T00:00:00Z",
                "2025-06-13T00:00:00Z",
                "2025-06-20T00:00:00Z"
            ]
        );
        // One of them a star: both must match (every day of the month, and a Friday); `*/2` is
        // no star (robfig/cron's rule): either matches.
        assert_eq!(
            series(&cron("0 0 * * FRI"), &utc, "2025-06-01T00:00:00Z", 2),
            ["2025-06-06T00:00:00Z", "2025-06-13T00:00:00Z"]
        );
        assert_eq!(
            series(&cron("0 0 */2 * FRI"), &utc, "2025-06-01T00:00:00Z", 3),
            [
                "2025-06-03T00:00:00Z",
                "2025-06-05T00:00:00Z",
                "2025-06-06T00:00:00Z"
            ]
        );
        assert_eq!(
            series(&cron("0 0 29 2 *"), &utc, "2025-01-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00Z"]
        );
        assert_eq!(
            cron("0 0 30 2 *").next_after(ts("2025-01-01T00:00:00Z"), &utc),
            None
        );
    }

    #[test]
    fn every_counts_from_the_last_firing_in_whole_seconds() {
        let c = cron("@every 30s");
        assert_eq!(
            series(&c, &TimeZone::UTC, "2025-01-01T00:00:00.700Z", 2),
            ["2025-01-01T00:00:30Z", "2025-01-01T00:01:00Z"]
        );
    }

    /// Spring forward in New York, 2025-03-09: 02:00 EST becomes 03:00 EDT.
    #[test]
    fn a_wall_clock_time_the_zone_skips_does_not_fire_that_day() {
        let ny = tz("America/New_York");
        assert_eq!(
            series(&cron("30 2 * * *"), &ny, "2025-03-08T12:00:00Z", 2),
            // The 9th has no 02:30: the 10th's, in EDT.
            ["2025-03-10T06:30:00Z", "2025-03-11T06:30:00Z"]
        );
        // Hourly keeps firing every real hour across the jump: 01:00 EST, 03:00 EDT.
        assert_eq!(
            series(&cron("0 * * * *"), &ny, "2025-03-09T05:30:00Z", 3),
            [
                "2025-03-09T06:00:00Z",
                "2025-03-09T07:00:00Z",
                "2025-03-09T08:00:00Z"
            ]
        );
    }

    /// Fall back in New York, 2025-11-02: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    #[test]
    fn a_wall_clock_time_the_zone_repeats_fires_at_both_instants() {
        let ny = tz("America/New_York");
        assert_eq!(
            series(&cron("30 1 * * *"), &ny, "2025-11-02T04:00:00Z", 3),
            [
                "2025-11-02T05:30:00Z",
                "2025-11-02T06:30:00Z",
                "2025-11-03T06:30:00Z"
            ]
        );
        assert_eq!(
            series(&cron("0 * * * *"), &ny, "2025-11-02T04:30:00Z", 3),
            [
                "2025-11-02T05:00:00Z",
                "2025-11-02T06:00:00Z",
                "2025-11-02T07:00:00Z"
            ]
        );
    }

    #[test]
    fn the_latest_firing_is_due_unless_older_than_the_starting_deadline() {
        let c = cron("0 * * * *");
        let utc = TimeZone::UTC;
        let since = ts("2025-01-01T00:00:00Z");
        let now = ts("2025-01-01T05:10:00Z");
        // Five firings missed: the latest runs, the others are superseded (a CronJob's).
        assert_eq!(
            c.firings(&utc, since, now, None),
            Firings {
                due: Some(ts("2025-01-01T05:00:00Z")),
                missed: None,
                next: Some(ts("2025-01-01T06:00:00Z")),
            }
        );
        assert_eq!(
            c.firings(&utc, since, now, Some(Duration::from_secs(600)))
                .due,
            Some(ts("2025-01-01T05:00:00Z"))
        );
        assert_eq!(
            c.firings(&utc, since, now, Some(Duration::from_secs(599))),
            Firings {
                due: None,
                missed: Some(ts("2025-01-01T05:00:00Z")),
                next: Some(ts("2025-01-01T06:00:00Z")),
            }
        );
        // Acted on: not due again.
        let after = c.firings(&utc, ts("2025-01-01T05:00:00Z"), now, None);
        assert_eq!((after.due, after.missed), (None, None));
        // A year away, a per-minute schedule: found without walking the year.
        let year = cron("* * * * *").firings(&utc, since, ts("2026-01-01T00:00:30Z"), None);
        assert_eq!(year.due, Some(ts("2026-01-01T00:00:00Z")));
        // A yearly one, found in the widest window.
        let yearly = cron("@yearly").firings(&utc, since, ts("2027-06-01T00:00:00Z"), None);
        assert_eq!(yearly.due, Some(ts("2027-01-01T00:00:00Z")));
        let every = cron("@every 10s").firings(&utc, since, ts("2025-01-01T00:00:35Z"), None);
        assert_eq!(every.due, Some(ts("2025-01-01T00:00:30Z")));
        assert_eq!(
            every.next,
            Some(ts("2025-01-01T00:00:40Z")),
            "counted from since"
        );
        let early = cron("@every 10s").firings(&utc, since, ts("2025-01-01T00:00:01Z"), None);
        assert_eq!(
            (early.due, early.next),
            (None, Some(ts("2025-01-01T00:00:10Z")))
        );
    }

    const ZONES: [&str; 6] = [
        "UTC",
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe", // a half-hour DST shift
        "Asia/Kathmandu",      // UTC+05:45
        "America/Sao_Paulo",   // midnight skipped in past years
    ];

    fn schedule() -> impl Strategy<Value = String> {
        let minute = prop_oneof![
            Just("*".to_owned()),
            (0u8..60).prop_map(|m| m.to_string()),
            (1u8..31).prop_map(|s| format!("*/{s}")),
            (0u8..30, 30u8..60).prop_map(|(a, b)| format!("{a},{b}")),
        ];
        let hour = prop_oneof![
            Just("*".to_owned()),
            (0u8..24).prop_map(|h| h.to_string()),
            (0u8..3, 1u8..4).prop_map(|(a, s)| format!("{a}/{s}")),
            (0u8..12, 12u8..24).prop_map(|(a, b)| format!("{a}-{b}")),
        ];
        let dom = prop_oneof![
            3 => Just("*".to_owned()),
            1 => (1u8..29).prop_map(|d| d.to_string()),
        ];
        let dow = prop_oneof![
            3 => Just("*".to_owned()),
            1 => (0u8..7).prop_map(|d| d.to_string()),
        ];
        (minute, hour, dom, dow).prop_map(|(m, h, d, w)| format!("{m} {h} {d} * {w}"))
    }

    fn instant() -> impl Strategy<Value = Timestamp> {
        // 1995 to 2035, around DST transitions as often as anywhere else.
        (820_000_000i64..2_060_000_000, 0i32..1000)
            .prop_map(|(s, ms)| Timestamp::new(s, ms * 1_000_000).unwrap())
    }

    fn matches(fields: &Fields, t: Timestamp, zone: &TimeZone) -> bool {
        let c = zone.to_datetime(t);
        c.second() == 0
            && c.subsec_nanosecond() == 0
            && has(fields.minute, c.minute())
            && has(fields.hour, c.hour())
            && has(fields.month, c.month())
            && fields.day_matches(c.date())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The next firing is strictly after `t`, its wall-clock time matches, and no instant
        /// between them (minute by minute, every zone's offsets being whole minutes here) does:
        /// gaps skip, overlaps fire at both instants, nothing fires twice.
        #[test]
        fn the_next_firing_is_the_first_matching_instant_after_t(
            text in schedule(),
            zone in proptest::sample::select(ZONES.to_vec()),
            t in instant(),
        ) {
            let c = cron(&text);
            let Kind::Fields(fields) = &c.kind else { unreachable!() };
            let zone = tz(zone);
            let next = c.next_after(t, &zone).expect("these schedules fire every month");
            prop_assert!(next > t);
            prop_assert!(matches(fields, next, &zone), "{text}: {next} does not match");
            if next.duration_since(t) < SignedDuration::from_hours(24 * 8) {
                let mut m = Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).unwrap();
                loop {
                    m = m.checked_add(SignedDuration::from_mins(1)).unwrap();
                    if m >= next { break; }
                    prop_assert!(m <= t || !matches(fields, m, &zone), "{text}: {m} skipped before {next}");
                }
            }
            let again = c.next_after(next, &zone).unwrap();
            prop_assert!(again > next, "{text}: fired twice at {next}");
        }

        /// Acting on the due firing (it becomes `since`) never makes it due again; what is due is
        /// in `(since, now]`, and the next firing is after `now`.
        #[test]
        fn a_due_firing_is_acted_on_once(
            text in schedule(),
            zone in proptest::sample::select(ZONES.to_vec()),
            since in instant(),
            elapsed in 0i64..200_000,
            deadline in proptest::option::of(0u64..100_000),
        ) {
            let c = cron(&text);
            let zone = tz(zone);
            let now = since.checked_add(SignedDuration::from_secs(elapsed)).unwrap();
            let deadline = deadline.map(Duration::from_secs);
            let f = c.firings(&zone, since, now, deadline);
            if let Some(due) = f.due.or(f.missed) {
                prop_assert!(due > since && due <= now);
                prop_assert!(c.next_after(due, &zone).unwrap() > now, "{text}: {due} is not the latest");
                let after = c.firings(&zone, due, now, deadline);
                prop_assert_eq!((after.due, after.missed), (None, None));
            } else {
                prop_assert!(c.next_after(since, &zone).unwrap() > now);
            }
            prop_assert!(f.next.unwrap() > now);
        }
    }
}

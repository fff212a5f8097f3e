//! The operator's retry schedules: a wait between two attempts of something that failed is
//! taken from a [`backon`] schedule. Built here: the controller's work queue, a failed run's
//! back-off (`RetryBackoff`), the standby's rounds, the release's confirmation, the result
//! store's writer, a checked watch's failed cycles (`watch::checked`). The heartbeat watches (`heartbeat::watch_retry`) and a final report
//! (`worker::report::final_report_retry`), both with jitter, build theirs with backon where they live.
//! One crate, so a bound is read the same way everywhere and tested as a plain sequence of
//! delays.

use std::time::Duration;

use backon::BackoffBuilder;

/// `first`, doubling, at most `max`, forever, without jitter (the delays are documented, and
/// tested, as exact figures).
///
/// backon multiplies in `f32` seconds, which puts a few nanoseconds of noise on a delay such
/// as 200 ms: each delay is rounded to the nearest millisecond, and kept within
/// `first..=max`, so a schedule of whole milliseconds is exactly the one documented.
pub fn doubling(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .map(move |d| whole_millis(d).clamp(first, max.max(first)))
}

/// The `failures`-th delay (1 for the first failure) of [`doubling`]: what a retry that keeps
/// only a count of failures waits.
pub fn doubling_after(first: Duration, max: Duration, failures: u32) -> Duration {
    // The schedule is at `max` long before 128 doublings (f32 seconds overflow at 2^128).
    let n = usize::try_from(failures.saturating_sub(1).min(128)).unwrap_or(128);
    doubling(first, max).nth(n).unwrap_or(max.max(first))
}

fn whole_millis(d: Duration) -> Duration {
    let millis = d.as_nanos().saturating_add(500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(first: u64, max: u64, n: usize) -> Vec<u128> {
        doubling(Duration::from_millis(first), Duration::from_millis(max))
            .take(n)
            .map(|d| d.as_millis())
            .collect()
    }

    #[test]
    fn doubling_is_exact_in_whole_milliseconds_and_stays_at_its_bound() {
        assert_eq!(
            millis(100, 5_000, 8),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(
            millis(200, 60_000, 11),
            [
                200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000
            ]
        );
        // Exact, not only to the millisecond.
        let delays: Vec<Duration> = doubling(Duration::from_millis(100), Duration::from_secs(1))
            .take(6)
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn it_never_ends() {
        let last = doubling(Duration::from_millis(100), Duration::from_secs(5)).nth(10_000);
        assert_eq!(last, Some(Duration::from_secs(5)));
    }

    #[test]
    fn the_nth_failure_waits_the_nth_delay() {
        let (first, max) = (Duration::from_secs(2), Duration::from_secs(8));
        let waits: Vec<Duration> = (1..=5).map(|n| doubling_after(first, max, n)).collect();
        let s = Duration::from_secs;
        assert_eq!(waits, [s(2), s(4), s(8), s(8), s(8)]);
        assert_eq!(
            doubling_after(first, max, 0),
            first,
            "no failure: the first delay"
        );
        assert_eq!(doubling_after(first, max, u32::MAX), max);
    }

    #[test]
    fn a_max_below_first_is_first() {
        assert_eq!(millis(500, 100, 3), [500, 500, 500]);
    }
}

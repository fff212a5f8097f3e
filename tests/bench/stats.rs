//! Percentiles and rates.

use std::time::Duration;

/// Durations measured for one thing (one sample per write, per resource, per trial).
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<Duration>);

/// count, p50, p90, p99, max of a [`Samples`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Samples {
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    pub fn extend(&mut self, other: &Samples) {
        self.0.extend_from_slice(&other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nearest-rank percentiles (p99 of 100 samples is the 99th smallest).
    pub fn summary(&self) -> Summary {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let at = |p: f64| -> Duration {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Summary {
            count: sorted.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

impl FromIterator<Duration> for Samples {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Milliseconds with one decimal, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Seconds with two decimals, for tables.
pub fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Events per second.
pub fn per_sec(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Median of a few repetitions (e.g. of a micro-benchmark).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Rates per one-second bucket between the first and the last instant (for steadiness).
pub fn bucket_rates(instants: &[std::time::Instant]) -> Vec<usize> {
    let (Some(first), Some(last)) = (instants.iter().min(), instants.iter().max()) else {
        return Vec::new();
    };
    let buckets = (last.duration_since(*first).as_secs() + 1) as usize;
    let mut counts = vec![0; buckets];
    for at in instants {
        counts[at.duration_since(*first).as_secs() as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Samples = (1..=100).map(Duration::from_millis).collect();
        let sum = s.summary();
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p90, Duration::from_millis(90));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
        assert_eq!(Samples::default().summary().count, 0);
    }
}

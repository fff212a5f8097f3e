//! Politeness per host, shared by every crawl of a worker process.
//!
//! A task's `rateLimit` bounds that task; [`Politeness`] bounds what all the tasks holding the
//! same handle send to one host: a minimum delay between two requests (the larger of the
//! installation's and the host's `robots.txt` `Crawl-delay`, the latter capped), a maximum
//! number in flight, and a back-off window after a 429 or 503 (its `Retry-After`, or an
//! exponential schedule) inside which no request goes to the host. It also caches `robots.txt`
//! per origin for a TTL, so the tasks fetch it once between them.
//!
//! ```text
//!  task A ─┐                      ┌─ HostState "a.example" (next slot, in flight, back-off)
//!  task B ─┼─ acquire(host) ──▶ gate ─ HostState "b.example"
//!  task C ─┘   ▲ permit dropped   └─ ...
//!              └── record(status, Retry-After) after each response
//! ```
//!
//! The decisions ([`HostState::decide`], [`Backoff::delay`], [`parse_retry_after`],
//! [`host_delay`]) are pure; the gate around them is the only I/O (a clock and sleeps).
//! A budget shared across workers would replace the local `next` slot by a grant from the
//! shared store (see docs/architecture.md); the gate's shape stays.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use tokio::{sync::Notify, time::Instant};
use tracing::warn;

use crate::robots::Robots;

/// How the installation treats every host. [`HostPolicy::default`] is the engine's library
/// default: no delay or in-flight bound of its own (each task's rate limit applies), back-off
/// as `StormCrawler` does it; the worker sets its own from flags.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    /// Least time between the starts of two requests to one host, from any task.
    pub min_delay: Duration,
    /// Most requests in flight to one host at once, from all tasks; at least 1.
    pub max_in_flight: usize,
    /// A `robots.txt` `Crawl-delay` is honoured up to this; a larger one is taken as this.
    pub max_crawl_delay: Duration,
    /// The window after a 429 or 503 without a usable `Retry-After`.
    pub backoff: Backoff,
    /// A `Retry-After` longer than this is taken as this (a day by default).
    pub max_retry_after: Duration,
    /// How long a fetched `robots.txt` is used before it is fetched again (RFC 9309: at most
    /// 24 h). A file that could not be fetched (5xx, unreachable) is kept for at most
    /// [`ROBOTS_ERROR_TTL`], so a passing outage does not close a host for a day.
    pub robots_ttl: Duration,
}

/// Cached `robots.txt` files past which the expired ones are first dropped.
const ROBOTS_PRUNE_AT: usize = 4096;

/// How long a `robots.txt` that could not be fetched is remembered.
pub const ROBOTS_ERROR_TTL: Duration = Duration::from_secs(60);

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::ZERO,
            max_in_flight: usize::MAX,
            max_crawl_delay: Duration::from_secs(30),
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(24 * 3600),
            robots_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// An exponential schedule: `start`, then times `factor` each time, at most `cap`, each delay
/// moved by up to `jitter` (a fraction) either way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub start: Duration,
    pub factor: f64,
    pub cap: Duration,
    /// 0.1: a delay is drawn from ±10 % of the schedule's value.
    pub jitter: f64,
}

impl Default for Backoff {
    /// `StormCrawler`'s for a 429 without `Retry-After`: 60 s, doubling, at most a day, 10 %.
    fn default() -> Self {
        Self {
            start: Duration::from_secs(60),
            factor: 2.0,
            cap: Duration::from_secs(24 * 3600),
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// The delay after `streak` earlier ones in a row (0: the first), with `unit` in `[-1, 1]`
    /// choosing where in the jitter band it falls. Never above `cap`, never negative.
    pub fn delay(&self, streak: u32, unit: f64) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let exponent = i32::try_from(streak.min(64)).unwrap_or(64);
        let base = (self.start.as_secs_f64() * factor.powi(exponent)).min(self.cap.as_secs_f64());
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if unit.is_finite() {
            unit.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let seconds = (base * (1.0 + jitter * unit)).clamp(0.0, self.cap.as_secs_f64());
        Duration::try_from_secs_f64(seconds).unwrap_or(self.cap)
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP date, as the time to
/// wait from `now`. A date in the past waits zero; anything else unreadable is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay between two requests to a host: the installation's minimum, or the host's
/// `Crawl-delay` (seconds, capped at `max_crawl_delay`) when larger.
pub fn host_delay(
    min_delay: Duration,
    crawl_delay: Option<f32>,
    max_crawl_delay: Duration,
) -> Duration {
    let crawl = crawl_delay
        .filter(|d| d.is_finite() && *d > 0.0)
        .and_then(|d| Duration::try_from_secs_f64(f64::from(d)).ok())
        .map_or(Duration::ZERO, |d| d.min(max_crawl_delay));
    min_delay.max(crawl)
}

/// What the gate knows of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// No request starts before this (the last start plus the host's delay).
    pub next: Instant,
    pub in_flight: usize,
    /// Requests let through whose first byte has not left yet (see [`HostState::sent`]).
    pub unsent: usize,
    /// No request starts before this either: the end of a 429/503 window.
    pub backoff_until: Option<Instant>,
    /// 429/503 answers in a row (the back-off's exponent).
    pub streak: u32,
    /// The status that opened the current window (429 or 503), for the task's report.
    pub backoff_status: u16,
    /// The host's delay: [`host_delay`] of the policy and its `Crawl-delay`.
    pub delay: Duration,
}

/// What the gate does with a request to a host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it (and count it in flight).
    Go,
    /// Wait until then (the delay or a back-off window).
    Until(Instant),
    /// Wait for a request in flight to end.
    Slot,
}

impl HostState {
    fn new(now: Instant, delay: Duration) -> Self {
        Self {
            next: now,
            in_flight: 0,
            unsent: 0,
            backoff_until: None,
            streak: 0,
            backoff_status: 0,
            delay,
        }
    }

    /// Whether a request may start at `now` with at most `max_in_flight` in flight. With a
    /// delay, none starts while an earlier one has not left yet: its delay counts from when it
    /// leaves.
    pub fn decide(&self, now: Instant, max_in_flight: usize) -> Decision {
        let ready = self.backoff_until.map_or(self.next, |b| b.max(self.next));
        if now < ready {
            Decision::Until(ready)
        } else if self.in_flight >= max_in_flight.max(1)
            || (self.unsent > 0 && !self.delay.is_zero())
        {
            Decision::Slot
        } else {
            Decision::Go
        }
    }

    /// Counts a request that starts at `now`.
    pub fn start(&mut self, now: Instant) {
        self.in_flight += 1;
        self.unsent += 1;
        self.next = now + self.delay;
    }

    /// A request's first byte left at `now` (written to its connection): the delay counts from
    /// then, so a request written late (a busy process, a slow connect) does not bring the next
    /// one closer to it at the host. `left`: false for a request that ends without a byte sent.
    pub fn sent(&mut self, now: Instant, left: bool) {
        self.unsent = self.unsent.saturating_sub(1);
        if left {
            self.next = self.next.max(now + self.delay);
        }
    }

    /// A request ended at `now`: the delay also counts from its end (as `StormCrawler`'s and
    /// Nutch's queues count it), so the next request reaches the host at least the delay after
    /// this one did, however long this one spent on its way there.
    pub fn end(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.next = self.next.max(now + self.delay);
    }

    /// After a response with `status` at `now`: a 429 or 503 opens a window (`retry_after`, or
    /// the back-off's next delay with `unit` of jitter) and returns its end; any other status
    /// ends the streak.
    pub fn answered(
        &mut self,
        status: u16,
        retry_after: Option<Duration>,
        policy: &HostPolicy,
        now: Instant,
        unit: f64,
    ) -> Option<Instant> {
        if status == 429 || status == 503 {
            let wait = retry_after.map_or_else(
                || policy.backoff.delay(self.streak, unit),
                |d| d.min(policy.max_retry_after),
            );
            self.streak = self.streak.saturating_add(1);
            self.hold(now + wait, status);
            self.backoff_until
        } else {
            self.streak = 0;
            None
        }
    }

    /// Keeps every request out until `until` (a window opened here or carried over from the
    /// task's previous owner); a shorter window never shortens an open one.
    pub fn hold(&mut self, until: Instant, status: u16) {
        if self.backoff_until.is_none_or(|b| b < until) {
            self.backoff_until = Some(until);
            self.backoff_status = status;
        }
    }

    /// Nothing to remember: nothing in flight, no slot or window ahead.
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.unsent == 0
            && self.next <= now
            && self.backoff_until.is_none_or(|b| b <= now)
    }
}

/// The wall-clock time `wait` from now.
fn timestamp_after(wait: Duration) -> jiff::Timestamp {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
        .unwrap_or_else(|_| jiff::Timestamp::now())
}

/// A host in a back-off window, as the task's progress shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostBackoff {
    pub host: String,
    pub until: jiff::Timestamp,
    /// The status that opened the window (429 or 503).
    pub status: u16,
}

/// Told about every response, for metrics (the worker's Prometheus families).
pub trait FetchObserver: Send + Sync {
    /// A request ended: its status (`None`: no response) and how long it took.
    fn fetched(&self, status: Option<u16>, elapsed: Duration);
}

/// The handle every crawl of a worker shares: clone it into each [`crate::CrawlConfig`].
#[derive(Clone)]
pub struct Politeness(Arc<Inner>);

struct Inner {
    policy: HostPolicy,
    hosts: Mutex<Hosts>,
    /// The cached files, and the size past which the expired ones are dropped (then doubled).
    robots: Mutex<(HashMap<String, Arc<RobotsEntry>>, usize)>,
    observer: Option<Arc<dyn FetchObserver>>,
}

struct Hosts {
    map: HashMap<String, (HostState, Arc<Notify>)>,
    /// Idle entries are dropped when the map grows past this (then it doubles).
    prune_at: usize,
}

/// A cached `robots.txt`: filled once by whichever task asks first.
pub(crate) struct RobotsEntry {
    pub(crate) cell: tokio::sync::OnceCell<(Instant, Robots)>,
}

impl std::fmt::Debug for Politeness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Politeness")
            .field("policy", &self.0.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Politeness {
    fn default() -> Self {
        Self::new(HostPolicy::default())
    }
}

impl Politeness {
    pub fn new(policy: HostPolicy) -> Self {
        Self::with_observer(policy, None)
    }

    pub fn with_observer(policy: HostPolicy, observer: Option<Arc<dyn FetchObserver>>) -> Self {
        Self(Arc::new(Inner {
            policy,
            hosts: Mutex::new(Hosts {
                map: HashMap::new(),
                prune_at: 1024,
            }),
            robots: Mutex::new((HashMap::new(), ROBOTS_PRUNE_AT)),
            observer,
        }))
    }

    pub fn policy(&self) -> &HostPolicy {
        &self.0.policy
    }

    /// Hosts inside a back-off window now.
    pub fn hosts_in_backoff(&self) -> usize {
        let now = Instant::now();
        self.0
            .hosts
            .lock()
            .map
            .values()
            .filter(|(s, _)| s.backoff_until.is_some_and(|b| b > now))
            .count()
    }

    pub(crate) fn observe(&self, status: Option<u16>, elapsed: Duration) {
        if let Some(observer) = &self.0.observer {
            observer.fetched(status, elapsed);
        }
    }

    /// Waits until a request to `host` may start under the policy, and counts it in flight
    /// until the permit is dropped.
    pub async fn acquire(&self, host: &str) -> Permit {
        loop {
            let notify;
            let until;
            {
                let now = Instant::now();
                let mut hosts = self.0.hosts.lock();
                if hosts.map.len() >= hosts.prune_at {
                    hosts.map.retain(|_, (s, _)| !s.idle(now));
                    hosts.prune_at = (hosts.map.len() * 2).max(1024);
                }
                let (state, n) = hosts.map.entry(host.to_owned()).or_insert_with(|| {
                    (
                        HostState::new(now, self.0.policy.min_delay),
                        Arc::new(Notify::new()),
                    )
                });
                match state.decide(now, self.0.policy.max_in_flight) {
                    Decision::Go => {
                        state.start(now);
                        return Permit {
                            politeness: self.clone(),
                            host: host.to_owned(),
                            left: Arc::new(AtomicBool::new(false)),
                        };
                    }
                    Decision::Until(at) => {
                        until = Some(at);
                        notify = None;
                    }
                    Decision::Slot => {
                        until = None;
                        notify = Some(n.clone());
                    }
                }
            }
            match (until, notify) {
                (Some(at), _) => tokio::time::sleep_until(at).await,
                (None, Some(notify)) => {
                    // Woken by a permit's drop; the timeout only guards against a missed wake.
                    let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
                }
                (None, None) => {}
            }
        }
    }

    /// Records a response from `host`; returns the back-off window it opened, if any.
    pub(crate) fn answered(
        &self,
        host: &str,
        status: u16,
        retry_after: Option<&str>,
    ) -> Option<HostBackoff> {
        let retry_after = retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()));
        let now = Instant::now();
        let until = {
            let mut hosts = self.0.hosts.lock();
            let (state, _) = hosts.map.get_mut(host)?;
            state.answered(status, retry_after, &self.0.policy, now, jitter_unit())?
        };
        let until = timestamp_after(until.saturating_duration_since(now));
        warn!(host, status, %until, "host answered {status}: no request to it before {until}");
        Some(HostBackoff {
            host: host.to_owned(),
            until,
            status,
        })
    }

    /// The window `host` is in now, if any (whoever opened it: a task of this worker, or a
    /// window carried over by [`Politeness::hold`]).
    pub fn backoff(&self, host: &str) -> Option<HostBackoff> {
        let now = Instant::now();
        let (until, status) = {
            let hosts = self.0.hosts.lock();
            let (state, _) = hosts.map.get(host)?;
            (
                state.backoff_until.filter(|b| *b > now)?,
                state.backoff_status,
            )
        };
        Some(HostBackoff {
            host: host.to_owned(),
            until: timestamp_after(until.saturating_duration_since(now)),
            status,
        })
    }

    /// Keeps every request to `window.host` out until `window.until`: a window the task's
    /// previous owner reported (a moved task carries it, so the worker that takes it over sends
    /// nothing inside it either). One already past is ignored.
    pub fn hold(&self, window: &HostBackoff) {
        let Ok(left) = Duration::try_from(window.until.duration_since(jiff::Timestamp::now()))
        else {
            return;
        };
        if left.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut hosts = self.0.hosts.lock();
        let (state, _) = hosts.map.entry(window.host.clone()).or_insert_with(|| {
            (
                HostState::new(now, self.0.policy.min_delay),
                Arc::new(Notify::new()),
            )
        });
        state.hold(now + left.min(self.0.policy.max_retry_after), window.status);
    }

    /// Sets the host's delay from its `robots.txt` `Crawl-delay` (the larger of the two wins).
    pub(crate) fn crawl_delay(&self, host: &str, crawl_delay: Option<f32>) {
        let policy = &self.0.policy;
        let delay = host_delay(policy.min_delay, crawl_delay, policy.max_crawl_delay);
        let now = Instant::now();
        let mut hosts = self.0.hosts.lock();
        let (state, _) = hosts.map.entry(host.to_owned()).or_insert_with(|| {
            (
                HostState::new(now, policy.min_delay),
                Arc::new(Notify::new()),
            )
        });
        if delay > state.delay {
            // The next slot moves out too: the request after robots.txt already waits it.
            state.next += delay.saturating_sub(state.delay);
            state.delay = delay;
        }
    }

    /// The cached `robots.txt` entry of `key` (origin and agent), a fresh one when none is
    /// cached or it expired.
    pub(crate) fn robots_entry(&self, key: &str) -> Arc<RobotsEntry> {
        let now = Instant::now();
        let ttl = self.0.policy.robots_ttl;
        let mut guard = self.0.robots.lock();
        let (robots, prune_at) = &mut *guard;
        let expired = robots.get(key).is_some_and(|entry| {
            entry.cell.get().is_some_and(|(at, r)| {
                let ttl = if matches!(r, Robots::Unavailable { .. }) {
                    ttl.min(ROBOTS_ERROR_TTL)
                } else {
                    ttl
                };
                now.saturating_duration_since(*at) >= ttl
            })
        });
        if expired {
            robots.remove(key);
        }
        if robots.len() >= *prune_at {
            // A worker that crawls many sites keeps only what it may still use.
            robots.retain(|_, entry| {
                entry
                    .cell
                    .get()
                    .is_none_or(|(at, _)| now.saturating_duration_since(*at) < ttl)
            });
            *prune_at = (robots.len() * 2).max(ROBOTS_PRUNE_AT);
        }
        robots
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(RobotsEntry {
                    cell: tokio::sync::OnceCell::new(),
                })
            })
            .clone()
    }

    /// Forgets `entry` (one that depends on the task that fetched it: an address refusal).
    pub(crate) fn forget_robots(&self, key: &str, entry: &Arc<RobotsEntry>) {
        let robots = &mut self.0.robots.lock().0;
        if robots.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            robots.remove(key);
        }
    }

    /// The request of a permit left (`left`), or ended without leaving.
    fn sent(&self, host: &str, left: bool) {
        let mut hosts = self.0.hosts.lock();
        if let Some((state, notify)) = hosts.map.get_mut(host) {
            state.sent(Instant::now(), left);
            notify.notify_waiters();
        }
    }

    fn release(&self, host: &str) {
        let mut hosts = self.0.hosts.lock();
        if let Some((state, notify)) = hosts.map.get_mut(host) {
            state.end(Instant::now());
            notify.notify_waiters();
        }
    }
}

/// A request to a host counted in flight; dropping it ends the count.
pub struct Permit {
    politeness: Politeness,
    host: String,
    /// Set once the request's first byte left, or once it can no longer leave.
    left: Arc<AtomicBool>,
}

impl Permit {
    /// Whether the request's first byte left (or it can no longer leave).
    #[cfg(test)]
    pub(crate) fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// What the connection stamps when the request's first byte leaves.
    pub fn departure(&self) -> Departure {
        Departure {
            politeness: self.politeness.clone(),
            host: self.host.clone(),
            left: self.left.clone(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.politeness.sent(&self.host, false);
        }
        self.politeness.release(&self.host);
    }
}

/// A request's departure, stamped by the connection that writes it ([`crate::http`]): the first
/// call counts; one after the permit was dropped counts nothing.
pub struct Departure {
    politeness: Politeness,
    host: String,
    left: Arc<AtomicBool>,
}

impl Departure {
    /// The request's first byte is being written now.
    pub fn stamp(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.politeness.sent(&self.host, true);
        }
    }
}

impl std::fmt::Debug for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Departure")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A number in `[-1, 1]` for jitter: no need for a good generator, only for spread.
fn jitter_unit() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    #[allow(clippy::cast_precision_loss)]
    let fraction = mixed as f64 / (1_u64 << 53) as f64;
    fraction * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_within_its_jitter() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(60));
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(120));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(480));
        assert_eq!(b.delay(40, 0.0), Duration::from_secs(86_400));
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(66));
        assert_eq!(b.delay(0, -1.0), Duration::from_secs(54));
        assert_eq!(
            b.delay(40, 1.0),
            Duration::from_secs(86_400),
            "never past the cap"
        );
    }

    proptest! {
        #[test]
        fn backoff_stays_in_its_band(streak in 0_u32..200, unit in -1.0_f64..=1.0, start_ms in 1_u64..100_000, factor in 1.0_f64..5.0, jitter in 0.0_f64..0.5) {
            let b = Backoff { start: Duration::from_millis(start_ms), factor, cap: Duration::from_secs(3600), jitter };
            let d = b.delay(streak, unit).as_secs_f64();
            let base = (b.start.as_secs_f64() * factor.powi(i32::try_from(streak.min(64)).unwrap())).min(3600.0);
            prop_assert!(d <= 3600.0 + 1e-6);
            prop_assert!(d >= base * (1.0 - jitter) - 1e-6, "{d} < {base}");
            prop_assert!(d <= base * (1.0 + jitter) + 1e-6);
            prop_assert!(b.delay(streak + 1, unit) >= b.delay(streak, unit) || b.delay(streak, unit).as_secs_f64() >= 3600.0 * (1.0 - jitter));
        }

        #[test]
        fn retry_after_never_panics(value in ".{0,40}") {
            let _ = parse_retry_after(&value, SystemTime::now());
        }
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date past waits nothing"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn crawl_delay_is_honoured_up_to_the_maximum() {
        let max = Duration::from_secs(30);
        let min = Duration::from_millis(500);
        assert_eq!(host_delay(min, None, max), min);
        assert_eq!(host_delay(min, Some(3.0), max), Duration::from_secs(3));
        assert_eq!(
            host_delay(min, Some(0.1), max),
            min,
            "the installation's is a floor"
        );
        assert_eq!(host_delay(min, Some(3600.0), max), max);
        assert_eq!(host_delay(min, Some(f32::NAN), max), min);
        assert_eq!(host_delay(min, Some(-1.0), max), min);
    }

    #[test]
    fn the_gate_spaces_starts_bounds_in_flight_and_keeps_windows() {
        let t0 = Instant::now();
        let policy = HostPolicy {
            min_delay: Duration::from_millis(100),
            max_in_flight: 2,
            ..HostPolicy::default()
        };
        let mut s = HostState::new(t0, policy.min_delay);
        assert_eq!(s.decide(t0, 2), Decision::Go);
        s.start(t0);
        s.sent(t0, true);
        assert_eq!(
            s.decide(t0, 2),
            Decision::Until(t0 + Duration::from_millis(100))
        );
        let t1 = t0 + Duration::from_millis(100);
        s.start(t1);
        s.sent(t1, true);
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(s.decide(t2, 2), Decision::Slot, "two in flight");
        let t3 = t2 + Duration::from_millis(30);
        s.end(t3);
        assert_eq!(
            s.decide(t3, 2),
            Decision::Until(t3 + Duration::from_millis(100)),
            "the delay counts from the end too"
        );
        let t2 = t3 + Duration::from_millis(100);
        assert_eq!(s.decide(t2, 2), Decision::Go);

        // A 429 with Retry-After: nothing before its end, whatever the delay says.
        let until = s.answered(429, Some(Duration::from_secs(10)), &policy, t2, 0.0);
        assert_eq!(until, Some(t2 + Duration::from_secs(10)));
        assert_eq!(
            s.decide(t2 + Duration::from_secs(5), 2),
            Decision::Until(t2 + Duration::from_secs(10))
        );
        assert_eq!(s.decide(t2 + Duration::from_secs(10), 2), Decision::Go);
        // Without it: the back-off schedule, growing with the streak; a 200 ends the streak.
        let until = s.answered(503, None, &policy, t2, 0.0).unwrap();
        assert_eq!(until - t2, Duration::from_secs(120), "the second in a row");
        assert_eq!(s.answered(200, None, &policy, t2, 0.0), None);
        assert_eq!(s.streak, 0);
        // A later, shorter window never shortens an open one.
        let mut s = HostState::new(t0, Duration::ZERO);
        s.answered(429, Some(Duration::from_secs(50)), &policy, t0, 0.0);
        let until = s.answered(429, Some(Duration::from_secs(1)), &policy, t0, 0.0);
        assert_eq!(until, Some(t0 + Duration::from_secs(50)));
        // A Retry-After past the installation's maximum is cut to it.
        let mut s = HostState::new(t0, Duration::ZERO);
        let short = HostPolicy {
            max_retry_after: Duration::from_secs(5),
            ..policy
        };
        assert_eq!(
            s.answered(429, Some(Duration::from_secs(999_999)), &short, t0, 0.0),
            Some(t0 + Duration::from_secs(5))
        );
    }

    /// The delay counts from when a request's first byte left: one written late (a busy process,
    /// a slow connect) holds the next one until it left and the delay after that; one that ends
    /// without leaving holds nothing. Without a delay nothing waits for a departure.
    #[test]
    fn the_delay_counts_from_the_departure() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = HostState::new(t0, ms(500));
        s.start(t0);
        assert_eq!(s.decide(t0 + ms(600), 2), Decision::Slot, "not left yet");
        s.sent(t0 + ms(300), true);
        assert_eq!(
            s.decide(t0 + ms(600), 2),
            Decision::Until(t0 + ms(800)),
            "500 ms after it left, not after it started"
        );
        assert_eq!(s.decide(t0 + ms(800), 2), Decision::Go);
        s.start(t0 + ms(800));
        s.sent(t0 + ms(900), false);
        assert_eq!(
            s.decide(t0 + ms(1300), 3),
            Decision::Go,
            "a request that never left counts from its start"
        );
        let mut s = HostState::new(t0, Duration::ZERO);
        s.start(t0);
        assert_eq!(s.decide(t0, 2), Decision::Go, "no delay: no wait for it");
        s.start(t0);
        assert_eq!(s.decide(t0, 2), Decision::Slot, "two in flight");
    }

    /// A window carried over from a task's previous owner closes the host on this worker for
    /// every task, is reported like one opened here, never shortens an open one, and one already
    /// past is ignored.
    #[tokio::test]
    async fn a_carried_window_is_kept_and_reported_for_every_task() {
        let gate = Politeness::default();
        assert_eq!(gate.backoff("a.example"), None);
        let carried = HostBackoff {
            host: "a.example".into(),
            until: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30),
            status: 429,
        };
        gate.hold(&carried);
        let now = Instant::now();
        {
            let hosts = gate.0.hosts.lock();
            let (state, _) = &hosts.map["a.example"];
            let Decision::Until(at) = state.decide(now, 2) else {
                panic!("a request may start inside the carried window");
            };
            assert!(at >= now + Duration::from_secs(29), "{at:?}");
            assert!(at <= now + Duration::from_secs(30));
        }
        let shown = gate.backoff("a.example").expect("reported");
        assert_eq!((shown.host.as_str(), shown.status), ("a.example", 429));
        assert!(
            shown.until.duration_since(carried.until).abs() < jiff::SignedDuration::from_secs(1)
        );
        assert_eq!(gate.hosts_in_backoff(), 1);

        // A shorter one carried later keeps the longer window.
        gate.hold(&HostBackoff {
            until: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1),
            status: 503,
            ..carried.clone()
        });
        assert_eq!(gate.backoff("a.example").map(|b| b.status), Some(429));
        // One already past: nothing to keep.
        gate.hold(&HostBackoff {
            host: "b.example".into(),
            until: jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1),
            status: 429,
        });
        assert_eq!(gate.backoff("b.example"), None);
        assert_eq!(gate.hosts_in_backoff(), 1);
    }

    #[test]
    fn jitter_units_are_in_range() {
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((-1.0..=1.0).contains(&u), "{u}");
        }
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, built so that a leader stops acting
//! before anyone else can start.
//!
//! This module owns the controller's Lease: acquiring it, renewing it, stepping down by its own
//! clock, and releasing it on shutdown. Leadership is published as data: a [`Leadership`] value in
//! a `tokio::sync::watch` channel. The controller checks [`Leadership::is_leading_now`] before each
//! write and stops its loop when [`until_lost`] resolves.
//!
//! ```text
//!   LeaderElector::run ── GET / create / replace, each under a timeout,
//!          │              every write guarded by metadata.resourceVersion ──▶ Lease
//!          │
//!          └── watch::Sender<Leadership> ──▶ controller: rx.borrow().is_leading_now()
//! ```
//!
//! The semantics are client-go's (same defaults, same Lease fields, release on shutdown), with
//! the safety that kube-lease-manager 0.13.1 lacks (it kept claiming leadership through a paused
//! API server, and two replicas led at once when only the holder was cut off): every write is
//! guarded by a resourceVersion, every call has a timeout (kube's client has no read timeout by
//! default), and a leader gives up by its own monotonic clock.
//!
//! Why at most one replica acts at a time, every instant on that replica's own monotonic clock:
//!
//! - A leader acts only until `s + renew_deadline`, where `s` is when it *sent* its last renewal
//!   that succeeded.
//! - A candidate takes the Lease over only when the record it sees (holder, renewTime,
//!   resourceVersion) has stayed the same for `lease_duration`, counted from when the candidate
//!   first *received* that record: after the write, so after `s`.
//! - `renew_deadline < lease_duration`, so the old leader has stopped before the takeover is sent,
//!   and the takeover names the resourceVersion the candidate saw, so it fails with 409 if the
//!   leader renewed in the meantime.
//!
//! The remote `renewTime` is never compared with our clock: machines' clocks disagree. A write
//! whose answer never came (timeout) may still land later; we claim nothing from it, and it only
//! makes the others wait longer. What is left to the caller is a write that was started while
//! leading and lands after the deadline: fence those writes with a resourceVersion as well.

use std::{
    fmt,
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

/// client-go's default: how long candidates wait for a silent holder before taking over.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default: how long a leader keeps acting without a successful renewal.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default: how often to renew, or to retry acquiring.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Where the Lease lives, who we are, and the three durations of the election.
///
/// Invariant (checked by [`LeaseSettings::validate`]):
/// `lease_duration > renew_deadline > retry_period > 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's name in `holderIdentity`; must be unique per running process.
    pub identity: String,
    /// How long candidates wait, after they last saw the record change, before taking over.
    pub lease_duration: Duration,
    /// How long a leader keeps acting after sending its last successful renewal.
    pub renew_deadline: Duration,
    /// Interval between renewals (leading) or acquisition attempts (standby); also the timeout of
    /// each API call.
    pub retry_period: Duration,
}

/// A setting the election cannot work with, phrased for the person who passed the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "leader election: the lease namespace {0:?} is not a valid namespace name \
         (lowercase letters, digits and '-', starting and ending with a letter or digit, \
         at most 63 characters)"
    )]
    Namespace(String),
    #[error(
        "leader election: the lease name {0:?} is not a valid object name \
         (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, \
         at most 253 characters)"
    )]
    Name(String),
    #[error(
        "leader election: the identity must not be empty; it tells the replicas apart \
         (the Pod name is a good choice)"
    )]
    EmptyIdentity,
    #[error("leader election: the retry period must be greater than zero")]
    ZeroRetryPeriod,
    #[error(
        "leader election: the renew deadline ({renew_deadline:?}) must be longer than the retry \
         period ({retry_period:?}), so that a leader can retry a failed renewal before it gives up"
    )]
    RenewDeadlineTooShort {
        renew_deadline: Duration,
        retry_period: Duration,
    },
    #[error(
        "leader election: the lease duration ({lease_duration:?}) must be longer than the renew \
         deadline ({renew_deadline:?}), so that a leader that cannot renew stops acting before \
         another replica may take over"
    )]
    LeaseDurationTooShort {
        lease_duration: Duration,
        renew_deadline: Duration,
    },
    #[error(
        "leader election: the lease duration ({0:?}) is too long; the Lease stores it in \
         seconds as a 32-bit number"
    )]
    LeaseDurationTooLong(Duration),
}

/// A failure the election cannot recover from by retrying. Transient failures (timeouts,
/// connection errors, 5xx, 429, conflicts) are logged and retried every retry period instead.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "not allowed to {verb} Lease {namespace}/{name}: {message}. RBAC for leases in the \
         coordination.k8s.io API group is missing: grant this operator's ServiceAccount get, \
         create and update on leases in namespace {namespace} (a Role and a RoleBinding)"
    )]
    Forbidden {
        verb: Verb,
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "the API server refused to {verb} Lease {namespace}/{name} ({code} {reason}): {message}"
    )]
    Refused {
        verb: Verb,
        namespace: String,
        name: String,
        code: u16,
        reason: String,
        message: String,
    },
}

impl LeaderError {
    /// A short, bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Forbidden { .. } => "LeaseForbidden",
            Self::Refused { .. } => "LeaseRefused",
        }
    }
}

/// The API call that failed, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Create,
    Update,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Get => "get",
            Self::Create => "create",
            Self::Update => "update",
        })
    }
}

/// This replica's part in the election, as published to the rest of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading. `holder` is the other replica that holds the Lease, when one is known.
    Standby { holder: Option<String> },
    /// Leading, but only while `Instant::now() < valid_until`: a stale copy of this value stops
    /// granting leadership on its own.
    Leading {
        /// When the write that won the Lease was sent.
        since: Instant,
        /// Send time of the last successful renewal + renew deadline.
        valid_until: Instant,
        /// The Lease's `leaseTransitions` when we took it. It counts changes of holder, so a
        /// replica that steps down and takes its own Lease back gets the same number again;
        /// `since` tells any two terms of this process apart.
        term: i32,
    },
}

impl Leadership {
    /// Whether this replica may act as leader right now. Check it before every leader-only write.
    pub fn is_leading_now(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    /// Whether this replica may act as leader at `now`.
    pub fn is_leading_at(&self, now: Instant) -> bool {
        matches!(self, Self::Leading { valid_until, .. } if now < *valid_until)
    }

    /// The end of the current leadership, unless it is renewed first.
    pub fn valid_until(&self) -> Option<Instant> {
        match self {
            Self::Leading { valid_until, .. } => Some(*valid_until),
            Self::Standby { .. } => None,
        }
    }

    /// The term of the current leadership.
    pub fn term(&self) -> Option<i32> {
        match self {
            Self::Leading { term, .. } => Some(*term),
            Self::Standby { .. } => None,
        }
    }
}

/// The elector stopped (its [`LeaderElector::run`] returned or was dropped) before we led.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the leader elector stopped")]
pub struct ElectorStopped;

/// Waits until this replica leads, and returns that leadership (a [`Leadership::Leading`]).
pub async fn until_leading(
    rx: &mut watch::Receiver<Leadership>,
) -> Result<Leadership, ElectorStopped> {
    rx.wait_for(Leadership::is_leading_now)
        .await
        .map(|leadership| leadership.clone())
        .map_err(|_| ElectorStopped)
}

/// Resolves as soon as this replica may no longer act as leader: the elector stepped down, the
/// deadline passed without a renewal (even if the elector is stuck), or the elector stopped.
/// Returns at once when not leading.
pub async fn until_lost(rx: &mut watch::Receiver<Leadership>) {
    loop {
        let valid_until = match &*rx.borrow_and_update() {
            Leadership::Leading { valid_until, .. } if Instant::now() < *valid_until => {
                *valid_until
            }
            _ => return,
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(valid_until.into()) => {}
        }
    }
}

// === impl LeaseSettings ===

impl LeaseSettings {
    /// Settings with client-go's default durations.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if !is_dns_label(&self.namespace) {
            return Err(SettingsError::Namespace(self.namespace.clone()));
        }
        if !is_dns_subdomain(&self.name) {
            return Err(SettingsError::Name(self.name.clone()));
        }
        if self.identity.is_empty() {
            return Err(SettingsError::EmptyIdentity);
        }
        if self.retry_period.is_zero() {
            return Err(SettingsError::ZeroRetryPeriod);
        }
        if self.renew_deadline <= self.retry_period {
            return Err(SettingsError::RenewDeadlineTooShort {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(SettingsError::LeaseDurationTooShort {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if i32::try_from(ceil_seconds(self.lease_duration)).is_err() {
            return Err(SettingsError::LeaseDurationTooLong(self.lease_duration));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written to the Lease: rounded up, so that what others read is
    /// never shorter than what we promise.
    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(ceil_seconds(self.lease_duration)).unwrap_or(i32::MAX)
    }
}

fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

fn is_dns_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || c == '-')
}

// === The decision: pure, over what we saw and when ===

/// What the election needs to know about a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`; `None` when absent or empty (the Lease is free).
    pub holder: Option<String>,
    /// `renewTime`, compared for equality only, never with our clock.
    pub renew_time: Option<Timestamp>,
    pub resource_version: Option<String>,
    /// `leaseDurationSeconds`: how long the holder promised to be silent before it is gone.
    pub lease_duration_seconds: Option<i32>,
    /// `leaseTransitions`, 0 when absent.
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }

    /// Nothing has happened to the Lease between `self` and `other`.
    fn is_unchanged_from(&self, other: &Self) -> bool {
        self.holder == other.holder
            && self.renew_time == other.renew_time
            && self.resource_version == other.resource_version
    }
}

/// A record, and when we first received it on our monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    /// When the response carrying this record *arrived* (never when the request was sent: the
    /// record may have been written after that).
    pub first_seen: Instant,
}

impl Observed {
    /// Folds a freshly received record into what we knew: the clock restarts only when the
    /// record changed.
    pub fn update(previous: Option<Self>, record: LeaseRecord, received: Instant) -> Self {
        match previous {
            Some(previous) if previous.record.is_unchanged_from(&record) => Self {
                record,
                first_seen: previous.first_seen,
            },
            _ => Self {
                record,
                first_seen: received,
            },
        }
    }
}

/// What to do next about the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, naming us.
    Create,
    /// The Lease names us: renew it (also after a restart under the same identity).
    Renew,
    /// The Lease is free or its holder went silent: write ourselves in.
    Acquire {
        previous_holder: Option<String>,
        /// `leaseTransitions` to write.
        transitions: i32,
    },
    /// Another replica holds the Lease; it is gone if the record is still the same at `until`.
    Wait { holder: String, until: Instant },
}

/// Decides from the last record we received, when we first received it, and `now`.
pub fn decide(observed: Option<&Observed>, now: Instant, settings: &LeaseSettings) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    let record = &observed.record;
    let transitions = record.transitions.saturating_add(1);
    let Some(holder) = record.holder.as_deref() else {
        return Decision::Acquire {
            previous_holder: None,
            transitions,
        };
    };
    if holder == settings.identity {
        return Decision::Renew;
    }
    // Wait for what the holder promised, and at least for what we are configured to wait.
    let promised = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let wait = settings.lease_duration.max(promised);
    match observed.first_seen.checked_add(wait) {
        Some(until) if now >= until => Decision::Acquire {
            previous_holder: Some(holder.to_owned()),
            transitions,
        },
        Some(until) => Decision::Wait {
            holder: holder.to_owned(),
            until,
        },
        // The holder promised longer than our clock can count: it is never expired.
        None => Decision::Wait {
            holder: holder.to_owned(),
            until: now + settings.lease_duration,
        },
    }
}

/// Wakes a standby as soon as the Lease is released (holder cleared, as a leader does on
/// SIGTERM) or deleted, so a graceful handover takes one round trip instead of up to a retry
/// period. Only a hint: the election still reads the Lease and writes under its resourceVersion.
/// Without RBAC to watch the Lease the standby keeps its retry period (logged once).
async fn watch_for_release(
    api: Api<Lease>,
    name: String,
    lease_ref: String,
    released: Arc<Notify>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = pin!(watcher(api, config).default_backoff());
    let mut warned = false;
    loop {
        let free = match events.try_next().await {
            Ok(Some(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                LeaseRecord::from_lease(&lease).holder.is_none()
            }
            Ok(Some(watcher::Event::Delete(_))) => true,
            Ok(Some(watcher::Event::Init | watcher::Event::InitDone)) => false,
            Ok(None) => return,
            Err(error) => {
                if !warned {
                    warned = true;
                    warn!(lease = %lease_ref, %error, "cannot watch the Lease (RBAC: list and watch on it); a standby takes over a released Lease only at its next retry period");
                }
                false
            }
        };
        if free {
            released.notify_one();
        }
    }
}

// === impl LeaderElector ===

/// Campaigns for the Lease until shutdown, and publishes the outcome as [`Leadership`].
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// `namespace/name`, for logs.
    lease_ref: String,
    tx: watch::Sender<Leadership>,
}

/// What the campaign knows between attempts.
#[derive(Default)]
struct Campaign {
    /// The newest Lease we know of (from a read or from our own write): the base of our writes,
    /// whose resourceVersion guards them.
    lease: Option<Lease>,
    /// The last record received, and when it first appeared.
    observed: Option<Observed>,
    /// While we lead.
    term: Option<Term>,
    /// While another replica holds the Lease: when it is gone unless the record changes.
    holder_expires: Option<Instant>,
}

struct Term {
    since: Instant,
    valid_until: Instant,
    number: i32,
}

/// Why an API call failed, as the campaign sees it.
enum Failure {
    /// 409: another writer got there first.
    Conflict,
    /// Worth retrying next period.
    Transient(String),
    Fatal(LeaderError),
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        let (tx, _) = watch::channel(Leadership::Standby { holder: None });
        Ok(Self {
            api: Api::namespaced(client, &settings.namespace),
            lease_ref: format!("{}/{}", settings.namespace, settings.name),
            settings,
            tx,
        })
    }

    /// Leadership as it changes; the current value is [`Leadership::Standby`] until we lead.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.tx.subscribe()
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Campaigns until `shutdown` resolves, then stops leading and releases the Lease if it
    /// names us, so that a standby takes over at once.
    ///
    /// Returns an error only for what retrying cannot fix (missing RBAC, a missing namespace);
    /// leadership is given up first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), LeaderError> {
        let mut shutdown = pin!(shutdown);
        let mut campaign = Campaign::default();
        info!(lease = %self.lease_ref, identity = %self.settings.identity, "leader election started");
        let released = Arc::new(Notify::new());
        let watching = tokio::spawn(watch_for_release(
            self.api.clone(),
            self.settings.name.clone(),
            self.lease_ref.clone(),
            Arc::clone(&released),
        ));
        let outcome = loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                attempt = self.attempt(&mut campaign) => attempt,
            };
            if let Err(error) = attempt {
                break Err(error);
            }
            let wake = self.next_attempt(&campaign, started);
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                () = tokio::time::sleep_until(wake.into()) => {}
                // A standby does not wait for its next period when the holder lets go: the
                // next round reads the Lease and decides as always.
                () = released.notified(), if campaign.term.is_none() => {
                    debug!(lease = %self.lease_ref, "the Lease was released; trying at once");
                }
            }
            self.check_deadline(&mut campaign);
        };
        watching.abort();
        // Stop acting before letting go, so no one else leads while we still do.
        match &outcome {
            Ok(()) => self.step_down(&mut campaign, None, "shutting down"),
            Err(error) => self.step_down(&mut campaign, None, &error.to_string()),
        }
        if outcome.is_ok() {
            self.release(&campaign).await;
        }
        outcome
    }

    /// One round: renew if leading; otherwise read the Lease, decide, and write if we should.
    async fn attempt(&self, c: &mut Campaign) -> Result<(), LeaderError> {
        self.check_deadline(c);
        if c.term.is_some() && self.renew_directly(c).await? {
            return Ok(());
        }
        match self.observe(c).await? {
            Some(decision) => self.act(c, decision).await,
            None => Ok(()),
        }
    }

    /// Renews from the Lease our last write returned, without reading it first. Returns whether
    /// the round is over (renewed, or failed in a way the next round retries); `false` after a
    /// conflict, which needs a fresh read.
    async fn renew_directly(&self, c: &mut Campaign) -> Result<bool, LeaderError> {
        let Some(lease) = &c.lease else {
            return Ok(false);
        };
        let body = renewed(&self.settings, lease);
        let sent = Instant::now();
        let budget = self.budget(c, sent);
        match self.call(Verb::Update, budget, self.replace(&body)).await {
            Ok(lease) => {
                self.renewal_succeeded(c, lease, sent);
                Ok(true)
            }
            Err(Failure::Fatal(error)) => Err(error),
            Err(Failure::Conflict) => {
                debug!(lease = %self.lease_ref, "renewal conflicted; reading the Lease");
                Ok(false)
            }
            Err(Failure::Transient(why)) => {
                warn!(lease = %self.lease_ref, %why, "renewal failed; retrying");
                Ok(true)
            }
        }
    }

    /// Reads the Lease and decides; steps down at once if the Lease no longer names us.
    /// `None` when the read failed and the next round should retry.
    async fn observe(&self, c: &mut Campaign) -> Result<Option<Decision>, LeaderError> {
        let budget = self.budget(c, Instant::now());
        let request = self.api.get_opt(&self.settings.name);
        let current = match self.call(Verb::Get, budget, request).await {
            Ok(current) => current,
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Conflict) => return Ok(None),
            Err(Failure::Transient(why)) => {
                warn!(lease = %self.lease_ref, %why, "reading the Lease failed; retrying");
                return Ok(None);
            }
        };
        let received = Instant::now();
        c.observed = current.as_ref().map(|lease| {
            Observed::update(c.observed.take(), LeaseRecord::from_lease(lease), received)
        });
        c.lease = current;
        c.holder_expires = None;

        let decision = decide(c.observed.as_ref(), received, &self.settings);
        if c.term.is_some() && decision != Decision::Renew {
            let (holder, reason) = match &decision {
                Decision::Wait { holder, .. } => {
                    (Some(holder.clone()), "another replica took the Lease")
                }
                Decision::Create => (None, "the Lease was deleted"),
                _ => (None, "the Lease was released by someone else"),
            };
            self.step_down(c, holder, reason);
        }
        Ok(Some(decision))
    }

    /// Carries out a decision: at most one write.
    async fn act(&self, c: &mut Campaign, decision: Decision) -> Result<(), LeaderError> {
        let sent = Instant::now();
        let budget = self.budget(c, sent);
        let (written, previous_holder) = match (decision, &c.lease) {
            (Decision::Wait { holder, until }, _) => {
                c.holder_expires = Some(until);
                self.publish_standby(Some(holder));
                return Ok(());
            }
            (Decision::Create, _) => {
                let body = created(&self.settings);
                let params = PostParams::default();
                let request = self.api.create(&params, &body);
                (self.call(Verb::Create, budget, request).await, None)
            }
            (
                Decision::Acquire {
                    previous_holder,
                    transitions,
                },
                Some(lease),
            ) => {
                let body = claimed(&self.settings, lease, transitions);
                let written = self.call(Verb::Update, budget, self.replace(&body)).await;
                (written, previous_holder)
            }
            (Decision::Renew, Some(lease)) => {
                let body = renewed(&self.settings, lease);
                let written = self.call(Verb::Update, budget, self.replace(&body)).await;
                (written, Some(self.settings.identity.clone()))
            }
            // Only Create comes without a Lease.
            (Decision::Acquire { .. } | Decision::Renew, None) => return Ok(()),
        };
        match written {
            Ok(lease) if c.term.is_some() => self.renewal_succeeded(c, lease, sent),
            Ok(lease) => self.won(c, lease, sent, previous_holder.as_deref()),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Conflict) => {
                debug!(lease = %self.lease_ref, "another replica wrote the Lease first");
            }
            Err(Failure::Transient(why)) => {
                warn!(lease = %self.lease_ref, %why, "writing the Lease failed; retrying");
            }
        }
        Ok(())
    }

    /// Our write made us the holder.
    fn won(&self, c: &mut Campaign, lease: Lease, sent: Instant, previous_holder: Option<&str>) {
        let record = LeaseRecord::from_lease(&lease);
        let term = Term {
            since: sent,
            valid_until: sent + self.settings.renew_deadline,
            number: record.transitions,
        };
        info!(
            lease = %self.lease_ref,
            identity = %self.settings.identity,
            term = term.number,
            previous_holder = previous_holder.unwrap_or(""),
            "acquired leadership"
        );
        self.publish_leading(&term);
        c.term = Some(term);
        c.observed = Some(Observed::update(None, record, Instant::now()));
        c.lease = Some(lease);
    }

    fn renewal_succeeded(&self, c: &mut Campaign, lease: Lease, sent: Instant) {
        if let Some(term) = &mut c.term {
            term.valid_until = sent + self.settings.renew_deadline;
            debug!(lease = %self.lease_ref, term = term.number, "renewed");
            self.publish_leading(term);
        }
        c.observed = Some(Observed::update(
            None,
            LeaseRecord::from_lease(&lease),
            Instant::now(),
        ));
        c.lease = Some(lease);
    }

    /// Steps down once the deadline passed without a successful renewal.
    fn check_deadline(&self, c: &mut Campaign) {
        if let Some(term) = &c.term
            && Instant::now() >= term.valid_until
        {
            self.step_down(c, None, "no successful renewal within the renew deadline");
        }
    }

    fn step_down(&self, c: &mut Campaign, holder: Option<String>, reason: &str) {
        if let Some(term) = c.term.take() {
            // Publish first: from here on, no one in this process acts as leader.
            self.publish_standby(holder);
            info!(
                lease = %self.lease_ref,
                identity = %self.settings.identity,
                term = term.number,
                led_for = ?term.since.elapsed(),
                reason,
                "lost leadership"
            );
        }
    }

    /// Gives the Lease up if it names us, so that a standby takes over at once (client-go's
    /// `ReleaseOnCancel`). Must follow `step_down`.
    async fn release(&self, c: &Campaign) {
        let Some(mut lease) = c.lease.clone().filter(|lease| self.names_us(lease)) else {
            return;
        };
        let budget = self.settings.retry_period;
        // A renewal cancelled by the shutdown may have landed: then retry once on a fresh read.
        for _ in 0..2 {
            let body = released(&lease);
            let why = match self.call(Verb::Update, budget, self.replace(&body)).await {
                Ok(_) => {
                    info!(lease = %self.lease_ref, identity = %self.settings.identity, "released leadership");
                    return;
                }
                Err(Failure::Conflict) => {
                    match self
                        .call(Verb::Get, budget, self.api.get_opt(&self.settings.name))
                        .await
                    {
                        Ok(Some(fresh)) if self.names_us(&fresh) => {
                            lease = fresh;
                            continue;
                        }
                        // Someone else holds it already, or it is gone.
                        Ok(_) => return,
                        Err(Failure::Fatal(error)) => error.to_string(),
                        Err(Failure::Conflict) => "conflict".to_owned(),
                        Err(Failure::Transient(why)) => why,
                    }
                }
                Err(Failure::Fatal(error)) => error.to_string(),
                Err(Failure::Transient(why)) => why,
            };
            warn!(
                lease = %self.lease_ref,
                %why,
                "could not release the Lease; another replica takes over after the lease duration"
            );
            return;
        }
    }

    fn next_attempt(&self, c: &Campaign, started: Instant) -> Instant {
        let mut wake = started + self.settings.retry_period;
        if let Some(term) = &c.term {
            wake = wake.min(term.valid_until);
        }
        if let Some(until) = c.holder_expires {
            wake = wake.min(until);
        }
        wake
    }

    /// The timeout of the next call: the retry period, and never past our deadline.
    fn budget(&self, c: &Campaign, now: Instant) -> Duration {
        match &c.term {
            Some(term) => self
                .settings
                .retry_period
                .min(term.valid_until.saturating_duration_since(now)),
            None => self.settings.retry_period,
        }
    }

    fn publish_leading(&self, term: &Term) {
        self.tx.send_replace(Leadership::Leading {
            since: term.since,
            valid_until: term.valid_until,
            term: term.number,
        });
    }

    fn publish_standby(&self, holder: Option<String>) {
        let standby = Leadership::Standby { holder };
        self.tx.send_if_modified(|current| {
            let changed = *current != standby;
            if changed {
                *current = standby;
            }
            changed
        });
    }

    fn names_us(&self, lease: &Lease) -> bool {
        LeaseRecord::from_lease(lease).holder.as_deref() == Some(self.settings.identity.as_str())
    }

    // --- API calls ---

    /// A replace carrying `body`'s resourceVersion: refused with 409 if the Lease moved on.
    async fn replace(&self, body: &Lease) -> kube::Result<Lease> {
        self.api
            .replace(&self.settings.name, &PostParams::default(), body)
            .await
    }

    /// Runs one API call under `budget`: kube's client has no read timeout, and a hung API server
    /// must not keep a leader from noticing its deadline.
    async fn call<T>(
        &self,
        verb: Verb,
        budget: Duration,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(budget, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.classify(verb, error)),
            Err(_) => Err(Failure::Transient(format!(
                "no answer to {verb} within {budget:?}"
            ))),
        }
    }

    fn classify(&self, verb: Verb, error: kube::Error) -> Failure {
        let kube::Error::Api(status) = error else {
            return Failure::Transient(format!("{verb}: {error}"));
        };
        let terminating = status.details.as_ref().is_some_and(|details| {
            details
                .causes
                .iter()
                .any(|cause| cause.reason == "NamespaceTerminating")
        });
        let refused = || {
            Failure::Fatal(LeaderError::Refused {
                verb,
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            })
        };
        match status.code {
            409 => Failure::Conflict,
            403 if terminating => refused(),
            403 => Failure::Fatal(LeaderError::Forbidden {
                verb,
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                message: status.message.clone(),
            }),
            // Creating in a namespace that does not exist; a Lease deleted under a replace is
            // transient (the next read creates it).
            404 if verb == Verb::Create => refused(),
            400 | 422 => refused(),
            code => Failure::Transient(format!(
                "{verb}: {code} {}: {}",
                status.reason, status.message
            )),
        }
    }
}

// === Lease bodies: what each write sends (every replace keeps the base's resourceVersion) ===

fn created(settings: &LeaseSettings) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(settings.lease_duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

fn claimed(settings: &LeaseSettings, base: &Lease, transitions: i32) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = base.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.lease_transitions = Some(transitions);
    lease
}

fn renewed(settings: &LeaseSettings, base: &Lease) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = base.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.acquire_time.get_or_insert_with(|| now.clone());
    spec.renew_time = Some(now);
    lease
}

/// client-go's release: no holder, and a one-second lease so that anyone may take it.
fn released(base: &Lease) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = base.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn settings() -> LeaseSettings {
        LeaseSettings::new("crawler", "crawler-operator", "replica-a")
    }

    fn record(holder: Option<&str>, resource_version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            renew_time: Some("2024-01-01T00:00:00Z".parse().unwrap()),
            resource_version: Some(resource_version.to_owned()),
            lease_duration_seconds: Some(15),
            transitions: 4,
        }
    }

    fn seen(record: LeaseRecord, first_seen: Instant) -> Observed {
        Observed { record, first_seen }
    }

    fn lease(holder: Option<&str>, resource_version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("crawler-operator".into()),
                namespace: Some("crawler".into()),
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(4),
                acquire_time: Some(MicroTime("2024-01-01T00:00:00Z".parse().unwrap())),
                renew_time: Some(MicroTime("2024-01-01T00:00:05Z".parse().unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    // --- settings ---

    #[test]
    fn defaults_are_client_gos_and_valid() {
        let s = settings();
        assert_eq!(
            (s.lease_duration, s.renew_deadline, s.retry_period),
            (15 * SEC, 10 * SEC, 2 * SEC)
        );
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.lease_duration_seconds(), 15);
    }

    #[test]
    fn short_test_durations_are_valid() {
        let s = LeaseSettings {
            lease_duration: 3 * SEC,
            renew_deadline: 2 * SEC,
            retry_period: Duration::from_millis(500),
            ..settings()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        let s = LeaseSettings {
            lease_duration: 10 * SEC,
            ..settings()
        };
        let error = s.validate().unwrap_err();
        assert_eq!(
            error,
            SettingsError::LeaseDurationTooShort {
                lease_duration: 10 * SEC,
                renew_deadline: 10 * SEC
            }
        );
        assert_eq!(
            error.to_string(),
            "leader election: the lease duration (10s) must be longer than the renew deadline \
             (10s), so that a leader that cannot renew stops acting before another replica may \
             take over"
        );
    }

    #[test]
    fn renew_deadline_must_exceed_retry_period() {
        let s = LeaseSettings {
            renew_deadline: 2 * SEC,
            ..settings()
        };
        let error = s.validate().unwrap_err();
        assert!(
            matches!(error, SettingsError::RenewDeadlineTooShort { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("renew deadline (2s)"), "{error}");
        assert!(error.to_string().contains("retry period (2s)"), "{error}");
    }

    #[test]
    fn retry_period_must_be_positive() {
        let s = LeaseSettings {
            retry_period: Duration::ZERO,
            ..settings()
        };
        assert_eq!(s.validate(), Err(SettingsError::ZeroRetryPeriod));
    }

    #[test]
    fn names_and_identity_are_checked() {
        for namespace in [
            "",
            "Crawler",
            "-crawler",
            "crawler-",
            "a.b",
            &"n".repeat(64),
        ] {
            let s = LeaseSettings::new(namespace, "lease", "me");
            assert_eq!(
                s.validate(),
                Err(SettingsError::Namespace(namespace.to_owned())),
                "{namespace:?}"
            );
        }
        for name in ["", "Lease", "lease_1", "a..b", ".a", &"n".repeat(254)] {
            let s = LeaseSettings::new("crawler", name, "me");
            assert_eq!(
                s.validate(),
                Err(SettingsError::Name(name.to_owned())),
                "{name:?}"
            );
        }
        assert_eq!(
            LeaseSettings::new("crawler", "crawler-operator.crawler.dev", "me").validate(),
            Ok(())
        );
        assert_eq!(
            LeaseSettings::new("crawler", "lease", "").validate(),
            Err(SettingsError::EmptyIdentity)
        );
    }

    #[test]
    fn lease_duration_seconds_round_up_and_must_fit() {
        let s = LeaseSettings {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: 2 * SEC,
            retry_period: SEC,
            ..settings()
        };
        assert_eq!(s.lease_duration_seconds(), 3);
        let s = LeaseSettings {
            lease_duration: Duration::from_secs(u64::from(u32::MAX)),
            ..settings()
        };
        assert!(matches!(
            s.validate(),
            Err(SettingsError::LeaseDurationTooLong(_))
        ));
    }

    // --- the decision ---

    #[test]
    fn no_lease_means_create() {
        assert_eq!(decide(None, Instant::now(), &settings()), Decision::Create);
    }

    #[test]
    fn a_free_lease_is_acquired_at_once_and_counts_a_transition() {
        let t0 = Instant::now();
        let observed = seen(record(None, "7"), t0);
        assert_eq!(
            decide(Some(&observed), t0, &settings()),
            Decision::Acquire {
                previous_holder: None,
                transitions: 5
            }
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let t0 = Instant::now();
        let observed = seen(record(Some("replica-a"), "7"), t0);
        assert_eq!(decide(Some(&observed), t0, &settings()), Decision::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_a_lease_duration_from_first_sight() {
        let t0 = Instant::now();
        let observed = seen(record(Some("replica-b"), "7"), t0);
        let s = settings();
        let wait = Decision::Wait {
            holder: "replica-b".into(),
            until: t0 + 15 * SEC,
        };
        assert_eq!(decide(Some(&observed), t0, &s), wait);
        assert_eq!(
            decide(
                Some(&observed),
                t0 + Duration::from_nanos(14_999_999_999),
                &s
            ),
            wait
        );
        assert_eq!(
            decide(Some(&observed), t0 + 15 * SEC, &s),
            Decision::Acquire {
                previous_holder: Some("replica-b".into()),
                transitions: 5
            }
        );
    }

    #[test]
    fn the_longer_of_the_holders_promise_and_our_lease_duration_is_waited() {
        let t0 = Instant::now();
        let s = settings();
        let mut longer = record(Some("replica-b"), "7");
        longer.lease_duration_seconds = Some(60);
        assert_eq!(
            decide(Some(&seen(longer, t0)), t0 + 30 * SEC, &s),
            Decision::Wait {
                holder: "replica-b".into(),
                until: t0 + 60 * SEC
            }
        );
        // A holder that promised less (or nothing, or nonsense) still gets our lease duration.
        for promised in [Some(1), None, Some(-5)] {
            let mut shorter = record(Some("replica-b"), "7");
            shorter.lease_duration_seconds = promised;
            assert_eq!(
                decide(Some(&seen(shorter, t0)), t0 + 14 * SEC, &s),
                Decision::Wait {
                    holder: "replica-b".into(),
                    until: t0 + 15 * SEC
                },
                "{promised:?}"
            );
        }
    }

    #[test]
    fn the_remote_renew_time_never_meets_our_clock() {
        // A holder whose clock is years behind, or ahead, is judged only by whether its record
        // changes while we watch.
        let t0 = Instant::now();
        let s = settings();
        for renew_time in ["1999-01-01T00:00:00Z", "2999-01-01T00:00:00Z"] {
            let mut skewed = record(Some("replica-b"), "7");
            skewed.renew_time = Some(renew_time.parse().unwrap());
            assert!(matches!(
                decide(Some(&seen(skewed.clone(), t0)), t0 + SEC, &s),
                Decision::Wait { .. }
            ));
            assert!(matches!(
                decide(Some(&seen(skewed, t0)), t0 + 15 * SEC, &s),
                Decision::Acquire { .. }
            ));
        }
    }

    #[test]
    fn transitions_saturate() {
        let t0 = Instant::now();
        let mut free = record(None, "7");
        free.transitions = i32::MAX;
        assert_eq!(
            decide(Some(&seen(free, t0)), t0, &settings()),
            Decision::Acquire {
                previous_holder: None,
                transitions: i32::MAX
            }
        );
    }

    // --- observing ---

    #[test]
    fn an_unchanged_record_keeps_its_first_sighting() {
        let t0 = Instant::now();
        let first = Observed::update(None, record(Some("replica-b"), "7"), t0);
        assert_eq!(first.first_seen, t0);
        let again = Observed::update(Some(first), record(Some("replica-b"), "7"), t0 + 5 * SEC);
        assert_eq!(again.first_seen, t0);
        // ... so after a lease duration of silence the holder is gone.
        assert!(matches!(
            decide(Some(&again), t0 + 15 * SEC, &settings()),
            Decision::Acquire { .. }
        ));
    }

    #[test]
    fn any_change_of_the_record_restarts_the_clock() {
        let t0 = Instant::now();
        let t1 = t0 + 5 * SEC;
        let base = || Observed::update(None, record(Some("replica-b"), "7"), t0);

        let renewed = record(Some("replica-b"), "8");
        assert_eq!(Observed::update(Some(base()), renewed, t1).first_seen, t1);

        let mut renew_time_moved = record(Some("replica-b"), "7");
        renew_time_moved.renew_time = Some("2024-01-01T00:00:02Z".parse().unwrap());
        assert_eq!(
            Observed::update(Some(base()), renew_time_moved, t1).first_seen,
            t1
        );

        let new_holder = record(Some("replica-c"), "7");
        let observed = Observed::update(Some(base()), new_holder, t1);
        assert_eq!(observed.first_seen, t1);
        assert_eq!(
            decide(Some(&observed), t0 + 15 * SEC, &settings()),
            Decision::Wait {
                holder: "replica-c".into(),
                until: t1 + 15 * SEC
            }
        );
    }

    #[test]
    fn a_record_is_read_from_a_lease() {
        let r = LeaseRecord::from_lease(&lease(Some("replica-b"), "7"));
        assert_eq!(r.holder.as_deref(), Some("replica-b"));
        assert_eq!(r.resource_version.as_deref(), Some("7"));
        assert_eq!(r.lease_duration_seconds, Some(15));
        assert_eq!(r.transitions, 4);
        assert_eq!(r.renew_time, Some("2024-01-01T00:00:05Z".parse().unwrap()));
        // An empty holder is no holder.
        assert_eq!(LeaseRecord::from_lease(&lease(Some(""), "7")).holder, None);
        let bare = LeaseRecord::from_lease(&Lease::default());
        assert_eq!((bare.holder, bare.transitions), (None, 0));
    }

    // --- what is written ---

    #[test]
    fn a_claim_names_us_counts_the_transition_and_keeps_the_resource_version() {
        let s = LeaseSettings {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: 2 * SEC,
            retry_period: SEC,
            ..settings()
        };
        let base = lease(Some("replica-b"), "7");
        let claim = claimed(&s, &base, 5);
        let spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_ne!(spec.acquire_time, base.spec.as_ref().unwrap().acquire_time);
        assert_eq!(spec.acquire_time, spec.renew_time);
    }

    #[test]
    fn a_renewal_moves_only_the_renew_time() {
        let base = lease(Some("replica-a"), "9");
        let renewal = renewed(&settings(), &base);
        let (before, after) = (base.spec.as_ref().unwrap(), renewal.spec.as_ref().unwrap());
        assert_eq!(renewal.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(after.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(after.acquire_time, before.acquire_time);
        assert_eq!(after.lease_transitions, before.lease_transitions);
        assert!(after.renew_time > before.renew_time);
    }

    #[test]
    fn a_release_frees_the_lease_for_anyone_at_once() {
        let base = lease(Some("replica-a"), "9");
        let release = released(&base);
        let spec = release.spec.as_ref().unwrap();
        assert_eq!(release.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(4));
        // A candidate reading it acquires without waiting.
        let t0 = Instant::now();
        let observed = seen(LeaseRecord::from_lease(&release), t0);
        assert!(matches!(
            decide(
                Some(&observed),
                t0,
                &LeaseSettings::new("crawler", "l", "replica-b")
            ),
            Decision::Acquire { transitions: 5, .. }
        ));
    }

    #[test]
    fn a_created_lease_names_us_from_term_zero() {
        let created = created(&settings());
        let spec = created.spec.as_ref().unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("crawler-operator"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("crawler"));
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    // --- leadership as data ---

    #[test]
    fn leadership_expires_on_its_own() {
        let t0 = Instant::now();
        let leading = Leadership::Leading {
            since: t0,
            valid_until: t0 + 10 * SEC,
            term: 3,
        };
        assert!(leading.is_leading_at(t0));
        assert!(leading.is_leading_at(t0 + Duration::from_nanos(9_999_999_999)));
        assert!(!leading.is_leading_at(t0 + 10 * SEC));
        assert_eq!(leading.term(), Some(3));
        assert_eq!(leading.valid_until(), Some(t0 + 10 * SEC));
        let standby = Leadership::Standby { holder: None };
        assert!(!standby.is_leading_at(t0));
        assert_eq!((standby.term(), standby.valid_until()), (None, None));
    }

    #[tokio::test]
    async fn until_lost_resolves_at_the_deadline_even_if_nothing_is_published() {
        let valid_until = Instant::now() + Duration::from_millis(100);
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: Instant::now(),
            valid_until,
            term: 1,
        });
        until_lost(&mut rx).await;
        assert!(Instant::now() >= valid_until);
        drop(tx);
    }

    #[tokio::test]
    async fn until_lost_follows_renewals_and_returns_on_standby() {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: start,
            valid_until: start + Duration::from_millis(100),
            term: 1,
        });
        let watcher = tokio::spawn(async move {
            until_lost(&mut rx).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Leadership::Leading {
            since: start,
            valid_until: start + 10 * SEC,
            term: 1,
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!watcher.is_finished(), "a renewal extends leadership");
        let stepped_down = Instant::now();
        tx.send_replace(Leadership::Standby { holder: None });
        let lost = watcher.await.unwrap();
        assert!(lost >= stepped_down);
    }

    #[tokio::test]
    async fn until_lost_returns_when_the_elector_is_gone() {
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: Instant::now(),
            valid_until: Instant::now() + 60 * SEC,
            term: 1,
        });
        drop(tx);
        tokio::time::timeout(SEC, until_lost(&mut rx))
            .await
            .expect("until_lost returns once the sender is dropped");
    }

    #[tokio::test]
    async fn until_leading_waits_for_leadership_or_reports_the_stop() {
        let (tx, mut rx) = watch::channel(Leadership::Standby { holder: None });
        let now = Instant::now();
        let leading = Leadership::Leading {
            since: now,
            valid_until: now + 60 * SEC,
            term: 2,
        };
        let expected = leading.clone();
        let waiter = tokio::spawn(async move { until_leading(&mut rx).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(leading);
        assert_eq!(waiter.await.unwrap(), Ok(expected));

        let (tx, mut rx) = watch::channel(Leadership::Standby { holder: None });
        drop(tx);
        assert_eq!(until_leading(&mut rx).await, Err(ElectorStopped));
    }
}

//! The elector: the I/O around [`decide`](super::decide): reads, guarded writes under timeouts,
//! the local renew deadline, the standby's watch for a released Lease, and the release on
//! shutdown.

use std::{
    fmt,
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{
    Decision, Leadership, LeaseRecord, LeaseSettings, Observed, SettingsError, decide,
    lease::{claimed, created, released, renewed},
};

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

/// The server ends the standby's Lease watch after this many seconds (kube-runtime's watcher
/// then re-lists and watches again, and gives up on a watch silent for 5 s longer): a watch whose
/// connection went silent is replaced within 30 s instead of kube's default 295 s. Only the
/// speed of a graceful handover depends on this watch; a release it missed is still taken at
/// the standby's next round (a retry period, or up to 4 after failed rounds).
pub const LEASE_WATCH_TIMEOUT_SECS: u32 = 25;

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
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(LEASE_WATCH_TIMEOUT_SECS);
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
                    warn!(lease = %lease_ref, %error, "cannot watch the Lease (if this persists: RBAC list and watch on leases); a standby takes over a released Lease only at its next round");
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
    /// While another replica holds the Lease, or it is vacant but may not be taken yet: when
    /// we may, unless the record changes.
    holder_expires: Option<Instant>,
    /// When we first found the Lease missing after having seen it (see [`decide`]).
    gone_since: Option<Instant>,
    /// The highest `leaseTransitions` seen: a Lease re-created after a deletion continues the
    /// count, so no two terms are stamped alike (see [`super::lease::created`]).
    last_transitions: Option<i32>,
    /// Consecutive failed rounds while standing by: the next attempt backs off.
    failures: u32,
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
    /// 404 on a replace: the Lease was deleted; a fresh read decides what next.
    Gone,
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
            Err(Failure::Conflict | Failure::Gone) => {
                debug!(lease = %self.lease_ref, "renewal conflicted or the Lease is gone; reading the Lease");
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
        // The expiry belongs to the decision this read replaces: kept after a failed read, a
        // past expiry would make the next round start at once, and the next, without end.
        c.holder_expires = None;
        let budget = self.budget(c, Instant::now());
        let request = self.api.get_opt(&self.settings.name);
        let current = match self.call(Verb::Get, budget, request).await {
            Ok(current) => current,
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Conflict | Failure::Gone) => return Ok(None),
            Err(Failure::Transient(why)) => {
                c.failures = c.failures.saturating_add(1);
                warn!(lease = %self.lease_ref, %why, failures = c.failures, "reading the Lease failed; retrying");
                return Ok(None);
            }
        };
        let received = Instant::now();
        c.failures = 0;
        c.gone_since = match (&current, &c.observed) {
            (Some(_), _) => None,
            // Seen before, missing now: its holder may still act until its next renewal fails.
            (None, Some(_)) => Some(c.gone_since.unwrap_or(received)),
            (None, None) => c.gone_since,
        };
        c.observed = current.as_ref().map(|lease| {
            Observed::update(c.observed.take(), LeaseRecord::from_lease(lease), received)
        });
        if let Some(observed) = &c.observed {
            c.last_transitions = c.last_transitions.max(Some(observed.record.transitions));
        }
        c.lease = current;

        let decision = decide(c.observed.as_ref(), c.gone_since, received, &self.settings);
        if c.term.is_some() && decision != Decision::Renew {
            let reason = match (&decision, &c.lease) {
                (
                    Decision::Wait {
                        holder: Some(_), ..
                    },
                    _,
                ) => "another replica took the Lease",
                (_, None) => "the Lease was deleted",
                _ => "the Lease was freed by someone else",
            };
            let holder = match &decision {
                Decision::Wait { holder, .. } => holder.clone(),
                _ => None,
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
                if holder.is_none() {
                    debug!(lease = %self.lease_ref, wait = ?until.saturating_duration_since(sent), "the Lease was deleted or freed by someone other than its holder; waiting a lease duration before taking it");
                }
                c.holder_expires = Some(until);
                self.publish_standby(holder);
                return Ok(());
            }
            (Decision::Create, _) => {
                let body = created(&self.settings, c.last_transitions);
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
            // The Lease names us but we do not lead (a term that ended by our own deadline, or
            // a restart under the same identity): a new term, so a new `leaseTransitions`. A
            // status write stamped with the old term and held in the network is then refused
            // by the leader fence, like any other leader's.
            (Decision::Renew, Some(lease)) if c.term.is_none() => {
                let transitions = LeaseRecord::from_lease(lease).transitions.saturating_add(1);
                let body = claimed(&self.settings, lease, transitions);
                let written = self.call(Verb::Update, budget, self.replace(&body)).await;
                (written, Some(self.settings.identity.clone()))
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
            Err(Failure::Conflict | Failure::Gone) => {
                debug!(lease = %self.lease_ref, "another writer changed the Lease first");
            }
            Err(Failure::Transient(why)) => {
                c.failures = c.failures.saturating_add(1);
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
            let body = released(&self.settings, &lease);
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
                        Err(Failure::Conflict | Failure::Gone) => "conflict".to_owned(),
                        Err(Failure::Transient(why)) => why,
                    }
                }
                Err(Failure::Fatal(error)) => error.to_string(),
                Err(Failure::Gone) => return,
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
        let mut wake = started + self.settings.retry_delay(c.term.is_some(), c.failures);
        if let Some(term) = &c.term {
            wake = wake.min(term.valid_until);
        }
        if let Some(until) = c.holder_expires.filter(|until| *until > started) {
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
            // for the next read to notice (and wait out, see `decide`).
            404 if verb == Verb::Create => refused(),
            404 if verb == Verb::Update => Failure::Gone,
            400 | 422 => refused(),
            code => Failure::Transient(format!(
                "{verb}: {code} {}: {}",
                status.reason, status.message
            )),
        }
    }
}

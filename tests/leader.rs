//! Leader election against the real kube-apiserver: one leader at a time, fast failover on a
//! crash or a graceful shutdown, and a leader that stops acting by its own deadline when it loses
//! the API server (cut off alone, or the whole API server paused).
//!
//! Pausing the API server stalls every test of this file, so every test holds [`API_SERVER`]:
//! shared by the tests that need it responsive, exclusive for the test that pauses it. This file
//! has a control plane of its own (`support::OWN_CONTROL_PLANE`), so the pause reaches no other
//! suite.
//!
//! Measured times are printed (`cargo test --test it leader:: -- --nocapture`).

use crate::support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crawler_operator::leader::{
    LeaderElector, LeaderError, Leadership, LeaseSettings, MAX_BACKOFF_FACTOR, until_leading,
    until_lost,
};
use k8s_openapi::api::{
    coordination::v1::Lease,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Client,
    api::{Api, PostParams},
};
use serde_json::json;
use support::proxy::Proxy;
use tokio::{
    sync::{RwLock, oneshot, watch},
    task::JoinHandle,
};

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// Scheduling, API latency and a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(1);
const LEASE_NAME: &str = "crawler-operator";

/// Read: the test needs a responsive API server. Write: the test pauses it.
static API_SERVER: RwLock<()> = RwLock::const_new(());

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "crawler_operator=info".to_owned()),
        )
        .try_init();
}

fn settings(namespace: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: LEASE,
        renew_deadline: RENEW,
        retry_period: RETRY,
        ..LeaseSettings::new(namespace, LEASE_NAME, identity)
    }
}

/// One term as this test saw it on the watch channel.
#[derive(Clone, Copy, Debug)]
struct Term {
    since: Instant,
    /// The last `valid_until` published in this term.
    valid_until: Instant,
    /// When the channel was seen to stop saying "leading" in this term (Standby, another term,
    /// or the elector gone): at or after the elector published it.
    ended: Option<Instant>,
}

impl Term {
    /// When `is_leading_now()` turned false on this replica: the deadline or the step-down,
    /// whichever came first. An upper bound: the step-down is stamped when the test saw it.
    fn stopped(&self) -> Instant {
        self.ended
            .map_or(self.valid_until, |e| e.min(self.valid_until))
    }

    /// A bound that does not trust the published deadline at all.
    fn seen_ended(&self) -> Instant {
        self.ended.unwrap_or_else(Instant::now)
    }
}

/// A replica: an elector running in a task, its leadership channel, and what it published.
struct Candidate {
    identity: String,
    rx: watch::Receiver<Leadership>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
    terms: Arc<Mutex<Vec<Term>>>,
}

impl Candidate {
    fn start(client: Client, settings: LeaseSettings) -> Self {
        let identity = settings.identity.clone();
        let elector = LeaderElector::new(client, settings).expect("valid test settings");
        let rx = elector.subscribe();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stop.await;
        }));
        let terms = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(record_terms(rx.clone(), Arc::clone(&terms)));
        Self {
            identity,
            rx,
            shutdown: Some(shutdown),
            task,
            terms,
        }
    }

    fn is_leading_now(&self) -> bool {
        self.rx.borrow().is_leading_now()
    }

    fn terms(&self) -> Vec<Term> {
        self.terms.lock().unwrap().clone()
    }

    fn last_term(&self) -> Term {
        *self
            .terms()
            .last()
            .unwrap_or_else(|| panic!("{} never led", self.identity))
    }

    /// Waits until this replica leads; returns `since` of that term.
    async fn leads_within(&mut self, within: Duration) -> Instant {
        let leading = tokio::time::timeout(within, until_leading(&mut self.rx))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not lead within {within:?}; it says {:?}",
                    self.identity,
                    *self.rx.borrow()
                )
            })
            .unwrap_or_else(|e| panic!("{}: {e}", self.identity));
        match leading {
            Leadership::Leading { since, .. } => since,
            Leadership::Standby { .. } => unreachable!("until_leading returns a Leading value"),
        }
    }

    /// Waits until this replica may no longer act as leader; returns when that was seen.
    async fn loses_within(&mut self, within: Duration) -> Instant {
        tokio::time::timeout(within, until_lost(&mut self.rx))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} still claimed leadership after {within:?}: {:?}",
                    self.identity,
                    *self.rx.borrow()
                )
            });
        Instant::now()
    }

    /// Waits until this replica stands by for `holder`.
    async fn stands_by_for_within(&mut self, holder: &str, within: Duration) {
        let expected = Leadership::Standby {
            holder: Some(holder.to_owned()),
        };
        tokio::time::timeout(within, async {
            self.rx.wait_for(|l| *l == expected).await.map(drop)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not stand by for {holder} within {within:?}; it says {:?}",
                self.identity,
                *self.rx.borrow()
            )
        })
        .expect("the elector is running");
    }

    /// Fails if this replica leads at any point during `window`.
    async fn never_leads_during(&mut self, window: Duration) {
        if let Ok(led) = tokio::time::timeout(window, until_leading(&mut self.rx)).await {
            panic!("{} unexpectedly led: {led:?}", self.identity);
        }
    }

    /// Graceful shutdown; returns what `run` returned.
    async fn shut_down(mut self) -> Result<(), LeaderError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(RETRY * 4 + SLACK, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not shut down in time", self.identity))
            .expect("the elector task does not panic")
    }

    /// A crash: the task is gone at once, nothing is released.
    fn crash(&self) {
        self.task.abort();
    }
}

/// Follows the channel and keeps every term seen, stamped with our clock.
async fn record_terms(mut rx: watch::Receiver<Leadership>, terms: Arc<Mutex<Vec<Term>>>) {
    loop {
        let now = Instant::now();
        let current = rx.borrow_and_update().clone();
        {
            let mut terms = terms.lock().unwrap();
            let open = terms.last_mut().filter(|t| t.ended.is_none());
            match (current, open) {
                (
                    Leadership::Leading {
                        since, valid_until, ..
                    },
                    Some(open),
                ) if open.since == since => {
                    open.valid_until = valid_until;
                }
                (
                    Leadership::Leading {
                        since, valid_until, ..
                    },
                    open,
                ) => {
                    if let Some(open) = open {
                        open.ended = Some(now);
                    }
                    terms.push(Term {
                        since,
                        valid_until,
                        ended: None,
                    });
                }
                (Leadership::Standby { .. }, Some(open)) => open.ended = Some(now),
                (Leadership::Standby { .. }, None) => {}
            }
        }
        if rx.changed().await.is_err() {
            if let Some(open) = terms
                .lock()
                .unwrap()
                .last_mut()
                .filter(|t| t.ended.is_none())
            {
                open.ended = Some(Instant::now());
            }
            return;
        }
    }
}

/// No instant at which two replicas both considered themselves leader, by the most
/// conservative reading: a term lasts until the test *saw* it end, whatever its deadline said.
fn assert_no_overlap(candidates: &[&Candidate]) {
    for (i, a) in candidates.iter().enumerate() {
        for b in &candidates[i + 1..] {
            for ta in a.terms() {
                for tb in b.terms() {
                    assert!(
                        ta.seen_ended() <= tb.since || tb.seen_ended() <= ta.since,
                        "{} ({ta:?}) and {} ({tb:?}) led at the same time",
                        a.identity,
                        b.identity
                    );
                }
            }
        }
    }
}

async fn holder_of_lease(client: &Client, namespace: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get(LEASE_NAME)
        .await
        .expect("reading the Lease")
        .spec
        .and_then(|spec| spec.holder_identity)
}

/// Starts `first` and waits until it leads, then `second` and waits until it stands by.
async fn leader_and_standby(first: Candidate, second: Client, ns: &str) -> (Candidate, Candidate) {
    let mut leader = first;
    leader.leads_within(RETRY + SLACK).await;
    let mut standby = Candidate::start(second, settings(ns, "replica-b"));
    standby
        .stands_by_for_within(&leader.identity, RETRY + SLACK)
        .await;
    (leader, standby)
}

#[tokio::test]
async fn of_two_replicas_exactly_one_leads() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-one").await;

    // Both start at once: both try to create the Lease, one gets 409.
    let mut a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let mut b = Candidate::start(cp.client(), settings(ns.name(), "replica-b"));
    let first = tokio::time::timeout(RETRY * 2 + SLACK, async {
        tokio::select! {
            _ = until_leading(&mut a.rx) => "replica-a",
            _ = until_leading(&mut b.rx) => "replica-b",
        }
    })
    .await
    .expect("one of two replicas leads within two retry periods");
    let (leader, standby) = if first == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    standby
        .stands_by_for_within(&leader.identity, RETRY + SLACK)
        .await;

    // For two lease durations the leader keeps renewing and the standby never leads.
    let window = LEASE * 2;
    tokio::select! {
        () = standby.never_leads_during(window) => {}
        lost = until_lost(&mut leader.rx) => panic!("{} lost leadership: {lost:?}", leader.identity),
    }
    assert!(leader.is_leading_now());
    assert_eq!(leader.terms().len(), 1, "one term, renewed throughout");
    assert_eq!(
        holder_of_lease(&cp.client(), ns.name()).await.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_no_overlap(&[&a, &b]);
    eprintln!("two replicas: {first} leads, the other stands by for {window:?}");
    a.shut_down().await.expect("a shuts down cleanly");
    b.shut_down().await.expect("b shuts down cleanly");
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_duration() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-crash").await;
    let a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let (a, mut b) = leader_and_standby(a, cp.client(), ns.name()).await;

    let crashed = Instant::now();
    a.crash();
    let since = b.leads_within(LEASE + RETRY + SLACK).await;
    let takeover = since - crashed;
    eprintln!(
        "crash: the standby led {takeover:?} after the leader's task was aborted \
         (lease {LEASE:?}, retry {RETRY:?})"
    );
    // Not before the leader's own deadline could have passed, nor later than the bound.
    assert!(
        takeover + RETRY > LEASE,
        "took over after {takeover:?}: too early"
    );
    assert!(
        since > a.last_term().valid_until,
        "no overlap with the crashed leader's deadline"
    );
    assert_eq!(
        holder_of_lease(&cp.client(), ns.name()).await.as_deref(),
        Some("replica-b")
    );
    assert_no_overlap(&[&a, &b]);
    b.shut_down().await.expect("b shuts down cleanly");
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-release").await;
    let a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let mut a_leads = a;
    a_leads.leads_within(RETRY + SLACK).await;
    // The standby retries only every 20 s: taking over sooner is the watch on the Lease.
    let slow = Duration::from_secs(20);
    let mut b = Candidate::start(
        cp.client(),
        LeaseSettings {
            lease_duration: Duration::from_secs(40),
            renew_deadline: Duration::from_secs(30),
            retry_period: slow,
            ..LeaseSettings::new(ns.name(), LEASE_NAME, "replica-b")
        },
    );
    b.stands_by_for_within(&a_leads.identity, SLACK).await;
    let a = a_leads;

    let a_terms = Arc::clone(&a.terms);
    let asked = Instant::now();
    a.shut_down().await.expect("a shuts down cleanly");
    let released = Instant::now();
    let since = b.leads_within(SLACK).await;
    eprintln!(
        "graceful shutdown: the standby led {:?} after shutdown was requested \
         (release done after {:?}; its retry period {slow:?})",
        since - asked,
        released - asked
    );
    let a_term = *a_terms.lock().unwrap().last().expect("a led");
    assert!(
        a_term.seen_ended() < since,
        "a stopped leading before b started: {a_term:?} vs {since:?}"
    );
    let lease = Api::<Lease>::namespaced(cp.client(), ns.name())
        .get(LEASE_NAME)
        .await
        .expect("reading the Lease");
    let spec = lease.spec.expect("a Lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(
        spec.lease_transitions,
        Some(1),
        "created by a (0), taken by b after the release (1)"
    );
    b.shut_down().await.expect("b shuts down cleanly");
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_starts() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-cut").await;
    let proxy = Proxy::start(cp.apiserver_addr());
    let a = Candidate::start(cp.client_via(&proxy), settings(ns.name(), "replica-a"));
    let (mut a, mut b) = leader_and_standby(a, cp.client(), ns.name()).await;

    let cut = Instant::now();
    proxy.cut();
    let lost_seen = a.loses_within(RENEW + SLACK).await;
    let since = b.leads_within(LEASE + RETRY + SLACK).await;
    let a_term = a.last_term();
    let stepped_down = a_term
        .ended
        .expect("a's elector published its step-down (Standby)");
    assert!(
        a_term.valid_until <= cut + RENEW,
        "a's deadline comes from a renewal sent before the cut"
    );
    eprintln!(
        "cut off: a stopped {:?} after the cut (step-down seen after {:?}, until_lost after {:?}), \
         b led {:?} after the cut; no leader for {:?}",
        a_term.stopped() - cut,
        stepped_down - cut,
        lost_seen - cut,
        since - cut,
        since - a_term.stopped()
    );
    assert!(
        a_term.stopped() < since && stepped_down < since,
        "a still led when b's term began: a stopped {:?} after the cut (seen {:?}), b began {:?}",
        a_term.stopped() - cut,
        stepped_down - cut,
        since - cut
    );

    // Back on the network, a finds b in charge and stays a standby.
    proxy.restore();
    a.stands_by_for_within("replica-b", RETRY * 2 + SLACK * 3)
        .await;
    tokio::select! {
        () = a.never_leads_during(LEASE) => {}
        lost = until_lost(&mut b.rx) => panic!("b lost leadership: {lost:?}"),
    }
    assert_no_overlap(&[&a, &b]);
    b.shut_down().await.expect("b shuts down cleanly");
    a.shut_down().await.expect("a shuts down cleanly");
}

#[tokio::test]
async fn a_paused_api_server_ends_leadership_by_the_deadline_and_one_leads_after() {
    init_tracing();
    let _api_server = API_SERVER.write().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-pause").await;
    let a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let (mut a, mut b) = leader_and_standby(a, cp.client(), ns.name()).await;

    let paused = Instant::now();
    cp.pause_apiserver();
    // In a task of its own, so that the API server is resumed even if an assertion fails:
    // otherwise every later test of this binary would hang.
    let during_pause = tokio::spawn(async move {
        let lost_seen = a.loses_within(RENEW + SLACK).await;
        let a_term = a.last_term();
        assert!(
            a_term.valid_until <= paused + RENEW,
            "a's deadline comes from a renewal sent before the pause"
        );
        eprintln!(
            "paused: a stopped claiming leadership {:?} after the pause (seen {:?})",
            a_term.stopped() - paused,
            lost_seen - paused
        );
        // Past the lease duration, with no one leading.
        let resume_at = paused + LEASE + SLACK;
        tokio::select! {
            () = tokio::time::sleep_until(resume_at.into()) => {}
            led = until_leading(&mut b.rx) => panic!("b led while the API server was paused: {led:?}"),
        }
        assert!(!a.is_leading_now() && !b.is_leading_now());
        (a, b)
    })
    .await;
    let resumed = Instant::now();
    cp.resume_apiserver();
    let (mut a, mut b) =
        during_pause.unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()));

    let who = tokio::time::timeout(RETRY * 2 + SLACK * 5, async {
        tokio::select! {
            since = until_leading(&mut a.rx) => ("replica-a", since),
            since = until_leading(&mut b.rx) => ("replica-b", since),
        }
    })
    .await
    .expect("one replica leads soon after the API server resumes");
    let (leader, since) = (who.0, who.1.expect("the elector is running"));
    let Leadership::Leading { since, .. } = since else {
        unreachable!()
    };
    eprintln!(
        "paused: after resuming, {leader} led {:?} later",
        since - resumed
    );
    let (leader, standby) = if leader == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    standby
        .stands_by_for_within(&leader.identity, RETRY * 2 + SLACK)
        .await;
    tokio::select! {
        () = standby.never_leads_during(LEASE) => {}
        lost = until_lost(&mut leader.rx) => panic!("{} lost leadership: {lost:?}", leader.identity),
    }
    assert_no_overlap(&[&a, &b]);
    a.shut_down().await.expect("a shuts down cleanly");
    b.shut_down().await.expect("b shuts down cleanly");
}

#[tokio::test]
async fn missing_rbac_is_reported_with_the_verb_and_the_fix() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-rbac").await;
    let sa_client = cp.client_for_service_account(ns.name(), "crawler");

    let run = LeaderElector::new(sa_client.clone(), settings(ns.name(), "replica-a"))
        .unwrap()
        .run(std::future::pending());
    let error = tokio::time::timeout(RETRY + SLACK, run)
        .await
        .expect("a 403 ends the election at once")
        .expect_err("no permission at all");
    let message = error.to_string();
    assert!(matches!(error, LeaderError::Forbidden { .. }), "{error:?}");
    assert!(
        message.starts_with(&format!(
            "not allowed to get Lease {}/{LEASE_NAME}",
            ns.name()
        )),
        "{message}"
    );
    assert!(message.contains("coordination.k8s.io"), "{message}");

    // Allowed to read but not to create: the error names the verb that is missing.
    let admin = cp.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "lease-reader" },
        "rules": [{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"] }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "crawler-reads-leases" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "crawler", "namespace": ns.name() }],
    }))
    .unwrap();
    let pp = PostParams::default();
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&pp, &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&pp, &binding)
        .await
        .unwrap();
    let leases = Api::<Lease>::namespaced(sa_client.clone(), ns.name());
    support::wait_for(
        "the ServiceAccount to be allowed to get leases",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || leases.get_opt(LEASE_NAME),
    )
    .await;
    let error = tokio::time::timeout(
        RETRY + SLACK,
        LeaderElector::new(sa_client, settings(ns.name(), "replica-a"))
            .unwrap()
            .run(std::future::pending()),
    )
    .await
    .expect("a 403 ends the election at once")
    .expect_err("no permission to create");
    eprintln!("missing RBAC: {error}");
    assert!(
        error.to_string().starts_with(&format!(
            "not allowed to create Lease {}/{LEASE_NAME}",
            ns.name()
        )),
        "{error}"
    );
}

/// Waits until one of two replicas leads; returns its identity and `since`.
async fn first_to_lead(
    a: &mut Candidate,
    b: &mut Candidate,
    within: Duration,
) -> (String, Instant) {
    let (who, leading) = tokio::time::timeout(within, async {
        tokio::select! {
            led = until_leading(&mut a.rx) => (a.identity.clone(), led),
            led = until_leading(&mut b.rx) => (b.identity.clone(), led),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("neither replica led within {within:?}"));
    match leading.expect("the elector is running") {
        Leadership::Leading { since, .. } => (who, since),
        Leadership::Standby { .. } => unreachable!("until_leading returns a Leading value"),
    }
}

/// The Lease deleted (or freed by hand) under a leader: the leader acts until its next renewal
/// fails, so no one may take over for a lease duration after finding it so. Judged from both
/// replicas' terms (a term lasts until the test saw it end) and the Lease's transitions.
async fn vacated_lease_is_taken_only_after_a_lease_duration(prefix: &str, delete: bool) {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace(prefix).await;
    let a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let (mut a, mut b) = leader_and_standby(a, cp.client(), ns.name()).await;
    let leases = Api::<Lease>::namespaced(cp.client(), ns.name());

    // When the write that vacates the Lease was sent (the last attempt's, when it is retried).
    let mut vacated = Instant::now();
    if delete {
        leases
            .delete(LEASE_NAME, &kube::api::DeleteParams::default())
            .await
            .expect("deleting the Lease");
    } else {
        // As `kubectl edit` would: read, clear, write; the leader renews every RETRY, so a
        // write can meet a renewal (409) and is then made again on a fresh read.
        let mut attempts = 0;
        loop {
            let mut lease = leases.get(LEASE_NAME).await.expect("reading the Lease");
            lease.spec.as_mut().expect("a spec").holder_identity = None;
            vacated = Instant::now();
            match leases
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 409 && attempts < 10 => {
                    attempts += 1;
                }
                Err(e) => panic!("clearing the holder by hand: {e}"),
            }
        }
    }
    let lost = a.loses_within(RETRY + SLACK).await;
    let (who, since) = first_to_lead(&mut a, &mut b, LEASE + RETRY * 2 + SLACK).await;
    let a_term = a.terms()[0];
    let what = if delete { "deleted" } else { "cleared by hand" };
    eprintln!(
        "Lease {what}: the leader stopped {:?} after it (seen {:?}); {who} led {:?} after it \
         (lease {LEASE:?}); {} term(s) of a, {} of b",
        a_term.stopped().saturating_duration_since(vacated),
        lost - vacated,
        since - vacated,
        a.terms().len(),
        b.terms().len()
    );
    assert!(
        since >= vacated + LEASE,
        "{who} took the {what} Lease {:?} after it, less than a lease duration",
        since - vacated
    );
    assert!(
        a_term.seen_ended() < since,
        "the old leader still acted when {who} began"
    );
    assert_no_overlap(&[&a, &b]);
    let spec = leases
        .get(LEASE_NAME)
        .await
        .expect("the Lease exists again")
        .spec
        .expect("a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(who.as_str()));
    eprintln!(
        "Lease {what}: now held by {who}, leaseTransitions {:?}",
        spec.lease_transitions
    );
    a.shut_down().await.expect("a shuts down cleanly");
    b.shut_down().await.expect("b shuts down cleanly");
}

#[tokio::test]
async fn a_lease_deleted_under_a_leader_is_recreated_only_after_a_lease_duration() {
    vacated_lease_is_taken_only_after_a_lease_duration("leader-deleted", true).await;
}

#[tokio::test]
async fn a_lease_cleared_by_hand_is_taken_only_after_a_lease_duration() {
    vacated_lease_is_taken_only_after_a_lease_duration("leader-cleared", false).await;
}

#[tokio::test]
async fn a_standby_whose_lease_reads_fail_fast_backs_off() {
    init_tracing();
    let _api_server = API_SERVER.read().await;
    let cp = support::control_plane();
    let ns = cp.namespace("leader-backoff").await;
    let proxy = Proxy::start(cp.apiserver_addr());
    let a = Candidate::start(cp.client(), settings(ns.name(), "replica-a"));
    let (mut a, mut b) = leader_and_standby(a, cp.client_via(&proxy), ns.name()).await;

    let window = Duration::from_secs(12);
    // b's connections go through the proxy; now each is closed as soon as it opens.
    proxy.refuse();
    let before = proxy.accepted();
    tokio::select! {
        () = tokio::time::sleep(window) => {}
        lost = until_lost(&mut a.rx) => panic!("a lost leadership: {lost:?}"),
    }
    let tried = proxy.accepted() - before;

    // What the elector's schedule allows in the window (one read per round), plus the Lease
    // watch's own reconnects: kube-runtime's default backoff (0.8 s doubling, jitter only
    // lengthens it). Each read and each watch attempt may take two connections: hyper retries
    // a request whose connection closed before it was sent (a CI run counted 19 against a bound
    // that gave reads one: 8 reads and 5 watch attempts).
    let s = settings(ns.name(), "replica-b");
    let (mut rounds, mut at, mut failures) = (0u64, Duration::ZERO, 0u32);
    while at <= window {
        rounds += 1;
        failures += 1;
        at += s.retry_delay(false, failures);
    }
    let (mut watch_attempts, mut at, mut delay) =
        (0u64, Duration::ZERO, Duration::from_millis(800));
    while at <= window {
        watch_attempts += 1;
        at += delay;
        delay *= 2;
    }
    let allowed = 2 * (rounds + watch_attempts);
    let fixed_period = u64::try_from(window.as_millis() / RETRY.as_millis()).unwrap_or(u64::MAX);
    eprintln!(
        "fail-fast reads: the standby opened {tried} connections in {window:?} \
         (its schedule allows {rounds} reads and {watch_attempts} watch attempts, at most two \
         connections each: {allowed}; a fixed {RETRY:?} period would be {fixed_period} reads, \
         at least {} connections with the watch's)",
        fixed_period + watch_attempts
    );
    // The bound still tells a backoff from a fixed period: the latter opens more than it allows.
    assert!(allowed < fixed_period + watch_attempts);
    assert!(tried >= 3, "the standby kept trying ({tried} connections)");
    assert!(
        tried <= allowed,
        "{tried} connections in {window:?}: the standby does not back off"
    );

    // Once the API server answers again, the standby is back within its longest backoff.
    proxy.restore();
    b.stands_by_for_within("replica-a", RETRY * MAX_BACKOFF_FACTOR + SLACK)
        .await;
    assert_no_overlap(&[&a, &b]);
    b.crash();
    a.shut_down().await.expect("a shuts down cleanly");
}

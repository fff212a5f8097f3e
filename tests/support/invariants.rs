//! The invariant checker (docs/architecture.md, "Invariants"): reads the cluster and states each
//! violation precisely. Scenarios call [`check`] at settle points and collect what it reports;
//! the site's request log ([`super::site::Site::overlaps`]) covers "run by two workers at once".

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crawler_operator::{
    crd::{CrawlerResource, Phase},
    heartbeat,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::judge::Verdict;

/// What the cluster looked like when checked.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Workers that may hold work: Ready, not terminating, with an IP, heartbeat alive if any.
    pub ready: BTreeSet<String>,
    /// resource name -> assigned worker
    pub assigned: BTreeMap<String, Option<String>>,
    /// (kind, description); kinds: `lost`, `unexpected`, `no-status`, `on-unready-worker`,
    /// `unassigned`.
    pub violations: Vec<(&'static str, String)>,
}

/// Checks, in namespace `ns`: no resource lost (every name in `expected` exists, none other),
/// every resource has a status, none is assigned to a worker that is gone or not ready, and none
/// is left unassigned (or Unschedulable) while a ready worker exists. `expected`: `None` skips
/// the "lost" check.
pub async fn check(client: &Client, ns: &str, expected: Option<&BTreeSet<String>>) -> Snapshot {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing pods");
    let leases = Api::<Lease>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing leases");
    let resources = Api::<CrawlerResource>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing resources");
    let released: BTreeSet<String> = leases
        .iter()
        .filter_map(|l| {
            let name = l.name_any();
            let pod = heartbeat::pod_of(&name)?.to_owned();
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty());
            holder.is_none().then_some(pod)
        })
        .collect();
    let mut snapshot = Snapshot::default();
    for pod in &pods {
        let ready = pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().is_some_and(|s| {
                s.pod_ip.is_some()
                    && s.conditions
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
        if ready && !released.contains(&pod.name_any()) {
            snapshot.ready.insert(pod.name_any());
        }
    }
    let names: BTreeSet<String> = resources.iter().map(ResourceExt::name_any).collect();
    if let Some(expected) = expected {
        for lost in expected.difference(&names) {
            snapshot
                .violations
                .push(("lost", format!("lost resource: {lost} no longer exists")));
        }
        for extra in names.difference(expected) {
            snapshot
                .violations
                .push(("unexpected", format!("unexpected resource: {extra}")));
        }
    }
    for r in &resources {
        let name = r.name_any();
        let Some(status) = &r.status else {
            snapshot
                .violations
                .push(("no-status", format!("lost status: {name} has none")));
            continue;
        };
        let worker = status.assigned_worker.clone();
        snapshot.assigned.insert(name.clone(), worker.clone());
        // Suspended, finished (succeeded or failed for good: unassigned until its spec
        // changes), or backing off after a failed run (until `retryAt`): on no worker.
        if r.spec.suspend
            || status.succeeded(r.metadata.generation)
            || status.failed_for_good(r.metadata.generation)
            || status.phase == Some(Phase::BackOff)
        {
            continue;
        }
        match &worker {
            Some(w) if !snapshot.ready.contains(w) => {
                snapshot.violations.push((
                    "on-unready-worker",
                    format!("{name} is assigned to {w}, which is gone or not ready"),
                ));
            }
            None if !snapshot.ready.is_empty() => snapshot.violations.push((
                "unassigned",
                format!(
                    "{name} is unassigned ({:?}) while {} worker(s) are ready",
                    status.phase.unwrap_or(Phase::Pending),
                    snapshot.ready.len()
                ),
            )),
            _ => {}
        }
    }
    snapshot
}

/// The invariants judge over a scenario: how many settle points were reached (each a full check of
/// every invariant over every resource, once the faults of a cycle were injected), how many
/// resources those checks covered, and what was still violated when a settle point gave up.
pub struct Settler {
    pub verdict: Verdict,
    resources_checked: usize,
    /// Checks that still found something before the state settled (expected while the system
    /// recovers from a fault; counted, not judged).
    transient: usize,
}

impl Default for Settler {
    fn default() -> Self {
        Self {
            verdict: Verdict::new("invariants"),
            resources_checked: 0,
            transient: 0,
        }
    }
}

impl Settler {
    /// Waits (checking every `poll`) until the invariants hold in `ns`; returns how long that
    /// took, or `None` after recording what was still violated after `bound` (the scenario then
    /// stops and fails on the verdict).
    pub async fn settle(
        &mut self,
        client: &Client,
        ns: &str,
        expected: &BTreeSet<String>,
        bound: Duration,
        poll: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let snapshot = check(client, ns, Some(expected)).await;
            if snapshot.violations.is_empty() {
                self.verdict.judged += 1;
                self.resources_checked += snapshot.assigned.len();
                return Some(started.elapsed());
            }
            if started.elapsed() >= bound {
                self.verdict.judged += 1;
                for (kind, what) in snapshot.violations {
                    self.verdict
                        .violation(kind, format!("after {bound:?}: {what}"));
                }
                return None;
            }
            self.transient += 1;
            tokio::time::sleep(poll).await;
        }
    }

    /// The verdict with its figures: resources covered by the settle checks, and the checks that
    /// found the system still recovering.
    pub fn finish(mut self) -> Verdict {
        self.verdict
            .count("resource_checks", self.resources_checked);
        self.verdict.count("recovering_polls", self.transient);
        self.verdict
    }

    /// Adds another shard's settler.
    pub fn absorb(&mut self, other: Settler) {
        self.resources_checked += other.resources_checked;
        self.transient += other.transient;
        self.verdict.absorb(other.verdict);
    }
}

/// One reading of the Lease: its holder, seen at some instant between `sent` and `answered`.
#[derive(Clone, Debug)]
struct Sample {
    sent: jiff::Timestamp,
    answered: jiff::Timestamp,
    holder: Option<String>,
}

type Samples = Arc<Mutex<Vec<Sample>>>;

/// How far before a logged write the writer must be seen holding the Lease: the write landed
/// before its response was logged, and a leader's writes land within its term, so the record
/// named it then. One second covers the response's way back to the log on a loaded machine; it is
/// shorter than the pause the scenarios hold a leader for past the next leader's election, so a
/// resumed leader's write would fall outside it.
pub const WRITE_LOOKBACK: Duration = Duration::from_secs(1);
/// How far after a logged write the writer may still be seen holding the Lease (the next reading).
pub const WRITE_LOOKAHEAD: Duration = Duration::from_millis(500);

/// The holder of a leader-election Lease over time, read every 50 ms, to judge writes against.
pub struct LeaseTimeline {
    samples: Samples,
    sampler: tokio::task::JoinHandle<()>,
}

impl LeaseTimeline {
    pub fn start(client: Client, ns: &str, lease: &'static str) -> Self {
        let samples = Samples::default();
        let leases = Api::<Lease>::namespaced(client, ns);
        let task = tokio::spawn({
            let samples = Arc::clone(&samples);
            async move {
                loop {
                    let sent = jiff::Timestamp::now();
                    if let Ok(l) = leases.get(lease).await {
                        samples.lock().unwrap().push(Sample {
                            sent,
                            answered: jiff::Timestamp::now(),
                            holder: l.spec.and_then(|s| s.holder_identity),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self {
            samples,
            sampler: task,
        }
    }

    /// Whether `who` was seen holding the Lease by a reading made within `before` before to
    /// `after` after `at`; `None` when no reading covers that window (before sampling started).
    fn held(
        samples: &[Sample],
        who: &str,
        at: jiff::Timestamp,
        before: Duration,
        after: Duration,
    ) -> Option<bool> {
        let from = at - jiff::SignedDuration::try_from(before).unwrap();
        let to = at + jiff::SignedDuration::try_from(after).unwrap();
        let mut window = samples
            .iter()
            .filter(|s| s.answered >= from && s.sent <= to)
            .peekable();
        window.peek()?;
        Some(window.any(|s| s.holder.as_deref() == Some(who)))
    }

    fn holders_around(samples: &[Sample], at: jiff::Timestamp) -> Vec<(String, Option<String>)> {
        let from = at - jiff::SignedDuration::from_secs(2);
        let to = at + jiff::SignedDuration::from_secs(1);
        samples
            .iter()
            .filter(|s| s.answered >= from && s.sent <= to)
            .map(|s| (s.answered.to_string(), s.holder.clone()))
            .collect()
    }

    /// Judge `leader-writes`: every placing status write a controller logged as written
    /// (`resource=... reason=...`, one line per successful write that changes a placement or a
    /// condition) must have been made while its writer held the Lease: a reading from
    /// [`WRITE_LOOKBACK`] before to [`WRITE_LOOKAHEAD`] after the log line names it. `logs`:
    /// (identity, log file) of every controller process that ran, killed ones included.
    pub fn judge_logs(&self, logs: &[(String, std::path::PathBuf)]) -> Verdict {
        let samples = self.samples.lock().unwrap();
        let mut verdict = Verdict::new("leader-writes");
        let mut before_sampling = 0;
        for (who, path) in logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for line in text.lines() {
                let Some(at) = logged_write(line) else {
                    continue;
                };
                match Self::held(&samples, who, at, WRITE_LOOKBACK, WRITE_LOOKAHEAD) {
                    None => before_sampling += 1,
                    Some(true) => verdict.judged += 1,
                    Some(false) => {
                        verdict.judged += 1;
                        verdict.violation(
                            "write-by-non-holder",
                            format!(
                                "{who} logged a write at {at} without holding the Lease; holders then: {:?}\n    {line}",
                                Self::holders_around(&samples, at)
                            ),
                        );
                    }
                }
            }
        }
        verdict.count("before_sampling", before_sampling);
        verdict.count("lease_readings", samples.len());
        verdict
    }

    /// Judge `leader-events`: every Assigned/Reassigned Event (the controller publishes one per
    /// placing status write, `Assigned` ones within a budget of 5/s after a burst of 50, and
    /// up to 2 s after the write) must come from a replica seen holding the Lease within 5 s
    /// before to 0.5 s after the Event. Coarser than [`LeaseTimeline::judge_logs`] (the Event's
    /// time is its publication's, not the write's) but independent of the controller's log.
    pub fn judge(&self, events: &[Event]) -> Verdict {
        let samples = self.samples.lock().unwrap();
        let mut verdict = Verdict::new("leader-events");
        for e in events
            .iter()
            .filter(|e| matches!(e.reason.as_deref(), Some("Assigned" | "Reassigned")))
        {
            let (Some(who), Some(at)) = (
                e.reporting_instance.as_deref(),
                e.event_time.as_ref().map(|t| t.0),
            ) else {
                continue;
            };
            match Self::held(
                &samples,
                who,
                at,
                Duration::from_secs(5),
                Duration::from_millis(500),
            ) {
                None => {}
                Some(held) => {
                    verdict.judged += 1;
                    if !held {
                        verdict.violation(
                            "event-by-non-holder",
                            format!(
                                "{who} published at {at} without holding the Lease; holders then: {:?}",
                                Self::holders_around(&samples, at)
                            ),
                        );
                    }
                }
            }
        }
        verdict
    }
}

/// The time of a successful placing write in a controller's text log: its line is
/// `<RFC 3339 time>  INFO crawler_operator::controller: <note> resource=<ns>/<name> reason=<Reason>`.
fn logged_write(line: &str) -> Option<jiff::Timestamp> {
    if !line.contains(" INFO crawler_operator::controller: ")
        || !line.contains(" resource=")
        || !line.contains(" reason=")
    {
        return None;
    }
    line.split_whitespace().next()?.parse().ok()
}

impl Drop for LeaseTimeline {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

//! The controller's in-memory view of one cluster: worker Pods and `CrawlerResources`, fed by
//! watches (apply / delete / reset), converted to domain structs on the way in.
//!
//! It owns two things nothing else may compute: the load of every worker, derived from the
//! resources' own assignments (plus decisions in flight), and the decision for one resource,
//! made and "assumed" under the same lock so that two reconciles running at once never see the
//! same stale load. Every method is synchronous and free of I/O: the reconciler takes the lock,
//! asks for a [`Plan`], releases the lock, and only then talks to the API server.

mod rebalance;
mod rules;
mod schedule;
mod status;
#[cfg(test)]
mod tests;
mod workers;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
};
use kube::ResourceExt;

use crawler_core::{
    self as scheduler, Affinity, Hold, Holder, HostHolders, InvalidSelector, Load, Policy,
    Readiness, Request, Requirement, WorkerSelector,
};

use crate::crd::{CONDITION_ASSIGNED, CrawlerResource, CrawlerResourceStatus, Phase};

use self::{
    rules::{RulesCheck, keep_off_workers, set_rules_condition},
    schedule::Step,
    status::{
        address, controller_fields, lost_reason, set_assigned_condition, set_unassigned, stop_note,
    },
    workers::{
        Heartbeat, WorkerEntry, effective_readiness, triggers_for_worker_change, worker_from_pod,
    },
};
pub use self::{
    status::Reason,
    workers::{CAPACITY_ANNOTATION, DueHeartbeat},
};

/// Where a resource counted, and for how much: compared before and after a change to tell
/// whether it freed room.
struct Counted {
    worker: Option<String>,
    weight: Load,
}

impl Counted {
    fn of(entry: &ResourceEntry) -> Self {
        Self {
            worker: entry.effective_worker().map(str::to_owned),
            weight: entry.weight,
        }
    }
}

/// A resource, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A resource as the controller needs it: its placement inputs and the status it last showed.
#[derive(Clone, Debug)]
struct ResourceEntry {
    /// `metadata.uid`: an object created again under the same name is another task.
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    weight: Load,
    /// What placement needs; an error message when `spec.workerSelector` cannot be parsed.
    request: Result<Request, String>,
    /// The hosts the task crawls (`spec.allowedHosts`, else its seeds' hosts), as the worker's
    /// per-host gate keys them: lower case, no port, sorted, each once. Held on its effective
    /// worker in [`Namespace::hosts`].
    hosts: Vec<String>,
    suspend: bool,
    /// `spec.rules` compiled (once per generation).
    rules: RulesCheck,
    status: CrawlerResourceStatus,
    /// (worker, assignment) whose release the worker confirmed in `status.progress`
    /// (`released: true`): that worker stopped the task and never runs that assignment again.
    released_by: Option<(String, i64)>,
    /// The assigned worker reported that the run of the current assignment, crawling the
    /// current spec, completed ([`CrawlerResourceStatus::completed_run`]): the next plan ends
    /// the crawl (phase `Succeeded`).
    completed: Option<CompletedRun>,
    /// The assigned worker reported that the run of the current assignment, crawling the
    /// current spec, failed ([`CrawlerResourceStatus::failed_run`]): the next plan counts it
    /// and unassigns the crawl (phase `BackOff`, or `Failed` for good).
    failed: Option<FailedRun>,
    /// `spec.backoffLimit`: failed runs retried before the crawl is `Failed` for good.
    backoff_limit: u32,
    /// `spec.ttlSecondsAfterFinished`.
    ttl: Option<u32>,
    /// `spec.schedule` and its fields, or what is wrong with them; `None`: the crawl runs once.
    schedule: Option<Result<schedule::Timing, String>>,
    /// The TTL's deletion was handed to the controller ([`Index::expired`]); not again unless it
    /// reports it failed ([`Index::expiry_failed`]).
    expiring: bool,
    /// A move that something asked for ([`Index::move_off`]); kept while the resource still
    /// has that assignment.
    move_requested: Option<MoveRequest>,
    /// A decision made and being (or just) written, counted in the loads until the watch shows it.
    assumed: Option<Assumption>,
}

/// A move off `from` of its assignment `assignment`, asked for `why`.
#[derive(Clone, Debug)]
struct MoveRequest {
    from: String,
    assignment: Option<i64>,
    why: String,
    /// The reason of the placement that completes it: `Reassigned`, or `Rebalanced` for the
    /// rebalance's moves (so people, and the metrics, can tell them apart).
    reason: Reason,
}

impl MoveRequest {
    /// Whether it still applies to a resource with this status.
    fn applies_to(&self, status: &CrawlerResourceStatus) -> bool {
        status.assigned_worker.as_deref() == Some(self.from.as_str())
            && status.assignments == self.assignment
    }
}

/// A run that failed, as its worker reported it.
#[derive(Clone, Debug)]
struct FailedRun {
    worker: String,
    assignment: i64,
    /// It exceeded `spec.activeDeadlineSeconds` (reason `DeadlineExceeded`): not retried.
    deadline: bool,
    message: String,
}

/// A run that completed, as its worker reported it.
#[derive(Clone, Debug)]
struct CompletedRun {
    worker: String,
    assignment: i64,
    generation: i64,
    pages: i64,
}

#[derive(Clone, Debug)]
struct Assumption {
    worker: String,
    /// The resourceVersion the decision was made on. The write is fenced on it, so any other
    /// version the watch delivers is our write, a later one, or proof that our write will be
    /// refused: either way the assumption is settled.
    decided_on: Option<String>,
    /// resourceVersion the write returned; `None` while the write is in flight.
    written_version: Option<String>,
}

impl ResourceEntry {
    /// The worker this resource counts against: the assumed decision, else the observed one.
    fn effective_worker(&self) -> Option<&str> {
        match &self.assumed {
            Some(a) => Some(&a.worker),
            None => self.status.assigned_worker.as_deref(),
        }
    }

    /// Whether the crawl of the current spec is over (phase `Succeeded` for this generation):
    /// it counts on no worker, waits for none, and is placed again only once its spec changes.
    ///
    /// A scheduled crawl is done between its runs, whatever its spec: only a firing runs it again.
    fn done(&self) -> bool {
        if matches!(self.schedule, Some(Ok(_))) {
            return schedule::between_runs(&self.status);
        }
        self.status.succeeded(self.generation) || self.status.failed_for_good(self.generation)
    }

    /// Whether the crawl waits out a back-off after a failed run of the current spec at `now`.
    fn backing_off(&self, now: Timestamp) -> bool {
        self.status.phase == Some(Phase::BackOff)
            && self.status.observed_generation == self.generation
            && self.status.retry_at.as_ref().is_some_and(|t| t.0 > now)
    }

    /// When the crawl finished (succeeded, or failed for good), for `ttlSecondsAfterFinished`.
    /// A scheduled crawl never finishes for good (the CRD refuses a TTL with a schedule).
    fn finished_at(&self) -> Option<Timestamp> {
        if self.schedule.is_some() {
            None
        } else if self.status.succeeded(self.generation) {
            self.status.completed_at.as_ref().map(|t| t.0)
        } else if self.status.failed_for_good(self.generation) {
            self.status.failed_at.as_ref().map(|t| t.0)
        } else {
            None
        }
    }
}

/// A deleted resource whose task its worker may still be running (its view of its assignments
/// can lag the deletion by up to its watch's `stale_after`): an object created again under the
/// same name is not placed until `hold` after the deletion was seen, or until that worker's
/// heartbeat stops being alive.
#[derive(Clone, Debug)]
struct Tombstone {
    /// The deleted object's uid: only another object is held back.
    uid: Option<String>,
    worker: String,
    /// When the deletion was seen, stamped by the next [`Index::successors_due`] (a tick: later
    /// than the event by at most one tick, which only lengthens the hold).
    seen: Option<Instant>,
    /// [`successor_hold`] for that worker.
    hold: Duration,
}

/// How long after a deletion was seen an object created again under the same name waits before
/// it is placed, when the deleted one was assigned to a worker that may still run it
/// ([`crate::heartbeat::successor_hold`] of the worker's heartbeat duration, as its Lease says;
/// for a worker whose Lease is not known, the longest any worker needs: 19 s).
fn successor_hold(heartbeat: Option<&workers::Heartbeat>) -> Duration {
    crate::heartbeat::successor_hold(heartbeat.map_or(Duration::MAX, |h| h.duration))
}

#[derive(Default, Debug)]
struct Namespace {
    /// Its name (holds name their namespace: a host's budget is the installation's).
    name: String,
    workers: BTreeMap<String, WorkerEntry>,
    /// Heartbeats by worker Pod name (a worker without one is judged by its Pod alone), ghosts
    /// included (see [`workers::LeaseSeen`]).
    heartbeats: BTreeMap<String, Heartbeat>,
    /// Worker Pods a read found without a heartbeat Lease after the wait: judged by their Pod
    /// alone, no unseen ghost again (forgotten with the Pod, or when a Lease appears).
    no_lease: BTreeSet<String>,
    /// Deleted resources whose successor under the same name is held back, by name.
    tombstones: BTreeMap<String, Tombstone>,
    resources: BTreeMap<String, ResourceEntry>,
    /// Sum of the weights of the resources whose effective worker is the key. Maintained only by
    /// `put_resource` / `remove_resource`, so it always equals that sum (see `check_loads`).
    loads: HashMap<String, Load>,
    /// Some worker's load went down since [`Index::room_freed`] last looked (a resource left it,
    /// moved off it, got lighter, or a decision counted on it was forgotten): the resources
    /// waiting for room may fit now. Set where loads change, so no path that frees room can
    /// forget to offer it.
    room_freed: bool,
    /// For every host, the workers of this namespace whose tasks crawl it (a task holds its
    /// hosts on its effective worker, so also while it is being placed or released there).
    /// Maintained with the loads, by `take_resource` / `insert_resource`.
    hosts: HostHolders,
    /// (host, worker) no longer held since `take_resource`, unless `insert_resource` holds it
    /// again (a status update of a task that stays where it is frees nothing).
    unheld: Vec<(String, String)>,
    /// Some host stopped being crawled on some worker since [`Index::room_freed`] last looked:
    /// with host affinity, a task waiting because of it (in any namespace) may go now.
    hosts_freed: bool,
}

/// Everything the controller knows; see the module documentation.
#[derive(Default, Debug)]
pub struct Index {
    namespaces: HashMap<String, Namespace>,
    workers_synced: bool,
    resources_synced: bool,
    /// The heartbeat watch has listed once: before that a live worker's heartbeat is unknown,
    /// and a move off it would not wait for the handoff.
    heartbeats_synced: bool,
    /// When the heartbeat watch last failed: renewals made while it was down were not seen, so no
    /// heartbeat expires until its duration has passed since then as well.
    heartbeats_unseen_at: Option<Instant>,
    /// When the heartbeat watch first listed: the unseen wait counts from here.
    heartbeats_listed_at: Option<Instant>,
    /// See [`Index::with_unseen_heartbeat_wait`]; `None`: a worker without a Lease is judged by
    /// its Pod alone at once.
    unseen_wait: Option<Duration>,
    /// The longest heartbeat duration seen: the unseen wait is never shorter.
    longest_heartbeat: Duration,
    /// The back-off between a failed run and the next (see [`RetryBackoff`]).
    retry_backoff: RetryBackoff,
    /// Host affinity (`--host-affinity`): a task goes only where the tasks sharing a host
    /// with it run ([`crawler_core::HostHolders::affinity`]).
    host_affinity: HostAffinity,
}

/// Whether placement partitions by host (see [`Index::with_host_affinity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HostAffinity {
    /// By load alone: the per-host budget holds per worker.
    #[default]
    Off,
    /// Tasks that share a host run on one worker: the budget holds for the installation.
    On,
}

/// How long a crawl whose run failed waits before it is placed again: `base` after the first
/// failure, doubling, at most `max` (a Job's: 10 s, 20 s, 40 s, ... at most 6 min). The
/// controller's `--backoff-base` and `--backoff-max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBackoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(360),
        }
    }
}

impl RetryBackoff {
    /// The wait after the `failures`-th failed run (1 for the first), from backon's exponential
    /// schedule (no jitter: the time is written into `status.retryAt`, and a decision must be
    /// the same whoever makes it).
    pub fn delay(self, failures: u32) -> Duration {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A resource whose `ttlSecondsAfterFinished` has passed: the controller deletes it, with these
/// preconditions (a spec changed since, a run again, is a new object version: refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub key: Key,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// See [`Index::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    /// (namespace, worker, load, capacity)
    pub workers: Vec<(String, String, Load, Option<Load>)>,
    pub resources: usize,
    pub unschedulable: usize,
}

/// What the reconciler should do for one resource.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// The status already says what it should: write nothing.
    Nothing,
    /// The resource is unknown (deleted) or a write of ours is not yet visible: wait for the watch.
    Wait,
    /// Write this status (the controller's fields only), fenced on `resource_version`.
    Write(Box<Write>),
}

#[derive(Debug, PartialEq)]
pub struct Write {
    pub key: Key,
    pub resource_version: String,
    pub status: CrawlerResourceStatus,
    /// Whether this write places the resource (so a failed write must forget the assumption).
    pub assumes: Option<String>,
    /// The Event to publish once the write succeeded.
    pub event: Option<PlanEvent>,
}

/// An Event for `kubectl describe`: (type Normal/Warning, reason, note).
#[derive(Debug, PartialEq, Eq)]
pub struct PlanEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
}

/// Where a move off a worker stands (see [`Namespace::handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handoff {
    /// The resource is not being released.
    None,
    /// Released on its worker, which is alive and has not confirmed the stop yet.
    Waiting,
    /// The old worker no longer runs it: place it (or unassign it) now.
    Done(HandedOff),
}

/// How a handoff completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandedOff {
    /// The old worker reported the stop of that very assignment (`progress.released`).
    Confirmed,
    /// The old worker's heartbeat lapsed (confirmed by a read) or was released: it stopped
    /// every task at least half a heartbeat duration before.
    Lapsed,
    /// The old worker's heartbeat Lease is gone, or was never seen, and a read after the wait
    /// found none: it renewed nothing for longer than its tasks may run without a renewal.
    NoHeartbeat,
}

impl HandedOff {
    /// Why the resource left, for the `Reassigned` note (`None`: the reason the worker lost it,
    /// as for a one-phase move).
    fn describe(self) -> Option<&'static str> {
        match self {
            Self::Confirmed => Some("it confirmed the stop"),
            Self::Lapsed => Some("its heartbeat lapsed or was released"),
            Self::NoHeartbeat => None,
        }
    }
}

/// Settings that shape decisions.
pub struct PlanContext<'a> {
    pub policy: &'a dyn Policy,
    /// Port appended to a worker's podIP in `status.assignedAddress`.
    pub worker_port: u16,
    pub now: Timestamp,
}

impl Index {
    /// The controller's index: a worker Pod without a heartbeat Lease is not taken for one
    /// without a heartbeat until `wait` (or the longest heartbeat duration seen, if longer) after
    /// the heartbeat watch first listed, confirmed by a read that finds no Lease. A worker that
    /// is alive renews (and so re-creates its Lease) every fifth of its duration, and runs tasks
    /// only half a duration past its last successful renewal: a Lease deleted before this
    /// controller started (it never saw it) must not make a move off that worker one-phase.
    /// `wait` covers workers whose heartbeat duration is up to twice as long.
    pub fn with_unseen_heartbeat_wait(wait: Duration) -> Self {
        Self {
            unseen_wait: Some(wait),
            ..Self::default()
        }
    }

    /// The back-off between a failed run and the next (default: a Job's).
    #[must_use]
    pub fn with_retry_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Host affinity on or off (default off; the controller's `--host-affinity`, default on).
    #[must_use]
    pub fn with_host_affinity(mut self, on: bool) -> Self {
        self.host_affinity = if on {
            HostAffinity::On
        } else {
            HostAffinity::Off
        };
        self
    }

    // === Pods ===

    /// A worker Pod was added or changed. Returns the resources to reconcile.
    pub fn apply_pod(&mut self, pod: &Pod) -> Vec<Key> {
        let Some(ns_name) = pod.namespace() else {
            return Vec::new();
        };
        let ghost = self.unseen_ghost();
        let mut entry = worker_from_pod(pod);
        let ns = self
            .namespaces
            .entry(ns_name.clone())
            .or_insert_with(|| Namespace::named(&ns_name));
        if let Some(ghost) = ghost
            && !ns.heartbeats.contains_key(&entry.worker.name)
            && !ns.no_lease.contains(&entry.worker.name)
        {
            ns.heartbeats.insert(entry.worker.name.clone(), ghost);
        }
        entry.worker.load = ns.loads.get(&entry.worker.name).copied().unwrap_or(0);
        entry.worker.readiness =
            effective_readiness(entry.pod_readiness, ns.heartbeats.get(&entry.worker.name));
        let before = ns.workers.insert(entry.worker.name.clone(), entry);
        let after = &ns.workers[&pod.name_any()];
        triggers_for_worker_change(&ns_name, ns, before.as_ref(), Some(after))
    }

    /// A worker Pod is gone. Returns the resources to reconcile.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Vec<Key> {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        let before = ns.workers.remove(name);
        ns.no_lease.remove(name);
        triggers_for_worker_change(namespace, ns, before.as_ref(), None)
    }

    /// The Pod watch (re)listed: replace every worker, so a Pod deleted while the watch was down is
    /// removed too. Returns the resources to reconcile.
    #[cfg(any(test, feature = "bench"))]
    pub fn reset_pods(&mut self, pods: &[Pod]) -> Vec<Key> {
        let mut keys: Vec<Key> = pods.iter().flat_map(|p| self.apply_pod(p)).collect();
        keys.extend(self.finish_pod_list(&listed(pods)));
        keys
    }

    /// The end of a Pod (re)list whose Pods were applied one by one as they arrived: remove the
    /// workers it did not list. `listed`: (namespace, name) of every listed Pod.
    pub fn finish_pod_list(&mut self, listed: &HashSet<(String, String)>) -> Vec<Key> {
        let keys = self.retain(
            listed,
            |ns| ns.workers.keys().cloned().collect(),
            Self::delete_pod,
        );
        self.workers_synced = true;
        keys
    }

    /// Deletes what the index holds but a list did not show.
    fn retain(
        &mut self,
        listed: &HashSet<(String, String)>,
        names: fn(&Namespace) -> Vec<String>,
        delete: fn(&mut Self, &str, &str) -> Vec<Key>,
    ) -> Vec<Key> {
        let gone: Vec<(String, String)> = self
            .namespaces
            .iter()
            .flat_map(|(ns, n)| names(n).into_iter().map(move |name| (ns.clone(), name)))
            .filter(|key| !listed.contains(key))
            .collect();
        let mut keys = Vec::new();
        for (ns, name) in gone {
            keys.extend(delete(self, &ns, &name));
        }
        keys
    }

    // === CrawlerResources ===

    /// A resource was added or changed (spec or status). Returns the resources to reconcile.
    pub fn apply_resource(&mut self, resource: &CrawlerResource) -> Vec<Key> {
        let Some(ns_name) = resource.namespace() else {
            return Vec::new();
        };
        let name = resource.name_any();
        let ns = self
            .namespaces
            .entry(ns_name.clone())
            .or_insert_with(|| Namespace::named(&ns_name));
        // Another object under the same name (a relist after a delete and a create): the old
        // one is gone, whether or not its deletion was seen; nothing of it carries over.
        let replaced = ns
            .resources
            .get(&name)
            .filter(|p| p.uid.is_some() && p.uid != resource.metadata.uid)
            .cloned();
        if let Some(old) = &replaced {
            ns.bury(&ns_name, &name, old);
            ns.remove_resource(&name);
        }
        let previous = ns.resources.get(&name);
        // Only the fields the controller writes: the worker's progress is not ours to keep.
        let status = resource
            .status
            .as_ref()
            .map(controller_fields)
            .unwrap_or_default();
        // Keep an assumption until the watch shows our write (or anything placing it there).
        // The watch may show our write before the write's response arrives: the worker it names
        // confirms it as well as the version does. And a relist (after a 410) may skip our
        // write's version altogether, showing only a newer one that names another worker: any
        // version other than the one the decision was made on settles it too (the write was
        // fenced on that version), or the resource would wait forever, its weight counted on
        // the wrong worker.
        let assumed = previous.and_then(|p| p.assumed.clone()).filter(|a| {
            let confirmed = status.assigned_worker.as_deref() == Some(&a.worker)
                || (a.written_version.is_some()
                    && a.written_version == resource.metadata.resource_version)
                || a.decided_on != resource.metadata.resource_version;
            !confirmed
        });
        let old_weight = previous.map(|p| p.weight);
        let released_by = resource
            .status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .filter(|p| p.released)
            .map(|p| (p.worker.clone(), p.assignment));
        let move_requested = previous
            .and_then(|p| p.move_requested.clone())
            .filter(|m| m.applies_to(&status));
        let completed = resource
            .status
            .as_ref()
            .and_then(|s| s.completed_run(resource.metadata.generation))
            .and_then(|p| {
                Some(CompletedRun {
                    worker: p.worker.clone(),
                    assignment: p.assignment,
                    generation: p.generation?,
                    pages: p.pages_fetched,
                })
            });
        let failed = resource
            .status
            .as_ref()
            .and_then(|s| s.failed_run(resource.metadata.generation))
            .map(|p| FailedRun {
                worker: p.worker.clone(),
                assignment: p.assignment,
                deadline: p.reason.as_deref() == Some(DEADLINE_EXCEEDED),
                message: p.message.clone().unwrap_or_default(),
            });
        let entry = ResourceEntry {
            uid: resource.metadata.uid.clone(),
            resource_version: resource.metadata.resource_version.clone(),
            generation: resource.metadata.generation,
            weight: Load::from(resource.spec.load_units()),
            request: request_for(resource),
            hosts: hosts_of(&resource.spec),
            suspend: resource.spec.suspend,
            rules: rules::check(resource, previous.map(|p| (p.generation, &p.rules))),
            status,
            released_by,
            completed,
            failed,
            backoff_limit: u32::try_from(resource.spec.backoff_limit).unwrap_or(0),
            ttl: resource
                .spec
                .ttl_seconds_after_finished
                .and_then(|t| u32::try_from(t).ok()),
            schedule: schedule::timing_for(resource),
            expiring: previous.is_some_and(|p| {
                p.expiring && p.resource_version == resource.metadata.resource_version
            }),
            move_requested,
            assumed,
        };
        let lighter =
            old_weight.is_some_and(|w| w > entry.weight) || entry.suspend || replaced.is_some();
        ns.put_resource(name.clone(), entry);
        let mut keys = vec![Key::new(ns_name.clone(), name)];
        if lighter {
            keys.extend(ns.waiting(&ns_name));
        }
        keys
    }

    /// A resource is gone. Returns those that may now fit where it was.
    pub fn delete_resource(&mut self, namespace: &str, name: &str) -> Vec<Key> {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(gone) = ns.remove_resource(name) else {
            return Vec::new();
        };
        ns.bury(namespace, name, &gone);
        ns.waiting(namespace)
    }

    /// Ends the holds on successors that are due (`now`: the tick's time; a hold not yet stamped
    /// starts now). Returns the successors to reconcile.
    pub fn successors_due(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        for (ns_name, ns) in &mut self.namespaces {
            let mut ended = Vec::new();
            ns.tombstones.retain(|name, t| {
                let seen = *t.seen.get_or_insert(now);
                let due = now >= seen + t.hold;
                if due {
                    ended.push(name.clone());
                }
                !due
            });
            keys.extend(
                ended
                    .into_iter()
                    .filter(|name| ns.resources.contains_key(name))
                    .map(|name| Key::new(ns_name.clone(), name)),
            );
        }
        keys
    }

    /// The resources waiting for room in every namespace where some worker's load went down since
    /// the last call (see [`Namespace::room_freed`]): the controller queues them, so room freed by
    /// a deletion, a move, a handoff, a rebalance, a lighter spec or a forgotten decision is
    /// offered at once to what waits for it.
    pub fn room_freed(&mut self) -> Vec<Key> {
        let mut keys = Vec::new();
        // A host freed in one namespace may let a task of any namespace go.
        let mut hosts_freed = false;
        for ns in self.namespaces.values_mut() {
            hosts_freed |= std::mem::take(&mut ns.hosts_freed);
        }
        let hosts_freed = hosts_freed && self.host_affinity == HostAffinity::On;
        for (ns_name, ns) in &mut self.namespaces {
            if std::mem::take(&mut ns.room_freed) || hosts_freed {
                keys.extend(ns.waiting(ns_name));
            }
        }
        keys
    }

    /// Crawls a wall-clock time in their status calls for by `now`: a back-off after a failed run
    /// ended (phase `BackOff`, `retryAt` passed), or a schedule fires (`nextScheduleTime`
    /// passed). The controller's tick queues them; their plan places them again, or acts on
    /// the firing.
    pub fn retries_due(&self, now: Timestamp) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns_name, ns)| {
                ns.resources
                    .iter()
                    .filter(move |(_, r)| {
                        let retry = r.status.phase == Some(Phase::BackOff) && !r.backing_off(now);
                        let fires = r
                            .status
                            .next_schedule_time
                            .as_ref()
                            .is_some_and(|t| t.0 <= now);
                        (retry || fires) && r.assumed.is_none()
                    })
                    .map(|(name, _)| Key::new(ns_name.clone(), name.clone()))
            })
            .collect()
    }

    /// Finished crawls (succeeded, or failed for good) whose `spec.ttlSecondsAfterFinished` has
    /// passed by `now`, each handed out once: the controller deletes them (and reports a
    /// deletion that failed with [`Index::expiry_failed`], so it is tried again).
    pub fn expired(&mut self, now: Timestamp) -> Vec<Expired> {
        let mut due = Vec::new();
        for (ns_name, ns) in &mut self.namespaces {
            for (name, r) in &mut ns.resources {
                let Some((ttl, at)) = r.ttl.zip(r.finished_at()) else {
                    continue;
                };
                if r.expiring || at + Duration::from_secs(u64::from(ttl)) > now {
                    continue;
                }
                r.expiring = true;
                due.push(Expired {
                    key: Key::new(ns_name.clone(), name.clone()),
                    uid: r.uid.clone(),
                    resource_version: r.resource_version.clone(),
                });
            }
        }
        due
    }

    /// The deletion of an expired resource failed: hand it out again.
    pub fn expiry_failed(&mut self, key: &Key) {
        if let Some(entry) = self.entry_mut(key) {
            entry.expiring = false;
        }
    }

    /// Every resource waiting for a worker, in every namespace: the controller's periodic safety
    /// resync queues them (planning one whose status is right writes nothing).
    pub fn all_waiting(&self) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns_name, ns)| ns.waiting(ns_name))
            .collect()
    }

    /// The resource watch (re)listed: replace every resource. Returns the resources to reconcile.
    #[cfg(any(test, feature = "bench"))]
    pub fn reset_resources(&mut self, resources: &[CrawlerResource]) -> Vec<Key> {
        let mut keys: Vec<Key> = resources
            .iter()
            .flat_map(|r| self.apply_resource(r))
            .collect();
        keys.extend(self.finish_resource_list(&listed(resources)));
        keys
    }

    /// The end of a resource (re)list applied one by one as it arrived (so the list is never held
    /// whole in memory): remove the resources it did not list.
    pub fn finish_resource_list(&mut self, listed: &HashSet<(String, String)>) -> Vec<Key> {
        let keys = self.retain(
            listed,
            |ns| ns.resources.keys().cloned().collect(),
            Self::delete_resource,
        );
        self.resources_synced = true;
        keys
    }

    /// The Pod, resource and heartbeat watches have listed once: decisions before this could
    /// mistake an unlisted worker for a lost one and move resources that are well placed, or
    /// take a live worker's unlisted heartbeat for none and move a task without a handoff.
    pub fn synced(&self) -> bool {
        self.workers_synced && self.resources_synced && self.heartbeats_synced
    }

    /// Moves `key` off `worker` through the handoff, whatever asks for it (a rebalance): the
    /// resource is released there (phase `Releasing` while that worker's heartbeat is alive) and
    /// placed again, least loaded at that moment, once the worker confirmed the stop or its
    /// heartbeat lapsed. `why` is said in the condition and the Event. Returns the keys to
    /// reconcile (none when the resource is not on `worker`, or is already being moved).
    pub fn move_off(&mut self, key: &Key, worker: &str, why: &str) -> Vec<Key> {
        self.request_move(key, worker, why, Reason::Reassigned)
    }

    /// [`Index::move_off`], with the reason its completing placement gives.
    fn request_move(&mut self, key: &Key, worker: &str, why: &str, reason: Reason) -> Vec<Key> {
        let Some(entry) = self.entry_mut(key) else {
            return Vec::new();
        };
        if entry.status.assigned_worker.as_deref() != Some(worker)
            || entry.status.phase == Some(Phase::Releasing)
            || entry.assumed.is_some()
        {
            return Vec::new();
        }
        entry.move_requested = Some(MoveRequest {
            from: worker.to_owned(),
            assignment: entry.status.assignments,
            why: why.to_owned(),
            reason,
        });
        vec![key.clone()]
    }

    /// Forgets every move asked for and not yet under way (on losing leadership): a move is
    /// asked for by this term's rebalance, within this term's budget; a later term decides its
    /// own. A move already under way (phase `Releasing`) is in status, not here, and completes.
    pub fn forget_move_requests(&mut self) -> usize {
        let mut forgotten = 0;
        for ns in self.namespaces.values_mut() {
            for entry in ns.resources.values_mut() {
                if entry.move_requested.take().is_some() {
                    forgotten += 1;
                }
            }
        }
        forgotten
    }

    /// Every resource known, for a full pass (on becoming leader).
    pub fn all_keys(&self) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| n.resources.keys().map(|r| Key::new(ns.clone(), r.clone())))
            .collect()
    }

    /// Numbers for the metrics: every worker's load and capacity, resources, unschedulable ones.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for (ns_name, ns) in &self.namespaces {
            stats.resources += ns.resources.len();
            stats.unschedulable += ns
                .resources
                .values()
                .filter(|r| r.status.phase == Some(Phase::Unschedulable))
                .count();
            stats.workers.extend(ns.workers.values().map(|w| {
                (
                    ns_name.clone(),
                    w.worker.name.clone(),
                    w.worker.load,
                    w.worker.capacity,
                )
            }));
        }
        stats
    }

    /// Load of a worker as decisions see it (for tests, metrics and diagnostics).
    pub fn load(&self, namespace: &str, worker: &str) -> Load {
        self.namespaces
            .get(namespace)
            .and_then(|n| n.loads.get(worker).copied())
            .unwrap_or(0)
    }

    // === Decisions ===

    /// Decide what `key`'s status should be and, if that places it, assume the decision (count
    /// its weight on the chosen worker) before returning, all under the caller's lock.
    #[allow(clippy::too_many_lines)] // one decision read top to bottom, a branch per case
    pub fn plan(&mut self, key: &Key, ctx: &PlanContext<'_>) -> Plan {
        let (affinity, host_conflict) = self.host_affinity(key);
        let Some(ns) = self.namespaces.get_mut(&key.namespace) else {
            return Plan::Wait;
        };
        let Some(entry) = ns.resources.get(&key.name) else {
            return Plan::Wait;
        };
        if entry.assumed.is_some() {
            // Our last write for it is in flight or not yet seen: deciding again now would decide
            // on a status we already changed.
            return Plan::Wait;
        }
        if ns
            .tombstones
            .get(&key.name)
            .is_some_and(|t| t.uid != entry.uid)
        {
            // An object deleted under this name may still run on its worker: this one waits
            // ([`successor_hold`]); `successors_due` queues it when the hold ends.
            return Plan::Wait;
        }
        let Some(resource_version) = entry.resource_version.clone() else {
            return Plan::Wait;
        };
        let current = &entry.status;
        let mut desired = controller_fields(current);
        if current.observed_generation.is_some() && current.observed_generation != entry.generation
        {
            // A new spec is a new crawl: its failures are counted afresh, and a back-off of
            // the old one does not hold it back.
            desired.failures = None;
            desired.retry_at = None;
        }
        desired.observed_generation = entry.generation;
        let mut event = None;
        let mut assumes = None;

        // A run of the current assignment and spec that completed (or failed) ends that run,
        // wherever its worker stands now (gone, lapsed, being moved off): it is over, not to be
        // moved: it succeeded, or it is counted and retried after a back-off as a new run.
        let finished = entry.completed.as_ref();
        let failed = entry.failed.as_ref().filter(|_| finished.is_none());
        let reported = finished.is_some() || failed.is_some();
        // A scheduled crawl: a firing may start a new run (see `schedule`).
        let (mut step, next_firing) = schedule::step(
            entry.schedule.as_ref(),
            entry.suspend,
            current,
            reported,
            ctx.now,
        );
        desired.next_schedule_time = next_firing.map(Time);
        // `Replace` of a run open on a live worker: released there first; the new run starts
        // once the worker confirmed the stop (or its heartbeat lapsed), as a move does.
        let replace_from = match step {
            Step::Start(at) if !schedule::between_runs(current) => match ns.handoff(entry) {
                Handoff::Waiting => return Plan::Nothing,
                Handoff::Done(_) => None,
                Handoff::None => current
                    .assigned_worker
                    .as_deref()
                    .filter(|w| ns.heartbeat_alive(w))
                    .map(|w| (w.to_owned(), at)),
            },
            _ => None,
        };
        if let Some((_, at)) = &replace_from {
            step = Step::Replacing(*at);
        }
        let starts = match step {
            Step::Start(at) => Some(at),
            _ => None,
        };
        if let Some(at) = starts {
            // A new crawl from the seeds: a new run number, its own failures.
            desired.run = Some(schedule::next_run(current));
            desired.last_schedule_time = Some(Time(at));
            desired.failures = None;
            desired.retry_at = None;
        } else if entry.schedule.is_none()
            && !reported
            && matches!(current.phase, Some(Phase::Succeeded | Phase::Failed))
            && !entry.done()
        {
            // A finished crawl whose spec changed runs again: a new run.
            desired.run = Some(schedule::next_run(current));
        }
        let schedule_invalid = matches!(step, Step::Invalid(_));
        let done = !reported && starts.is_none() && replace_from.is_none() && entry.done();
        let backing_off =
            !reported && starts.is_none() && replace_from.is_none() && entry.backing_off(ctx.now);
        // A handoff under way completes on the old worker's confirmation or its lapse; until
        // then nothing changes (a release is never taken back: assignment N is over).
        let handed_off = match ns.handoff(entry) {
            _ if reported || done || backing_off || replace_from.is_some() => None,
            Handoff::None => None,
            Handoff::Waiting => return Plan::Nothing,
            Handoff::Done(how) => Some(how),
        };
        let keep = current
            .assigned_worker
            .as_deref()
            .filter(|_| handed_off.is_none() && starts.is_none())
            .filter(|_| (entry.move_requested.as_ref()).is_none_or(|m| !m.applies_to(current)))
            .and_then(|w| ns.workers.get(w))
            .filter(|w| w.worker.readiness == Readiness::Ready)
            .filter(|w| matches!(&entry.request, Ok(r) if r.selector.matches(&w.worker.labels)));
        // Host affinity: of two groups that met (a spec change, affinity turned on, a worker
        // back from a lapse), the one on the worker whose name sorts first stays.
        let host_conflict = host_conflict.filter(|_| keep.is_some());
        let keep = keep.filter(|_| host_conflict.is_none());
        // Leaving a worker whose heartbeat is alive: release it there first (phase one).
        let leaves = keep.is_none()
            || entry.suspend
            || schedule_invalid
            || matches!(entry.rules, RulesCheck::Invalid(_))
            || entry.request.is_err();
        let release_from = current
            .assigned_worker
            .as_deref()
            .filter(|_| leaves && handed_off.is_none())
            .filter(|w| ns.heartbeat_alive(w));

        if let Some(run) = finished {
            event = Some(finish(
                &mut desired,
                current,
                run,
                again(entry.schedule.is_some()),
                ctx.now,
            ));
            if entry.schedule.is_some() {
                desired.last_successful_time = Some(Time(ctx.now));
            }
        } else if let Some(run) = failed {
            event = Some(fail(
                &mut desired,
                current,
                run,
                (entry.backoff_limit, self.retry_backoff),
                again(entry.schedule.is_some()),
                ctx.now,
            ));
        } else if done || backing_off {
            // Succeeded or failed for this spec, or waiting out a back-off (the tick queues it
            // at `retryAt`), or a scheduled crawl between runs (the tick queues it at
            // `nextScheduleTime`): nothing to place.
            if entry.schedule.is_some() && matches!(current.phase, None | Some(Phase::Pending)) {
                set_unassigned(&mut desired, Phase::Scheduled);
            }
        } else if let Some((worker, _)) = &replace_from {
            let note = format!(
                "moving off worker {worker} (a firing of spec.schedule replaces run {} with a new \
                 run, spec.concurrencyPolicy Replace): waiting for it to confirm the stop or for \
                 its heartbeat to lapse",
                current.run.unwrap_or(1)
            );
            event = Some(releasing(&mut desired, current, note, ctx.now));
        } else if let Some(worker) = release_from {
            let why = match &host_conflict {
                Some(hold) => shared_host(hold),
                None => ns.leave_reason(entry, worker),
            };
            let note = format!(
                "moving off worker {worker} ({why}): waiting for it to confirm the stop or for its \
                 heartbeat to lapse"
            );
            event = Some(releasing(&mut desired, current, note, ctx.now));
        } else if entry.suspend {
            set_unassigned(&mut desired, Phase::Suspended);
            set_assigned_condition(
                &mut desired,
                current,
                false,
                Reason::Suspended,
                "spec.suspend is true: the task does not run anywhere",
                ctx.now,
            );
            if current.phase != Some(Phase::Suspended) {
                event = Some(PlanEvent {
                    warning: false,
                    reason: Reason::Suspended,
                    note: stop_note(current, "spec.suspend is true"),
                });
            }
        } else if let Step::Invalid(message) = &step {
            event = keep_off_workers(
                &mut desired,
                current,
                (Reason::InvalidSchedule, message),
                ctx.now,
            );
        } else if let RulesCheck::Invalid(message) = &entry.rules {
            event = keep_off_workers(
                &mut desired,
                current,
                (Reason::InvalidRules, message),
                ctx.now,
            );
        } else if let Err(e) = &entry.request {
            set_unassigned(&mut desired, Phase::Unschedulable);
            let message =
                format!("spec.workerSelector is invalid: {e}; fix it with kubectl edit or apply");
            if current
                .condition(CONDITION_ASSIGNED)
                .is_none_or(|c| c.message != message)
            {
                event = Some(PlanEvent {
                    warning: true,
                    reason: Reason::InvalidWorkerSelector,
                    note: message.clone(),
                });
            }
            set_assigned_condition(
                &mut desired,
                current,
                false,
                Reason::InvalidWorkerSelector,
                &message,
                ctx.now,
            );
        } else if let Some(kept) = keep {
            desired.phase = Some(Phase::Assigned);
            desired.assigned_address = kept.ip.as_ref().map(|ip| address(ip, ctx.worker_port));
            if current
                .condition(CONDITION_ASSIGNED)
                .is_none_or(|c| c.status != "True")
            {
                let message = format!("running on worker {}", kept.worker.name);
                set_assigned_condition(
                    &mut desired,
                    current,
                    true,
                    Reason::Assigned,
                    &message,
                    ctx.now,
                );
            }
        } else if let Ok(request) = &entry.request {
            let asked = (entry.move_requested.as_ref()).filter(|m| m.applies_to(current));
            (event, assumes) = ns.place(
                entry.weight,
                request,
                current,
                (handed_off, asked, &affinity, host_conflict.as_ref()),
                &mut desired,
                ctx,
            );
        }

        if let (Some(at), Some(e)) = (starts, event.as_mut()) {
            // The placement's (or why there is none) Event says which run and firing it is.
            e.note = format!(
                "run {} (the firing at {at} of spec.schedule): {}",
                desired.run.unwrap_or(1),
                e.note
            );
        }
        let schedule_event = schedule::set_scheduled_condition(
            &mut desired,
            current,
            &step,
            entry.schedule.as_ref(),
            ctx.now,
        );
        event = event.or(schedule_event);
        set_rules_condition(&mut desired, current, &entry.rules, ctx.now);
        for condition in &mut desired.conditions {
            condition.observed_generation = desired.observed_generation;
        }
        if desired == controller_fields(current) {
            return Plan::Nothing;
        }
        if let Some(worker) = &assumes {
            ns.assume(&key.name, worker.clone());
        }
        Plan::Write(Box::new(Write {
            key: key.clone(),
            resource_version,
            status: desired,
            assumes,
            event,
        }))
    }

    /// The write of a decision succeeded; keep counting it until the watch shows that version.
    pub fn written(&mut self, key: &Key, resource_version: Option<String>) {
        let Some(entry) = self.entry_mut(key) else {
            return;
        };
        if entry.resource_version == resource_version {
            // The watch already delivered this very version: nothing left to wait for.
            entry.assumed = None;
        } else if let Some(a) = &mut entry.assumed {
            a.written_version = resource_version;
        }
    }

    /// The write of a decision failed: forget it, so the load is what the resources say again.
    pub fn forget(&mut self, key: &Key) {
        if let Some(ns) = self.namespaces.get_mut(&key.namespace) {
            ns.change_resource(&key.name, |entry| entry.assumed = None);
        }
    }

    /// Where host affinity lets `key` go (every namespace's holds count: a host's budget is the
    /// installation's), and, if it runs somewhere, a task on another worker that shares a host
    /// with it and stays there while this one moves ([`crawler_core::keeps_place`]). Free and
    /// none when host affinity is off.
    fn host_affinity(&self, key: &Key) -> (Affinity, Option<Hold>) {
        let Some(entry) = self
            .namespaces
            .get(&key.namespace)
            .and_then(|ns| ns.resources.get(&key.name))
            .filter(|e| self.host_affinity == HostAffinity::On && !e.hosts.is_empty())
        else {
            return (Affinity::Free, None);
        };
        let mut affinity = Affinity::Free;
        for ns in self.namespaces.values() {
            if ns.hosts.is_empty() {
                continue;
            }
            let here = ns
                .hosts
                .affinity(&key.namespace, &key.name, &entry.hosts, |h| {
                    ns.stopped(&h.worker)
                });
            affinity = match (affinity, here) {
                (a @ (Affinity::Split(..) | Affinity::OtherNamespace(_)), _)
                | (a, Affinity::Free) => a,
                (_, Affinity::Bound(h) | Affinity::Split(h, _)) if ns.name != key.namespace => {
                    Affinity::OtherNamespace(h)
                }
                (_, here) => here,
            };
        }
        let conflict = entry
            .status
            .assigned_worker
            .as_ref()
            .map(|w| Holder::new(key.namespace.clone(), w.clone()))
            .and_then(|own| {
                self.namespaces.values().find_map(|ns| {
                    scheduler::keeps_place(&ns.hosts, &own, &key.name, &entry.hosts, |h| {
                        ns.stopped(&h.worker)
                    })
                    .err()
                })
            });
        (affinity, conflict)
    }

    fn entry_mut(&mut self, key: &Key) -> Option<&mut ResourceEntry> {
        self.namespaces
            .get_mut(&key.namespace)?
            .resources
            .get_mut(&key.name)
    }

    /// Panics if a namespace's host holds differ from its resources' hosts on their effective
    /// workers (tests only).
    #[cfg(test)]
    pub fn check_hosts(&self) {
        for (ns_name, ns) in &self.namespaces {
            assert_eq!(&ns.name, ns_name, "a namespace knows its name");
            let mut expected = HostHolders::default();
            for (name, r) in &ns.resources {
                if let Some(w) = r.effective_worker() {
                    expected.hold(&Holder::new(ns.name.clone(), w), name, &r.hosts);
                }
            }
            assert_eq!(ns.hosts, expected, "host holds of namespace {}", ns.name);
        }
    }

    /// Panics if a load differs from the sum of the weights it is derived from (tests only).
    #[cfg(test)]
    pub fn check_loads(&self) {
        for (ns_name, ns) in &self.namespaces {
            let mut sums: HashMap<&str, Load> = HashMap::new();
            for r in ns.resources.values() {
                if let Some(w) = r.effective_worker() {
                    *sums.entry(w).or_default() += r.weight;
                }
            }
            for (w, load) in &ns.loads {
                assert_eq!(
                    sums.get(w.as_str()).copied().unwrap_or(0),
                    *load,
                    "load of {ns_name}/{w}"
                );
            }
            for (w, sum) in sums {
                assert_eq!(
                    ns.loads.get(w).copied().unwrap_or(0),
                    sum,
                    "load of {ns_name}/{w}"
                );
            }
        }
    }
}

// === impl Namespace ===

impl Namespace {
    fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Whether `worker` has stopped every task, so the hosts its tasks hold no longer count:
    /// its heartbeat is not alive and it is not ready (the cases where a task leaves it without
    /// a handoff; while a handoff waits, its releasing tasks still hold their hosts).
    fn stopped(&self, worker: &str) -> bool {
        !self.heartbeat_alive(worker)
            && self
                .workers
                .get(worker)
                .is_none_or(|w| w.worker.readiness != Readiness::Ready)
    }

    /// Why a resource leaves worker `old`, for the Reassigned event: the handoff, the move
    /// asked for, the host it shares with another worker's tasks, or what became of `old`.
    fn move_reason(
        &self,
        old: &str,
        request: &Request,
        handed_off: Option<HandedOff>,
        asked: Option<&MoveRequest>,
        host_conflict: Option<&Hold>,
    ) -> String {
        match (handed_off.and_then(HandedOff::describe), asked) {
            (Some(how), _) => how.to_owned(),
            (None, Some(asked)) => asked.why.clone(),
            (None, None) => host_conflict.map_or_else(
                || lost_reason(self.workers.get(old), request).to_owned(),
                shared_host,
            ),
        }
    }

    /// Chooses a worker for a resource that has none (or lost it), and fills `desired` with the
    /// decision or with why there is none. Returns the Event to publish and the worker to assume.
    fn place(
        &self,
        weight: Load,
        request: &Request,
        current: &CrawlerResourceStatus,
        (handed_off, asked, affinity, host_conflict): (
            Option<HandedOff>,
            Option<&MoveRequest>,
            &Affinity,
            Option<&Hold>,
        ),
        desired: &mut CrawlerResourceStatus,
        ctx: &PlanContext<'_>,
    ) -> (Option<PlanEvent>, Option<String>) {
        // The resource still counts on its current worker; if that worker may take it again
        // (a completed handoff off a worker that is still ready), it competes without that
        // weight, as it will carry once the resource has left.
        let own = current.assigned_worker.as_deref().filter(|w| {
            self.workers
                .get(*w)
                .is_some_and(|e| e.worker.readiness == Readiness::Ready)
        });
        let adjusted: Vec<scheduler::Worker>;
        let placed = if let Some(own) = own {
            adjusted = self
                .workers
                .values()
                .map(|w| {
                    let mut worker = w.worker.clone();
                    if worker.name == own {
                        worker.load = worker.load.saturating_sub(weight);
                    }
                    worker
                })
                .collect();
            scheduler::place_with_hosts(ctx.policy, &adjusted, request, affinity)
        } else {
            scheduler::place_with_hosts(
                ctx.policy,
                self.workers.values().map(|w| &w.worker),
                request,
                affinity,
            )
        };
        match placed {
            Ok(placement) => {
                let chosen = placement.worker.name.clone();
                let load = placement.worker.load;
                let worker = &self.workers[&chosen];
                desired.phase = Some(Phase::Assigned);
                desired.assigned_worker = Some(chosen.clone());
                desired.assigned_address =
                    worker.ip.as_ref().map(|ip| address(ip, ctx.worker_port));
                desired.assigned_at = Some(Time(ctx.now));
                desired.assignments = Some(current.assignments.unwrap_or(0) + 1);
                // Every assignment names its run (1 at the first placement); a move keeps it.
                desired.run = Some(desired.run.unwrap_or(1));
                let capacity = worker
                    .worker
                    .capacity
                    .map_or_else(|| "unbounded".to_owned(), |c| c.to_string());
                let how = format!(
                    "by {}: load {load} -> {} of {capacity}",
                    ctx.policy.name(),
                    load + weight
                );
                let (reason, note) = match &current.assigned_worker {
                    Some(old) => {
                        let why = self.move_reason(old, request, handed_off, asked, host_conflict);
                        (
                            asked.map_or(Reason::Reassigned, |m| m.reason),
                            format!("moved from worker {old} ({why}) to {chosen} {how}"),
                        )
                    }
                    None => (Reason::Assigned, format!("placed on worker {chosen} {how}")),
                };
                set_assigned_condition(desired, current, true, reason, &note, ctx.now);
                (
                    Some(PlanEvent {
                        warning: false,
                        reason,
                        note,
                    }),
                    Some(chosen),
                )
            }
            Err(diagnosis) => {
                set_unassigned(desired, Phase::Unschedulable);
                let message = diagnosis.to_string();
                let event = current
                    .condition(CONDITION_ASSIGNED)
                    .is_none_or(|c| c.message != message)
                    .then(|| PlanEvent {
                        warning: true,
                        reason: Reason::Unschedulable,
                        note: message.clone(),
                    });
                set_assigned_condition(
                    desired,
                    current,
                    false,
                    Reason::unschedulable(&diagnosis),
                    &message,
                    ctx.now,
                );
                (event, None)
            }
        }
    }

    fn put_resource(&mut self, name: String, entry: ResourceEntry) {
        let before = self.take_resource(&name);
        self.insert_resource(name, entry, before.as_ref().map(Counted::of));
    }

    /// Changes a resource in place (its load moved accordingly).
    fn change_resource(&mut self, name: &str, change: impl FnOnce(&mut ResourceEntry)) {
        if let Some(mut entry) = self.take_resource(name) {
            let before = Counted::of(&entry);
            change(&mut entry);
            self.insert_resource(name.to_owned(), entry, Some(before));
        }
    }

    /// Adds a resource taken out by [`Namespace::take_resource`] (`before`: where it counted
    /// then) and its weight to its worker's load; notes the room freed if it counted for less,
    /// or elsewhere.
    fn insert_resource(&mut self, name: String, entry: ResourceEntry, before: Option<Counted>) {
        if let Some(w) = entry.effective_worker()
            && !entry.hosts.is_empty()
        {
            self.hosts
                .hold(&Holder::new(self.name.clone(), w), &name, &entry.hosts);
        }
        self.settle_unheld();
        if let Some(w) = entry.effective_worker() {
            let load = self.loads.entry(w.to_owned()).or_default();
            *load += entry.weight;
            if let Some(worker) = self.workers.get_mut(w) {
                worker.worker.load = *load;
            }
        }
        if let Some(Counted {
            worker: Some(w),
            weight,
        }) = before
            && (entry.effective_worker() != Some(w.as_str()) || entry.weight < weight)
        {
            self.room_freed = true;
        }
        self.resources.insert(name, entry);
    }

    /// Removes a resource and its weight from its worker's load: room freed there.
    fn remove_resource(&mut self, name: &str) -> Option<ResourceEntry> {
        let entry = self.take_resource(name)?;
        self.settle_unheld();
        if entry.effective_worker().is_some() {
            self.room_freed = true;
        }
        Some(entry)
    }

    /// Removes a resource and its weight, to be put back changed by the caller
    /// ([`Namespace::put_resource`] then tells whether room was freed).
    fn take_resource(&mut self, name: &str) -> Option<ResourceEntry> {
        let entry = self.resources.remove(name)?;
        if let Some(w) = entry.effective_worker()
            && !entry.hosts.is_empty()
        {
            let holder = Holder::new(self.name.clone(), w);
            if self.hosts.release(&holder, name, &entry.hosts) {
                self.unheld.extend(
                    (entry.hosts.iter())
                        .filter(|h| self.hosts.holders(h).all(|(other, _)| *other != holder))
                        .map(|h| (h.clone(), w.to_owned())),
                );
            }
        }
        if let Some(w) = entry.effective_worker()
            && let Some(load) = self.loads.get_mut(w)
        {
            *load -= entry.weight;
            let load = *load;
            if load == 0 {
                self.loads.remove(w);
            }
            if let Some(worker) = self.workers.get_mut(w) {
                worker.worker.load = load;
            }
        }
        Some(entry)
    }

    /// Hosts that `take_resource` stopped holding and nothing held again since: freed.
    fn settle_unheld(&mut self) {
        for (host, worker) in std::mem::take(&mut self.unheld) {
            if self.hosts.holders(&host).all(|(h, _)| h.worker != worker) {
                self.hosts_freed = true;
            }
        }
    }

    fn assume(&mut self, name: &str, worker: String) {
        self.change_resource(name, |entry| {
            entry.assumed = Some(Assumption {
                decided_on: entry.resource_version.clone(),
                worker,
                written_version: None,
            });
        });
    }

    /// Whether `worker` has a heartbeat Lease that is alive (renewed, not released): a move off
    /// it is a handoff. A worker without one (an older worker) cannot confirm, and one whose
    /// heartbeat lapsed or was released has stopped its tasks already: nothing to wait for.
    fn heartbeat_alive(&self, worker: &str) -> bool {
        self.heartbeats.get(worker).is_some_and(Heartbeat::alive)
    }

    /// Where the handoff of a resource in phase `Releasing` stands.
    fn handoff(&self, entry: &ResourceEntry) -> Handoff {
        let status = &entry.status;
        let Some(worker) = status
            .assigned_worker
            .as_deref()
            .filter(|_| status.phase == Some(Phase::Releasing))
        else {
            return Handoff::None;
        };
        let confirmed = entry
            .released_by
            .as_ref()
            .is_some_and(|(w, n)| w == worker && Some(*n) == status.assignments);
        if confirmed {
            Handoff::Done(HandedOff::Confirmed)
        } else if !self.heartbeats.contains_key(worker) {
            Handoff::Done(HandedOff::NoHeartbeat)
        } else if !self.heartbeat_alive(worker) {
            Handoff::Done(HandedOff::Lapsed)
        } else {
            Handoff::Waiting
        }
    }

    /// Remembers a resource just deleted (or replaced by another object under its name) whose
    /// task its worker may still run: assigned, not confirmed released, on a worker whose
    /// heartbeat has not lapsed. Its successor is held back (see [`Tombstone`]).
    fn bury(&mut self, namespace: &str, name: &str, gone: &ResourceEntry) {
        let status = &gone.status;
        // The effective worker: a placement written (or being written) but not yet seen by the
        // watch may already have started the task there.
        let Some(worker) = gone.effective_worker().map(str::to_owned) else {
            return;
        };
        let released = status.phase == Some(Phase::Releasing)
            && gone
                .released_by
                .as_ref()
                .is_some_and(|(w, n)| *w == worker && Some(*n) == status.assignments);
        let stopped = self.heartbeats.get(&worker).is_some_and(|h| !h.alive());
        if released || stopped {
            return;
        }
        let hold = successor_hold(self.heartbeats.get(&worker));
        tracing::info!(
            namespace,
            resource = name,
            %worker,
            "deleted while its worker may still run it: an object created again under this name \
             is placed no earlier than {hold:?} from now"
        );
        self.tombstones.insert(
            name.to_owned(),
            Tombstone {
                uid: gone.uid.clone(),
                worker,
                seen: None,
                hold,
            },
        );
    }

    /// `worker`'s heartbeat stopped being alive: it has stopped every task, so the successors
    /// held back for it may be placed. Returns them.
    fn unbury_on(&mut self, namespace: &str, worker: &str) -> Vec<Key> {
        let mut ended = Vec::new();
        self.tombstones.retain(|name, t| {
            let on = t.worker == worker;
            if on {
                ended.push(name.clone());
            }
            !on
        });
        ended
            .into_iter()
            .filter(|name| self.resources.contains_key(name))
            .map(|name| Key::new(namespace, name))
            .collect()
    }

    /// Why a resource leaves `worker`, for the `Releasing` condition and Event.
    fn leave_reason(&self, entry: &ResourceEntry, worker: &str) -> String {
        if entry.suspend {
            return "spec.suspend is true".to_owned();
        }
        if let Some(Err(_)) = entry.schedule {
            return "spec.schedule cannot be used".to_owned();
        }
        if let RulesCheck::Invalid(_) = entry.rules {
            return "spec.rules cannot be compiled".to_owned();
        }
        if let Some(m) = entry.move_requested.as_ref().filter(|m| m.from == worker) {
            return m.why.clone();
        }
        match &entry.request {
            Err(_) => "spec.workerSelector is invalid".to_owned(),
            Ok(request) => lost_reason(self.workers.get(worker), request).to_owned(),
        }
    }

    /// Resources in phase `Releasing` off `worker`: its heartbeat lapsing completes them.
    fn releasing_on(&self, namespace: &str, worker: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| {
                r.status.phase == Some(Phase::Releasing)
                    && r.status.assigned_worker.as_deref() == Some(worker)
            })
            .map(|(name, _)| Key::new(namespace, name.clone()))
            .collect()
    }

    /// Resources waiting for a worker (not assigned, not suspended, not done).
    fn waiting(&self, namespace: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.suspend && r.effective_worker().is_none() && !r.done())
            .map(|(name, _)| Key::new(namespace, name.clone()))
            .collect()
    }

    /// Resources counting against `worker`.
    fn on_worker(&self, namespace: &str, worker: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| {
                r.effective_worker() == Some(worker)
                    || r.status.assigned_worker.as_deref() == Some(worker)
            })
            .map(|(name, _)| Key::new(namespace, name.clone()))
            .collect()
    }
}

/// Ends a crawl whose current run completed: phase `Succeeded`, unassigned (so no worker's
/// assignment watch shows it any more and its weight counts nowhere), the worker and the time
/// kept, and the generation that finished, so only a spec change runs it again.
fn finish(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    run: &CompletedRun,
    again: &str,
    now: Timestamp,
) -> PlanEvent {
    set_unassigned(desired, Phase::Succeeded);
    desired.last_worker = Some(run.worker.clone());
    desired.completed_at = Some(Time(now));
    desired.completed_generation = Some(run.generation);
    let note = format!(
        "the crawl finished on worker {} (assignment {}, {} pages): {again}",
        run.worker, run.assignment, run.pages
    );
    set_assigned_condition(desired, current, false, Reason::Completed, &note, now);
    PlanEvent {
        warning: false,
        reason: Reason::Completed,
        note,
    }
}

/// What runs a finished crawl again, for the notes that end a crawl.
fn again(scheduled: bool) -> &'static str {
    if scheduled {
        "the next firing of spec.schedule runs it again"
    } else {
        "it is not run again unless its spec changes"
    }
}

/// `progress.reason` of a run stopped by `spec.activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";

/// Counts a failed run of the current assignment and spec and unassigns the crawl (the run is
/// over on its worker, which never runs that assignment again): phase `BackOff` until `retryAt`
/// while at most `backoff_limit` runs failed, else `Failed` for good; a run that exceeded its
/// deadline is `Failed` for good at once (a Job's `activeDeadlineSeconds` is not retried).
fn fail(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    run: &FailedRun,
    (backoff_limit, backoff): (u32, RetryBackoff),
    again: &str,
    now: Timestamp,
) -> PlanEvent {
    let failures = desired.failures.unwrap_or(0).saturating_add(1);
    desired.failures = Some(failures);
    let count = u32::try_from(failures).unwrap_or(u32::MAX);
    let what = format!(
        "the run on worker {} (assignment {}) failed: {}",
        run.worker, run.assignment, run.message
    );
    desired.last_failure = Some(what.clone());
    let (reason, note) = if run.deadline {
        (
            Reason::DeadlineExceeded,
            format!(
                "{what}; spec.activeDeadlineSeconds was exceeded, so the crawl failed for good                  (not retried): {again}"
            ),
        )
    } else if count > backoff_limit {
        (
            Reason::BackoffLimitExceeded,
            format!(
                "{what}; {failures} runs failed, more than spec.backoffLimit ({backoff_limit}),                  so the crawl failed for good: fix the cause; {again}"
            ),
        )
    } else {
        let delay = backoff.delay(count);
        set_unassigned(desired, Phase::BackOff);
        desired.retry_at = Some(Time(now + delay));
        let note = format!(
            "{what}; failure {failures} of at most {} (spec.backoffLimit {backoff_limit}              retries): placed again in {}s",
            backoff_limit.saturating_add(1),
            delay.as_secs()
        );
        set_assigned_condition(desired, current, false, Reason::BackOff, &note, now);
        return PlanEvent {
            warning: true,
            reason: Reason::BackOff,
            note,
        };
    };
    set_unassigned(desired, Phase::Failed);
    desired.retry_at = None;
    desired.last_worker = Some(run.worker.clone());
    desired.failed_at = Some(Time(now));
    set_assigned_condition(desired, current, false, reason, &note, now);
    PlanEvent {
        warning: true,
        reason,
        note,
    }
}

/// Why a task leaves its worker under host affinity: another task crawls one of its hosts on a
/// worker whose name sorts first.
/// The first phase of a move (or of a `Replace`): the resource stays on its worker, phase
/// `Releasing`, until that worker confirms the stop or its heartbeat lapses; `note` says why.
fn releasing(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    note: String,
    now: Timestamp,
) -> PlanEvent {
    desired.phase = Some(Phase::Releasing);
    set_assigned_condition(desired, current, true, Reason::Releasing, &note, now);
    PlanEvent {
        warning: false,
        reason: Reason::Releasing,
        note,
    }
}

fn shared_host(hold: &Hold) -> String {
    format!(
        "host {} is crawled on worker {} by task {} as well, and tasks that share a host run on \
         one worker",
        hold.host, hold.holder.worker, hold.task
    )
}

/// The hosts a task crawls, as the worker's per-host gate keys them (a URL's host, lower case,
/// without the port): `spec.allowedHosts`, else the seeds' hosts. Sorted, each once.
pub fn hosts_of(spec: &crate::crd::CrawlerResourceSpec) -> Vec<String> {
    let host = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    };
    let mut hosts: Vec<String> = match &spec.allowed_hosts {
        Some(allowed) => allowed
            .iter()
            .filter_map(|h| host(&format!("http://{h}/")))
            .collect(),
        None => spec.seeds.iter().filter_map(|s| host(s)).collect(),
    };
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// The placement request of a resource, or why its selector cannot be used.
fn request_for(resource: &CrawlerResource) -> Result<Request, String> {
    let weight = std::num::NonZeroU64::new(Load::from(resource.spec.load_units()))
        .unwrap_or(std::num::NonZeroU64::MIN);
    let request = Request::new(weight);
    match &resource.spec.worker_selector {
        None => Ok(request),
        Some(selector) => worker_selector(selector)
            .map(|s| request.with_selector(s))
            .map_err(|e| e.to_string()),
    }
}

/// The edge between the API type and placement: a resource's `spec.workerSelector`, checked
/// as Kubernetes checks it, converted once so placement only ever sees the validated form.
pub fn worker_selector(selector: &LabelSelector) -> Result<WorkerSelector, InvalidSelector> {
    Ok(WorkerSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .map(|r| Requirement::parse(&r.key, &r.operator, r.values.iter().flatten().cloned()))
            .collect::<Result<_, _>>()?,
    })
}

/// (namespace, name) of each object: what a list showed.
#[cfg(any(test, feature = "bench"))]
fn listed<K: kube::Resource>(objects: &[K]) -> HashSet<(String, String)> {
    objects
        .iter()
        .filter_map(|o| Some((o.meta().namespace.clone()?, o.name_any())))
        .collect()
}

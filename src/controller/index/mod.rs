//! The controller's in-memory view of one cluster: worker Pods and `CrawlerResources`, fed by
//! watches (apply / delete / reset), converted to domain structs on the way in.
//!
//! It owns two things nothing else may compute: the load of every worker, derived from the
//! resources' own assignments (plus decisions in flight), and the decision for one resource,
//! made and "assumed" under the same lock so that two reconciles running at once never see the
//! same stale load. Every method is synchronous and free of I/O: the reconciler takes the lock,
//! asks for a [`Plan`], releases the lock, and only then talks to the API server.
//!
//! This file holds the index's state ([`Index`], one `Namespace` per namespace, one
//! `ResourceEntry` per resource); each concern that reads or changes it has its own file:
//!
//! - `apply`: the watches' events (Pods, `CrawlerResources`) applied, lists finished;
//! - `workers`: worker Pods and heartbeat Leases, readiness, expiry;
//! - `plan`: the decision for one resource and its assumption until the watch shows it;
//! - `placement`: choosing a worker, host affinity, queueing what waits for room;
//! - `handoff`: moves off a worker (release, confirmation or lapse, moves asked for);
//! - `lifecycle`: the end of a run (completed, failed and backed off, TTL after finished);
//! - `tombstones`: deleted resources whose worker may still run them, holding successors back;
//! - `loads`: the loads and host holds, kept equal to what the resources say;
//! - `schedule`, `rules`, `status`, `rebalance`: `spec.schedule`, `spec.rules`, the wording of
//!   status, the opt-in rebalance.

mod apply;
mod handoff;
mod lifecycle;
mod loads;
mod placement;
mod plan;
mod rebalance;
mod rules;
mod schedule;
mod status;
#[cfg(test)]
mod tests;
mod tombstones;
mod workers;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use crawler_core::{HostHolders, Load, Request};

use crate::crd::CrawlerResourceStatus;

pub use self::{
    apply::{hosts_of, worker_selector},
    lifecycle::{DEADLINE_EXCEEDED, Expired, RetryBackoff},
    loads::Stats,
    plan::{Plan, PlanContext, PlanEvent, Write},
    status::Reason,
    workers::{CAPACITY_ANNOTATION, DueHeartbeat},
};
use self::{
    handoff::MoveRequest,
    lifecycle::{CompletedRun, FailedRun},
    rules::RulesCheck,
    tombstones::Tombstone,
    workers::{Heartbeat, WorkerEntry},
};

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

    /// The Pod, resource and heartbeat watches have listed once: decisions before this could
    /// mistake an unlisted worker for a lost one and move resources that are well placed, or
    /// take a live worker's unlisted heartbeat for none and move a task without a handoff.
    pub fn synced(&self) -> bool {
        self.workers_synced && self.resources_synced && self.heartbeats_synced
    }

    /// Every resource known, for a full pass (on becoming leader).
    pub fn all_keys(&self) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| n.resources.keys().map(|r| Key::new(ns.clone(), r.clone())))
            .collect()
    }

    fn entry_mut(&mut self, key: &Key) -> Option<&mut ResourceEntry> {
        self.namespaces
            .get_mut(&key.namespace)?
            .resources
            .get_mut(&key.name)
    }
}

impl Namespace {
    fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

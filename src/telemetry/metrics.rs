//! Prometheus metrics of both roles, in one [`Registry`] prefixed `crawler`.
//!
//! Every label is bounded by the code, never by the cluster's contents: results, outcomes, reasons
//! and error categories are `&'static str` or enums; the only labels built from object names are
//! `namespace` and `worker` on the per-worker gauges, bounded by the number of worker Pods and
//! replaced as a whole snapshot so a deleted worker's series disappears.
//!
//! The names below are the registered ones; as exported, counters gain `_total` and metrics with a
//! unit gain `_seconds`. `docs/operations.md` lists the exported names, and a test here checks the
//! two agree.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::RwLock;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, text},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};

/// Which process the metrics describe: only that role's families are registered (the other
/// role's methods still work, and export nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Controller,
    Worker,
}

impl Role {
    /// The `role` label of `crawler_build_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Worker => "worker",
        }
    }
}

/// An enum whose values are the values of one label, so the label cannot take any other value.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $name:ident, label = $label:literal,
        { $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, each exported at zero from the start so `rate()` sees the first event.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as exported.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $value ),+
                }
            }
        }

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
                EncodeLabelSet::encode(&[($label, self.as_str())], encoder)
            }
        }
    };
}

label_enum! {
    /// The class of a crawl response's HTTP status (label `class`).
    StatusClass, label = "class", {
        Informational => "1xx",
        Success => "2xx",
        Redirect => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
        /// No response: a timeout, a connection error, a refused address.
        None => "none",
    }
}

impl StatusClass {
    fn of(status: Option<u16>) -> Self {
        match status {
            Some(100..=199) => StatusClass::Informational,
            Some(200..=299) => StatusClass::Success,
            Some(300..=399) => StatusClass::Redirect,
            Some(400..=499) => StatusClass::ClientError,
            Some(_) => StatusClass::ServerError,
            None => StatusClass::None,
        }
    }
}

/// Crawl request latency: loopback sites answer in milliseconds, slow ones time out at 30 s.
const FETCH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl crawler_crawl::FetchObserver for Metrics {
    fn fetched(&self, status: Option<u16>, elapsed: Duration) {
        Metrics::fetched(self, status, elapsed);
    }
}

label_enum! {
    /// How a status write ended (label `outcome`).
    WriteOutcome, label = "outcome", {
        /// The API server accepted it.
        Ok => "ok",
        /// 409: the resource changed since the decision; it is decided again.
        Conflict => "conflict",
        /// Any other error from the API server or the connection.
        Error => "error",
        /// No answer within `--write-timeout`.
        Timeout => "timeout",
    }
}

label_enum! {
    /// What became of an Event the controller meant to publish (label `outcome`).
    EventOutcome, label = "outcome", {
        /// The API server accepted it.
        Published => "published",
        /// A routine `Assigned` Event over the budget (a bulk create): not published; the
        /// resource's `Assigned` condition says the same.
        Throttled => "throttled",
        /// The publisher's queue was full: not published.
        Dropped => "dropped",
        /// The API server refused it or could not be reached.
        Failed => "failed",
    }
}

label_enum! {
    /// Whether a placement was the resource's first or moved it (label `kind`).
    AssignmentKind, label = "kind", {
        /// Placed on a worker while it had none.
        Assigned => "assigned",
        /// Moved off a worker that could no longer keep it.
        Reassigned => "reassigned",
        /// Moved by the opt-in rebalance to even out load.
        Rebalanced => "rebalanced",
    }
}

label_enum! {
    /// How far a rebalance move got (label `stage`).
    RebalanceStage, label = "stage", {
        /// Chosen by the planner within the budget (one token each) and requested through the
        /// handoff.
        Planned => "planned",
        /// Completed: the placement on the new worker was written (after the old worker
        /// confirmed the stop, or its heartbeat lapsed).
        Made => "made",
    }
}

label_enum! {
    /// Why a worker stopped running a task (label `reason`).
    TaskStopReason, label = "reason", {
        /// It is no longer assigned to this worker: deleted, or moved to another worker (the
        /// assignment watch cannot tell the two apart).
        Unassigned => "unassigned",
        /// `spec.suspend` was set.
        Suspended => "suspended",
        /// The controller is moving it off this worker (phase `Releasing`): stopped, then the
        /// stop confirmed in status.
        Released => "released",
        /// The heartbeat could not be renewed in time, so every task stops.
        Heartbeat => "heartbeat",
        /// The view of the assignments is not known fresh (no LIST of them succeeded lately:
        /// e.g. the connections to the API server went silent), so every task stops.
        Stale => "stale",
        /// The spec changed; the task is restarted with the new one.
        SpecChanged => "spec_changed",
        /// The crawl ended by itself (done or `maxPages` reached).
        Finished => "finished",
        /// The crawl ended with an error.
        Failed => "failed",
        /// The result store refused a write: it holds a newer assignment of the task.
        Fenced => "fenced",
        /// The worker process is stopping.
        Shutdown => "shutdown",
    }
}

/// What one reconcile did (labels `result` and `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconcileOutcome {
    /// A status write was made and accepted.
    Ok,
    /// The status already said what it should: nothing written.
    Nothing,
    /// Waiting for the watch (the resource is gone, or our last write is not visible yet).
    Wait,
    /// Failed; the `error` label is this bounded category (e.g. `controller::Error::category()`).
    Error(&'static str),
}

impl ReconcileOutcome {
    const NON_ERRORS: [ReconcileOutcome; 3] = [Self::Ok, Self::Nothing, Self::Wait];

    /// The `result` label: `ok`, `nothing`, `wait` or `error`.
    pub fn result(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Nothing => "nothing",
            Self::Wait => "wait",
            Self::Error(_) => "error",
        }
    }

    /// The `error` label: the category for an error, empty otherwise.
    pub fn error(self) -> &'static str {
        match self {
            Self::Error(category) => category,
            _ => "",
        }
    }
}

impl EncodeLabelSet for ReconcileOutcome {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        EncodeLabelSet::encode(
            &[("result", self.result()), ("error", self.error())],
            encoder,
        )
    }
}

/// A bounded fetch error kind, e.g. `crawl::FetchError::kind()` (label `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FetchErrorKind(&'static str);

impl EncodeLabelSet for FetchErrorKind {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        EncodeLabelSet::encode(&[("kind", self.0)], encoder)
    }
}

/// One worker as the controller's index sees it, for the per-worker gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLoad {
    pub namespace: String,
    /// The worker Pod's name.
    pub worker: String,
    /// Load units assigned to it (assumed decisions included).
    pub load: u64,
    /// Its `crawler.dev/capacity`; `None` (unbounded) exports no capacity series.
    pub capacity: Option<u64>,
}

/// Buckets of the reconcile duration: a reconcile without a write takes microseconds, one with a
/// write a round trip to the API server, bounded by `--write-timeout` (10 s by default).
const RECONCILE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics of one process. Cheap to clone: every clone updates the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    role: Role,
    registry: Registry,

    reconciles: Family<ReconcileOutcome, Counter>,
    reconcile_duration: Histogram,
    status_writes: Family<WriteOutcome, Counter>,
    events: Family<EventOutcome, Counter>,
    assignments: Family<AssignmentKind, Counter>,
    rebalance_moves: Family<RebalanceStage, Counter>,
    unschedulable: Gauge,
    workers: Arc<WorkerLoads>,
    leader: Gauge,
    leading: AtomicBool,
    leader_transitions: Counter,
    index_workers: Gauge,
    index_resources: Gauge,
    queue_depth: Gauge,

    running_tasks: Gauge,
    tasks_started: Counter,
    tasks_stopped: Family<TaskStopReason, Counter>,
    pages_fetched: Counter,
    records_incomplete: Counter,
    fetch_errors: Family<FetchErrorKind, Counter>,
    requests_blocked: Counter,
    fetch_duration: Histogram,
    responses: Family<StatusClass, Counter>,
    hosts_in_backoff: Gauge,
    heartbeat_renew_failures: Counter,
    heartbeat_age: Gauge<f64, AtomicU64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("role", &self.0.role)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the registry with the families of `role`, the label values that are known up front
    /// already at zero.
    pub fn new(role: Role) -> Self {
        let mut inner = Inner {
            role,
            registry: Registry::with_prefix("crawler"),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(RECONCILE_BUCKETS),
            status_writes: Family::default(),
            events: Family::default(),
            assignments: Family::default(),
            rebalance_moves: Family::default(),
            unschedulable: Gauge::default(),
            workers: Arc::default(),
            leader: Gauge::default(),
            leading: AtomicBool::new(false),
            leader_transitions: Counter::default(),
            index_workers: Gauge::default(),
            index_resources: Gauge::default(),
            queue_depth: Gauge::default(),
            running_tasks: Gauge::default(),
            tasks_started: Counter::default(),
            tasks_stopped: Family::default(),
            pages_fetched: Counter::default(),
            records_incomplete: Counter::default(),
            fetch_errors: Family::default(),
            requests_blocked: Counter::default(),
            fetch_duration: Histogram::new(FETCH_BUCKETS),
            responses: Family::default(),
            hosts_in_backoff: Gauge::default(),
            heartbeat_renew_failures: Counter::default(),
            heartbeat_age: Gauge::default(),
        };
        inner.registry.register(
            "build",
            "Version and role of this process (value always 1)",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("role", role.as_str()),
            ]),
        );
        match role {
            Role::Controller => inner.register_controller(),
            Role::Worker => inner.register_worker(),
        }
        Metrics(Arc::new(inner))
    }

    /// The role these metrics were built for.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The whole registry in the `OpenMetrics` text format, `# EOF` included.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.0.registry)?;
        Ok(out)
    }

    // === controller ===

    /// Counts one reconcile by outcome and observes how long it took.
    pub fn reconcile_done(&self, outcome: ReconcileOutcome, elapsed: Duration) {
        self.0.reconciles.get_or_create(&outcome).inc();
        self.0.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one status write by how it ended.
    pub fn status_write(&self, outcome: WriteOutcome) {
        self.0.status_writes.get_or_create(&outcome).inc();
    }

    /// Counts one Event by what became of it.
    pub fn event(&self, outcome: EventOutcome) {
        self.0.events.get_or_create(&outcome).inc();
    }

    /// Counts one placement written to a resource's status.
    pub fn assignment(&self, kind: AssignmentKind) {
        self.0.assignments.get_or_create(&kind).inc();
    }

    /// Counts rebalance moves that reached `stage`.
    pub fn rebalance_moves(&self, stage: RebalanceStage, moves: usize) {
        self.0
            .rebalance_moves
            .get_or_create(&stage)
            .inc_by(u64::try_from(moves).unwrap_or(u64::MAX));
    }

    /// Sets how many resources no worker may take now (phase `Unschedulable`).
    pub fn set_unschedulable(&self, resources: usize) {
        self.0.unschedulable.set(to_i64(resources));
    }

    /// Replaces the per-worker load and capacity series with this snapshot (workers not in it
    /// disappear; a repeated namespace/worker keeps its last entry).
    pub fn set_worker_loads(&self, workers: impl IntoIterator<Item = WorkerLoad>) {
        let mut snapshot: Vec<WorkerLoad> = workers.into_iter().collect();
        // Stable sort then keep the last of each key: the caller's latest entry wins.
        snapshot.sort_by(|a, b| (&a.namespace, &a.worker).cmp(&(&b.namespace, &b.worker)));
        snapshot.reverse();
        snapshot.dedup_by(|a, b| a.namespace == b.namespace && a.worker == b.worker);
        snapshot.reverse();
        *self.0.workers.0.write() = snapshot;
    }

    /// Records whether this replica leads now; a change counts one leader transition.
    pub fn set_leader(&self, leading: bool) {
        self.0.leader.set(i64::from(leading));
        if self.0.leading.swap(leading, Ordering::AcqRel) != leading {
            self.0.leader_transitions.inc();
        }
    }

    /// Sets how many workers and resources the controller's index holds.
    pub fn set_index_sizes(&self, workers: usize, resources: usize) {
        self.0.index_workers.set(to_i64(workers));
        self.0.index_resources.set(to_i64(resources));
    }

    /// Sets how many keys wait in the work queue.
    pub fn set_queue_depth(&self, keys: usize) {
        self.0.queue_depth.set(to_i64(keys));
    }

    // === worker ===

    /// Counts a task started and adds it to the running tasks.
    pub fn task_started(&self) {
        self.0.tasks_started.inc();
        self.0.running_tasks.inc();
    }

    /// Counts a task stopped for `reason` and removes it from the running tasks.
    pub fn task_stopped(&self, reason: TaskStopReason) {
        self.0.tasks_stopped.get_or_create(&reason).inc();
        self.0.running_tasks.dec();
    }

    /// Adds `pages` pages that got an HTTP response.
    pub fn pages_fetched(&self, pages: u64) {
        self.0.pages_fetched.inc_by(pages);
    }

    /// Counts one record whose extraction rule's required fields were missing.
    pub fn record_incomplete(&self) {
        self.0.records_incomplete.inc();
    }

    /// Counts one page that got no usable response, by its bounded kind (`FetchError::kind()`).
    pub fn fetch_error(&self, kind: &'static str) {
        self.0
            .fetch_errors
            .get_or_create(&FetchErrorKind(kind))
            .inc();
    }

    /// Counts one page whose request the address guard refused (an internal address the
    /// installation does not allow: the record's `error_kind` is `blocked_address`).
    pub fn request_blocked(&self) {
        self.0.requests_blocked.inc();
    }

    /// One HTTP request of a crawl ended: its latency, and its status class (`none`: no
    /// response, a timeout or a connection error).
    pub fn fetched(&self, status: Option<u16>, elapsed: Duration) {
        self.0.fetch_duration.observe(elapsed.as_secs_f64());
        self.0
            .responses
            .get_or_create(&StatusClass::of(status))
            .inc();
    }

    /// Sets the number of hosts inside a 429/503 back-off window.
    pub fn set_hosts_in_backoff(&self, hosts: usize) {
        self.0.hosts_in_backoff.set(to_i64(hosts));
    }

    /// Counts one failed renewal of the worker's heartbeat Lease.
    pub fn heartbeat_renew_failed(&self) {
        self.0.heartbeat_renew_failures.inc();
    }

    /// Sets the time since the heartbeat Lease was last renewed.
    pub fn set_heartbeat_age(&self, age: Duration) {
        self.0.heartbeat_age.set(age.as_secs_f64());
    }
}

impl Inner {
    fn register_controller(&mut self) {
        for outcome in ReconcileOutcome::NON_ERRORS {
            self.reconciles.get_or_create_owned(&outcome);
        }
        for outcome in WriteOutcome::ALL {
            self.status_writes.get_or_create_owned(outcome);
        }
        for outcome in EventOutcome::ALL {
            self.events.get_or_create_owned(outcome);
        }
        for kind in AssignmentKind::ALL {
            self.assignments.get_or_create_owned(kind);
        }
        for stage in RebalanceStage::ALL {
            self.rebalance_moves.get_or_create_owned(stage);
        }
        let r = self.registry.sub_registry_with_prefix("controller");
        r.register(
            "reconciles",
            "Reconciles by result (ok: status written, nothing: already right, wait: waiting for \
             the watch, error) and error category",
            self.reconciles.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took, status write included",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        r.register(
            "status_writes",
            "Fenced status writes by outcome",
            self.status_writes.clone(),
        );
        r.register(
            "events",
            "Events by outcome (throttled: routine Assigned Events over the budget)",
            self.events.clone(),
        );
        r.register(
            "assignments",
            "Placements written: first (assigned), moving the resource off a worker that cannot \
             keep it (reassigned), or moving it to even out load (rebalanced)",
            self.assignments.clone(),
        );
        r.register(
            "rebalance_moves",
            "Rebalance moves (--rebalance) by stage: planned within the budget, made (placed anew)",
            self.rebalance_moves.clone(),
        );
        r.register(
            "unschedulable_resources",
            "Resources no worker may take now",
            self.unschedulable.clone(),
        );
        r.register(
            "leader",
            "1 while this replica leads, else 0",
            self.leader.clone(),
        );
        r.register(
            "leader_transitions",
            "Times this replica started or stopped leading",
            self.leader_transitions.clone(),
        );
        r.register(
            "index_workers",
            "Worker Pods in the controller's index",
            self.index_workers.clone(),
        );
        r.register(
            "index_resources",
            "CrawlerResources in the controller's index",
            self.index_resources.clone(),
        );
        r.register(
            "queue_depth",
            "Resource keys waiting in the work queue",
            self.queue_depth.clone(),
        );
        r.register_collector(Box::new(Arc::clone(&self.workers)));
    }

    fn register_worker(&mut self) {
        for reason in TaskStopReason::ALL {
            self.tasks_stopped.get_or_create_owned(reason);
        }
        for class in StatusClass::ALL {
            self.responses.get_or_create_owned(class);
        }
        let r = self.registry.sub_registry_with_prefix("worker");
        r.register(
            "running_tasks",
            "Crawl tasks running in this worker",
            self.running_tasks.clone(),
        );
        r.register(
            "tasks_started",
            "Crawl tasks started",
            self.tasks_started.clone(),
        );
        r.register(
            "tasks_stopped",
            "Crawl tasks stopped, by reason",
            self.tasks_stopped.clone(),
        );
        r.register(
            "pages_fetched",
            "Pages that got an HTTP response (any status)",
            self.pages_fetched.clone(),
        );
        r.register(
            "records_incomplete",
            "Page records whose extraction rule's required fields were missing",
            self.records_incomplete.clone(),
        );
        r.register(
            "fetch_errors",
            "Pages that got no usable response, by error kind",
            self.fetch_errors.clone(),
        );
        r.register(
            "requests_blocked",
            "Pages not fetched because a request went to an internal address the installation does not allow",
            self.requests_blocked.clone(),
        );
        r.register_with_unit(
            "fetch_duration",
            "Time from sending a crawl request to its body read (or its failure)",
            Unit::Seconds,
            self.fetch_duration.clone(),
        );
        r.register(
            "responses",
            "Crawl requests by the class of their HTTP status (none: no response)",
            self.responses.clone(),
        );
        r.register(
            "hosts_in_backoff",
            "Hosts that answered 429 or 503 and get no request from this worker until their window ends",
            self.hosts_in_backoff.clone(),
        );
        r.register(
            "heartbeat_renew_failures",
            "Failed renewals of this worker's heartbeat Lease",
            self.heartbeat_renew_failures.clone(),
        );
        r.register_with_unit(
            "heartbeat_age",
            "Time since this worker's heartbeat Lease was last renewed",
            Unit::Seconds,
            self.heartbeat_age.clone(),
        );
    }
}

/// The per-worker gauges, encoded from the last snapshot at each scrape.
#[derive(Debug, Default)]
struct WorkerLoads(RwLock<Vec<WorkerLoad>>);

impl Collector for WorkerLoads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let workers = self.0.read();
        // Like an empty `Family`, an empty snapshot exports no descriptor.
        if !workers.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "worker_load",
                "Load units assigned to each worker Pod (decisions in flight included).",
                None,
                MetricType::Gauge,
            )?;
            for w in workers.iter() {
                let labels = [("namespace", w.namespace.as_str()), ("worker", &w.worker)];
                metric.encode_family(&labels)?.encode_gauge(&w.load)?;
            }
        }
        if workers.iter().any(|w| w.capacity.is_some()) {
            let mut metric = encoder.encode_descriptor(
                "worker_capacity",
                "Load units each worker Pod declares it can carry (crawler.dev/capacity); \
                 unbounded workers have no series.",
                None,
                MetricType::Gauge,
            )?;
            for w in workers.iter() {
                if let Some(capacity) = w.capacity {
                    let labels = [("namespace", w.namespace.as_str()), ("worker", &w.worker)];
                    metric.encode_family(&labels)?.encode_gauge(&capacity)?;
                }
            }
        }
        Ok(())
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Touches every metric so each family has a series (empty families export nothing).
    fn exercise(metrics: &Metrics) {
        metrics.reconcile_done(
            ReconcileOutcome::Error("conflict"),
            Duration::from_millis(3),
        );
        metrics.status_write(WriteOutcome::Conflict);
        metrics.assignment(AssignmentKind::Reassigned);
        metrics.set_unschedulable(2);
        metrics.set_worker_loads([
            WorkerLoad {
                namespace: "crawl".into(),
                worker: "worker-1".into(),
                load: 3,
                capacity: Some(10),
            },
            WorkerLoad {
                namespace: "crawl".into(),
                worker: "worker-2".into(),
                load: 1,
                capacity: None,
            },
        ]);
        metrics.set_leader(true);
        metrics.set_index_sizes(2, 5);
        metrics.set_queue_depth(4);
        metrics.task_started();
        metrics.task_stopped(TaskStopReason::Unassigned);
        metrics.pages_fetched(7);
        metrics.fetch_error("timeout");
        metrics.heartbeat_renew_failed();
        metrics.set_heartbeat_age(Duration::from_millis(1500));
        metrics.fetched(Some(204), Duration::from_millis(3));
        metrics.set_hosts_in_backoff(2);
    }

    fn encoded(role: Role) -> String {
        let metrics = Metrics::new(role);
        exercise(&metrics);
        metrics.encode().unwrap()
    }

    /// `(type, exported name)` of each family, from its `# TYPE` line. Counters are exported with
    /// `_total` and infos with `_info`; the other types under the `# TYPE` name.
    fn families(text: &str) -> BTreeSet<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                let exported = match kind {
                    "counter" => format!("{name}_total"),
                    "info" => format!("{name}_info"),
                    _ => name.to_owned(),
                };
                (kind.to_owned(), exported)
            })
            .collect()
    }

    /// Names of the sample lines (`_bucket`, `_sum`, `_count` of histograms included).
    fn sample_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn controller_families_have_the_documented_names_and_types() {
        let text = encoded(Role::Controller);
        let got: Vec<_> = families(&text).into_iter().collect();
        let want = [
            ("counter", "crawler_controller_assignments_total"),
            ("counter", "crawler_controller_events_total"),
            ("counter", "crawler_controller_leader_transitions_total"),
            ("counter", "crawler_controller_rebalance_moves_total"),
            ("counter", "crawler_controller_reconciles_total"),
            ("counter", "crawler_controller_status_writes_total"),
            ("gauge", "crawler_controller_index_resources"),
            ("gauge", "crawler_controller_index_workers"),
            ("gauge", "crawler_controller_leader"),
            ("gauge", "crawler_controller_queue_depth"),
            ("gauge", "crawler_controller_unschedulable_resources"),
            ("gauge", "crawler_controller_worker_capacity"),
            ("gauge", "crawler_controller_worker_load"),
            ("histogram", "crawler_controller_reconcile_duration_seconds"),
            ("info", "crawler_build_info"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
            .collect();
        assert_eq!(got, want, "{text}");
        assert!(text.contains("# UNIT crawler_controller_reconcile_duration_seconds seconds\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn worker_families_have_the_documented_names_and_types() {
        let text = encoded(Role::Worker);
        let got: Vec<_> = families(&text).into_iter().collect();
        let want = [
            ("counter", "crawler_worker_fetch_errors_total"),
            ("counter", "crawler_worker_heartbeat_renew_failures_total"),
            ("counter", "crawler_worker_pages_fetched_total"),
            ("counter", "crawler_worker_records_incomplete_total"),
            ("counter", "crawler_worker_requests_blocked_total"),
            ("counter", "crawler_worker_responses_total"),
            ("counter", "crawler_worker_tasks_started_total"),
            ("counter", "crawler_worker_tasks_stopped_total"),
            ("gauge", "crawler_worker_heartbeat_age_seconds"),
            ("gauge", "crawler_worker_hosts_in_backoff"),
            ("gauge", "crawler_worker_running_tasks"),
            ("histogram", "crawler_worker_fetch_duration_seconds"),
            ("info", "crawler_build_info"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
            .collect();
        assert_eq!(got, want, "{text}");
        assert!(text.contains("# UNIT crawler_worker_heartbeat_age_seconds seconds\n"));
    }

    #[test]
    fn controller_samples_carry_their_labels() {
        let text = encoded(Role::Controller);
        for line in [
            format!(
                "crawler_build_info{{version=\"{}\",role=\"controller\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "crawler_controller_reconciles_total{result=\"error\",error=\"conflict\"} 1".into(),
            "crawler_controller_reconciles_total{result=\"ok\",error=\"\"} 0".into(),
            "crawler_controller_reconciles_total{result=\"nothing\",error=\"\"} 0".into(),
            "crawler_controller_reconciles_total{result=\"wait\",error=\"\"} 0".into(),
            "crawler_controller_reconcile_duration_seconds_count 1".into(),
            "crawler_controller_reconcile_duration_seconds_bucket{le=\"0.005\"} 1".into(),
            "crawler_controller_reconcile_duration_seconds_bucket{le=\"0.0025\"} 0".into(),
            "crawler_controller_status_writes_total{outcome=\"conflict\"} 1".into(),
            "crawler_controller_status_writes_total{outcome=\"ok\"} 0".into(),
            "crawler_controller_status_writes_total{outcome=\"error\"} 0".into(),
            "crawler_controller_status_writes_total{outcome=\"timeout\"} 0".into(),
            "crawler_controller_assignments_total{kind=\"reassigned\"} 1".into(),
            "crawler_controller_assignments_total{kind=\"assigned\"} 0".into(),
            "crawler_controller_unschedulable_resources 2".into(),
            "crawler_controller_worker_load{namespace=\"crawl\",worker=\"worker-1\"} 3".into(),
            "crawler_controller_worker_load{namespace=\"crawl\",worker=\"worker-2\"} 1".into(),
            "crawler_controller_worker_capacity{namespace=\"crawl\",worker=\"worker-1\"} 10".into(),
            "crawler_controller_leader 1".into(),
            "crawler_controller_leader_transitions_total 1".into(),
            "crawler_controller_index_workers 2".into(),
            "crawler_controller_index_resources 5".into(),
            "crawler_controller_queue_depth 4".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("worker_capacity{namespace=\"crawl\",worker=\"worker-2\"}"));
    }

    #[test]
    fn worker_samples_carry_their_labels() {
        let text = encoded(Role::Worker);
        for line in [
            "crawler_build_info{version=\"0.1.0\",role=\"worker\"}"
                .replace("0.1.0", env!("CARGO_PKG_VERSION"))
                + " 1",
            "crawler_worker_running_tasks 0".into(),
            "crawler_worker_tasks_started_total 1".into(),
            "crawler_worker_tasks_stopped_total{reason=\"unassigned\"} 1".into(),
            "crawler_worker_tasks_stopped_total{reason=\"spec_changed\"} 0".into(),
            "crawler_worker_pages_fetched_total 7".into(),
            "crawler_worker_fetch_errors_total{kind=\"timeout\"} 1".into(),
            "crawler_worker_heartbeat_renew_failures_total 1".into(),
            "crawler_worker_heartbeat_age_seconds 1.5".into(),
            "crawler_worker_responses_total{class=\"2xx\"} 1".into(),
            "crawler_worker_responses_total{class=\"none\"} 0".into(),
            "crawler_worker_hosts_in_backoff 2".into(),
            "crawler_worker_fetch_duration_seconds_count 1".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        for reason in TaskStopReason::ALL {
            let line = format!(
                "crawler_worker_tasks_stopped_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line} missing");
        }
    }

    #[test]
    fn each_role_exports_only_its_own_families() {
        let controller = encoded(Role::Controller);
        let worker = encoded(Role::Worker);
        assert!(!controller.contains("crawler_worker_"), "{controller}");
        assert!(!worker.contains("crawler_controller_"), "{worker}");
    }

    #[test]
    fn a_new_snapshot_replaces_the_worker_series() {
        let metrics = Metrics::new(Role::Controller);
        let worker = |name: &str, load| WorkerLoad {
            namespace: "crawl".into(),
            worker: name.into(),
            load,
            capacity: None,
        };
        metrics.set_worker_loads([worker("worker-1", 1), worker("worker-2", 2)]);
        metrics.set_worker_loads([worker("worker-2", 3), worker("worker-2", 4)]);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("worker-1"), "{text}");
        assert!(
            text.lines().any(|l| l
                == "crawler_controller_worker_load{namespace=\"crawl\",worker=\"worker-2\"} 4"),
            "{text}"
        );
        assert_eq!(text.matches("worker=\"worker-2\"").count(), 1, "{text}");
        assert!(!text.contains("worker_capacity"), "{text}");

        metrics.set_worker_loads([]);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("worker_load"), "{text}");
    }

    #[test]
    fn leader_transitions_count_changes_only() {
        let metrics = Metrics::new(Role::Controller);
        for leading in [false, true, true, false, false, true] {
            metrics.set_leader(leading);
        }
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("crawler_controller_leader_transitions_total 3\n"),
            "{text}"
        );
        assert!(text.contains("crawler_controller_leader 1\n"), "{text}");
    }

    #[test]
    fn running_tasks_follow_starts_and_stops() {
        let metrics = Metrics::new(Role::Worker);
        metrics.task_started();
        metrics.task_started();
        metrics.task_stopped(TaskStopReason::Finished);
        let text = metrics.encode().unwrap();
        assert!(text.contains("crawler_worker_running_tasks 1\n"), "{text}");
        assert!(
            text.contains("crawler_worker_tasks_started_total 2\n"),
            "{text}"
        );
    }

    /// The `## Metrics` section of docs/operations.md, so a renamed metric fails here, not on a
    /// dashboard.
    fn documented_names() -> BTreeSet<String> {
        let doc = include_str!("../../docs/operations.md");
        let start = doc
            .find("\n## Metrics")
            .expect("docs/operations.md has a ## Metrics section");
        let section = &doc[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let mut names = BTreeSet::new();
        let mut rest = section;
        while let Some(i) = rest.find("crawler_") {
            // A name starts after a character that cannot be part of one.
            let preceded = rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let len = rest[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - i);
            // `crawler_` alone is the prefix, not a name.
            if !preceded && !rest[i..i + len].ends_with('_') {
                names.insert(rest[i..i + len].to_owned());
            }
            rest = &rest[i + len..];
        }
        names
    }

    #[test]
    fn docs_list_exactly_the_exported_metrics() {
        let documented = documented_names();
        let mut exported = BTreeSet::new();
        let mut samples = BTreeSet::new();
        for role in [Role::Controller, Role::Worker] {
            let text = encoded(role);
            exported.extend(families(&text).into_iter().map(|(_, name)| name));
            samples.extend(sample_names(&text));
        }
        let unknown: Vec<_> = documented
            .iter()
            .filter(|n| !exported.contains(*n) && !samples.contains(*n))
            .collect();
        assert!(
            unknown.is_empty(),
            "docs/operations.md names metrics the code does not export: {unknown:?}"
        );
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "metrics missing from docs/operations.md: {undocumented:?}"
        );
    }
}

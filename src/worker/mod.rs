//! The worker: runs exactly the crawl tasks assigned to its Pod, and stops each one when its
//! resource is deleted, suspended, moved to another worker, or when this worker's heartbeat
//! cannot be renewed.
//!
//! ```text
//!  watch CrawlerResources with status.assignedWorker=<pod>  ──┐
//!  (a server-side filter: one assignment reaches one worker)  ├─> desired tasks ─> running tasks
//!  heartbeat Lease renewer ── alive? ─────────────────────────┘      │ crawl::run per task
//!                                                                     └─> status.progress (SSA,
//!                                                                         manager crawler-worker)
//! ```

mod beat;
mod cookie;
mod release;
mod results;

pub use cookie::{COOKIE_LABEL, COOKIE_LABEL_VALUE};
pub use release::{CONFIRM_BOUND as RELEASE_CONFIRM_BOUND, withhold_heartbeat};

pub use results::{CONDITION_COMPLETE, CONDITION_FAILED, Verdict, conditions};

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::{
    io::AsyncWrite,
    sync::{Mutex, mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crawler_crawl::{self as crawl, CrawlConfig, JsonLinesSink, PageRecord, Sink, SinkError};

use crate::{
    crd::{CrawlerResource, CrawlerResourceSpec, Phase, TaskProgress, TaskState},
    heartbeat,
    store::TaskKey,
    telemetry::{Health, Metrics, TaskStopReason},
};

/// How the worker runs (the `worker` subcommand's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Pod this process plays: assignments name it.
    pub pod_name: String,
    /// That Pod's UID (downward API), to make the Pod own the heartbeat Lease.
    pub pod_uid: Option<String>,
    pub namespace: String,
    /// Where page records go.
    pub output: Output,
    /// Heartbeat Lease duration; see [`crate::heartbeat`].
    pub heartbeat_duration: Duration,
    /// How often progress is written into status while a task runs.
    pub progress_interval: Duration,
    /// How often a task's pages and frontier are written to the store (the `postgres` sink).
    pub checkpoint_interval: Duration,
    /// Use only cookie Secrets labelled [`COOKIE_LABEL`]`=true` (see [`cookie`]).
    pub require_cookie_label: bool,
    /// The internal address ranges crawls may connect to (`--allow-internal-cidrs`; none by
    /// default).
    pub address_policy: crawl::AddressPolicy,
    /// The per-host gate and robots.txt cache every task of this worker shares.
    pub politeness: crawl::Politeness,
    /// Retries of a page's transient failures.
    pub retries: crawl::Retries,
    /// The installation's User-Agent (`--user-agent`); the worker adds its own part.
    pub user_agent: String,
}

/// Destination of the page records: JSON lines (the `file` sink), or the PostgreSQL store.
#[derive(Clone, Debug)]
pub enum Output {
    Stdout,
    File(PathBuf),
    Postgres(crate::store::Store),
}

/// One sink shared by all tasks, so records of different tasks never interleave mid-line.
#[derive(Clone)]
struct SharedSink {
    out: Arc<Mutex<JsonLinesSink<Box<dyn AsyncWrite + Unpin + Send>>>>,
    metrics: Metrics,
}

impl Sink for SharedSink {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        if record.status.is_some() {
            self.metrics.pages_fetched(1);
        }
        if let Some(kind) = &record.error_kind {
            self.metrics.fetch_error(crawl::error::kind_label(kind));
            if kind == crawl::error::BLOCKED_ADDRESS {
                self.metrics.request_blocked();
            }
        }
        if record.incomplete {
            self.metrics.record_incomplete();
        }
        self.out.lock().await.write(record).await
    }
}

/// What identifies one run of a task: a change of any part means stop and start again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    uid: String,
    /// `status.assignments` when assigned to us.
    assignment: i64,
    generation: i64,
    /// `status.run`: the crawl run this assignment belongs to (1 when unset). It changes only
    /// with a new assignment; the store starts a higher one from the seeds.
    crawl: i64,
}

struct Task {
    run: Run,
    cancel: CancellationToken,
    /// Why it was stopped, set before `cancel` fires (for the metrics).
    stop_reason: Arc<parking_lot::Mutex<TaskStopReason>>,
    /// Latest resourceVersion seen, for fenced progress writes.
    version: watch::Sender<String>,
    handle: JoinHandle<()>,
}

/// How often a final report (`Completed`, `Failed`) that did not land is sent again: 100 ms,
/// doubling, at most 5 s apart, until it lands or the run is stopped (the controller acts on
/// it: without it a run that ended would hold its worker's room). The worker never runs an
/// assignment again by itself: retrying a failed run is the controller's (`spec.backoffLimit`).
fn final_report_retry() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs the worker until `shutdown` resolves; then stops every task and releases the heartbeat.
#[allow(clippy::too_many_lines)] // the worker's wiring and its main loop, top to bottom
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let results = results::Results::new(&settings.output, &metrics).await?;
    let alerts = results::Alerts::new(client.clone(), &settings.pod_name);
    health.set_not_ready("waiting for the first heartbeat renewal");

    let (alive_tx, mut alive) = watch::channel(false);
    let (deadline_tx, deadline_rx) = watch::channel(None::<tokio::time::Instant>);
    let (stop_tx, stop_rx) = watch::channel(false);
    // When the view of the assignments was last proven complete (the send time of the latest
    // LIST of the checked watch): the heartbeat is renewed only while it is fresh.
    let (fresh_tx, fresh_rx) = watch::channel(None::<tokio::time::Instant>);
    // Since when the oldest release seen here is unconfirmed: past a bound, the heartbeat is
    // withheld so the controller completes the handoff on the lapse.
    let (holding_tx, holding_rx) = watch::channel(None::<tokio::time::Instant>);
    let (confirmed_tx, mut confirmed_rx) = mpsc::unbounded_channel();
    // The assignment watch's cycle grows with the heartbeat (see `heartbeat::watch_cycle`).
    let cycle = heartbeat::watch_cycle(settings.heartbeat_duration);
    let beat = tokio::spawn(beat::run(
        client.clone(),
        beat::Params {
            namespace: settings.namespace.clone(),
            pod: settings.pod_name.clone(),
            pod_uid: settings.pod_uid.clone(),
            duration: settings.heartbeat_duration,
        },
        alive_tx,
        deadline_tx,
        beat::Holds {
            fresh: fresh_rx,
            cycle,
            unconfirmed: holding_rx,
        },
        stop_rx,
        metrics.clone(),
    ));

    let api: Api<CrawlerResource> = Api::namespaced(client.clone(), &settings.namespace);
    let selector = crate::watch::Selector {
        fields: Some(format!("status.assignedWorker={}", settings.pod_name)),
        labels: None,
    };
    // A checked watch (see `crate::watch`): its LISTs prove the view fresh every cycle, and a
    // connection that goes silent is replaced within a cycle plus its idle bound.
    let mut stream = std::pin::pin!(crate::watch::checked(api, selector, cycle));
    tracing::info!(pod = %settings.pod_name, namespace = %settings.namespace, "worker starting; waiting for the first heartbeat");
    tracing::info!(allowed = %settings.address_policy, "crawls connect to public addresses and these internal ranges only (--allow-internal-cidrs)");

    let mut worker = Worker {
        client,
        settings,
        results,
        alerts,
        metrics,
        send_deadline: crawl::SendDeadline::new(deadline_rx),
        assigned: HashMap::new(),
        tasks: HashMap::new(),
        stopping: HashMap::new(),
        releases: release::Releases::default(),
        confirmed_tx,
    };
    let mut gate = Gate::new(cycle);
    let mut shutdown = std::pin::pin!(shutdown);
    // A run that waits for its previous run to end (a spec change) starts on a timer, not only
    // on a change.
    let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stale_at = gate.fresh_as_of.map(|f| f + cycle.stale_after());
        tokio::select! {
            () = &mut shutdown => break,
            _ = retry_tick.tick() => {
                if worker.stopping.is_empty() { continue; }
            }
            () = async { match stale_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                tracing::warn!("the view of this worker's assignments is not known fresh (no LIST succeeded for {:?}): stopping every task, withholding the heartbeat", cycle.stale_after());
            }
            changed = alive.changed() => {
                if changed.is_err() { anyhow::bail!("the heartbeat task stopped"); }
            }
            Some((name, uid, assignment)) = confirmed_rx.recv() => {
                worker.releases.confirmed(&name, &uid, assignment);
            }
            update = stream.next() => match update {
                Some(crate::watch::Update::Apply(r)) => { worker.assigned.insert(r.name_any(), r); }
                Some(crate::watch::Update::Delete(r)) => { worker.assigned.remove(&r.name_any()); }
                // A LIST replaces everything: an assignment that went away while the watch was
                // down (or silent) stops here.
                Some(crate::watch::Update::Listed { items, as_of }) => {
                    worker.assigned = items.into_iter().map(|r| (r.name_any(), r)).collect();
                    gate.fresh_as_of = Some(as_of);
                    fresh_tx.send_replace(Some(as_of));
                }
                Some(crate::watch::Update::Failed(why)) => {
                    tracing::warn!("assignment watch: {why}");
                    continue;
                }
                None => anyhow::bail!("the assignment watch ended"),
            },
        }
        let alive_now = *alive.borrow_and_update();
        let (blocked, may_start) = gate.update(alive_now, tokio::time::Instant::now());
        match blocked {
            None => health.set_ready(true),
            Some((_, why)) => health.set_not_ready(why),
        }
        // Stop what must stop; start nothing until the view is proven complete after the
        // heartbeat came back.
        worker.sync(blocked, may_start);
        holding_tx.send_replace(worker.releases.unconfirmed_since());
    }

    tracing::info!("worker stopping: stopping every task, then releasing the heartbeat");
    health.set_not_ready("shutting down");
    worker.releases.cancel_all();
    let handles = worker.stop_all("the worker is shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(handles)).await;
    let _ = stop_tx.send(true);
    let _ = beat.await;
    Ok(())
}

/// Whether tasks may run, and may start, from the heartbeat and the freshness of the view of the
/// assignments.
struct Gate {
    /// The send time of the LIST that last proved the view of the assignments complete.
    fresh_as_of: Option<tokio::time::Instant>,
    /// After the heartbeat lapsed (or at start), tasks start only from a view proven complete by
    /// a LIST sent after the heartbeat came back: the controller may have moved tasks meanwhile,
    /// and a move it decided before it saw the renewal lands before that LIST is read.
    start_after: Option<tokio::time::Instant>,
    was_alive: bool,
    /// The assignment watch's cycle: the view is not known fresh past its `stale_after`.
    cycle: crate::watch::Cycle,
}

impl Gate {
    fn new(cycle: crate::watch::Cycle) -> Self {
        Self {
            fresh_as_of: None,
            start_after: Some(tokio::time::Instant::now()),
            was_alive: false,
            cycle,
        }
    }

    /// Why no task may run now (`None`: they may), and whether tasks may start.
    fn update(
        &mut self,
        alive: bool,
        now: tokio::time::Instant,
    ) -> (Option<(TaskStopReason, &'static str)>, bool) {
        if alive && !self.was_alive {
            self.start_after = Some(now);
        }
        self.was_alive = alive;
        if self
            .start_after
            .is_some_and(|after| self.fresh_as_of.is_some_and(|f| f >= after))
        {
            self.start_after = None;
        }
        let blocked = if !alive {
            Some((
                TaskStopReason::Heartbeat,
                "the heartbeat is not renewed, or is resuming after a lapse: no task may run",
            ))
        } else if !self.cycle.is_fresh(self.fresh_as_of, now) {
            Some((
                TaskStopReason::Stale,
                "the view of this worker's assignments is not known fresh: no task may run",
            ))
        } else {
            None
        };
        let may_start = blocked.is_none() && self.start_after.is_none();
        (blocked, may_start)
    }
}

struct Worker {
    client: Client,
    settings: Settings,
    results: results::Results,
    alerts: results::Alerts,
    metrics: Metrics,
    /// Until when the heartbeat is valid, for every crawl's check before each request.
    send_deadline: crawl::SendDeadline,
    /// What the watch says is assigned to this Pod now.
    assigned: HashMap<String, CrawlerResource>,
    tasks: HashMap<String, Task>,
    /// Runs stopped and maybe still winding up (final write, final report), by resource: a
    /// release is confirmed only once they have ended.
    stopping: HashMap<String, Vec<JoinHandle<()>>>,
    /// Assignments the controller asked this worker to release (see [`release`]).
    releases: release::Releases,
    confirmed_tx: mpsc::UnboundedSender<(String, String, i64)>,
}

/// Whether `r`'s status says the crawl of its current spec is over (see
/// [`crate::crd::CrawlerResourceStatus::finished`]): the controller ends it, and the worker
/// never starts it, even from a view that lags the controller's.
fn is_finished(r: &CrawlerResource) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.finished(r.metadata.generation))
}

/// Whether the controller is moving `r` off its worker (the handoff's first phase).
fn is_releasing(r: &CrawlerResource) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(Phase::Releasing))
}

impl Worker {
    /// Make the running tasks match the assignments (none at all while `blocked` says why none
    /// may run).
    fn sync(&mut self, blocked: Option<(TaskStopReason, &'static str)>, may_start: bool) {
        let may_run = blocked.is_none();
        let stale: Vec<(String, TaskStopReason, &'static str)> = self
            .tasks
            .iter()
            .filter_map(|(name, task)| {
                if let Some(blocked) = blocked {
                    return Some((name.clone(), blocked.0, blocked.1));
                }
                let (reason, why) = match self.assigned.get(name) {
                    None => (
                        TaskStopReason::Unassigned,
                        "it is no longer assigned to this worker (deleted, suspended or moved)",
                    ),
                    Some(r) if is_releasing(r) => (
                        TaskStopReason::Released,
                        "the controller is moving it off this worker (phase Releasing)",
                    ),
                    Some(r) if r.spec.suspend => {
                        (TaskStopReason::Suspended, "spec.suspend is true")
                    }
                    Some(r) if run_of(r) != task.run => (
                        TaskStopReason::SpecChanged,
                        "its spec or assignment changed",
                    ),
                    Some(_) => return None,
                };
                Some((name.clone(), reason, why))
            })
            .collect();
        for (name, reason, why) in stale {
            if let Some(task) = self.tasks.remove(&name) {
                if task.handle.is_finished() {
                    tracing::debug!(resource = %name, "forgetting a task that ended: {why}");
                } else {
                    tracing::info!(resource = %name, "stopping task: {why}");
                }
                task.stop(reason);
                self.stopping.entry(name).or_default().push(task.handle);
            }
        }
        self.track_releases();
        if !may_run {
            return;
        }
        for (name, resource) in &self.assigned {
            if !may_start && !self.tasks.contains_key(name) {
                continue;
            }
            let run = run_of(resource);
            if resource.spec.suspend
                || is_releasing(resource)
                || self.releases.is_released(name, &run.uid, run.assignment)
            {
                continue;
            }
            if !self.tasks.contains_key(name) && is_finished(resource) {
                // Its run of this spec completed (here before a restart, say) and the controller
                // has not unassigned it yet: never crawled twice.
                tracing::debug!(resource = %name, assignment = run.assignment, "not starting the task: its run of this spec completed");
                continue;
            }
            if let Some(task) = self.tasks.get(name) {
                // A run that ended (completed or failed) is not started again here: the
                // controller ends the crawl or retries it as a new assignment.
                task.version
                    .send_replace(resource.resource_version().unwrap_or_default());
            } else if self.stopping.contains_key(name) {
                // A run of it stopped (a spec change, say) and is still winding up: its last
                // batch could commit after a new run read its frontier. The new run starts at a
                // sync after the old one ended (`track_releases` forgets ended runs; the 1 s
                // tick syncs).
                tracing::debug!(resource = %name, "waiting for its previous run to end before starting it");
            } else {
                let task = self.start(resource.clone());
                self.tasks.insert(name.clone(), task);
            }
        }
    }

    /// Starts confirming each release newly in view, once the runs stopped for it have ended
    /// (whether or not tasks may run now: a stopped task is confirmed as stopped either way), and
    /// forgets the releases no longer in view.
    fn track_releases(&mut self) {
        self.stopping.retain(|_, handles| {
            handles.retain(|h| !h.is_finished());
            !handles.is_empty()
        });
        let assigned = &self.assigned;
        self.releases.retain_in_view(|name| {
            assigned.get(name).map(|r| {
                let run = run_of(r);
                (run.uid, run.assignment)
            })
        });
        let now = tokio::time::Instant::now();
        for (name, resource) in self.assigned.iter().filter(|(_, r)| is_releasing(r)) {
            let run = run_of(resource);
            let Some(cancel) = self.releases.observe(name, &run.uid, run.assignment, now) else {
                continue;
            };
            tracing::info!(resource = %name, assignment = run.assignment, "released by the controller: stopping the task here and confirming the stop");
            tokio::spawn(release::confirm(
                Api::namespaced(self.client.clone(), &self.settings.namespace),
                (
                    name.clone(),
                    self.settings.pod_name.clone(),
                    run.uid,
                    run.assignment,
                ),
                self.stopping.remove(name).unwrap_or_default(),
                cancel,
                self.confirmed_tx.clone(),
            ));
        }
    }

    fn start(&self, resource: CrawlerResource) -> Task {
        let run = run_of(&resource);
        tracing::info!(resource = %resource.name_any(), assignment = run.assignment, "starting task");
        let cancel = CancellationToken::new();
        let (version, version_rx) = watch::channel(resource.resource_version().unwrap_or_default());
        let stop_reason = Arc::new(parking_lot::Mutex::new(TaskStopReason::Unassigned));
        let shared = Shared {
            client: self.client.clone(),
            settings: self.settings.clone(),
            results: self.results.clone(),
            alerts: self.alerts.clone(),
            metrics: self.metrics.clone(),
            send_deadline: self.send_deadline.clone(),
        };
        let handle = tokio::spawn(run_task(
            shared,
            resource,
            run.clone(),
            cancel.clone(),
            version_rx,
            Arc::clone(&stop_reason),
        ));
        Task {
            run,
            cancel,
            stop_reason,
            version,
            handle,
        }
    }

    fn stop_all(&mut self, why: &str) -> Vec<JoinHandle<()>> {
        self.tasks
            .drain()
            .map(|(name, task)| {
                tracing::info!(resource = %name, "stopping task: {why}");
                task.stop(TaskStopReason::Shutdown);
                task.handle
            })
            .collect()
    }
}

impl Task {
    fn stop(&self, reason: TaskStopReason) {
        *self.stop_reason.lock() = reason;
        self.cancel.cancel();
    }
}

fn run_of(r: &CrawlerResource) -> Run {
    Run {
        uid: r.uid().unwrap_or_default(),
        assignment: r.status.as_ref().and_then(|s| s.assignments).unwrap_or(0),
        generation: r.metadata.generation.unwrap_or(0),
        crawl: r.status.as_ref().and_then(|s| s.run).unwrap_or(1).max(1),
    }
}

/// What every task of this worker shares.
struct Shared {
    client: Client,
    settings: Settings,
    results: results::Results,
    alerts: results::Alerts,
    metrics: Metrics,
    /// Until when the heartbeat is valid (see [`crawl::SendDeadline`]).
    send_deadline: crawl::SendDeadline,
}

/// One task from start to its final report.
async fn run_task(
    shared: Shared,
    resource: CrawlerResource,
    run: Run,
    cancel: CancellationToken,
    version: watch::Receiver<String>,
    stop_reason: Arc<parking_lot::Mutex<TaskStopReason>>,
) {
    let metrics = shared.metrics.clone();
    metrics.task_started();
    let stopper = Stopper {
        cancel,
        reason: Arc::clone(&stop_reason),
    };
    let reason = run_crawl(shared, resource, run, stopper, version).await;
    let reason = reason.unwrap_or_else(|| *stop_reason.lock());
    metrics.task_stopped(reason);
}

/// Runs the crawl and reports it; returns how it ended by itself (`None`: it was stopped).
#[allow(clippy::too_many_lines)] // one run from its start to its final report, top to bottom
async fn run_crawl(
    Shared {
        client,
        settings,
        results,
        alerts,
        send_deadline,
        ..
    }: Shared,
    resource: CrawlerResource,
    run: Run,
    stopper: Stopper,
    version: watch::Receiver<String>,
) -> Option<TaskStopReason> {
    let name = resource.name_any();
    let cancel = stopper.cancel.clone();
    let (health_tx, health) = watch::channel::<Option<String>>(None);
    let reporter = Arc::new(Reporter {
        api: Api::namespaced(client.clone(), &settings.namespace),
        name: name.clone(),
        worker: settings.pod_name.clone(),
        uid: run.uid.clone(),
        assignment: run.assignment,
        generation: run.generation,
        version,
        conditions: parking_lot::Mutex::new(Vec::new()),
        stopper,
    });
    let cannot_start = async |message: String| {
        tracing::warn!(resource = %name, "task cannot start: {message}");
        let message = format!(
            "{message} (the controller places it again after a back-off, up to \
             spec.backoffLimit times)"
        );
        alerts.warn(&resource, "CannotStart", &message).await;
        report_final(
            &reporter,
            failed("CannotStart", message),
            &crawl::Progress::default(),
        )
        .await;
        Some(TaskStopReason::Failed)
    };
    // `spec.activeDeadlineSeconds`, counted from the run's start here: the crawl is stopped
    // (cleanly: its last batch is written) and the run reported `Failed`, `DeadlineExceeded`.
    let deadline = resource
        .spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| (s, tokio::time::Instant::now() + Duration::from_secs(s)));
    let config = match crawl_config(&client, &settings, &resource, run.assignment).await {
        Ok(config) => crawl::CrawlConfig {
            send_deadline,
            run: u64::try_from(run.crawl).unwrap_or(1),
            carried_backoff: carried_backoff(&resource),
            ..config
        },
        Err(message) => return cannot_start(message).await,
    };
    let (progress_tx, progress_rx) = watch::channel(crawl::Progress::default());
    // Reports go out from their own task: a slow or unreachable API server must never hold up
    // the crawl (or its cancellation). They start before the store is opened, so a task
    // waiting for its database says so.
    let crawl_done = CancellationToken::new();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let periodic = tokio::spawn(report_periodically(
        Arc::clone(&reporter),
        progress_rx.clone(),
        health,
        settings.progress_interval,
        crawl_done.clone(),
        (alerts.clone(), resource.clone()),
        started_tx,
    ));
    let stop_reports = async || {
        crawl_done.cancel();
        let _ = periodic.await;
    };
    let key = TaskKey {
        namespace: settings.namespace.clone(),
        uid: run.uid.clone(),
        name: name.clone(),
        worker: settings.pod_name.clone(),
        assignment: run.assignment,
        run: run.crawl,
    };
    let (sink, frontier) = match results.open(key, &config, health_tx, cancel.clone()).await {
        Ok(opened) => opened,
        Err(e) if e.is_fenced() => {
            stop_reports().await;
            return Some(refused_as_stale(&alerts, &resource, &e).await);
        }
        Err(_) if cancel.is_cancelled() => {
            stop_reports().await;
            return None;
        }
        Err(e) => {
            stop_reports().await;
            return cannot_start(crawl::error::error_chain(&e)).await;
        }
    };
    // The start is fenced like a move: no request goes out before the first report, written on
    // the resourceVersion this run was started from, has landed. A move the controller decided
    // on that version (one phase, off a worker whose heartbeat lapsed) and a start on it exclude
    // each other: whichever commits second gets 409. If the move came first, the report finds
    // the task moved (and stops the run); if the start came first, the controller's write is
    // refused and it decides again, on a version that shows this worker's renewal.
    if !started.await.unwrap_or(false) {
        stop_reports().await;
        if cancel.is_cancelled() {
            return None;
        }
        return cannot_start(
            "its start could not be recorded in status.progress (the API server did not take \
             the report); no request was made"
                .to_owned(),
        )
        .await;
    }
    let crawl_cancel = cancel.child_token();
    let timer = deadline.map(|(_, at)| {
        let crawl_cancel = crawl_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            crawl_cancel.cancel();
        })
    });
    let outcome = crawl::run_from(
        config,
        frontier,
        sink,
        crawl_cancel.clone(),
        crawl::watch_progress(progress_tx),
    )
    .await;
    if let Some(timer) = timer {
        timer.abort();
    }
    // Let a report in flight finish before the final one, so a late Running can never land
    // after it (a report is bounded by its own timeout).
    stop_reports().await;
    let progress = progress_rx.borrow().clone();
    let stopped_by_deadline = crawl_cancel.is_cancelled()
        && !cancel.is_cancelled()
        && outcome
            .as_ref()
            .is_ok_and(|o| o.stop == crawl::StopReason::Cancelled);
    if let Some((seconds, _)) = deadline.filter(|_| stopped_by_deadline) {
        let message = format!(
            "the run took longer than spec.activeDeadlineSeconds ({seconds}s) and was stopped \
             after {} pages; the crawl fails for good (not retried): raise the deadline or change \
             the spec to run it again",
            progress.pages_fetched
        );
        tracing::warn!(resource = %name, "{message}");
        alerts.warn(&resource, DEADLINE_EXCEEDED, &message).await;
        report_final(&reporter, failed(DEADLINE_EXCEEDED, message), &progress).await;
        return Some(TaskStopReason::Failed);
    }
    report_outcome(outcome, progress, &reporter, &alerts, &resource).await
}

/// `progress.reason` of a run stopped by `spec.activeDeadlineSeconds`.
const DEADLINE_EXCEEDED: &str = crate::controller::index::DEADLINE_EXCEEDED;

/// Writes a final report (`Completed` or `Failed`), again and again until it lands or the run
/// is stopped (e.g. the resource moved or was deleted: the watch stops it).
async fn report_final(reporter: &Reporter, verdict: Verdict, progress: &crawl::Progress) {
    let mut delays = final_report_retry();
    while !reporter.report(verdict.clone(), progress).await {
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::debug!(resource = %reporter.name, ?delay, "the final report did not land; sending it again");
        tokio::select! {
            () = reporter.stopper.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How often a running task looks for a change of state to write at once (the store's wait
/// beginning or ending, a host's back-off window opening or closing): at most one such write per
/// task this often.
const STATE_CHECK: Duration = Duration::from_secs(2);

/// Writes the run's state into status as soon as it changes (within [`STATE_CHECK`]: waiting for
/// the database or not, a host backing off or not), and its page counts every `interval` while
/// they change. Counts are what costs writes at scale (a write per running task per interval),
/// so `--progress-interval` is a minute by default; the live counts are in the metrics.
async fn report_periodically(
    reporter: Arc<Reporter>,
    mut progress_rx: watch::Receiver<crawl::Progress>,
    mut health: watch::Receiver<Option<String>>,
    interval: Duration,
    crawl_done: CancellationToken,
    (alerts, resource): (results::Alerts, CrawlerResource),
    started: tokio::sync::oneshot::Sender<bool>,
) {
    // The first report is the start's fence (see `run_crawl`).
    let written = reporter
        .report(running(None), &crawl::Progress::default())
        .await;
    let _ = started.send(written);
    // A host's window, opened or moved: written at once, so that the next owner of the task (it
    // reads the last report) never sends inside a window this run knew of. A host gets no
    // request inside its window, so a new window comes at most once per window.
    let backoff_of =
        |p: &crawl::Progress| p.host_backoff.as_ref().map(|b| (b.host.clone(), b.until));
    let mut written_backoff = None;
    let mut counts_written = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(interval.min(STATE_CHECK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crawl_done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let health_changed = health.has_changed().unwrap_or(false);
        let backoff = backoff_of(&progress_rx.borrow());
        let state_changed = health_changed || backoff != written_backoff;
        let counts_due =
            progress_rx.has_changed().unwrap_or(false) && counts_written.elapsed() >= interval;
        if !state_changed && !counts_due {
            continue;
        }
        let progress = progress_rx.borrow_and_update().clone();
        let waiting = health.borrow_and_update().clone();
        written_backoff = backoff_of(&progress);
        counts_written = tokio::time::Instant::now();
        if health_changed && let Some(why) = &waiting {
            alerts.warn(&resource, "WaitingForDatabase", why).await;
        }
        let verdict = running(waiting);
        let verdict = match &progress.host_backoff {
            Some(b) if verdict.reason == "Crawling" => Verdict {
                message: format!(
                    "the task is running; host {} answered {}: no request goes to it before {}",
                    b.host, b.status, b.until
                ),
                ..verdict
            },
            _ => verdict,
        };
        reporter.report(verdict, &progress).await;
    }
}

/// The final report of a crawl that ended; returns how it ended by itself (`None`: stopped).
async fn report_outcome(
    outcome: Result<crawl::CrawlOutcome, crawl::CrawlError>,
    progress: crawl::Progress,
    reporter: &Reporter,
    alerts: &results::Alerts,
    resource: &CrawlerResource,
) -> Option<TaskStopReason> {
    let name = resource.name_any();
    match outcome {
        Ok(outcome) if outcome.stop == crawl::StopReason::Cancelled => {
            // Stopped on purpose; a report may be refused (moved, deleted): that is fine.
            let verdict = Verdict {
                state: TaskState::Stopped,
                reason: "Stopped",
                message: "stopped by the worker".to_owned(),
            };
            reporter.report(verdict, &outcome.progress).await;
            None
        }
        Ok(outcome) => {
            tracing::info!(resource = %name, pages = outcome.progress.pages_fetched, "task completed");
            let (reason, message) = if outcome.stop == crawl::StopReason::MaxPages {
                (
                    "MaxPages",
                    "spec.maxPages pages were fetched; links were left unvisited",
                )
            } else {
                ("Finished", "every page within the limits was fetched")
            };
            let verdict = Verdict {
                state: TaskState::Completed,
                reason,
                message: message.to_owned(),
            };
            report_final(reporter, verdict, &outcome.progress).await;
            Some(TaskStopReason::Finished)
        }
        Err(e) if e.sink_error().is_some_and(SinkError::is_fenced) => {
            Some(refused_as_stale(alerts, resource, e.sink_error().expect("matched above")).await)
        }
        Err(e) => {
            let message = crawl::error::error_chain(&e);
            tracing::warn!(resource = %name, "task failed: {message}");
            alerts.warn(resource, "CrawlFailed", &message).await;
            report_final(reporter, failed("CrawlFailed", message), &progress).await;
            Some(TaskStopReason::Failed)
        }
    }
}

fn running(waiting: Option<String>) -> Verdict {
    match waiting {
        None => Verdict {
            state: TaskState::Running,
            reason: "Crawling",
            message: "the task is running".to_owned(),
        },
        Some(why) => Verdict {
            state: TaskState::Running,
            reason: "WaitingForDatabase",
            message: why,
        },
    }
}

fn failed(reason: &'static str, message: String) -> Verdict {
    Verdict {
        state: TaskState::Failed,
        reason,
        message,
    }
}

/// The store refused this worker's write: a newer assignment owns the task. Nothing is written
/// into status (it belongs to the new owner now); the log and an Event say why.
async fn refused_as_stale(
    alerts: &results::Alerts,
    resource: &CrawlerResource,
    e: &SinkError,
) -> TaskStopReason {
    let message = crawl::error::error_chain(e);
    tracing::warn!(resource = %resource.name_any(), "stopping task: {message}");
    alerts.warn(resource, "RefusedAsStale", &message).await;
    TaskStopReason::Fenced
}

/// The back-off window the task's last report shows (its previous owner's, read before this
/// run's first report replaces it): the new run keeps it (`crawl::Politeness::hold`).
fn carried_backoff(r: &CrawlerResource) -> Vec<crawl::HostBackoff> {
    r.status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .and_then(|p| p.host_backoff.as_ref())
        .map(|b| crawl::HostBackoff {
            host: b.host.clone(),
            until: b.until.0,
            status: u16::try_from(b.status).unwrap_or(429),
        })
        .into_iter()
        .collect()
}

/// The crawl configuration of a resource (without credentials): pure, so it can be fuzzed.
/// The User-Agent names the worker and the assignment, so a site's log shows who crawled when.
pub fn config_from_spec(
    name: &str,
    spec: &CrawlerResourceSpec,
    worker: &str,
    assignment: i64,
) -> CrawlConfig {
    let mut config = CrawlConfig::new(spec.task_name(name), spec.seeds.clone());
    config.max_depth = u32::try_from(spec.max_depth).unwrap_or(0);
    config.allowed_hosts.clone_from(&spec.allowed_hosts);
    config.rate_limit = crawl::RateLimit {
        requests_per_second: spec.rate_limit.requests_per_second,
        burst: u32::try_from(spec.rate_limit.burst).unwrap_or(1).max(1),
    };
    if let Some(max) = spec.max_pages {
        config.max_pages = u64::try_from(max).unwrap_or(1).max(1);
    }
    config.rules = crate::rules::crawl_rules(spec);
    config.sitemaps = spec.sitemaps;
    config.user_agent = worker_user_agent(crawl::DEFAULT_USER_AGENT, worker, assignment);
    config
}

/// The installation's User-Agent with the worker's part, which the test site reads:
/// `name/version (+url) (worker <pod>; assignment <n>)`.
pub fn worker_user_agent(base: &str, worker: &str, assignment: i64) -> String {
    format!("{base} (worker {worker}; assignment {assignment})")
}

/// The crawl configuration of a resource, with its cookie read from the referenced Secret.
async fn crawl_config(
    client: &Client,
    settings: &Settings,
    r: &CrawlerResource,
    assignment: i64,
) -> Result<CrawlConfig, String> {
    let spec = &r.spec;
    let mut config = config_from_spec(&r.name_any(), spec, &settings.pod_name, assignment);
    config.checkpoint_interval = settings.checkpoint_interval;
    config.address_policy = settings.address_policy.clone();
    config.politeness = settings.politeness.clone();
    config.retries = settings.retries;
    config.user_agent = worker_user_agent(&settings.user_agent, &settings.pod_name, assignment);
    if let Some(secret_ref) = &spec.cookie_secret_ref {
        let cookie = cookie::read(
            client,
            &settings.namespace,
            secret_ref,
            settings.require_cookie_label,
        )
        .await?;
        config.headers.insert("cookie", cookie);
    }
    config.validate().map_err(|e| {
        format!(
            "the spec cannot be crawled: {}",
            crawl::error::error_chain(&e)
        )
    })?;
    Ok(config)
}

/// Writes `status.progress` under the worker's field manager, fenced on a resourceVersion at
/// which the resource was still assigned to this worker under this assignment: once it moves on
/// (reassigned, deleted), a late report is refused rather than written over the new owner's.
/// Rounds of read-and-write on conflicts: the controller may write between our read and our write.
const REPORT_ATTEMPTS: u32 = 4;

struct Reporter {
    api: Api<CrawlerResource>,
    name: String,
    worker: String,
    /// The object this run is for: a resource re-created under the same name is another task.
    uid: String,
    assignment: i64,
    /// `metadata.generation` of the spec this run crawls (the conditions' observedGeneration).
    generation: i64,
    /// The latest version the assignment watch delivered.
    version: watch::Receiver<String>,
    /// The conditions this reporter last wrote, for their transition times.
    conditions: parking_lot::Mutex<Vec<Condition>>,
    /// Stops the run when a report finds the resource moved away.
    stopper: Stopper,
}

/// What stops one run: its cancellation, and why (set first, for the metrics).
struct Stopper {
    cancel: CancellationToken,
    reason: Arc<parking_lot::Mutex<TaskStopReason>>,
}

impl Stopper {
    fn stop(&self, reason: TaskStopReason) {
        *self.reason.lock() = reason;
        self.cancel.cancel();
    }
}

/// Why a run of (`worker`, `uid`, `assignment`) must stop, judging by `found` (a fresh read of
/// its resource; `None`: deleted): the resource moved away (another worker or assignment, or a
/// new object under the same name) or the controller is moving it (phase `Releasing`). `None`
/// while it is still this run's to do.
fn moved_away(
    found: Option<&CrawlerResource>,
    worker: &str,
    uid: &str,
    assignment: i64,
) -> Option<(TaskStopReason, &'static str)> {
    let Some(r) = found else {
        return Some((TaskStopReason::Unassigned, "the resource is gone"));
    };
    let status = r.status.as_ref();
    let ours = r.uid().as_deref() == Some(uid)
        && status.and_then(|s| s.assigned_worker.as_deref()) == Some(worker)
        && status.and_then(|s| s.assignments) == Some(assignment);
    if !ours {
        return Some((
            TaskStopReason::Unassigned,
            "it was moved to another worker or assignment",
        ));
    }
    if is_releasing(r) {
        return Some((
            TaskStopReason::Released,
            "the controller is moving it off this worker (phase Releasing)",
        ));
    }
    None
}

impl Reporter {
    /// Writes the report, fenced on the resource's version; returns whether it was written.
    async fn report(&self, verdict: Verdict, progress: &crawl::Progress) -> bool {
        let state = verdict.state;
        let message = match state {
            TaskState::Running if verdict.reason == "Crawling" => None,
            _ => Some(verdict.message.clone()),
        };
        let report = TaskProgress {
            worker: self.worker.clone(),
            assignment: self.assignment,
            state,
            generation: Some(self.generation),
            pages_fetched: i64::try_from(progress.pages_fetched).unwrap_or(i64::MAX),
            errors: i64::try_from(progress.errors).unwrap_or(i64::MAX),
            incomplete: i64::try_from(progress.incomplete).unwrap_or(i64::MAX),
            pages_unchanged: i64::try_from(progress.pages_unchanged).unwrap_or(i64::MAX),
            last_activity: progress.last_activity.map(Time),
            message,
            reason: (state == TaskState::Failed).then(|| verdict.reason.to_owned()),
            released: false,
            host_backoff: progress
                .host_backoff
                .as_ref()
                .map(|b| crate::crd::HostBackoffReport {
                    host: b.host.clone(),
                    // A `Time` is written in whole seconds, cut down: rounded up here, so the
                    // next owner's window never ends before this one's.
                    until: Time(
                        b.until
                            .round(
                                jiff::TimestampRound::new()
                                    .smallest(jiff::Unit::Second)
                                    .mode(jiff::RoundMode::Ceil),
                            )
                            .unwrap_or(b.until),
                    ),
                    status: i32::from(b.status),
                }),
        };
        let conditions = {
            let mut last = self.conditions.lock();
            *last = conditions(&verdict, self.generation, &last, &jiff::Timestamp::now());
            last.clone()
        };
        let mut version = self.version.borrow().clone();
        // Our own previous report (or anyone's write) may have moved the version on before the
        // watch told us: on a conflict, read the resource and write again only if it is still
        // ours under the same assignment (or, for a final report, still shows our own report).
        for attempt in 0..REPORT_ATTEMPTS {
            let write = self.write(&version, &report, &conditions);
            match tokio::time::timeout(Duration::from_secs(5), write).await {
                Ok(Ok(())) => return true,
                Ok(Err(kube::Error::Api(s))) if s.code == 409 && attempt + 1 < REPORT_ATTEMPTS => {
                    // Bounded like the write: the client has no read timeout of its own.
                    let read = self.api.get_opt(&self.name);
                    match tokio::time::timeout(Duration::from_secs(5), read).await {
                        Ok(Ok(Some(r))) if self.may_write(&r, state) => {
                            version = r.resource_version().unwrap_or_default();
                        }
                        Ok(Ok(found)) => {
                            self.stop_if_moved(found.as_ref(), state);
                            return false;
                        }
                        _ => return false,
                    }
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 || s.code == 404 => {
                    tracing::debug!(resource = %self.name, code = s.code, "progress report refused: the resource moved on");
                    if s.code == 404 {
                        self.stop_if_moved(None, state);
                    }
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::warn!(resource = %self.name, error = %e, "cannot report progress");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(resource = %self.name, "reporting progress timed out");
                    return false;
                }
            }
        }
        false
    }

    /// A report of a running task found the resource moved away (or being moved): the run
    /// stops here at once, without waiting for the assignment watch to say so.
    fn stop_if_moved(&self, found: Option<&CrawlerResource>, state: TaskState) {
        if state != TaskState::Running {
            return;
        }
        if let Some((reason, why)) = moved_away(found, &self.worker, &self.uid, self.assignment) {
            tracing::info!(resource = %self.name, "stopping task: a progress report found that {why}");
            self.stopper.stop(reason);
        }
    }

    /// Whether this report may be written: the resource is still assigned to this worker under
    /// this assignment (and, for a running task, not being released), or (for a final report,
    /// after a suspend or a move) the progress shown is still this worker's own report of this
    /// assignment, so no newer owner is overwritten.
    fn may_write(&self, r: &CrawlerResource, state: TaskState) -> bool {
        if state == TaskState::Running
            && moved_away(Some(r), &self.worker, &self.uid, self.assignment).is_some()
        {
            return false;
        }
        r.status.as_ref().is_some_and(|s| {
            let assigned = r.uid().as_deref() == Some(self.uid.as_str())
                && s.assigned_worker.as_deref() == Some(self.worker.as_str())
                && s.assignments == Some(self.assignment);
            let own_report = s
                .progress
                .as_ref()
                .is_some_and(|p| p.worker == self.worker && p.assignment == self.assignment);
            assigned || (state != TaskState::Running && own_report)
        })
    }

    async fn write(
        &self,
        version: &str,
        report: &TaskProgress,
        conditions: &[Condition],
    ) -> Result<(), kube::Error> {
        // `conditions` is a list-map keyed by type: this field manager owns `Complete` and
        // `Failed`, the controller's `Assigned` is left alone.
        let patch = json!({
            "apiVersion": CrawlerResource::api_version(&()),
            "kind": CrawlerResource::kind(&()),
            "metadata": { "name": self.name, "resourceVersion": version },
            "status": { "progress": report, "conditions": conditions },
        });
        let params = PatchParams::apply(heartbeat::FIELD_MANAGER).force();
        self.api
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec(json: serde_json::Value) -> CrawlerResourceSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_spec_maps_onto_the_crawl() {
        let s = spec(serde_json::json!({
            "seeds": ["https://a.example/"], "maxDepth": 3, "maxPages": 50,
            "rateLimit": { "requestsPerSecond": 0.5, "burst": 2 }, "allowedHosts": ["a.example", "b.example"],
            "task": "douban_book_list"
        }));
        let c = config_from_spec("task-test-4", &s, "worker-1", 7);
        assert_eq!(c.task, "douban_book_list");
        assert_eq!((c.max_depth, c.max_pages), (3, 50));
        assert_eq!(
            c.rate_limit,
            crawl::RateLimit {
                requests_per_second: 0.5,
                burst: 2
            }
        );
        assert_eq!(
            c.allowed_hosts,
            Some(vec!["a.example".to_owned(), "b.example".to_owned()])
        );
        assert!(
            c.user_agent.ends_with("(worker worker-1; assignment 7)"),
            "{}",
            c.user_agent
        );
        assert!(c.validate().is_ok());
    }

    proptest! {
        /// Whatever a spec holds (the API server's schema is the first line of defence, but a
        /// spec can also be written before a CRD upgrade), mapping and validating never panics.
        #[test]
        fn any_spec_maps_and_validates_without_panicking(
            seeds in proptest::collection::vec(".{0,40}", 0..4),
            hosts in proptest::option::of(proptest::collection::vec(".{0,20}", 0..3)),
            depth in any::<i32>(), pages in proptest::option::of(any::<i32>()),
            rps in any::<f64>(), burst in any::<i32>(), weight in any::<i32>(),
        ) {
            let mut s = spec(serde_json::json!({ "seeds": [] }));
            s.seeds = seeds;
            s.allowed_hosts = hosts;
            s.max_depth = depth;
            s.max_pages = pages;
            s.rate_limit = crate::crd::RateLimit { requests_per_second: rps, burst };
            s.weight = weight;
            let c = config_from_spec("x", &s, "w", 1);
            let _ = c.validate();
        }
    }
}

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
mod report;
mod results;
mod task;

pub use cookie::{COOKIE_LABEL, COOKIE_LABEL_VALUE};
pub use release::{CONFIRM_BOUND as RELEASE_CONFIRM_BOUND, withhold_heartbeat};
pub use task::{config_from_spec, worker_user_agent};

pub use results::{CONDITION_COMPLETE, CONDITION_FAILED, Verdict, conditions};

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crawler_crawl as crawl;

use task::{Shared, run_task};

use crate::{
    crd::{CrawlerResource, Phase},
    heartbeat,
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

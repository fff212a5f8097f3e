//! The controller: watches worker Pods and `CrawlerResources` into an [`Index`], and, while this
//! replica leads, places every resource that needs a worker and writes the decision into its
//! status, one fenced write per decision.
//!
//! ```text
//!  watch Pods ──────┐                        ┌── reconcile task ×N ──┐
//!  (label selector) ├─> Index (loads, plan) ─┤  plan under the lock  ├─> SSA status write
//!  watch Resources ─┘     │ keys to redo     │  write without it     │   (resourceVersion fence)
//!                         └──> WorkQueue ────┘                       └─> Events (best effort)
//!  Leadership (Lease) ── full pass on becoming leader; no write unless leading now
//! ```

pub mod index;
pub mod queue;
pub mod rebalance;

use std::{
    collections::HashSet,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{mpsc, watch};

pub use self::index::{Index, Key, Plan, PlanContext, Reason};
use crawler_core::{Policy, PolicyKind};

use self::queue::WorkQueue;
use crate::{
    crd::{ControllerTerm, CrawlerResource},
    heartbeat,
    leader::Leadership,
    telemetry::{
        EventOutcome, Health, Metrics, RebalanceStage, ReconcileOutcome, WorkerLoad, WriteOutcome,
    },
};

/// Server-side apply field manager of the controller's status fields.
pub const FIELD_MANAGER: &str = "crawler-operator";

/// How the controller runs (the `controller` subcommand's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace only; `None`: all namespaces.
    pub namespace: Option<String>,
    /// Label selector that makes a Pod a worker.
    pub worker_selector: String,
    /// Port of the worker process, shown in `status.assignedAddress`.
    pub worker_port: u16,
    pub policy: PolicyKind,
    /// Reconciles (and so status writes) in flight at once.
    pub concurrency: usize,
    /// Bound on each status write, so a hung API server cannot hold a decision forever.
    pub write_timeout: Duration,
    /// Name of this replica in Events, and in the term stamped on its status writes
    /// (`status.controllerTerm.holder`): its leader-election identity.
    pub instance: String,
    /// `--rebalance` and its flags; `None`: off (the default), nothing well placed ever moves.
    pub rebalance: Option<rebalance::RebalanceSettings>,
    /// The back-off between a failed run and the next (`--backoff-base`, `--backoff-max`).
    pub retry_backoff: index::RetryBackoff,
    /// `--host-affinity`: tasks that share a host run on one worker (see
    /// [`crawler_core::HostHolders`]).
    pub host_affinity: bool,
    /// How long after its first list of heartbeats a worker Pod without a Lease is taken for one
    /// without a heartbeat (`--worker-heartbeat-duration` / 2; see
    /// [`Index::with_unseen_heartbeat_wait`]).
    pub unseen_heartbeat_wait: Duration,
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "status write of {key} refused: it changed since the decision (409 Conflict); deciding again"
    )]
    Conflict { key: Key },
    #[error("cannot write the status of {key}: {source}")]
    Write {
        key: Key,
        #[source]
        source: kube::Error,
    },
    #[error("status write of {key} timed out after {timeout:?}")]
    Timeout { key: Key, timeout: Duration },
    #[error(
        "status write of {key} not sent: the term ends in {left:?} unless renewed, too soon for a \
         write to finish; retrying after the next renewal"
    )]
    TermEnding { key: Key, left: Duration },
    #[error(
        "status write of {key} refused by the leader fence (the API server's copy of the \
         leader Lease does not name this replica's term {holder}/{transitions}); retrying. If \
         this persists while this replica leads, the Lease is not the one this controller \
         elects with (--lease-name, --lease-namespace against the chart's \
         controller.leaderElection.leaseName), or the controller image predates the fence: {message}"
    )]
    Fenced {
        key: Key,
        holder: String,
        transitions: i32,
        message: String,
    },
}

impl Error {
    /// Bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::Write { .. } => "write",
            Error::Timeout { .. } => "timeout",
            Error::TermEnding { .. } => "term_ending",
            Error::Fenced { .. } => "fenced",
        }
    }
}

/// Shared state of the running controller.
struct Context {
    client: Client,
    settings: Settings,
    index: Mutex<Index>,
    queue: WorkQueue<Key>,
    policy: Box<dyn Policy>,
    leadership: watch::Receiver<Leadership>,
    events: mpsc::Sender<(Key, index::PlanEvent, CrawlerResource, tokio::time::Instant)>,
    /// Budget of routine `Assigned` Events (see [`ROUTINE_EVENTS_PER_SECOND`]).
    routine_events: governor::DefaultDirectRateLimiter,
    metrics: Metrics,
    health: Health,
    /// Wakes the rebalance loop when a worker Pod was added, changed or deleted.
    workers_changed: tokio::sync::Notify,
}

/// Routine `Assigned` Events (a first placement) are published at most this many per second after
/// a burst of [`ROUTINE_EVENTS_BURST`]: each one is a write to etcd, and in a bulk create they
/// competed with the status writes (17% more writes at 10,000 resources). The resource's
/// `Assigned` condition carries the same text; `Reassigned` and warnings are not throttled.
pub const ROUTINE_EVENTS_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::new(5).unwrap();
/// See [`ROUTINE_EVENTS_PER_SECOND`].
pub const ROUTINE_EVENTS_BURST: std::num::NonZeroU32 = std::num::NonZeroU32::new(50).unwrap();

/// Runs the controller until `shutdown` resolves. Watches run whether or not this replica leads, so
/// a standby takes over with warm caches; decisions and writes happen only while it leads.
pub async fn run(
    client: Client,
    settings: Settings,
    leadership: watch::Receiver<Leadership>,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (events_tx, events_rx) = mpsc::channel(1024);
    let retry_backoff = settings.retry_backoff;
    let host_affinity = settings.host_affinity;
    let unseen_heartbeat_wait = settings.unseen_heartbeat_wait;
    let ctx = Arc::new(Context {
        client: client.clone(),
        policy: settings.policy.build(),
        settings,
        index: Mutex::new(
            Index::with_unseen_heartbeat_wait(unseen_heartbeat_wait)
                .with_retry_backoff(retry_backoff)
                .with_host_affinity(host_affinity),
        ),
        queue: WorkQueue::new(),
        leadership,
        events: events_tx,
        routine_events: governor::RateLimiter::direct(
            governor::Quota::per_second(ROUTINE_EVENTS_PER_SECOND)
                .allow_burst(ROUTINE_EVENTS_BURST),
        ),
        metrics: metrics.clone(),
        health,
        workers_changed: tokio::sync::Notify::new(),
    });
    tracing::info!(policy = ctx.policy.name(), namespace = ?ctx.settings.namespace, workers = %ctx.settings.worker_selector, "controller starting");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_pods(Arc::clone(&ctx)));
    tasks.spawn(watch_resources(Arc::clone(&ctx)));
    tasks.spawn(watch_heartbeats(Arc::clone(&ctx)));
    tasks.spawn(expire_heartbeats(Arc::clone(&ctx)));
    tasks.spawn(follow_leadership(Arc::clone(&ctx)));
    tasks.spawn(report(Arc::clone(&ctx)));
    if let Some(settings) = ctx.settings.rebalance.clone() {
        tasks.spawn(rebalance::run(Arc::clone(&ctx), settings));
    }
    tasks.spawn(publish_events(
        client,
        ctx.settings.instance.clone(),
        events_rx,
        ctx.queue.clone(),
        metrics,
    ));
    let mut reconcilers = tokio::task::JoinSet::new();
    for _ in 0..ctx.settings.concurrency.max(1) {
        reconcilers.spawn(reconcile_loop(Arc::clone(&ctx)));
    }

    tokio::select! {
        () = shutdown => tracing::info!("controller stopping: no new decisions; waiting for the writes in flight"),
        Some(ended) = tasks.join_next() => {
            tasks.abort_all();
            reconcilers.abort_all();
            anyhow::bail!("a controller task ended unexpectedly: {ended:?}");
        }
        Some(ended) = reconcilers.join_next() => {
            tasks.abort_all();
            reconcilers.abort_all();
            anyhow::bail!("a reconcile task ended unexpectedly: {ended:?}");
        }
    }
    // Stop placing, then let the writes in flight finish (each is bounded by the write timeout
    // and the term) before the caller releases the Lease: a write must not land after another
    // replica took over.
    ctx.queue.close();
    let drained = tokio::time::timeout(ctx.settings.write_timeout + DRAIN_SLACK, async {
        while reconcilers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("writes still in flight after the write timeout; abandoning them");
    }
    reconcilers.abort_all();
    tasks.abort_all();
    Ok(())
}

/// Beyond the write timeout, what the drain on shutdown allows for a reconcile to wind up.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

fn resource_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Feeds one watch into the index and queues the keys each change makes worth reconciling. A
/// (re)list is applied object by object as it arrives, remembering only the names, and ends with
/// `finish`, which removes what the list did not show (objects deleted while the watch was down):
/// the list is never held whole in memory (50 MiB at 100,000 resources when it was).
async fn feed<K, A, D, R, F>(
    ctx: &Context,
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    apply: A,
    delete: D,
    finish: R,
    failed: F,
) where
    K: Resource + Clone,
    A: Fn(&mut Index, &K) -> Vec<Key>,
    D: Fn(&mut Index, &K) -> Vec<Key>,
    R: Fn(&mut Index, &HashSet<(String, String)>) -> Vec<Key>,
    F: Fn(&mut Index),
{
    let mut stream = std::pin::pin!(stream);
    let mut listed: HashSet<(String, String)> = HashSet::new();
    loop {
        let keys = match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(obj))) => apply(&mut ctx.index.lock(), &obj),
            Ok(Some(watcher::Event::Delete(obj))) => delete(&mut ctx.index.lock(), &obj),
            Ok(Some(watcher::Event::Init)) => {
                listed.clear();
                continue;
            }
            Ok(Some(watcher::Event::InitApply(obj))) => {
                if let Some(ns) = obj.meta().namespace.clone() {
                    listed.insert((ns, obj.name_any()));
                }
                apply(&mut ctx.index.lock(), &obj)
            }
            Ok(Some(watcher::Event::InitDone)) => {
                let keys = finish(&mut ctx.index.lock(), &listed);
                listed = HashSet::new();
                keys
            }
            Ok(None) => return,
            Err(e) => {
                // The watcher backs off and re-lists by itself; keep going.
                tracing::warn!(error = %e, "watch failed; retrying with backoff");
                failed(&mut ctx.index.lock());
                continue;
            }
        };
        if !keys.is_empty() && ctx.leadership.borrow().is_leading_now() {
            ctx.queue.add_all(keys);
        }
    }
}

async fn watch_pods(ctx: Arc<Context>) {
    let api: Api<Pod> = resource_api(&ctx.client, ctx.settings.namespace.as_deref());
    let config = watcher::Config::default()
        .labels(&ctx.settings.worker_selector)
        .timeout(WATCH_TIMEOUT_SECS);
    let stream = watcher(api, config)
        .default_backoff()
        .map_ok(|ev| ev.modify(strip_pod));
    // Any change of a worker Pod may change what the rebalance should do (a worker joined,
    // left or changed labels), even when no resource needs a decision at once.
    let changed = &ctx.workers_changed;
    feed(
        &ctx,
        stream,
        |idx, pod: &Pod| {
            changed.notify_one();
            idx.apply_pod(pod)
        },
        |idx, pod: &Pod| {
            changed.notify_one();
            idx.delete_pod(&pod.namespace().unwrap_or_default(), &pod.name_any())
        },
        Index::finish_pod_list,
        |_| {},
    )
    .await;
}

/// Drop what the index never reads, so memory does not grow with Pod specs.
fn strip_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
}

async fn watch_resources(ctx: Arc<Context>) {
    let api: Api<CrawlerResource> = resource_api(&ctx.client, ctx.settings.namespace.as_deref());
    let stream = watcher(api, watcher::Config::default().timeout(WATCH_TIMEOUT_SECS))
        .default_backoff()
        .map_ok(|ev| ev.modify(|r: &mut CrawlerResource| r.metadata.managed_fields = None));
    feed(
        &ctx,
        stream,
        Index::apply_resource,
        |idx, r: &CrawlerResource| {
            idx.delete_resource(&r.namespace().unwrap_or_default(), &r.name_any())
        },
        Index::finish_resource_list,
        |_| {},
    )
    .await;
}

/// The heartbeat Leases, through a checked watch (see [`crate::watch`]): a LIST every cycle, so a
/// renewal is seen within a cycle even when a watch connection went silent. A failed cycle makes
/// the renewals meanwhile unseen (none may expire on their account), and no heartbeat expires
/// without a consistent read that confirms it ([`expire_heartbeats`]).
async fn watch_heartbeats(ctx: Arc<Context>) {
    let api: Api<Lease> = resource_api(&ctx.client, ctx.settings.namespace.as_deref());
    let selector = crate::watch::Selector {
        labels: Some(format!("{}={}", heartbeat::LABEL, heartbeat::LABEL_VALUE)),
        fields: None,
    };
    let mut stream = std::pin::pin!(crate::watch::checked(
        api,
        selector,
        crate::watch::Cycle::SHORT
    ));
    let mut failing = false;
    while let Some(update) = futures::StreamExt::next(&mut stream).await {
        let now = Instant::now();
        let keys = match update {
            crate::watch::Update::Apply(lease) => ctx.index.lock().apply_heartbeat(&lease, now),
            crate::watch::Update::Delete(lease) => ctx
                .index
                .lock()
                .delete_heartbeat(&lease.namespace().unwrap_or_default(), &lease.name_any()),
            crate::watch::Update::Listed { items, .. } => {
                failing = false;
                let mut index = ctx.index.lock();
                let mut keys = Vec::new();
                let mut listed = HashSet::new();
                for lease in &items {
                    listed.insert((lease.namespace().unwrap_or_default(), lease.name_any()));
                    keys.extend(index.apply_heartbeat(lease, now));
                }
                keys.extend(index.finish_heartbeat_list(&listed, now));
                keys
            }
            crate::watch::Update::Failed(why) => {
                if !failing {
                    failing = true;
                    tracing::warn!(
                        "heartbeat watch: {why}; no heartbeat expires on account of renewals it could not show"
                    );
                }
                ctx.index.lock().heartbeats_unseen(now);
                continue;
            }
        };
        if !keys.is_empty() && ctx.leadership.borrow().is_leading_now() {
            ctx.queue.add_all(keys);
        }
    }
}

/// Heartbeats expire by the passing of time, not by an event: check them a few times a second.
/// A due heartbeat expires only after a consistent read of its Lease, sent after it became due,
/// shows no renewal since the one we observed: a heartbeat watch that stalled silently (or lags)
/// must not make live workers look dead and move their tasks while they still run them. The
/// same tick ends the holds on objects created again under a deleted one's name.
async fn expire_heartbeats(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resync = Instant::now();
    let mut ticks: u32 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        let now = Instant::now();
        let resync = now.duration_since(last_resync) >= WAITING_RESYNC;
        let (successors, freed) = {
            let mut index = ctx.index.lock();
            let successors = index.successors_due(now);
            // Room freed anywhere since the last tick is offered to what waits for it; and, as a
            // safety net for any path that frees room without changing a load (a worker's
            // capacity or labels seen late, say), every waiting resource now and then.
            let mut freed = index.room_freed();
            if resync && index.synced() {
                freed = index.all_waiting();
            }
            (successors, freed)
        };
        if resync {
            last_resync = now;
        }
        if ctx.leadership.borrow().is_leading_now() {
            ctx.queue.add_all(successors);
            ctx.queue.add_all(freed);
        }
        if ctx.leadership.borrow().is_leading_now() {
            // Wall-clock times in status (so a new leader keeps them): back-offs that ended and
            // schedules that fire, every tick (a firing starts within a tick of its time); and
            // once a second, finished crawls whose TTL passed.
            let wall = Timestamp::now();
            let (retries, expired) = {
                let mut index = ctx.index.lock();
                if !index.synced() {
                    (Vec::new(), Vec::new())
                } else if ticks.is_multiple_of(5) {
                    (index.retries_due(wall), index.expired(wall))
                } else {
                    (index.retries_due(wall), Vec::new())
                }
            };
            ctx.queue.add_all(retries);
            for gone in expired {
                tokio::spawn(delete_expired(Arc::clone(&ctx), gone));
            }
        }
        let due = ctx.index.lock().heartbeats_due(Instant::now());
        if due.is_empty() {
            continue;
        }
        // Each read is judged as soon as it answers, against the renewal it was due on (see
        // `Index::confirm_heartbeat`): a slow read never holds back the verdict on the others.
        let mut reads: futures::stream::FuturesUnordered<_> = due
            .into_iter()
            .map(|due| {
                let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &due.namespace);
                async move {
                    let read = tokio::time::timeout(
                        HEARTBEAT_READ_TIMEOUT,
                        api.get_opt(&heartbeat::lease_name(&due.pod)),
                    )
                    .await;
                    // A renewal the read shows was sent before it was answered.
                    (due, Instant::now(), read)
                }
            })
            .collect();
        while let Some((due, answered, read)) = futures::StreamExt::next(&mut reads).await {
            let (namespace, pod) = (&due.namespace, &due.pod);
            let lease = match read {
                Ok(Ok(lease)) => lease,
                Ok(Err(e)) => {
                    tracing::debug!(%namespace, worker = %pod, error = %e, "cannot confirm a heartbeat's expiry; it does not expire until a read confirms it");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%namespace, worker = %pod, "reading a heartbeat Lease timed out; it does not expire until a read confirms it");
                    continue;
                }
            };
            let keys = ctx
                .index
                .lock()
                .confirm_heartbeat(&due, lease.as_ref(), answered);
            if !keys.is_empty() && ctx.leadership.borrow().is_leading_now() {
                ctx.queue.add_all(keys);
            }
        }
    }
}

/// Deletes a finished crawl whose `spec.ttlSecondsAfterFinished` passed, on the uid and
/// resourceVersion it was judged on: a spec changed since (a new run) or an object created again
/// under the name is not deleted (409), and the watch shows the current state instead.
async fn delete_expired(ctx: Arc<Context>, gone: index::Expired) {
    let api: Api<CrawlerResource> = Api::namespaced(ctx.client.clone(), &gone.key.namespace);
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: gone.uid.clone(),
            resource_version: gone.resource_version.clone(),
        }),
        ..kube::api::DeleteParams::default()
    };
    let deleted = tokio::time::timeout(
        ctx.settings.write_timeout,
        api.delete(&gone.key.name, &params),
    )
    .await;
    match deleted {
        Ok(Ok(_)) => {
            tracing::info!(resource = %gone.key, "deleted: its crawl finished longer than spec.ttlSecondsAfterFinished ago");
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => {
            tracing::debug!(resource = %gone.key, code = s.code, "not deleted after its TTL: it is gone or changed since");
        }
        Ok(Err(e)) => {
            tracing::warn!(resource = %gone.key, error = %e, "cannot delete a finished crawl whose TTL passed; trying again (the controller's RBAC needs delete on crawlerresources)");
            ctx.index.lock().expiry_failed(&gone.key);
        }
        Err(_) => {
            tracing::warn!(resource = %gone.key, "deleting a finished crawl whose TTL passed timed out; trying again");
            ctx.index.lock().expiry_failed(&gone.key);
        }
    }
}

/// How often every resource waiting for a worker is planned again, whatever changed: a safety
/// net under the event-driven paths (planning one whose status is right writes nothing).
const WAITING_RESYNC: Duration = Duration::from_secs(30);

/// Bound on the read that confirms a heartbeat's expiry.
const HEARTBEAT_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side timeout of the Pod and `CrawlerResource` watches. kube-runtime's watcher gives up on
/// a watch that delivered nothing for this plus 5 s, so a watch whose connection went silent is
/// replaced within 30 s (kube's default: 295 s). Neither watch carries the safety argument (status
/// writes are fenced; heartbeats expire only on a confirming read), only how soon a change is
/// acted on.
const WATCH_TIMEOUT_SECS: u32 = 25;

/// On becoming leader (and once the Pod, resource and heartbeat watches have listed), reconcile everything: resources whose
/// worker went away while no one led get placed, and nothing well placed is written.
async fn follow_leadership(ctx: Arc<Context>) {
    let mut rx = ctx.leadership.clone();
    loop {
        if crate::leader::until_leading(&mut rx).await.is_err() {
            return;
        }
        // Wait for the first full list of the three watches before the full pass.
        while !ctx.index.lock().synced() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let keys = ctx.index.lock().all_keys();
        tracing::info!(
            resources = keys.len(),
            "leading: full pass over all resources"
        );
        ctx.queue.add_all(keys);
        crate::leader::until_lost(&mut rx).await;
        let forgotten = ctx.index.lock().forget_move_requests();
        tracing::info!(
            moves_forgotten = forgotten,
            "no longer leading: decisions stop (moves asked for in this term are forgotten)"
        );
    }
}

async fn reconcile_loop(ctx: Arc<Context>) {
    while let Some(key) = ctx.queue.next().await {
        let started = Instant::now();
        let result = reconcile(&ctx, &key).await;
        let outcome = match &result {
            Ok(outcome) => *outcome,
            Err(e) => ReconcileOutcome::Error(e.category()),
        };
        ctx.metrics.reconcile_done(outcome, started.elapsed());
        match result {
            Ok(_) => ctx.queue.forget(&key),
            Err(e @ Error::Conflict { .. }) => {
                tracing::debug!(error = %e, "conflict");
                // The watch brings the newer object and queues it; this is only a safety net.
                ctx.queue.add_after(key.clone(), Duration::from_secs(1));
            }
            Err(e) => {
                let delay = ctx.queue.retry(
                    key.clone(),
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                );
                tracing::warn!(error = %e, category = e.category(), retry_in = ?delay, "reconcile failed");
            }
        }
        ctx.queue.done(&key);
    }
}

/// Metrics that are snapshots of the index, and readiness: ready once both caches have listed
/// and the elector has said whether this replica leads.
async fn report(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut leadership = ctx.leadership.clone();
    let mut election_known = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
                election_known = true;
            }
        }
        let (stats, synced) = {
            let index = ctx.index.lock();
            (index.stats(), index.synced())
        };
        ctx.metrics
            .set_index_sizes(stats.workers.len(), stats.resources);
        ctx.metrics.set_unschedulable(stats.unschedulable);
        ctx.metrics.set_queue_depth(ctx.queue.len());
        ctx.metrics.set_worker_loads(stats.workers.into_iter().map(
            |(namespace, worker, load, capacity)| WorkerLoad {
                namespace,
                worker,
                load,
                capacity,
            },
        ));
        ctx.metrics
            .set_leader(ctx.leadership.borrow().is_leading_now());
        match (synced, election_known) {
            (true, true) => ctx.health.set_ready(true),
            (false, _) => ctx
                .health
                .set_not_ready("the Pod, CrawlerResource and heartbeat caches have not listed yet"),
            (true, false) => ctx
                .health
                .set_not_ready("the leader election has not answered yet"),
        }
    }
}

/// How long a status write decided now may take. Leadership may have ended while we decided: a
/// decision is only written by a leader (`None`: not leading), and only if it can finish within
/// the term (the local deadline of the last renewal): its timeout never reaches past that
/// deadline, and it is not sent at all when too little is left.
///
/// `decided_in`: when the term the decision was made in began; a decision of an earlier term
/// is not written (the new term's full pass decides again).
fn write_time(
    ctx: &Context,
    key: &Key,
    now: Instant,
    decided_in: Instant,
) -> Result<Option<Duration>, Error> {
    let valid_until = match &*ctx.leadership.borrow() {
        Leadership::Leading {
            since, valid_until, ..
        } if *since == decided_in => Some(*valid_until),
        _ => None,
    };
    let Some(left) = valid_until
        .map(|until| until.saturating_duration_since(now))
        .filter(|left| !left.is_zero())
    else {
        ctx.index.lock().forget(key);
        return Ok(None);
    };
    let timeout = ctx.settings.write_timeout.min(left);
    if timeout < MIN_WRITE_TIME {
        ctx.index.lock().forget(key);
        return Err(Error::TermEnding {
            key: key.clone(),
            left,
        });
    }
    Ok(Some(timeout))
}

/// Sends the status write under `timeout` (already bounded by the term); `None` when leadership
/// ended before it finished (the request is abandoned).
async fn write_within_term(
    ctx: &Context,
    api: &Api<CrawlerResource>,
    key: &Key,
    patch: &serde_json::Value,
    timeout: Duration,
) -> Option<Result<kube::Result<CrawlerResource>, tokio::time::error::Elapsed>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut leadership = ctx.leadership.clone();
    let patch = Patch::Apply(patch);
    let result = tokio::time::timeout(timeout, async {
        tokio::select! {
            written = api.patch_status(&key.name, &params, &patch) => Some(written),
            () = crate::leader::until_lost(&mut leadership) => None,
        }
    })
    .await;
    match result {
        Ok(Some(written)) => Some(Ok(written)),
        Ok(None) => None,
        Err(elapsed) => Some(Err(elapsed)),
    }
}

/// Decide under the index lock, write without it.
async fn reconcile(ctx: &Context, key: &Key) -> Result<ReconcileOutcome, Error> {
    // The term this decision is made in: stamped on the write, which the leader fence refuses
    // once the Lease has moved on to another term.
    let Some((term, since)) = leading_term(ctx) else {
        return Ok(ReconcileOutcome::Nothing);
    };
    // Whole seconds, truncated (never rounded up): a firing or a retry is never acted on before
    // its time, which the tick compares with the clock unrounded.
    let now = Timestamp::now()
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Second)
                .mode(jiff::RoundMode::Trunc),
        )
        .unwrap_or_else(|_| Timestamp::now());
    let plan = {
        let mut index = ctx.index.lock();
        if !index.synced() {
            return Ok(ReconcileOutcome::Wait);
        }
        index.plan(
            key,
            &PlanContext {
                policy: ctx.policy.as_ref(),
                worker_port: ctx.settings.worker_port,
                now,
            },
        )
    };
    let mut write = match plan {
        Plan::Nothing => return Ok(ReconcileOutcome::Nothing),
        Plan::Wait => return Ok(ReconcileOutcome::Wait),
        Plan::Write(write) => write,
    };
    let sent = Instant::now();
    let Some(timeout) = write_time(ctx, key, sent, since)? else {
        return Ok(ReconcileOutcome::Nothing);
    };
    write.status.controller_term = Some(ControllerTerm {
        holder: ctx.settings.instance.clone(),
        lease_transitions: term,
    });
    let api: Api<CrawlerResource> = Api::namespaced(ctx.client.clone(), &key.namespace);
    // Server-side apply of the controller's fields only, carrying the resourceVersion the decision
    // was made on: the API server refuses it (409) if the object changed meanwhile.
    let patch = json!({
        "apiVersion": CrawlerResource::api_version(&()),
        "kind": CrawlerResource::kind(&()),
        "metadata": { "name": key.name, "resourceVersion": write.resource_version },
        "status": write.status,
    });
    let Some(result) = write_within_term(ctx, &api, key, &patch, timeout).await else {
        // Leadership ended first. The request may still land (bytes held in the network);
        // its resourceVersion fences it against any later write to this resource.
        tracing::warn!(resource = %key, after = ?sent.elapsed(), "status write abandoned: leadership ended before it finished");
        ctx.index.lock().forget(key);
        ctx.metrics.status_write(WriteOutcome::Timeout);
        return Ok(ReconcileOutcome::Nothing);
    };
    match result {
        Ok(Ok(written)) => {
            ctx.index
                .lock()
                .written(key, written.metadata.resource_version.clone());
            ctx.metrics.status_write(WriteOutcome::Ok);
            if let Some(kind) = write.event.as_ref().and_then(|e| e.reason.assignment()) {
                ctx.metrics.assignment(kind);
            }
            if write.event.as_ref().map(|e| e.reason) == Some(Reason::Rebalanced) {
                ctx.metrics.rebalance_moves(RebalanceStage::Made, 1);
            }
            if let Some(event) = write.event {
                tracing::info!(resource = %key, reason = event.reason.as_str(), "{}", event.note);
                if event.reason == Reason::Assigned && ctx.routine_events.check().is_err() {
                    // A bulk create would double the writes with Events that repeat the
                    // `Assigned` condition; moves and warnings are never throttled.
                    ctx.metrics.event(EventOutcome::Throttled);
                } else if ctx
                    .events
                    .try_send((key.clone(), event, written, tokio::time::Instant::now()))
                    .is_err()
                {
                    // Best effort: a full queue drops the Event, never the decision.
                    ctx.metrics.event(EventOutcome::Dropped);
                }
            }
            Ok(ReconcileOutcome::Ok)
        }
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
            ctx.index.lock().forget(key);
            ctx.metrics.status_write(WriteOutcome::Conflict);
            Err(Error::Conflict { key: key.clone() })
        }
        Ok(Err(source)) => {
            ctx.index.lock().forget(key);
            ctx.metrics.status_write(WriteOutcome::Error);
            Err(write_error(ctx, key, term, source))
        }
        Err(_) => {
            // The write may still land; forgetting is safe because its watch event will be applied.
            ctx.index.lock().forget(key);
            ctx.metrics.status_write(WriteOutcome::Timeout);
            if timeout < ctx.settings.write_timeout {
                tracing::warn!(resource = %key, ?timeout, "status write abandoned at the end of the term (no renewal meanwhile)");
            }
            Err(Error::Timeout {
                key: key.clone(),
                timeout,
            })
        }
    }
}

/// A failed status write (not a conflict) as the reconcile reports it: the leader fence's
/// refusal says so.
fn write_error(ctx: &Context, key: &Key, term: i32, source: kube::Error) -> Error {
    match source {
        kube::Error::Api(status) if is_fence_refusal(&status) => Error::Fenced {
            key: key.clone(),
            holder: ctx.settings.instance.clone(),
            transitions: term,
            message: status.message,
        },
        source => Error::Write {
            key: key.clone(),
            source,
        },
    }
}

/// The term this replica leads in now (`leaseTransitions`, and when it began), if it does.
fn leading_term(ctx: &Context) -> Option<(i32, Instant)> {
    match &*ctx.leadership.borrow() {
        Leadership::Leading {
            term,
            since,
            valid_until,
        } if Instant::now() < *valid_until => Some((*term, *since)),
        _ => None,
    }
}

/// Marks the leader fence's refusals: the chart's policy starts its message with it.
pub const FENCE_MESSAGE_PREFIX: &str = "leader fence:";

/// A 403 from the chart's leader-fence admission policy (not RBAC): the API server's copy of
/// the Lease names another holder or term than the write's stamp. Retried like any failed write:
/// at a term's start the API server's Lease cache may lag the takeover by milliseconds.
fn is_fence_refusal(status: &kube::core::Status) -> bool {
    status.code == 403 && status.message.contains(FENCE_MESSAGE_PREFIX)
}

/// A status write is not sent when less than this is left of the term: it could not finish
/// within it (a write takes milliseconds; a leader renews every retry period, so this only
/// happens while renewals fail).
const MIN_WRITE_TIME: Duration = Duration::from_millis(500);

/// Bound on publishing one Event (the client has no read timeout): a hung API server must not
/// hold every later Event back.
const EVENT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an Event may wait for the placements to finish before it is published anyway.
const EVENT_MAX_DEFERRAL: Duration = Duration::from_secs(2);

/// Publishes Events off the decision path, so an assignment costs one write on its critical path,
/// and after the placements being made (up to [`EVENT_MAX_DEFERRAL`]): an Event create costs the
/// API server about what a status write does, and 100 `Reassigned` Events published during the
/// burst that moves a lost worker's 100 resources would slow that burst down.
async fn publish_events(
    client: Client,
    instance: String,
    mut rx: mpsc::Receiver<(Key, index::PlanEvent, CrawlerResource, tokio::time::Instant)>,
    queue: WorkQueue<Key>,
    metrics: Metrics,
) {
    let mut warned = false;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        },
    );
    while let Some((key, event, resource, sent)) = rx.recv().await {
        let deadline = sent + EVENT_MAX_DEFERRAL;
        while !queue.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.as_str().to_owned(),
            note: Some(truncate(event.note, 1000)),
            action: "Schedule".to_owned(),
            secondary: None,
        };
        let published = tokio::time::timeout(
            EVENT_PUBLISH_TIMEOUT,
            recorder.publish(&ev, &resource.object_ref(&())),
        )
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("publishing the Event timed out after {EVENT_PUBLISH_TIMEOUT:?}").into(),
            ))
        });
        match published {
            Ok(()) => metrics.event(EventOutcome::Published),
            Err(e) if !warned => {
                warned = true;
                metrics.event(EventOutcome::Failed);
                tracing::warn!(resource = %key, error = %e, "cannot publish an Event (check the controller's RBAC for events.k8s.io); further failures are logged at debug level and counted in crawler_controller_events_total");
            }
            Err(e) => {
                metrics.event(EventOutcome::Failed);
                tracing::debug!(resource = %key, error = %e, "cannot publish event");
            }
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> kube::core::Status {
        let mut status = kube::core::Status::failure(message, "Forbidden");
        status.code = code;
        status
    }

    #[test]
    fn only_the_leader_fences_refusal_counts_as_fenced() {
        let fenced = "crawlerresources.crawler.dev \"r\" is forbidden: ValidatingAdmissionPolicy \
                      'c-leader-fence' with binding 'c-leader-fence' denied request: leader fence: \
                      this status write was decided in term a/3, but Lease ns/l is in term b/4";
        assert!(is_fence_refusal(&status(403, fenced)));
        // RBAC, another policy, a conflict: not the fence.
        assert!(!is_fence_refusal(&status(
            403,
            "crawlerresources.crawler.dev \"r\" is forbidden: User \"x\" cannot patch resource"
        )));
        assert!(!is_fence_refusal(&status(
            403,
            "ValidatingAdmissionPolicy 'c-cookie-secret-access' denied request: spec.cookieSecretRef"
        )));
        assert!(!is_fence_refusal(&status(409, fenced)));
    }
}

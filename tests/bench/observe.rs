//! Watches that timestamp what the benchmark waits for, on the benchmark's own clock: each status
//! change of a `CrawlerResource`, each Pod readiness change or deletion, each Lease holder change.
//! Timestamps are taken when the watch event arrives here, so every latency below is "as seen by
//! a client watching the API server", the same view the controller has.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crawler_operator::crd::CrawlerResource;
use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// What a watch feeds: one implementation per kind of object.
pub trait Track<K>: Send + 'static {
    fn apply(&mut self, object: &K, at: Instant);
    fn delete(&mut self, object: &K, at: Instant);
    /// A (re)list starts; its objects arrive through `apply`.
    fn init(&mut self) {}
    /// The (re)list is complete.
    fn init_done(&mut self) {}
}

/// A running watch and the state it keeps up to date. Dropping it stops the watch.
pub struct Observer<S> {
    state: Arc<Mutex<S>>,
    tick: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for Observer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Send + 'static> Observer<S> {
    pub fn start<K>(api: Api<K>, config: watcher::Config, state: S) -> Self
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        S: Track<K>,
    {
        let state = Arc::new(Mutex::new(state));
        let (tx, tick) = watch::channel(0u64);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = stream.next().await {
                let at = Instant::now();
                {
                    let mut s = shared.lock().unwrap();
                    match event {
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                            s.apply(&o, at);
                        }
                        Ok(watcher::Event::Delete(o)) => s.delete(&o, at),
                        Ok(watcher::Event::Init) => s.init(),
                        Ok(watcher::Event::InitDone) => s.init_done(),
                        Err(e) => eprintln!("bench: watch error (the watcher retries): {e}"),
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Self { state, tick, task }
    }

    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap()
    }

    /// Waits until `done` returns `Some`, re-checking after every watch event; panics with `what`
    /// and `progress` after `timeout`.
    pub async fn wait_for<R>(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&S) -> Option<R>,
        progress: impl Fn(&S) -> String,
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = self.tick.clone();
        loop {
            if let Some(r) = done(&self.lock()) {
                return r;
            }
            if tokio::time::timeout_at(deadline, tick.changed())
                .await
                .is_err()
            {
                panic!(
                    "bench: timed out after {timeout:?} waiting for {what}; {}",
                    progress(&self.lock())
                );
            }
        }
    }
}

// === CrawlerResources ===

/// One resource as last seen.
#[derive(Clone, Debug)]
pub struct Seen {
    pub resource_version: u64,
    pub worker: Option<String>,
    /// resourceVersion changes seen after the first sighting: writes to the object.
    pub writes: u32,
    /// The resourceVersion of the first of those writes (etcd's revision: a global order).
    pub first_write: Option<u64>,
}

/// A change of `status.assignedWorker` to a worker (first placement or a move).
#[derive(Clone, Debug)]
pub struct Assignment {
    pub at: Instant,
    pub name: String,
    pub from: Option<String>,
}

#[derive(Debug, Default)]
pub struct Resources {
    pub objects: HashMap<String, Seen>,
    pub assignments: Vec<Assignment>,
    /// Writes seen (resourceVersion changes of known objects).
    pub writes: u64,
    pub lists: u32,
    pub synced: bool,
    pub deleted: u64,
}

impl Resources {
    pub fn assigned(&self) -> usize {
        self.objects.values().filter(|s| s.worker.is_some()).count()
    }

    /// Resources per worker.
    pub fn loads(&self) -> HashMap<String, usize> {
        let mut loads = HashMap::new();
        for seen in self.objects.values() {
            if let Some(w) = &seen.worker {
                *loads.entry(w.clone()).or_default() += 1;
            }
        }
        loads
    }

    /// Snapshot of resourceVersions.
    pub fn versions(&self) -> HashMap<String, u64> {
        self.objects
            .iter()
            .map(|(name, seen)| (name.clone(), seen.resource_version))
            .collect()
    }
}

pub fn resource_version(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Track<CrawlerResource> for Resources {
    fn apply(&mut self, r: &CrawlerResource, at: Instant) {
        let name = r.name_any();
        let rv = resource_version(&r.metadata);
        let worker = r.status.as_ref().and_then(|s| s.assigned_worker.clone());
        match self.objects.get_mut(&name) {
            Some(seen) => {
                if rv != seen.resource_version {
                    seen.first_write.get_or_insert(rv);
                    seen.writes += 1;
                    self.writes += 1;
                    seen.resource_version = rv;
                }
                if worker != seen.worker {
                    if worker.is_some() {
                        self.assignments.push(Assignment {
                            at,
                            name,
                            from: seen.worker.clone(),
                        });
                    }
                    seen.worker = worker;
                }
            }
            None => {
                self.objects.insert(
                    name,
                    Seen {
                        resource_version: rv,
                        worker,
                        writes: 0,
                        first_write: None,
                    },
                );
            }
        }
    }

    fn delete(&mut self, r: &CrawlerResource, _at: Instant) {
        self.objects.remove(&r.name_any());
        self.deleted += 1;
    }

    fn init(&mut self) {
        self.lists += 1;
    }

    fn init_done(&mut self) {
        self.synced = true;
    }
}

// === Pods ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodChange {
    Ready(bool),
    /// `deletionTimestamp` appeared (a delete, even with grace 0, shows this first).
    Terminating,
    Deleted,
    Bound(String),
}

#[derive(Clone, Debug)]
pub struct PodEvent {
    pub at: Instant,
    pub name: String,
    pub change: PodChange,
}

#[derive(Debug, Default)]
pub struct Pods {
    ready: HashMap<String, bool>,
    terminating: std::collections::HashSet<String>,
    bound: HashMap<String, String>,
    pub events: Vec<PodEvent>,
    pub synced: bool,
}

impl Pods {
    pub fn bound_count(&self) -> usize {
        self.bound.len()
    }

    pub fn bound_per_node(&self) -> HashMap<String, usize> {
        let mut per = HashMap::new();
        for node in self.bound.values() {
            *per.entry(node.clone()).or_default() += 1;
        }
        per
    }

    /// When `name` first had one of `changes` after `since`.
    pub fn seen(&self, name: &str, changes: &[PodChange], since: Instant) -> Option<Instant> {
        self.events
            .iter()
            .find(|e| e.name == name && changes.contains(&e.change) && e.at >= since)
            .map(|e| e.at)
    }
}

impl Track<Pod> for Pods {
    fn apply(&mut self, pod: &Pod, at: Instant) {
        let name = pod.name_any();
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if self.ready.insert(name.clone(), ready) != Some(ready) && self.synced {
            self.events.push(PodEvent {
                at,
                name: name.clone(),
                change: PodChange::Ready(ready),
            });
        }
        if pod.metadata.deletion_timestamp.is_some() && self.terminating.insert(name.clone()) {
            self.events.push(PodEvent {
                at,
                name: name.clone(),
                change: PodChange::Terminating,
            });
        }
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
            && !self.bound.contains_key(&name)
        {
            self.bound.insert(name.clone(), node.clone());
            self.events.push(PodEvent {
                at,
                name,
                change: PodChange::Bound(node),
            });
        }
    }

    fn delete(&mut self, pod: &Pod, at: Instant) {
        let name = pod.name_any();
        self.ready.remove(&name);
        self.events.push(PodEvent {
            at,
            name,
            change: PodChange::Deleted,
        });
    }

    fn init_done(&mut self) {
        self.synced = true;
    }
}

// === Lease ===

#[derive(Debug, Default)]
pub struct Leases {
    holder: Option<String>,
    /// (when, new holder) for every change of `holderIdentity`.
    pub changes: Vec<(Instant, Option<String>)>,
}

impl Leases {
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// First time after `since` that `identity` became the holder.
    pub fn acquired(&self, identity: &str, since: Instant) -> Option<Instant> {
        self.changes
            .iter()
            .find(|(at, h)| *at >= since && h.as_deref() == Some(identity))
            .map(|(at, _)| *at)
    }
}

impl Track<Lease> for Leases {
    fn apply(&mut self, lease: &Lease, at: Instant) {
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        if holder != self.holder {
            self.holder.clone_from(&holder);
            self.changes.push((at, holder));
        }
    }

    fn delete(&mut self, _lease: &Lease, at: Instant) {
        self.holder = None;
        self.changes.push((at, None));
    }
}

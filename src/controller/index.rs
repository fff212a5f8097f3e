//! The controller's in-memory view of one cluster: worker Pods and `CrawlerResources`, fed by
//! watches (apply / delete / reset), converted to domain structs on the way in.
//!
//! It owns two things nothing else may compute: the load of every worker, derived from the
//! resources' own assignments (plus decisions in flight), and the decision for one resource,
//! made and "assumed" under the same lock so that two reconciles running at once never see the
//! same stale load. Every method is synchronous and free of I/O: the reconciler takes the lock,
//! asks for a [`Plan`], releases the lock, and only then talks to the API server.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time},
};
use kube::ResourceExt;

use crawler_core::{
    self as scheduler, InvalidSelector, Load, NotReady, Policy, Readiness, Request, Requirement,
    Worker, WorkerSelector,
};

use crate::{
    crd::{CONDITION_ASSIGNED, CrawlerResource, CrawlerResourceStatus, Phase},
    heartbeat,
};

/// Annotation on a worker Pod declaring how many load units it may carry.
pub const CAPACITY_ANNOTATION: &str = "crawler.dev/capacity";

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

/// A worker Pod as placement sees it, plus its address.
#[derive(Clone, Debug)]
struct WorkerEntry {
    /// `worker.readiness` is the effective one: the Pod's, downgraded by an expired heartbeat.
    worker: Worker,
    ip: Option<String>,
    /// Readiness as the Pod alone says.
    pod_readiness: Readiness,
}

/// A worker's heartbeat Lease as last observed.
#[derive(Clone, Debug)]
struct Heartbeat {
    holder: Option<String>,
    renew_time: Option<String>,
    duration: Duration,
    /// When we saw (holder, renewTime) change, on our monotonic clock: expiry counts from here,
    /// never from the remote `renewTime` (clock skew).
    observed: Instant,
    expired: bool,
}

impl Heartbeat {
    fn alive(&self) -> bool {
        self.holder.is_some() && !self.expired
    }
}

/// A resource as the controller needs it: its placement inputs and the status it last showed.
#[derive(Clone, Debug)]
struct ResourceEntry {
    resource_version: Option<String>,
    generation: Option<i64>,
    weight: Load,
    /// What placement needs; an error message when `spec.workerSelector` cannot be parsed.
    request: Result<Request, String>,
    suspend: bool,
    status: CrawlerResourceStatus,
    /// A decision made and being (or just) written, counted in the loads until the watch shows it.
    assumed: Option<Assumption>,
}

#[derive(Clone, Debug)]
struct Assumption {
    worker: String,
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
    workers: BTreeMap<String, WorkerEntry>,
    /// Heartbeats by worker Pod name (a worker without one is judged by its Pod alone).
    heartbeats: BTreeMap<String, Heartbeat>,
    resources: BTreeMap<String, ResourceEntry>,
    /// Sum of the weights of the resources whose effective worker is the key. Maintained only by
    /// `put_resource` / `remove_resource`, so it always equals that sum (see `check_loads`).
    loads: HashMap<String, Load>,
}

/// Everything the controller knows; see the module documentation.
#[derive(Default, Debug)]
pub struct Index {
    namespaces: HashMap<String, Namespace>,
    workers_synced: bool,
    resources_synced: bool,
    /// When the heartbeat watch last failed: renewals made while it was down were not seen, so no
    /// heartbeat expires until its duration has passed since then as well.
    heartbeats_unseen_at: Option<Instant>,
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
    pub reason: &'static str,
    pub note: String,
}

/// Settings that shape decisions.
pub struct PlanContext<'a> {
    pub policy: &'a dyn Policy,
    /// Port appended to a worker's podIP in `status.assignedAddress`.
    pub worker_port: u16,
    pub now: Timestamp,
}

impl Index {
    // === Pods ===

    /// A worker Pod was added or changed. Returns the resources to reconcile.
    pub fn apply_pod(&mut self, pod: &Pod) -> Vec<Key> {
        let Some(ns_name) = pod.namespace() else {
            return Vec::new();
        };
        let mut entry = worker_from_pod(pod);
        let ns = self.namespaces.entry(ns_name.clone()).or_default();
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
        triggers_for_worker_change(namespace, ns, before.as_ref(), None)
    }

    /// The Pod watch (re)listed: replace every worker, so a Pod deleted while the watch was down is
    /// removed too. Returns the resources to reconcile.
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

    // === Heartbeats ===

    /// A worker's heartbeat Lease was added or changed (`now`: when we received it).
    pub fn apply_heartbeat(&mut self, lease: &Lease, now: Instant) -> Vec<Key> {
        let (Some(ns_name), Some(pod)) = (
            lease.namespace(),
            heartbeat::pod_of(&lease.name_any()).map(str::to_owned),
        ) else {
            return Vec::new();
        };
        let spec = lease.spec.as_ref();
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let renew_time = spec
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string());
        let seconds = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
        let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1));
        let ns = self.namespaces.entry(ns_name.clone()).or_default();
        let changed = ns
            .heartbeats
            .get(&pod)
            .is_none_or(|h| h.holder != holder || h.renew_time != renew_time);
        if changed {
            ns.heartbeats.insert(
                pod.clone(),
                Heartbeat {
                    holder,
                    renew_time,
                    duration,
                    observed: now,
                    expired: false,
                },
            );
        }
        refresh_worker(&ns_name, ns, &pod)
    }

    /// A heartbeat Lease was deleted: the worker is judged by its Pod alone again.
    pub fn delete_heartbeat(&mut self, namespace: &str, lease_name: &str) -> Vec<Key> {
        let Some(pod) = heartbeat::pod_of(lease_name) else {
            return Vec::new();
        };
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        ns.heartbeats.remove(pod);
        refresh_worker(namespace, ns, pod)
    }

    /// The end of a heartbeat (re)list applied one by one: forget the Leases it did not list.
    pub fn finish_heartbeat_list(&mut self, listed: &HashSet<(String, String)>) -> Vec<Key> {
        self.retain(
            listed,
            |ns| {
                ns.heartbeats
                    .keys()
                    .map(|pod| heartbeat::lease_name(pod))
                    .collect()
            },
            Self::delete_heartbeat,
        )
    }

    /// The heartbeat watch failed at `now` (the API server or etcd is unreachable or restarting):
    /// whatever renewals happened meanwhile are unseen, so none may expire on their account.
    pub fn heartbeats_unseen(&mut self, now: Instant) {
        self.heartbeats_unseen_at = Some(now);
    }

    /// Marks heartbeats not renewed within their duration as expired: counted from when we
    /// observed the last renewal, or from the last failure of the heartbeat watch if that is later
    /// (a controller that could not see renewals must not conclude there were none). Call it
    /// periodically; returns the resources to reconcile.
    pub fn expire_heartbeats(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        let unseen = self.heartbeats_unseen_at;
        for (ns_name, ns) in &mut self.namespaces {
            let expired: Vec<String> = ns
                .heartbeats
                .iter_mut()
                .filter(|(_, h)| {
                    let since = unseen.map_or(h.observed, |u| u.max(h.observed));
                    !h.expired && now >= since + h.duration
                })
                .map(|(pod, h)| {
                    h.expired = true;
                    pod.clone()
                })
                .collect();
            for pod in expired {
                tracing::info!(namespace = %ns_name, worker = %pod, "worker heartbeat expired");
                keys.extend(refresh_worker(ns_name, ns, &pod));
            }
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
        let ns = self.namespaces.entry(ns_name.clone()).or_default();
        let previous = ns.resources.get(&name);
        // Only the fields the controller writes: the worker's progress is not ours to keep.
        let status = resource
            .status
            .as_ref()
            .map(controller_fields)
            .unwrap_or_default();
        // Keep an assumption until the watch shows our write (or anything placing it there).
        // The watch may show our write before the write's response arrives: the worker it names
        // confirms it as well as the version does.
        let assumed = previous.and_then(|p| p.assumed.clone()).filter(|a| {
            let confirmed = status.assigned_worker.as_deref() == Some(&a.worker)
                || (a.written_version.is_some()
                    && a.written_version == resource.metadata.resource_version);
            !confirmed
        });
        let old_weight = previous.map(|p| p.weight);
        let entry = ResourceEntry {
            resource_version: resource.metadata.resource_version.clone(),
            generation: resource.metadata.generation,
            weight: Load::from(resource.spec.load_units()),
            request: request_for(resource),
            suspend: resource.spec.suspend,
            status,
            assumed,
        };
        let lighter = old_weight.is_some_and(|w| w > entry.weight) || entry.suspend;
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
        if ns.remove_resource(name).is_none() {
            return Vec::new();
        }
        ns.waiting(namespace)
    }

    /// The resource watch (re)listed: replace every resource. Returns the resources to reconcile.
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

    /// Both watches have listed once: decisions before this could mistake an unlisted worker for
    /// a lost one and move resources that are well placed.
    pub fn synced(&self) -> bool {
        self.workers_synced && self.resources_synced
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
    pub fn plan(&mut self, key: &Key, ctx: &PlanContext<'_>) -> Plan {
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
        let Some(resource_version) = entry.resource_version.clone() else {
            return Plan::Wait;
        };
        let current = &entry.status;
        let mut desired = controller_fields(current);
        desired.observed_generation = entry.generation;
        let mut event = None;
        let mut assumes = None;

        let keep = current
            .assigned_worker
            .as_deref()
            .and_then(|w| ns.workers.get(w))
            .filter(|w| w.worker.readiness == Readiness::Ready)
            .filter(|w| matches!(&entry.request, Ok(r) if r.selector.matches(&w.worker.labels)));

        if entry.suspend {
            set_unassigned(&mut desired, Phase::Suspended);
            set_assigned_condition(
                &mut desired,
                current,
                false,
                "Suspended",
                "spec.suspend is true: the task does not run anywhere",
                ctx.now,
            );
            if current.phase != Some(Phase::Suspended) {
                event = Some(PlanEvent {
                    warning: false,
                    reason: "Suspended",
                    note: stop_note(current, "spec.suspend is true"),
                });
            }
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
                    reason: "InvalidWorkerSelector",
                    note: message.clone(),
                });
            }
            set_assigned_condition(
                &mut desired,
                current,
                false,
                "InvalidWorkerSelector",
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
                set_assigned_condition(&mut desired, current, true, "Assigned", &message, ctx.now);
            }
        } else if let Ok(request) = &entry.request {
            (event, assumes) = ns.place(entry.weight, request, current, &mut desired, ctx);
        }

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
        if let Some(ns) = self.namespaces.get_mut(&key.namespace)
            && let Some(mut entry) = ns.remove_resource(&key.name)
        {
            entry.assumed = None;
            ns.put_resource(key.name.clone(), entry);
        }
    }

    fn entry_mut(&mut self, key: &Key) -> Option<&mut ResourceEntry> {
        self.namespaces
            .get_mut(&key.namespace)?
            .resources
            .get_mut(&key.name)
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
    /// Chooses a worker for a resource that has none (or lost it), and fills `desired` with the
    /// decision or with why there is none. Returns the Event to publish and the worker to assume.
    fn place(
        &self,
        weight: Load,
        request: &Request,
        current: &CrawlerResourceStatus,
        desired: &mut CrawlerResourceStatus,
        ctx: &PlanContext<'_>,
    ) -> (Option<PlanEvent>, Option<String>) {
        let workers = self.workers.values().map(|w| &w.worker);
        match scheduler::place(ctx.policy, workers, request) {
            Ok(placement) => {
                let chosen = placement.worker.name.clone();
                let worker = &self.workers[&chosen];
                desired.phase = Some(Phase::Assigned);
                desired.assigned_worker = Some(chosen.clone());
                desired.assigned_address =
                    worker.ip.as_ref().map(|ip| address(ip, ctx.worker_port));
                desired.assigned_at = Some(Time(ctx.now));
                desired.assignments = Some(current.assignments.unwrap_or(0) + 1);
                let load = worker.worker.load;
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
                        let why = lost_reason(self.workers.get(old), request);
                        (
                            "Reassigned",
                            format!("moved from worker {old} ({why}) to {chosen} {how}"),
                        )
                    }
                    None => ("Assigned", format!("placed on worker {chosen} {how}")),
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
                        reason: "Unschedulable",
                        note: message.clone(),
                    });
                set_assigned_condition(
                    desired,
                    current,
                    false,
                    diagnosis.reason(),
                    &message,
                    ctx.now,
                );
                (event, None)
            }
        }
    }

    fn put_resource(&mut self, name: String, entry: ResourceEntry) {
        self.remove_resource(&name);
        if let Some(w) = entry.effective_worker() {
            let load = self.loads.entry(w.to_owned()).or_default();
            *load += entry.weight;
            if let Some(worker) = self.workers.get_mut(w) {
                worker.worker.load = *load;
            }
        }
        self.resources.insert(name, entry);
    }

    fn remove_resource(&mut self, name: &str) -> Option<ResourceEntry> {
        let entry = self.resources.remove(name)?;
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

    fn assume(&mut self, name: &str, worker: String) {
        if let Some(mut entry) = self.remove_resource(name) {
            entry.assumed = Some(Assumption {
                worker,
                written_version: None,
            });
            self.put_resource(name.to_owned(), entry);
        }
    }

    /// Resources waiting for a worker (not assigned, not suspended).
    fn waiting(&self, namespace: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.suspend && r.effective_worker().is_none())
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

/// What a change of one worker means for the resources: a worker that can no longer keep work
/// releases its resources; one that can take more (new, ready again, relabelled, bigger) is offered
/// the waiting ones.
fn triggers_for_worker_change(
    namespace: &str,
    ns: &Namespace,
    before: Option<&WorkerEntry>,
    after: Option<&WorkerEntry>,
) -> Vec<Key> {
    let ready = |w: Option<&WorkerEntry>| w.is_some_and(|w| w.worker.readiness == Readiness::Ready);
    let mut keys = Vec::new();
    let name = before
        .or(after)
        .map(|w| w.worker.name.as_str())
        .unwrap_or_default();
    let labels_changed = before.map(|w| &w.worker.labels) != after.map(|w| &w.worker.labels);
    let address_changed = before.map(|w| &w.ip) != after.map(|w| &w.ip);
    if (ready(before) && !ready(after)) || labels_changed || address_changed || after.is_none() {
        keys.extend(ns.on_worker(namespace, name));
    }
    let more_room = ready(after)
        && (!ready(before)
            || labels_changed
            || before.map(|w| w.worker.capacity) != after.map(|w| w.worker.capacity));
    if more_room {
        keys.extend(ns.waiting(namespace));
    }
    keys
}

fn worker_from_pod(pod: &Pod) -> WorkerEntry {
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    let pod_ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let readiness = if pod.metadata.deletion_timestamp.is_some() {
        Readiness::NotReady(NotReady::Terminating)
    } else if !pod_ready {
        Readiness::NotReady(NotReady::PodNotReady)
    } else if ip.is_none() {
        Readiness::NotReady(NotReady::NoAddress)
    } else {
        Readiness::Ready
    };
    let capacity = pod.annotations().get(CAPACITY_ANNOTATION).and_then(|v| match v.trim().parse::<Load>() {
        Ok(c) if c > 0 => Some(c),
        _ => {
            tracing::warn!(pod = %pod.name_any(), value = %v, "ignoring annotation {CAPACITY_ANNOTATION}: expected a whole number of load units >= 1");
            None
        }
    });
    WorkerEntry {
        worker: Worker {
            name: pod.name_any(),
            labels: pod.labels().clone(),
            readiness,
            capacity,
            load: 0,
        },
        ip,
        pod_readiness: readiness,
    }
}

/// A worker is ready when its Pod is, and its heartbeat (if it has one) is alive.
fn effective_readiness(pod: Readiness, heartbeat: Option<&Heartbeat>) -> Readiness {
    match (pod, heartbeat) {
        (Readiness::Ready, Some(h)) if !h.alive() => {
            Readiness::NotReady(NotReady::HeartbeatExpired)
        }
        (readiness, _) => readiness,
    }
}

/// Recomputes a worker's readiness after its heartbeat changed; returns what that triggers.
fn refresh_worker(namespace: &str, ns: &mut Namespace, pod: &str) -> Vec<Key> {
    let Some(entry) = ns.workers.get(pod) else {
        return Vec::new();
    };
    let readiness = effective_readiness(entry.pod_readiness, ns.heartbeats.get(pod));
    if readiness == entry.worker.readiness {
        return Vec::new();
    }
    let before = entry.clone();
    let entry = ns.workers.get_mut(pod).expect("present above");
    entry.worker.readiness = readiness;
    let after = entry.clone();
    triggers_for_worker_change(namespace, ns, Some(&before), Some(&after))
}

/// Why a resource's worker can no longer keep it, for the Reassigned event.
fn lost_reason(worker: Option<&WorkerEntry>, request: &Request) -> &'static str {
    match worker.map(|w| {
        (
            w.worker.readiness,
            request.selector.matches(&w.worker.labels),
        )
    }) {
        None => "its Pod is gone",
        Some((Readiness::NotReady(NotReady::PodNotReady), _)) => "its Pod is not ready",
        Some((Readiness::NotReady(NotReady::Terminating), _)) => "its Pod is terminating",
        Some((Readiness::NotReady(NotReady::NoAddress), _)) => "its Pod has no IP",
        Some((Readiness::NotReady(NotReady::HeartbeatExpired), _)) => {
            "its heartbeat expired or was released"
        }
        Some((Readiness::Ready, false)) => "it no longer matches spec.workerSelector",
        Some((Readiness::Ready, true)) => "it cannot keep it",
    }
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

fn stop_note(current: &CrawlerResourceStatus, why: &str) -> String {
    match &current.assigned_worker {
        Some(w) => format!("{why}: unassigned from worker {w}"),
        None => why.to_owned(),
    }
}

fn address(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// (namespace, name) of each object: what a list showed.
pub fn listed<K: kube::Resource>(objects: &[K]) -> HashSet<(String, String)> {
    objects
        .iter()
        .filter_map(|o| Some((o.meta().namespace.clone()?, o.name_any())))
        .collect()
}

/// The status fields the controller owns (what its server-side apply sends).
fn controller_fields(status: &CrawlerResourceStatus) -> CrawlerResourceStatus {
    CrawlerResourceStatus {
        phase: status.phase,
        assigned_worker: status.assigned_worker.clone(),
        assigned_address: status.assigned_address.clone(),
        assigned_at: status.assigned_at.clone(),
        assignments: status.assignments,
        observed_generation: status.observed_generation,
        progress: None,
        conditions: status
            .conditions
            .iter()
            .filter(|c| c.type_ == CONDITION_ASSIGNED)
            .cloned()
            .collect(),
    }
}

fn set_unassigned(status: &mut CrawlerResourceStatus, phase: Phase) {
    status.phase = Some(phase);
    status.assigned_worker = None;
    status.assigned_address = None;
    status.assigned_at = None;
}

/// Set the `Assigned` condition; `lastTransitionTime` moves only when the status flips.
fn set_assigned_condition(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    assigned: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if assigned { "True" } else { "False" };
    let last_transition_time = current
        .condition(CONDITION_ASSIGNED)
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    desired.conditions = vec![Condition {
        type_: CONDITION_ASSIGNED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: desired.observed_generation,
    }];
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{PodCondition, PodStatus},
        apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
    };
    use kube::api::ObjectMeta;

    use super::*;
    use crawler_core::LeastLoaded;

    use crate::crd::CrawlerResourceSpec;

    const NS: &str = "crawl";

    fn pod(name: &str, ready: bool, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: Some(format!("10.0.0.{}", name.len())),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn resource(name: &str, weight: i32) -> CrawlerResource {
        let mut spec: CrawlerResourceSpec =
            serde_json::from_value(serde_json::json!({"seeds": ["https://example.org/"]})).unwrap();
        spec.weight = weight;
        let mut r = CrawlerResource::new(name, spec);
        r.metadata.namespace = Some(NS.into());
        r.metadata.resource_version = Some("1".into());
        r.metadata.generation = Some(1);
        r
    }

    fn ctx(policy: &dyn Policy) -> PlanContext<'_> {
        PlanContext {
            policy,
            worker_port: 8080,
            now: Timestamp::from_second(1_700_000_000).unwrap(),
        }
    }

    /// Plans `name`, pretends the write landed and the watch showed it, as the reconciler does.
    fn place(index: &mut Index, r: &mut CrawlerResource) -> Plan {
        let key = Key::new(NS, r.name_any());
        let plan = index.plan(&key, &ctx(&LeastLoaded));
        if let Plan::Write(w) = &plan {
            let rv = r
                .metadata
                .resource_version
                .as_deref()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                + 1;
            r.metadata.resource_version = Some(rv.to_string());
            r.status = Some(w.status.clone());
            index.written(&key, r.metadata.resource_version.clone());
            index.apply_resource(r);
        }
        index.check_loads();
        plan
    }

    fn worker_of(r: &CrawlerResource) -> Option<&str> {
        r.status.as_ref()?.assigned_worker.as_deref()
    }

    fn two_workers_five_resources() -> (Index, Vec<CrawlerResource>) {
        let mut index = Index::default();
        index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
        let mut resources: Vec<CrawlerResource> = [
            "douban-book-list",
            "task-test-1",
            "task-test-2",
            "task-test-3",
            "xxx",
        ]
        .iter()
        .map(|n| resource(n, 1))
        .collect();
        index.reset_resources(&resources);
        for r in &mut resources {
            assert!(matches!(place(&mut index, r), Plan::Write(_)));
        }
        (index, resources)
    }

    #[test]
    fn the_original_demonstration_splits_five_resources_three_two() {
        let (index, resources) = two_workers_five_resources();
        assert!(index.synced());
        assert_eq!(index.load(NS, "worker-1"), 3);
        assert_eq!(index.load(NS, "worker-2"), 2);
        let first = resources[0].status.as_ref().unwrap();
        assert_eq!(first.phase, Some(Phase::Assigned));
        assert_eq!(first.assigned_address.as_deref(), Some("10.0.0.8:8080"));
        assert_eq!(first.assignments, Some(1));
        assert_eq!(
            first.condition(CONDITION_ASSIGNED).unwrap().reason,
            "Assigned"
        );
    }

    #[test]
    fn well_placed_resources_are_not_written_again() {
        let (mut index, mut resources) = two_workers_five_resources();
        for r in &mut resources {
            assert_eq!(place(&mut index, r), Plan::Nothing, "{}", r.name_any());
        }
        // A fresh index (a new leader) over the same objects decides nothing either.
        let mut fresh = Index::default();
        fresh.reset_pods(&[pod("worker-2", true, &[]), pod("worker-1", true, &[])]);
        fresh.reset_resources(&resources);
        for r in &mut resources {
            assert_eq!(place(&mut fresh, r), Plan::Nothing);
        }
    }

    #[test]
    fn a_lost_worker_releases_its_resources_to_the_others() {
        let (mut index, mut resources) = two_workers_five_resources();
        let mut redo = index.delete_pod(NS, "worker-1");
        redo.sort();
        let on_worker_1: Vec<Key> = resources
            .iter()
            .filter(|r| worker_of(r) == Some("worker-1"))
            .map(|r| Key::new(NS, r.name_any()))
            .collect();
        assert_eq!(redo, on_worker_1);
        for r in &mut resources {
            let was = worker_of(r).map(str::to_owned);
            let plan = place(&mut index, r);
            if was.as_deref() == Some("worker-1") {
                let Plan::Write(w) = plan else {
                    panic!("expected a write")
                };
                assert_eq!(w.event.as_ref().unwrap().reason, "Reassigned");
                assert!(w.event.unwrap().note.contains("its Pod is gone"));
                assert_eq!(w.status.assignments, Some(2));
            }
        }
        assert!(resources.iter().all(|r| worker_of(r) == Some("worker-2")));
        assert_eq!(index.load(NS, "worker-2"), 5);
    }

    #[test]
    fn a_relist_removes_a_worker_deleted_while_the_watch_was_down() {
        let (mut index, resources) = two_workers_five_resources();
        let redo = index.reset_pods(&[pod("worker-2", true, &[])]);
        let on_worker_1 = resources
            .iter()
            .filter(|r| worker_of(r) == Some("worker-1"))
            .count();
        assert_eq!(redo.len(), on_worker_1);
        // Resources deleted meanwhile go too, and their load with them.
        let kept: Vec<CrawlerResource> = resources
            .iter()
            .filter(|r| worker_of(r) == Some("worker-1"))
            .cloned()
            .collect();
        index.reset_resources(&kept);
        assert_eq!(index.load(NS, "worker-2"), 0);
        assert_eq!(index.all_keys().len(), on_worker_1);
        index.check_loads();
    }

    #[test]
    fn a_not_ready_worker_loses_its_resources() {
        let (mut index, mut resources) = two_workers_five_resources();
        let redo = index.apply_pod(&pod("worker-2", false, &[]));
        assert_eq!(redo.len(), 2);
        for r in &mut resources {
            place(&mut index, r);
        }
        assert!(resources.iter().all(|r| worker_of(r) == Some("worker-1")));
    }

    #[test]
    fn no_worker_means_unschedulable_with_the_reason_then_placed_when_one_is_ready() {
        let mut index = Index::default();
        index.reset_pods(&[pod("worker-1", false, &[])]);
        let mut r = resource("task-test-4", 1);
        index.reset_resources(std::slice::from_ref(&r));
        let Plan::Write(w) = place(&mut index, &mut r) else {
            panic!("expected a write")
        };
        assert_eq!(w.status.phase, Some(Phase::Unschedulable));
        let event = w.event.unwrap();
        assert!(event.warning);
        let condition = r
            .status
            .as_ref()
            .unwrap()
            .condition(CONDITION_ASSIGNED)
            .unwrap()
            .clone();
        assert_eq!(condition.status, "False");
        assert!(
            condition.message.starts_with("0/1 workers"),
            "{}",
            condition.message
        );
        // Deciding again writes nothing: same reason, same message.
        assert_eq!(place(&mut index, &mut r), Plan::Nothing);
        // The worker turns ready: the waiting resource is queued and placed.
        assert_eq!(
            index.apply_pod(&pod("worker-1", true, &[])),
            vec![Key::new(NS, "task-test-4")]
        );
        place(&mut index, &mut r);
        assert_eq!(worker_of(&r), Some("worker-1"));
    }

    #[test]
    fn decisions_in_flight_count_before_they_are_written() {
        let mut index = Index::default();
        index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
        index.reset_resources(&[resource("a", 1), resource("b", 1)]);
        let pa = index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded));
        let pb = index.plan(&Key::new(NS, "b"), &ctx(&LeastLoaded));
        let (Plan::Write(a), Plan::Write(b)) = (pa, pb) else {
            panic!("expected two writes")
        };
        assert_ne!(
            a.assumes, b.assumes,
            "two decisions in flight must see each other"
        );
        // While a's write is in flight, a is not decided again.
        assert_eq!(
            index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded)),
            Plan::Wait
        );
        // A failed write is forgotten: the load is what the resources say again.
        index.forget(&Key::new(NS, "a"));
        assert_eq!(index.load(NS, a.assumes.as_deref().unwrap()), 0);
        index.check_loads();
    }

    #[test]
    fn a_watch_event_that_overtakes_the_write_response_confirms_the_decision() {
        let mut index = Index::default();
        index.reset_pods(&[pod("worker-1", true, &[])]);
        let mut r = resource("a", 1);
        index.reset_resources(std::slice::from_ref(&r));
        let key = Key::new(NS, "a");
        let Plan::Write(w) = index.plan(&key, &ctx(&LeastLoaded)) else {
            panic!("expected a write")
        };
        // The watch event of the write arrives first, then the write's response.
        r.metadata.resource_version = Some("2".into());
        r.status = Some(w.status);
        index.apply_resource(&r);
        index.written(&key, Some("2".into()));
        index.check_loads();
        assert_eq!(index.load(NS, "worker-1"), 1);
        // Not stuck waiting: the worker is lost, so it is decided again (unschedulable now).
        index.delete_pod(NS, "worker-1");
        assert!(matches!(
            index.plan(&key, &ctx(&LeastLoaded)),
            Plan::Write(_)
        ));
    }

    #[test]
    fn suspend_unassigns_and_resume_places_again() {
        let (mut index, mut resources) = two_workers_five_resources();
        let r = &mut resources[0];
        r.spec.suspend = true;
        index.apply_resource(r);
        let Plan::Write(w) = place(&mut index, r) else {
            panic!("expected a write")
        };
        assert_eq!(w.status.phase, Some(Phase::Suspended));
        assert_eq!(worker_of(r), None);
        assert_eq!(index.load(NS, "worker-1") + index.load(NS, "worker-2"), 4);
        r.spec.suspend = false;
        index.apply_resource(r);
        place(&mut index, r);
        assert!(worker_of(r).is_some());
        assert_eq!(r.status.as_ref().unwrap().assignments, Some(2));
    }

    #[test]
    fn worker_selector_and_weights_are_respected() {
        let mut index = Index::default();
        index.reset_pods(&[
            pod("cpu-1", true, &[("crawler.dev/gpu", "false")]),
            pod("gpu-1", true, &[("crawler.dev/gpu", "true")]),
        ]);
        let mut heavy = resource("heavy", 5);
        heavy.spec.worker_selector = Some(LabelSelector {
            match_labels: Some([("crawler.dev/gpu".to_owned(), "true".to_owned())].into()),
            match_expressions: None,
        });
        let mut light = resource("light", 1);
        index.reset_resources(&[heavy.clone(), light.clone()]);
        place(&mut index, &mut heavy);
        place(&mut index, &mut light);
        assert_eq!(worker_of(&heavy), Some("gpu-1"));
        assert_eq!(worker_of(&light), Some("cpu-1"));
        assert_eq!(index.load(NS, "gpu-1"), 5);
        // Relabelling the worker so it no longer matches moves the resource off it.
        let redo = index.apply_pod(&pod("gpu-1", true, &[]));
        assert!(redo.contains(&Key::new(NS, "heavy")));
        let Plan::Write(w) = place(&mut index, &mut heavy) else {
            panic!("expected a write")
        };
        assert_eq!(w.status.phase, Some(Phase::Unschedulable));
        assert!(
            w.status.conditions[0].message.contains("workerSelector"),
            "{}",
            w.status.conditions[0].message
        );
    }

    #[test]
    fn terminating_pods_and_full_workers_take_no_work() {
        let mut index = Index::default();
        let mut terminating = pod("worker-1", true, &[]);
        terminating.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
        let mut small = pod("worker-2", true, &[]);
        small.metadata.annotations =
            Some([(CAPACITY_ANNOTATION.to_owned(), "2".to_owned())].into());
        index.reset_pods(&[terminating, small]);
        let mut a = resource("a", 2);
        let mut b = resource("b", 1);
        index.reset_resources(&[a.clone(), b.clone()]);
        place(&mut index, &mut a);
        assert_eq!(worker_of(&a), Some("worker-2"));
        let Plan::Write(w) = place(&mut index, &mut b) else {
            panic!("expected a write")
        };
        assert_eq!(w.status.phase, Some(Phase::Unschedulable));
        let message = &w.status.conditions[0].message;
        assert!(
            message.contains("terminating") && message.contains("capacity"),
            "{message}"
        );
        // Deleting `a` frees the capacity: `b` is queued again and placed.
        assert_eq!(index.delete_resource(NS, "a"), vec![Key::new(NS, "b")]);
        place(&mut index, &mut b);
        assert_eq!(worker_of(&b), Some("worker-2"));
    }

    fn heartbeat(pod: &str, holder: Option<&str>, renewed_at: i64) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(heartbeat::lease_name(pod));
        lease.metadata.namespace = Some(NS.into());
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(10),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                Timestamp::from_second(renewed_at).unwrap(),
            )),
            ..Default::default()
        });
        lease
    }

    #[test]
    fn no_heartbeat_expires_on_account_of_renewals_a_failed_watch_could_not_show() {
        let (mut index, _) = two_workers_five_resources();
        let t0 = Instant::now();
        index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
        // The watch fails 5 s later (API server restart) and stays down a while: the renewals
        // made meanwhile were not seen, so the count starts again from the failure.
        index.heartbeats_unseen(t0 + Duration::from_secs(5));
        assert!(
            index
                .expire_heartbeats(t0 + Duration::from_secs(12))
                .is_empty(),
            "10 s after the last renewal seen, but only 7 s after the watch failed"
        );
        assert_eq!(
            index.expire_heartbeats(t0 + Duration::from_secs(15)).len(),
            3,
            "a heartbeat still unseen a whole duration after the failure expires"
        );
    }

    #[test]
    fn an_expired_heartbeat_releases_the_workers_resources_until_it_is_renewed() {
        let (mut index, mut resources) = two_workers_five_resources();
        let t0 = Instant::now();
        index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
        assert!(
            index
                .expire_heartbeats(t0 + Duration::from_secs(9))
                .is_empty(),
            "not expired before its duration"
        );
        // Renewed at 9 s: the 10 s count starts again from when we saw the renewal.
        index.apply_heartbeat(
            &heartbeat("worker-1", Some("worker-1"), 109),
            t0 + Duration::from_secs(9),
        );
        assert!(
            index
                .expire_heartbeats(t0 + Duration::from_secs(18))
                .is_empty()
        );
        let redo = index.expire_heartbeats(t0 + Duration::from_secs(19));
        assert_eq!(redo.len(), 3, "worker-1's resources are released");
        for r in &mut resources {
            place(&mut index, r);
        }
        assert!(resources.iter().all(|r| worker_of(r) == Some("worker-2")));
        let moved = resources
            .iter()
            .find(|r| r.status.as_ref().unwrap().assignments == Some(2))
            .unwrap();
        assert!(
            moved.status.as_ref().unwrap().conditions[0]
                .message
                .contains("heartbeat")
        );
        // A renewal makes it ready again: waiting resources would be offered to it.
        index.apply_heartbeat(
            &heartbeat("worker-1", Some("worker-1"), 130),
            t0 + Duration::from_secs(30),
        );
        let mut next = resource("task-test-4", 1);
        index.apply_resource(&next);
        place(&mut index, &mut next);
        assert_eq!(worker_of(&next), Some("worker-1"));
    }

    #[test]
    fn a_released_heartbeat_takes_the_worker_out_at_once() {
        let (mut index, mut resources) = two_workers_five_resources();
        let now = Instant::now();
        index.apply_heartbeat(&heartbeat("worker-2", Some("worker-2"), 100), now);
        let redo = index.apply_heartbeat(&heartbeat("worker-2", None, 101), now);
        assert_eq!(redo.len(), 2);
        for r in &mut resources {
            place(&mut index, r);
        }
        assert_eq!(index.load(NS, "worker-1"), 5);
        // Deleting the Lease leaves the worker to its Pod's readiness (Ready) again.
        index.delete_heartbeat(NS, &heartbeat::lease_name("worker-2"));
        let mut next = resource("task-test-4", 1);
        index.apply_resource(&next);
        place(&mut index, &mut next);
        assert_eq!(worker_of(&next), Some("worker-2"));
    }

    #[test]
    fn an_invalid_selector_is_reported_not_guessed() {
        let mut index = Index::default();
        index.reset_pods(&[pod("worker-1", true, &[])]);
        let mut r = resource("bad", 1);
        r.spec.worker_selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "In".into(),
                values: None,
            }]),
        });
        index.reset_resources(std::slice::from_ref(&r));
        let Plan::Write(w) = place(&mut index, &mut r) else {
            panic!("expected a write")
        };
        assert_eq!(w.status.conditions[0].reason, "InvalidWorkerSelector");
        assert_eq!(worker_of(&r), None);
    }

    #[test]
    fn converts_a_valid_label_selector() {
        let requirement =
            |key: &str, operator: &str, values: Option<&[&str]>| LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: values.map(|values| values.iter().map(|v| (*v).to_owned()).collect()),
            };
        let selector = worker_selector(&LabelSelector {
            match_labels: Some([("app".to_owned(), "crawler".to_owned())].into()),
            match_expressions: Some(vec![
                requirement("zone", "In", Some(&["a", "b"])),
                requirement("gpu", "Exists", None),
                requirement("old", "DoesNotExist", Some(&[])),
            ]),
        })
        .unwrap();
        let expected = WorkerSelector::default()
            .with_label("app", "crawler")
            .with_requirement("zone", crawler_core::Operator::is_in(["a", "b"]))
            .with_requirement("gpu", crawler_core::Operator::Exists)
            .with_requirement("old", crawler_core::Operator::DoesNotExist);
        assert_eq!(selector, expected);
        assert_eq!(
            worker_selector(&LabelSelector::default()).unwrap(),
            WorkerSelector::everything()
        );
    }

    #[test]
    fn deleting_a_resource_lowers_the_load_for_the_next_placement() {
        let (mut index, resources) = two_workers_five_resources();
        let on_1 = resources
            .iter()
            .find(|r| worker_of(r) == Some("worker-1"))
            .unwrap();
        index.delete_resource(NS, &on_1.name_any());
        assert_eq!(index.load(NS, "worker-1"), 2);
        let mut next = resource("task-test-4", 1);
        index.apply_resource(&next);
        place(&mut index, &mut next);
        // 2/2 now: ties break by name.
        assert_eq!(worker_of(&next), Some("worker-1"));
    }
}

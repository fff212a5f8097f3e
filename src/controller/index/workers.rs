//! Worker Pods and their heartbeat Leases, turned into the workers placement sees: readiness
//! (the Pod's, downgraded by an expired or released heartbeat), labels, capacity, address, and
//! what a change of one worker means for the resources.
//!
//! A heartbeat Lease that disappears is not a lapse: it may have been deleted by hand, or
//! garbage-collected after a forced Pod deletion, while its worker still runs (and re-creates it
//! at its next renewal). So the last renewal seen is kept as a *ghost* that stays alive until that
//! renewal's expiry, confirmed by a read like any lapse. The same holds for a worker this
//! controller never saw a Lease of (it started after the deletion): it is waited on for
//! [`Index::with_unseen_heartbeat_wait`] from the first heartbeat list before "no Lease" means "no
//! heartbeat".

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::ResourceExt;

use crawler_core::{Load, NotReady, Readiness, Worker};

use crate::heartbeat;

use super::{Index, Key, Namespace};

/// Annotation on a worker Pod declaring how many load units it may carry.
pub const CAPACITY_ANNOTATION: &str = "crawler.dev/capacity";

/// A worker Pod as placement sees it, plus its address.
#[derive(Clone, Debug)]
pub(super) struct WorkerEntry {
    /// `worker.readiness` is the effective one: the Pod's, downgraded by an expired heartbeat.
    pub(super) worker: Worker,
    pub(super) ip: Option<String>,
    /// Readiness as the Pod alone says.
    pub(super) pod_readiness: Readiness,
}

/// A worker's heartbeat Lease as last observed.
#[derive(Clone, Debug)]
pub(super) struct Heartbeat {
    pub(super) holder: Option<String>,
    pub(super) renew_time: Option<String>,
    pub(super) duration: Duration,
    /// When we saw (holder, renewTime) change, on our monotonic clock: expiry counts from here,
    /// never from the remote `renewTime` (clock skew).
    pub(super) observed: Instant,
    pub(super) expired: bool,
    /// Whether the Lease itself is there.
    pub(super) lease: LeaseSeen,
}

/// Whether a heartbeat's Lease exists, as far as the controller knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseSeen {
    /// Listed or watched, not deleted since.
    Present,
    /// Deleted while alive: the worker may still run (and re-creates its Lease at its next
    /// renewal), so the last renewal seen stays alive until it expires, confirmed by a read that
    /// finds no Lease. Then the heartbeat is forgotten.
    Deleted,
    /// Never seen by this controller (it started after a deletion, or the worker has not renewed
    /// yet): alive-unknown for the unseen wait from the first heartbeat list, then, confirmed by
    /// a read that finds no Lease, forgotten (the worker is judged by its Pod alone).
    Unseen,
}

/// A heartbeat that became due, with the renewal it was due on: what a confirming read is
/// judged against ([`Index::confirm_heartbeat`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueHeartbeat {
    pub namespace: String,
    pub pod: String,
    seen: Seen,
}

/// Everything the index holds of one heartbeat that a later observation changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    holder: Option<String>,
    renew_time: Option<String>,
    observed: Instant,
    expired: bool,
    lease: LeaseSeen,
}

impl Seen {
    fn of(h: &Heartbeat) -> Self {
        Self {
            holder: h.holder.clone(),
            renew_time: h.renew_time.clone(),
            observed: h.observed,
            expired: h.expired,
            lease: h.lease,
        }
    }
}

impl Heartbeat {
    pub(super) fn alive(&self) -> bool {
        !self.expired && (self.holder.is_some() || self.lease == LeaseSeen::Unseen)
    }

    /// Whether the Lease is gone (or was never seen) and this entry only stands for what the
    /// worker may still be doing.
    pub(super) fn ghost(&self) -> bool {
        self.lease != LeaseSeen::Present
    }
}

/// What tells one renewal of a heartbeat Lease from the next: (holder, renewTime). An empty
/// holder is none (a released heartbeat).
fn renewal_of(lease: &Lease) -> (Option<String>, Option<String>) {
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let renew_time = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string());
    (holder, renew_time)
}

impl Index {
    // === Heartbeats ===

    /// A worker's heartbeat Lease was added or changed (`now`: when we received it).
    pub fn apply_heartbeat(&mut self, lease: &Lease, now: Instant) -> Vec<Key> {
        let (Some(ns_name), Some(pod)) = (
            lease.namespace(),
            heartbeat::pod_of(&lease.name_any()).map(str::to_owned),
        ) else {
            return Vec::new();
        };
        let (holder, renew_time) = renewal_of(lease);
        let seconds = (lease.spec.as_ref())
            .and_then(|s| s.lease_duration_seconds)
            .unwrap_or(0);
        let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1));
        self.longest_heartbeat = self.longest_heartbeat.max(duration);
        let ns = self
            .namespaces
            .entry(ns_name.clone())
            .or_insert_with(|| Namespace::named(&ns_name));
        ns.no_lease.remove(&pod);
        let was_alive = ns.heartbeat_alive(&pod);
        // A ghost replaced by its Lease counts as a renewal observed now (a re-created Lease
        // carries the renewal that created it).
        let changed = ns
            .heartbeats
            .get(&pod)
            .is_none_or(|h| h.ghost() || h.holder != holder || h.renew_time != renew_time);
        if changed {
            ns.heartbeats.insert(
                pod.clone(),
                Heartbeat {
                    holder,
                    renew_time,
                    duration,
                    observed: now,
                    expired: false,
                    lease: LeaseSeen::Present,
                },
            );
        }
        heartbeat_changed(&ns_name, ns, &pod, was_alive)
    }

    /// A heartbeat Lease was deleted (a watch event, or a relist that no longer shows it). If it
    /// was alive, its worker may still run and renew: the last renewal seen stays alive until it
    /// expires (a ghost, see [`LeaseSeen::Deleted`]). A released or lapsed one is forgotten: the
    /// worker is judged by its Pod alone.
    pub fn delete_heartbeat(&mut self, namespace: &str, lease_name: &str) -> Vec<Key> {
        let Some(pod) = heartbeat::pod_of(lease_name) else {
            return Vec::new();
        };
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(h) = ns.heartbeats.get_mut(pod) else {
            return Vec::new();
        };
        if h.ghost() {
            return Vec::new();
        }
        if h.alive() {
            h.lease = LeaseSeen::Deleted;
            tracing::info!(
                namespace,
                worker = pod,
                "heartbeat Lease deleted while alive: the worker counts as alive until its last \
                 renewal seen expires (it re-creates the Lease at its next renewal)"
            );
            return Vec::new();
        }
        forget_heartbeat(namespace, ns, pod)
    }

    /// The end of a heartbeat (re)list applied one by one (`now`: when it was received): the
    /// Leases it did not list are deleted. On the first list, every worker Pod known without a
    /// Lease gets an unseen ghost (see [`Index::with_unseen_heartbeat_wait`]).
    pub fn finish_heartbeat_list(
        &mut self,
        listed: &HashSet<(String, String)>,
        now: Instant,
    ) -> Vec<Key> {
        self.heartbeats_synced = true;
        let first = self.heartbeats_listed_at.is_none();
        if first {
            self.heartbeats_listed_at = Some(now);
        }
        let keys = self.retain(
            listed,
            |ns| {
                ns.heartbeats
                    .iter()
                    .filter(|(_, h)| !h.ghost())
                    .map(|(pod, _)| heartbeat::lease_name(pod))
                    .collect()
            },
            Self::delete_heartbeat,
        );
        if first && let Some(ghost) = self.unseen_ghost() {
            for ns in self.namespaces.values_mut() {
                let unknown: Vec<String> = ns
                    .workers
                    .keys()
                    .filter(|w| !ns.heartbeats.contains_key(*w) && !ns.no_lease.contains(*w))
                    .cloned()
                    .collect();
                for w in unknown {
                    ns.heartbeats.insert(w, ghost.clone());
                }
            }
        }
        keys
    }

    /// The heartbeat a worker Pod without a Lease gets while the controller does not know that
    /// it has none: alive-unknown until the unseen wait from the first heartbeat list has passed
    /// and a read found no Lease. `None` before that list, or when the wait is off.
    pub(super) fn unseen_ghost(&self) -> Option<Heartbeat> {
        let wait = self.unseen_wait?.max(self.longest_heartbeat);
        Some(Heartbeat {
            holder: None,
            renew_time: None,
            duration: wait,
            observed: self.heartbeats_listed_at?,
            expired: false,
            lease: LeaseSeen::Unseen,
        })
    }

    /// The heartbeat watch failed at `now` (the API server or etcd is unreachable or restarting):
    /// whatever renewals happened meanwhile are unseen, so none may expire on their account.
    pub fn heartbeats_unseen(&mut self, now: Instant) {
        self.heartbeats_unseen_at = Some(now);
    }

    /// The heartbeats not renewed within their duration: counted from when we observed the last
    /// renewal, or from the last failure of the heartbeat watch if that is later (a controller
    /// that could not see renewals must not conclude there were none).
    ///
    /// A watch that stalls silently is not a failure anyone reports at once, so these are only
    /// candidates: the controller confirms each with a consistent read of the Lease
    /// ([`Index::confirm_heartbeat`]) before it expires it. Each carries the renewal it was due
    /// on, which is what the read is compared with.
    pub fn heartbeats_due(&self, now: Instant) -> Vec<DueHeartbeat> {
        self.namespaces
            .iter()
            .flat_map(|(ns_name, ns)| {
                ns.heartbeats
                    .iter()
                    .filter(move |(_, h)| self.is_due(h, now))
                    .map(move |(pod, h)| DueHeartbeat {
                        namespace: ns_name.clone(),
                        pod: pod.clone(),
                        seen: Seen::of(h),
                    })
            })
            .collect()
    }

    fn heartbeat(&self, namespace: &str, pod: &str) -> Option<&Heartbeat> {
        self.namespaces.get(namespace)?.heartbeats.get(pod)
    }

    fn is_due(&self, h: &Heartbeat, now: Instant) -> bool {
        let since = self
            .heartbeats_unseen_at
            .map_or(h.observed, |u| u.max(h.observed));
        !h.expired && now >= since + h.duration
    }

    /// A consistent read of a due heartbeat's Lease (`lease`; `None`: it is gone), sent after it
    /// became due (`answered`: when the answer came), judged against the renewal it was due on
    /// (`due`), never against the entry as it is when the answer arrives: a watch that stalled,
    /// then relisted and applied the very renewal the read returned, would otherwise make "the
    /// read equals what we hold" look like "no renewal since" and expire a live worker.
    ///
    /// - The index observed anything of this heartbeat since `due` was taken (a renewal, a
    ///   deletion, an expiry): the read confirms nothing; the next tick decides on what is seen
    ///   then.
    /// - No longer due (the heartbeat watch failed since, so renewals may have gone unseen):
    ///   nothing either.
    /// - Otherwise, the read shows the renewal it was due on: no renewal was committed since, so
    ///   it expires. It shows another: a renewal the watch did not show (stalled or slow), which
    ///   counts as observed now. It shows none: forgotten (the worker is judged by its Pod).
    ///
    /// Returns the resources to reconcile.
    pub fn confirm_heartbeat(
        &mut self,
        due: &DueHeartbeat,
        lease: Option<&Lease>,
        answered: Instant,
    ) -> Vec<Key> {
        let (namespace, pod) = (due.namespace.as_str(), due.pod.as_str());
        let Some(h) = self.heartbeat(namespace, pod) else {
            return Vec::new();
        };
        if Seen::of(h) != due.seen {
            tracing::debug!(
                namespace,
                worker = pod,
                "the heartbeat changed while its Lease was read: the read confirms nothing"
            );
            return Vec::new();
        }
        if !self.is_due(h, answered) {
            return Vec::new();
        }
        self.settle_heartbeat(due, lease, answered)
    }

    /// The verdict of a read on a heartbeat still as it was when it became due.
    fn settle_heartbeat(
        &mut self,
        due: &DueHeartbeat,
        lease: Option<&Lease>,
        answered: Instant,
    ) -> Vec<Key> {
        let (namespace, pod) = (due.namespace.as_str(), due.pod.as_str());
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(lease) = lease else {
            // Due and gone: no renewal since the one observed a whole duration ago (a renewal
            // would have re-created the Lease). Forgotten: the worker is judged by its Pod alone.
            tracing::info!(
                namespace,
                worker = pod,
                "no heartbeat Lease (read after its last renewal seen expired): the worker is \
                 judged by its Pod alone"
            );
            return forget_heartbeat(namespace, ns, pod);
        };
        let (holder, renew_time) = renewal_of(lease);
        let unchanged = due.seen.lease == LeaseSeen::Present
            && due.seen.holder == holder
            && due.seen.renew_time == renew_time;
        if !unchanged {
            tracing::debug!(
                namespace,
                worker = pod,
                "a heartbeat renewal the watch did not show"
            );
            return self.apply_heartbeat(lease, answered);
        }
        let Some(h) = ns.heartbeats.get_mut(pod).filter(|h| !h.expired) else {
            return Vec::new();
        };
        h.expired = true;
        tracing::info!(namespace, worker = pod, "worker heartbeat expired");
        heartbeat_changed(namespace, ns, pod, true)
    }

    /// The verdict of a read answered at `answered`, judged against the heartbeat as the index
    /// holds it now, due or not: for tests of the index that play a read at a given moment.
    #[cfg(test)]
    pub fn confirm_heartbeat_as_is(
        &mut self,
        namespace: &str,
        pod: &str,
        lease: Option<&Lease>,
        answered: Instant,
    ) -> Vec<Key> {
        let Some(h) = self.heartbeat(namespace, pod) else {
            return Vec::new();
        };
        let due = DueHeartbeat {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            seen: Seen::of(h),
        };
        self.settle_heartbeat(&due, lease, answered)
    }

    /// Expires every due heartbeat without a confirming read: for tests of the index, where the
    /// index's view is the truth.
    #[cfg(test)]
    pub fn expire_heartbeats(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        for DueHeartbeat {
            namespace: ns_name,
            pod,
            ..
        } in self.heartbeats_due(now)
        {
            let Some(ns) = self.namespaces.get_mut(&ns_name) else {
                continue;
            };
            let Some(h) = ns.heartbeats.get_mut(&pod) else {
                continue;
            };
            if h.ghost() {
                // The read would find no Lease (the index's view is the truth here).
                keys.extend(forget_heartbeat(&ns_name, ns, &pod));
                continue;
            }
            let was_alive = h.alive();
            h.expired = true;
            keys.extend(heartbeat_changed(&ns_name, ns, &pod, was_alive));
        }
        keys
    }
}

/// What a change of one worker means for the resources: a worker that can no longer keep work
/// releases its resources; one that can take more (new, ready again, relabelled, bigger) is offered
/// the waiting ones.
pub(super) fn triggers_for_worker_change(
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

pub(super) fn worker_from_pod(pod: &Pod) -> WorkerEntry {
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
pub(super) fn effective_readiness(pod: Readiness, heartbeat: Option<&Heartbeat>) -> Readiness {
    match (pod, heartbeat) {
        (Readiness::Ready, Some(h)) if !h.alive() => {
            Readiness::NotReady(NotReady::HeartbeatExpired)
        }
        (readiness, _) => readiness,
    }
}

/// What a change of `pod`'s heartbeat triggers: its readiness recomputed, and, when it stopped
/// being alive (lapsed, released, forgotten), the handoffs waiting on it, which it completes
/// (its Pod may have been unready, or gone, all along: readiness alone would not tell), and the
/// successors held back for a task it may have still run (it stopped every task by now).
fn heartbeat_changed(namespace: &str, ns: &mut Namespace, pod: &str, was_alive: bool) -> Vec<Key> {
    let mut keys = refresh_worker(namespace, ns, pod);
    if was_alive && !ns.heartbeat_alive(pod) {
        keys.extend(ns.releasing_on(namespace, pod));
        keys.extend(ns.unbury_on(namespace, pod));
    }
    keys
}

/// Drops `pod`'s heartbeat: from now on the worker is judged by its Pod alone (remembered in
/// `no_lease` while the Pod exists, so it does not get an unseen ghost again).
fn forget_heartbeat(namespace: &str, ns: &mut Namespace, pod: &str) -> Vec<Key> {
    let was_alive = ns.heartbeat_alive(pod);
    ns.heartbeats.remove(pod);
    if ns.workers.contains_key(pod) {
        ns.no_lease.insert(pod.to_owned());
    }
    heartbeat_changed(namespace, ns, pod, was_alive)
}

/// Recomputes a worker's readiness after its heartbeat changed; returns what that triggers.
pub(super) fn refresh_worker(namespace: &str, ns: &mut Namespace, pod: &str) -> Vec<Key> {
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

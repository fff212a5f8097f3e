//! The load accounting: every worker's load is the sum of the weights of the resources whose
//! effective worker it is, and every host is held on the workers whose tasks crawl it. Both
//! change only here, as a resource is taken out of its namespace and put back, so they always
//! equal what the resources say (`check_loads`, `check_hosts`), and a change that frees room
//! or a host is noted for [`Index::room_freed`].

#[cfg(test)]
use std::collections::HashMap;

use crawler_core::{Holder, Load};

#[cfg(test)]
use crawler_core::HostHolders;

use crate::crd::Phase;

use super::{Index, Key, Namespace, ResourceEntry};

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

/// See [`Index::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    /// (namespace, worker, load, capacity)
    pub workers: Vec<(String, String, Load, Option<Load>)>,
    pub resources: usize,
    pub unschedulable: usize,
}

impl Index {
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

impl Namespace {
    pub(super) fn put_resource(&mut self, name: String, entry: ResourceEntry) {
        let before = self.take_resource(&name);
        self.insert_resource(name, entry, before.as_ref().map(Counted::of));
    }

    /// Changes a resource in place (its load moved accordingly).
    pub(super) fn change_resource(&mut self, name: &str, change: impl FnOnce(&mut ResourceEntry)) {
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
    pub(super) fn remove_resource(&mut self, name: &str) -> Option<ResourceEntry> {
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

    /// Resources counting against `worker`.
    pub(super) fn on_worker(&self, namespace: &str, worker: &str) -> Vec<Key> {
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

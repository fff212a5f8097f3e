//! The watches' events applied: a worker Pod or a `CrawlerResource` added, changed or deleted,
//! and the end of a (re)list, which removes what the list no longer showed. Each returns the
//! resources to reconcile. A resource is converted here, once per event, into the
//! `ResourceEntry` the decisions read (its placement request, hosts, compiled rules, schedule,
//! the runs its worker reported), keeping only the controller's own status fields.

use std::collections::HashSet;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::ResourceExt;

use crawler_core::{InvalidSelector, Load, Request, Requirement, WorkerSelector};

use crate::crd::CrawlerResource;

use super::{
    DEADLINE_EXCEEDED, Index, Key, Namespace, ResourceEntry,
    lifecycle::{CompletedRun, FailedRun},
    rules, schedule,
    status::controller_fields,
    workers::{effective_readiness, triggers_for_worker_change, worker_from_pod},
};

impl Index {
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
    pub(super) fn retain(
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
pub(super) fn listed<K: kube::Resource>(objects: &[K]) -> HashSet<(String, String)> {
    objects
        .iter()
        .filter_map(|o| Some((o.meta().namespace.clone()?, o.name_any())))
        .collect()
}

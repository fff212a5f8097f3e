//! The invariant checker (docs/architecture.md, "Invariants"): reads the cluster and states each
//! violation precisely. Scenarios call [`check`] at settle points and collect what it reports;
//! the site's request log ([`super::site::Site::overlaps`]) covers "run by two workers at once".

use std::collections::{BTreeMap, BTreeSet};

use crawler_operator::{
    crd::{CrawlerResource, Phase},
    heartbeat,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};

/// What the cluster looked like when checked.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Workers that may hold work: Ready, not terminating, with an IP, heartbeat alive if any.
    pub ready: BTreeSet<String>,
    /// resource name -> assigned worker
    pub assigned: BTreeMap<String, Option<String>>,
    pub violations: Vec<String>,
}

/// Checks, in namespace `ns`: no resource lost (every name in `expected` exists, none other),
/// every resource has a status, none is assigned to a worker that is gone or not ready, and none
/// is left unassigned (or Unschedulable) while a ready worker exists. `expected`: `None` skips
/// the "lost" check.
pub async fn check(client: &Client, ns: &str, expected: Option<&BTreeSet<String>>) -> Snapshot {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing pods");
    let leases = Api::<Lease>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing leases");
    let resources = Api::<CrawlerResource>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing resources");
    let released: BTreeSet<String> = leases
        .iter()
        .filter_map(|l| {
            let name = l.name_any();
            let pod = heartbeat::pod_of(&name)?.to_owned();
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty());
            holder.is_none().then_some(pod)
        })
        .collect();
    let mut snapshot = Snapshot::default();
    for pod in &pods {
        let ready = pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().is_some_and(|s| {
                s.pod_ip.is_some()
                    && s.conditions
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
        if ready && !released.contains(&pod.name_any()) {
            snapshot.ready.insert(pod.name_any());
        }
    }
    let names: BTreeSet<String> = resources.iter().map(ResourceExt::name_any).collect();
    if let Some(expected) = expected {
        for lost in expected.difference(&names) {
            snapshot
                .violations
                .push(format!("lost resource: {lost} no longer exists"));
        }
        for extra in names.difference(expected) {
            snapshot
                .violations
                .push(format!("unexpected resource: {extra}"));
        }
    }
    for r in &resources {
        let name = r.name_any();
        let Some(status) = &r.status else {
            snapshot
                .violations
                .push(format!("lost status: {name} has none"));
            continue;
        };
        let worker = status.assigned_worker.clone();
        snapshot.assigned.insert(name.clone(), worker.clone());
        if r.spec.suspend {
            continue;
        }
        match &worker {
            Some(w) if !snapshot.ready.contains(w) => {
                snapshot.violations.push(format!(
                    "{name} is assigned to {w}, which is gone or not ready"
                ));
            }
            None if !snapshot.ready.is_empty() => snapshot.violations.push(format!(
                "{name} is unassigned ({:?}) while {} worker(s) are ready",
                status.phase.unwrap_or(Phase::Pending),
                snapshot.ready.len()
            )),
            _ => {}
        }
    }
    snapshot
}

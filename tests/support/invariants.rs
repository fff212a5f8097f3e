//! The invariant checker (docs/architecture.md, "Invariants"): reads the cluster and states each
//! violation precisely. Scenarios call [`check`] at settle points and collect what it reports;
//! the site's request log ([`super::site::Site::overlaps`]) covers "run by two workers at once".

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crawler_operator::{
    crd::{CrawlerResource, Phase},
    heartbeat,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
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

type Samples = Arc<Mutex<Vec<(jiff::Timestamp, Option<String>)>>>;

/// The holder of a leader-election Lease over time, sampled every 100 ms, to judge writes against.
pub struct LeaseTimeline {
    samples: Samples,
    sampler: tokio::task::JoinHandle<()>,
}

impl LeaseTimeline {
    pub fn start(client: Client, ns: &str, lease: &'static str) -> Self {
        let samples = Samples::default();
        let leases = Api::<Lease>::namespaced(client, ns);
        let task = tokio::spawn({
            let samples = Arc::clone(&samples);
            async move {
                loop {
                    if let Ok(l) = leases.get(lease).await {
                        samples.lock().unwrap().push((
                            jiff::Timestamp::now(),
                            l.spec.and_then(|s| s.holder_identity),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            samples,
            sampler: task,
        }
    }

    /// Judges every Assigned/Reassigned Event (the controller publishes one per placing status
    /// write, `Assigned` ones within a budget of 5/s after a burst of 50, which these tests stay
    /// under): its reporting instance must have held the Lease within 5 s before to 0.5 s after
    /// the Event (a leader acts at most its renew deadline, 2 s here, past its last renewal, and
    /// an Event is published at most 2 s after its write, once no placement is pending). Returns
    /// how many were judged and the violations.
    pub fn judge(&self, events: &[Event]) -> (usize, Vec<String>) {
        let samples = self.samples.lock().unwrap();
        let mut judged = 0;
        let mut violations = Vec::new();
        for e in events
            .iter()
            .filter(|e| matches!(e.reason.as_deref(), Some("Assigned" | "Reassigned")))
        {
            let (Some(who), Some(at)) = (
                e.reporting_instance.as_deref(),
                e.event_time.as_ref().map(|t| t.0),
            ) else {
                continue;
            };
            let window: Vec<_> = samples
                .iter()
                .filter(|(t, _)| {
                    *t >= at - jiff::SignedDuration::from_secs(5)
                        && *t <= at + jiff::SignedDuration::from_millis(500)
                })
                .collect();
            if window.is_empty() {
                continue; // before sampling started
            }
            judged += 1;
            if !window
                .iter()
                .any(|(_, holder)| holder.as_deref() == Some(who))
            {
                violations.push(format!(
                    "{who} wrote at {at} without holding the Lease; holders then: {window:?}"
                ));
            }
        }
        (judged, violations)
    }
}

impl Drop for LeaseTimeline {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

//! The heartbeat Lease against the real API server: what the worker writes into it.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::Api;
use support::{
    pods::delete_pod,
    process::Server,
    story::{HEARTBEAT, Story},
    wait_for,
};

/// Pod `worker-1` ready and its worker started with the Pod's UID (as the downward API gives
/// it); waits for its heartbeat Lease. Returns the Pod's UID and the Lease.
async fn start_worker_1_with_its_uid(story: &mut Story) -> (String, Lease) {
    story.ready_worker("worker-1").await;
    let uid = Api::<Pod>::namespaced(story.client.clone(), story.ns())
        .get("worker-1")
        .await
        .expect("the worker Pod")
        .metadata
        .uid
        .expect("a Pod UID");
    story.start_worker_as("worker-1", None, Some(&uid));
    let leases = Api::<Lease>::namespaced(story.client.clone(), story.ns());
    let lease = wait_for(
        "the heartbeat Lease",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            leases
                .get_opt("crawler-worker-worker-1")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    (uid, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_lease_is_owned_by_its_pod_and_keeps_its_owner_when_released() {
    let mut story = Story::new("heartbeat-owner").await;
    let (uid, lease) = start_worker_1_with_its_uid(&mut story).await;
    let leases = Api::<Lease>::namespaced(story.client.clone(), story.ns());
    let owners = lease.metadata.owner_references.unwrap_or_default();
    println!(
        "heartbeat Lease owners: {:?}; leaseDurationSeconds {:?} for a {HEARTBEAT:?} heartbeat",
        owners
            .iter()
            .map(|o| format!("{}/{} {}", o.kind, o.name, o.uid))
            .collect::<Vec<_>>(),
        lease.spec.as_ref().and_then(|s| s.lease_duration_seconds)
    );
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (
            owners[0].kind.as_str(),
            owners[0].name.as_str(),
            owners[0].uid.as_str()
        ),
        ("Pod", "worker-1", uid.as_str())
    );
    assert_eq!(
        lease.spec.and_then(|s| s.lease_duration_seconds),
        Some(i32::try_from(HEARTBEAT.as_secs()).unwrap())
    );

    // The release on SIGTERM keeps the owner (a server-side apply that left it out would remove it).
    story.workers[0].signal("TERM");
    let released = wait_for(
        "the heartbeat released",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let lease = leases
                .get("crawler-worker-worker-1")
                .await
                .map_err(|e| e.to_string())?;
            match lease.spec.as_ref().and_then(|s| s.holder_identity.as_ref()) {
                None => Ok(lease),
                Some(holder) => Err(format!("still held by {holder}")),
            }
        },
    )
    .await;
    assert_eq!(
        released.metadata.owner_references.unwrap_or_default().len(),
        1,
        "the release keeps the owner"
    );
}

/// The ownerReference is only half of the promise: where a garbage collector runs (every real
/// cluster), deleting the worker's Pod deletes its heartbeat Lease. The test control plane has no
/// controller-manager, so this test starts the real one with only its garbage collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_lease_is_garbage_collected_with_its_pod() {
    let mut story = Story::new("heartbeat-gc").await;
    let gc = Server::new(
        "kube-controller-manager",
        support::tools::binary("kube-controller-manager"),
        vec![
            format!("--kubeconfig={}", story.cp.kubeconfig_path().display()),
            "--controllers=garbagecollector".to_owned(),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            "--use-service-account-credentials=false".to_owned(),
            "--profiling=false".to_owned(),
        ],
        story.cp.dir().join(format!("{}-gc.log", story.ns())),
    );
    gc.start();
    start_worker_1_with_its_uid(&mut story).await;
    let leases = Api::<Lease>::namespaced(story.client.clone(), story.ns());

    // The Pod goes as a node would lose it: the process dies without releasing (a released
    // Lease is kept too, with its owner), then the Pod object is deleted.
    story.workers[0].signal("KILL");
    delete_pod(&story.client, story.ns(), "worker-1").await;
    let deleted = Instant::now();
    wait_for(
        "the heartbeat Lease to be garbage-collected",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            match leases
                .get_opt("crawler-worker-worker-1")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(_) => Err(format!(
                    "still there; garbage collector log {}:\n{}",
                    gc.log.display(),
                    gc.log_tail(10)
                )),
            }
        },
    )
    .await;
    println!(
        "heartbeat Lease garbage-collected {:?} after its Pod was deleted",
        deleted.elapsed()
    );
}

//! The kubelet's part. There is no kubelet (nor scheduler) in the test control plane, so tests
//! create worker Pods already bound to a node and set their status themselves, as envtest users do.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The node every test Pod is bound to. No Node object is needed: nothing checks.
pub const FAKE_NODE: &str = "node-1";

/// Creates a minimal valid worker Pod bound to [`FAKE_NODE`] (so nothing waits for scheduling),
/// with phase `Pending` and no conditions until [`set_pod_ready`] plays the kubelet.
pub async fn create_worker_pod(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Pod {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeName": FAKE_NODE,
            "containers": [{ "name": "worker", "image": "crawler-operator:test" }],
        },
    }))
    .expect("a valid Pod literal");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating Pod {ns}/{name}: {e}"))
}

/// Plays the kubelet for a Pod of a chart's worker Deployment: creates Pod `name` with the labels
/// of the Deployment's `template` (what the controller selects workers by) and reports it ready
/// at `ip`.
pub async fn create_ready_pod_of(
    client: &Client,
    ns: &str,
    name: &str,
    template: &PodTemplateSpec,
    ip: &str,
) -> Pod {
    let labels: Vec<(&str, &str)> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("the Pod template has labels")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    create_worker_pod(client, ns, name, &labels).await;
    set_pod_ready(client, ns, name, true, Some(ip)).await
}

/// Writes what a kubelet would through the status subresource: phase `Running`, a `Ready`
/// condition (with a fresh `lastTransitionTime`) and, if given, `podIP`/`podIPs`. `ip: None`
/// leaves the addresses as they are. The conditions list is replaced as a whole (merge patch).
pub async fn set_pod_ready(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
    ip: Option<&str>,
) -> Pod {
    let status = if ready { "True" } else { "False" };
    let now = Time(jiff::Timestamp::now());
    let mut patch = json!({ "status": {
        "phase": "Running",
        "conditions": [
            { "type": "Ready", "status": status, "lastTransitionTime": now },
            { "type": "ContainersReady", "status": status, "lastTransitionTime": now },
        ],
    }});
    if let Some(ip) = ip {
        patch["status"]["podIP"] = json!(ip);
        patch["status"]["podIPs"] = json!([{ "ip": ip }]);
    }
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching the status of Pod {ns}/{name} (ready={ready}): {e}"))
}

/// Deletes a Pod at once (grace period 0). With a grace period it would stay, terminating,
/// because no kubelet confirms that its containers stopped.
pub async fn delete_pod(client: &Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("deleting Pod {ns}/{name}: {e}"));
}

/// Starts a graceful delete and returns the Pod as it stays: terminating, `deletionTimestamp`
/// set, still listed (and still `Ready` if it was). Operators must not count it as a worker.
pub async fn delete_pod_graceful(client: &Client, ns: &str, name: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting Pod {ns}/{name} gracefully: {e}"))
        .left()
        .unwrap_or_else(|| {
            panic!("Pod {ns}/{name} was removed at once; expected it to stay terminating")
        })
}

//! The foundation's "done when": the harness runs a real etcd + kube-apiserver, and the API
//! semantics the operator builds on (status subresource, watches, optimistic concurrency, RBAC)
//! behave as expected there. Also checks the harness's own fault and access tools.

use crate::support;

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use support::pods::{create_worker_pod, delete_pod, delete_pod_graceful, set_pod_ready};
use support::proxy::Proxy;

const WORKER_LABELS: &[(&str, &str)] = &[("app.kubernetes.io/name", "crawler-worker")];

fn ready_condition(pod: &Pod) -> Option<&str> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// The next MODIFIED event, within 10 s.
async fn next_modified(events: &mut BoxStream<'_, kube::Result<WatchEvent<Pod>>>) -> Pod {
    let next = async {
        while let Some(event) = events.try_next().await.expect("watch stream error") {
            match event {
                WatchEvent::Modified(pod) => return pod,
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected watch event {other:?}"),
            }
        }
        panic!("the watch ended before a MODIFIED event")
    };
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("no MODIFIED event within 10 s")
}

/// The `code` of an API error, or a panic naming what was expected.
fn api_error_code<T>(result: kube::Result<T>, expected: &str) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("expected {expected}, got {other}"),
        Ok(_) => panic!("expected {expected}, got a success"),
    }
}

#[tokio::test]
async fn readiness_written_to_the_status_subresource_arrives_through_a_watch() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-watch").await;
    let client = cp.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());

    let created = create_worker_pod(&client, ns.name(), "worker-0", WORKER_LABELS).await;
    assert_eq!(
        ready_condition(&created),
        None,
        "a new Pod has no Ready condition"
    );
    let rv = created
        .resource_version()
        .expect("a created Pod has a resourceVersion");

    // Established (response headers received) before the patch, and from the create's
    // resourceVersion, so no event can fall into a gap.
    let params = WatchParams::default().fields("metadata.name=worker-0");
    let mut events = pods
        .watch(&params, &rv)
        .await
        .expect("starting a watch")
        .boxed();

    set_pod_ready(&client, ns.name(), "worker-0", true, Some("10.1.0.7")).await;
    let seen = next_modified(&mut events).await;
    assert_eq!(ready_condition(&seen), Some("True"));
    assert_eq!(pod_ip(&seen), Some("10.1.0.7"));

    set_pod_ready(&client, ns.name(), "worker-0", false, None).await;
    let seen = next_modified(&mut events).await;
    assert_eq!(ready_condition(&seen), Some("False"));
    assert_eq!(
        pod_ip(&seen),
        Some("10.1.0.7"),
        "ip: None leaves the address alone"
    );
}

#[tokio::test]
async fn a_stale_resource_version_is_refused_with_409() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-conflict").await;
    let client = cp.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());

    let stale = create_worker_pod(&client, ns.name(), "worker-0", WORKER_LABELS).await;
    let current = set_pod_ready(&client, ns.name(), "worker-0", true, Some("10.1.0.8")).await;
    assert_ne!(stale.resource_version(), current.resource_version());

    let mut edited = stale.clone();
    edited.labels_mut().insert("edited".into(), "yes".into());
    let code = api_error_code(
        pods.replace("worker-0", &PostParams::default(), &edited)
            .await,
        "409 for a replace with a stale resourceVersion",
    );
    assert_eq!(code, 409);

    // The fencing the operator relies on: a status write that carries the version it read.
    let fenced = json!({
        "metadata": { "resourceVersion": stale.resource_version() },
        "status": { "podIP": "10.1.0.9", "podIPs": [{ "ip": "10.1.0.9" }] },
    });
    let code = api_error_code(
        pods.patch_status("worker-0", &PatchParams::default(), &Patch::Merge(&fenced))
            .await,
        "409 for a status merge patch with a stale resourceVersion",
    );
    assert_eq!(code, 409);

    let after = pods.get("worker-0").await.expect("reading the Pod back");
    assert_eq!(
        pod_ip(&after),
        Some("10.1.0.8"),
        "the refused write changed nothing"
    );
    assert_eq!(after.labels().get("edited"), None);
}

/// Without a kubelet, a graceful delete never completes (the Pod stays, terminating), and a
/// delete with grace period 0 removes it at once.
#[tokio::test]
async fn a_graceful_delete_leaves_the_pod_terminating() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-delete").await;
    let client = cp.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    create_worker_pod(&client, ns.name(), "worker-0", WORKER_LABELS).await;

    let terminating = delete_pod_graceful(&client, ns.name(), "worker-0").await;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let still_there = pods
        .get("worker-0")
        .await
        .expect("a terminating Pod is still there");
    assert!(still_there.metadata.deletion_timestamp.is_some());

    delete_pod(&client, ns.name(), "worker-0").await;
    let code = api_error_code(
        pods.get("worker-0").await,
        "404 after a delete with grace period 0",
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn rbac_refuses_a_service_account_without_a_role_and_admits_it_with_one() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-rbac").await;
    let admin = cp.client();
    create_worker_pod(&admin, ns.name(), "worker-0", WORKER_LABELS).await;

    let as_sa: Api<Pod> = Api::namespaced(
        cp.client_for_service_account(ns.name(), "crawler"),
        ns.name(),
    );
    let code = api_error_code(
        as_sa.list(&ListParams::default()).await,
        "403 for a ServiceAccount with no role",
    );
    assert_eq!(code, 403);

    let listed = Api::<Pod>::namespaced(admin.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .expect("the admin lists Pods");
    assert_eq!(listed.items.len(), 1);

    // The same identity is let in once RBAC says so: the 403 was RBAC's decision, not a broken
    // impersonation. Role bindings reach the authorizer through an informer, hence the wait.
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "pod-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "crawler-reads-pods" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "crawler", "namespace": ns.name() }],
    }))
    .unwrap();
    let (pp, lp) = (PostParams::default(), ListParams::default());
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&pp, &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&pp, &binding)
        .await
        .unwrap();
    let listed = support::wait_for(
        "the ServiceAccount to list Pods once bound to a Role",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || as_sa.list(&lp),
    )
    .await;
    assert_eq!(listed.items.len(), 1);
}

/// The service-account key pair works (the apiserver signs a token and then accepts it), and
/// `client_for_service_account` is seen as the same user with the same groups as that token.
#[tokio::test]
async fn service_account_tokens_work_and_impersonation_matches_them() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-sa").await;
    let accounts = Api::<ServiceAccount>::namespaced(cp.client(), ns.name());
    let pp = PostParams::default();
    let account: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "crawler" } })).unwrap();
    accounts
        .create(&pp, &account)
        .await
        .expect("creating a ServiceAccount");
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "audiences": [] } })).unwrap();
    let token = accounts
        .create_token_request("crawler", &pp, &request)
        .await
        .expect("the apiserver signs a token")
        .status
        .expect("a TokenRequest status")
        .token;

    let whoami = async |client: Client| {
        let review = Api::<SelfSubjectReview>::all(client)
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .expect("a SelfSubjectReview");
        let user = review.status.and_then(|s| s.user_info).expect("user info");
        let mut groups = user.groups.unwrap_or_default();
        groups.sort();
        (user.username, groups)
    };
    let mut config = cp.config();
    config.auth_info = serde_json::from_value(json!({ "token": token })).unwrap();
    let real = whoami(Client::try_from(config).unwrap()).await;
    assert_eq!(
        real.0,
        Some(format!("system:serviceaccount:{}:crawler", ns.name()))
    );
    let impersonated = whoami(cp.client_for_service_account(ns.name(), "crawler")).await;
    assert_eq!(impersonated, real);
}

#[tokio::test]
async fn the_kubeconfig_works_for_kubectl_and_kube() {
    let cp = support::control_plane();
    let ns = cp.namespace("smoke-kubeconfig").await;

    let output = cp
        .kubectl()
        .args(["get", "namespace", ns.name(), "-o", "name"])
        .output()
        .expect("running kubectl");
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("namespace/{}", ns.name())
    );

    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig_path()).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("loading the kubeconfig");
    let client = Client::try_from(config).expect("a client from the kubeconfig");
    Api::<Namespace>::all(client)
        .get(ns.name())
        .await
        .expect("reading the namespace through the kubeconfig");
}

#[tokio::test]
async fn a_cut_proxy_isolates_only_the_clients_behind_it() {
    let cp = support::control_plane();
    let proxy = Proxy::start(cp.apiserver_addr());
    let mut config = cp.config_via(&proxy);
    config.connect_timeout = Some(Duration::from_secs(1));
    config.read_timeout = Some(Duration::from_secs(1));
    let behind = Api::<Namespace>::all(Client::try_from(config).unwrap());
    let direct = Api::<Namespace>::all(cp.client());

    behind
        .list(&ListParams::default())
        .await
        .expect("listing through the proxy");

    proxy.cut();
    let started = Instant::now();
    let result = behind.list(&ListParams::default()).await;
    assert!(
        result.is_err(),
        "a request through a cut proxy succeeded: {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing took {:?}",
        started.elapsed()
    );
    direct
        .list(&ListParams::default())
        .await
        .expect("a direct client is unaffected");

    proxy.restore();
    let lp = ListParams::default();
    support::wait_for(
        "the proxy to forward again",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || behind.list(&lp),
    )
    .await;
}

/// Pausing and restarting would disturb the other tests, so this one gets a control plane of
/// its own; dropping it must remove it.
#[tokio::test]
async fn fault_controls_work_on_a_private_control_plane() {
    let cp = support::ControlPlane::builder().start();
    let namespaces = Api::<Namespace>::all(cp.client());
    let ns = cp.namespace("smoke-faults").await;

    cp.pause_apiserver();
    let mut config = cp.config();
    config.connect_timeout = Some(Duration::from_secs(1));
    config.read_timeout = Some(Duration::from_secs(1));
    let impatient = Api::<Namespace>::all(Client::try_from(config).unwrap());
    assert!(
        impatient.get(ns.name()).await.is_err(),
        "a paused API server answered"
    );
    cp.resume_apiserver();
    namespaces
        .get(ns.name())
        .await
        .expect("answering again after SIGCONT");

    cp.restart_apiserver().await;
    namespaces
        .get(ns.name())
        .await
        .expect("the namespace survives an API server restart");

    cp.restart_etcd().await;
    namespaces
        .get(ns.name())
        .await
        .expect("the namespace survives an etcd restart");

    let dir = cp.dir().to_owned();
    drop(ns);
    drop(cp);
    support::wait_for(
        "the private control plane's dir to go",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            if dir.exists() {
                Err(format!("{} still exists", dir.display()))
            } else {
                Ok(())
            }
        },
    )
    .await;
}

//! The Helm chart and `deploy/` against the real test API server (RBAC on): `helm install`
//! creates what the chart promises, `deploy/` passes a server-side dry run, the chart's service
//! accounts may do what their component needs and are refused (403) everything else, and the
//! real controller and worker binaries, run as those accounts with the arguments of the chart's
//! Deployments, do their job.
//!
//! Needs helm (`make chart-tools`, or `TEST_ASSET_HELM`) besides the usual etcd, kube-apiserver
//! and kubectl.
// Each RBAC test is a flat list of allowed and forbidden calls, best read top to bottom.
#![allow(clippy::too_many_lines)]

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crawler_operator::crd::CrawlerResource;
use futures::TryStreamExt as _;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Container, Pod, Secret, Service, ServiceAccount},
        events::v1::Event,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, MicroTime},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    core::NamespaceResourceScope,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{
    ControlPlane, pods, process::Server, site::Site, story::apply_crawler_resource, wait_for,
};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/crawler-operator");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

// ----------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn helm_install_creates_every_object_with_secure_defaults() {
    let (cp, ns) = namespace_with_crd("chart-install").await;
    let ns = ns.name();
    // Release "crawler": objects are named "<release>-<chart>-<component>". (Not the release name
    // deploy/ uses: its cluster-wide objects would clash with the dry run of deploy/ below.)
    let out = helm_install(cp, ns, "crawler", &[]).await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    let client = cp.client();
    let fullname = "crawler-crawler-operator";

    let controller: Deployment = get(&client, ns, &format!("{fullname}-controller")).await;
    let worker: Deployment = get(&client, ns, &format!("{fullname}-worker")).await;
    assert_eq!(controller.spec.replicas, Some(2));
    assert_eq!(worker.spec.replicas, Some(2));
    for (deployment, sa) in [
        (&controller, format!("{fullname}-controller")),
        (&worker, format!("{fullname}-worker")),
    ] {
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()));
        assert_eq!(pod.automount_service_account_token, Some(true));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let probes = [&container.liveness_probe, &container.readiness_probe];
        let paths: Vec<_> = probes
            .iter()
            .map(|p| {
                p.as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .clone()
                    .unwrap()
            })
            .collect();
        assert_eq!(paths, ["/healthz", "/readyz"]);
        let env = env_names(container);
        assert!(
            env.contains("POD_NAME") && env.contains("POD_NAMESPACE"),
            "{env:?}"
        );
        // The ServiceAccount itself mounts no token: only the Pods that need one ask for it.
        let account: ServiceAccount = get(&client, ns, &sa).await;
        assert_eq!(account.automount_service_account_token, Some(false));
    }
    // Workers carry the label the controller selects on, and their capacity.
    let template = &worker.spec.template;
    let meta = template.metadata.as_ref().unwrap();
    assert_eq!(
        meta.labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "crawler-worker"
    );
    assert_eq!(
        meta.annotations.as_ref().unwrap()["crawler.dev/capacity"],
        "10"
    );
    let volumes = template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert!(volumes[0].empty_dir.is_some(), "{volumes:?}");

    let _: Service = get(&client, ns, &format!("{fullname}-controller-metrics")).await;
    let workers_svc: Service = get(&client, ns, &format!("{fullname}-worker-metrics")).await;
    assert_eq!(
        workers_svc.spec.unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    let pdb: PodDisruptionBudget = get(&client, ns, &format!("{fullname}-controller")).await;
    assert!(pdb.spec.unwrap().max_unavailable.is_some());
    // The workers' budget: a drain evicts one at a time, and selects exactly the worker Pods.
    let pdb: PodDisruptionBudget = get(&client, ns, &format!("{fullname}-worker")).await;
    let pdb = pdb.spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.min_available, None);
    assert_eq!(
        pdb.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    let worker_labels = template_labels(&worker);
    assert!(selects(pdb.selector.as_ref().unwrap(), &worker_labels));
    assert!(!selects(
        pdb.selector.as_ref().unwrap(),
        &template_labels(&controller)
    ));
    let _: NetworkPolicy = get(&client, ns, &format!("{fullname}-worker")).await;
    // All namespaces watched: the controller's rules are a ClusterRole.
    let _: ClusterRole = Api::all(client.clone())
        .get(&format!("{fullname}-controller"))
        .await
        .expect("the controller's ClusterRole");
    let _: ClusterRoleBinding = Api::all(client.clone())
        .get(&format!("{fullname}-controller"))
        .await
        .expect("the controller's ClusterRoleBinding");
    for name in [
        format!("{fullname}-controller-leader-election"),
        format!("{fullname}-worker"),
    ] {
        let _: Role = get(&client, ns, &name).await;
        let _: RoleBinding = get(&client, ns, &name).await;
    }
}

#[tokio::test]
async fn deploy_manifests_pass_a_server_side_dry_run() {
    let cp = support::control_plane();
    install_crd(cp).await;
    // deploy/ installs into namespace "crawler": a dry run creates nothing, so the namespaced
    // objects need it to exist for real (this control plane is this test binary's own). It warns
    // about anything that would break the "restricted" Pod Security Standard.
    let admin = cp.client();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin);
    let body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "crawler", "labels": { "pod-security.kubernetes.io/warn": "restricted" } },
    });
    namespaces
        .patch(
            "crawler",
            &PatchParams::apply("chart-test"),
            &Patch::Apply(&body),
        )
        .await
        .expect("creating namespace crawler");
    let mut command = tokio::process::Command::new(support::tools::binary("kubectl"));
    command.arg("--kubeconfig").arg(cp.kubeconfig_path()).args([
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &format!("{DEPLOY}/crawlerresources.crawler.dev.yaml"),
        "-f",
        &format!("{DEPLOY}/namespace.yaml"),
        "-f",
        &format!("{DEPLOY}/crawler-operator.yaml"),
    ]);
    let (out, warnings) = run_full(command, "kubectl apply --dry-run=server -f deploy/").await;
    assert!(!warnings.contains("PodSecurity"), "{warnings}");
    // The control: with privilege escalation allowed, the same dry run warns.
    let mut command = helm(cp);
    command.args([
        "template",
        "crawler-operator",
        CHART,
        "--namespace",
        "crawler",
    ]);
    command.args(["--set", "securityContext.allowPrivilegeEscalation=true"]);
    let weakened = cp.dir().join("weakened.yaml");
    std::fs::write(&weakened, run(command, "helm template").await).unwrap();
    let mut command = tokio::process::Command::new(support::tools::binary("kubectl"));
    command.arg("--kubeconfig").arg(cp.kubeconfig_path());
    command
        .args(["apply", "--server-side", "--dry-run=server", "-f"])
        .arg(&weakened);
    let (_, warned) = run_full(command, "kubectl apply --dry-run=server (weakened)").await;
    assert!(
        warned.contains("would violate PodSecurity \"restricted:latest\""),
        "{warned}"
    );
    assert!(
        out.contains("namespace/crawler serverside-applied (server dry run)"),
        "{out}"
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/crawlerresources.crawler.dev",
        "deployment.apps/crawler-operator-controller",
        "deployment.apps/crawler-operator-worker",
        "clusterrole.rbac.authorization.k8s.io/crawler-operator-controller",
        "poddisruptionbudget.policy/crawler-operator-controller",
        // The API server compiles the policy's CEL on create: a typo fails here.
        "validatingadmissionpolicy.admissionregistration.k8s.io/crawler-operator-cookie-secret-access",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/crawler-operator-cookie-secret-access",
        "poddisruptionbudget.policy/crawler-operator-worker",
        "networkpolicy.networking.k8s.io/crawler-operator-worker",
    ] {
        assert!(
            out.contains(&format!("{object} serverside-applied (server dry run)")),
            "{out}"
        );
    }
    // Nothing was created.
    let deployments: Api<Deployment> = Api::namespaced(cp.client(), "crawler");
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn the_controller_account_may_do_its_job_and_nothing_more() {
    let cp = support::control_plane();
    let (ns, other) = (
        cp.namespace("chart-ctl").await,
        cp.namespace("chart-ctl-other").await,
    );
    let (ns, other) = (ns.name(), other.name());
    install_crd(cp).await;
    helm_install(cp, ns, "ctl", &["fullnameOverride=rbac-ctl"]).await;
    let admin = cp.client();
    let me = cp.client_for_service_account(ns, "rbac-ctl-controller");
    let lease_name = "rbac-ctl-leader";

    // Objects to act on, made by the admin.
    for n in [ns, other] {
        pods::create_worker_pod(&admin, n, "worker-0", &[]).await;
        create_resource(&admin, n, "task").await.unwrap();
        create_secret(&admin, n, "cookies").await;
    }
    create_lease(&admin, ns, "crawler-worker-worker-0")
        .await
        .unwrap();

    // What it needs, in every namespace (all are watched by default).
    for n in [ns, other] {
        let pods: Api<Pod> = Api::namespaced(me.clone(), n);
        allowed("list pods", pods.list(&ListParams::default()).await);
        allowed("watch pods", watch(&pods).await);
        allowed("get a pod", pods.get("worker-0").await);
        let resources: Api<CrawlerResource> = Api::namespaced(me.clone(), n);
        allowed(
            "list crawlerresources",
            resources.list(&ListParams::default()).await,
        );
        allowed("watch crawlerresources", watch(&resources).await);
        allowed(
            "patch crawlerresources/status",
            resources
                .patch_status(
                    "task",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": { "phase": "Pending" } })),
                )
                .await,
        );
        let leases: Api<Lease> = Api::namespaced(me.clone(), n);
        allowed(
            "list leases (heartbeats)",
            leases.list(&ListParams::default()).await,
        );
        allowed("watch leases (heartbeats)", watch(&leases).await);
        allowed("create an event", create_event(&me, n, "task").await);
    }
    allowed(
        "list pods in all namespaces",
        Api::<Pod>::all(me.clone())
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "list crawlerresources in all namespaces",
        Api::<CrawlerResource>::all(me.clone())
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "list leases in all namespaces",
        Api::<Lease>::all(me.clone())
            .list(&ListParams::default())
            .await,
    );

    // Leader election: its own Lease, in its own namespace.
    let leases: Api<Lease> = Api::namespaced(me.clone(), ns);
    let lease = allowed(
        "create its leader Lease",
        create_lease(&me, ns, lease_name).await,
    );
    allowed("get its leader Lease", leases.get(lease_name).await);
    allowed(
        "update its leader Lease",
        leases
            .replace(lease_name, &PostParams::default(), &lease)
            .await,
    );
    forbidden(
        "patch its leader Lease (it updates)",
        leases
            .patch(
                lease_name,
                &PatchParams::default(),
                &Patch::Merge(json!({})),
            )
            .await,
    );
    forbidden(
        "delete its leader Lease",
        leases.delete(lease_name, &DeleteParams::default()).await,
    );
    let heartbeat: Lease = Api::namespaced(admin.clone(), ns)
        .get("crawler-worker-worker-0")
        .await
        .unwrap();
    forbidden(
        "update a worker's heartbeat Lease",
        leases
            .replace(
                "crawler-worker-worker-0",
                &PostParams::default(),
                &heartbeat,
            )
            .await,
    );
    forbidden(
        "create a Lease in another namespace",
        create_lease(&me, other, lease_name).await,
    );

    // What it may not do.
    for n in [ns, other] {
        let pods: Api<Pod> = Api::namespaced(me.clone(), n);
        forbidden(
            "delete a pod",
            pods.delete("worker-0", &DeleteParams::default()).await,
        );
        forbidden(
            "patch a pod",
            pods.patch(
                "worker-0",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "x": "y" } } })),
            )
            .await,
        );
        let secrets: Api<Secret> = Api::namespaced(me.clone(), n);
        forbidden("get a secret", secrets.get("cookies").await);
        forbidden("list secrets", secrets.list(&ListParams::default()).await);
        let resources: Api<CrawlerResource> = Api::namespaced(me.clone(), n);
        forbidden(
            "patch a crawlerresource's spec",
            resources
                .patch(
                    "task",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "weight": 2 } })),
                )
                .await,
        );
        let current = resources.get("task").await.unwrap();
        forbidden(
            "update a crawlerresource",
            resources
                .replace("task", &PostParams::default(), &current)
                .await,
        );
        forbidden(
            "create a crawlerresource",
            create_resource(&me, n, "mine").await,
        );
        // Deleting is its job since spec.ttlSecondsAfterFinished: a finished crawl past its TTL.
        allowed(
            "delete a crawlerresource (ttlSecondsAfterFinished)",
            resources.delete("task", &DeleteParams::default()).await,
        );
        let deployments: Api<Deployment> = Api::namespaced(me.clone(), n);
        forbidden(
            "list deployments",
            deployments.list(&ListParams::default()).await,
        );
    }
    let workers: Api<Deployment> = Api::namespaced(me.clone(), ns);
    forbidden(
        "scale the worker Deployment",
        workers
            .patch(
                "rbac-ctl-worker",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": 9 } })),
            )
            .await,
    );
}

#[tokio::test]
async fn the_worker_account_may_do_its_job_and_nothing_more() {
    let cp = support::control_plane();
    let (ns, other) = (
        cp.namespace("chart-wrk").await,
        cp.namespace("chart-wrk-other").await,
    );
    let (ns, other) = (ns.name(), other.name());
    install_crd(cp).await;
    helm_install(cp, ns, "wrk", &["fullnameOverride=rbac-wrk"]).await;
    let admin = cp.client();
    let me = cp.client_for_service_account(ns, "rbac-wrk-worker");
    for n in [ns, other] {
        pods::create_worker_pod(&admin, n, "worker-0", &[]).await;
        create_resource(&admin, n, "task").await.unwrap();
        create_secret(&admin, n, "cookies").await;
    }

    // What it needs, in its own namespace.
    let secrets: Api<Secret> = Api::namespaced(me.clone(), ns);
    allowed(
        "get a cookie secret in its namespace",
        secrets.get("cookies").await,
    );
    let resources: Api<CrawlerResource> = Api::namespaced(me.clone(), ns);
    allowed(
        "list crawlerresources",
        resources.list(&ListParams::default()).await,
    );
    allowed("watch crawlerresources", watch(&resources).await);
    allowed("get a crawlerresource", resources.get("task").await);
    allowed(
        "apply crawlerresources/status (progress)",
        resources
            .patch_status(
                "task",
                &PatchParams::apply("crawler-worker").force(),
                &Patch::Apply(json!({
                    "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
                    "status": { "progress": { "worker": "worker-0", "assignment": 1, "state": "Running", "pagesFetched": 0, "errors": 0 } },
                })),
            )
            .await,
    );
    // The heartbeat: server-side apply creates and renews it.
    let leases: Api<Lease> = Api::namespaced(me.clone(), ns);
    let heartbeat = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "crawler-worker-worker-0" },
        "spec": { "holderIdentity": "worker-0", "leaseDurationSeconds": 10 },
    });
    let apply = PatchParams::apply("crawler-worker").force();
    allowed(
        "apply its heartbeat Lease",
        leases
            .patch("crawler-worker-worker-0", &apply, &Patch::Apply(&heartbeat))
            .await,
    );
    let lease = allowed(
        "get its heartbeat Lease",
        leases.get("crawler-worker-worker-0").await,
    );
    allowed(
        "update its heartbeat Lease",
        leases
            .replace("crawler-worker-worker-0", &PostParams::default(), &lease)
            .await,
    );

    // Warning Events for what a person must act on (cannot start, database unreachable, refused
    // as stale).
    allowed(
        "create an event about a task",
        create_event(&me, ns, "task").await,
    );

    // What it may not do.
    forbidden("list secrets", secrets.list(&ListParams::default()).await);
    forbidden("watch secrets", watch(&secrets).await);
    let elsewhere: Api<Secret> = Api::namespaced(me.clone(), other);
    forbidden(
        "get a secret in another namespace",
        elsewhere.get("cookies").await,
    );
    let pods: Api<Pod> = Api::namespaced(me.clone(), ns);
    forbidden("list pods", pods.list(&ListParams::default()).await);
    forbidden("get a pod", pods.get("worker-0").await);
    forbidden(
        "delete a pod",
        pods.delete("worker-0", &DeleteParams::default()).await,
    );
    forbidden(
        "patch a crawlerresource's spec",
        resources
            .patch(
                "task",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "weight": 2 } })),
            )
            .await,
    );
    forbidden(
        "delete a crawlerresource",
        resources.delete("task", &DeleteParams::default()).await,
    );
    forbidden(
        "create a crawlerresource",
        create_resource(&me, ns, "mine").await,
    );
    let other_resources: Api<CrawlerResource> = Api::namespaced(me.clone(), other);
    forbidden(
        "list crawlerresources in another namespace",
        other_resources.list(&ListParams::default()).await,
    );
    forbidden(
        "patch crawlerresources/status in another namespace",
        other_resources
            .patch_status(
                "task",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "phase": "Pending" } })),
            )
            .await,
    );
    forbidden(
        "list crawlerresources in all namespaces",
        Api::<CrawlerResource>::all(me.clone())
            .list(&ListParams::default())
            .await,
    );
    forbidden("list leases", leases.list(&ListParams::default()).await);
    forbidden(
        "delete a Lease",
        leases
            .delete("crawler-worker-worker-0", &DeleteParams::default())
            .await,
    );
    let other_leases: Api<Lease> = Api::namespaced(me.clone(), other);
    forbidden(
        "apply a Lease in another namespace",
        other_leases
            .patch("crawler-worker-worker-0", &apply, &Patch::Apply(&heartbeat))
            .await,
    );
    forbidden(
        "create an event in another namespace",
        create_event(&me, other, "task").await,
    );
}

#[tokio::test]
async fn watch_namespace_confines_the_controller_and_places_the_workers_there() {
    let cp = support::control_plane();
    let (home, watched, third) = (
        cp.namespace("chart-home").await,
        cp.namespace("chart-watched").await,
        cp.namespace("chart-third").await,
    );
    let (home, watched, third) = (home.name(), watched.name(), third.name());
    install_crd(cp).await;
    let release = "confined";
    helm_install(
        cp,
        home,
        release,
        &[
            "fullnameOverride=confined",
            &format!("watchNamespace={watched}"),
        ],
    )
    .await;
    let admin = cp.client();

    // No cluster-wide grant at all.
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .list(&selector)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .list(&selector)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The controller stays home; the workers (and their account and rules) go to the watched
    // namespace, where the controller looks for them.
    let _: Deployment = get(&admin, home, "confined-controller").await;
    let _: Deployment = get(&admin, watched, "confined-worker").await;
    let _: ServiceAccount = get(&admin, watched, "confined-worker").await;
    let _: Role = get(&admin, watched, "confined-controller").await;
    let _: Role = get(&admin, watched, "confined-worker").await;
    let _: Role = get(&admin, home, "confined-controller-leader-election").await;
    let controller: Deployment = get(&admin, home, "confined-controller").await;
    let container = &controller.spec.template.spec.unwrap().containers[0];
    let watch_env = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "WATCH_NAMESPACE");
    assert_eq!(watch_env.and_then(|e| e.value.as_deref()), Some(watched));

    for n in [home, watched, third] {
        create_secret(&admin, n, "cookies").await;
    }
    let ctl = cp.client_for_service_account(home, "confined-controller");
    allowed(
        "list pods in the watched namespace",
        Api::<Pod>::namespaced(ctl.clone(), watched)
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "list crawlerresources in the watched namespace",
        Api::<CrawlerResource>::namespaced(ctl.clone(), watched)
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "create its leader Lease at home",
        create_lease(&ctl, home, "confined-leader").await,
    );
    for n in [home, third] {
        forbidden(
            "list pods outside the watched namespace",
            Api::<Pod>::namespaced(ctl.clone(), n)
                .list(&ListParams::default())
                .await,
        );
        forbidden(
            "list crawlerresources outside the watched namespace",
            Api::<CrawlerResource>::namespaced(ctl.clone(), n)
                .list(&ListParams::default())
                .await,
        );
    }
    forbidden(
        "list pods in all namespaces",
        Api::<Pod>::all(ctl.clone())
            .list(&ListParams::default())
            .await,
    );

    let wrk = cp.client_for_service_account(watched, "confined-worker");
    allowed(
        "get a secret in the watched namespace",
        Api::<Secret>::namespaced(wrk.clone(), watched)
            .get("cookies")
            .await,
    );
    for n in [home, third] {
        forbidden(
            "get a secret elsewhere",
            Api::<Secret>::namespaced(wrk.clone(), n)
                .get("cookies")
                .await,
        );
    }
}

/// The proof that the rules are enough: the real binaries, each authenticated as the
/// chart's service account and started with its Deployment's arguments and environment, elect a
/// leader, assign a task, heartbeat, read the task's cookie Secret and report progress.
#[tokio::test]
async fn the_controller_and_a_worker_run_as_the_charts_service_accounts() {
    let (cp, ns) = namespace_with_crd("chart-run").await;
    let ns = ns.name();
    // The default (all namespaces) install, with a selector only this test's worker Pod matches,
    // so the controller leaves other tests' objects alone.
    let selector = format!("crawler.dev/chart-test={ns}");
    helm_install(
        cp,
        ns,
        "run",
        &[
            "fullnameOverride=run",
            &format!("controller.workerSelector={selector}"),
            &format!("worker.labels.crawler\\.dev/chart-test={ns}"),
            // The test site is on loopback: the chart's allow-list lets the worker crawl it.
            "worker.allowInternalCIDRs={127.0.0.0/8}",
            // The test site is every task's host: host affinity would put the five tasks on one
            // worker, and this test shows the least-loaded split (tests/politeness.rs judges it).
            "controller.hostAffinity=false",
        ],
    )
    .await;
    let admin = cp.client();
    let site = Site::start().await;

    // The kubelet's part: a Ready worker Pod with the labels of the chart's worker template.
    let worker_deployment: Deployment = get(&admin, ns, "run-worker").await;
    let template = worker_deployment.spec.template;
    pods::create_ready_pod_of(&admin, ns, "run-worker-0", &template, "10.1.0.7").await;

    let controller_deployment: Deployment = get(&admin, ns, "run-controller").await;
    let controller = run_as_chart(
        cp,
        ns,
        "run-controller",
        &controller_deployment.spec.template.spec.unwrap().containers[0],
        "run-controller-0",
        None,
    );
    let output = cp.dir().join(format!("{ns}-pages.jsonl"));
    let worker_container = template.spec.as_ref().unwrap().containers[0].clone();
    let worker = run_as_chart(
        cp,
        ns,
        "run-worker",
        &worker_container,
        "run-worker-0",
        Some(&output),
    );
    let logs = || {
        format!(
            "controller:\n{}\nworker:\n{}",
            controller.log_tail(30),
            worker.log_tail(30)
        )
    };

    // Leader election (the chart's Lease name, in the release namespace).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    wait_for(
        "the controller to hold the chart's Lease",
        BOUND,
        POLL,
        || async {
            let holder = leases
                .get_opt("run-leader")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|l| l.spec?.holder_identity);
            if holder.as_deref() == Some("run-controller-0") {
                Ok(())
            } else {
                Err(format!("holder {holder:?}; {}", logs()))
            }
        },
    )
    .await;
    // The worker's heartbeat.
    wait_for("the worker's heartbeat Lease", BOUND, POLL, || async {
        let holder = leases
            .get_opt("crawler-worker-run-worker-0")
            .await
            .map_err(|e| e.to_string())?
            .and_then(|l| l.spec?.holder_identity);
        if holder.as_deref() == Some("run-worker-0") {
            Ok(())
        } else {
            Err(format!("holder {holder:?}; {}", logs()))
        }
    })
    .await;

    // A task with a cookie Secret: assigned by the controller, crawled by the worker (which
    // sends the cookie, so the site proves the Secret was read), progress reported.
    create_secret(&admin, ns, "cookies").await;
    let resources: Api<CrawlerResource> = Api::namespaced(admin.clone(), ns);
    let spec = json!({
        "seeds": [site.seed("task-test-4")],
        // Long enough to be still running when the placements below are checked: a crawl
        // that finished is unassigned (phase Succeeded) and counts on no worker.
        "maxDepth": 10,
        "rateLimit": { "requestsPerSecond": 5, "burst": 1 },
        "cookieSecretRef": { "name": "cookies", "key": "cookie" },
    });
    apply_crawler_resource(&resources, "task-test-4", spec, "chart-test").await;
    // Assigned by the controller, progress written by the worker (under its own field manager).
    // Whether the last report says Completed is the worker's business (tests/worker.rs); here any
    // report of this worker proves it may write status.
    wait_for(
        "the task assigned and its progress reported",
        BOUND,
        POLL,
        || async {
            let r = resources
                .get("task-test-4")
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status.clone().unwrap_or_default();
            let reported = status
                .progress
                .as_ref()
                .is_some_and(|p| p.worker == "run-worker-0");
            // A crawl that already finished is unassigned (phase Succeeded), its worker kept.
            let ran_on = status
                .assigned_worker
                .as_deref()
                .or(status.last_worker.as_deref());
            if ran_on == Some("run-worker-0") && reported {
                Ok(())
            } else {
                Err(format!("status {status:?}; {}", logs()))
            }
        },
    )
    .await;
    // The site saw the page, with the cookie from the Secret.
    wait_for("the site to be crawled", BOUND, POLL, || async {
        if cookies(&site).is_empty() {
            Err(logs())
        } else {
            Ok(())
        }
    })
    .await;
    let sent = cookies(&site);
    assert!(
        !sent.is_empty() && sent.iter().all(|c| c == "session=chart-test"),
        "{sent:?}; {}",
        logs()
    );

    // The original demonstration, under the chart's identities: a second worker joins, four
    // more tasks arrive -> a 3/2 split; the first worker's Pod is deleted -> all five on the other.
    pods::create_ready_pod_of(&admin, ns, "run-worker-1", &template, "10.1.0.8").await;
    let output_1 = cp.dir().join(format!("{ns}-pages-1.jsonl"));
    let worker_1 = run_as_chart(
        cp,
        ns,
        "run-worker",
        &worker_container,
        "run-worker-1",
        Some(&output_1),
    );
    let five = [
        "task-test-4",
        "douban-book-list",
        "task-test-1",
        "task-test-2",
        "xxx",
    ];
    for name in &five[1..] {
        let body = json!({
            "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
            "metadata": { "name": name },
            "spec": {
                "seeds": [site.seed(name)], "maxDepth": 10,
                "rateLimit": { "requestsPerSecond": 5, "burst": 1 },
            },
        });
        resources
            .patch(
                name,
                &PatchParams::apply("chart-test"),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }
    let placement = |want: &'static [(&'static str, usize)]| {
        let resources = resources.clone();
        let logs = &logs;
        async move {
            wait_for(&format!("placement {want:?}"), BOUND, POLL, || async {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for name in five {
                    let r = resources.get(name).await.map_err(|e| e.to_string())?;
                    let worker = r.status.and_then(|s| s.assigned_worker).unwrap_or_default();
                    *counts.entry(worker).or_default() += 1;
                }
                let want: BTreeMap<String, usize> =
                    want.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect();
                if counts == want {
                    Ok(())
                } else {
                    Err(format!("{counts:?}; {}", logs()))
                }
            })
            .await;
        }
    };
    // task-test-4 went to run-worker-0 first, so the least-loaded placements give it 3 of 5.
    placement(&[("run-worker-0", 3), ("run-worker-1", 2)]).await;
    pods::delete_pod(&admin, ns, "run-worker-0").await;
    placement(&[("run-worker-1", 5)]).await;

    // The controller's Events.
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    wait_for("an Assigned Event", BOUND, POLL, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<_> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        if reasons.iter().any(|r| r == "Assigned") {
            Ok(())
        } else {
            Err(format!("{reasons:?}; {}", logs()))
        }
    })
    .await;
    // The probes the chart's Deployments use, and the metrics.
    for (what, process) in [("controller", &controller), ("worker", &worker)] {
        process.wait_for_200(what, "/healthz").await;
        process.wait_for_200(what, "/readyz").await;
        let metrics = process.wait_for_200(what, "/metrics").await;
        assert!(
            metrics.contains("# TYPE crawler_"),
            "{what} /metrics:\n{metrics}"
        );
    }
    // Nothing was refused on the way (the API server's words for an RBAC refusal).
    for (what, process) in [
        ("controller", &controller),
        ("worker", &worker),
        ("worker-1", &worker_1),
    ] {
        let log = process.log();
        assert!(
            !log.contains("is forbidden: User"),
            "a call of the {what} was refused:\n{log}"
        );
    }
    drop((controller, worker, worker_1));
}

/// The monitoring options: the `ServiceMonitor` and `PrometheusRule` are created by a real API
/// server that serves prometheus-operator's CRDs (with strict field validation, so nothing the
/// schema lacks slips through as pruned), the dashboard `ConfigMap` is valid JSON, and every metric
/// name the alerts and the dashboard use is one that `docs/operations.md` lists (which a unit test
/// keeps in step with the code). The install's notes name nothing only a checkout has.
#[tokio::test]
async fn monitoring_objects_are_accepted_and_use_only_documented_metrics() {
    let (cp, ns) = namespace_with_crd("chart-monitoring").await;
    let ns = ns.name();
    // A link to the pinned version's directory, which kubectl would read as a file.
    let link = support::tools::cache_dir().join("prometheus-operator-crds");
    let crds = link.canonicalize().unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run `make chart-tools`",
            link.display()
        )
    });
    apply_server_side(cp, crds.to_str().unwrap()).await;
    for crd in ["servicemonitors", "prometheusrules"] {
        kubectl(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.monitoring.coreos.com"),
            ],
        )
        .await;
    }
    let set = [
        "fullnameOverride=mon",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.dashboard.enabled=true",
    ];
    // Rendered, then created with strict validation (helm install would drop unknown fields).
    let mut template = helm(cp);
    template.args(["template", "mon", CHART, "--namespace", ns, "--skip-crds"]);
    for value in set {
        template.args(["--set", value]);
    }
    let rendered = run(template, "helm template").await;
    let file = cp.dir().join(format!("{ns}-monitoring.yaml"));
    std::fs::write(&file, &rendered).unwrap();
    let created = kubectl(
        cp,
        &[
            "create",
            "--validate=strict",
            "-n",
            ns,
            "-f",
            file.to_str().unwrap(),
        ],
    )
    .await;
    for object in [
        "servicemonitor.monitoring.coreos.com/mon created",
        "prometheusrule.monitoring.coreos.com/mon created",
        "configmap/mon-dashboard created",
    ] {
        assert!(created.contains(object), "{created}");
    }

    // What the API server stored: the alerts and the dashboard.
    let rule: serde_json::Value = serde_json::from_str(
        &kubectl(
            cp,
            &["get", "-n", ns, "prometheusrule", "mon", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    let alerts: BTreeSet<String> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = [
        "CrawlerControllerNoLeader",
        "CrawlerResourcesUnschedulable",
        "CrawlerStatusWriteErrors",
        "CrawlerWorkerHeartbeatLapsing",
        "CrawlerTasksFailing",
        "CrawlerFetchErrorsHigh",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(alerts, expected);
    let dashboard: serde_json::Value = serde_json::from_str(
        &kubectl(
            cp,
            &[
                "get",
                "-n",
                ns,
                "configmap",
                "mon-dashboard",
                "-o",
                "jsonpath={.data.crawler-operator\\.json}",
            ],
        )
        .await,
    )
    .expect("the dashboard ConfigMap holds JSON");
    assert_eq!(dashboard["uid"], "crawler-operator");

    let documented = documented_metrics();
    let used = metric_names(&format!("{rule}\n{dashboard}"));
    assert!(used.len() >= 15, "the alerts and dashboard use {used:?}");
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| documented.contains(*base))
            .unwrap_or(name);
        assert!(
            documented.contains(base),
            "{name} is used by the chart's alerts or dashboard but not listed in docs/operations.md"
        );
    }

    // The notes of an install: nothing that only a repository checkout has.
    let out = helm_install(
        cp,
        ns,
        "notes",
        &["fullnameOverride=notes", "controller.enabled=false"],
    )
    .await;
    let notes = out
        .split("NOTES:")
        .nth(1)
        .expect("the install prints its notes");
    for path in ["examples/", "charts/", "crds/", "hack/", "docs/"] {
        assert!(!notes.contains(path), "the notes refer to {path}:\n{notes}");
    }
}

/// The workers' `NetworkPolicy`, as the API server stored it, read the way a network plugin
/// enforces it: the internet and the cluster's DNS and API server are reachable, the cluster's own
/// ranges (Pods, Services, nodes, cloud metadata) are not; only the metrics port admits
/// connections. Then the values that narrow it (API server and database addresses, metrics
/// sources, ports), the refusal of the postgres sink without a database destination, and the
/// switch that turns it off.
#[tokio::test]
async fn the_workers_network_policy_admits_the_internet_but_not_the_cluster() {
    let (cp, ns) = namespace_with_crd("chart-netpol").await;
    let ns = ns.name();
    helm_install(cp, ns, "np", &["fullnameOverride=np"]).await;
    let admin = cp.client();
    let policy: NetworkPolicy = get(&admin, ns, "np-worker").await;
    let worker: Deployment = get(&admin, ns, "np-worker").await;
    let controller: Deployment = get(&admin, ns, "np-controller").await;
    let spec = policy.spec.clone().unwrap();
    assert!(selects(
        &spec.pod_selector.clone().unwrap(),
        &template_labels(&worker)
    ));
    assert!(!selects(
        &spec.pod_selector.clone().unwrap(),
        &template_labels(&controller)
    ));
    assert_eq!(
        spec.policy_types.clone().unwrap_or_default(),
        ["Ingress", "Egress"]
    );
    let policy = Policy::of(&policy);
    for (address, port) in [
        ("93.184.215.14", 443),
        ("93.184.215.14", 80),
        ("8.8.8.8", 8080),
        ("2606:4700::6810:85e5", 443),
    ] {
        assert!(policy.egress_to(address, port, "TCP"), "{address}:{port}");
    }
    for (address, port, what) in [
        ("10.96.0.1", 80, "a Service address"),
        ("10.244.3.7", 8080, "a Pod address"),
        ("172.20.0.5", 5432, "a private address"),
        ("192.168.1.1", 22, "a private address"),
        ("100.64.0.9", 80, "a CGNAT address (GKE, EKS Pod ranges)"),
        ("169.254.169.254", 80, "the cloud metadata service"),
        ("127.0.0.1", 9090, "loopback"),
        ("fd00:10:96::1", 80, "an IPv6 ULA Service address"),
        ("fe80::1", 80, "IPv6 link-local"),
        ("fd00:ec2::254", 80, "the IPv6 metadata service"),
        ("224.0.0.251", 5353, "multicast"),
    ] {
        assert!(
            !policy.egress_to(address, port, "TCP"),
            "{what}: {address}:{port}"
        );
    }
    // DNS: the cluster's DNS Pods, on UDP and TCP 53; not some other Pod on port 53.
    let kube_system = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        "kube-system".to_owned(),
    )]);
    let coredns = BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())]);
    let other = BTreeMap::from([("app".to_owned(), "other".to_owned())]);
    for protocol in ["UDP", "TCP"] {
        assert!(policy.egress_to_pod(&kube_system, &coredns, "10.244.0.3", 53, protocol));
    }
    assert!(!policy.egress_to_pod(&kube_system, &coredns, "10.244.0.3", 80, "TCP"));
    assert!(!policy.egress_to_pod(&kube_system, &other, "10.244.0.4", 53, "UDP"));
    // The API server, by default on its ports wherever it is (no address given).
    for port in [443, 6443] {
        assert!(
            policy.egress_to("10.0.0.2", port, "TCP"),
            "API server on {port}"
        );
    }
    assert!(!policy.egress_to("10.0.0.2", 80, "TCP"));
    // Ingress: the metrics port only, from anywhere.
    assert!(policy.ingress_from("10.244.9.9", 9090));
    assert!(!policy.ingress_from("10.244.9.9", 8080));

    // Narrowed: the API server's and the database's addresses, metrics from one namespace, the
    // usual web ports only, and a proxy in the cluster.
    helm_install(
        cp,
        ns,
        "np-narrow",
        &[
            "fullnameOverride=np-narrow",
            "controller.enabled=false",
            "worker.sink=postgres",
            "worker.postgres.secretName=crawler-db",
            "worker.networkPolicy.apiServer.cidrs={10.0.0.2/32,fd00::2/128}",
            "worker.networkPolicy.database.to[0].ipBlock.cidr=10.0.5.7/32",
            "worker.networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
            "worker.networkPolicy.internet.ports[0].port=80",
            "worker.networkPolicy.internet.ports[1].port=443",
            "worker.networkPolicy.extraEgress[0].to[0].ipBlock.cidr=10.3.0.8/32",
            "worker.networkPolicy.extraEgress[0].ports[0].port=3128",
        ],
    )
    .await;
    let narrow = Policy::of(&get::<NetworkPolicy>(&admin, ns, "np-narrow-worker").await);
    assert!(narrow.egress_to("10.0.0.2", 6443, "TCP"));
    assert!(narrow.egress_to("fd00::2", 443, "TCP"));
    assert!(!narrow.egress_to("10.0.0.3", 6443, "TCP"), "another node");
    assert!(
        !narrow.egress_to("10.96.0.20", 443, "TCP"),
        "another Service"
    );
    assert!(narrow.egress_to("10.0.5.7", 5432, "TCP"));
    assert!(!narrow.egress_to("10.0.5.8", 5432, "TCP"));
    assert!(!narrow.egress_to("10.0.5.7", 22, "TCP"));
    assert!(narrow.egress_to("93.184.215.14", 443, "TCP"));
    assert!(!narrow.egress_to("93.184.215.14", 8080, "TCP"));
    assert!(narrow.egress_to("10.3.0.8", 3128, "TCP"));
    assert!(!narrow.egress_to("10.3.0.9", 3128, "TCP"));
    let monitoring = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        "monitoring".to_owned(),
    )]);
    assert!(narrow.ingress_from_pod(&monitoring, &other, 9090));
    assert!(!narrow.ingress_from_pod(&kube_system, &other, 9090));
    assert!(
        !narrow.ingress_from("10.244.9.9", 9090),
        "not from an address"
    );

    // The postgres sink needs a database destination while the policy is on: refused at install,
    // saying which value to set.
    let mut template = helm(cp);
    template.args(["template", "np", CHART, "--namespace", ns]);
    for value in [
        "worker.sink=postgres",
        "worker.postgres.secretName=crawler-db",
    ] {
        template.args(["--set", value]);
    }
    let out = template.kill_on_drop(true).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("set worker.networkPolicy.database.to to where the database is"),
        "{stderr}"
    );
    // Off: no NetworkPolicy at all; the internet rule off: no site outside.
    for (value, expect) in [
        ("worker.networkPolicy.enabled=false", false),
        ("worker.networkPolicy.internet.enabled=false", true),
    ] {
        let mut template = helm(cp);
        template.args(["template", "np", CHART, "--namespace", ns, "--set", value]);
        let rendered = run(template, "helm template").await;
        let policies: Vec<NetworkPolicy> = yaml_documents(&rendered)
            .into_iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        assert_eq!(policies.len(), usize::from(expect), "{value}");
        if let Some(policy) = policies.first() {
            let policy = Policy::of(policy);
            assert!(!policy.egress_to("93.184.215.14", 80, "TCP"), "{value}");
            assert!(policy.egress_to("10.0.0.2", 6443, "TCP"), "{value}");
            // Without apiServer.cidrs the API server's ports stay open to any address, outside
            // too (docs/install.md says so).
            assert!(policy.egress_to("93.184.215.14", 443, "TCP"), "{value}");
        }
    }
}

/// A `NetworkPolicy`'s rules, evaluated as the `NetworkPolicy` API defines them: a connection is
/// admitted when some rule admits it, a rule admits it when one of its peers (all when it lists
/// none) and one of its ports (all when it lists none) match; an `ipBlock` matches its CIDR less
/// its `except` ranges; a selector peer matches Pods by labels (its namespace's labels for
/// `namespaceSelector`, the policy's own namespace without one).
struct Policy {
    namespace: String,
    ingress: Vec<(Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>)>,
    egress: Vec<(Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>)>,
}

/// Where a connection goes or comes from.
enum Peer<'a> {
    Address(IpAddr),
    Pod {
        namespace: &'a BTreeMap<String, String>,
        labels: &'a BTreeMap<String, String>,
        ip: Option<IpAddr>,
    },
}

impl Policy {
    fn of(policy: &NetworkPolicy) -> Self {
        let spec = policy.spec.clone().unwrap();
        Self {
            namespace: policy.metadata.namespace.clone().unwrap(),
            ingress: spec
                .ingress
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.from.unwrap_or_default(), r.ports.unwrap_or_default()))
                .collect(),
            egress: spec
                .egress
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.to.unwrap_or_default(), r.ports.unwrap_or_default()))
                .collect(),
        }
    }

    fn egress_to(&self, address: &str, port: u16, protocol: &str) -> bool {
        self.admits(
            &self.egress,
            &Peer::Address(address.parse().unwrap()),
            port,
            protocol,
        )
    }

    fn egress_to_pod(
        &self,
        namespace: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        ip: &str,
        port: u16,
        protocol: &str,
    ) -> bool {
        let pod = Peer::Pod {
            namespace,
            labels,
            ip: Some(ip.parse().unwrap()),
        };
        self.admits(&self.egress, &pod, port, protocol)
    }

    fn ingress_from(&self, address: &str, port: u16) -> bool {
        self.admits(
            &self.ingress,
            &Peer::Address(address.parse().unwrap()),
            port,
            "TCP",
        )
    }

    fn ingress_from_pod(
        &self,
        namespace: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> bool {
        let pod = Peer::Pod {
            namespace,
            labels,
            ip: None,
        };
        self.admits(&self.ingress, &pod, port, "TCP")
    }

    fn admits(
        &self,
        rules: &[(Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>)],
        peer: &Peer<'_>,
        port: u16,
        protocol: &str,
    ) -> bool {
        rules.iter().any(|(peers, ports)| {
            (peers.is_empty() || peers.iter().any(|p| self.peer_matches(p, peer)))
                && (ports.is_empty() || ports.iter().any(|p| port_matches(p, port, protocol)))
        })
    }

    fn peer_matches(&self, rule: &NetworkPolicyPeer, peer: &Peer<'_>) -> bool {
        if let Some(block) = &rule.ip_block {
            let ip = match peer {
                Peer::Address(ip) => Some(*ip),
                Peer::Pod { ip, .. } => *ip,
            };
            return ip.is_some_and(|ip| {
                in_cidr(ip, &block.cidr) && !block.except.iter().flatten().any(|e| in_cidr(ip, e))
            });
        }
        let Peer::Pod {
            namespace, labels, ..
        } = peer
        else {
            return false;
        };
        let namespace_ok = match &rule.namespace_selector {
            Some(selector) => selects(selector, namespace),
            None => namespace.get("kubernetes.io/metadata.name") == Some(&self.namespace),
        };
        namespace_ok
            && rule
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selects(selector, labels))
    }
}

fn port_matches(rule: &NetworkPolicyPort, port: u16, protocol: &str) -> bool {
    rule.protocol.as_deref().unwrap_or("TCP") == protocol
        && match &rule.port {
            None => true,
            Some(IntOrString::Int(first)) => {
                let last = rule.end_port.unwrap_or(*first);
                (*first..=last).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => panic!("named port {name}: not used by the chart"),
        }
}

/// Whether `ip` lies in `cidr` (`10.0.0.0/8`, `fc00::/7`); never across address families.
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (network, bits) = cidr.split_once('/').unwrap();
    let bits: u32 = bits.parse().unwrap();
    let network: IpAddr = network.parse().unwrap();
    let (ip, network, width) = match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            (u128::from(ip.to_bits()), u128::from(network.to_bits()), 32)
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => (ip.to_bits(), network.to_bits(), 128),
        _ => return false,
    };
    let host_bits = width - bits;
    host_bits == 128 || (ip >> host_bits) == (network >> host_bits)
}

/// Whether a label selector of the API selects these labels (the controller's own conversion).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    crawler_operator::controller::index::worker_selector(selector)
        .unwrap()
        .matches(labels)
}

/// The Pod template's labels of a Deployment.
fn template_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap()
}

/// The documents of a multi-document YAML stream (what `helm template` prints), as JSON values.
fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).expect("helm template's output is YAML")
}

/// The metric names docs/operations.md lists in its tables.
fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `crawler_"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect()
}

/// Every `crawler_...` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("crawler_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Not a metric: the dashboard's and the chart's own names.
        if name != "crawler_" {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

// ----------------------------------------------------------------------------------------------
// Helpers

/// Runs `command` to completion and returns its stdout; panics with both streams if it fails.
async fn run(command: tokio::process::Command, what: &str) -> String {
    run_full(command, what).await.0
}

/// Runs `command` to completion and returns (stdout, stderr); panics with both if it fails.
async fn run_full(mut command: tokio::process::Command, what: &str) -> (String, String) {
    let out = command
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn helm_binary() -> PathBuf {
    let path = std::env::var_os("TEST_ASSET_HELM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| support::tools::cache_dir().join("helm"), PathBuf::from);
    assert!(
        path.is_file(),
        "helm not found at {}: run `make chart-tools` (hack/install-tools.sh helm), or point TEST_ASSET_HELM at one",
        path.display()
    );
    path
}

/// `helm` with Helm's own files kept in the control plane's temp dir, pointed at the test API
/// server.
fn helm(cp: &ControlPlane) -> tokio::process::Command {
    let home = cp.dir().join("helm");
    let mut command = tokio::process::Command::new(helm_binary());
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path());
    command
}

/// `helm install <release> charts/crawler-operator -n <ns> --set ...`.
pub(crate) async fn helm_install(
    cp: &ControlPlane,
    ns: &str,
    release: &str,
    set: &[&str],
) -> String {
    let mut command = helm(cp);
    command.args(["install", release, CHART, "--namespace", ns]);
    for value in set {
        command.args(["--set", value]);
    }
    run(command, &format!("helm install {release} -n {ns}")).await
}

pub(crate) async fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(support::tools::binary("kubectl"));
    command
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args);
    run(command, &format!("kubectl {}", args.join(" "))).await
}

/// The chart's CRD, applied as docs/install.md tells users to (idempotent), and served.
/// The suite's control plane, a fresh namespace named after `prefix` and the chart's CRD
/// installed: where a test that installs the chart starts. (No `#[track_caller]` needed:
/// [`support::control_plane`] picks the suite by file, and this is in the suite's file.)
async fn namespace_with_crd(prefix: &str) -> (&'static ControlPlane, support::TestNamespace) {
    let cp = support::control_plane();
    let ns = cp.namespace(prefix).await;
    install_crd(cp).await;
    (cp, ns)
}

/// `kubectl apply --server-side --force-conflicts -f path`: how the tests install CRDs, as
/// `helm` and a user re-applying them after an upgrade would.
async fn apply_server_side(cp: &ControlPlane, path: &str) -> String {
    kubectl(
        cp,
        &["apply", "--server-side", "--force-conflicts", "-f", path],
    )
    .await
}

pub(crate) async fn install_crd(cp: &ControlPlane) {
    for args in support::KUBECTL_INSTALL_CRD {
        kubectl(cp, args).await;
    }
    let api: Api<CrawlerResource> = Api::all(cp.client());
    wait_for("CrawlerResources to be served", BOUND, POLL, || async {
        api.list(&ListParams::default().limit(1)).await.map(|_| ())
    })
    .await;
}

async fn get<K>(client: &Client, ns: &str, name: &str) -> K
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{} {ns}/{name}: {e}", K::kind(&K::DynamicType::default())))
}

fn allowed<T>(what: &str, result: Result<T, kube::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected to be allowed, got {e}"))
}

/// A refused call must be refused by RBAC: 403, not a 404 or 422 that hides a missing rule.
fn forbidden<T: Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// A short watch (1 s server-side timeout), read to its end; an error event counts as a refusal.
async fn watch<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let stream = api.watch(&WatchParams::default().timeout(1), "0").await?;
    futures::pin_mut!(stream);
    while let Some(event) = stream.try_next().await? {
        if let WatchEvent::Error(e) = event {
            return Err(kube::Error::Api(e));
        }
    }
    Ok(())
}

async fn create_resource(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<CrawlerResource, kube::Error> {
    let body: CrawlerResource = serde_json::from_value(json!({
        "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
        "metadata": { "name": name },
        "spec": { "seeds": ["https://books.example.org/tag/"] },
    }))
    .unwrap();
    Api::<CrawlerResource>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &body)
        .await
}

async fn create_secret(client: &Client, ns: &str, name: &str) {
    let body: Secret = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "crawler.dev/cookie": "true" } },
        "stringData": { "cookie": "session=chart-test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &body)
        .await
        .unwrap();
}

async fn create_lease(client: &Client, ns: &str, name: &str) -> Result<Lease, kube::Error> {
    let body: Lease = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "holderIdentity": "someone", "leaseDurationSeconds": 15 },
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &body)
        .await
}

/// An `events.k8s.io/v1` Event about the `CrawlerResource` named `regarding`, as the controller's recorder
/// writes them: created, then patched into a series.
async fn create_event(client: &Client, ns: &str, regarding: &str) -> Result<Event, kube::Error> {
    let body: Event = serde_json::from_value(json!({
        "metadata": { "name": format!("{regarding}.rbac-check") },
        "eventTime": MicroTime(jiff::Timestamp::now()),
        "reportingController": "crawler-operator",
        "reportingInstance": "rbac-check",
        "action": "Schedule",
        "reason": "Assigned",
        "type": "Normal",
        "note": "RBAC check",
        "regarding": { "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource", "name": regarding, "namespace": ns },
    }))
    .unwrap();
    let api = Api::<Event>::namespaced(client.clone(), ns);
    let created = api.create(&PostParams::default(), &body).await?;
    api.patch(
        &created.name_any(),
        &PatchParams::default(),
        // What the recorder patches when the same Event happens again.
        &Patch::Merge(json!({
            "series": { "count": 2, "lastObservedTime": MicroTime(jiff::Timestamp::now()) },
        })),
    )
    .await
}

/// Names of a container's environment variables.
fn env_names(container: &Container) -> BTreeSet<String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

/// Starts the real binary as service account `ns/account` would run it in the chart's Pod: the
/// container's arguments and plain environment, the downward-API variables filled in
/// (`POD_NAME` = `pod`), and a kubeconfig that impersonates the account. Adjusted for running
/// beside other processes on one machine: the metrics address gets a free loopback port, and a
/// worker's `--output` (an emptyDir path in the Pod) becomes `output`.
fn run_as_chart(
    cp: &ControlPlane,
    ns: &str,
    account: &str,
    container: &Container,
    pod: &str,
    output: Option<&Path>,
) -> Running {
    let kubeconfig = cp.dir().join(format!("{ns}-{account}.kubeconfig"));
    let admin = std::fs::read_to_string(cp.kubeconfig_path()).expect("reading the kubeconfig");
    // The admin's certificate may impersonate; the process then acts as the ServiceAccount.
    let impersonating = admin.replacen(
        "  user:\n",
        &format!(
            "  user:\n    as: system:serviceaccount:{ns}:{account}\n    as-groups:\n    - system:serviceaccounts\n    - system:serviceaccounts:{ns}\n    - system:authenticated\n"
        ),
        1,
    );
    assert_ne!(
        admin, impersonating,
        "the kubeconfig has no user entry to extend"
    );
    std::fs::write(&kubeconfig, impersonating).expect("writing the impersonating kubeconfig");

    let binary = env!("CARGO_BIN_EXE_crawler-operator");
    let mut argv = vec![
        format!("KUBECONFIG={}", kubeconfig.display()),
        format!("POD_NAME={pod}"),
        format!("POD_NAMESPACE={ns}"),
    ];
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            argv.push(format!("{}={value}", var.name));
        }
    }
    argv.push(binary.to_owned());
    let chart_args = container.args.as_ref().expect("the container's args");
    assert!(
        chart_args.iter().any(|a| a.starts_with("--metrics-addr=")),
        "the chart runs {account} without --metrics-addr: {chart_args:?}"
    );
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    for arg in chart_args {
        if arg.starts_with("--metrics-addr=") {
            argv.push(format!("--metrics-addr={metrics}"));
        } else if let (Some(output), true) = (output, arg.starts_with("--output=")) {
            argv.push(format!("--output={}", output.display()));
        } else {
            argv.push(arg.clone());
        }
    }
    let log = cp.dir().join(format!("{ns}-{pod}.log"));
    let server = Server::new("crawler-operator", PathBuf::from("/usr/bin/env"), argv, log);
    server.start();
    Running { server, metrics }
}

/// A process started by [`run_as_chart`]; stopped when dropped.
struct Running {
    server: Server,
    /// Where it serves /metrics, /healthz and /readyz.
    metrics: SocketAddr,
}

impl Running {
    fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.server.log).unwrap_or_default()
    }

    /// `GET path` on its metrics port: (status code, body), or why not.
    async fn http_get(&self, path: &str) -> Result<(u16, String), String> {
        support::raw_http::get(&self.metrics.to_string(), path).await
    }

    /// Waits until `GET path` answers 200; returns the body.
    async fn wait_for_200(&self, what: &str, path: &str) -> String {
        wait_for(
            &format!("{what} {path} to answer 200"),
            BOUND,
            POLL,
            || async {
                match self.http_get(path).await? {
                    (200, body) => Ok(body),
                    (code, body) => Err(format!("{code} {body}")),
                }
            },
        )
        .await
    }
}

/// The Cookie header of every request the site saw for task-test-4.
fn cookies(site: &Site) -> Vec<String> {
    site.hits("task-test-4")
        .into_iter()
        .map(|h| h.cookie.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn the_chart_runs_the_worker_with_the_postgres_sink_from_a_secret() {
    let (cp, ns) = namespace_with_crd("chart-pg").await;
    let ns = ns.name();
    let url = support::postgres::shared().database("chart");
    helm_install(
        cp,
        ns,
        "pg",
        &[
            "fullnameOverride=pg",
            "worker.sink=postgres",
            "worker.postgres.secretName=crawler-db",
            "worker.networkPolicy.database.to[0].ipBlock.cidr=127.0.0.1/32",
        ],
    )
    .await;
    let admin = cp.client();
    let deployment: Deployment = get(&admin, ns, "pg-worker").await;
    let pod = deployment.spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    assert!(args.contains(&"--sink=postgres".to_owned()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--output")), "{args:?}");
    // The connection string is only referenced, never inline.
    let var = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "CRAWLER_DATABASE_URL")
        .expect("CRAWLER_DATABASE_URL");
    assert!(var.value.is_none());
    let key = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("a secretKeyRef");
    assert_eq!((key.name.as_str(), key.key.as_str()), ("crawler-db", "url"));
    assert!(
        pod.volumes.unwrap_or_default().is_empty(),
        "no output volume"
    );

    // The chart's arguments run: the worker (with the Secret's value, as the kubelet would pass
    // it) applies the migrations at start, before any task is assigned.
    let mut with_secret = container.clone();
    with_secret.env.get_or_insert_default().push(
        serde_json::from_value(json!({ "name": "CRAWLER_DATABASE_URL", "value": url })).unwrap(),
    );
    let worker = run_as_chart(cp, ns, "pg-worker", &with_secret, "pg-worker-0", None);
    let db = support::postgres::Postgres::db_of(&url).to_owned();
    wait_for("the worker applied the migrations", BOUND, POLL, || async {
        let applied = support::postgres::shared()
            .psql(&db, "SELECT max(version) FROM crawler_schema_migrations");
        match applied {
            Ok(v) if v == latest_migration() => Ok(()),
            other => Err(format!("{other:?}\n{}", worker.log_tail(20))),
        }
    })
    .await;
}

#[tokio::test]
async fn the_chart_mounts_the_database_ca_from_a_secret_and_the_worker_connects_with_verify_full() {
    let (cp, ns) = namespace_with_crd("chart-pgtls").await;
    let ns = ns.name();
    let pg = support::postgres::shared_tls();
    let ca_file = pg.ca_file.as_deref().expect("the TLS server's CA");
    let url = pg.database("chart_tls");
    let admin = cp.client();
    let ca: Secret = serde_json::from_value(json!({
        "metadata": { "name": "crawler-db-ca" },
        "stringData": { "root.pem": std::fs::read_to_string(ca_file).unwrap() },
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
    helm_install(
        cp,
        ns,
        "pgtls",
        &[
            "fullnameOverride=pgtls",
            "worker.sink=postgres",
            "worker.postgres.secretName=crawler-db",
            "worker.postgres.tls.mode=verify-full",
            "worker.postgres.tls.caSecretName=crawler-db-ca",
            "worker.postgres.tls.caSecretKey=root.pem",
            "worker.networkPolicy.database.to[0].ipBlock.cidr=127.0.0.1/32",
        ],
    )
    .await;
    let deployment: Deployment = get(&admin, ns, "pgtls-worker").await;
    let pod = deployment.spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    let ca_arg = "--database-ca-file=/etc/crawler/database-ca/ca.crt";
    for arg in ["--database-sslmode=verify-full", ca_arg] {
        assert!(args.contains(&arg.to_owned()), "{arg} missing: {args:?}");
    }
    // The CA comes from the Secret's key, mounted read-only where the argument points.
    let volumes = pod.volumes.unwrap_or_default();
    let volume = volumes
        .iter()
        .find(|v| v.name == "database-ca")
        .expect("the database-ca volume");
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("crawler-db-ca"));
    let items = secret.items.clone().unwrap_or_default();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect::<Vec<_>>(),
        [("root.pem", "ca.crt")]
    );
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "database-ca")
        .expect("the database-ca mount");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/crawler/database-ca", Some(true))
    );

    // The chart's arguments run, with the mount as the kubelet would fill it: the Secret's key
    // as the file ca.crt.
    let mounted = tempfile::tempdir().unwrap();
    let stored: Secret = get(&admin, ns, "crawler-db-ca").await;
    let pem = stored.data.unwrap()["root.pem"].0.clone();
    std::fs::write(mounted.path().join("ca.crt"), pem).unwrap();
    let mut as_mounted = container.clone();
    for arg in as_mounted.args.iter_mut().flatten() {
        if arg == ca_arg {
            *arg = format!(
                "--database-ca-file={}",
                mounted.path().join("ca.crt").display()
            );
        }
    }
    as_mounted.env.get_or_insert_default().push(
        serde_json::from_value(json!({ "name": "CRAWLER_DATABASE_URL", "value": url })).unwrap(),
    );
    let worker = run_as_chart(cp, ns, "pgtls-worker", &as_mounted, "pgtls-worker-0", None);
    let db = support::postgres::Postgres::db_of(&url).to_owned();
    wait_for(
        "the worker applied the migrations over verify-full",
        BOUND,
        POLL,
        || async {
            match pg.psql(&db, "SELECT max(version) FROM crawler_schema_migrations") {
                Ok(v) if v == latest_migration() => Ok(()),
                other => Err(format!("{other:?}\n{}", worker.log_tail(20))),
            }
        },
    )
    .await;
}

/// The number of the newest schema migration, as `crawler_schema_migrations` stores it once the
/// worker applied them all.
fn latest_migration() -> String {
    crawler_operator::store::MIGRATIONS
        .last()
        .map(|m| m.0.to_string())
        .unwrap_or_default()
}

//! The container image, run for real: the controller and a worker from the image `make image`
//! builds, in podman, against the test control plane, with the chart's security settings and
//! in-cluster configuration (a service-account token and CA mounted where the kubelet mounts them,
//! `KUBERNETES_SERVICE_HOST`/`_PORT`). There is no kubelet here: podman plays the container
//! runtime, the test plays the kubelet's Pod status (docs/development.md says why).
//!
//! Ignored by a plain `cargo test`: it needs the image. `make container-test` builds it
//! (`crawler-operator:test`, dev profile) and runs this with `CRAWLER_IMAGE` set.

#![allow(clippy::too_many_lines)] // a scenario reads best top to bottom

use crate::support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crawler_operator::crd::CrawlerResource;
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec},
    coordination::v1::Lease,
    core::v1::{Container, ServiceAccount},
    networking::v1::NetworkPolicy,
};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::{ControlPlane, pods, site::Site, story::apply_crawler_resource, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BOUND: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// Every container this test starts carries it, so a leftover of a killed run can be removed.
const LABEL: &str = "dev.crawler.test=container";
/// Where the kubelet mounts a Pod's service-account token, CA and namespace.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the container image: run `make container-test`"]
async fn the_image_runs_the_charts_controller_and_worker_in_podman() {
    let started = Instant::now();
    let image = std::env::var("CRAWLER_IMAGE")
        .expect("CRAWLER_IMAGE names the image to test (make container-test sets it)");
    podman(&["rm", "--force", "--filter", &format!("label={LABEL}")]);
    check_image_config(&image);

    let cp = support::control_plane();
    let ns = cp.namespace("container").await;
    let ns = ns.name();
    install_crd(cp);
    let selector = format!("crawler.dev/container-test={ns}");
    helm_install(
        cp,
        ns,
        &[
            "fullnameOverride=ctr",
            &format!("controller.workerSelector={selector}"),
            &format!("worker.labels.crawler\\.dev/container-test={ns}"),
            // The test site is on the host's loopback (seeded as localhost): the chart's
            // allow-list lets the worker crawl it.
            "worker.allowInternalCIDRs={127.0.0.0/8,::1/128}",
        ],
    );
    let admin = cp.client();
    let site = Site::start().await;

    // The kubelet's part: a Ready worker Pod with the labels of the chart's template.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let worker_template = deployments.get("ctr-worker").await.unwrap().spec.template;
    pods::create_ready_pod_of(&admin, ns, "ctr-worker-0", &worker_template, "127.0.0.1").await;
    // The install includes the workers' NetworkPolicy, selecting the Pod this test plays. Nothing
    // enforces it here (no network plugin; the containers share the host's network).
    let policy = Api::<NetworkPolicy>::namespaced(admin.clone(), ns)
        .get("ctr-worker")
        .await
        .expect("the chart's worker NetworkPolicy");
    let selector = policy.spec.unwrap().pod_selector.unwrap_or_default();
    let labels = worker_template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        crawler_operator::controller::index::worker_selector(&selector)
            .unwrap()
            .matches(&labels),
        "the NetworkPolicy selects the worker Pod: {selector:?} {labels:?}"
    );
    let worker_pod = worker_template.spec.unwrap();
    let controller_pod = deployments
        .get("ctr-controller")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();

    // The controller with its probes on an address of their own (--probe-addr).
    let controller_metrics = free_port();
    let controller_probes = free_port();
    let controller = Pod::start(
        cp,
        &image,
        ns,
        PodSpec {
            name: "ctr-controller-0",
            service_account: controller_pod.service_account_name.as_deref().unwrap(),
            container: &controller_pod.containers[0],
            metrics_port: controller_metrics,
            probe_port: Some(controller_probes),
            data: None,
        },
    )
    .await;
    let data = tempfile::Builder::new()
        .prefix("crawler-container-data-")
        .tempdir()
        .unwrap();
    // The emptyDir the chart mounts at /data: writable by the Pod's fsGroup, 65532.
    chown_65532(data.path());
    let worker_metrics = free_port();
    let worker = Pod::start(
        cp,
        &image,
        ns,
        PodSpec {
            name: "ctr-worker-0",
            service_account: worker_pod.service_account_name.as_deref().unwrap(),
            container: &worker_pod.containers[0],
            metrics_port: worker_metrics,
            probe_port: None,
            data: Some(data.path()),
        },
    )
    .await;
    let logs = || {
        format!(
            "controller:\n{}\nworker:\n{}",
            controller.logs(),
            worker.logs()
        )
    };

    // Leader election and heartbeat, through the in-cluster configuration.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let holder = |name: &'static str| {
        let leases = leases.clone();
        async move {
            leases
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())
                .map(|l| l.and_then(|l| l.spec?.holder_identity))
        }
    };
    wait_for("the controller to lead", BOUND, POLL, || async {
        match holder("ctr-leader").await? {
            Some(h) if h == "ctr-controller-0" => Ok(()),
            other => Err(format!("holder {other:?}\n{}", logs())),
        }
    })
    .await;
    wait_for("the worker's heartbeat", BOUND, POLL, || async {
        match holder("crawler-worker-ctr-worker-0").await? {
            Some(h) if h == "ctr-worker-0" => Ok(()),
            other => Err(format!("holder {other:?}\n{}", logs())),
        }
    })
    .await;

    // A task: assigned by the controller, crawled by the worker (from inside its container, via
    // the host network), its progress reported and its pages written to the output volume.
    // The seed names its host, so the static binary resolves a name in an image that has no
    // libc files (here through /etc/hosts, which the runtime mounts as a kubelet does).
    let seed = site.seed("task-test-4").replace("127.0.0.1", "localhost");
    let resources: Api<CrawlerResource> = Api::namespaced(admin.clone(), ns);
    let spec = json!({
        "seeds": [seed],
        "maxDepth": 1,
        "rateLimit": { "requestsPerSecond": 100, "burst": 10 },
    });
    apply_crawler_resource(&resources, "task-test-4", spec, "container-test").await;
    wait_for(
        "the task assigned, crawled and reported",
        BOUND,
        POLL,
        || async {
            let status = resources
                .get("task-test-4")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let done = status
                .progress
                .as_ref()
                .is_some_and(|p| p.worker == "ctr-worker-0" && p.pages_fetched > 0);
            // Placed there, or (a finished crawl is unassigned) finished there.
            let placed = status.assigned_worker.as_deref() == Some("ctr-worker-0")
                || status.last_worker.as_deref() == Some("ctr-worker-0");
            if placed && done {
                Ok(())
            } else {
                Err(format!("status {status:?}\n{}", logs()))
            }
        },
    )
    .await;
    assert!(!site.hits("task-test-4").is_empty(), "{}", logs());
    let pages = std::fs::read_to_string(data.path().join("pages.jsonl")).unwrap_or_default();
    let first: serde_json::Value = serde_json::from_str(pages.lines().next().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("the worker's output is not JSON lines ({e}): {pages:?}"));
    assert!(
        first.to_string().contains("task-test-4"),
        "a page record of task-test-4 in the output volume: {first}"
    );

    // The probes the chart's Deployments use, answered from inside the containers.
    assert_probes_ok(controller_probes).await;
    assert_eq!(
        http_get(controller_probes, "/metrics").await.0,
        404,
        "metrics only on the metrics port"
    );
    assert_metrics_contain(controller_metrics, "crawler_controller_leader 1").await;
    assert_eq!(
        http_get(controller_metrics, "/healthz").await.0,
        404,
        "probes only on the probe port"
    );
    assert_probes_ok(worker_metrics).await;
    assert_metrics_contain(worker_metrics, "crawler_worker_pages_fetched_total").await;

    // SIGTERM, as the kubelet sends it: the controller releases its Lease and exits 0; so does
    // the worker with its heartbeat.
    for (pod, lease) in [
        (&controller, "ctr-leader"),
        (&worker, "crawler-worker-ctr-worker-0"),
    ] {
        let sent = Instant::now();
        podman(&["kill", "--signal", "TERM", &pod.container]);
        let code = pod.wait_for_exit(Duration::from_secs(30));
        assert_eq!(
            code,
            0,
            "{} exit code after SIGTERM\n{}",
            pod.name,
            pod.logs()
        );
        let released = holder(lease).await.unwrap();
        assert_eq!(
            released,
            None,
            "{} released {lease}\n{}",
            pod.name,
            pod.logs()
        );
        println!(
            "{}: exited 0 and released {lease} {:?} after SIGTERM",
            pod.name,
            sent.elapsed()
        );
    }
    for pod in [&controller, &worker] {
        let log = pod.logs();
        assert!(
            !log.contains("is forbidden"),
            "a call of {} was refused:\n{log}",
            pod.name
        );
    }
    println!("container test took {:?}", started.elapsed());
}

/// The image as `make image` promises it: non-root numeric user, OCI labels, the entry point,
/// no shell.
fn check_image_config(image: &str) {
    let config: serde_json::Value = serde_json::from_slice(
        &podman(&["image", "inspect", "--format", "{{json .Config}}", image]).stdout,
    )
    .unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        json!(["/usr/local/bin/crawler-operator"]),
        "{config}"
    );
    let labels = &config["Labels"];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        labels["org.opencontainers.image.version"], version,
        "{config}"
    );
    for label in ["revision", "source"] {
        let value = labels[format!("org.opencontainers.image.{label}")]
            .as_str()
            .unwrap_or_default();
        assert!(
            !value.is_empty() && value != "unknown",
            "label {label}: {config}"
        );
    }
    let run = podman_output(&["run", "--rm", "--network", "host", image, "--version"]);
    assert!(run.status.success(), "--version in the image: {run:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        format!("crawler-operator {version}")
    );
    let shell = podman_output(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "true",
    ]);
    assert!(!shell.status.success(), "the image has no shell: {shell:?}");
}

struct PodSpec<'a> {
    name: &'a str,
    service_account: &'a str,
    container: &'a Container,
    metrics_port: u16,
    probe_port: Option<u16>,
    /// A host directory for the worker's output volume (the chart's emptyDir).
    data: Option<&'a Path>,
}

/// A chart container running in podman; removed when dropped.
struct Pod {
    name: String,
    container: String,
    _secrets: tempfile::TempDir,
}

impl Pod {
    /// Runs `spec.container` as the kubelet would run it from the chart's Pod template: its args
    /// and environment, the downward-API variables, the service-account token and CA mounted at
    /// their place, the container security context turned into podman flags. On this machine it
    /// shares the host's network (docs/development.md), so its ports are moved to free ones.
    async fn start(cp: &ControlPlane, image: &str, ns: &str, spec: PodSpec<'_>) -> Self {
        let secrets = service_account_volume(cp, ns, spec.service_account).await;
        let container = format!("crawler-test-{ns}-{}", spec.name);
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            container.clone(),
            "--label".into(),
            LABEL.into(),
            "--network".into(),
            "host".into(),
        ];
        args.extend(security_flags(spec.container));
        args.extend([
            "--volume".into(),
            format!("{}:{SA_MOUNT}:ro", secrets.path().display()),
            "--env".into(),
            "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
            "--env".into(),
            format!("KUBERNETES_SERVICE_PORT={}", cp.apiserver_addr().port()),
            "--env".into(),
            format!("POD_NAME={}", spec.name),
            "--env".into(),
            format!("POD_NAMESPACE={ns}"),
        ]);
        for var in spec.container.env.iter().flatten() {
            let field = var
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            if let Some(value) = &var.value {
                args.extend(["--env".into(), format!("{}={value}", var.name)]);
            } else if field == Some("metadata.uid") {
                // The UID of the Pod object this container plays, when the test created one.
                let uid = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cp.client(), ns)
                    .get_opt(spec.name)
                    .await
                    .expect("reading the Pod")
                    .and_then(|pod| pod.metadata.uid)
                    .unwrap_or_default();
                args.extend(["--env".into(), format!("{}={uid}", var.name)]);
            } else {
                assert!(
                    matches!(field, Some("metadata.name" | "metadata.namespace")),
                    "{}: env {} comes from {:?}, which this test does not fill in",
                    spec.name,
                    var.name,
                    var.value_from
                );
            }
        }
        if let Some(data) = spec.data {
            let mount = spec
                .container
                .volume_mounts
                .as_ref()
                .expect("the output volume")[0]
                .mount_path
                .clone();
            args.extend(["--volume".into(), format!("{}:{mount}", data.display())]);
        }
        args.push(image.to_owned());
        let chart_args = spec.container.args.as_ref().expect("the container's args");
        assert!(
            chart_args.iter().any(|a| a.starts_with("--metrics-addr=")),
            "{chart_args:?}"
        );
        for arg in chart_args {
            if arg.starts_with("--metrics-addr=") {
                args.push(format!("--metrics-addr=127.0.0.1:{}", spec.metrics_port));
            } else {
                args.push(arg.clone());
            }
        }
        if let Some(port) = spec.probe_port {
            args.push(format!("--probe-addr=127.0.0.1:{port}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman(&args);
        Pod {
            name: spec.name.to_owned(),
            container,
            _secrets: secrets,
        }
    }

    fn logs(&self) -> String {
        let out = podman_output(&["logs", "--tail", "40", &self.container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The container's exit code, once it has exited (panics after `bound`).
    fn wait_for_exit(&self, bound: Duration) -> i64 {
        let deadline = Instant::now() + bound;
        loop {
            let out = podman(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.container,
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if let Some(code) = state.strip_prefix("exited ") {
                return code.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{} still {state} after {bound:?}\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman_output(&["rm", "--force", "--time", "0", &self.container]);
    }
}

/// The container security context of the chart as podman flags. Each setting the chart makes
/// is asserted, so that a chart change that this test does not carry over fails here.
fn security_flags(container: &Container) -> Vec<String> {
    let sc = container
        .security_context
        .as_ref()
        .expect("the chart sets a securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.privileged, Some(false));
    let drop = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(drop, vec!["ALL".to_owned()]);
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.add.clone()), None);
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    vec![
        // The kubelet mounts no tmpfs on a read-only root: neither does this.
        "--read-only".into(),
        "--read-only-tmpfs=false".into(),
        // The Pod's runAsUser/runAsGroup (podSecurityContext); also the image's USER.
        "--user".into(),
        "65532:65532".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--security-opt".into(),
        "no-new-privileges".into(),
        // RuntimeDefault: the runtime's default seccomp profile, which podman applies unless told
        // otherwise.
    ]
}

/// What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: a bound token of
/// the service account (a `TokenRequest`), the cluster CA and the namespace.
async fn service_account_volume(cp: &ControlPlane, ns: &str, account: &str) -> tempfile::TempDir {
    let accounts: Api<ServiceAccount> = Api::namespaced(cp.client(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![
                "https://kubernetes.default.svc.cluster.local".to_owned(),
            ]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {ns}/{account}: {e}"))
        .status
        .expect("the token request's status")
        .token
        .expect("a token");
    let dir = tempfile::Builder::new()
        .prefix("crawler-container-sa-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();
    std::fs::copy(cp.dir().join("ca.crt"), dir.path().join("ca.crt")).unwrap();
    std::fs::write(dir.path().join("namespace"), ns).unwrap();
    make_world_readable(dir.path());
    dir
}

fn make_world_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn chown_65532(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(65532), Some(65532)).expect("chown of the output volume");
}

/// `hack/image.sh podman ARGS...` (podman with this machine's settings); panics if it fails.
fn podman(args: &[&str]) -> Output {
    let out = podman_output(args);
    assert!(
        out.status.success(),
        "podman {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn podman_output(args: &[&str]) -> Output {
    Command::new(PathBuf::from(ROOT).join("hack/image.sh"))
        .arg("podman")
        .args(args)
        .output()
        .expect("running hack/image.sh podman")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` on 127.0.0.1:port, retried until it answers: (status, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let addr = format!("127.0.0.1:{port}");
    wait_for(&format!("GET {addr}{path}"), BOUND, POLL, || {
        support::raw_http::get(&addr, path)
    })
    .await
}

/// `/healthz` and `/readyz` on `port` both answer 200 `ok`, as the chart's probes expect.
async fn assert_probes_ok(port: u16) {
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_get(port, path).await, (200, "ok".to_owned()), "{path}");
    }
}

/// `/metrics` on `port` answers 200 with a body containing `expected`.
async fn assert_metrics_contain(port: u16, expected: &str) {
    let (code, body) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains(expected), "{body}");
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(support::tools::binary("kubectl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install_crd(cp: &ControlPlane) {
    for args in support::KUBECTL_INSTALL_CRD {
        kubectl(cp, args);
    }
}

/// `helm install ctr charts/crawler-operator -n <ns> --set ...` (the chart's service accounts,
/// RBAC and Deployments; nothing runs them but this test).
fn helm_install(cp: &ControlPlane, ns: &str, set: &[&str]) {
    let helm = std::env::var_os("TEST_ASSET_HELM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| support::tools::cache_dir().join("helm"), PathBuf::from);
    let home = cp.dir().join("helm");
    let mut command = Command::new(&helm);
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args([
            "install",
            "ctr",
            &format!("{ROOT}/charts/crawler-operator"),
            "--namespace",
            ns,
            "--skip-crds",
        ]);
    for value in set {
        command.args(["--set", value]);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Story-style helpers for tests that run the operator's own binaries against the test control
//! plane: `Story::new("prefix")` gives a namespace with the CRD installed, and methods that read
//! like the user's story (`ready_worker`, `apply_resource`, `assert_assigned`, ...).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use crawler_operator::crd::{CrawlerResource, Phase};
use k8s_openapi::{
    api::{coordination::v1::Lease, events::v1::Event},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, CustomResourceExt, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::{
    ControlPlane, TestNamespace,
    api_proxy::ApiProxy,
    pods::{create_worker_pod, set_pod_ready},
    process::Server,
    proxy::Proxy,
    site::{Site, endless},
    wait_for,
};

pub const WORKER_LABEL: (&str, &str) = ("app.kubernetes.io/component", "crawler-worker");
pub const LEASE: &str = "crawler-operator-leader";
/// Short election timings so failover tests take seconds.
/// Worker heartbeat in tests: workers stop after 1 s without renewal, expire after 2 s.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// When a harness worker's view of its assignments stops being known fresh (its watch cycle,
/// derived from [`HEARTBEAT`], is 2 s: 5 s).
pub fn stale_after() -> Duration {
    crawler_operator::heartbeat::watch_cycle(HEARTBEAT).stale_after()
}

/// How long the controller holds a successor of an object deleted on a harness worker (6 s).
pub fn successor_hold() -> Duration {
    crawler_operator::heartbeat::successor_hold(HEARTBEAT)
}
pub const LEASE_DURATION: Duration = Duration::from_secs(3);
pub const BOUND: Duration = Duration::from_secs(30);

/// The controller's leader-election flags: lease duration, renew deadline, retry period.
#[derive(Clone, Copy, Debug)]
pub struct Election {
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

/// What the tests use unless told otherwise (3 s / 2 s / 0.5 s).
pub const ELECTION: Election = Election {
    lease: LEASE_DURATION,
    renew: Duration::from_secs(2),
    retry: Duration::from_millis(500),
};
pub const POLL: Duration = Duration::from_millis(50);
/// What the story's workers may crawl besides public addresses (`--allow-internal-cidrs`): the
/// test sites, on loopback. A test of the guard starts a worker with an empty list instead.
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

/// One test's world: a namespace, a client, and helpers that read like the user's story.
pub struct Story {
    pub cp: &'static ControlPlane,
    pub ns: TestNamespace,
    pub client: Client,
    pub controllers: Vec<Server>,
    /// The `--identity` of each of `controllers`, in the same order.
    pub controller_ids: Vec<String>,
    pub workers: Vec<Server>,
    /// The election flags controllers are started with.
    pub election: Election,
    /// The kubeconfig controllers are started with (default: the admin's), e.g. one with a
    /// token of the chart's controller `ServiceAccount`.
    pub controller_kubeconfig: Option<PathBuf>,
}

impl Story {
    /// A story on the control plane of the caller's suite (not `async fn`: `#[track_caller]`
    /// must see the caller, see [`super::control_plane`]).
    #[track_caller]
    pub fn new(prefix: &str) -> impl Future<Output = Self> + '_ {
        Self::on(super::control_plane(), prefix)
    }

    /// A story on a control plane of its own (e.g. one shard of a soak), not the suite's.
    pub async fn on(cp: &'static ControlPlane, prefix: &str) -> Self {
        install_crd(&cp.client()).await;
        let ns = cp.namespace(prefix).await;
        Self {
            cp,
            client: cp.client(),
            ns,
            controllers: Vec::new(),
            controller_ids: Vec::new(),
            workers: Vec::new(),
            election: ELECTION,
            controller_kubeconfig: None,
        }
    }

    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    pub fn api(&self) -> Api<CrawlerResource> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// Applies a `CrawlerResource` named `bad` with `spec` (server-side, as `kubectl apply` does)
    /// and returns the API server's message; panics unless it was refused as invalid (422).
    pub async fn refused_spec(&self, spec: &serde_json::Value) -> String {
        let raw = json!({
            "apiVersion": CrawlerResource::api_version(&()),
            "kind": CrawlerResource::kind(&()),
            "metadata": { "name": "bad" },
            "spec": spec,
        });
        let params = PatchParams::apply("kubectl-test");
        match self.api().patch("bad", &params, &Patch::Apply(&raw)).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{spec}: {status:?}");
                status.message
            }
            other => panic!("{spec} was accepted: {other:?}"),
        }
    }

    /// Starts a controller process (the real binary) named `identity`; returns its index.
    pub fn start_controller(&mut self, identity: &str) -> usize {
        self.start_controller_via(identity, None)
    }

    /// A kubeconfig that reaches the API server through `proxy` (or the plain one).
    fn kubeconfig_for(&self, who: &str, proxy: Option<&Proxy>) -> PathBuf {
        self.kubeconfig_from(self.cp.kubeconfig_path(), who, proxy)
    }

    /// `base`, or a copy of it that reaches the API server through `proxy`.
    fn kubeconfig_from(&self, base: &std::path::Path, who: &str, proxy: Option<&Proxy>) -> PathBuf {
        self.kubeconfig_at(base, who, proxy.map(Proxy::addr))
    }

    /// `base`, or a copy of it that reaches the API server at `via` (a proxy's address).
    fn kubeconfig_at(&self, base: &std::path::Path, who: &str, via: Option<SocketAddr>) -> PathBuf {
        match via {
            None => base.to_path_buf(),
            Some(addr) => {
                let text = std::fs::read_to_string(base).expect("reading the kubeconfig");
                let via = text.replace(&self.cp.server_url(), &format!("https://{addr}"));
                let path = self
                    .cp
                    .dir()
                    .join(format!("{}-{who}-via-proxy.kubeconfig", self.ns()));
                std::fs::write(&path, via).expect("writing the proxied kubeconfig");
                path
            }
        }
    }

    /// Starts a controller process named `identity`, through `proxy` if given (so a test can cut
    /// or freeze its connections); returns its index.
    pub fn start_controller_via(&mut self, identity: &str, proxy: Option<&Proxy>) -> usize {
        self.start_controller_with(identity, proxy, &[])
    }

    /// [`Story::start_controller_via`] with extra flags, e.g. `--rebalance`.
    pub fn start_controller_with(
        &mut self,
        identity: &str,
        proxy: Option<&Proxy>,
        extra: &[&str],
    ) -> usize {
        self.start_controller_at(identity, proxy.map(Proxy::addr), extra)
    }

    /// [`Story::start_controller_with`] behind an [`ApiProxy`], so a test can slow, hold or
    /// stall the controller's requests one by one.
    pub fn start_controller_behind(
        &mut self,
        identity: &str,
        proxy: &ApiProxy,
        extra: &[&str],
    ) -> usize {
        self.start_controller_at(identity, Some(proxy.addr()), extra)
    }

    fn start_controller_at(
        &mut self,
        identity: &str,
        via: Option<SocketAddr>,
        extra: &[&str],
    ) -> usize {
        let log = self.cp.dir().join(format!("{}-{identity}.log", self.ns()));
        let args = [
            format!(
                "KUBECONFIG={}",
                self.kubeconfig_at(
                    self.controller_kubeconfig
                        .as_deref()
                        .unwrap_or(self.cp.kubeconfig_path()),
                    identity,
                    via
                )
                .display()
            ),
            "RUST_LOG=info,crawler_operator=debug".to_owned(),
            env!("CARGO_BIN_EXE_crawler-operator").to_owned(),
            "controller".to_owned(),
            format!("--namespace={}", self.ns()),
            format!("--lease-namespace={}", self.ns()),
            format!("--identity={identity}"),
            format!("--lease-duration={}ms", self.election.lease.as_millis()),
            format!("--renew-deadline={}ms", self.election.renew.as_millis()),
            format!("--retry-period={}ms", self.election.retry.as_millis()),
            "--metrics-addr=127.0.0.1:0".to_owned(),
            // The test site is one host for every task (as the workers' per-host budget is
            // lifted, see `start_worker_process`): host affinity would put every task on one
            // worker. tests/politeness.rs turns it on.
            "--host-affinity=false".to_owned(),
            // The harness's workers renew 2 s heartbeats (a few tests 10 s): 20 s keeps the
            // controller's wait for a Pod whose Lease it never saw at 10 s, as it was before the
            // default grew to 50 s.
            "--worker-heartbeat-duration=20s".to_owned(),
        ];
        // A flag in `extra` replaces the default of the same name (clap refuses repeats).
        let name = |a: &str| a.split('=').next().unwrap_or_default().to_owned();
        let mut args: Vec<String> = args
            .into_iter()
            .filter(|a| !extra.iter().any(|e| name(e) == name(a)))
            .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let server = Server::new("controller", PathBuf::from("/usr/bin/env"), args, log);
        server.start();
        self.controllers.push(server);
        self.controller_ids.push(identity.to_owned());
        self.controllers.len() - 1
    }

    /// Starts the worker process playing Pod `pod` (the real binary), writing page records to
    /// `<cp dir>/<ns>-<pod>.jsonl`; through `proxy` if given, so a test can cut it off.
    pub fn start_worker(&mut self, pod: &str, proxy: Option<&Proxy>) -> usize {
        self.start_worker_process(pod, proxy, None, &[])
    }

    /// [`Story::start_worker`], with the Pod's UID as the downward API would give it.
    pub fn start_worker_as(
        &mut self,
        pod: &str,
        proxy: Option<&Proxy>,
        uid: Option<&str>,
    ) -> usize {
        self.start_worker_process(pod, proxy, uid, &[])
    }

    /// [`Story::start_worker`] with extra flags (replacing defaults of the same name), e.g. the
    /// `postgres` sink's.
    pub fn start_worker_with(
        &mut self,
        pod: &str,
        proxy: Option<&Proxy>,
        extra: &[String],
    ) -> usize {
        self.start_worker_process(pod, proxy, None, extra)
    }

    /// [`Story::start_worker_with`] behind an [`ApiProxy`], so a test can slow, hold or stall
    /// the worker's requests one by one.
    pub fn start_worker_behind(&mut self, pod: &str, proxy: &ApiProxy, extra: &[String]) -> usize {
        let kubeconfig = self.kubeconfig_at(self.cp.kubeconfig_path(), pod, Some(proxy.addr()));
        self.start_worker_process_with(pod, &kubeconfig, None, extra)
    }

    fn start_worker_process(
        &mut self,
        pod: &str,
        proxy: Option<&Proxy>,
        uid: Option<&str>,
        extra: &[String],
    ) -> usize {
        let kubeconfig = self.kubeconfig_for(pod, proxy);
        self.start_worker_process_with(pod, &kubeconfig, uid, extra)
    }

    fn start_worker_process_with(
        &mut self,
        pod: &str,
        kubeconfig: &std::path::Path,
        uid: Option<&str>,
        extra: &[String],
    ) -> usize {
        let log = self.cp.dir().join(format!("{}-{pod}.log", self.ns()));
        let args = [
            format!("POD_UID={}", uid.unwrap_or_default()),
            format!("KUBECONFIG={}", kubeconfig.display()),
            "RUST_LOG=info,crawler_operator=debug".to_owned(),
            env!("CARGO_BIN_EXE_crawler-operator").to_owned(),
            "worker".to_owned(),
            format!("--pod-name={pod}"),
            format!("--namespace={}", self.ns()),
            format!("--output={}", self.output_of(pod).display()),
            format!("--heartbeat-duration={}ms", HEARTBEAT.as_millis()),
            "--progress-interval=300ms".to_owned(),
            "--metrics-addr=127.0.0.1:0".to_owned(),
            // The test sites are on loopback, which a worker refuses to crawl unless allowed.
            format!("--allow-internal-cidrs={LOOPBACK}"),
            // The test site is one host for every task of a worker: its per-host budget is
            // lifted, so a task's own rateLimit sets its pace (the engine tests judge the budget).
            "--host-requests-per-second=1000".to_owned(),
            "--host-max-in-flight=64".to_owned(),
        ];
        // A flag in `extra` replaces the default of the same name (clap refuses repeats).
        let name = |a: &str| a.split('=').next().unwrap_or_default().to_owned();
        let mut args: Vec<String> = args
            .into_iter()
            .filter(|a| !extra.iter().any(|e| name(e) == name(a)))
            .collect();
        args.extend_from_slice(extra);
        let server = Server::new("worker", PathBuf::from("/usr/bin/env"), args, log);
        server.start();
        self.workers.push(server);
        self.workers.len() - 1
    }

    /// GET `path` from the metrics/health server of `process` (found in its log); returns the
    /// status code and body.
    pub async fn http_get(process: &Server, path: &str) -> (u16, String) {
        let addr = wait_for("the metrics address in the log", BOUND, POLL, || async {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned)
                .ok_or("not logged yet")
        })
        .await;
        super::raw_http::get(&addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
    }

    /// Waits until `name`'s `status.progress` satisfies `ready`; returns it.
    pub async fn wait_for_progress(
        &self,
        name: &str,
        what: &str,
        ready: impl Fn(&crawler_operator::crd::TaskProgress) -> bool,
    ) -> crawler_operator::crd::TaskProgress {
        let api = self.api();
        let ready = &ready;
        wait_for(&format!("{name}: {what}"), BOUND, POLL, || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                match r.status.and_then(|s| s.progress) {
                    Some(p) if ready(&p) => Ok(p),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// Waits until resource `name` satisfies `done` (e.g. reached a phase); returns it.
    pub async fn wait_for_resource(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&CrawlerResource) -> bool,
    ) -> CrawlerResource {
        let api = self.api();
        let done = &done;
        wait_for(&format!("{name}: {what}"), BOUND, POLL, || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                if done(&r) {
                    Ok(r)
                } else {
                    Err(format!("{:?}", r.status))
                }
            }
        })
        .await
    }

    /// Where worker `pod`'s page records go.
    pub fn output_of(&self, pod: &str) -> PathBuf {
        self.cp.dir().join(format!("{}-{pod}.jsonl", self.ns()))
    }

    pub async fn ready_worker(&self, name: &str) {
        self.worker(name, &[]).await;
    }

    pub async fn worker(&self, name: &str, extra_labels: &[(&str, &str)]) {
        let mut labels = vec![WORKER_LABEL];
        labels.extend_from_slice(extra_labels);
        create_worker_pod(&self.client, self.ns(), name, &labels).await;
        set_pod_ready(&self.client, self.ns(), name, true, Some(&worker_ip(name))).await;
    }

    /// Pod `name` turns not ready (its address kept), as a kubelet reports a failing probe; its
    /// process, if one was started, lives on: the move off it is a handoff, not a takeover.
    pub async fn unready_worker(&self, name: &str) {
        set_pod_ready(&self.client, self.ns(), name, false, Some(&worker_ip(name))).await;
    }

    /// `task`, an endless crawl of `site`, applied and seen placed on and crawled by worker-1
    /// (three requests), so a test that moves it knows where it was running.
    pub async fn crawl_on_worker_1(&self, site: &Site, task: &str) {
        self.apply_resource(task, endless(site, task)).await;
        self.assert_assigned(task, "worker-1").await;
        site.wait_for_hits(task, "worker-1", None, 3).await;
    }

    /// Pod `worker-2` ready and its process started (directly): somewhere for a task to move
    /// to once the test takes worker-1 away. Returns worker-2's index in [`Story::workers`].
    pub async fn start_worker_2(&mut self) -> usize {
        self.ready_worker("worker-2").await;
        self.start_worker("worker-2", None)
    }

    /// Creates Secret `name` with one key, as a user would for `cookieSecretRef`: labelled
    /// `crawler.dev/cookie=true`, the mark workers require of a cookie Secret.
    pub async fn create_secret(&self, name: &str, key: &str, value: &str) {
        let cookie = json!({ (crawler_operator::worker::COOKIE_LABEL): crawler_operator::worker::COOKIE_LABEL_VALUE });
        self.create_secret_labelled(name, key, value, cookie).await;
    }

    /// Creates Secret `name` with one key and these labels (a JSON object).
    pub async fn create_secret_labelled(
        &self,
        name: &str,
        key: &str,
        value: &str,
        labels: serde_json::Value,
    ) {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "stringData": { key: value },
        }))
        .expect("a Secret");
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), self.ns())
            .create(&kube::api::PostParams::default(), &secret)
            .await
            .unwrap_or_else(|e| panic!("creating Secret {name}: {e}"));
    }

    pub async fn apply_resource(&self, name: &str, spec: serde_json::Value) {
        apply_crawler_resource(&self.api(), name, spec, "kubectl-test").await;
    }

    /// Sets `spec.suspend` of `name` (a merge patch, as `kubectl patch` sends), the user's way to
    /// pause a crawl and resume it.
    pub async fn set_suspend(&self, name: &str, suspend: bool) {
        self.api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "suspend": suspend } })),
            )
            .await
            .unwrap_or_else(|e| panic!("setting spec.suspend={suspend} on {name}: {e}"));
    }

    pub async fn apply_simple(&self, name: &str) {
        self.apply_resource(name, json!({ "seeds": ["https://books.example.org/tag/"] }))
            .await;
    }

    /// Waits until every named resource is assigned; returns name -> worker.
    pub async fn assert_all_assigned(&self, names: &[&str]) -> BTreeMap<String, String> {
        let api = self.api();
        wait_for("all resources assigned", BOUND, POLL, || {
            let api = api.clone();
            async move {
                let mut placed = BTreeMap::new();
                for name in names {
                    let r = api.get(name).await.map_err(|e| e.to_string())?;
                    match assigned_worker(&r) {
                        Some(w) => placed.insert((*name).to_owned(), w),
                        None => return Err(format!("{name} is not assigned: {:?}", r.status)),
                    };
                }
                Ok::<_, String>(placed)
            }
        })
        .await
    }

    pub async fn assert_assigned(&self, name: &str, worker: &str) {
        let api = self.api();
        wait_for(&format!("{name} assigned to {worker}"), BOUND, POLL, || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                match assigned_worker(&r) {
                    Some(w) if w == worker => Ok(r),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    /// Waits until `kubectl explain PATH` says `expected`: the API server publishes a new CRD's
    /// `OpenAPI` a moment after it is established, and kubectl wraps descriptions, so whitespace is
    /// collapsed before comparing.
    pub async fn wait_for_explain(&self, path: &str, expected: &str) {
        let cp = self.cp;
        wait_for(
            &format!("kubectl explain {path}"),
            BOUND,
            POLL,
            || async move {
                let out = cp
                    .kubectl()
                    .args(["explain", path])
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if words.contains(expected) {
                    Ok(())
                } else {
                    Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
                }
            },
        )
        .await;
    }

    pub async fn resource_versions(&self) -> BTreeMap<String, String> {
        self.api()
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.name_any(), r.resource_version().unwrap()))
            .collect()
    }

    pub async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.client.clone(), self.ns())
            .get_opt(LEASE)
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    }

    pub async fn wait_for_leader(&self, identity: &str) {
        wait_for(
            &format!("{identity} to hold the Lease"),
            BOUND,
            POLL,
            || async {
                match self.lease_holder().await {
                    Some(h) if h == identity => Ok(()),
                    other => Err(format!("holder {other:?}")),
                }
            },
        )
        .await;
    }

    pub async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), self.ns())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// (identity, log file) of every controller started, for [`super::invariants::LeaseTimeline::judge_logs`].
    pub fn controller_logs(&self) -> Vec<(String, PathBuf)> {
        self.controller_ids
            .iter()
            .cloned()
            .zip(self.controllers.iter().map(|c| c.log.clone()))
            .collect()
    }

    pub fn logs(&self) -> String {
        self.controllers
            .iter()
            .chain(&self.workers)
            .map(|c| format!("--- {}:\n{}", c.log.display(), c.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Applies `CrawlerResource` `name` with `spec` server-side as field manager `manager`, as
/// `kubectl apply` does: for tests without a [`Story`] (the chart's and the container's).
pub async fn apply_crawler_resource(
    api: &Api<CrawlerResource>,
    name: &str,
    spec: serde_json::Value,
    manager: &str,
) {
    let body = json!({
        "apiVersion": "crawler.dev/v1alpha1",
        "kind": "CrawlerResource",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(name, &PatchParams::apply(manager), &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// The opening most single-worker scenarios share: the test site, and a story named `prefix` in
/// which Pod `worker-1` is ready and `controller-a` and the `worker-1` process run (worker-1 is
/// `story.workers[0]`). Not `async fn`: `#[track_caller]` must see the caller's suite.
#[track_caller]
pub fn worker_1_running(prefix: &str) -> impl Future<Output = (Site, Story)> + '_ {
    let story = Story::new(prefix);
    async move {
        let site = Site::start().await;
        let mut story = story.await;
        start_worker_1(&mut story, None).await;
        (site, story)
    }
}

/// [`worker_1_running`] with worker-1 reaching the API server through a [`Proxy`], so the test
/// can cut or freeze its connections.
#[track_caller]
pub fn worker_1_running_via_proxy(prefix: &str) -> impl Future<Output = (Site, Story, Proxy)> + '_ {
    let story = Story::new(prefix);
    async move {
        let site = Site::start().await;
        let mut story = story.await;
        let proxy = Proxy::start(story.cp.apiserver_addr());
        start_worker_1(&mut story, Some(&proxy)).await;
        (site, story, proxy)
    }
}

/// Where every handoff test starts: [`worker_1_running`], `task` (an endless crawl of the site)
/// crawled by worker-1 ([`Story::crawl_on_worker_1`]), and worker-2 started beside it
/// ([`Story::start_worker_2`], `story.workers[1]`), so the task can move once the test takes
/// worker-1 away.
#[track_caller]
pub fn handoff_stage<'a>(
    prefix: &'a str,
    task: &'a str,
) -> impl Future<Output = (Site, Story)> + 'a {
    let opening = worker_1_running(prefix);
    // Boxed: the stage's future is large (clippy::large_futures), and every test awaits it.
    Box::pin(async move {
        let (site, mut story) = opening.await;
        story.crawl_on_worker_1(&site, task).await;
        story.start_worker_2().await;
        (site, story)
    })
}

/// [`handoff_stage`] with worker-1 reaching the API server through a [`Proxy`], so the test can
/// cut or freeze its connections.
#[track_caller]
pub fn handoff_stage_via_proxy<'a>(
    prefix: &'a str,
    task: &'a str,
) -> impl Future<Output = (Site, Story, Proxy)> + 'a {
    let opening = worker_1_running_via_proxy(prefix);
    // Boxed: the stage's future is large (clippy::large_futures), and every test awaits it.
    Box::pin(async move {
        let (site, mut story, proxy) = opening.await;
        story.crawl_on_worker_1(&site, task).await;
        story.start_worker_2().await;
        (site, story, proxy)
    })
}

/// Pod `worker-1` ready, then `controller-a` and the `worker-1` process started.
async fn start_worker_1(story: &mut Story, proxy: Option<&Proxy>) {
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.start_worker("worker-1", proxy);
}

/// The IP [`Story::worker`] gives Pod `name`: derived from the name, so that Pods of one story
/// differ and a test can name the address it expects.
pub fn worker_ip(name: &str) -> String {
    format!(
        "10.1.0.{}",
        name.bytes().map(u32::from).sum::<u32>() % 250 + 1
    )
}

pub fn phase(r: &CrawlerResource) -> Option<Phase> {
    r.status.as_ref()?.phase
}

pub fn assigned_worker(r: &CrawlerResource) -> Option<String> {
    r.status.as_ref()?.assigned_worker.clone()
}

pub fn count_by_worker(placed: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for w in placed.values() {
        *counts.entry(w.clone()).or_default() += 1;
    }
    counts
}

/// Installs the CRD generated from the Rust types (idempotent) and waits until it is served.
pub async fn install_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = CrawlerResource::crd();
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("crawler-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("installing the CRD");
    wait_for("the CRD to be established", BOUND, POLL, || async {
        let crd = api.get(&crd.name_any()).await.map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            Ok(())
        } else {
            Err("not established".to_owned())
        }
    })
    .await;
    // Established can precede the resource being served by a moment.
    let resources: Api<CrawlerResource> = Api::all(client.clone());
    wait_for("CrawlerResources to be served", BOUND, POLL, || async {
        resources
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
    })
    .await;
}

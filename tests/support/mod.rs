//! Integration-test harness: real etcd + kube-apiserver processes, no mocks.
//!
//! ```ignore
//! use crate::support; // in a file of tests/ (a module of tests/it.rs)
//!
//! #[tokio::test]
//! async fn it_works() {
//!     let cp = support::control_plane(); // started on first use, shared by the suite's tests
//!     let ns = cp.namespace("it-works").await; // fresh namespace, deleted (best effort) on drop
//!     let client = cp.client(); // a new client per call: each #[tokio::test] has its own runtime
//!     support::pods::create_worker_pod(&client, ns.name(), "worker-0", &[("app", "crawler")]).await;
//! }
//! ```
//!
//! The integration-test binary (tests/it.rs) and the benchmark (tests/bench) compile this module;
//! the benchmark uses only part of it.
#![allow(dead_code)]

pub mod api_proxy;
pub mod certs;
pub mod invariants;
pub mod judge;
pub mod pods;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod site;
pub mod story;
pub mod tools;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, Config};

use self::process::Server;
use self::proxy::Proxy;

/// How long the API server may take to report `/readyz` (about 3 s on an idle 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The control plane of the calling test's suite (its file in `tests/`), started on first use.
///
/// The suites listed in [`OWN_CONTROL_PLANE`] each have one of their own, as they had when every
/// file was a test binary of its own; all other suites share one, each test in a namespace of its
/// own. The caller's file decides (`#[track_caller]`), so a helper that calls this must be
/// `#[track_caller]` too (as [`story::Story::new`] is).
///
/// It is never dropped (statics are not); its processes and temp dir go away when the test
/// binary exits, however it exits (see [`process`]). If starting fails, every later caller
/// panics at once with the first failure instead of trying again.
#[track_caller]
pub fn control_plane() -> &'static ControlPlane {
    type Slot = OnceLock<Result<ControlPlane, String>>;
    static SUITES: Mutex<BTreeMap<&'static str, &'static Slot>> = Mutex::new(BTreeMap::new());
    let file = std::panic::Location::caller().file();
    let own = OWN_CONTROL_PLANE
        .iter()
        .find(|(suite, _)| Path::new(file).file_name() == Some(suite.as_ref()));
    let key = own.map_or(SHARED, |(suite, _)| *suite);
    // The map is locked only to find the slot: suites start their control planes side by side.
    let slot: &'static Slot = SUITES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| Box::leak(Box::default()));
    let started = slot.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let mut cp = ControlPlane::builder().start();
            cp.shared = own.is_none();
            cp
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        })
    });
    match started {
        Ok(cp) => cp,
        Err(first) => {
            panic!("the control plane of {key} failed to start earlier in this binary: {first}")
        }
    }
}

/// The chart's copy of the CRD: what docs/install.md tells users to apply.
pub const CHART_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/crawler-operator/crds/crawlerresources.crawler.dev.yaml"
);

/// `kubectl` arguments that apply the chart's CRD as users do (server-side, idempotent), then
/// wait until it is Established: the tests that install the chart run both, in this order.
pub const KUBECTL_INSTALL_CRD: [&[&str]; 2] = [
    &[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        CHART_CRD,
    ],
    &[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/crawlerresources.crawler.dev",
    ],
];

/// The suites (file names in `tests/`) that get a control plane of their own from
/// [`control_plane`], and why they may not share one.
pub const OWN_CONTROL_PLANE: &[(&str, &str)] = &[
    ("leader.rs", "pauses its API server"),
    ("reliability.rs", "restarts its API server and etcd"),
    ("chart.rs", "runs the chart's controller on all namespaces"),
    ("container.rs", "runs the image's controller everywhere"),
    ("heartbeat.rs", "runs a garbage collector on all namespaces"),
    (
        "admission.rs",
        "installs the chart's cluster-wide admission policy",
    ),
    (
        "fence.rs",
        "installs the chart's cluster-wide admission policies",
    ),
];

/// The key of the control plane the other suites share.
const SHARED: &str = "the suites that share a control plane";

/// Options for a control plane. [`control_plane`] uses the defaults; a test or benchmark that
/// needs its own (fsync on, extra flags, something to break) starts one with this and drops
/// it when done.
#[derive(Default)]
#[must_use]
pub struct ControlPlaneBuilder {
    fsync: bool,
    apiserver_args: Vec<String>,
}

impl ControlPlaneBuilder {
    /// Let etcd fsync (off by default: tests gain speed, lose nothing). On for benchmarks.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// An extra kube-apiserver flag, e.g. `--max-requests-inflight=800`. A later flag wins.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Starts etcd and kube-apiserver and waits for `/readyz`. Blocks (up to a minute), so it
    /// runs the wait on a thread of its own; callable from inside a tokio runtime.
    pub fn start(self) -> ControlPlane {
        let started = Instant::now();
        let etcd_bin = tools::binary("etcd");
        let apiserver_bin = tools::binary("kube-apiserver");
        let dir = tempfile::Builder::new()
            .prefix("crawler-cp-")
            .tempdir()
            .expect("creating the control plane's temp dir")
            .keep();
        // CRAWLER_TEST_KEEP_DIR=1 keeps the temp dir (logs, etcd data) for a post-mortem.
        let dir_guardian = std::env::var_os("CRAWLER_TEST_KEEP_DIR")
            .is_none()
            .then(|| process::reap_dir_on_exit(&dir));
        let certs = certs::generate(&dir);
        let [etcd_port, peer_port, apiserver_port] = free_ports();
        let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();

        let mut etcd_args = vec![
            "--name=test".to_owned(),
            format!("--data-dir={}", path(&dir.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"),
            "--log-level=warn".to_owned(),
        ];
        if !self.fsync {
            etcd_args.push("--unsafe-no-fsync".to_owned());
        }
        let etcd = Server::new("etcd", etcd_bin, etcd_args, dir.join("etcd.log"));

        let mut apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={apiserver_port}"),
            format!("--tls-cert-file={}", path(&certs.serving_cert)),
            format!("--tls-private-key-file={}", path(&certs.serving_key)),
            format!("--client-ca-file={}", path(&certs.ca_cert)),
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", path(&certs.sa_pub)),
            format!("--service-account-signing-key-file={}", path(&certs.sa_key)),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // Otherwise it refuses to advertise a loopback address.
            "--endpoint-reconciler-type=none".to_owned(),
            // No controller-manager creates the `default` ServiceAccount that this plugin demands.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
        ];
        apiserver_args.extend(self.apiserver_args);
        let apiserver = Server::new(
            "kube-apiserver",
            apiserver_bin,
            apiserver_args,
            dir.join("kube-apiserver.log"),
        );

        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig_yaml = kubeconfig(&server_url, &certs);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, &kubeconfig_yaml).expect("writing the kubeconfig");
        let mut config = Config::new(server_url.parse().expect("server URL"));
        config.root_cert = Some(vec![certs.ca_der.clone()]);
        config.auth_info = Kubeconfig::from_yaml(&kubeconfig_yaml)
            .expect("parsing our own kubeconfig")
            .auth_infos[0]
            .auth_info
            .clone()
            .expect("the admin user");
        // Bounded calls: a paused or cut-off API server must not hang a test forever. The read
        // timeout also applies to watch streams: one that sees nothing for 30 s ends with a
        // `TimedOut` body error (checked); kube's watcher then re-watches, a raw `Api::watch` ends.
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        config.write_timeout = Some(Duration::from_secs(10));
        config.reset_reader_on_write = true;

        let cp = ControlPlane {
            etcd,
            apiserver,
            etcd_port,
            apiserver_port,
            config,
            kubeconfig,
            startup_time: Duration::ZERO,
            dir,
            shared: false,
            _dir_guardian: dir_guardian,
        };
        cp.etcd.start();
        cp.wait_for_etcd();
        cp.apiserver.start();
        block_on(cp.wait_for_apiserver());
        let startup_time = started.elapsed();
        eprintln!(
            "control plane ready in {startup_time:.1?}: {} (logs and kubeconfig in {})",
            cp.server_url(),
            cp.dir.display()
        );
        ControlPlane { startup_time, ..cp }
    }
}

/// etcd + kube-apiserver on loopback, with certificates and RBAC. See [`control_plane`].
pub struct ControlPlane {
    etcd: Server,
    apiserver: Server,
    etcd_port: u16,
    apiserver_port: u16,
    /// The admin's (`system:masters`) connection settings; every client is built from a copy.
    config: Config,
    kubeconfig: PathBuf,
    startup_time: Duration,
    dir: PathBuf,
    /// Whether several suites use it ([`control_plane`]): then no test may pause or stop it.
    shared: bool,
    /// Removes `dir` when dropped or when the process ends.
    _dir_guardian: Option<Child>,
}

impl ControlPlane {
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// A copy of the admin config (cluster URL, CA, client certificate; timeouts: connect 5 s,
    /// write 10 s, read 30 s, which idle watches hit too) to adjust or to hand to the code under
    /// test.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A new admin client. Must be called inside the tokio runtime that will use it: a
    /// `kube::Client` is bound to the runtime it was created in, and each `#[tokio::test]` has
    /// its own.
    pub fn client(&self) -> Client {
        client(self.config())
    }

    /// A client that impersonates `user` in `groups` (with the admin's certificate, which may).
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        client(config)
    }

    /// A client that acts as `ServiceAccount` `ns/name` would (which need not exist): user
    /// `system:serviceaccount:<ns>:<name>` in the groups such a token carries.
    pub fn client_for_service_account(&self, ns: &str, name: &str) -> Client {
        self.client_as(
            &format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
            ],
        )
    }

    /// The admin config, pointed at `proxy` (the serving certificate covers 127.0.0.1).
    pub fn config_via(&self, proxy: &Proxy) -> Config {
        let mut config = self.config();
        config.cluster_url = format!("https://{}", proxy.addr())
            .parse()
            .expect("proxy URL");
        config
    }

    pub fn client_via(&self, proxy: &Proxy) -> Client {
        client(self.config_via(proxy))
    }

    /// A kubeconfig for the admin, with everything embedded: for kubectl, helm, and
    /// `kube::Config::from_custom_kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl --kubeconfig <ours>`, ready for more arguments.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(tools::binary("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// `https://127.0.0.1:<port>`
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// Where the API server listens, e.g. for [`Proxy::start`].
    pub fn apiserver_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.apiserver_port))
    }

    /// The temp dir with the certificates, the kubeconfig, etcd's data and both logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// From `start` to `/readyz`.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Creates a namespace named `<prefix>-<n>-<random>` (a valid DNS label) and deletes it,
    /// best effort, when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
                .expect("a valid Namespace literal");
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name} on {}: {e}", self.server_url()));
        TestNamespace {
            name,
            config: self.config(),
        }
    }

    /// SIGSTOP: the API server keeps its sockets but answers nothing (requests hang until the
    /// client's timeouts), like a stalled process. This and the stop/restart calls below hit
    /// every test sharing the control plane: a fault test should start its own with
    /// [`ControlPlane::builder`] (about 3 s) rather than pause [`control_plane`].
    pub fn pause_apiserver(&self) {
        self.refuse_fault_if_shared("pause_apiserver");
        self.apiserver.signal("STOP");
    }

    pub fn resume_apiserver(&self) {
        self.apiserver.signal("CONT");
    }

    pub fn pause_etcd(&self) {
        self.refuse_fault_if_shared("pause_etcd");
        self.etcd.signal("STOP");
    }

    pub fn resume_etcd(&self) {
        self.etcd.signal("CONT");
    }

    /// Kills the API server (SIGKILL, like a crash). Clients get connection refused.
    pub async fn stop_apiserver(&self) {
        self.refuse_fault_if_shared("stop_apiserver");
        self.apiserver.stop().await;
    }

    /// Starts the API server again, same port and flags, and waits for `/readyz`.
    pub async fn start_apiserver(&self) {
        self.apiserver.start();
        self.wait_for_apiserver().await;
    }

    pub async fn restart_apiserver(&self) {
        self.stop_apiserver().await;
        self.start_apiserver().await;
    }

    /// Kills etcd (SIGKILL; its data survives). The API server stays up and fails storage
    /// calls until etcd is back.
    pub async fn stop_etcd(&self) {
        self.refuse_fault_if_shared("stop_etcd");
        self.etcd.stop().await;
    }

    /// Starts etcd again on the same data and waits until the API server is ready again.
    pub async fn start_etcd(&self) {
        self.etcd.start();
        self.wait_for_etcd();
        self.wait_for_apiserver().await;
    }

    pub async fn restart_etcd(&self) {
        self.stop_etcd().await;
        self.start_etcd().await;
    }

    /// A fault on the control plane several suites share would hit their tests too.
    fn refuse_fault_if_shared(&self, what: &str) {
        assert!(
            !self.shared,
            "{what} on the control plane other suites share: add this test's file to \
             support::OWN_CONTROL_PLANE, or start a private one with ControlPlane::builder()"
        );
    }

    /// Both log files, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}, {}",
            self.apiserver.log.display(),
            self.etcd.log.display()
        )
    }

    /// Blocks until etcd accepts connections; it takes well under a second.
    fn wait_for_etcd(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.etcd_port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let why = if self.etcd.is_alive() {
                "does not accept connections after 20 s"
            } else {
                "exited"
            };
            assert!(
                self.etcd.is_alive() && Instant::now() < deadline,
                "etcd on {addr} {why}; log {}:\n{}",
                self.etcd.log.display(),
                self.etcd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/readyz` until it says `ok`; panics with the API server's log tail on timeout or
    /// if the process exits.
    async fn wait_for_apiserver(&self) {
        let mut config = self.config();
        config.read_timeout = Some(Duration::from_secs(5));
        let client = client(config);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a GET request");
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            let why = if !self.apiserver.is_alive() {
                "exited"
            } else if Instant::now() > deadline {
                "is not ready after 60 s"
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            panic!(
                "kube-apiserver on {} {why}; last /readyz answer: {last}\nlog {} (etcd: {}), last lines:\n{}",
                self.server_url(),
                self.apiserver.log.display(),
                self.etcd.log.display(),
                self.apiserver.log_tail(40)
            );
        }
    }
}

/// A namespace for one test; dropping it deletes the namespace, best effort. With no namespace
/// controller it stays `Terminating` (its objects remain): fine, names are never reused.
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    /// Drop cannot await, and the test's runtime may be shutting down: delete from a thread
    /// with a runtime of its own, and don't wait for it.
    fn drop(&mut self) {
        let (name, config) = (std::mem::take(&mut self.name), self.config.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    let api = Api::<Namespace>::all(client(config));
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                });
            }
        });
    }
}

/// Polls `condition` every `poll_interval` until it returns `Ok`, and panics after `timeout`
/// with `what` and the last `Err` (which should describe what was seen instead). For
/// conditions a watch cannot express; prefer a watch where one can.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(poll_interval).await,
        }
    }
}

fn client(config: Config) -> Client {
    Client::try_from(config).expect("building a kube client (inside a tokio runtime?)")
}

/// Runs a future to completion on a fresh thread with its own runtime, so that blocking
/// callers work inside or outside a tokio runtime alike.
fn block_on<F: Future<Output = ()> + Send>(future: F) {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime")
                .block_on(future);
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Distinct free loopback ports for servers this harness starts (all bound at once, so they
/// differ), chosen below the kernel's ephemeral range: a port from that range (what binding
/// port 0 gives) could be taken as the source port of any outgoing connection before our
/// server binds it, and the test processes open hundreds (a CI run lost a control plane that
/// way: "bind: address already in use"). Another process could still bind one of these first;
/// the server then fails to start, loudly.
fn free_ports<const N: usize>() -> [u16; N] {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000_u16, ephemeral_start.max(10_000 + 4 * 1024));
    for _ in 0..1000 {
        let ports: Vec<u16> = (0..N)
            .map(|_| {
                let random = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                low + u16::try_from(random % u64::from(high - low)).unwrap_or(0)
            })
            .collect();
        let listeners: Option<Vec<TcpListener>> = ports
            .iter()
            .map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if let Some(listeners) = listeners {
            return std::array::from_fn(|i| {
                listeners[i].local_addr().expect("local address").port()
            });
        }
    }
    panic!("no {N} free loopback ports between {low} and {high} in 1,000 tries");
}

/// `<prefix>-<n>-<8 random hex>`, lower-cased, invalid characters replaced, <= 63 characters.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let cleaned: String = prefix
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let prefix = match cleaned.trim_matches('-') {
        "" => "test",
        trimmed => trimmed,
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one(n) & 0xffff_ffff;
    format!("{prefix}-{n}-{random:08x}")
}

/// An admin kubeconfig with the CA and client pair embedded.
fn kubeconfig(server_url: &str, certs: &certs::Certs) -> String {
    let ca = BASE64.encode(&certs.ca_pem);
    let cert = BASE64.encode(&certs.admin_cert_pem);
    let key = BASE64.encode(&certs.admin_key_pem);
    let user = certs::ADMIN_USER;
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: crawler-test
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: crawler-test
  context:
    cluster: crawler-test
    user: {user}
    namespace: default
current-context: crawler-test
"
    )
}

//! Benchmarks of the controller (issue 7) against a real etcd (fsync on) + kube-apiserver on this
//! machine. Not a test: `#[ignore]`d, so `cargo test` only compiles it. Run with `make bench`,
//! which writes the tables into `BENCHMARKS.md`.
//!
//! ```text
//! 7a micro          placement alone: our policies vs the original algorithm, Index::plan
//! 7c extract        extraction rules: cost per page against parsing, and in a loopback crawl
//! 7d rebalance      one rebalance round (Index::rebalance) with moves to make, and balanced
//!  1 ceiling        raw status writes (SSA like the controller's, and merge-patch) at 1/16/64
//!  2 bulk           N resources, 100 ready workers, then the controller starts and places them
//!  3 orphans        a worker Pod deleted / turning NotReady -> its resources reassigned
//!  5 cold start     a fresh leader over N well-placed resources (time to ready, writes)
//!  4 failover       SIGTERM / SIGKILL of the leader with a warm standby, mid-flight
//!  6 footprint      RSS / CPU of the controller at N (and at BENCH_LARGE)
//! 6c worker         RSS / CPU of one worker as its running tasks grow (BENCH_WORKER_TASKS)
//! 7b kube-scheduler the same number of Pods on 100 Nodes, same API server, same run
//!  8 fleet          N real worker processes idle, then busy: what they cost the API server
//!                   (its apiserver_request_total), failover of a worker at the default timings
//! ```
//!
//! Sizes and scenario selection come from the environment (see [`Config::from_env`]); develop
//! with `BENCH_RESOURCES=500`.
#![allow(
    clippy::cast_precision_loss,     // counts and durations shown as f64 rates
    clippy::cast_possible_truncation, // sizes far below u32::MAX
    clippy::cast_sign_loss,
    clippy::too_many_lines,          // a scenario reads best top to bottom
    clippy::similar_names
)]

mod kube_scheduler;
mod micro;
mod observe;
mod procs;
mod report;
mod scenarios;
mod stats;
#[path = "../support/mod.rs"]
mod support;
mod worker;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crawler_operator::{controller::FIELD_MANAGER, crd::CrawlerResource};
use jiff::Timestamp;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;

use observe::{Leases, Observer, PodChange, Pods, Resources};
use procs::{Controller, CpuSnapshot, CpuSpent, Election, ServerPids, Usage};
use report::{Report, table};
use scenarios::{
    bulk::{BulkAs, Fleet, no_events_identity, scenario_bulk},
    ceiling::{Ceiling, scenario_ceiling},
    cold_start::scenario_cold_start,
    failover::scenario_failover,
    footprint::{footprint_section, scenario_large},
    micro_scenario::{scenario_micro, scenario_rebalance},
    orphans::scenario_orphans,
};
use stats::{Samples, ms, per_sec, secs};
use support::{ControlPlane, TestNamespace, pods};

const WORKER_LABEL: (&str, &str) = ("app.kubernetes.io/component", "crawler-worker");
const LEASE: &str = "crawler-operator-leader";

/// What to run, and how big. Every knob is an environment variable.
#[derive(Clone, Debug)]
pub struct Config {
    /// `BENCH_RESOURCES` (10000): resources in the bulk, orphan, failover and cold-start scenarios.
    pub resources: usize,
    /// `BENCH_WORKERS` (100): ready worker Pods (and kube-scheduler Nodes).
    pub workers: usize,
    /// `BENCH_CONCURRENCY` (32, the controller's default): the controller's `--concurrency` and
    /// the ceiling's main concurrency.
    pub concurrency: usize,
    /// `BENCH_LARGE` (10 x resources; 0 = skip): resources for the large footprint run.
    pub large: usize,
    /// `BENCH_SCHEDULER_PODS` (= resources): Pods for kube-scheduler, unthrottled client.
    pub scheduler_pods: usize,
    /// `BENCH_SCHEDULER_DEFAULT_QPS_PODS` (1000): Pods for kube-scheduler with its default QPS 50.
    pub scheduler_default_qps_pods: usize,
    /// `BENCH_ORPHAN_TRIALS` (3): worker deletions, and as many `NotReady` flips.
    pub orphan_trials: usize,
    /// `BENCH_FAILOVER` ("5,3,5,3"): SIGTERM and SIGKILL trials with the default election
    /// timings, then with the tests' fast timings.
    pub failover: [usize; 4],
    /// `BENCH_MICRO_REPS` (15): repetitions of each micro-benchmark (median reported).
    pub micro_reps: usize,
    /// `BENCH_WORKER_TASKS` ("10,100,300"): running-task counts at which the worker footprint is
    /// measured.
    pub worker_tasks: Vec<usize>,
    /// `BENCH_SCENARIOS` (all): comma-separated subset of
    /// micro,extract,ceiling,bulk,orphans,coldstart,failover,bulk-noevents,bulk-fence,large,kube-scheduler,
    /// worker,fleet.
    pub scenarios: Option<HashSet<String>>,
    /// The fleet scenario's knobs (`BENCH_FLEET_*`).
    pub fleet: scenarios::fleet::FleetConfig,
    /// `BENCH_FSYNC` (1): etcd fsync on.
    pub fsync: bool,
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v}: not a number"))
    })
}

impl Config {
    fn from_env() -> Self {
        let resources = env_usize("BENCH_RESOURCES", 10_000);
        let failover = std::env::var("BENCH_FAILOVER").unwrap_or_else(|_| "5,3,5,3".to_owned());
        let failover: Vec<usize> = failover
            .split(',')
            .map(|v| v.trim().parse().expect("BENCH_FAILOVER: four numbers"))
            .collect();
        Self {
            resources,
            workers: env_usize("BENCH_WORKERS", 100),
            concurrency: env_usize("BENCH_CONCURRENCY", 32),
            large: env_usize("BENCH_LARGE", 10 * resources),
            scheduler_pods: env_usize("BENCH_SCHEDULER_PODS", resources),
            scheduler_default_qps_pods: env_usize("BENCH_SCHEDULER_DEFAULT_QPS_PODS", 1000),
            orphan_trials: env_usize("BENCH_ORPHAN_TRIALS", 3),
            failover: failover.try_into().expect("BENCH_FAILOVER: four numbers"),
            micro_reps: env_usize("BENCH_MICRO_REPS", 15),
            worker_tasks: std::env::var("BENCH_WORKER_TASKS")
                .unwrap_or_else(|_| "10,100,300".to_owned())
                .split(',')
                .map(|v| v.trim().parse().expect("BENCH_WORKER_TASKS: numbers"))
                .collect(),
            scenarios: std::env::var("BENCH_SCENARIOS")
                .ok()
                .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect()),
            fsync: std::env::var("BENCH_FSYNC").map_or(true, |v| v != "0"),
            fleet: scenarios::fleet::FleetConfig::from_env(),
        }
    }

    fn enabled(&self, scenario: &str) -> bool {
        self.scenarios.as_ref().is_none_or(|s| s.contains(scenario))
    }
}

/// The spec of benchmark resource `i`: a realistic one (seeds, depth, rate limit, weight 1), on
/// a site of its own (with host affinity, the default, tasks sharing a site would all go to one
/// worker: that is not what these scenarios measure).
pub fn resource_spec(i: usize) -> serde_json::Value {
    json!({
        "task": format!("books_{i}"),
        "seeds": [format!("https://books-{i}.example.org/tag/{i}")],
        "maxDepth": 2,
        "rateLimit": { "requestsPerSecond": 1, "burst": 1 },
        "weight": 1,
    })
}

fn resource_body(name: &str, i: usize) -> CrawlerResource {
    serde_json::from_value(json!({
        "apiVersion": "crawler.dev/v1alpha1",
        "kind": "CrawlerResource",
        "metadata": { "name": name },
        "spec": resource_spec(i),
    }))
    .expect("a valid CrawlerResource")
}

/// The status the controller writes for a first placement (same fields and sizes).
fn assigned_status(worker: usize, load: usize, assignments: usize) -> serde_json::Value {
    let now = Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now());
    let w = format!("worker-{worker:03}");
    json!({
        "phase": "Assigned",
        "assignedWorker": w,
        "assignedAddress": format!("10.1.{}.{}:8080", worker / 250, worker % 250 + 1),
        "assignedAt": now,
        "assignments": assignments,
        "observedGeneration": 1,
        "conditions": [{
            "type": "Assigned",
            "status": "True",
            "reason": "Assigned",
            "message": format!("placed on worker {w} by LeastLoaded: load {load} -> {} of unbounded", load + 1),
            "lastTransitionTime": now,
            "observedGeneration": 1,
        }],
    })
}

/// Runs `f(0..items)` on `concurrency` tasks; returns each call's latency.
async fn pool<F, Fut>(items: usize, concurrency: usize, f: F) -> Samples
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (f, next) = (Arc::clone(&f), Arc::clone(&next));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    return latencies;
                }
                let started = Instant::now();
                f(i).await;
                latencies.push(started.elapsed());
            }
        });
    }
    let mut all = Samples::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(latencies) => latencies.into_iter().for_each(|l| all.push(l)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("pool task: {e}"),
        }
    }
    all
}

/// Creates resources `names[i]` (spec of index `offset + i`); returns the wall time.
async fn create_resources(
    client: &Client,
    ns: &str,
    names: Arc<Vec<String>>,
    offset: usize,
    concurrency: usize,
) -> Duration {
    let api: Api<CrawlerResource> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let n = names.len();
    pool(n, concurrency, move |i| {
        let (api, names) = (api.clone(), Arc::clone(&names));
        async move {
            let body = resource_body(&names[i], offset + i);
            api.create(&PostParams::default(), &body)
                .await
                .unwrap_or_else(|e| panic!("creating {}: {e}", names[i]));
        }
    })
    .await;
    started.elapsed()
}

/// `count` ready worker Pods `worker-000...` with distinct IPs.
async fn create_workers(client: &Client, ns: &str, count: usize) {
    let (client, ns) = (client.clone(), ns.to_owned());
    pool(count, 16, move |i| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let name = format!("worker-{i:03}");
            pods::create_worker_pod(&client, &ns, &name, &[WORKER_LABEL]).await;
            let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
            pods::set_pod_ready(&client, &ns, &name, true, Some(&ip)).await;
        }
    })
    .await;
}

fn watch_config() -> watcher::Config {
    // The harness's client has a 30 s read timeout; let the server end idle watches first.
    watcher::Config::default().timeout(20)
}

fn resource_observer(client: &Client, ns: &str) -> Observer<Resources> {
    Observer::start(
        Api::<CrawlerResource>::namespaced(client.clone(), ns),
        watch_config(),
        Resources::default(),
    )
}

/// Starts watching `ns`, creates `names` there (32 at a time) and waits until the watch has seen
/// them all; returns the watch and the creation's wall time.
async fn created_and_seen(
    client: &Client,
    ns: &str,
    names: &Arc<Vec<String>>,
    what: &str,
) -> (Observer<Resources>, Duration) {
    let n = names.len();
    let observer = resource_observer(client, ns);
    let create_time = create_resources(client, ns, Arc::clone(names), 0, 32).await;
    observer
        .wait_for(
            &format!("{what} to be seen"),
            Duration::from_secs(120),
            |s| (s.objects.len() >= n).then_some(()),
            |s| format!("{} seen", s.objects.len()),
        )
        .await;
    (observer, create_time)
}

fn pod_observer(client: &Client, ns: &str) -> Observer<Pods> {
    Observer::start(
        Api::<Pod>::namespaced(client.clone(), ns),
        watch_config(),
        Pods::default(),
    )
}

fn lease_observer(client: &Client, ns: &str) -> Observer<Leases> {
    Observer::start(
        Api::<Lease>::namespaced(client.clone(), ns),
        watch_config().fields(&format!("metadata.name={LEASE}")),
        Leases::default(),
    )
}

/// Maps the controller's log timestamps (wall clock) onto this process's `Instant`s.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    wall: Timestamp,
}

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    fn instant_of(&self, at: Timestamp) -> Instant {
        let offset = at.duration_since(self.wall);
        let d = Duration::from_secs_f64(offset.as_secs_f64().abs());
        if offset.is_negative() {
            self.instant.checked_sub(d).unwrap_or(self.instant)
        } else {
            self.instant + d
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn cpu_row(
    label: &str,
    writes: usize,
    spent: &CpuSpent,
    controller: Option<Duration>,
) -> Vec<String> {
    let per_k = |d: Duration| {
        if writes == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", d.as_secs_f64() * 1000.0 / writes as f64)
        }
    };
    vec![
        label.to_owned(),
        writes.to_string(),
        secs(spent.wall),
        per_k(spent.apiserver),
        per_k(spent.etcd),
        controller.map_or_else(|| "-".to_owned(), per_k),
        per_k(spent.bench),
    ]
}

const CPU_HEADERS: [&str; 7] = [
    "phase",
    "writes",
    "wall s",
    "kube-apiserver CPU s / 1000 writes",
    "etcd CPU s / 1000",
    "controller CPU s / 1000",
    "bench process CPU s / 1000",
];

// =================================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `make bench` (minutes; starts its own control plane)"]
async fn controller_benchmarks() {
    let cfg = Config::from_env();
    let run_started = Instant::now();
    let mut report = Report::default();
    header(&mut report, &cfg);
    println!("bench: {cfg:?}");

    if cfg.enabled("micro") {
        scenario_micro(&cfg, &mut report);
    }
    if cfg.enabled("rebalance") {
        scenario_rebalance(&cfg, &mut report);
    }
    if cfg.enabled("extract") {
        scenarios::extract::run(cfg.micro_reps, &mut report).await;
    }

    let needs_cp = [
        "ceiling",
        "bulk",
        "large",
        "kube-scheduler",
        "worker",
        "fleet",
    ]
    .iter()
    .any(|s| cfg.enabled(s));
    if needs_cp {
        // Never dropped: its servers go when this process exits (the harness's guardians).
        let cp: &'static ControlPlane =
            Box::leak(Box::new(ControlPlane::builder().fsync(cfg.fsync).start()));
        let client = cp.client();
        support::story::install_crd(&client).await;
        let pids = ServerPids::find(cp);
        let retired = watch_servers(pids);
        let version = client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        report.header(
            "kube-apiserver",
            format!(
                "{version} (`{}`)",
                support::tools::binary("kube-apiserver").display()
            ),
        );
        report.header(
            "etcd",
            format!(
                "{}, fsync **{}**",
                command_line(
                    support::tools::binary("etcd").to_str().unwrap_or("etcd"),
                    &["--version"]
                )
                .lines()
                .next()
                .unwrap_or_default(),
                if cfg.fsync {
                    "on"
                } else {
                    "off (--unsafe-no-fsync)"
                }
            ),
        );
        report.header("control plane start", format!("{:.1?}", cp.startup_time()));

        let mut c_raw = None;
        let mut ours = None;
        let mut cpu_rows = Vec::new();
        if cfg.enabled("ceiling") {
            c_raw = Some(scenario_ceiling(cp, &cfg, pids, &mut report, &mut cpu_rows).await);
        }
        if cfg.enabled("bulk") {
            let mut fleet: Fleet = scenario_bulk(
                cp,
                &cfg,
                pids,
                c_raw,
                &mut report,
                &mut cpu_rows,
                BulkAs::Admin,
            )
            .await;
            ours = Some(fleet.bulk_rate);
            if cfg.enabled("orphans") {
                scenario_orphans(&mut fleet, &cfg, &mut report).await;
            }
            if cfg.enabled("coldstart") {
                scenario_cold_start(&mut fleet, &cfg, &mut report).await;
            }
            if cfg.enabled("failover") {
                scenario_failover(&mut fleet, &cfg, &mut report).await;
            }
            fleet.stop_all().await;
            if cfg.enabled("bulk-noevents") {
                let kubeconfig = no_events_identity(cp).await;
                let variant = scenario_bulk(
                    cp,
                    &cfg,
                    pids,
                    c_raw,
                    &mut report,
                    &mut cpu_rows,
                    BulkAs::NoEvents(&kubeconfig),
                )
                .await;
                variant.stop_all().await;
                fleet.footprint.extend(variant.footprint.iter().cloned());
            }
            if cfg.enabled("bulk-fence") {
                // The leader fence's cost per write: the same bulk as one ServiceAccount,
                // without and with the chart's policy, alternating `BENCH_FENCE_ROUNDS` times
                // (2): on a shared machine one pair is mostly noise.
                let rounds = std::env::var("BENCH_FENCE_ROUNDS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2);
                for fence in (0..rounds).flat_map(|_| [false, true]) {
                    let variant = scenario_bulk(
                        cp,
                        &cfg,
                        pids,
                        c_raw,
                        &mut report,
                        &mut cpu_rows,
                        BulkAs::ServiceAccount { fence },
                    )
                    .await;
                    variant.stop_all().await;
                    fleet.footprint.extend(variant.footprint.iter().cloned());
                }
            }
            footprint_section(&fleet, &cfg, &mut report);
        }
        if cfg.enabled("kube-scheduler") {
            kube_scheduler::run(cp, &cfg, pids, &mut report, &mut cpu_rows, ours).await;
        }
        if cfg.large > 0 && cfg.enabled("large") {
            scenario_large(cp, &cfg, pids, &mut report, &mut cpu_rows).await;
        }
        if cfg.enabled("worker") {
            worker::run(cp, &cfg, &mut report).await;
        }
        if cfg.enabled("fleet") {
            // The fleet runs on a control plane of its own, as the issue measured it: after the
            // scenarios above the shared one holds over 100,000 objects, and twice it stopped
            // answering while the busy fleet's tasks were created (2026-12-06); the fleet's
            // figures are per worker, not about a full store. The shared one is stopped first.
            let earlier = ["ceiling", "bulk", "large", "kube-scheduler", "worker"]
                .iter()
                .any(|s| cfg.enabled(s));
            let (fleet_cp, fleet_pids) = if earlier {
                retired.store(true, std::sync::atomic::Ordering::Relaxed);
                cp.stop_apiserver().await;
                cp.stop_etcd().await;
                let fresh: &'static ControlPlane =
                    Box::leak(Box::new(ControlPlane::builder().fsync(cfg.fsync).start()));
                support::story::install_crd(&fresh.client()).await;
                let pids = ServerPids::find(fresh);
                let _ = watch_servers(pids);
                println!(
                    "bench: fleet: a control plane of its own, ready in {:.1?}",
                    fresh.startup_time()
                );
                (fresh, pids)
            } else {
                (cp, pids)
            };
            scenarios::fleet::run(fleet_cp, &cfg, fleet_pids, c_raw, &mut report).await;
        }
        if !cpu_rows.is_empty() {
            report.section(
                "Where the CPU goes (per 1000 writes, from /proc/<pid>/stat)",
                format!(
                    "{}\nThe machine has {} cores; etcd, kube-apiserver, the controller and this benchmark share them.\n",
                    table(&CPU_HEADERS, cpu_rows),
                    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
                ),
            );
        }
    }

    report.header(
        "total benchmark time",
        format!(
            "{:.0} s; load average after: {}",
            run_started.elapsed().as_secs_f64(),
            procs::loadavg()
        ),
    );
    report.write();
}

/// Says at once when the control plane's etcd or API server process disappears (other
/// engineers' cleanups share this machine), rather than leave only a timeout to explain it.
/// Storing `true` in the flag returned retires the watch (the servers are stopped on purpose).
fn watch_servers(pids: ServerPids) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let retired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&retired);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            for (name, pid) in [("etcd", pids.etcd), ("kube-apiserver", pids.apiserver)] {
                if let Some(pid) = pid
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    eprintln!(
                        "bench: {name} (pid {pid}) is gone: killed from outside this benchmark? Everything after this fails."
                    );
                    return;
                }
            }
        }
    });
    retired
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn header(report: &mut Report, cfg: &Config) {
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    report.header(
        "command",
        format!(
            "`{}make bench` (runs `cargo test --release --locked --features bench --test bench -- --ignored --nocapture --test-threads=1`, then `hack/bench-doc.py`)",
            if overrides.is_empty() { String::new() } else { format!("{} ", overrides.join(" ")) }
        ),
    );
    report.header(
        "date",
        Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let commit = command_line("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    let dirty = !command_line(
        "git",
        &[
            "-C",
            root,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
        ],
    )
    .is_empty();
    report.header(
        "code",
        format!(
            "crawler-operator {} at {commit}{}",
            env!("CARGO_PKG_VERSION"),
            if dirty {
                " plus uncommitted changes in src/"
            } else {
                ""
            }
        ),
    );
    let binary = procs::controller_binary();
    report.header(
        "controller binary",
        format!(
            "`{binary}` ({})",
            if binary.contains("/release/") {
                "release build"
            } else {
                "**debug build: numbers not representative**"
            }
        ),
    );
    let lock = std::fs::read_to_string(format!("{root}/Cargo.lock")).unwrap_or_default();
    let version_of = |name: &str| {
        let needle = format!("name = \"{name}\"\nversion = \"");
        lock.find(&needle)
            .map(|i| {
                lock[i + needle.len()..]
                    .split('"')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    report.header(
        "toolchain",
        format!(
            "{}; kube {}, k8s-openapi {}, tokio {}",
            command_line("rustc", &["--version"]),
            version_of("kube"),
            version_of("k8s-openapi"),
            version_of("tokio")
        ),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    report.header(
        "machine",
        format!(
            "{} cores ({model}), {:.1} GiB memory, Linux {}; load average before: {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            mem_kib as f64 / 1024.0 / 1024.0,
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            procs::loadavg()
        ),
    );
    report.header(
        "sizes",
        format!(
            "{} resources, {} workers, controller --concurrency {}, large run {}",
            cfg.resources,
            cfg.workers,
            cfg.concurrency,
            if cfg.large == 0 {
                "skipped".to_owned()
            } else {
                cfg.large.to_string()
            }
        ),
    );
}

/// Waits until etcd + kube-apiserver use less than a fifth of a core over a second (the tail of
/// the previous scenario, such as the controller's Event backlog, is done), at most `max`.
/// Returns how long it waited.
async fn settle(pids: ServerPids, max: Duration) -> Duration {
    let started = Instant::now();
    let mut previous = CpuSnapshot::take(pids);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = CpuSnapshot::take(pids);
        let spent = now.since(&previous);
        let busy =
            (spent.apiserver + spent.etcd).as_secs_f64() / spent.wall.as_secs_f64().max(1e-3);
        if busy < 0.2 || started.elapsed() >= max {
            println!(
                "bench: settled after {:.1?} (servers at {:.0}% of a core)",
                started.elapsed(),
                busy * 100.0
            );
            return started.elapsed();
        }
        previous = now;
    }
}

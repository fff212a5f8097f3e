//! Benchmarks of the controller (issue 7) against a real etcd (fsync on) + kube-apiserver on this
//! machine. Not a test: `#[ignore]`d, so `cargo test` only compiles it. Run with `make bench`,
//! which writes the tables into `BENCHMARKS.md`.
//!
//! ```text
//! 7a micro          placement alone: our policies vs the original algorithm, Index::plan
//!  1 ceiling        raw status writes (SSA like the controller's, and merge-patch) at 1/16/64
//!  2 bulk           N resources, 100 ready workers, then the controller starts and places them
//!  3 orphans        a worker Pod deleted / turning NotReady -> its resources reassigned
//!  5 cold start     a fresh leader over N well-placed resources (time to ready, writes)
//!  4 failover       SIGTERM / SIGKILL of the leader with a warm standby, mid-flight
//!  6 footprint      RSS / CPU of the controller at N (and at BENCH_LARGE)
//! 6c worker         RSS / CPU of one worker as its running tasks grow (BENCH_WORKER_TASKS)
//! 7b kube-scheduler the same number of Pods on 100 Nodes, same API server, same run
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
    /// micro,ceiling,bulk,orphans,coldstart,failover,bulk-noevents,large,kube-scheduler,worker.
    pub scenarios: Option<HashSet<String>>,
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
        }
    }

    fn enabled(&self, scenario: &str) -> bool {
        self.scenarios.as_ref().is_none_or(|s| s.contains(scenario))
    }
}

/// The spec of benchmark resource `i`: a realistic one (seeds, depth, rate limit, weight 1).
pub fn resource_spec(i: usize) -> serde_json::Value {
    json!({
        "task": format!("books_{i}"),
        "seeds": [format!("https://books.example.org/tag/{i}")],
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

    let needs_cp = ["ceiling", "bulk", "large", "kube-scheduler", "worker"]
        .iter()
        .any(|s| cfg.enabled(s));
    if needs_cp {
        // Never dropped: its servers go when this process exits (the harness's guardians).
        let cp: &'static ControlPlane =
            Box::leak(Box::new(ControlPlane::builder().fsync(cfg.fsync).start()));
        let client = cp.client();
        support::story::install_crd(&client).await;
        let pids = ServerPids::find(cp);
        // Other engineers' cleanups share this machine: say so at once if a server disappears,
        // rather than leave only a timeout to explain it.
        tokio::spawn(async move {
            let mut reported = false;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (name, pid) in [("etcd", pids.etcd), ("kube-apiserver", pids.apiserver)] {
                    if let Some(pid) = pid
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                        && !reported
                    {
                        eprintln!(
                            "bench: {name} (pid {pid}) is gone: killed from outside this benchmark? Everything after this fails."
                        );
                        reported = true;
                    }
                }
            }
        });
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
            let mut fleet: Fleet =
                scenario_bulk(cp, &cfg, pids, c_raw, &mut report, &mut cpu_rows, None).await;
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
                    Some(&kubeconfig),
                )
                .await;
                variant.stop_all().await;
                fleet.footprint.extend(variant.footprint.iter().cloned());
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

// === 7a: micro ====================================================================================

fn scenario_micro(cfg: &Config, report: &mut Report) {
    let results = micro::run(cfg.resources, cfg.workers, cfg.micro_reps);
    let baseline = results
        .iter()
        .find(|r| r.name.starts_with("original"))
        .map(|r| r.per_placement);
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.name.to_owned(),
                r.what.to_owned(),
                format!("{:.2}", r.batch.as_secs_f64() * 1e3),
                format!("{:.0}", r.per_placement.as_nanos()),
                baseline.map_or_else(String::new, |b| {
                    format!(
                        "{:.1}x",
                        b.as_secs_f64() / r.per_placement.as_secs_f64().max(1e-12)
                    )
                }),
                r.spread.to_string(),
            ]
        })
        .collect();
    report.section(
        &format!(
            "7a. Placement alone: {} resources x {} workers, no API server (median of {} runs)",
            cfg.resources, cfg.workers, cfg.micro_reps
        ),
        format!(
            "{}\n`speed-up` is the original algorithm's time per placement divided by this row's. Spread is max - min load after the batch (weight 1 each).\n",
            table(&["placement", "what is timed", "batch ms", "ns / placement", "speed-up vs original", "spread"], rows)
        ),
    );
}

// === 1: ceiling ===================================================================================

#[derive(Clone, Copy)]
struct Ceiling {
    rate: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Ssa,
    Merge,
    /// PUT of the whole object to `/status` (an Update).
    Replace,
    /// `Ssa` while a second client watches the namespace, as the controller does.
    SsaSecondWatch,
}

impl WriteKind {
    fn short(self) -> &'static str {
        match self {
            WriteKind::Ssa => "SSA",
            WriteKind::Merge => "merge",
            WriteKind::Replace => "PUT",
            WriteKind::SsaSecondWatch => "SSA + 2nd watch",
        }
    }
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

async fn scenario_ceiling(
    cp: &ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
) -> Ceiling {
    let client = cp.client();
    let ns = cp.namespace("ceiling").await;
    let n = cfg.resources;
    let names: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("r-{i:06}")).collect());
    let (observer, create_time) =
        created_and_seen(&client, ns.name(), &names, "the ceiling resources").await;
    println!("bench: created {n} resources in {create_time:.1?}");

    let small = (n / 5).max(1);
    let passes = [
        (
            WriteKind::Ssa,
            cfg.concurrency,
            n,
            "fresh objects: the controller's first write",
        ),
        (WriteKind::Ssa, 1, small, "status rewritten"),
        (WriteKind::Ssa, cfg.concurrency, n, "status rewritten"),
        (WriteKind::Ssa, 64, n, "status rewritten"),
        (WriteKind::Merge, cfg.concurrency, n, "status rewritten"),
        (WriteKind::Replace, cfg.concurrency, n, "status rewritten"),
        (
            WriteKind::SsaSecondWatch,
            cfg.concurrency,
            n,
            "fresh objects (a second set), watched twice",
        ),
    ];
    // The last pass: fresh objects again, in a second namespace, with one more watch of it (the
    // one a controller keeps), to measure what that watch costs the API server per write.
    let ns2 = cp.namespace("ceiling-watched").await;
    let (observer2, _) =
        created_and_seen(&client, ns2.name(), &names, "the second ceiling set").await;
    let mut rows = Vec::new();
    let mut ceiling = Ceiling { rate: 0.0 };
    for (pass, (kind, concurrency, count, note)) in passes.into_iter().enumerate() {
        let (ns_name, observer) = if kind == WriteKind::SsaSecondWatch {
            (ns2.name(), &observer2)
        } else {
            (ns.name(), &observer)
        };
        let versions = Arc::new(observer.lock().versions());
        let writes_before = observer.lock().writes;
        let api: Api<CrawlerResource> = Api::namespaced(client.clone(), ns_name);
        let second_watch = (kind == WriteKind::SsaSecondWatch).then(|| {
            let stream = watcher(api.clone(), watch_config());
            tokio::spawn(async move {
                use futures::StreamExt;
                stream.for_each(|_| async {}).await;
            })
        });
        let errors = Arc::new(AtomicUsize::new(0));
        let workers = cfg.workers;
        settle(pids, Duration::from_secs(60)).await;
        let cpu_before = CpuSnapshot::take(pids);
        let started = Instant::now();
        let latencies = {
            let (names, errors) = (Arc::clone(&names), Arc::clone(&errors));
            pool(count, concurrency, move |i| {
                let (api, names, versions, errors) = (
                    api.clone(),
                    Arc::clone(&names),
                    Arc::clone(&versions),
                    Arc::clone(&errors),
                );
                async move {
                    let name = &names[i];
                    let rv = versions[name].to_string();
                    let status = assigned_status(i % workers, i / workers, pass + 1);
                    let result = match kind {
                        WriteKind::Ssa | WriteKind::SsaSecondWatch => {
                            let body = json!({
                                "apiVersion": "crawler.dev/v1alpha1",
                                "kind": "CrawlerResource",
                                "metadata": { "name": name, "resourceVersion": rv },
                                "status": status,
                            });
                            api.patch_status(
                                name,
                                &PatchParams::apply(FIELD_MANAGER).force(),
                                &Patch::Apply(&body),
                            )
                            .await
                        }
                        WriteKind::Merge => {
                            let body =
                                json!({ "metadata": { "resourceVersion": rv }, "status": status });
                            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
                                .await
                        }
                        WriteKind::Replace => {
                            let mut body: serde_json::Value =
                                serde_json::to_value(resource_body(name, i))
                                    .expect("a resource as JSON");
                            body["metadata"]["resourceVersion"] = json!(rv);
                            body["status"] = status;
                            let body: CrawlerResource =
                                serde_json::from_value(body).expect("a resource");
                            api.replace_status(name, &PostParams::default(), &body)
                                .await
                        }
                    };
                    if let Err(e) = result
                        && errors.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("bench: ceiling write of {name} failed: {e}");
                    }
                }
            })
            .await
        };
        let client_elapsed = started.elapsed();
        let ok = count - errors.load(Ordering::Relaxed);
        if let Some(task) = second_watch {
            task.abort();
        }
        let seen_at = observer
            .wait_for(
                "the ceiling writes to be seen",
                Duration::from_secs(120),
                |s| (s.writes >= writes_before + ok as u64).then(Instant::now),
                |s| format!("{} of {ok} seen", s.writes - writes_before),
            )
            .await;
        let cpu = CpuSnapshot::take(pids).since(&cpu_before);
        let rate = per_sec(ok, client_elapsed);
        let sum = latencies.summary();
        let label = match kind {
            WriteKind::Ssa => "server-side apply + resourceVersion (the controller's write)",
            WriteKind::Merge => "merge patch + resourceVersion",
            WriteKind::Replace => "update (PUT /status of the whole object, resourceVersion)",
            WriteKind::SsaSecondWatch => {
                "server-side apply + resourceVersion, a second client watching (as the controller does)"
            }
        };
        if pass == 0 {
            ceiling.rate = rate;
        }
        cpu_rows.push(cpu_row(
            &format!(
                "1. ceiling: {} x{concurrency}{}",
                kind.short(),
                if note.starts_with("fresh") {
                    ", fresh"
                } else {
                    ""
                }
            ),
            ok,
            &cpu,
            None,
        ));
        rows.push(vec![
            label.to_owned(),
            concurrency.to_string(),
            note.to_owned(),
            ok.to_string(),
            errors.load(Ordering::Relaxed).to_string(),
            format!("**{rate:.0}**"),
            format!("{:.0}", per_sec(ok, seen_at.duration_since(started))),
            ms(sum.p50),
            ms(sum.p90),
            ms(sum.p99),
            ms(sum.max),
        ]);
    }
    report.section(
        "1. Ceiling C_raw: status writes with no operator logic",
        format!(
            "{} CrawlerResources created first ({:.0}/s at 32 in flight: {create_time:.1?}); then each pass writes the status the controller would write (same fields, same sizes, `resourceVersion` fence) from this process, `concurrency` requests in flight, one kube::Client (the controller's HTTP stack). The benchmark also watches the namespace, as it does during the bulk run. The last row repeats the first on a second set of fresh objects while a second client also watches their namespace, as the controller does: the difference is what the controller's own watch costs the API server.\n\n{}\n**C_raw = {:.0} writes/s** (first row: fresh objects at the controller's concurrency) is what the bulk run is compared with.\n",
            n,
            per_sec(n, create_time),
            table(
                &["write", "in flight", "objects", "writes", "errors", "writes/s (responses)", "writes/s (until seen in watch)", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                rows
            ),
            ceiling.rate
        ),
    );
    drop(observer);
    drop(observer2);
    // Keep the objects: deleting 10k of them costs API time later.
    std::mem::forget(ns);
    std::mem::forget(ns2);
    ceiling
}

// === 2: bulk ======================================================================================

/// The bulk namespace and everything running against it, for the scenarios that follow it.
struct Fleet {
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    resources: Observer<Resources>,
    pods: Observer<Pods>,
    leases: Observer<Leases>,
    controllers: Vec<Controller>,
    concurrency: usize,
    clock: Clock,
    /// Usage snapshots for the footprint table: (what, usage).
    footprint: Vec<(String, Usage)>,
    /// Leaders in order of their terms, for the overlap check.
    leaders: Vec<String>,
    /// Assignments/s of the bulk run (first -> last).
    bulk_rate: f64,
    /// The controllers' kubeconfig.
    kubeconfig: std::path::PathBuf,
    pids: ServerPids,
}

impl Fleet {
    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn start(&mut self, identity: &str, election: Election) -> usize {
        let c = Controller::start(
            self.cp,
            self.ns.name(),
            identity,
            self.concurrency,
            election,
            &self.kubeconfig,
        );
        println!("bench: started controller {identity} (pid {})", c.pid());
        self.controllers.push(c);
        self.controllers.len() - 1
    }

    fn by_identity(&self, identity: &str) -> &Controller {
        self.controllers
            .iter()
            .find(|c| c.identity == identity)
            .expect("a controller we started")
    }

    async fn stop_all(&self) {
        for c in &self.controllers {
            c.stop().await;
        }
    }

    async fn create(&self, names: Vec<String>, offset: usize, concurrency: usize) -> Duration {
        create_resources(
            &self.client,
            self.ns(),
            Arc::new(names),
            offset,
            concurrency,
        )
        .await
    }

    /// Waits until every name in `names` is assigned; returns when the last one was seen.
    async fn all_assigned(&self, what: &str, names: &[String], timeout: Duration) -> Instant {
        let wanted: HashSet<&String> = names.iter().collect();
        self.resources
            .wait_for(
                what,
                timeout,
                |s| {
                    let done = wanted
                        .iter()
                        .all(|n| s.objects.get(*n).is_some_and(|o| o.worker.is_some()));
                    done.then(|| {
                        s.assignments
                            .iter()
                            .rev()
                            .find(|a| wanted.contains(&a.name))
                            .map_or_else(Instant::now, |a| a.at)
                    })
                },
                |s| {
                    format!(
                        "{} of {} assigned",
                        wanted
                            .iter()
                            .filter(|n| s.objects.get(**n).is_some_and(|o| o.worker.is_some()))
                            .count(),
                        wanted.len()
                    )
                },
            )
            .await
    }

    async fn leader_is(&self, identity: &str, since: Instant, timeout: Duration) -> Instant {
        self.leases
            .wait_for(
                &format!("{identity} to hold the Lease"),
                timeout,
                |l| l.acquired(identity, since),
                |l| format!("holder {:?}", l.holder()),
            )
            .await
    }
}

async fn scenario_bulk(
    cp: &'static ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    c_raw: Option<Ceiling>,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
    no_events: Option<&Path>,
) -> Fleet {
    let client = cp.client();
    let variant = no_events.is_some();
    let ns = cp
        .namespace(if variant { "bulk-noevents" } else { "bulk" })
        .await;
    let n = cfg.resources;
    create_workers(&client, ns.name(), cfg.workers).await;
    let names: Vec<String> = (0..n).map(|i| format!("r-{i:06}")).collect();
    let create_time = create_resources(&client, ns.name(), Arc::new(names.clone()), 0, 32).await;
    println!("bench: bulk: {n} resources created in {create_time:.1?}");
    let mut fleet = Fleet {
        cp,
        resources: resource_observer(&client, ns.name()),
        pods: pod_observer(&client, ns.name()),
        leases: lease_observer(&client, ns.name()),
        client,
        ns,
        controllers: Vec::new(),
        concurrency: cfg.concurrency,
        clock: Clock::now(),
        footprint: Vec::new(),
        leaders: Vec::new(),
        bulk_rate: 0.0,
        pids,
        kubeconfig: no_events.map_or_else(|| cp.kubeconfig_path().to_path_buf(), Path::to_path_buf),
    };
    fleet
        .resources
        .wait_for(
            "the bulk resources to be seen",
            Duration::from_secs(120),
            |s| (s.synced && s.objects.len() >= n).then_some(()),
            |s| format!("{} seen", s.objects.len()),
        )
        .await;
    fleet
        .pods
        .wait_for(
            "the worker Pods to be seen",
            Duration::from_secs(30),
            |s| s.synced.then_some(()),
            |_| String::new(),
        )
        .await;

    settle(pids, Duration::from_secs(60)).await;
    let cpu_before = CpuSnapshot::take(pids);
    let t_start = Instant::now();
    let identity = if variant { "ctl-noevents" } else { "ctl-bulk" };
    let leader = fleet.start(identity, Election::DEFAULTS);
    fleet.leaders.push(identity.to_owned());
    let timeout = Duration::from_secs((n as u64 / 20).max(120));
    let t_all = fleet
        .all_assigned("the bulk resources to be assigned", &names, timeout)
        .await;
    let cpu = CpuSnapshot::take(pids).since(&cpu_before);
    let usage = fleet.controllers[leader].usage();
    let t_lease = fleet.leases.lock().acquired(identity, t_start);
    // Let late duplicate writes (if any) show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (times, writes_hist, total_writes, loads) = {
        let s = fleet.resources.lock();
        let wanted: HashSet<&String> = names.iter().collect();
        let mut first: HashMap<&str, Instant> = HashMap::new();
        for a in &s.assignments {
            if wanted.contains(&a.name) {
                first.entry(a.name.as_str()).or_insert(a.at);
            }
        }
        let times: Vec<Instant> = first.values().copied().collect();
        let mut hist: BTreeMap<u32, usize> = BTreeMap::new();
        let mut total = 0u64;
        for name in &names {
            let w = s.objects.get(name).map_or(0, |o| o.writes);
            *hist.entry(w).or_default() += 1;
            total += u64::from(w);
        }
        (times, hist, total, s.loads())
    };
    let t_first = times.iter().min().copied().unwrap_or(t_all);
    let assigned = times.len();
    let span = t_all.duration_since(t_first);
    let rate = per_sec(assigned.saturating_sub(1), span);
    let rate_from_start = per_sec(assigned, t_all.duration_since(t_start));
    let buckets = stats::bucket_rates(&times);
    let mut full: Vec<usize> = if buckets.len() > 2 {
        buckets[1..buckets.len() - 1].to_vec()
    } else {
        buckets.clone()
    };
    full.sort_unstable();
    let pct = |p: f64| {
        full.get(((p / 100.0) * full.len() as f64) as usize)
            .copied()
            .unwrap_or(0)
    };

    let logs = fleet.controllers[leader].log_lines();
    let metrics = fleet.controllers[leader].metrics();
    let conflicts = logs.iter().filter(|l| l.message == "conflict").count();
    let failed = logs
        .iter()
        .filter(|l| l.message == "reconcile failed")
        .count();
    let write_logs = logs.iter().filter(|l| l.is_assignment()).count();
    let leading_log = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .map(|l| fleet.clock.instant_of(l.at));
    let events: Vec<Event> = Api::<Event>::namespaced(fleet.client.clone(), fleet.ns())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let assigned_events = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Assigned"))
        .count();

    let all_workers: Vec<usize> = (0..cfg.workers)
        .map(|i| loads.get(&format!("worker-{i:03}")).copied().unwrap_or(0))
        .collect();
    let spread = all_workers.iter().max().unwrap_or(&0) - all_workers.iter().min().unwrap_or(&0);
    let exactly_one = writes_hist.get(&1).copied().unwrap_or(0);
    let writes_per = total_writes as f64 / n as f64;

    let ratio = c_raw.map(|c| rate / c.rate);
    fleet.bulk_rate = rate;
    cpu_rows.push(cpu_row(
        if variant {
            "2b. bulk, Events refused by RBAC"
        } else {
            "2. bulk: controller placing"
        },
        assigned,
        &cpu,
        Some(usage.cpu),
    ));
    fleet.footprint.push((
        format!(
            "leader after placing {n} ({})",
            if variant {
                "2b, Events refused"
            } else {
                "bulk"
            }
        ),
        usage,
    ));

    let hist_text = writes_hist
        .iter()
        .map(|(w, c)| format!("{c} with {w}"))
        .collect::<Vec<_>>()
        .join(", ");
    let since =
        |t: Option<Instant>| t.map_or_else(|| "-".to_owned(), |t| secs(t.duration_since(t_start)));
    let rows = vec![
        vec![
            "resources / ready workers".into(),
            format!("{n} / {}", cfg.workers),
        ],
        vec![
            "created before the controller started".into(),
            format!(
                "in {create_time:.1?} ({:.0}/s at 32 in flight)",
                per_sec(n, create_time)
            ),
        ],
        vec![
            "process start -> Lease held (watch)".into(),
            format!("{} s", since(t_lease)),
        ],
        vec![
            "process start -> \"leading: full pass\" logged (both watches listed)".into(),
            format!("{} s", since(leading_log)),
        ],
        vec![
            "process start -> first assignment seen".into(),
            format!("{} s", since(Some(t_first))),
        ],
        vec![
            "process start -> all assigned".into(),
            format!("**{} s**", secs(t_all.duration_since(t_start))),
        ],
        vec![
            "assignments/s, first -> last assignment".into(),
            format!("**{rate:.0}**"),
        ],
        vec![
            "assignments/s, process start -> last".into(),
            format!("{rate_from_start:.0}"),
        ],
        vec![
            "assignments/s per 1 s bucket (p10 / p50 / p90, full buckets)".into(),
            format!("{} / {} / {}", pct(10.0), pct(50.0), pct(90.0)),
        ],
        vec![
            "ratio to C_raw (same concurrency, same run)".into(),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("**{r:.2}**")),
        ],
        vec![
            "status writes per resource (resourceVersion changes seen by a watch)".into(),
            format!("{writes_per:.3} ({hist_text})"),
        ],
        vec![
            "409 Conflicts (controller log, debug)".into(),
            conflicts.to_string(),
        ],
        vec![
            "failed reconciles (controller log)".into(),
            failed.to_string(),
        ],
        vec![
            "assignment writes logged by the controller".into(),
            write_logs.to_string(),
        ],
        vec![
            "controller /metrics: status writes ok / conflict / error / timeout".into(),
            metrics.as_deref().map_or_else(
                || "-".to_owned(),
                |m| {
                    ["\"ok\"", "\"conflict\"", "\"error\"", "\"timeout\""]
                        .map(|r| {
                            Controller::metric_sum(m, "crawler_controller_status_writes_total", r)
                                .to_string()
                        })
                        .join(" / ")
                },
            ),
        ],
        vec![
            "controller /metrics: reconciles, mean reconcile time (decision + write)".into(),
            metrics.as_deref().map_or_else(
                || "-".to_owned(),
                |m| {
                    let count = Controller::metric_sum(
                        m,
                        "crawler_controller_reconcile_duration_seconds_count",
                        "",
                    );
                    let sum = Controller::metric_sum(
                        m,
                        "crawler_controller_reconcile_duration_seconds_sum",
                        "",
                    );
                    format!(
                        "{count} reconciles, {:.1} ms mean",
                        if count > 0.0 { sum / count * 1e3 } else { 0.0 }
                    )
                },
            ),
        ],
        vec![
            "`Assigned` Events created (best effort, one publisher)".into(),
            format!("{assigned_events} of {n}"),
        ],
        vec![
            "final spread (max - min resources per worker)".into(),
            format!(
                "**{spread}** (min {}, max {})",
                all_workers.iter().min().unwrap_or(&0),
                all_workers.iter().max().unwrap_or(&0)
            ),
        ],
        vec![
            "controller CPU / RSS / peak RSS".into(),
            format!(
                "{:.2} s / {:.1} MiB / {:.1} MiB",
                usage.cpu.as_secs_f64(),
                usage.rss_mib(),
                usage.hwm_mib()
            ),
        ],
    ];
    if variant {
        report.section(
            &format!("2b. Bulk again, Events refused by RBAC: {n} resources over {} ready workers", cfg.workers),
            format!(
                "Same as 2, except that the controller runs as a user whom RBAC refuses `events create` (its kubeconfig impersonates `{NO_EVENTS_USER}`; a FlowSchema keeps that user exempt from API Priority and Fairness, like the admin), as in a deployment whose RBAC lacks the Events permission. Meant to show the bulk without Event writes, it is not that: a refused Event is still a request (and, no longer waiting on etcd, the one publisher now attempts every one of them), and impersonation adds an RBAC evaluation to every request. Compare the CPU table.\n\n{}",
                table(&["", "value"], rows)
            ),
        );
    } else {
        report.section(
            &format!("2. Bulk: {n} resources over {} ready workers, controller started after they exist", cfg.workers),
            format!(
                "Release binary, `--concurrency {}`, default election timings. Times are when this process's watch saw each status change.\n\n{}",
                cfg.concurrency,
                table(&["", "value"], rows)
            ),
        );
    }
    if variant {
        return fleet;
    }
    if let (Some(r), Some(c)) = (ratio, c_raw) {
        report.goal(
            "bulk throughput >= 0.9 x C_raw",
            format!("{rate:.0} vs C_raw {:.0} writes/s: {r:.2} x", c.rate),
            Some(r >= 0.9),
        );
    }
    report.goal(
        "exactly 1 status write per assignment",
        format!("{writes_per:.3} writes per resource; {exactly_one} of {n} with exactly 1; {conflicts} conflicts"),
        Some(exactly_one == n),
    );
    fleet
}

/// The user the no-Events bulk run impersonates.
const NO_EVENTS_USER: &str = "crawler-bench-no-events";

/// RBAC for a controller that may do everything it needs except create Events, a `FlowSchema`
/// that keeps it exempt from API Priority and Fairness (as the admin is), and a kubeconfig that
/// impersonates it. Returns the kubeconfig's path.
async fn no_events_identity(cp: &ControlPlane) -> std::path::PathBuf {
    use k8s_openapi::api::{
        flowcontrol::v1::FlowSchema,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let client = cp.client();
    let apply = PatchParams::apply("crawler-bench").force();
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "rules": [
            { "apiGroups": ["crawler.dev"], "resources": ["crawlerresources", "crawlerresources/status"], "verbs": ["*"] },
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"] },
        ],
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NO_EVENTS_USER },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": NO_EVENTS_USER }],
    }))
    .unwrap();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "spec": {
            "priorityLevelConfiguration": { "name": "exempt" },
            "matchingPrecedence": 2,
            "rules": [{
                "subjects": [{ "kind": "User", "user": { "name": NO_EVENTS_USER } }],
                "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true }],
                "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            }],
        },
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&role))
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&binding))
        .await
        .expect("ClusterRoleBinding");
    Api::<FlowSchema>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&schema))
        .await
        .expect("FlowSchema");
    let text = std::fs::read_to_string(cp.kubeconfig_path()).expect("reading the kubeconfig");
    let marker = "    client-key-data:";
    let at = text
        .find(marker)
        .expect("client-key-data in our kubeconfig");
    let line_end = at + text[at..].find('\n').expect("end of line");
    let impersonating = format!(
        "{}\n    as: {NO_EVENTS_USER}{}",
        &text[..line_end],
        &text[line_end..]
    );
    let path = cp.dir().join("kubeconfig-no-events");
    std::fs::write(&path, impersonating).expect("writing the impersonating kubeconfig");
    path
}

// === 3: orphans ===================================================================================

async fn scenario_orphans(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    let mut rows = Vec::new();
    let mut all = Samples::default();
    for (kind, trials) in [
        ("Pod deleted", 0..cfg.orphan_trials),
        ("Pod NotReady", cfg.orphan_trials..2 * cfg.orphan_trials),
    ] {
        let mut samples = Samples::default();
        let mut from_request = Samples::default();
        let mut totals = Samples::default();
        let mut extra_writes = 0;
        let mut moved = 0;
        for t in trials {
            let worker = format!("worker-{t:03}");
            let (holders, writes_before): (Vec<String>, HashMap<String, u32>) = {
                let s = fleet.resources.lock();
                let holders: Vec<String> = s
                    .objects
                    .iter()
                    .filter(|(_, o)| o.worker.as_deref() == Some(&worker))
                    .map(|(n, _)| n.clone())
                    .collect();
                let writes = holders
                    .iter()
                    .map(|h| (h.clone(), s.objects[h].writes))
                    .collect();
                (holders, writes)
            };
            // Each trial on a quiet API server (the Events of the previous one published).
            settle(fleet.pids, Duration::from_secs(60)).await;
            let t_req = Instant::now();
            let change = if kind == "Pod deleted" {
                pods::delete_pod(&fleet.client, fleet.ns(), &worker).await;
                // The first event of a delete is the Pod turning terminating; the controller
                // acts on that one.
                vec![PodChange::Terminating, PodChange::Deleted]
            } else {
                pods::set_pod_ready(&fleet.client, fleet.ns(), &worker, false, None).await;
                vec![PodChange::Ready(false)]
            };
            let wanted: HashSet<&String> = holders.iter().collect();
            let done = fleet
                .resources
                .wait_for(
                    &format!("{worker}'s resources to move"),
                    Duration::from_secs(60),
                    |s| {
                        wanted
                            .iter()
                            .all(|n| {
                                s.objects.get(*n).is_some_and(|o| {
                                    o.worker.is_some() && o.worker.as_deref() != Some(&worker)
                                })
                            })
                            .then_some(())
                    },
                    |s| {
                        format!(
                            "{} of {} moved",
                            wanted
                                .iter()
                                .filter(|n| s
                                    .objects
                                    .get(**n)
                                    .is_some_and(|o| o.worker.as_deref() != Some(&worker)))
                                .count(),
                            wanted.len()
                        )
                    },
                )
                .await;
            let () = done;
            let t_event = fleet
                .pods
                .wait_for(
                    "the Pod event",
                    Duration::from_secs(10),
                    |p| p.seen(&worker, &change, t_req),
                    |_| String::new(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = fleet.resources.lock();
            let mut last = t_event;
            for h in &holders {
                if let Some(a) = s
                    .assignments
                    .iter()
                    .find(|a| &a.name == h && a.at >= t_req && a.from.as_deref() == Some(&worker))
                {
                    samples.push(a.at.saturating_duration_since(t_event));
                    from_request.push(a.at.saturating_duration_since(t_req));
                    last = last.max(a.at);
                }
                extra_writes += (s.objects[h].writes - writes_before[h]).saturating_sub(1);
            }
            moved += holders.len();
            totals.push(last.duration_since(t_event));
            println!(
                "bench: orphans: {kind} {worker}: {} moved, last after {:?} (request -> watch event {:?})",
                holders.len(),
                last.duration_since(t_event),
                t_event.duration_since(t_req)
            );
        }
        let sum = samples.summary();
        let req = from_request.summary();
        let tot = totals.summary();
        rows.push(vec![
            kind.to_owned(),
            cfg.orphan_trials.to_string(),
            moved.to_string(),
            ms(sum.p50),
            ms(sum.p90),
            ms(sum.p99),
            ms(sum.max),
            format!("{} / {}", ms(tot.p50), ms(tot.max)),
            format!("{} / {}", ms(req.p50), ms(req.p99)),
            extra_writes.to_string(),
        ]);
        all.extend(&samples);
    }
    let sum = all.summary();
    report.section(
        "3. Orphans: a worker holding ~N/workers resources goes away",
        format!(
            "While the bulk leader runs: each trial takes a worker holding about {} resources and deletes its Pod (grace 0) or sets its Ready condition False. Each trial starts on a quiet API server. Latency per resource: from this process's watch event of the Pod change (for a delete, its first one: the Pod turning terminating, which is what the controller acts on) to its watch event of the resource's new status (the goal's measure); the column *from the request* starts when the DELETE / status PATCH was sent instead, so it includes the API server's write and watch fan-out of the Pod change.\n\n{}\nA worker heartbeat expiring is not measured here yet: the worker process (issue 4) landed during this work; its expiry is bound by the heartbeat duration by design.\n",
            cfg.resources / cfg.workers.max(1),
            table(&["trigger", "trials", "resources moved", "p50 ms", "p90 ms", "p99 ms", "max ms", "last of a trial p50 / max ms", "from the request p50 / p99 ms", "extra writes"], rows)
        ),
    );
    report.goal(
        "orphans reassigned within 250 ms (p99)",
        format!(
            "p99 {} ms, max {} ms over {} resources",
            ms(sum.p99),
            ms(sum.max),
            sum.count
        ),
        Some(sum.count > 0 && sum.p99 <= Duration::from_millis(250)),
    );
}

// === 5: cold start ================================================================================

async fn scenario_cold_start(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    // Stop everything that runs (a graceful stop releases the Lease: the new leader may take it at
    // once, as in a rolling update).
    fleet.stop_all().await;
    settle(fleet.pids, Duration::from_secs(60)).await;
    let versions_before = fleet.resources.lock().versions();
    let writes_before = fleet.resources.lock().writes;
    let t0 = Instant::now();
    let idx = fleet.start("ctl-cold", Election::DEFAULTS);
    fleet.leaders.push("ctl-cold".to_owned());
    let t_lease = fleet
        .leader_is("ctl-cold", t0, Duration::from_secs(60))
        .await;
    let probe = "zz-cold-probe".to_owned();
    fleet.create(vec![probe.clone()], 900_000, 1).await;
    let t_probe = fleet
        .all_assigned(
            "the cold-start probe",
            std::slice::from_ref(&probe),
            Duration::from_secs(120),
        )
        .await;
    let usage_ready = fleet.controllers[idx].usage();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let usage = fleet.controllers[idx].usage();
    let logs = fleet.controllers[idx].log_lines();
    let t_pass = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .map(|l| fleet.clock.instant_of(l.at));
    let listed = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .and_then(|l| l.fields["resources"].as_u64());
    // Writes to the resources that existed: from the watch, and from a fresh list.
    let (watch_writes, changed_by_list) = {
        let s = fleet.resources.lock();
        let probe_writes = s.objects.get(&probe).map_or(0, |o| u64::from(o.writes));
        let watch = s.writes - writes_before - probe_writes;
        (watch, 0)
    };
    let listed_now: HashMap<String, u64> =
        Api::<CrawlerResource>::namespaced(fleet.client.clone(), fleet.ns())
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .map(|r| (r.name_any(), observe::resource_version(&r.metadata)))
                    .collect()
            })
            .unwrap_or_default();
    let changed = versions_before
        .iter()
        .filter(|(n, v)| listed_now.get(*n).is_some_and(|now| now != *v))
        .count()
        + changed_by_list;
    let since = |t: Option<Instant>| {
        t.map_or_else(|| "-".to_owned(), |t| secs(t.saturating_duration_since(t0)))
    };
    fleet.footprint.push((
        format!(
            "new leader after its full pass over {} (cold start)",
            versions_before.len()
        ),
        usage,
    ));
    report.section(
        &format!("5. Cold start: a new leader over {} well-placed resources", versions_before.len()),
        format!(
            "All controllers stopped (SIGTERM: the Lease is released), then a fresh process starts. A probe resource named to sort last (`{probe}`) is created as soon as it holds the Lease; the full pass queues keys in name order, so the probe's placement marks the end of the pass.\n\n{}",
            table(&["", "value"], vec![
                vec!["process start -> Lease held".into(), format!("{} s", since(Some(t_lease)))],
                vec!["process start -> both watches listed, full pass queued (log)".into(), format!("{} s ({} resources)", since(t_pass), listed.map_or_else(|| "-".to_owned(), |l| l.to_string()))],
                vec!["process start -> probe placed (ready: pass done)".into(), format!("**{} s**", since(Some(t_probe)))],
                vec!["status writes to the existing resources (watch / list compare)".into(), format!("**{watch_writes} / {changed}**")],
                vec!["CPU at ready / RSS / peak RSS".into(), format!("{:.2} s / {:.1} MiB / {:.1} MiB", usage_ready.cpu.as_secs_f64(), usage.rss_mib(), usage.hwm_mib())],
            ])
        ),
    );
    report.goal(
        "0 status writes on cold start",
        format!(
            "{watch_writes} (watch), {changed} (list compare) of {}",
            versions_before.len()
        ),
        Some(watch_writes == 0 && changed == 0),
    );
    let _ = cfg;
}

// === 4: failover ==================================================================================

async fn scenario_failover(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    let [graceful, crash, fast_graceful, fast_crash] = cfg.failover;
    let mut rows = Vec::new();
    let mut goal_rows: Vec<(String, Duration, Duration, bool)> = Vec::new();
    let mut existing_writes = 0u64;
    let mut burst_not_one = 0usize;
    let mut bursts = 0usize;
    // The cold-start leader leads now, with the default timings.
    let mut current = fleet
        .controllers
        .iter()
        .rposition(Controller::is_alive)
        .map(|i| fleet.controllers[i].identity.clone());
    let mut serial = 0usize;
    for (election, label, g, c) in [
        (Election::DEFAULTS, "default", graceful, crash),
        (Election::FAST, "fast", fast_graceful, fast_crash),
    ] {
        if g + c == 0 {
            continue;
        }
        // A leader with these timings.
        let leader = match current.take() {
            Some(id) if label == "default" => id,
            _ => {
                fleet.stop_all().await;
                serial += 1;
                let id = format!("ctl-{label}-{serial}");
                let t = Instant::now();
                fleet.start(&id, election);
                fleet.leaders.push(id.clone());
                fleet.leader_is(&id, t, Duration::from_secs(60)).await;
                // Its full pass: a probe sorted last.
                let probe = format!("zz-{id}");
                fleet.create(vec![probe.clone()], 900_001 + serial, 1).await;
                fleet
                    .all_assigned("the leader's probe", &[probe], Duration::from_secs(120))
                    .await;
                id
            }
        };
        let mut leader = leader;
        settle(fleet.pids, Duration::from_secs(60)).await;
        let warm = Duration::from_millis(2000 + cfg.resources as u64 / 5);
        serial += 1;
        let mut standby = format!("ctl-{label}-{serial}");
        fleet.start(&standby, election);
        // The standby tries the Lease every retry period from its start: a fixed warm-up would
        // send every signal at the same phase of that cycle (and measure the same case each
        // time). Spread the signals evenly over the cycle instead.
        tokio::time::sleep(warm + jitter(0, election.retry)).await;
        if label == "default" {
            let s = fleet.by_identity(&standby).usage();
            fleet.footprint.push((
                format!("standby, warm caches over {} (never led)", cfg.resources),
                s,
            ));
        }
        let mut takeover = [Samples::default(), Samples::default()];
        let mut first_write = [Samples::default(), Samples::default()];
        for (trial, signal) in std::iter::repeat_n("TERM", g)
            .chain(std::iter::repeat_n("KILL", c))
            .enumerate()
        {
            // Mid-flight: the leader is placing a burst of new resources when it is stopped.
            let burst: Vec<String> = (0..100)
                .map(|j| format!("burst-{label}-{trial}-{j:03}"))
                .collect();
            let burst_task = {
                let (client, ns, names) =
                    (fleet.client.clone(), fleet.ns().to_owned(), burst.clone());
                tokio::spawn(async move {
                    create_resources(&client, &ns, Arc::new(names), 800_000, 4).await
                })
            };
            let wanted: HashSet<&String> = burst.iter().collect();
            fleet
                .resources
                .wait_for(
                    "part of the burst to be placed",
                    Duration::from_secs(60),
                    |s| {
                        (wanted
                            .iter()
                            .filter(|n| s.objects.get(**n).is_some_and(|o| o.worker.is_some()))
                            .count()
                            >= 20)
                            .then_some(())
                    },
                    |_| String::new(),
                )
                .await;
            let versions = fleet.resources.lock().versions();
            let t0 = Instant::now();
            fleet.by_identity(&leader).signal(signal);
            let probe = format!("aa-{label}-{trial}");
            fleet.create(vec![probe.clone()], 700_000 + trial, 1).await;
            let t_probe = fleet
                .all_assigned(
                    "the failover probe",
                    std::slice::from_ref(&probe),
                    Duration::from_secs(120),
                )
                .await;
            burst_task.await.expect("creating the burst");
            fleet
                .all_assigned("the burst", &burst, Duration::from_secs(120))
                .await;
            let t_lease = fleet.leader_is(&standby, t0, Duration::from_secs(60)).await;
            fleet.leaders.push(standby.clone());
            fleet
                .by_identity(&leader)
                .wait_exit(Duration::from_secs(20))
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            {
                let s = fleet.resources.lock();
                for (name, before) in &versions {
                    if wanted.contains(name) {
                        continue;
                    }
                    if s.objects
                        .get(name)
                        .is_some_and(|o| o.resource_version != *before)
                    {
                        existing_writes += 1;
                    }
                }
                for b in &burst {
                    if s.objects.get(b).map_or(0, |o| o.writes) != 1 {
                        burst_not_one += 1;
                    }
                }
                bursts += burst.len();
            }
            let k = usize::from(signal == "KILL");
            takeover[k].push(t_lease.duration_since(t0));
            first_write[k].push(t_probe.duration_since(t0));
            println!(
                "bench: failover {label} SIG{signal}: Lease taken after {:?}, probe placed after {:?}",
                t_lease.duration_since(t0),
                t_probe.duration_since(t0)
            );
            // The next standby.
            leader = standby;
            serial += 1;
            standby = format!("ctl-{label}-{serial}");
            fleet.start(&standby, election);
            tokio::time::sleep(warm + jitter(trial + 1, election.retry)).await;
        }
        for (k, signal) in ["SIGTERM", "SIGKILL"].iter().enumerate() {
            if takeover[k].is_empty() {
                continue;
            }
            let (t, w) = (takeover[k].summary(), first_write[k].summary());
            let bound = if k == 0 {
                Duration::from_secs(1)
            } else {
                election.lease + election.retry + Duration::from_secs(1)
            };
            rows.push(vec![
                format!("{signal}, {label} timings ({})", election.describe()),
                t.count.to_string(),
                format!("{} / {} / {}", secs(t.p50), secs(t.p90), secs(t.max)),
                format!("{} / {} / {}", secs(w.p50), secs(w.p90), secs(w.max)),
                format!("{} s", secs(bound)),
            ]);
            goal_rows.push((
                format!("{signal} ({label} timings)"),
                w.max,
                bound,
                w.max <= bound,
            ));
        }
        current = Some(leader);
    }
    // Zero writes from two leaders at once: (1) every `Assigned` Event names the replica that
    // wrote (reportingInstance) and the resource; this process's watch saw the resourceVersion of
    // that resource's first write (etcd's revision, a global order). Sorted by it, each leader's
    // writes must form one run. (2) Every write is logged with a timestamp: an old leader's last
    // write must precede its successor's "leading" line.
    let events: Vec<Event> = Api::<Event>::namespaced(fleet.client.clone(), fleet.ns())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut by_rv: Vec<(u64, String)> = {
        let s = fleet.resources.lock();
        events
            .iter()
            .filter(|e| e.reporting_controller.as_deref() == Some(FIELD_MANAGER))
            .filter(|e| e.reason.as_deref() == Some("Assigned"))
            .filter_map(|e| {
                let name = e.regarding.as_ref()?.name.as_ref()?;
                Some((
                    s.objects.get(name)?.first_write?,
                    e.reporting_instance.clone()?,
                ))
            })
            .collect()
    };
    by_rv.sort_unstable();
    let mut runs: Vec<&str> = Vec::new();
    for (_, instance) in &by_rv {
        if runs.last() != Some(&instance.as_str()) {
            runs.push(instance);
        }
    }
    let distinct: HashSet<&str> = runs.iter().copied().collect();
    let interleavings = runs.len() - distinct.len();
    let mut log_overlaps = 0;
    for pair in fleet.leaders.windows(2) {
        let (old, new) = (fleet.by_identity(&pair[0]), fleet.by_identity(&pair[1]));
        let last_old = old
            .log_lines()
            .iter()
            .filter(|l| l.is_assignment())
            .map(|l| l.at)
            .max();
        let lead_new = new
            .log_lines()
            .iter()
            .find(|l| l.message.starts_with("leading: full pass"))
            .map(|l| l.at);
        if let (Some(a), Some(b)) = (last_old, lead_new)
            && a >= b
        {
            log_overlaps += 1;
            println!(
                "bench: OVERLAP: {} wrote at {a} after {} led at {b}",
                pair[0], pair[1]
            );
        }
    }
    report.section(
        "4. Leader failover with a warm standby, mid-flight",
        format!(
            "Each trial: the leader is placing a burst of 100 new resources when it gets the signal; right after the signal a probe resource (named to sort first in the new leader's full pass) is created. *Lease* is when this process's watch saw the standby's name in the Lease; *first write* is when it saw the probe placed, both from the signal. The goal column is lease duration + retry period + 1 s for SIGKILL, 1 s for SIGTERM.\n\n{}\nChecks over all trials: status writes to resources that existed before a trial: **{existing_writes}** (goal 0); burst resources written other than exactly once: **{burst_not_one}** of {bursts}.\n\nNo two leaders wrote at once: {} `Assigned` Events (each names the writing replica), sorted by the resourceVersion of the write they report as this process's watch saw it (etcd's global order), form {} runs for {} replicas: **{interleavings} interleavings**; by the logs, writes of an old leader after its successor started leading: **{log_overlaps}** over {} handovers.\n",
            table(&["signal", "trials", "Lease taken s (p50 / p90 / max)", "first write s (p50 / p90 / max)", "goal"], rows),
            by_rv.len(),
            runs.len(),
            distinct.len(),
            fleet.leaders.len().saturating_sub(1),
        ),
    );
    for (what, measured, bound, met) in goal_rows {
        let goal = if what.starts_with("SIGTERM") {
            "graceful failover <= 1 s"
        } else {
            "crash failover <= lease + retry + 1 s"
        };
        report.goal(
            &format!("{goal}: {what}"),
            format!("max {} s (bound {} s)", secs(measured), secs(bound)),
            Some(met),
        );
    }
    report.goal("0 writes on leader change (existing resources)", format!("{existing_writes}; burst written != 1 time: {burst_not_one}; interleaved leaders: {interleavings} (Events), {log_overlaps} (logs)"), Some(existing_writes == 0 && burst_not_one == 0 && interleavings == 0 && log_overlaps == 0));
}

/// A reproducible, evenly spread offset in `[0, period)` for trial `k` (golden-ratio sequence).
fn jitter(k: usize, period: Duration) -> Duration {
    let frac = (k as f64 * 0.618_033_988_749_895).fract();
    period.mul_f64(frac)
}

// === 6: footprint =================================================================================

fn footprint_section(fleet: &Fleet, cfg: &Config, report: &mut Report) {
    let rows: Vec<Vec<String>> = fleet
        .footprint
        .iter()
        .map(|(what, u)| {
            vec![
                what.clone(),
                mib(u.rss_kib),
                mib(u.hwm_kib),
                format!("{:.2}", u.cpu.as_secs_f64()),
            ]
        })
        .collect();
    let bulk = fleet
        .footprint
        .iter()
        .filter(|(w, _)| !w.starts_with("standby"))
        .map(|(_, u)| u.hwm_kib)
        .max()
        .unwrap_or(0);
    report.section(
        "6. Footprint of the controller (from /proc/<pid>/status and /stat)",
        format!(
            "{}\nThe worker's footprint per running task is in 6c.\n",
            table(
                &[
                    "process",
                    "VmRSS MiB",
                    "VmHWM (peak) MiB",
                    "CPU s since start"
                ],
                rows
            )
        ),
    );
    report.goal(
        &format!("controller RSS <= 64 MiB at {}", cfg.resources),
        format!("peak {} MiB (leaders)", mib(bulk)),
        Some(bulk > 0 && bulk <= 64 * 1024),
    );
}

async fn scenario_large(
    cp: &ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
) {
    let client = cp.client();
    let ns = cp.namespace("large").await;
    let n = cfg.large;
    create_workers(&client, ns.name(), cfg.workers).await;
    let names: Vec<String> = (0..n).map(|i| format!("r-{i:07}")).collect();
    let create_time = create_resources(&client, ns.name(), Arc::new(names.clone()), 0, 32).await;
    println!("bench: large: {n} created in {create_time:.1?}");
    let observer = resource_observer(&client, ns.name());
    observer
        .wait_for(
            "the large set to be seen",
            Duration::from_secs(600),
            |s| (s.synced && s.objects.len() >= n).then_some(()),
            |s| format!("{} seen", s.objects.len()),
        )
        .await;
    settle(pids, Duration::from_secs(120)).await;
    let cpu_before = CpuSnapshot::take(pids);
    let t0 = Instant::now();
    let c = Controller::start(
        cp,
        ns.name(),
        "ctl-large",
        cfg.concurrency,
        Election::DEFAULTS,
        cp.kubeconfig_path(),
    );
    observer
        .wait_for(
            "the large set to be assigned",
            Duration::from_secs((n as u64 / 20).max(300)),
            |s| (s.assigned() >= n).then_some(()),
            |s| format!("{} assigned", s.assigned()),
        )
        .await;
    let elapsed = t0.elapsed();
    let usage = c.usage();
    let cpu = CpuSnapshot::take(pids).since(&cpu_before);
    let (first, last) = {
        let s = observer.lock();
        (
            s.assignments.iter().map(|a| a.at).min(),
            s.assignments.iter().map(|a| a.at).max(),
        )
    };
    let rate = match (first, last) {
        (Some(f), Some(l)) => per_sec(n - 1, l.duration_since(f)),
        _ => 0.0,
    };
    cpu_rows.push(cpu_row(
        &format!("6. large: controller placing {n}"),
        n,
        &cpu,
        Some(usage.cpu),
    ));
    c.stop().await;
    report.section(
        &format!("6b. Large: {n} resources over {} workers", cfg.workers),
        table(
            &["", "value"],
            vec![
                vec![
                    "created in".into(),
                    format!("{create_time:.1?} ({:.0}/s)", per_sec(n, create_time)),
                ],
                vec![
                    "process start -> all assigned".into(),
                    format!("{} s", secs(elapsed)),
                ],
                vec!["assignments/s (first -> last)".into(), format!("{rate:.0}")],
                vec![
                    "controller RSS / peak RSS / CPU".into(),
                    format!(
                        "{} MiB / {} MiB / {:.2} s",
                        mib(usage.rss_kib),
                        mib(usage.hwm_kib),
                        usage.cpu.as_secs_f64()
                    ),
                ],
            ],
        ),
    );
    std::mem::forget(ns);
}

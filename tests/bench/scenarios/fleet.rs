//! Scenario 8: the fleet (issue 25). What N real worker processes cost the API server, counted
//! by the API server itself: its `apiserver_request_total` (labels verb, resource, code ...) is
//! scraped before and after windows of equal length, with the control plane alone, with the
//! controller alone, with N idle workers, and with N workers running `BENCH_FLEET_TASKS` tasks
//! each. Per-worker figures are differences of windows divided by N, so the controller's own cost
//! is a line of its own. Then a worker with tasks is crashed (SIGKILL), silently partitioned (its
//! connections to the API server pass no byte, no FIN) and paused (SIGSTOP, SIGCONT after the
//! lapse), at the binaries' default timings: no timing flag is passed to any process.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crawler_operator::{crd::CrawlerResource, heartbeat::lease_name};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::{
    Config, LEASE, command_line, create_workers, env_usize, mib, pool,
    procs::{Controller, CpuSnapshot, Election, ServerPids, Usage, controller_binary, metrics_at},
    report::{Report, table},
    scenarios::ceiling::{Ceiling, scenario_ceiling},
    settle,
    stats::Samples,
    support::{ControlPlane, proxy::Proxy, site::Site},
};

/// The fleet scenario's knobs (environment).
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `BENCH_FLEET_WORKERS` (100): worker processes.
    pub workers: usize,
    /// `BENCH_FLEET_WINDOW` (120): seconds per counting window; long enough for the slowest
    /// periodic request of a worker to come several times.
    pub window: Duration,
    /// `BENCH_FLEET_TASKS` (10): running tasks per worker in the busy window.
    pub tasks_per_worker: usize,
    /// `BENCH_FLEET_TASK_RATE` (1): requests per second of each task (its `spec.rateLimit`).
    pub task_rate: f64,
    /// `BENCH_FLEET_FAILOVER` (3): trials of each fault (crash, partition, pause); 0 skips them.
    pub failover_trials: usize,
    /// `BENCH_FLEET_CEILING_RESOURCES` (2000): objects of the quick ceiling measured when
    /// scenario 1 (`ceiling`) did not run.
    pub ceiling_resources: usize,
}

impl FleetConfig {
    pub fn from_env() -> Self {
        Self {
            workers: env_usize("BENCH_FLEET_WORKERS", 100),
            window: Duration::from_secs(env_usize("BENCH_FLEET_WINDOW", 120) as u64),
            tasks_per_worker: env_usize("BENCH_FLEET_TASKS", 10),
            task_rate: std::env::var("BENCH_FLEET_TASK_RATE").map_or(1.0, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("BENCH_FLEET_TASK_RATE={v}: not a number"))
            }),
            failover_trials: env_usize("BENCH_FLEET_FAILOVER", 3),
            ceiling_resources: env_usize("BENCH_FLEET_CEILING_RESOURCES", 2000),
        }
    }
}

/// A write to the API server, by `apiserver_request_total`'s verb.
fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" | "CREATE" | "UPDATE"
    )
}

/// `key="value",...` (the inside of a sample's braces).
fn labels(text: &str) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',');
        let after = &rest[eq + 2..];
        let Some(end) = after.find('"') else { break };
        out.insert(key, &after[..end]);
        rest = &after[end + 1..];
    }
    out
}

/// What one scrape of the API server's `/metrics` says.
#[derive(Clone, Debug, Default)]
struct Scrape {
    /// `apiserver_request_total` by (verb, resource[/subresource]); non-resource URLs
    /// (`/metrics`, `/healthz`) left out.
    requests: BTreeMap<(String, String), f64>,
    /// The same, answered with a code other than 2xx, by (verb, resource, code).
    failed: BTreeMap<(String, String, String), f64>,
    /// `apiserver_longrunning_requests` of verb WATCH by resource: watches open now.
    watches: BTreeMap<String, f64>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if name != "apiserver_request_total" && name != "apiserver_longrunning_requests" {
            continue;
        }
        let Some((inside, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let l = labels(inside);
        let resource = l.get("resource").copied().unwrap_or_default();
        if resource.is_empty() {
            continue;
        }
        let sub = l.get("subresource").copied().unwrap_or_default();
        let resource = if sub.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{sub}")
        };
        let verb = l.get("verb").copied().unwrap_or_default().to_owned();
        if name == "apiserver_longrunning_requests" {
            if verb == "WATCH" {
                *out.watches.entry(resource).or_default() += value;
            }
            continue;
        }
        let code = l.get("code").copied().unwrap_or_default();
        if !code.starts_with('2') {
            *out.failed
                .entry((verb.clone(), resource.clone(), code.to_owned()))
                .or_default() += value;
        }
        *out.requests.entry((verb, resource)).or_default() += value;
    }
    out
}

async fn scrape(client: &Client) -> Scrape {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET /metrics request");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    parse_scrape(&text)
}

/// The worker processes of the fleet.
struct Workers {
    procs: Vec<Controller>,
    names: Vec<String>,
    /// Where each serves `/metrics` (read from its log once).
    addrs: Vec<Option<String>>,
    /// The proxies of the workers that reach the API server through one (partition victims).
    proxies: BTreeMap<usize, Proxy>,
    /// Workers not to ask for their metrics (paused: they would not answer).
    paused: HashSet<usize>,
}

impl Workers {
    /// `crawler_worker_running_tasks` of each worker (`None`: not alive, paused, or not
    /// answering yet).
    fn running(&mut self) -> Vec<Option<usize>> {
        let n = self.procs.len();
        tokio::task::block_in_place(|| {
            (0..n)
                .map(|i| {
                    if self.paused.contains(&i) || !self.procs[i].is_alive() {
                        return None;
                    }
                    if self.addrs[i].is_none() {
                        self.addrs[i] = self.procs[i].metrics_addr();
                    }
                    let text = metrics_at(self.addrs[i].as_deref()?)?;
                    let v = Controller::metric_sum(&text, "crawler_worker_running_tasks", "");
                    Some(v.round() as usize)
                })
                .collect()
        })
    }

    fn usage(&self) -> Vec<Usage> {
        self.procs
            .iter()
            .enumerate()
            .filter(|(i, p)| !self.paused.contains(i) && p.is_alive())
            .map(|(_, p)| p.usage())
            .collect()
    }

    /// SIGTERM to every live worker, then waits (SIGKILL after 30 s).
    async fn stop_all(&mut self) {
        for i in self.paused.drain() {
            if self.procs[i].is_alive() {
                self.procs[i].signal("CONT");
            }
        }
        for p in self.procs.iter().filter(|p| p.is_alive()) {
            p.signal("TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.procs.iter().any(Controller::is_alive) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in self.procs.iter().filter(|p| p.is_alive()) {
            eprintln!(
                "bench: fleet: {} still running 30 s after SIGTERM: SIGKILL",
                p.identity
            );
            p.signal("KILL");
        }
    }
}

/// Memory and CPU of the workers over a window.
#[derive(Clone, Copy, Debug, Default)]
struct WorkersUse {
    count: usize,
    /// CPU seconds per second, all workers together.
    cpu: f64,
    rss_mean_kib: f64,
    rss_max_kib: u64,
}

/// One counting window.
#[derive(Clone, Debug, Default)]
struct Window {
    label: String,
    wall: Duration,
    /// Requests per second by (verb, resource).
    rates: BTreeMap<(String, String), f64>,
    /// Requests answered other than 2xx in the window, by (verb, resource, code).
    failed: BTreeMap<(String, String, String), f64>,
    /// Watches open at the window's end.
    watches: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    /// The controller's CPU s/s and RSS at the end.
    controller: Option<(f64, u64)>,
    workers: Option<WorkersUse>,
    /// Pages the local sites served per second.
    pages: Option<f64>,
    /// Running tasks (all workers) at the window's start and end.
    running: Option<(usize, usize)>,
}

impl Window {
    fn requests(&self) -> f64 {
        self.rates.values().sum()
    }

    fn writes(&self) -> f64 {
        self.rates
            .iter()
            .filter(|((verb, _), _)| is_write(verb))
            .map(|(_, r)| r)
            .sum()
    }

    fn rate(&self, key: &(String, String)) -> f64 {
        self.rates.get(key).copied().unwrap_or_default()
    }
}

/// Counts one window of `length`.
async fn measure(
    label: &str,
    client: &Client,
    pids: ServerPids,
    length: Duration,
    controller: Option<&Controller>,
    workers: Option<&Workers>,
    sites: &[(String, Site)],
) -> Window {
    println!("bench: fleet: window \"{label}\" ({length:?}) starts");
    let pages = |sites: &[(String, Site)]| -> usize {
        sites.iter().map(|(task, site)| site.hits(task).len()).sum()
    };
    let before = scrape(client).await;
    let cpu_before = CpuSnapshot::take(pids);
    let controller_before = controller.map(Controller::usage);
    let workers_before: u128 = workers.map_or(0, |w| {
        w.usage().iter().map(|u| u.cpu.as_micros()).sum::<u128>()
    });
    let pages_before = pages(sites);
    tokio::time::sleep(length).await;
    let after = scrape(client).await;
    let cpu = CpuSnapshot::take(pids).since(&cpu_before);
    let wall = cpu.wall.as_secs_f64().max(1e-3);
    let rates = after
        .requests
        .iter()
        .map(|(k, v)| {
            let before = before.requests.get(k).copied().unwrap_or_default();
            (k.clone(), (v - before).max(0.0) / wall)
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    let failed = after
        .failed
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - before.failed.get(k).copied().unwrap_or_default(),
            )
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    let controller = controller.zip(controller_before).map(|(c, before)| {
        let now = c.usage();
        (
            now.cpu.saturating_sub(before.cpu).as_secs_f64() / wall,
            now.rss_kib,
        )
    });
    let workers = workers.map(|w| {
        let usage = w.usage();
        let cpu: u128 = usage.iter().map(|u| u.cpu.as_micros()).sum();
        let count = usage.len();
        WorkersUse {
            count,
            cpu: cpu.saturating_sub(workers_before) as f64 / 1e6 / wall,
            rss_mean_kib: usage.iter().map(|u| u.rss_kib as f64).sum::<f64>() / count.max(1) as f64,
            rss_max_kib: usage.iter().map(|u| u.rss_kib).max().unwrap_or(0),
        }
    });
    let window = Window {
        label: label.to_owned(),
        wall: cpu.wall,
        rates,
        failed,
        watches: after.watches.values().sum(),
        apiserver_cpu: cpu.apiserver.as_secs_f64() / wall,
        etcd_cpu: cpu.etcd.as_secs_f64() / wall,
        controller,
        workers,
        pages: (!sites.is_empty()).then(|| (pages(sites) - pages_before) as f64 / wall),
        running: None,
    };
    println!(
        "bench: fleet: window \"{label}\": {:.2} requests/s, {:.2} writes/s",
        window.requests(),
        window.writes()
    );
    window
}

/// The loopback address of task `i`'s site: a host of its own (so neither the controller's host
/// affinity nor a worker's per-host budget ties tasks together).
fn task_ip(i: usize) -> String {
    format!("127.77.{}.{}", i / 250, i % 250 + 1)
}

/// A copy of the admin kubeconfig that reaches the API server through `proxy`.
fn kubeconfig_via(cp: &ControlPlane, proxy: &Proxy, who: &str) -> PathBuf {
    let text = std::fs::read_to_string(cp.kubeconfig_path()).expect("reading the kubeconfig");
    let via = text.replace(&cp.server_url(), &format!("https://{}", proxy.addr()));
    let path = cp.dir().join(format!("fleet-{who}-via-proxy.kubeconfig"));
    std::fs::write(&path, via).expect("writing the proxied kubeconfig");
    path
}

async fn wait_leader(client: &Client, ns: &str, identity: &str, timeout: Duration) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let holder = api
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity);
        if holder.as_deref() == Some(identity) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "bench: fleet: {identity} did not lead within {timeout:?} (holder {holder:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every worker's heartbeat Lease exists and every worker answers on `/metrics`.
async fn wait_workers_up(client: &Client, ns: &str, workers: &mut Workers, timeout: Duration) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let wanted: BTreeSet<String> = workers.names.iter().map(|p| lease_name(p)).collect();
    let started = Instant::now();
    loop {
        let have: BTreeSet<String> = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
            .unwrap_or_default();
        let leases = wanted.intersection(&have).count();
        let answering = workers.running().iter().filter(|r| r.is_some()).count();
        if leases == wanted.len() && answering == wanted.len() {
            println!(
                "bench: fleet: {} workers up (heartbeat Leases, /metrics) after {:.1?}",
                wanted.len(),
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "bench: fleet: after {timeout:?} only {leases} of {} heartbeat Leases exist and {answering} workers answer",
            wanted.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits (at most `timeout`, without failing) until the workers run `total` tasks in all;
/// returns how many they ran when it stopped waiting.
async fn wait_running(workers: &mut Workers, total: usize, timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        let running: usize = workers.running().iter().flatten().sum();
        if running >= total || started.elapsed() >= timeout {
            println!(
                "bench: fleet: {running} of {total} tasks running after {:.1?}",
                started.elapsed()
            );
            return running;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Crash,
    Partition,
    Pause,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Crash, Fault::Partition, Fault::Pause];

    fn describe(self) -> &'static str {
        match self {
            Fault::Crash => "crash (SIGKILL)",
            Fault::Partition => {
                "silent partition (its connections to the API server, open and new, pass no byte; healed after the move)"
            }
            Fault::Pause => "pause (SIGSTOP; SIGCONT after the move)",
        }
    }
}

/// What one failover trial measured.
#[derive(Clone, Debug)]
struct Trial {
    tasks: usize,
    /// Tasks that ran elsewhere before the trial's timeout.
    moved: usize,
    /// From the fault to the first request of a task from another worker: the first task, the
    /// last task.
    first: Duration,
    all: Option<Duration>,
    /// The victim's last request (any of its tasks) after the fault.
    victim_last: Duration,
    /// The victim's requests for a task after another worker's first request for it.
    late: usize,
    /// The smallest gap from the victim's last request for a task to the new worker's first, ms
    /// (negative: they overlapped).
    min_gap_ms: i128,
}

fn signed_ms(later: Instant, earlier: Instant) -> i128 {
    if later >= earlier {
        i128::try_from((later - earlier).as_millis()).unwrap_or(i128::MAX)
    } else {
        -i128::try_from((earlier - later).as_millis()).unwrap_or(i128::MAX)
    }
}

/// One fault on worker `victim`: applies it, waits until each of its tasks is fetched by another
/// worker, heals it (partition, pause), lets the victim wind down, and judges from the sites'
/// request logs.
async fn failover_trial(
    fault: Fault,
    victim: usize,
    workers: &mut Workers,
    api: &Api<CrawlerResource>,
    sites: &BTreeMap<&str, &Site>,
    timeout: Duration,
) -> Option<Trial> {
    let pod = workers.names[victim].clone();
    let tasks: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("listing the fleet's resources")
        .items
        .iter()
        .filter(|r| {
            r.status.as_ref().and_then(|s| s.assigned_worker.as_deref()) == Some(pod.as_str())
        })
        .map(ResourceExt::name_any)
        .collect();
    if tasks.is_empty() {
        println!("bench: fleet: {pod} has no task: no {fault:?} trial on it");
        return None;
    }
    let t0 = Instant::now();
    match fault {
        Fault::Crash => workers.procs[victim].signal("KILL"),
        Fault::Partition => {
            let frozen = workers.proxies[&victim].freeze_all();
            println!("bench: fleet: {pod}: {frozen} connections frozen");
        }
        Fault::Pause => {
            workers.paused.insert(victim);
            workers.procs[victim].signal("STOP");
        }
    }
    let mut elsewhere: BTreeMap<&str, Instant> = BTreeMap::new();
    while elsewhere.len() < tasks.len() && t0.elapsed() < timeout {
        for t in &tasks {
            if elsewhere.contains_key(t.as_str()) {
                continue;
            }
            if let Some(at) = sites[t.as_str()]
                .hits(t)
                .iter()
                .filter(|h| h.at > t0 && h.worker != pod)
                .map(|h| h.at)
                .min()
            {
                elsewhere.insert(t.as_str(), at);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match fault {
        Fault::Crash => {}
        Fault::Partition => workers.proxies[&victim].thaw(),
        Fault::Pause => {
            workers.procs[victim].signal("CONT");
            workers.paused.remove(&victim);
        }
    }
    // The healed victim winds down (it finds its tasks moved); its requests meanwhile count.
    if fault != Fault::Crash {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if workers.running()[victim] == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut late = 0;
    let mut min_gap_ms = i128::MAX;
    let mut victim_last = Duration::ZERO;
    for t in &tasks {
        let hits = sites[t.as_str()].hits(t);
        let old: Vec<Instant> = hits
            .iter()
            .filter(|h| h.worker == pod)
            .map(|h| h.at)
            .collect();
        if let Some(last) = old.iter().max() {
            victim_last = victim_last.max(last.saturating_duration_since(t0));
        }
        if let Some(&new) = elsewhere.get(t.as_str()) {
            late += old.iter().filter(|at| **at > new).count();
            if let Some(&last) = old.iter().filter(|at| **at <= new).max() {
                min_gap_ms = min_gap_ms.min(signed_ms(new, last));
            }
        }
    }
    let first = elsewhere.values().min().map(|at| at.duration_since(t0));
    let all = (elsewhere.len() == tasks.len())
        .then(|| elsewhere.values().max().map(|at| at.duration_since(t0)))
        .flatten();
    println!(
        "bench: fleet: {fault:?} of {pod}: {} of {} tasks elsewhere, first after {first:?}, all after {all:?}; the victim's last request {victim_last:?} after the fault, {late} after the new worker's first",
        elsewhere.len(),
        tasks.len()
    );
    Some(Trial {
        tasks: tasks.len(),
        moved: elsewhere.len(),
        first: first.unwrap_or_default(),
        all,
        victim_last,
        late,
        min_gap_ms,
    })
}

/// The default of `flag` in `crawler-operator worker --help` (e.g. `10s`), or "?".
fn worker_default(help: &str, flag: &str) -> String {
    let Some(at) = help.find(flag) else {
        return "?".to_owned();
    };
    help[at..]
        .split("[default: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or("?")
        .to_owned()
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

pub(crate) async fn run(
    cp: &ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    ceiling: Option<Ceiling>,
    report: &mut Report,
) {
    let fc = &cfg.fleet;
    let n = fc.workers;
    let client = cp.client();
    let started = Instant::now();

    // The write ceiling this run's figures are compared with.
    let (c_raw, c_source) = if let Some(c) = ceiling {
        (c.rate, "scenario 1 of this run".to_owned())
    } else {
        let quick = Config {
            resources: fc.ceiling_resources,
            ..cfg.clone()
        };
        let mut scratch = Report::default();
        let c = scenario_ceiling(cp, &quick, pids, &mut scratch, &mut Vec::new()).await;
        (
            c.rate,
            format!(
                "measured for this scenario as scenario 1 measures it (its first pass: server-side apply of the controller's status on {} fresh objects, {} in flight)",
                fc.ceiling_resources, cfg.concurrency
            ),
        )
    };

    let ns = cp.namespace("fleet").await;
    create_workers(&client, ns.name(), n).await;
    let names: Vec<String> = (0..n).map(|i| format!("worker-{i:03}")).collect();
    let no_sites: Vec<(String, Site)> = Vec::new();

    // 1. The control plane alone, then with the controller alone.
    settle(pids, Duration::from_secs(60)).await;
    let background = measure(
        "control plane alone",
        &client,
        pids,
        fc.window,
        None,
        None,
        &no_sites,
    )
    .await;
    let controller = Controller::start(
        cp,
        ns.name(),
        "fleet-controller",
        cfg.concurrency,
        Election::DEFAULTS,
        cp.kubeconfig_path(),
    );
    wait_leader(
        &client,
        ns.name(),
        "fleet-controller",
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alone = measure(
        "controller alone",
        &client,
        pids,
        fc.window,
        Some(&controller),
        None,
        &no_sites,
    )
    .await;

    // 2. N idle workers. The partition victims reach the API server through a proxy each.
    let trials = fc.failover_trials.min(n.saturating_sub(1) / 3);
    let mut workers = Workers {
        procs: Vec::with_capacity(n),
        names: names.clone(),
        addrs: vec![None; n],
        proxies: BTreeMap::new(),
        paused: HashSet::new(),
    };
    for (i, pod) in names.iter().enumerate() {
        let output = cp.dir().join(format!("fleet-{pod}.jsonl"));
        let process = if (trials..2 * trials).contains(&i) {
            let proxy = Proxy::start(cp.apiserver_addr());
            let kubeconfig = kubeconfig_via(cp, &proxy, pod);
            workers.proxies.insert(i, proxy);
            Controller::start_worker_via(cp, ns.name(), pod, &output, &kubeconfig)
        } else {
            Controller::start_worker(cp, ns.name(), pod, &output)
        };
        workers.procs.push(process);
    }
    wait_workers_up(&client, ns.name(), &mut workers, Duration::from_secs(300)).await;
    settle(pids, Duration::from_secs(60)).await;
    // Past the start: every worker's first LISTs and Lease creation are behind it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut idle = measure(
        &format!("controller + {n} idle workers"),
        &client,
        pids,
        fc.window,
        Some(&controller),
        Some(&workers),
        &no_sites,
    )
    .await;
    idle.running = Some((0, workers.running().iter().flatten().sum()));

    // 3. Busy: tasks_per_worker endless crawls per worker, each on a loopback host of its own.
    let total = n * fc.tasks_per_worker;
    let mut sites: Vec<(String, Site)> = Vec::with_capacity(total);
    for i in 0..total {
        sites.push((format!("t-{i:05}"), Site::start_on(&task_ip(i)).await));
    }
    let bodies: Arc<Vec<CrawlerResource>> = Arc::new(
        sites
            .iter()
            .map(|(name, site)| {
                serde_json::from_value(json!({
                    "apiVersion": "crawler.dev/v1alpha1",
                    "kind": "CrawlerResource",
                    "metadata": { "name": name },
                    "spec": {
                        "seeds": [site.seed(name)],
                        "maxDepth": 10,
                        "rateLimit": { "requestsPerSecond": fc.task_rate, "burst": 1 },
                    },
                }))
                .expect("a valid CrawlerResource")
            })
            .collect(),
    );
    let api: Api<CrawlerResource> = Api::namespaced(client.clone(), ns.name());
    {
        let (api, bodies) = (api.clone(), Arc::clone(&bodies));
        let logs: Arc<str> = cp.logs().into();
        pool(total, 32, move |i| {
            let (api, bodies, logs) = (api.clone(), Arc::clone(&bodies), Arc::clone(&logs));
            async move {
                // The busy fleet's first progress writes load the API server while the rest are
                // created: a connection error is retried (409: an earlier attempt landed).
                for attempt in 1.. {
                    match api.create(&PostParams::default(), &bodies[i]).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(s)) if s.code == 409 => return,
                        Err(e) if attempt < 10 => {
                            eprintln!(
                                "bench: fleet: creating {} (attempt {attempt}): {e}",
                                bodies[i].name_any()
                            );
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        // Given up, not a panic: the report says how many tasks ran (at 100
                        // workers x 10 tasks the bench's API server stopped answering twice,
                        // from the 500th-770th creation on, when the fleet shared it with the
                        // earlier scenarios' 100,000 objects; BENCHMARKS.md section 8).
                        Err(e) => {
                            eprintln!(
                                "bench: fleet: gave up creating {}: {e} (the servers' logs: {logs})",
                                bodies[i].name_any()
                            );
                            return;
                        }
                    }
                }
            }
        })
        .await;
    }
    let reached = wait_running(
        &mut workers,
        total,
        Duration::from_secs((total as u64 / 5).max(180)),
    )
    .await;
    let per_worker = workers.running();
    let spread = (
        per_worker.iter().flatten().min().copied().unwrap_or(0),
        per_worker.iter().flatten().max().copied().unwrap_or(0),
    );
    // Every task past its start (robots.txt, the first progress report), and past its first
    // write of page counts, which comes one --progress-interval after the start: the window then
    // sees the steady cadence (a window of whole intervals sees each task's counts equally often).
    let help = command_line(controller_binary(), &["worker", "--help"]);
    let interval = humantime::parse_duration(&worker_default(&help, "--progress-interval"))
        .unwrap_or(Duration::from_secs(2));
    tokio::time::sleep(interval.max(Duration::from_secs(10)) + Duration::from_secs(2)).await;
    let at_start: usize = workers.running().iter().flatten().sum();
    let mut busy = measure(
        &format!(
            "controller + {n} workers, {} running tasks each",
            fc.tasks_per_worker
        ),
        &client,
        pids,
        fc.window,
        Some(&controller),
        Some(&workers),
        &sites,
    )
    .await;
    let at_end: usize = workers.running().iter().flatten().sum();
    busy.running = Some((at_start, at_end));

    // 4. Failover at the default timings.
    let by_task: BTreeMap<&str, &Site> = sites.iter().map(|(t, s)| (t.as_str(), s)).collect();
    let mut results: Vec<(Fault, Vec<Trial>)> = Vec::new();
    for (k, fault) in Fault::ALL.into_iter().enumerate() {
        let mut done = Vec::new();
        for j in 0..trials {
            if let Some(t) = failover_trial(
                fault,
                k * trials + j,
                &mut workers,
                &api,
                &by_task,
                Duration::from_secs(600),
            )
            .await
            {
                done.push(t);
            }
        }
        results.push((fault, done));
    }

    workers.stop_all().await;
    controller.stop().await;
    std::mem::forget(ns);

    render(
        report,
        cfg,
        &Figures {
            c_raw,
            c_source,
            background,
            alone,
            idle,
            busy,
            reached,
            spread,
            trials,
            results,
            elapsed: started.elapsed(),
        },
    );
}

struct Figures {
    c_raw: f64,
    c_source: String,
    background: Window,
    alone: Window,
    idle: Window,
    busy: Window,
    /// Tasks running when the wait for all of them ended, and the fewest / most on one worker.
    reached: usize,
    spread: (usize, usize),
    trials: usize,
    results: Vec<(Fault, Vec<Trial>)>,
    elapsed: Duration,
}

fn render(report: &mut Report, cfg: &Config, f: &Figures) {
    let fc = &cfg.fleet;
    let n = fc.workers as f64;
    let help = command_line(controller_binary(), &["worker", "--help"]);
    let timings = format!(
        "`--heartbeat-duration` {}, `--progress-interval` {} (the worker's defaults at this commit; no timing flag is passed to any process)",
        worker_default(&help, "--heartbeat-duration"),
        worker_default(&help, "--progress-interval"),
    );
    let (bg, al, idle, busy) = (&f.background, &f.alone, &f.idle, &f.busy);
    let running_busy = busy.running.map_or(0.0, |(a, b)| (a + b) as f64 / 2.0);

    // The windows side by side.
    let window_row = |w: &Window| -> Vec<String> {
        vec![
            w.label.clone(),
            format!("{:.0}", w.wall.as_secs_f64()),
            f2(w.requests()),
            f2(w.writes()),
            format!("{:.0}", w.watches),
            f2(w.apiserver_cpu),
            f2(w.etcd_cpu),
            w.controller.map_or("-".to_owned(), |(cpu, rss)| {
                format!("{cpu:.3} / {}", mib(rss))
            }),
            w.workers.map_or("-".to_owned(), |u| {
                format!(
                    "{} / {} / {}",
                    mib(u.rss_mean_kib as u64),
                    mib(u.rss_max_kib),
                    f3(u.cpu / u.count.max(1) as f64)
                )
            }),
            w.running
                .map_or("-".to_owned(), |(a, b)| format!("{a} -> {b}")),
            w.pages.map_or("-".to_owned(), |p| format!("{p:.0}")),
        ]
    };
    let windows = table(
        &[
            "window",
            "s",
            "requests/s",
            "writes/s",
            "watches open at the end",
            "kube-apiserver CPU s/s",
            "etcd CPU s/s",
            "controller CPU s/s / RSS MiB",
            "worker RSS MiB mean / max / CPU s/s each",
            "running tasks (start -> end)",
            "pages/s fetched",
        ],
        [bg, al, idle, busy].into_iter().map(window_row).collect(),
    );

    // Derived lines.
    let per_idle = |w: fn(&Window) -> f64| (w(idle) - w(al)) / n;
    let per_busy = |w: fn(&Window) -> f64| (w(busy) - w(al)) / n;
    let per_task = |w: fn(&Window) -> f64| {
        if running_busy > 0.0 {
            (w(busy) - w(idle)) / running_busy
        } else {
            0.0
        }
    };
    let derived = table(
        &["line", "requests/s", "writes/s", "how"],
        vec![
            vec![
                "the control plane alone (its own leases and controllers)".into(),
                f3(bg.requests()),
                f3(bg.writes()),
                "window 1".into(),
            ],
            vec![
                "**the controller**, no worker running".into(),
                f3(al.requests() - bg.requests()),
                f3(al.writes() - bg.writes()),
                "window 2 - window 1".into(),
            ],
            vec![
                "**per idle worker**".into(),
                format!("**{}**", f3(per_idle(Window::requests))),
                format!("**{}**", f3(per_idle(Window::writes))),
                format!("(window 3 - window 2) / {}", fc.workers),
            ],
            vec![
                format!("**per worker with {} running tasks**", fc.tasks_per_worker),
                format!("**{}**", f3(per_busy(Window::requests))),
                format!("**{}**", f3(per_busy(Window::writes))),
                format!("(window 4 - window 2) / {}", fc.workers),
            ],
            vec![
                "**per running task**".into(),
                format!("**{}**", f3(per_task(Window::requests))),
                format!("**{}**", f3(per_task(Window::writes))),
                format!("(window 4 - window 3) / {running_busy:.0} running tasks"),
            ],
        ],
    );

    // By verb and resource.
    let keys: BTreeSet<&(String, String)> = [bg, al, idle, busy]
        .iter()
        .flat_map(|w| w.rates.keys())
        .collect();
    let mut keyed: Vec<&(String, String)> = keys
        .into_iter()
        .filter(|k| [bg, al, idle, busy].iter().any(|w| w.rate(k) >= 0.005))
        .collect();
    keyed.sort_by(|a, b| busy.rate(b).total_cmp(&busy.rate(a)));
    let by_verb = table(
        &[
            "verb",
            "resource",
            "control plane alone /s",
            "controller alone /s",
            "idle fleet /s",
            "busy fleet /s",
            "per idle worker /s",
            "per busy worker /s",
        ],
        keyed
            .iter()
            .map(|k| {
                vec![
                    if is_write(&k.0) {
                        format!("**{}**", k.0)
                    } else {
                        k.0.clone()
                    },
                    k.1.clone(),
                    f3(bg.rate(k)),
                    f3(al.rate(k)),
                    f3(idle.rate(k)),
                    f3(busy.rate(k)),
                    f3((idle.rate(k) - al.rate(k)) / n),
                    f3((busy.rate(k) - al.rate(k)) / n),
                ]
            })
            .collect(),
    );
    let failed: Vec<String> = [bg, al, idle, busy]
        .iter()
        .flat_map(|w| {
            w.failed.iter().map(move |((verb, res, code), count)| {
                format!("{}: {verb} {res} {code} x{count:.0}", w.label)
            })
        })
        .collect();

    // Projection (linear in the number of workers).
    let ctl_cpu = |w: &Window| w.controller.map_or(0.0, |(c, _)| c);
    let project = |fleet: f64, w: &Window| -> (f64, f64, f64, f64) {
        let per = |v: f64, base: f64| base + fleet * (v - base) / n;
        (
            per(w.requests(), al.requests()),
            per(w.writes(), al.writes()),
            per(ctl_cpu(w), ctl_cpu(al)),
            per(w.apiserver_cpu, al.apiserver_cpu),
        )
    };
    let mut projection = Vec::new();
    for fleet in [fc.workers, 1_000, 10_000] {
        for (state, w) in [
            ("idle", idle),
            (
                if fc.tasks_per_worker == 10 {
                    "10 running tasks each"
                } else {
                    "busy"
                },
                busy,
            ),
        ] {
            let (req, wr, ctl, api) = project(fleet as f64, w);
            projection.push(vec![
                format!(
                    "{fleet}{}",
                    if fleet == fc.workers {
                        " (measured)"
                    } else {
                        ""
                    }
                ),
                state.to_owned(),
                format!("{req:.0}"),
                format!("{wr:.0}"),
                format!("**{}**", pct(wr / f.c_raw.max(1e-9))),
                f2(ctl),
                f2(api),
            ]);
        }
    }
    let projection = table(
        &[
            "workers",
            "state",
            "requests/s",
            "writes/s",
            "of the write ceiling",
            "controller CPU (cores)",
            "kube-apiserver CPU (cores)",
        ],
        projection,
    );

    report.section(
        &format!(
            "8. Fleet: what {} worker processes cost the API server (its apiserver_request_total)",
            fc.workers
        ),
        format!(
            "{} real worker processes (release build, each playing a ready Pod and renewing its own heartbeat Lease, as `crawler-operator worker` does in a Pod) and one controller, in a namespace of their own; timings: {timings}. The API server's `apiserver_request_total` is scraped before and after each window of {:.0} s (a WATCH is counted when it ends; non-resource URLs such as `/metrics` are left out); nothing else of this benchmark talks to the API server during a window. Busy: {} tasks per worker, each an endless crawl (depth 10) of a loopback site of its own (127.77.x.y, so host affinity and the per-host budget leave placement to the load) at {} request/s; {} of {} tasks were running when the wait for them ended (fewest / most on one worker: {} / {}).\n\n{windows}\n{derived}\nBy verb and resource (writes in bold; rows under 0.005/s everywhere left out):\n\n{by_verb}\n{}\n**Write ceiling** C_raw = **{:.0} writes/s**, {}. The busy fleet's writes in all: **{:.1} writes/s = {} of the ceiling**.\n\nProjection, linear in the number of workers from the measured per-worker lines above (the controller's own line counted once; a fleet this large also costs the API server more per watch event, so read these as lower bounds):\n\n{projection}",
            fc.workers,
            fc.window.as_secs_f64(),
            fc.tasks_per_worker,
            fc.task_rate,
            f.reached,
            fc.workers * fc.tasks_per_worker,
            f.spread.0,
            f.spread.1,
            if failed.is_empty() {
                "Requests answered other than 2xx: none.\n".to_owned()
            } else {
                format!(
                    "Requests answered other than 2xx (count in the window): {}.\n",
                    failed.join("; ")
                )
            },
            f.c_raw,
            f.c_source,
            busy.writes(),
            pct(busy.writes() / f.c_raw.max(1e-9)),
        ),
    );

    // Failover.
    let mut rows = Vec::new();
    let mut late_all = 0;
    let mut judged = 0;
    for (fault, trials) in &f.results {
        if trials.is_empty() {
            continue;
        }
        let firsts: Samples = trials.iter().map(|t| t.first).collect();
        let alls: Samples = trials.iter().filter_map(|t| t.all).collect();
        let lasts: Samples = trials.iter().map(|t| t.victim_last).collect();
        let late: usize = trials.iter().map(|t| t.late).sum();
        late_all += late;
        judged += trials.len();
        let gap = trials
            .iter()
            .map(|t| t.min_gap_ms)
            .min()
            .unwrap_or(i128::MAX);
        let (fs, als, ls) = (firsts.summary(), alls.summary(), lasts.summary());
        rows.push(vec![
            fault.describe().to_owned(),
            trials.len().to_string(),
            format!(
                "{} of {}",
                trials.iter().map(|t| t.moved).sum::<usize>(),
                trials.iter().map(|t| t.tasks).sum::<usize>()
            ),
            format!("{:.1}", fs.p50.as_secs_f64()),
            if als.count == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.1} / {:.1}",
                    als.p50.as_secs_f64(),
                    als.max.as_secs_f64()
                )
            },
            format!("{:.1}", ls.max.as_secs_f64()),
            format!("**{late}**"),
            if gap == i128::MAX {
                "-".to_owned()
            } else {
                gap.to_string()
            },
        ]);
    }
    if f.trials > 0 {
        report.section(
            "8b. Fleet failover at the default timings",
            format!(
                "During the busy window's crawl, a worker with tasks gets a fault; trials run one after the other on different workers ({} of each fault). *Elsewhere*: from the fault to a task's first request from another worker, read from the task's own site's request log (the User-Agent names the worker). *Old worker after the new one*: requests of the faulted worker for a task after another worker's first request for it (the goal is 0). Timings: {timings}.\n\n{}\nScenario 8 took {:.0} s in all.\n",
                f.trials,
                table(
                    &[
                        "fault",
                        "trials",
                        "tasks moved",
                        "first task elsewhere s (p50)",
                        "all its tasks elsewhere s (p50 / max)",
                        "old worker's last request after the fault s (max)",
                        "old worker's requests after the new one's first",
                        "smallest handover gap ms",
                    ],
                    rows
                ),
                f.elapsed.as_secs_f64(),
            ),
        );
    }

    let (iw, ir) = (per_idle(Window::writes), per_idle(Window::requests));
    report.goal(
        "idle worker <= 0.10 writes/s (issue 25)",
        format!("{iw:.3} writes/s ({} workers)", fc.workers),
        Some(iw <= 0.10),
    );
    report.goal(
        "idle worker <= 0.3 requests/s (issue 25)",
        format!("{ir:.3} requests/s"),
        Some(ir <= 0.3),
    );
    let share = busy.writes() / f.c_raw.max(1e-9);
    report.goal(
        &format!(
            "{} workers x {} running tasks <= 20 % of the write ceiling (issue 25)",
            fc.workers, fc.tasks_per_worker
        ),
        format!(
            "{:.1} writes/s = {} of C_raw {:.0}",
            busy.writes(),
            pct(share),
            f.c_raw
        ),
        Some(share <= 0.2),
    );
    if judged > 0 {
        report.goal(
            "worker failover: the old worker makes no request after the new one started (issue 25)",
            format!("{late_all} over {judged} trials (crash, partition, pause)"),
            Some(late_all == 0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::float_cmp)] // small integers, exact in f64
    fn a_scrape_sums_by_verb_and_resource() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="APPLY",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="APPLY",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="crawler.dev",resource="crawlerresources",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 3
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 9
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="WATCH",version="v1"} 4
"#;
        let s = parse_scrape(text);
        assert_eq!(s.requests[&("APPLY".into(), "leases".into())], 9.0);
        assert_eq!(
            s.requests[&("PATCH".into(), "crawlerresources/status".into())],
            3.0
        );
        assert_eq!(s.requests.len(), 2, "non-resource URLs are left out");
        assert_eq!(
            s.failed[&("APPLY".into(), "leases".into(), "409".into())],
            2.0
        );
        assert_eq!(s.watches["pods"], 4.0);
        assert!(is_write("APPLY") && !is_write("WATCH") && !is_write("LIST"));
    }
}

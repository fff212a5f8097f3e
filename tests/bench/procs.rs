//! The controller processes under test (the real binary, under the harness's guardian), and what
//! `/proc` says about them and about etcd and kube-apiserver.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use jiff::Timestamp;

use crate::support::{ControlPlane, process::Server};

/// The controller binary this benchmark was built with (`cargo test --release`: the release one).
pub fn controller_binary() -> &'static str {
    env!("CARGO_BIN_EXE_crawler-operator")
}

/// Leader-election timings passed to a controller.
#[derive(Clone, Copy, Debug)]
pub struct Election {
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

impl Election {
    /// The controller's defaults (client-go's).
    pub const DEFAULTS: Election = Election {
        lease: Duration::from_secs(15),
        renew: Duration::from_secs(10),
        retry: Duration::from_secs(2),
    };
    /// What the integration tests use.
    pub const FAST: Election = Election {
        lease: Duration::from_secs(3),
        renew: Duration::from_secs(2),
        retry: Duration::from_millis(500),
    };

    pub fn describe(&self) -> String {
        format!(
            "lease {:?}, renew deadline {:?}, retry {:?}",
            self.lease, self.renew, self.retry
        )
    }
}

/// One `crawler-operator controller` process (or a worker: [`Controller::start_worker`]).
pub struct Controller {
    pub identity: String,
    server: Server,
    pub log: PathBuf,
}

impl Controller {
    pub fn start(
        cp: &ControlPlane,
        namespace: &str,
        identity: &str,
        concurrency: usize,
        election: Election,
        kubeconfig: &Path,
    ) -> Self {
        let log = cp
            .dir()
            .join(format!("controller-{namespace}-{identity}.log"));
        let args = vec![
            format!("KUBECONFIG={}", kubeconfig.display()),
            // debug: the controller logs each 409 Conflict at debug.
            "RUST_LOG=info,crawler_operator=debug".to_owned(),
            controller_binary().to_owned(),
            "controller".to_owned(),
            "--log-format=json".to_owned(),
            format!("--namespace={namespace}"),
            format!("--lease-namespace={namespace}"),
            format!("--identity={identity}"),
            format!("--concurrency={concurrency}"),
            format!("--lease-duration={}ms", election.lease.as_millis()),
            format!("--renew-deadline={}ms", election.renew.as_millis()),
            format!("--retry-period={}ms", election.retry.as_millis()),
            // Several replicas (and other engineers' tests) share this machine.
            "--metrics-addr=127.0.0.1:0".to_owned(),
        ];
        let server = Server::new(
            "controller",
            PathBuf::from("/usr/bin/env"),
            args,
            log.clone(),
        );
        server.start();
        Self {
            identity: identity.to_owned(),
            server,
            log,
        }
    }

    /// A `crawler-operator worker` process playing Pod `pod`, its page records in `output`.
    /// The same handle as a controller's: usage, metrics, log, signals.
    pub fn start_worker(cp: &ControlPlane, namespace: &str, pod: &str, output: &Path) -> Self {
        Self::start_worker_via(cp, namespace, pod, output, cp.kubeconfig_path())
    }

    /// [`Controller::start_worker`] reaching the API server as `kubeconfig` says (e.g. through a
    /// proxy that can freeze its connections). No timing flag: the worker's defaults.
    pub fn start_worker_via(
        cp: &ControlPlane,
        namespace: &str,
        pod: &str,
        output: &Path,
        kubeconfig: &Path,
    ) -> Self {
        let log = cp.dir().join(format!("worker-{namespace}-{pod}.log"));
        let args = vec![
            format!("KUBECONFIG={}", kubeconfig.display()),
            "RUST_LOG=info".to_owned(),
            controller_binary().to_owned(),
            "worker".to_owned(),
            "--log-format=json".to_owned(),
            format!("--pod-name={pod}"),
            format!("--namespace={namespace}"),
            format!("--output={}", output.display()),
            "--metrics-addr=127.0.0.1:0".to_owned(),
            // The benchmark's site is on loopback, which a worker refuses unless allowed.
            "--allow-internal-cidrs=127.0.0.0/8".to_owned(),
        ];
        let server = Server::new("worker", PathBuf::from("/usr/bin/env"), args, log.clone());
        server.start();
        Self {
            identity: pod.to_owned(),
            server,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn usage(&self) -> Usage {
        Usage::of(self.pid()).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        self.server.signal(signal);
    }

    pub fn is_alive(&self) -> bool {
        self.server.is_alive()
    }

    /// Waits until the process has exited (after a signal).
    pub async fn wait_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            assert!(
                Instant::now() < deadline,
                "controller {} still running {timeout:?} after the signal; log {}",
                self.identity,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait (a graceful stop releases the Lease).
    pub async fn stop(&self) {
        if self.is_alive() {
            self.signal("TERM");
            self.wait_exit(Duration::from_secs(20)).await;
        }
    }

    pub fn log_lines(&self) -> Vec<LogLine> {
        LogLine::parse_file(&self.log)
    }

    /// The controller's own `/metrics` text (its address is in its log).
    pub fn metrics(&self) -> Option<String> {
        metrics_at(&self.metrics_addr()?)
    }

    /// Where the process serves `/metrics` (from its log; `None` until it says).
    pub fn metrics_addr(&self) -> Option<String> {
        Some(
            self.log_lines()
                .iter()
                .find(|l| l.message.starts_with("serving /metrics"))?
                .fields["addr"]
                .as_str()?
                .to_owned(),
        )
    }

    /// Sum of the samples of `metric` whose labels contain `label` (e.g. `result="conflict"`).
    pub fn metric_sum(metrics: &str, metric: &str, label: &str) -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(label))
            .filter(|l| l[metric.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// GET `/metrics` from `addr` (plain HTTP/1.0, blocking, 5 s read timeout).
pub fn metrics_at(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// One line of `--log-format json` output.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Timestamp,
    pub message: String,
    pub fields: serde_json::Value,
}

impl LogLine {
    pub fn parse_file(path: &Path) -> Vec<LogLine> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                Some(LogLine {
                    at: v["timestamp"].as_str()?.parse().ok()?,
                    message: v["fields"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    fields: v["fields"].clone(),
                })
            })
            .collect()
    }

    /// A successful status write that placed or moved a resource.
    pub fn is_assignment(&self) -> bool {
        matches!(
            self.fields["reason"].as_str(),
            Some("Assigned" | "Reassigned")
        )
    }
}

/// Memory and CPU of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu: Duration,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Usage> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Some(Usage {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            cpu: cpu_time(pid)?,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}

/// utime + stime of a process.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The pids of this control plane's etcd and kube-apiserver (found by their data and certificate
/// paths, which live in the control plane's own temp dir), for CPU accounting.
#[derive(Clone, Copy, Debug)]
pub struct ServerPids {
    pub etcd: Option<u32>,
    pub apiserver: Option<u32>,
}

impl ServerPids {
    pub fn find(cp: &ControlPlane) -> Self {
        let dir = cp.dir().display().to_string();
        let mut found = ServerPids {
            etcd: None,
            apiserver: None,
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a.contains(&dir)) {
                continue;
            }
            match args
                .first()
                .and_then(|a| Path::new(a).file_name()?.to_str())
            {
                Some("etcd") => found.etcd = Some(pid),
                Some("kube-apiserver") => found.apiserver = Some(pid),
                _ => {}
            }
        }
        found
    }
}

/// CPU time of etcd, kube-apiserver and this benchmark process, to attribute a phase's cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    pub etcd: Duration,
    pub apiserver: Duration,
    pub bench: Duration,
    pub at: Option<Instant>,
}

impl CpuSnapshot {
    pub fn take(pids: ServerPids) -> Self {
        let of = |pid: Option<u32>| pid.and_then(cpu_time).unwrap_or_default();
        CpuSnapshot {
            etcd: of(pids.etcd),
            apiserver: of(pids.apiserver),
            bench: of(Some(std::process::id())),
            at: Some(Instant::now()),
        }
    }

    /// CPU spent since `earlier`, and the wall time between them.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuSpent {
        CpuSpent {
            etcd: self.etcd.saturating_sub(earlier.etcd),
            apiserver: self.apiserver.saturating_sub(earlier.apiserver),
            bench: self.bench.saturating_sub(earlier.bench),
            wall: match (self.at, earlier.at) {
                (Some(a), Some(b)) => a.duration_since(b),
                _ => Duration::ZERO,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSpent {
    pub etcd: Duration,
    pub apiserver: Duration,
    pub bench: Duration,
    pub wall: Duration,
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

//! The demo walk-through of `docs/demo.md`, driven step by step against a demo of its own
//! (`hack/demo.sh`: local cluster with kwok, the Helm chart, the controller and worker processes,
//! the demo site), with each outcome checked.
//!
//! Slow (about 40 seconds once the tools are built) and it needs the demo's tools
//! (kube-controller-manager, kube-scheduler, kwok, helm; `hack/demo.sh` builds what is missing),
//! so it is `#[ignore]`d; `make demo-test` runs it. It uses its own directory and ports
//! (`CRAWLER_DEMO_PORT_BASE=17400`), so a `make demo` running next to it is not touched, and
//! takes its demo down however the test ends (a guard process runs `hack/demo.sh down` when the
//! test process goes away, even on SIGKILL).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PORT_BASE: u16 = 17400;
const NS: &str = "crawler";
const SAMPLES: [&str; 5] = [
    "douban-book-list",
    "task-test-1",
    "task-test-2",
    "task-test-3",
    "xxx",
];
/// Bound on each step's outcome. Moves take well under a second; a new Pod takes a few seconds.
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

#[test]
#[ignore = "slow (~40 s) and needs the demo's tools: run with `make demo-test`"]
fn demo_walk_through() {
    let started = Instant::now();
    let demo = Demo::up();
    println!(
        "[{:.1?}] demo up: 3/2 split, all running",
        started.elapsed()
    );

    let (a, b) = demo.step_worker_stopped_and_started();
    println!(
        "[{:.1?}] stopped {a}: its resources moved to {b}; started again, nothing moved",
        started.elapsed()
    );

    let c = demo.step_pod_deleted(&a, &b);
    println!(
        "[{:.1?}] deleted Pod {b}: its resources moved to {a} and {c}: {:?}; new Pod {c} got a worker process",
        started.elapsed(),
        per_worker(&demo.resources())
    );

    demo.step_leader_changed();
    println!(
        "[{:.1?}] controller-2 took over from controller-1: nothing moved, no status write",
        started.elapsed()
    );

    let d = demo.step_resource_applied_and_deleted(&a, &c);
    println!(
        "[{:.1?}] task-test-4 placed on {d}, crawled, deleted, its crawl stopped",
        started.elapsed()
    );

    demo.down();
    println!("[{:.1?}] demo down", started.elapsed());
}

/// A resource as `kubectl get crr -o json` shows it: the fields the steps check.
#[derive(Debug, Clone, PartialEq)]
struct Resource {
    worker: String,
    assignments: i64,
    assigned_at: String,
    /// When the controller (field manager `crawler-operator`) last wrote this object.
    controller_write: String,
    state: String,
    pages: i64,
}

struct Demo {
    repo: PathBuf,
    dir: PathBuf,
    kubectl: PathBuf,
    /// `hack/demo.sh down` once its stdin closes, i.e. when this test process goes away.
    guard: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Demo {
    /// `hack/demo.sh up`, then checks what it promises: the 5 samples Running, split 3/2 over the
    /// two worker Pods, pages growing.
    fn up() -> Self {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::Builder::new()
            .prefix("crawler-demo-test-")
            .tempdir()
            .expect("a temp dir");
        let dir = tmp.path().join("demo");
        let tools = String::from_utf8(
            Command::new(repo.join("hack/install-tools.sh"))
                .arg("--print-dir")
                .output()
                .expect("hack/install-tools.sh --print-dir")
                .stdout,
        )
        .expect("a UTF-8 path");
        let mut demo = Self {
            kubectl: PathBuf::from(tools.trim()).join("kubectl"),
            guard: None,
            repo,
            dir,
            _tmp: tmp,
        };
        let guard = Command::new("setsid")
            .args([
                "bash",
                "-c",
                "cat >/dev/null; \"$0\" down >/dev/null 2>&1; rmdir \"${CRAWLER_DEMO_DIR%/*}\" 2>/dev/null",
            ])
            .arg(demo.repo.join("hack/demo.sh"))
            .envs(demo.env())
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting the guard process");
        demo.guard = Some(guard);

        let out = demo.script(&["up"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("kubectl get crawlerresources -o wide") && stdout.contains("PAGES"),
            "make demo's output ends with the resources table:\n{stdout}"
        );
        // The extraction example ran to completion and its books were printed (issue 14).
        for expected in [
            "book-list: 27 pages fetched, 0 incomplete records",
            "24 books extracted (0 incomplete)",
            r#"{"author":"Alexandre Dumas","price":"16.07","rating":"8.6","tags":["novel","adventure"],"title":"The Count of Monte Cristo"}"#,
            r#""author":"Bram Stoker""#,
        ] {
            assert!(
                stdout.contains(expected),
                "make demo printed the example's books ({expected}):\n{stdout}"
            );
        }
        let resources = demo.resources();
        assert_eq!(
            resources.keys().map(String::as_str).collect::<Vec<_>>(),
            SAMPLES,
            "the five samples (the example was deleted again)"
        );
        assert_eq!(split(&resources), vec![2, 3], "a 3/2 split: {resources:#?}");
        assert!(
            resources
                .values()
                .all(|r| r.state == "Running" && r.pages > 0 && r.assignments == 1),
            "every sample running and fetching, assigned once: {resources:#?}"
        );
        let before = total_pages(&resources);
        demo.wait("pages fetched to grow", || {
            (total_pages(&demo.resources()) > before).then_some(())
        });
        demo
    }

    /// Stops the worker process of the worker with three resources (as Ctrl+C would: SIGTERM):
    /// all five end on the other worker, and the stopped one sends no request afterwards. Starts
    /// it again: nothing moves back. Returns (stopped worker, other worker).
    fn step_worker_stopped_and_started(&self) -> (String, String) {
        let resources = self.resources();
        let per_worker = per_worker(&resources);
        let a = per_worker
            .iter()
            .find(|(_, n)| **n == 3)
            .expect("a worker with 3")
            .0
            .to_string();
        let b = per_worker
            .keys()
            .find(|w| **w != a)
            .expect("the other worker")
            .to_string();

        self.script(&["stop-worker", &a]);
        let requests_after_stop = self.site_requests_from(&a, None);
        let moved = self.wait(&format!("all five on {b}"), || {
            let now = self.resources();
            now.values()
                .all(|r| r.worker == b && r.state == "Running")
                .then_some(now)
        });
        for (name, r) in &moved {
            let expected = if resources[name].worker == a { 2 } else { 1 };
            assert_eq!(
                r.assignments, expected,
                "{name}: moved once if it was on {a}, else kept"
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            self.site_requests_from(&a, None),
            requests_after_stop,
            "no request from the stopped worker {a} after it stopped"
        );

        self.script(&["start-worker", &a]);
        self.wait(&format!("{a}'s heartbeat Lease held again"), || {
            let holder = self.kubectl(&[
                "get",
                "lease",
                &format!("crawler-worker-{a}"),
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]);
            (holder == a).then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            controller_fields(&self.resources()),
            controller_fields(&moved),
            "a worker coming back moves nothing"
        );
        (a, b)
    }

    /// `kubectl delete pod` of the worker holding all five: each moves once, off the deleted Pod,
    /// to the least-loaded ready worker at that moment. That is the other worker, or also the
    /// replacement Pod when it is already Ready (kwok makes it Ready within a second, so both
    /// happen). The Deployment replaces the Pod, the supervisor gives the new Pod a worker
    /// process and stops the deleted Pod's. Returns the new Pod's name.
    fn step_pod_deleted(&self, a: &str, b: &str) -> String {
        let before = self.resources();
        let old_pid = self
            .pid(&format!("worker-{b}"))
            .expect("b's worker process runs");
        self.kubectl(&["delete", "pod", b, "--wait=false"]);
        let c = self.wait("a replacement worker Pod, Ready, with a worker process", || {
            let pods = self.kubectl(&[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=crawler-worker",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            pods.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(name, ready)| *name != a && *name != b && *ready == "True")
                .map(|(name, _)| name.to_owned())
                .filter(|name| self.pid(&format!("worker-{name}")).is_some())
        });
        let moved = self.wait(&format!("all five off {b}, on {a} or {c}, Running"), || {
            let now = self.resources();
            now.values()
                .all(|r| (r.worker == a || r.worker == c) && r.state == "Running")
                .then_some(now)
        });
        for (name, r) in &moved {
            assert_eq!(
                r.assignments,
                before[name].assignments + 1,
                "{name}: moved exactly once: {moved:#?}"
            );
        }
        self.wait(
            &format!("the worker process of deleted Pod {b} to stop"),
            || (!alive(old_pid)).then_some(()),
        );
        c
    }

    /// Starts a second controller and stops the first (SIGTERM releases the Lease): the second
    /// leads, looks at every resource, and writes nothing; no assignment changes.
    fn step_leader_changed(&self) {
        let before = controller_fields(&self.resources());
        self.script(&["start-controller", "2"]);
        assert_eq!(
            self.lease_holder(),
            "controller-1",
            "controller-2 stands by"
        );
        self.script(&["stop-controller", "1"]);
        self.wait("controller-2 to lead", || {
            (self.lease_holder() == "controller-2").then_some(())
        });
        let metrics = self.wait("controller-2's full pass over the five", || {
            let m = metrics(PORT_BASE + 92);
            (counter(&m, "crawler_controller_reconciles_total{result=\"nothing\"") >= 5)
                .then_some(m)
        });
        assert_eq!(
            counter(&metrics, "crawler_controller_status_writes_total{"),
            0,
            "the new leader wrote no status:\n{metrics}"
        );
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            controller_fields(&self.resources()),
            before,
            "a leader change moves nothing (worker, assignments, assignedAt, the controller's last write)"
        );
    }

    /// `kubectl apply` task-test-4: it goes to the least-loaded of the two workers and crawls.
    /// `kubectl delete crawlerresource task-test-4`: it is gone and its crawl stops. Returns the
    /// worker it ran on.
    fn step_resource_applied_and_deleted(&self, a: &str, c: &str) -> String {
        let counts = per_worker(&self.resources())
            .into_iter()
            .map(|(w, n)| (w.to_owned(), n))
            .collect::<BTreeMap<_, _>>();
        let load = |w: &str| counts.get(w).copied().unwrap_or_default();
        // Five resources on two workers: never a tie.
        let d = if load(c) < load(a) { c } else { a };
        let file = self.dir.join("task-test-4.yaml");
        self.kubectl(&["apply", "-f", file.to_str().expect("a UTF-8 path")]);
        let assignment = self.wait(
            &format!("task-test-4 running on {d}, the least-loaded worker ({counts:?})"),
            || {
                self.resources()
                    .get("task-test-4")
                    .filter(|r| r.worker == d && r.state == "Running" && r.pages > 0)
                    .map(|r| r.assignments)
            },
        );
        assert_eq!(assignment, 1, "task-test-4 is placed once");
        self.kubectl(&["delete", "crawlerresource", "task-test-4"]);
        self.wait("task-test-4 to be gone", || {
            (!self.resources().contains_key("task-test-4")).then_some(())
        });
        // The worker's User-Agent names the assignment: task-test-4's is 1, while every other
        // resource has moved at least once. Once the worker has seen the deletion, no request
        // from (d, assignment 1).
        std::thread::sleep(Duration::from_secs(1));
        let after_delete = self.site_requests_from(d, Some(1));
        assert!(
            after_delete > 0,
            "the site logged task-test-4's requests from {d}"
        );
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            self.site_requests_from(d, Some(1)),
            after_delete,
            "{d} stopped crawling task-test-4 once it was deleted"
        );
        let remaining = self.resources();
        assert_eq!(
            remaining.keys().map(String::as_str).collect::<Vec<_>>(),
            SAMPLES
        );
        d.to_owned()
    }

    /// `hack/demo.sh down`: every process it started is gone, and so is its directory.
    fn down(mut self) {
        let pids: Vec<u32> = std::fs::read_dir(self.dir.join("pids"))
            .expect("the pid directory")
            .filter_map(|e| {
                std::fs::read_to_string(e.ok()?.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        assert!(
            pids.len() >= 9,
            "cluster, site, supervisor, controller, workers: {pids:?}"
        );
        self.script(&["down"]);
        assert!(
            !self.dir.exists(),
            "hack/demo.sh down removes {}",
            self.dir.display()
        );
        for pid in pids {
            assert!(!alive(pid), "process {pid} still runs after down");
        }
        self.stop_guard();
    }

    fn stop_guard(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            drop(guard.stdin.take());
            let _ = guard.wait();
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CRAWLER_DEMO_DIR", self.dir.display().to_string()),
            ("CRAWLER_DEMO_PORT_BASE", PORT_BASE.to_string()),
            (
                "CRAWLER_OPERATOR_BIN",
                env!("CARGO_BIN_EXE_crawler-operator").to_owned(),
            ),
        ]
    }

    /// Runs `hack/demo.sh ARGS`; its output goes to the test's output too. Panics if it fails.
    fn script(&self, args: &[&str]) -> Output {
        let out = Command::new(self.repo.join("hack/demo.sh"))
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("running hack/demo.sh");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "hack/demo.sh {} failed: {}",
            args.join(" "),
            out.status
        );
        out
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.kubectl)
            .args(["--namespace", NS])
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 from kubectl")
    }

    fn resources(&self) -> BTreeMap<String, Resource> {
        let list: Value =
            serde_json::from_str(&self.kubectl(&["get", "crawlerresources", "-o", "json"]))
                .expect("JSON from kubectl");
        let items = list["items"].as_array().expect("items");
        items
            .iter()
            .map(|item| {
                let status = &item["status"];
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let controller_write = item["metadata"]["managedFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["manager"] == "crawler-operator")
                    .map(|f| text(&f["time"]))
                    .max()
                    .unwrap_or_default();
                let resource = Resource {
                    worker: text(&status["assignedWorker"]),
                    assignments: status["assignments"].as_i64().unwrap_or_default(),
                    assigned_at: text(&status["assignedAt"]),
                    controller_write,
                    state: text(&status["progress"]["state"]),
                    pages: status["progress"]["pagesFetched"]
                        .as_i64()
                        .unwrap_or_default(),
                };
                (text(&item["metadata"]["name"]), resource)
            })
            .collect()
    }

    fn lease_holder(&self) -> String {
        self.kubectl(&[
            "get",
            "lease",
            "crawler-operator-leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    }

    /// The pid of the demo process NAME (`worker-<pod>`, `controller-1`, ...) if it runs.
    fn pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pids").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// How many requests the demo site has logged from worker Pod `pod`, under assignment number
    /// `assignment` if given (the worker's User-Agent names both).
    fn site_requests_from(&self, pod: &str, assignment: Option<i64>) -> usize {
        let log =
            std::fs::read_to_string(self.dir.join("logs/site-requests.log")).unwrap_or_default();
        let assignment = assignment.map(|n| n.to_string());
        log.lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f.get(1) == Some(&pod))
            .filter(|f| assignment.as_deref().is_none_or(|n| f.get(2) == Some(&n)))
            .count()
    }

    /// The last lines of the controllers' and the supervisor's logs: a failed step's panic
    /// message carries them, because the demo directory goes away with the demo.
    fn log_tails(&self) -> String {
        const LINES: usize = 25;
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("controller-") || n == "supervisor.log")
            })
            .collect();
        files.sort();
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- last {LINES} lines of {}", file.display());
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Polls `f` until it returns `Some` (then returns it), at most [`BOUND`].
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {BOUND:?} waiting for {what}; now:\n{:#?}\n{}",
                self.resources(),
                self.log_tails()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed step: take the demo down (the guard runs `hack/demo.sh down`).
        self.stop_guard();
    }
}

/// Whether process `pid` runs (exists and is not a zombie waiting for its parent to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// Resources per worker, sorted: [2, 3] for a 3/2 split.
/// How many resources each worker has.
fn per_worker(resources: &BTreeMap<String, Resource>) -> BTreeMap<&str, usize> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in resources.values() {
        *counts.entry(r.worker.as_str()).or_default() += 1;
    }
    counts
}

fn split(resources: &BTreeMap<String, Resource>) -> Vec<usize> {
    let mut counts: Vec<usize> = per_worker(resources).into_values().collect();
    counts.sort_unstable();
    counts
}

fn total_pages(resources: &BTreeMap<String, Resource>) -> i64 {
    resources.values().map(|r| r.pages).sum()
}

/// What only the controller writes: (worker, assignments, assignedAt, time of its last write).
fn controller_fields(
    resources: &BTreeMap<String, Resource>,
) -> BTreeMap<String, (String, i64, String, String)> {
    resources
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                (
                    r.worker.clone(),
                    r.assignments,
                    r.assigned_at.clone(),
                    r.controller_write.clone(),
                ),
            )
        })
        .collect()
}

/// GET /metrics from a demo process on 127.0.0.1:port (empty if it does not answer).
fn metrics(port: u16) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut body = String::new();
    if stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
    {
        let _ = stream.read_to_string(&mut body);
    }
    body
}

/// The sum of the samples whose line starts with `prefix` (e.g. `name{label="x"`); counters are
/// integers in this exposition.
fn counter(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

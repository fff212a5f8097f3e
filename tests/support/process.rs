//! Server processes that cannot outlive the test binary.
//!
//! Rust never drops statics, and SIGKILL runs no code at all, so cleanup cannot live in the test
//! process. Each server runs under a small bash guardian whose stdin is a pipe from the test
//! process (close-on-exec, so no other child inherits it). The kernel closes that pipe however the
//! test process ends (normal exit, panic, SIGKILL); the guardian's `read` then returns and it stops
//! its server. A second guardian removes the temp dir the same way. Guardians get their own process
//! group, so a Ctrl-C aimed at `cargo test` reaches them only through the pipe, too.
//!
//! Checked by hand (2 cores, etcd 3.7.3, kube-apiserver 1.37.2): start the smoke test binary
//! (from a launcher that leaves SIGINT at its default), and 4 s in, with both of its control
//! planes up, record its guardians (`pgrep -P <test pid>`), their servers (`pgrep -P <guardian>`)
//! and the `/tmp/crawler-cp-*` dirs named in the guardians' command lines. Then `kill -9` the test
//! binary: 1.8 s later all 10 processes (6 guardians, 2 etcd, 2 kube-apiserver) were gone and
//! both dirs removed. The same after SIGINT (1.2 s) and after a normal exit (1.2 s).

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs `"$@"` with output appended to `$log`, prints its pid, and kills it when stdin reaches
/// EOF. SIGKILL, not SIGTERM: terminated together, etcd waits for the apiserver's streams to end
/// while kube-apiserver hangs in its graceful shutdown without etcd, and both sat out a 5 s
/// grace period. For a stop in a fault test a crash is the harsher case anyway. `wait` makes
/// sure the server is gone (and its ports free) when the guardian exits.
const SERVER_GUARDIAN: &str = r#"
log=$1; shift
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid"
exec >>"$log" 2>&1
read -r _
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
"#;

/// Removes `$1` when stdin reaches EOF, retrying while the servers (stopped by their own
/// guardians at the same moment) may still be writing into it.
const DIR_GUARDIAN: &str = r#"
read -r _
for _ in $(seq 100); do rm -rf "$1" 2>/dev/null; [ -e "$1" ] || exit 0; sleep 0.1; done
"#;

/// Keeps `dir` until the returned child's stdin closes (that is, until it is dropped, or the
/// test process ends).
pub fn reap_dir_on_exit(dir: &Path) -> Child {
    guardian(DIR_GUARDIAN, &[dir.as_os_str()])
}

/// A server's command line, kept so that it can be stopped and started again (fault tests).
pub struct Server {
    pub name: &'static str,
    binary: PathBuf,
    args: Vec<String>,
    pub log: PathBuf,
    running: Mutex<Option<Running>>,
}

struct Running {
    /// Dropping this child closes the guardian's stdin, which stops the server.
    guardian: Child,
    pid: u32,
}

impl Server {
    pub fn new(name: &'static str, binary: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name,
            binary,
            args,
            log,
            running: Mutex::new(None),
        }
    }

    /// Starts the server under a guardian. Panics if it is already running.
    pub fn start(&self) {
        let mut running = self.running.lock().unwrap();
        assert!(running.is_none(), "{} is already running", self.name);
        let mut argv = vec![self.log.as_os_str(), self.binary.as_os_str()];
        argv.extend(self.args.iter().map(OsStr::new));
        let mut guardian = guardian(SERVER_GUARDIAN, &argv);
        let mut line = String::new();
        BufReader::new(guardian.stdout.take().expect("guardian stdout"))
            .read_line(&mut line)
            .expect("reading the guardian's pid line");
        let pid = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{}: the guardian printed {line:?} instead of a pid; log: {}",
                self.name,
                self.log.display()
            )
        });
        *running = Some(Running { guardian, pid });
    }

    /// Kills the server (SIGKILL, as in a crash) and waits, without blocking the async runtime,
    /// until its guardian, and so the server, is gone. A no-op if it is not running.
    pub async fn stop(&self) {
        let Some(Running { mut guardian, pid }) = self.running.lock().unwrap().take() else {
            return;
        };
        drop(guardian.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while guardian
            .try_wait()
            .expect("waiting for a guardian")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "{} (pid {pid}) did not stop within 15 s; log: {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's pid. Panics if it is not running.
    pub fn pid(&self) -> u32 {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .pid
    }

    /// Whether the server process exists (its guardian reaps it as soon as it exits).
    pub fn is_alive(&self) -> bool {
        let pid = self.running.lock().unwrap().as_ref().map(|r| r.pid);
        pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Sends `signal` (a name such as `STOP`) with the `kill` command: the crate forbids unsafe code.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed",
            self.name
        );
    }

    /// The last `lines` lines of the server's log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Spawns `bash -c script guardian args...` with piped stdin (and stdout, for a pid line) in
/// its own process group.
fn guardian(script: &str, args: &[&OsStr]) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("guardian")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawning a bash guardian")
}

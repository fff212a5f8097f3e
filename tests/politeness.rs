//! Politeness per host across the whole installation, judged from what the hosts saw.
//!
//! The controller places tasks with host affinity (`--host-affinity=true`): tasks that share a
//! host run on one worker, so that worker's per-host gate keeps the host's budget for every task
//! of every worker. Real API server, real controller, real worker processes with the real budget
//! (2 requests/s and 2 in flight per host; the harness lifts it for other suites). Each host is
//! a loopback address of its own (every 127.x.y.z is one on Linux) that logs when each request
//! arrived and ended, and which worker sent it; the judge prints per host the requests that came
//! from a worker after another had taken the host over (two workers at once), the smallest gap
//! between two arrivals, the most requests in flight at once and the requests inside a
//! `Retry-After` window, and passes at zero violations. Two workers leave mid-crawl (group A's, and
//! group B's inside the 429 host's window, which the tasks carry to their new worker) and one
//! joins. With host affinity off (the ignored test)
//! the same crawl broke the budget 190 times (2026-12-06).

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::IoSliceMut,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crawler_operator::crd::{CONDITION_ASSIGNED, CrawlerResource, Phase};
use nix::sys::{
    socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt},
    time::TimeSpec,
};
use parking_lot::Mutex;
use serde_json::json;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

use support::{
    story::{POLL, Story, assigned_worker, phase},
    wait_for,
};

// === the hosts ===

/// One request as a host saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    /// The worker that sent it (from the User-Agent).
    worker: String,
    arrived: Instant,
    ended: Option<Instant>,
    /// Ended when the client closed the connection (no response): seen a moment late.
    closed_by_client: bool,
}

/// A host's request log, and the Retry-After windows it opened (start, length).
#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    windows: Mutex<Vec<(Instant, Duration)>>,
}

impl Log {
    fn arrive(self: &Arc<Self>, path: &str, worker: String, arrived: Instant) -> Ended {
        let mut seen = self.seen.lock();
        seen.push(Seen {
            path: path.to_owned(),
            worker,
            arrived,
            ended: None,
            closed_by_client: false,
        });
        Ended {
            log: self.clone(),
            index: seen.len() - 1,
        }
    }
}

/// Marks the request ended when dropped (also when the client goes away mid-response).
struct Ended {
    log: Arc<Log>,
    index: usize,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.log.seen.lock()[self.index].ended = Some(Instant::now());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/<task>/<n>` links to `/<task>/<2n>` and `/<task>/<2n+1>`; robots.txt is a 404.
    Plain,
    /// Like `Plain`, and the tenth page request gets a 429 with `Retry-After: <seconds>`.
    TooMany { retry_after: u64 },
    /// Like `Plain`, with `Crawl-delay: <seconds>` in robots.txt.
    CrawlDelay { seconds: u64 },
    /// Pages never answer: robots.txt gets a 404, any other request is held open until the
    /// client gives up (its timeout), which is when it ends in the log.
    Silent,
}

struct HostSite {
    kind: Kind,
    log: Arc<Log>,
    pages: Mutex<usize>,
}

struct Host {
    ip: &'static str,
    origin: String,
    log: Arc<Log>,
    /// The smallest gap the budget allows between two requests.
    delay: Duration,
}

impl Host {
    fn seed(&self, task: &str) -> String {
        format!("{}/{task}/1", self.origin)
    }
}

/// Which worker sent a request: "crawler-operator/0.1.0 (worker worker-1; assignment 2)".
fn worker_of(user_agent: &str) -> String {
    user_agent
        .split("(worker ")
        .nth(1)
        .and_then(|w| w.split([';', ')']).next())
        .unwrap_or("?")
        .to_owned()
}

/// A host of `kind` on `ip`: a small HTTP/1.1 server (keep-alive, GET only) whose log stamps
/// each request with the time the kernel received it (`SO_TIMESTAMPNS`), not the time its
/// handler ran: on 2 loaded cores a handler can run hundreds of milliseconds late, and a late
/// stamp moves two arrivals closer than they were.
async fn start_host(ip: &'static str, kind: Kind) -> Host {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    // Accepted sockets inherit it; set here, every segment they receive is stamped.
    setsockopt(&listener, sockopt::ReceiveTimestampns, &true).unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let site = Arc::new(HostSite {
        kind,
        log: log.clone(),
        pages: Mutex::new(0),
    });
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_connection(conn, site.clone()));
        }
    });
    let delay = match kind {
        Kind::CrawlDelay { seconds } => Duration::from_secs(seconds),
        _ => BUDGET_DELAY,
    };
    Host {
        ip,
        origin: format!("http://{addr}"),
        log,
        delay,
    }
}

/// Reads what `conn` has into `buf`, with the time the kernel received it (the last segment
/// read), or now when the kernel gave no stamp.
async fn read_stamped(conn: &TcpStream, buf: &mut [u8]) -> std::io::Result<(usize, Instant)> {
    loop {
        conn.readable().await?;
        let read = conn.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let mut space = nix::cmsg_space!(TimeSpec);
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )?;
            let stamp = msg.cmsgs()?.find_map(|c| match c {
                ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                _ => None,
            });
            Ok((msg.bytes, stamp))
        });
        match read {
            Ok((n, stamp)) => {
                let (now, wall) = (Instant::now(), SystemTime::now());
                let at = stamp
                    .and_then(|ts| {
                        let ts = UNIX_EPOCH
                            + Duration::new(
                                u64::try_from(ts.tv_sec()).ok()?,
                                u32::try_from(ts.tv_nsec()).ok()?,
                            );
                        now.checked_sub(wall.duration_since(ts).unwrap_or_default())
                    })
                    .unwrap_or(now);
                return Ok((n, at));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Serves the requests of one connection until the client closes it.
async fn serve_connection(mut conn: TcpStream, site: Arc<HostSite>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        // One request head (GET: no body), arrived when its first byte did.
        let mut arrived = Instant::now();
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match read_stamped(&conn, &mut buf).await {
                Ok((0, _)) | Err(_) => return,
                Ok((n, at)) => {
                    if pending.is_empty() {
                        arrived = at;
                    }
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let path = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_owned();
        let agent = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("user-agent:")
                    .then(|| l["user-agent:".len()..].trim().to_owned())
            })
            .unwrap_or_default();
        let ended = site.log.arrive(&path, worker_of(&agent), arrived);
        if site.kind == Kind::Silent && path != "/robots.txt" {
            // Held until the client closes the connection.
            while let Ok((n, _)) = read_stamped(&conn, &mut buf).await {
                if n == 0 {
                    break;
                }
            }
            site.log.seen.lock()[ended.index].closed_by_client = true;
            return;
        }
        // Long enough for requests to overlap when a client lets them.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let response = respond(&site, &path);
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        drop(ended);
    }
}

/// The whole response to a GET of `path`.
fn respond(site: &HostSite, path: &str) -> String {
    let message = |status: &str, headers: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            body.len()
        )
    };
    if path == "/robots.txt" {
        return match site.kind {
            Kind::CrawlDelay { seconds } => message(
                "200 OK",
                "content-type: text/plain\r\n",
                &format!("User-agent: *\nCrawl-delay: {seconds}\n"),
            ),
            _ => message("404 Not Found", "", ""),
        };
    }
    let page = {
        let mut pages = site.pages.lock();
        *pages += 1;
        *pages
    };
    if let Kind::TooMany { retry_after } = site.kind
        && page == 10
    {
        site.log
            .windows
            .lock()
            .push((Instant::now(), Duration::from_secs(retry_after)));
        return message(
            "429 Too Many Requests",
            &format!("retry-after: {retry_after}\r\n"),
            "",
        );
    }
    // /<task>/<n>
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let task = parts.next().unwrap_or_default();
    let n: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    message(
        "200 OK",
        "content-type: text/html\r\n",
        &format!(
            "<html><head><title>{task} {n}</title></head><body>\
             <a href=\"/{task}/{}\">l</a> <a href=\"/{task}/{}\">r</a></body></html>",
            2 * n,
            2 * n + 1
        ),
    )
}

// === the judge ===

/// The installation's budget: 2 requests/s per host (one every 500 ms), 2 in flight.
const BUDGET: &str = "2";
const BUDGET_DELAY: Duration = Duration::from_millis(500);
const BUDGET_IN_FLIGHT: usize = 2;
/// Arrivals closer than the delay less this break it. A host stamps an arrival with the time the
/// kernel received it, so a host's handler running late does not move it; a worker's gate counts
/// the delay from the moment a request's first byte was written (`crawl::client`), so a request
/// written late on loaded cores does not bring the next one closer. Before it did, a CI run
/// (11 test processes on 2 cores, load 6) saw two retries the gate had started 500 ms apart
/// arrive 335 ms apart, and the slack was 300 ms; what is left is the timer's rounding.
const SLACK: Duration = Duration::from_millis(25);
/// A request may arrive this long after a 429 left the host and not break its window: it was
/// sent before the 429 reached the client.
const IN_TRANSIT: Duration = Duration::from_millis(50);
/// A host sees a connection closed this long after the client let it go.
const CLOSE_SEEN: Duration = Duration::from_millis(25);

/// What one host saw, and how many times the budget was broken there.
#[derive(Debug, Default)]
struct HostVerdict {
    requests: usize,
    workers: BTreeSet<String>,
    smallest_gap: Option<Duration>,
    most_in_flight: usize,
    inside_window: usize,
    /// The requests inside a window: which, from whom, when.
    in_windows: Vec<String>,
    short_gaps: Vec<String>,
    /// Requests from a worker after another worker had taken over the host: two workers
    /// crawling it at once (a move hands a host over once; the old worker never comes back).
    interleaved: Vec<String>,
}

impl HostVerdict {
    fn violations(&self) -> usize {
        self.short_gaps.len()
            + self.interleaved.len()
            + usize::from(self.most_in_flight > BUDGET_IN_FLIGHT)
            + self.inside_window
    }
}

fn judge(host: &Host, started: Instant) -> HostVerdict {
    let mut seen = host.log.seen.lock().clone();
    seen.sort_by_key(|s| s.arrived);
    let mut verdict = HostVerdict {
        requests: seen.len(),
        workers: seen.iter().map(|s| s.worker.clone()).collect(),
        ..HostVerdict::default()
    };
    for pair in seen.windows(2) {
        let gap = pair[1].arrived - pair[0].arrived;
        verdict.smallest_gap = Some(verdict.smallest_gap.map_or(gap, |g| g.min(gap)));
        if gap + SLACK < host.delay {
            verdict.short_gaps.push(format!(
                "{} from {} at {:?}, {gap:?} after {} from {}",
                pair[1].path,
                pair[1].worker,
                pair[1].arrived - started,
                pair[0].path,
                pair[0].worker
            ));
        }
    }
    let mut replaced: BTreeSet<&str> = BTreeSet::new();
    for pair in seen.windows(2) {
        if pair[1].worker != pair[0].worker {
            replaced.insert(&pair[0].worker);
            if replaced.contains(pair[1].worker.as_str()) {
                verdict.interleaved.push(format!(
                    "{} from {} at {:?}, after {} took over",
                    pair[1].path,
                    pair[1].worker,
                    pair[1].arrived - started,
                    pair[0].worker
                ));
            }
        }
    }
    let far = Instant::now() + Duration::from_secs(3600);
    let mut events: Vec<(Instant, i32)> = seen
        .iter()
        .flat_map(|s| {
            let ended = s.ended.unwrap_or(far);
            let ended = if s.closed_by_client {
                ended.checked_sub(CLOSE_SEEN).unwrap_or(ended)
            } else {
                ended
            };
            [(s.arrived, 1), (ended, -1)]
        })
        .collect();
    // Ends before starts at the same instant.
    events.sort_by_key(|(at, d)| (*at, *d));
    let (mut now, mut most) = (0_i32, 0_i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    verdict.most_in_flight = usize::try_from(most).unwrap_or(0);
    let windows = host.log.windows.lock().clone();
    verdict.in_windows = seen
        .iter()
        .filter_map(|s| {
            let (at, len) = windows
                .iter()
                .find(|(at, len)| s.arrived > *at + IN_TRANSIT && s.arrived < *at + *len)?;
            Some(format!(
                "{} from {} at {:?}, {:?} into a {len:?} window",
                s.path,
                s.worker,
                s.arrived - started,
                s.arrived - *at
            ))
        })
        .collect();
    verdict.inside_window = verdict.in_windows.len();
    verdict
}

/// Prints the judge's table (and every violation); returns the violations on all `hosts`.
fn judge_all(hosts: &[&Host], started: Instant) -> usize {
    let mut total = 0;
    let mut table = String::from(
        "host          delay  requests  workers  interleaved  smallest gap  most in flight  inside Retry-After  violations\n",
    );
    for host in hosts {
        let v = judge(host, started);
        let _ = writeln!(
            table,
            "{:<13} {:>5?}  {:>8}  {:>7}  {:>11}  {:>12}  {:>14}  {:>18}  {:>10}",
            host.ip,
            host.delay,
            v.requests,
            v.workers.len(),
            v.interleaved.len(),
            v.smallest_gap
                .map_or("-".to_owned(), |g| format!("{}ms", g.as_millis())),
            v.most_in_flight,
            v.inside_window,
            v.violations()
        );
        for short in v.short_gaps.iter().take(10) {
            let _ = writeln!(table, "  short gap: {short}");
        }
        for two in v.interleaved.iter().take(10) {
            let _ = writeln!(table, "  two workers: {two}");
        }
        for inside in v.in_windows.iter().take(10) {
            let _ = writeln!(table, "  inside Retry-After: {inside}");
        }
        total += v.violations();
    }
    println!("{table}JUDGE politeness violations={total}");
    total
}

// === the story ===

/// The workers' flags: the installation's budget, one retry, a 1 s back-off start.
fn budget_flags() -> Vec<String> {
    vec![
        format!("--host-requests-per-second={BUDGET}"),
        format!("--host-max-in-flight={BUDGET_IN_FLIGHT}"),
        "--max-retries=1".to_owned(),
        "--retry-delay=1s".to_owned(),
    ]
}

/// A task of the judge's crawl: `seeds` (one per host it crawls), at most `pages` pages, fast
/// enough on its own (20/s) that only the host's budget holds it back.
fn task_spec(seeds: &[String], pages: u32) -> serde_json::Value {
    json!({
        "seeds": seeds,
        "maxDepth": 10,
        "maxPages": pages,
        "rateLimit": { "requestsPerSecond": 20, "burst": 1 },
        "backoffLimit": 0,
    })
}

/// Waits until every named resource has finished (`Succeeded` or `Failed`), up to `bound`.
async fn wait_until_finished(story: &Story, names: &[String], bound: Duration) {
    let api = story.api();
    wait_for("every crawl finished", bound, POLL * 10, || {
        let api = api.clone();
        async move {
            let mut running = Vec::new();
            for name in names {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                if !matches!(phase(&r), Some(Phase::Succeeded | Phase::Failed)) {
                    running.push(format!(
                        "{name} {:?} on {:?}",
                        phase(&r),
                        assigned_worker(&r)
                    ));
                }
            }
            if running.is_empty() {
                Ok(())
            } else {
                Err(running.join(", "))
            }
        }
    })
    .await;
}

/// Waits until every named resource has been assigned once; returns where each runs.
async fn placed(story: &Story, names: &[String]) -> BTreeMap<String, String> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    story.assert_all_assigned(&names).await
}

/// The judge's 20 tasks on 5 hosts, in four groups (connected components of the host-sharing
/// graph): A = {h1, h2} with a partial overlap (tasks on h1, on h2, on both), B = {429 host},
/// C = {Crawl-delay host}, D = {silent host}. Each group's first task comes first, so the four
/// groups start on four workers.
fn twenty_tasks(
    plain: &[Host; 2],
    too_many: &Host,
    crawl_delay: &Host,
    silent: &Host,
) -> Vec<(String, serde_json::Value)> {
    let [h1, h2] = plain;
    let both = |t: &str| vec![h1.seed(t), h2.seed(t)];
    let mut tasks: Vec<(String, serde_json::Value)> = vec![
        ("a-0".into(), task_spec(&both("a-0"), 12)),
        ("b-0".into(), task_spec(&[too_many.seed("b-0")], 6)),
        ("c-0".into(), task_spec(&[crawl_delay.seed("c-0")], 2)),
        ("d-0".into(), task_spec(&[silent.seed("d-0")], 1)),
    ];
    for i in 1..=3 {
        tasks.push((
            format!("a-{i}"),
            task_spec(&[h1.seed(&format!("a-{i}"))], 8),
        ));
    }
    for i in 4..=6 {
        tasks.push((
            format!("a-{i}"),
            task_spec(&[h2.seed(&format!("a-{i}"))], 8),
        ));
    }
    for i in 7..=8 {
        tasks.push((format!("a-{i}"), task_spec(&both(&format!("a-{i}")), 8)));
    }
    for i in 1..=4 {
        tasks.push((
            format!("b-{i}"),
            task_spec(&[too_many.seed(&format!("b-{i}"))], 6),
        ));
    }
    for i in 1..=3 {
        tasks.push((
            format!("c-{i}"),
            task_spec(&[crawl_delay.seed(&format!("c-{i}"))], 2),
        ));
    }
    tasks.push(("d-1".into(), task_spec(&[silent.seed("d-1")], 1)));
    tasks
}

/// Kills the worker process that `task` was first placed on; returns its name.
async fn kill_worker_of(
    story: &Story,
    first: &BTreeMap<String, String>,
    task: &str,
    started: Instant,
) -> String {
    let leaving = first[task].clone();
    let index: usize = leaving["worker-".len()..].parse().unwrap();
    story.workers[index - 1].stop().await;
    println!("killed {leaving} (of {task}) at {:?}", started.elapsed());
    leaving
}

/// Group B's worker leaves inside the 429 host's Retry-After window, once its tasks have
/// reported the window (with host affinity: without it, group B's tasks run on several workers,
/// and those that met no 429 have nothing to report); returns the worker killed.
async fn leave_inside_the_window(
    story: &Story,
    too_many: &Host,
    first: &BTreeMap<String, String>,
    (started, affinity): (Instant, bool),
) -> String {
    // Group B's worker leaves inside the 429 host's Retry-After window, once its tasks have
    // reported the window (`status.progress.hostBackoff`; a worker that dies between a 429 and
    // its next report cannot pass it on): group B moves while no request may go to the host,
    // and the worker that takes it over must keep out of the window too.
    wait_for(
        "the 429 host answered its 429",
        Duration::from_secs(60),
        POLL,
        || async {
            let n = too_many.log.windows.lock().len();
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} windows"))
            }
        },
    )
    .await;
    if affinity {
        wait_for(
            "group B's running tasks reported the window",
            Duration::from_secs(15),
            POLL,
            || async {
                let mut silent = Vec::new();
                for i in 0..=4 {
                    let name = format!("b-{i}");
                    let r = story.api().get(&name).await.map_err(|e| e.to_string())?;
                    let status = r.status.as_ref();
                    let reported = status
                        .and_then(|s| s.progress.as_ref())
                        .and_then(|p| p.host_backoff.as_ref())
                        .is_some_and(|b| b.host == too_many.ip && b.status == 429);
                    if !reported && !matches!(phase(&r), Some(Phase::Succeeded | Phase::Failed)) {
                        silent.push(name);
                    }
                }
                if silent.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not reported by {silent:?}"))
                }
            },
        )
        .await;
    }
    kill_worker_of(story, first, "b-0", started).await
}

/// The crawl the judge judges; returns the violations it counted. With `affinity` false the
/// controller places by load alone, so tasks sharing a host run on several workers.
async fn crawl_and_judge(prefix: &str, affinity: bool, ips: [&'static str; 6]) -> usize {
    let plain = [
        start_host(ips[0], Kind::Plain).await,
        start_host(ips[1], Kind::Plain).await,
    ];
    // A window long enough for group B's five tasks to report it (each within a checkpoint and
    // a report tick, then a status write) on a loaded machine before their worker is killed
    // inside it: with 10 s, a `make test` once saw them not all reported after 10 s.
    let too_many = start_host(ips[2], Kind::TooMany { retry_after: 20 }).await;
    let crawl_delay = start_host(ips[3], Kind::CrawlDelay { seconds: 3 }).await;
    let silent = start_host(ips[4], Kind::Silent).await;
    let joined_host = start_host(ips[5], Kind::Plain).await;

    let mut story = Story::new(prefix).await;
    for w in ["worker-1", "worker-2", "worker-3", "worker-4"] {
        story.ready_worker(w).await;
        story.start_worker_with(w, None, &budget_flags());
    }
    story.start_controller_with(
        "controller-a",
        None,
        &[&format!("--host-affinity={affinity}")],
    );

    let tasks = twenty_tasks(&plain, &too_many, &crawl_delay, &silent);
    assert_eq!(tasks.len(), 20);
    let started = Instant::now();
    for (name, spec) in &tasks {
        story.apply_resource(name, spec.clone()).await;
    }
    let names: Vec<String> = tasks.iter().map(|(n, _)| n.clone()).collect();
    let first = placed(&story, &names).await;
    println!("placed: {first:?}");
    if affinity {
        for group in ["a-", "b-", "c-", "d-"] {
            let on: BTreeSet<&String> = first
                .iter()
                .filter(|(t, _)| t.starts_with(group))
                .map(|(_, w)| w)
                .collect();
            assert_eq!(on.len(), 1, "group {group} runs on one worker: {first:?}");
        }
    }

    // Group A's worker leaves mid-crawl (killed: its heartbeat lapses, the group follows its
    // first moved task), once h1 has seen some of it.
    wait_for(
        "h1 crawled a while",
        Duration::from_secs(60),
        POLL,
        || async {
            let n = plain[0].log.seen.lock().len();
            if n >= 6 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        },
    )
    .await;
    kill_worker_of(&story, &first, "a-0", started).await;

    let leaving_b = leave_inside_the_window(&story, &too_many, &first, (started, affinity)).await;

    // A worker joins; a new group (two tasks on a sixth host) goes to it, the least loaded
    // (its name sorts first, so it wins ties with workers whose tasks finished).
    story.ready_worker("worker-0").await;
    story.start_worker_with("worker-0", None, &budget_flags());
    let joined: Vec<String> = vec!["e-0".into(), "e-1".into()];
    for name in &joined {
        story
            .apply_resource(name, task_spec(&[joined_host.seed(name)], 6))
            .await;
    }
    let on_joined = placed(&story, &joined).await;
    println!("joined: {on_joined:?}");

    let mut all = names.clone();
    all.extend(joined.iter().cloned());
    wait_until_finished(&story, &all, Duration::from_secs(240)).await;
    println!("finished after {:?}", started.elapsed());

    let hosts: Vec<&Host> = plain
        .iter()
        .chain([&too_many, &crawl_delay, &silent, &joined_host])
        .collect();
    let violations = judge_all(&hosts, started);

    // The judge had something to judge.
    for host in &hosts {
        assert!(
            host.log.seen.lock().len() >= 2,
            "{} saw no crawl: {}",
            host.ip,
            story.logs()
        );
    }
    if affinity {
        assert_eq!(
            too_many.log.windows.lock().len(),
            1,
            "the 429 host answered one 429"
        );
        assert!(
            on_joined.values().all(|w| w == "worker-0"),
            "the new group went to the worker that joined: {on_joined:?}"
        );
        // The window was crossed by the move: the 429 host heard from group B's new worker.
        let workers = judge(&too_many, started).workers;
        assert!(
            workers.len() >= 2 && workers.contains(&leaving_b),
            "group B moved off {leaving_b} and went on elsewhere: {workers:?}"
        );
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tasks_on_four_workers_keep_every_host_budget() {
    let ips = [
        "127.0.24.1",
        "127.0.24.2",
        "127.0.24.3",
        "127.0.24.4",
        "127.0.24.5",
        "127.0.24.6",
    ];
    let violations = Box::pin(crawl_and_judge("polite", true, ips)).await;
    assert_eq!(violations, 0, "requests that broke a host's budget");
}

/// The same crawl with host affinity off: each worker keeps the budget for its own tasks only,
/// so a host crawled from several workers gets several times its budget, and the judge sees it.
/// Ignored (it only shows that the judge can fail; 2 minutes): run it with `-- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "shows the judge failing without host affinity; run by hand"]
async fn without_host_affinity_the_judge_counts_violations() {
    let ips = [
        "127.0.25.1",
        "127.0.25.2",
        "127.0.25.3",
        "127.0.25.4",
        "127.0.25.5",
        "127.0.25.6",
    ];
    let violations = Box::pin(crawl_and_judge("impolite", false, ips)).await;
    assert!(
        violations > 0,
        "the judge saw no violation without host affinity"
    );
}

// === the waiting case ===

/// The `Assigned` condition's message of `name` once its reason is `reason` and its message
/// contains `part`.
async fn condition(
    story: &Story,
    name: &str,
    reason: &str,
    part: &str,
) -> (String, CrawlerResource) {
    let r = story
        .wait_for_resource(
            name,
            &format!("condition reason {reason} saying {part}"),
            |r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.condition(CONDITION_ASSIGNED))
                    .is_some_and(|c| c.reason == reason && c.message.contains(part))
            },
        )
        .await;
    let message = r
        .status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_ASSIGNED))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    (message, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_hosts_are_held_on_a_full_worker_waits_and_says_why() {
    let mut story = Story::new("hostwait").await;
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    for worker in ["worker-1", "worker-2"] {
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(story.client.clone(), story.ns())
            .patch(
                worker,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({ "metadata": { "annotations": { "crawler.dev/capacity": "1" } } }),
                ),
            )
            .await
            .unwrap();
    }
    story.start_controller_with("controller-a", None, &["--host-affinity=true"]);
    story.wait_for_leader("controller-a").await;
    let spec = |hosts: &[&str]| {
        json!({
            "seeds": hosts.iter().map(|h| format!("https://{h}/")).collect::<Vec<_>>(),
        })
    };

    // a crawls books.example.org on worker-1 (ties go to the smallest name), which is then full.
    story
        .apply_resource("a", spec(&["books.example.org"]))
        .await;
    story.assert_assigned("a", "worker-1").await;
    // b shares the host: only worker-1 may take it, and it is full.
    story
        .apply_resource("b", spec(&["books.example.org"]))
        .await;
    let (message, r) = condition(&story, "b", "HostAffinity", "(by task a)").await;
    println!("b: {message}");
    assert_eq!(phase(&r), Some(Phase::Unschedulable));
    assert_eq!(
        message,
        "0/2 workers eligible: 1 does not crawl its hosts, 1 has insufficient capacity for \
         weight 1; host books.example.org is crawled on worker worker-1 (by task a) and tasks \
         that share a host run on one worker, so that the host's politeness budget holds for the \
         whole installation: make room on worker-1 (raise its capacity or stop a task there) or \
         make it ready, or crawl other hosts (spec.allowedHosts); the task waits until then"
    );

    // c crawls another host: worker-2 (full then). d crawls both hosts: they are crawled on
    // two workers.
    story
        .apply_resource("c", spec(&["films.example.org"]))
        .await;
    story.assert_assigned("c", "worker-2").await;
    story
        .apply_resource("d", spec(&["films.example.org", "books.example.org"]))
        .await;
    let (message, _) = condition(&story, "d", "HostAffinity", "(by task c)").await;
    println!("d: {message}");
    assert!(
        message.starts_with("0/2 workers eligible: 2 do not crawl its hosts; host ")
            && message.contains("books.example.org is crawled on worker worker-1 (by task a)")
            && message.contains("films.example.org on worker worker-2 (by task c)")
            && message.contains("the task waits until one of them finishes or moves"),
        "{message}"
    );

    // a ends: books.example.org is free on worker-1, and b, waiting for it, goes at once.
    story
        .api()
        .delete("a", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    story.assert_assigned("b", "worker-1").await;
    // d still waits: b now holds books.example.org on worker-1, c films.example.org on worker-2.
    let (message, r) = condition(&story, "d", "HostAffinity", "(by task b)").await;
    println!("d: {message}");
    assert_eq!(phase(&r), Some(Phase::Unschedulable));
}

// === the aggregate rate: 1,000 hosts, 10 workers ===

/// Hosts for the rate benchmark: 127.0.30.1 onwards.
fn bench_ip(i: usize) -> &'static str {
    Box::leak(format!("127.0.{}.{}", 30 + i / 250, i % 250 + 1).into_boxed_str())
}

/// Requests all `hosts` received between `from` and `to`.
fn requests_between(hosts: &[Host], from: Instant, to: Instant) -> usize {
    hosts
        .iter()
        .map(|h| {
            h.log
                .seen
                .lock()
                .iter()
                .filter(|s| s.arrived >= from && s.arrived < to)
                .count()
        })
        .sum()
}

/// One run of the rate benchmark: 10 worker processes (`worker_flags`), one endless task per
/// host, placed with host affinity; returns the aggregate rate (requests/s) the hosts saw over
/// `window`, once every task was placed and had `warmup` to start.
async fn aggregate_rate(
    prefix: &str,
    hosts: &[Host],
    worker_flags: &[String],
    window: Duration,
) -> f64 {
    let mut story = Story::new(prefix).await;
    // The production heartbeat (the harness's 2 s lapses on a loaded machine, stopping tasks).
    let mut flags = worker_flags.to_vec();
    flags.push("--heartbeat-duration=10s".to_owned());
    // Progress every 5 s, not the harness's 300 ms: 1,000 tasks reporting 3 times a second
    // swamp the test API server, and the workers' assignment views go stale.
    flags.push("--progress-interval=5s".to_owned());
    for i in 0..10 {
        let w = format!("worker-{i}");
        story.ready_worker(&w).await;
        story.start_worker_with(&w, None, &flags);
    }
    story.start_controller_with("controller-a", None, &["--host-affinity=true"]);
    story.wait_for_leader("controller-a").await;
    let names: Vec<String> = (0..hosts.len()).map(|i| format!("{prefix}-{i}")).collect();
    for (name, host) in names.iter().zip(hosts) {
        story
            .apply_resource(
                name,
                json!({
                    "seeds": [host.seed(name)],
                    "maxDepth": 10,
                    "maxPages": 1_000_000,
                    "rateLimit": { "requestsPerSecond": 100, "burst": 1 },
                }),
            )
            .await;
    }
    let api = story.api();
    let want = names.len();
    wait_for(
        "every task placed",
        Duration::from_secs(120),
        POLL * 10,
        || {
            let api = api.clone();
            async move {
                let list = api
                    .list(&kube::api::ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let placed = list
                    .items
                    .iter()
                    .filter(|r| assigned_worker(r).is_some())
                    .count();
                if placed == want {
                    Ok(())
                } else {
                    Err(format!("{placed} placed"))
                }
            }
        },
    )
    .await;
    // Every task has started (its first request came) before the window opens.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let from = Instant::now();
    tokio::time::sleep(window).await;
    let to = Instant::now();
    let requests = u32::try_from(requests_between(hosts, from, to)).unwrap_or(u32::MAX);
    let rate = f64::from(requests) / window.as_secs_f64();
    if std::env::var("BENCH_DEBUG").is_ok() {
        println!("{}", story.workers[0].log_tail(40));
    }
    for w in &story.workers {
        w.stop().await;
    }
    rate
}

/// The aggregate rate when 1,000 hosts are crawled by 10 worker processes, against the sum of
/// the hosts' budgets (1,000 x 2/s) and the machine's limit (the same crawl with the budget
/// lifted). `make bench-hosts` runs it in release and prints the `BENCH hosts` line that
/// BENCHMARKS.md quotes. Also judged: no host got more than its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (2-3 minutes): make bench-hosts"]
async fn thousand_hosts_by_ten_workers() {
    let count: usize = std::env::var("BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let window = Duration::from_secs(20);
    let mut hosts = Vec::with_capacity(count);
    for i in 0..count {
        hosts.push(start_host(bench_ip(i), Kind::Plain).await);
    }
    let budget = Box::pin(aggregate_rate("rate", &hosts, &budget_flags(), window)).await;
    let started = Instant::now();
    let violations: usize = hosts.iter().map(|h| judge(h, started).violations()).sum();
    let lifted = [
        "--host-requests-per-second=1000".to_owned(),
        "--host-max-in-flight=64".to_owned(),
    ];
    let machine = Box::pin(aggregate_rate("machine", &hosts, &lifted, window)).await;
    let budgets = f64::from(u32::try_from(count).unwrap_or(u32::MAX)) * 2.0;
    let goal = budgets.min(machine);
    println!(
        "BENCH hosts={count} workers=10 budget_per_host=2/s sum_of_budgets={budgets:.0}/s \
         rate={budget:.0}/s machine_limit={machine:.0}/s goal={goal:.0}/s \
         ratio={:.2} violations={violations}",
        budget / goal
    );
    assert_eq!(violations, 0, "a host got more than its budget");
}

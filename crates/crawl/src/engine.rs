//! The crawl loop: breadth-first from the seeds, one rate limit for the
//! whole task, `robots.txt` per origin, and prompt cancellation.
//!
//! ```text
//!  queue (FIFO, by depth) ──dispatch──▶ in flight (≤ concurrency, one depth at a time)
//!        ▲                                  │ visit: robots → rate limit → request(s)
//!        └──── new links (allowed, unseen) ◀┘──▶ record ──▶ sink, progress
//! ```
//!
//! Everything runs in the caller's task: visits are futures polled by the
//! loop, so dropping them (on cancel) drops their connections too.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};
use http::{
    HeaderMap, HeaderValue, StatusCode,
    header::{
        ACCEPT, CONTENT_TYPE, ETAG, HeaderName, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
        LOCATION, RETRY_AFTER, USER_AGENT,
    },
};
use jiff::Timestamp;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

use super::{
    address::{self, find_blocked},
    client::{self, Client, HttpError},
    config::{CrawlConfig, Validated},
    error::{CrawlError, FetchError, error_chain},
    extract::{Extraction, Rules},
    html::{self, Page},
    polite::HostBackoff,
    robots::{Denied, MAX_ROBOTS_BYTES, MAX_ROBOTS_REDIRECTS, Robots, RobotsResponse},
    sink::{Discovered, PageRecord, Previous, Sink, Stored},
    sitemap,
    urls::{origin_key, resolve},
};

/// How far a crawl has got; handed to the progress callback after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Pages that got an HTTP response (any status).
    pub pages_fetched: u64,
    /// Records with an error (timeouts, redirect loops, robots refusals, …).
    pub errors: u64,
    /// Body bytes read from pages.
    pub bytes: u64,
    /// Records whose rule's required fields were missing (see `PageRecord::incomplete`).
    pub incomplete: u64,
    /// Pages found unchanged since an earlier run (see `PageRecord::unchanged`).
    pub pages_unchanged: u64,
    /// URLs waiting to be visited.
    pub queued: usize,
    /// Visits under way.
    pub in_flight: usize,
    /// When the last record was produced.
    pub last_activity: Option<Timestamp>,
    /// A host of this crawl that answered 429 or 503 and gets no request until its window
    /// ends (the latest such window still open).
    pub host_backoff: Option<HostBackoff>,
}

impl Progress {
    /// Counts a finished visit's record.
    fn tally(&mut self, record: &PageRecord) {
        self.pages_fetched += u64::from(record.status.is_some());
        self.errors += u64::from(record.error.is_some());
        self.bytes += record.bytes;
        self.incomplete += u64::from(record.incomplete);
        self.pages_unchanged += u64::from(record.unchanged);
        self.last_activity = Some(Timestamp::now());
    }
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StopReason {
    /// Every reachable URL within the limits was visited.
    Finished,
    /// `max_pages` requests were made and links were left unvisited.
    MaxPages,
    /// The cancellation token fired.
    Cancelled,
}

/// What a finished [`run`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawlOutcome {
    pub stop: StopReason,
    pub progress: Progress,
}

/// A progress callback that publishes into a `watch` channel, for a worker
/// that reads the latest progress from another task.
pub fn watch_progress(
    tx: tokio::sync::watch::Sender<Progress>,
) -> impl FnMut(&Progress) + Send + 'static {
    move |progress| {
        tx.send_replace(progress.clone());
    }
}

/// Crawls as `config` says, writing one record per visited URL to `sink`.
///
/// Returns when the crawl is done, `max_pages` is reached, or `cancel` fires.
/// Once the token is cancelled no new request is handed to the HTTP client
/// (each request checks the token just before it is sent, and the loop stops
/// polling visits), and requests in flight are dropped, closing their
/// connections; the call then returns `Ok` with [`StopReason::Cancelled`].
/// A record being written when the token fires is finished first, so the
/// sink never holds half a line.
pub async fn run<S, P>(
    config: CrawlConfig,
    sink: S,
    cancel: CancellationToken,
    progress: P,
) -> Result<CrawlOutcome, CrawlError>
where
    S: Sink,
    P: FnMut(&Progress) + Send,
{
    run_from(config, None, sink, cancel, progress).await
}

/// Where a crawl that stopped (moved, restarted) picks up: what a store kept of its frontier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Every URL already visited or queued (normalised): none is queued again.
    pub seen: Vec<String>,
    /// URLs still to visit and their depth, shallowest first.
    pub queue: Vec<(String, u32)>,
    /// The counts so far, continued rather than restarted.
    pub progress: Progress,
    /// Requests made so far, counted against `max_pages`.
    pub requested: u64,
    /// What earlier runs stored, looked up per URL for conditional requests (`None`: the first
    /// run, or a sink without validators).
    pub previous: Option<PreviousFetches>,
}

impl Frontier {
    /// Nothing of this run fetched yet: a new run (or one that stopped before its first page).
    fn is_fresh(&self) -> bool {
        self.requested == 0 && self.progress.pages_fetched == 0
    }
}

/// A handle on a store's [`Previous`] fetches. Two handles are equal when they are the same
/// store's.
#[derive(Clone)]
pub struct PreviousFetches(pub Arc<dyn Previous>);

impl std::fmt::Debug for PreviousFetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreviousFetches")
    }
}

impl PartialEq for PreviousFetches {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PreviousFetches {}

/// [`run`], resuming from `frontier` when given (`None`: start from the seeds). The frontier is
/// checked against `config` first: queued URLs it no longer allows (their host, their depth)
/// are dropped, and seeds not seen yet are queued, so a spec changed since the frontier was
/// stored is what the crawl follows. A frontier whose queue is then empty is a finished crawl:
/// it returns [`StopReason::Finished`] at once.
pub async fn run_from<S, P>(
    config: CrawlConfig,
    frontier: Option<Frontier>,
    mut sink: S,
    cancel: CancellationToken,
    mut progress: P,
) -> Result<CrawlOutcome, CrawlError>
where
    S: Sink,
    P: FnMut(&Progress) + Send,
{
    let cfg = config.validated().map_err(|source| CrawlError::Config {
        task: config.task.clone(),
        source,
    })?;
    let engine = Engine::new(cfg, cancel.clone()).with_store(&sink, frontier.as_ref());
    let fresh = frontier.as_ref().is_none_or(Frontier::is_fresh);
    let cfg = &engine.cfg;
    info!(
        task = %cfg.task,
        seeds = cfg.seeds.len(),
        max_depth = cfg.max_depth,
        period_ms = cfg.period.as_millis(),
        burst = cfg.burst,
        headers = ?config.headers.names().collect::<Vec<_>>(),
        "crawl starting"
    );

    let (mut queue, mut state, mut requested) = engine.start(frontier);
    let mut in_flight = FuturesUnordered::new();
    // Depth of the visits in flight: a level is finished before the next
    // starts, so every URL is first reached at its smallest depth.
    let mut level = queue.front().map_or(0, |(_, depth, _)| *depth);
    // A buffering sink writes its batch (a checkpoint of the frontier) at least this often.
    let mut checkpoint = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.checkpoint_interval,
        cfg.checkpoint_interval,
    );
    let sink_error = |url: &str, source| CrawlError::Sink {
        task: cfg.task.clone(),
        url: url.to_owned(),
        source,
    };
    // Links left out because the queue already held all that `max_pages` allows.
    let mut left_out = false;
    let mut discovered: Vec<Discovered> = Vec::new();
    if cfg.sitemaps && fresh {
        // Stored with the first record, so a move keeps them queued.
        left_out = engine
            .queue_robots_sitemaps(requested, &mut queue, &mut discovered)
            .await;
    }

    let stop = loop {
        if cancel.is_cancelled() {
            break StopReason::Cancelled;
        }
        while in_flight.len() < cfg.concurrency
            && requested + (in_flight.len() as u64) < cfg.max_pages
            && queue
                .front()
                .is_some_and(|(_, depth, _)| in_flight.is_empty() || *depth == level)
        {
            let Some((url, depth, rule)) = queue.pop_front() else {
                break;
            };
            level = depth;
            in_flight.push(engine.visit(url, depth, rule));
        }
        state.queued = queue.len();
        state.in_flight = in_flight.len();
        progress(&state);
        if in_flight.is_empty() {
            break if queue.is_empty() && !left_out {
                StopReason::Finished
            } else {
                StopReason::MaxPages
            };
        }

        let mut visit = tokio::select! {
            biased;
            () = cancel.cancelled() => break StopReason::Cancelled,
            _ = checkpoint.tick() => {
                if !checkpoint_unless_stopped(&mut sink, &cancel, &cfg.task).await? {
                    break StopReason::Cancelled;
                }
                // Reported also while every visit waits out a window (no visit ends then).
                state.host_backoff = engine.current_backoff();
                continue;
            }
            Some(visit) = in_flight.next() => visit,
        };

        requested += u64::from(visit.requested);
        state.tally(&visit.record);
        state.host_backoff = engine.current_backoff();
        state.in_flight = in_flight.len();
        let room = requested + in_flight.len() as u64;
        left_out |= engine.queue_links(&mut visit, room, &mut queue, &mut discovered);
        state.queued = queue.len();
        sink.write_visit(&visit.record, &discovered)
            .await
            .map_err(|source| sink_error(&visit.record.url, source))?;
        discovered.clear();
        progress(&state);
    };
    // Dropping the visits drops their requests and connections.
    drop(in_flight);
    let stop = final_checkpoint(sink, &cfg.task, stop, &cancel).await?;

    state.queued = queue.len();
    state.in_flight = 0;
    progress(&state);
    info!(task = %cfg.task, ?stop, progress = ?state, "crawl stopped");
    Ok(CrawlOutcome {
        stop,
        progress: state,
    })
}

/// Writes a checkpoint unless the crawl is stopped first: a store that cannot take it yet (it
/// waits out its database) gives way to the stop, and the final checkpoint tries once more,
/// within its bound. `Ok(false)`: stopped.
async fn checkpoint_unless_stopped<S: Sink>(
    sink: &mut S,
    cancel: &CancellationToken,
    task: &str,
) -> Result<bool, CrawlError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(false),
        flushed = sink.flush() => flushed.map(|()| true).map_err(|source| CrawlError::Sink {
            task: task.to_owned(),
            url: "(checkpoint)".to_owned(),
            source,
        }),
    }
}

/// Makes what was written durable when the crawl stops; returns how it stopped.
///
/// A crawl that ended by itself waits for its last batch as for any checkpoint (it is only done
/// once everything is stored), unless it is cancelled meanwhile. A cancelled crawl (a moved
/// task's last batch is kept unless the new owner has written already: the store's fence
/// decides) gives it [`FINAL_FLUSH_TIMEOUT`]: what is not written by then, or cannot be written,
/// is fetched again by the next owner. A refusal as stale is returned (the caller says why the
/// task stopped). The sink is dropped at the end: one dropped with a batch unwritten gives it up
/// (the PostgreSQL sink aborts its writer).
async fn final_checkpoint<S: Sink>(
    mut sink: S,
    task: &str,
    stop: StopReason,
    cancel: &CancellationToken,
) -> Result<StopReason, CrawlError> {
    let sink_error = |source| CrawlError::Sink {
        task: task.to_owned(),
        url: "(final checkpoint)".to_owned(),
        source,
    };
    if stop != StopReason::Cancelled {
        tokio::select! {
            biased;
            flushed = sink.flush() => return flushed.map(|()| stop).map_err(sink_error),
            () = cancel.cancelled() => {}
        }
    }
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, sink.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_fenced() => return Err(sink_error(e)),
        Ok(Err(e)) => warn!(
            task,
            error = %e,
            "the final checkpoint failed; the next owner fetches what it held again"
        ),
        Err(_) => warn!(
            task,
            "the final checkpoint did not finish within {FINAL_FLUSH_TIMEOUT:?}; the next owner fetches what it held again"
        ),
    }
    Ok(StopReason::Cancelled)
}

/// A URL waiting to be visited: its depth and the extraction rule it will be given.
type Queued = (Url, u32, Option<usize>);

/// How long a stopping crawl waits for its sink's last checkpoint.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// What one task shares between its visits.
struct Engine {
    cfg: Validated,
    client: Client,
    limiter: Limiter,
    clock: DefaultClock,
    /// Every URL queued or fetched (redirect targets too): each is requested once.
    seen: Mutex<HashSet<Url>>,
    /// The latest 429/503 window one of this crawl's requests opened.
    backoff: Mutex<Option<HostBackoff>>,
    /// The task's hosts as the gate keys them (its allowed hosts or its seeds' hosts): whose
    /// windows its progress reports, whoever opened them.
    hosts: Vec<String>,
    cancel: CancellationToken,
    /// The sink stores validators: compute each page's hash and followed links.
    keep: bool,
    /// Earlier runs' fetches, looked up per URL.
    previous: Option<PreviousFetches>,
    /// The `lastmod` sitemaps gave for URLs (kept only with `previous`, the one use of it).
    lastmods: Mutex<HashMap<Url, Timestamp>>,
}

/// One finished visit.
struct Visit {
    record: PageRecord,
    /// Links to queue with the rule each will get (the engine still checks hosts, depth and `seen`).
    follow: Vec<(Url, Option<usize>)>,
    /// A request was sent for the page.
    requested: bool,
    /// The URLs a sitemap lists (the page was one), with their `lastmod`.
    sitemap: Vec<(Url, Option<Timestamp>)>,
}

/// Why a page counts as unchanged since an earlier run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unchanged {
    /// 304 to the stored validators.
    NotModified,
    /// 200 with the stored body hash.
    SameBody,
    /// A sitemap `lastmod` not newer than the stored fetch: not requested.
    Lastmod,
}

/// What a visit has learned so far; kept when it ends in an error.
struct Attempt {
    final_url: Url,
    status: Option<u16>,
    started_at: Option<Timestamp>,
    elapsed: Duration,
    requested: bool,
    content_type: Option<String>,
    bytes: u64,
    truncated: bool,
    page: Page,
    /// What the page's rule extracted (a parsed HTML page with a rule only).
    extraction: Option<Extraction>,
    /// Requests for the URL itself, retries included.
    attempts: u32,
    /// The last failure that was retried.
    last_error: Option<String>,
    /// What an earlier run stored of the URL.
    stored: Option<Stored>,
    unchanged: Option<Unchanged>,
    etag: Option<String>,
    last_modified: Option<String>,
    content_hash: Option<String>,
    /// The URLs the page lists, when it is a sitemap.
    sitemap: Vec<(Url, Option<Timestamp>)>,
}

impl Attempt {
    /// Nothing learned yet about `url`.
    fn new(url: &Url) -> Self {
        Self {
            final_url: url.clone(),
            status: None,
            started_at: None,
            elapsed: Duration::ZERO,
            requested: false,
            content_type: None,
            bytes: 0,
            truncated: false,
            page: Page::default(),
            extraction: None,
            attempts: 0,
            last_error: None,
            stored: None,
            unchanged: None,
            etag: None,
            last_modified: None,
            content_hash: None,
            sitemap: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Page,
    Robots,
}

/// An [`Exchange`] and when it happened.
struct Timed {
    sent_at: Timestamp,
    elapsed: Duration,
    result: Result<Exchange, FetchError>,
}

/// One request and its response, redirects not followed.
enum Exchange {
    Redirect {
        status: u16,
        location: Option<String>,
    },
    Done {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
        truncated: bool,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

impl Engine {
    /// Queues the allowed, unseen links at `depth`, and records them in `discovered`; returns
    /// whether some were left out. The queue never holds more than `room` (the pages still
    /// allowed), so a huge site cannot grow it without bound. A link left out is not marked
    /// seen: found again once there is room, it is queued then.
    fn follow(
        &self,
        links: Vec<(Url, Option<usize>)>,
        depth: u32,
        room: u64,
        queue: &mut VecDeque<Queued>,
        discovered: &mut Vec<Discovered>,
    ) -> bool {
        let mut seen = self.seen.lock();
        for (link, rule) in links {
            if !self.cfg.hosts.allows(&link) || seen.contains(&link) {
                continue;
            }
            if queue.len() as u64 >= room {
                return true;
            }
            seen.insert(link.clone());
            discovered.push(Discovered {
                url: link.to_string(),
                depth,
            });
            queue.push_back((link, depth, rule));
        }
        false
    }

    /// Queues the URLs a sitemap lists (or `robots.txt` names) at `depth`, the sitemap's own, in
    /// front of the queue (whose entries are all at least that deep), like [`Engine::follow`]
    /// otherwise; keeps their `lastmod` when an earlier run's fetches can be compared with it.
    fn follow_sitemap(
        &self,
        entries: Vec<(Url, Option<Timestamp>)>,
        depth: u32,
        room: u64,
        queue: &mut VecDeque<Queued>,
        discovered: &mut Vec<Discovered>,
    ) -> bool {
        let mut seen = self.seen.lock();
        let mut lastmods = self.lastmods.lock();
        let mut front = Vec::new();
        let mut left_out = false;
        for (link, lastmod) in entries {
            if !self.cfg.hosts.allows(&link) || seen.contains(&link) {
                continue;
            }
            if (queue.len() + front.len()) as u64 >= room {
                left_out = true;
                break;
            }
            seen.insert(link.clone());
            if let Some(lastmod) = lastmod.filter(|_| self.previous.is_some()) {
                lastmods.insert(link.clone(), lastmod);
            }
            discovered.push(Discovered {
                url: link.to_string(),
                depth,
            });
            let rule = self.cfg.rules.rule_for(link.as_str());
            front.push((link, depth, rule));
        }
        for entry in front.into_iter().rev() {
            queue.push_front(entry);
        }
        left_out
    }

    /// What a sink that stores validators keeps of a page's links: those followed (or listed,
    /// for a sitemap) within the allowed hosts.
    fn followed(
        &self,
        follow: &[(Url, Option<usize>)],
        sitemap: &[(Url, Option<Timestamp>)],
    ) -> Vec<String> {
        if !self.keep {
            return Vec::new();
        }
        follow
            .iter()
            .map(|(link, _)| link)
            .chain(sitemap.iter().map(|(link, _)| link))
            .filter(|link| self.cfg.hosts.allows(link))
            .map(ToString::to_string)
            .collect()
    }

    /// Queues what a finished visit leads to: the URLs it lists if it is a sitemap (at its
    /// depth), its links (one deeper, within `max_depth`). `used`: the requests made or in
    /// flight, which the queue's room is `max_pages` less. Returns whether some were left out.
    fn queue_links(
        &self,
        visit: &mut Visit,
        used: u64,
        queue: &mut VecDeque<Queued>,
        discovered: &mut Vec<Discovered>,
    ) -> bool {
        let room = self.cfg.max_pages.saturating_sub(used);
        let depth = visit.record.depth;
        let sitemap = std::mem::take(&mut visit.sitemap);
        let mut left_out = self.follow_sitemap(sitemap, depth, room, queue, discovered);
        if depth < self.cfg.max_depth {
            let follow = std::mem::take(&mut visit.follow);
            left_out |= self.follow(follow, depth + 1, room, queue, discovered);
        }
        left_out
    }

    /// Whether `sink` keeps validators (then pages are hashed and their followed links kept),
    /// and what earlier runs stored, from the frontier.
    fn with_store<S: Sink>(mut self, sink: &S, frontier: Option<&Frontier>) -> Self {
        self.keep = sink.stores_validators();
        self.previous = frontier.and_then(|f| f.previous.clone());
        self
    }

    /// Queues the sitemaps the seed hosts' `robots.txt` name with the seeds (at depth 0);
    /// returns whether some were left out (`max_pages`).
    async fn queue_robots_sitemaps(
        &self,
        requested: u64,
        queue: &mut VecDeque<Queued>,
        discovered: &mut Vec<Discovered>,
    ) -> bool {
        let found = self.robots_sitemaps().await;
        let room = self.cfg.max_pages.saturating_sub(requested);
        self.follow_sitemap(found, 0, room, queue, discovered)
    }

    /// The `Sitemap:` URLs of the seed hosts' `robots.txt` (fetched once, through the cache
    /// the robots rules use), each once.
    async fn robots_sitemaps(&self) -> Vec<(Url, Option<Timestamp>)> {
        let mut origins: Vec<&Url> = Vec::new();
        for seed in &self.cfg.seeds {
            if !origins.iter().any(|o| origin_key(o) == origin_key(seed)) {
                origins.push(seed);
            }
        }
        let mut found: Vec<(Url, Option<Timestamp>)> = Vec::new();
        for seed in origins {
            let (_, entry) = self.robots_of(seed).await;
            if let Some((_, Robots::Rules(robot))) = entry.cell.get() {
                for line in &robot.sitemaps {
                    if let Some(url) = Url::parse(line.trim())
                        .ok()
                        .and_then(|u| crate::urls::normalize(&u))
                        && !found.iter().any(|(f, _)| *f == url)
                    {
                        found.push((url, None));
                    }
                }
            }
        }
        found
    }

    /// The queue, counts and requests to start from: the seeds, or a stored frontier (whose
    /// seen URLs are marked seen here). Each queued URL carries the extraction rule it will be
    /// given; a resumed URL gets the rule its URL matches (a rule named by a `follow` entry of
    /// the page that linked it is not stored).
    fn start(&self, frontier: Option<Frontier>) -> (VecDeque<Queued>, Progress, u64) {
        let cfg = &self.cfg;
        let Some(frontier) = frontier else {
            self.seen.lock().extend(cfg.seeds.iter().cloned());
            let queue = cfg
                .seeds
                .iter()
                .map(|s| (s.clone(), 0, cfg.rules.rule_for(s.as_str())))
                .collect();
            return (queue, Progress::default(), 0);
        };
        let parse = |u: &str| Url::parse(u).ok();
        // The spec may have changed since the frontier was stored (a new generation resumes the
        // same store): what the current one no longer allows (a host taken out of allowedHosts,
        // a depth past maxDepth) is dropped, and seeds it adds are queued.
        let mut dropped = 0_usize;
        let mut queue: Vec<Queued> = frontier
            .queue
            .iter()
            .filter_map(|(u, d)| {
                let url = parse(u)?;
                if *d > cfg.max_depth || !cfg.hosts.allows(&url) {
                    dropped += 1;
                    return None;
                }
                let rule = cfg.rules.rule_for(url.as_str());
                Some((url, *d, rule))
            })
            .collect();
        let mut seen = self.seen.lock();
        seen.extend(frontier.seen.iter().filter_map(|u| parse(u)));
        seen.extend(queue.iter().map(|(u, _, _)| u.clone()));
        for seed in &cfg.seeds {
            if seen.insert(seed.clone()) {
                queue.push((seed.clone(), 0, cfg.rules.rule_for(seed.as_str())));
            }
        }
        queue.sort_by_key(|(_, depth, _)| *depth);
        info!(task = %cfg.task, queued = queue.len(), dropped, seen = seen.len(), pages = frontier.progress.pages_fetched, "crawl resuming from its stored frontier");
        (queue.into(), frontier.progress, frontier.requested)
    }

    fn new(cfg: Validated, cancel: CancellationToken) -> Self {
        // Redirects are followed by the engine, so that each hop is rate limited, checked
        // against the hosts and robots.txt, and deduplicated. Names resolve through the address
        // guard, which drops internal addresses the policy refuses (IP literals, which skip
        // resolution, are checked in `exchange`). No proxy: one from the environment would
        // connect on the crawl's behalf, past the guard.
        let client = Client::new(
            address::guard(&cfg.resolver, &cfg.address_policy),
            tls_config(),
            cfg.request_timeout,
            cfg.send_deadline.clone(),
            cfg.concurrency,
        );
        let quota = Quota::with_period(cfg.period)
            .expect("validated period is not zero")
            .allow_burst(cfg.burst);
        let clock = DefaultClock::default();
        // Windows the task's previous owner reported: kept before the first request (robots.txt
        // included), for every task of this worker that crawls the host.
        for window in &cfg.carried_backoff {
            cfg.politeness.hold(window);
        }
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            client,
            seen: Mutex::new(HashSet::new()),
            backoff: Mutex::new(None),
            hosts: cfg.hosts.gate_keys(),
            cancel,
            cfg,
            keep: false,
            previous: None,
            lastmods: Mutex::new(HashMap::new()),
        }
    }

    async fn visit(&self, url: Url, depth: u32, rule: Option<usize>) -> Visit {
        let mut attempt = Attempt::new(&url);
        let result = self.fetch_page(&url, &mut attempt, rule).await;
        if let Err(err) = &result {
            debug!(task = %self.cfg.task, %url, kind = err.kind(), error = %error_chain(err), "page failed");
        } else {
            debug!(task = %self.cfg.task, %url, status = ?attempt.status, elapsed_ms = attempt.elapsed.as_millis(), "page fetched");
        }
        let links: Vec<String> = attempt.page.links.iter().map(ToString::to_string).collect();
        let rules = &self.cfg.rules;
        let bodiless = matches!(
            attempt.unchanged,
            Some(Unchanged::NotModified | Unchanged::Lastmod)
        );
        // A page with a rule that was not parsed (an error, a 404, not HTML) has none of the
        // rule's required fields; one unchanged without a body keeps what its stored fetch
        // extracted.
        let extraction = match (rule, attempt.extraction) {
            (Some(index), None) if !bodiless => Some(rules.extract_html(index, "", &url)),
            (_, extraction) => extraction,
        };
        let stored_links = match (attempt.unchanged, attempt.stored.take()) {
            (Some(Unchanged::NotModified | Unchanged::Lastmod), Some(stored)) => {
                Some(stored.followed)
            }
            _ => None,
        };
        let follow = if let Some(links) = &stored_links {
            // No body this time: the links the page led to when it was last read.
            let parsed = links.iter().filter_map(|l| Url::parse(l).ok());
            parsed
                .map(|l| (rules.rule_for(l.as_str()), l))
                .map(|(r, l)| (l, r))
                .collect()
        } else if rules.is_empty() {
            attempt
                .page
                .links
                .into_iter()
                .map(|link| (link, None))
                .collect()
        } else {
            follow_with_rules(rules, extraction.as_ref(), attempt.page.links)
        };
        let (fields, missing) = extraction
            .map(|e| (e.fields, e.missing))
            .unwrap_or_default();
        let followed = self.followed(&follow, &attempt.sitemap);
        let links = stored_links.unwrap_or(links);
        let record = PageRecord {
            task: self.cfg.task.clone(),
            url: url.to_string(),
            final_url: attempt.final_url.to_string(),
            status: attempt.status,
            title: attempt.page.title,
            links_count: links.len(),
            links,
            depth,
            fetched_at: attempt.started_at.unwrap_or_else(Timestamp::now),
            elapsed_ms: u64::try_from(attempt.elapsed.as_millis()).unwrap_or(u64::MAX),
            content_type: attempt.content_type,
            bytes: attempt.bytes,
            truncated: attempt.truncated,
            error_kind: result.as_ref().err().map(|e| e.kind().to_owned()),
            error: result.as_ref().err().map(|e| error_chain(e)),
            rule: rule.and_then(|index| rules.name(index)).map(str::to_owned),
            fields,
            incomplete: !missing.is_empty(),
            missing,
            attempts: attempt.attempts,
            last_error: attempt.last_error,
            run: self.cfg.run,
            unchanged: attempt.unchanged.is_some(),
            etag: attempt.etag,
            last_modified: attempt.last_modified,
            content_hash: attempt.content_hash,
            followed,
        };
        Visit {
            record,
            // A sitemap's URLs are queued as entry points of their own (`sitemap`).
            follow: if attempt.sitemap.is_empty() {
                follow
            } else {
                Vec::new()
            },
            requested: attempt.requested,
            sitemap: attempt.sitemap,
        }
    }

    /// Fetches `url`, following redirects, and parses it if it is HTML.
    async fn fetch_page(
        &self,
        url: &Url,
        attempt: &mut Attempt,
        rule: Option<usize>,
    ) -> Result<(), FetchError> {
        self.robots_allow(url).await?;
        if self.look_up(url, attempt).await {
            return Ok(());
        }
        let mut chain = vec![url.clone()];
        loop {
            let current = chain.last().expect("chain starts with the URL").clone();
            attempt.requested = true;
            let first = chain.len() == 1;
            let conditional = attempt.stored.as_ref().filter(|_| first);
            let result = self
                .exchange_retrying(&current, attempt, first, conditional.cloned())
                .await;
            match result? {
                Exchange::Redirect { status, location } => {
                    attempt.status = Some(status);
                    let target = location
                        .as_deref()
                        .and_then(|loc| resolve(&current, loc))
                        .ok_or_else(|| FetchError::BadRedirect {
                            url: current.to_string(),
                            status,
                            location: location.clone().unwrap_or_default(),
                        })?;
                    if chain.contains(&target) {
                        return Err(FetchError::RedirectLoop {
                            url: current.to_string(),
                            target: target.to_string(),
                        });
                    }
                    if chain.len() > self.cfg.max_redirects as usize {
                        return Err(FetchError::TooManyRedirects {
                            url: url.to_string(),
                            limit: self.cfg.max_redirects,
                        });
                    }
                    if !self.cfg.hosts.allows(&target) {
                        return Err(FetchError::RedirectOffsite {
                            url: current.to_string(),
                            target: target.to_string(),
                        });
                    }
                    attempt.final_url = target.clone();
                    if !self.seen.lock().insert(target.clone()) {
                        // Queued or fetched already; that visit has (or will
                        // have) its own record. Scrapy's duplicate filter
                        // treats redirect targets the same way.
                        return Ok(());
                    }
                    self.robots_allow(&target).await?;
                    chain.push(target);
                }
                Exchange::Done {
                    status,
                    content_type,
                    body,
                    truncated,
                    etag,
                    last_modified,
                } => {
                    attempt.status = Some(status);
                    attempt.bytes = body.len() as u64;
                    attempt.truncated = truncated;
                    if first && self.keep {
                        attempt.etag = etag;
                        attempt.last_modified = last_modified;
                    }
                    if status == 304 && conditional_sent(first, attempt.stored.as_ref()) {
                        attempt.unchanged = Some(Unchanged::NotModified);
                        attempt.content_type = content_type;
                        return Ok(());
                    }
                    if self.keep && !body.is_empty() {
                        let hash = content_hash(&body);
                        if first && same_body(attempt.stored.as_ref(), &hash) {
                            attempt.unchanged = Some(Unchanged::SameBody);
                        }
                        attempt.content_hash = Some(hash);
                    }
                    let xml =
                        self.cfg.sitemaps && content_type.as_deref().is_some_and(sitemap::is_xml);
                    if xml {
                        attempt.sitemap = self.sitemap_entries(&current, &body);
                    } else if !body.is_empty() {
                        let text = decode(&body, content_type.as_deref());
                        (attempt.page, attempt.extraction) =
                            html::parse_with_rule(&text, &current, &self.cfg.rules, rule);
                    }
                    attempt.content_type = content_type;
                    return Ok(());
                }
            }
        }
    }

    /// Looks up what an earlier run stored of `url` (into `attempt.stored`); returns whether the
    /// page is unchanged by its sitemap `lastmod` (then it is not requested).
    async fn look_up(&self, url: &Url, attempt: &mut Attempt) -> bool {
        let Some(previous) = &self.previous else {
            return false;
        };
        // A stored sitemap is fetched in full, always: it is where this run's URLs (and their
        // lastmod) come from.
        let is_sitemap = |s: &Stored| {
            self.cfg.sitemaps && s.content_type.as_deref().is_some_and(sitemap::is_xml)
        };
        attempt.stored = previous
            .0
            .lookup(url.as_str())
            .await
            .filter(|s| !is_sitemap(s));
        let lastmod = self.lastmods.lock().get(url).copied();
        let unchanged = attempt
            .stored
            .as_ref()
            .is_some_and(|stored| not_newer(lastmod, stored));
        if unchanged {
            attempt.unchanged = Some(Unchanged::Lastmod);
        }
        unchanged
    }

    /// The URLs (resolved against `current`) and `lastmod`s a sitemap body lists; none when it
    /// is not a sitemap.
    fn sitemap_entries(&self, current: &Url, body: &[u8]) -> Vec<(Url, Option<Timestamp>)> {
        let Some(map) = sitemap::parse(body) else {
            return Vec::new();
        };
        if map.cut {
            warn!(task = %self.cfg.task, url = %current, "sitemap lists more than {} URLs: the rest are not read", sitemap::MAX_ENTRIES);
        }
        map.entries
            .into_iter()
            .filter_map(|e| Some((resolve(current, &e.loc)?, e.lastmod)))
            .collect()
    }

    /// [`Engine::exchange`], retried after a transient failure (a connect error, a timeout, a
    /// reset, a 429 or a 5xx) up to the task's budget, waiting the retry schedule (and the
    /// per-host gate, which keeps a 429/503 window). `count`: the requests count as attempts of
    /// the URL (not of a redirect hop).
    async fn exchange_retrying(
        &self,
        url: &Url,
        attempt: &mut Attempt,
        count: bool,
        conditional: Option<Stored>,
    ) -> Result<Exchange, FetchError> {
        let retries = self.cfg.retries;
        let mut retry = 0_u32;
        loop {
            let timed = self
                .exchange(url, Purpose::Page, conditional.as_ref())
                .await;
            attempt.started_at.get_or_insert(timed.sent_at);
            attempt.elapsed += timed.elapsed;
            if count {
                attempt.attempts += 1;
            }
            let failure = match &timed.result {
                Err(err) if is_transient(err) => Some(error_chain(err)),
                Ok(Exchange::Done { status, .. }) if is_transient_status(*status) => {
                    Some(format!("HTTP {status} from {url}"))
                }
                _ => None,
            };
            let Some(failure) = failure else {
                return timed.result;
            };
            if retry >= retries.max_retries {
                return timed.result;
            }
            debug!(task = %self.cfg.task, %url, retry = retry + 1, failure, "retrying");
            attempt.last_error = Some(failure);
            tokio::time::sleep(retries.backoff.delay(retry, 0.0)).await;
            retry += 1;
        }
    }

    /// The latest open 429/503 window of this crawl's hosts: one its own requests opened, or
    /// one the worker's gate holds for a host of the task (opened by another task, or carried
    /// over from the task's previous owner), so that every task of the host reports it and a
    /// move of any of them carries it on.
    fn current_backoff(&self) -> Option<HostBackoff> {
        let own = {
            let mut backoff = self.backoff.lock();
            if backoff
                .as_ref()
                .is_some_and(|b| b.until <= Timestamp::now())
            {
                *backoff = None;
            }
            backoff.clone()
        };
        self.hosts
            .iter()
            .filter_map(|host| self.cfg.politeness.backoff(host))
            .chain(own)
            .max_by_key(|b| b.until)
    }

    /// Waits for the rate limiter, then makes one request and reads what the
    /// purpose needs of the body, all within the request timeout. The timing
    /// returned leaves the wait out.
    async fn exchange(&self, url: &Url, purpose: Purpose, conditional: Option<&Stored>) -> Timed {
        if let Err(blocked) = self.check_literal(url) {
            return Timed {
                sent_at: Timestamp::now(),
                elapsed: Duration::ZERO,
                result: Err(blocked),
            };
        }
        self.wait_turn().await;
        loop {
            if let Some(timed) = self.attempt(url, purpose, conditional).await {
                return timed;
            }
        }
    }

    /// One try of [`Engine::exchange`] past its rate limit: the owner's deadline, the host's
    /// gate, the request. `None`: the client refused to write it, the deadline having passed
    /// since the check (nothing of it left); it waits for the deadline again, like one the
    /// check held, instead of failing (a `robots.txt` failure would close the host for a
    /// minute; a page would spend a retry).
    async fn attempt(
        &self,
        url: &Url,
        purpose: Purpose,
        conditional: Option<&Stored>,
    ) -> Option<Timed> {
        let host = url.host_str().unwrap_or_default();
        let politeness = &self.cfg.politeness;
        // Held until the body is read: it counts the request in flight to the host. Past the
        // owner's deadline (its heartbeat), e.g. right after a process pause, the request waits
        // until a renewal moves it on or the lapse stops the crawl (see `crate::gate`). That wait
        // comes before the host's gate, and a deadline that passed while the request waited at
        // the gate gives its slot up and queues again: requests held by the deadline never leave
        // together, closer than the host's delay.
        let permit = loop {
            self.cfg.send_deadline.open().await;
            let permit = politeness.acquire(host).await;
            if self.cfg.send_deadline.allows(tokio::time::Instant::now()) {
                break permit;
            }
        };
        if self.cancel.is_cancelled() {
            // The crawl loop drops this future as soon as it sees the token;
            // never send a request in the meantime.
            return std::future::pending().await;
        }
        let sent_at = Timestamp::now();
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, self.cfg.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if purpose == Purpose::Page {
            // The task's headers replace these defaults, every value of a repeated one kept.
            for name in self.cfg.headers.keys() {
                headers.remove(name);
            }
            for (name, value) in &self.cfg.headers {
                headers.append(name, value.clone());
            }
            for (name, value) in conditional_headers(conditional) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
        let timeout = self.cfg.request_timeout;
        let exchange = async {
            let answer = self
                .client
                .get(url, headers, Some(permit.departure()))
                .await
                .map_err(|source| request_error(url, source))?;
            let response = &answer.response;
            let status = response.status();
            if let Some(window) = politeness.answered(
                host,
                status.as_u16(),
                response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
            ) {
                *self.backoff.lock() = Some(window);
            }
            if is_redirect(status) {
                let location = header_text(response, LOCATION);
                return Ok(Exchange::Redirect {
                    status: status.as_u16(),
                    location,
                });
            }
            let content_type = header_text(response, CONTENT_TYPE);
            let (etag, last_modified) = (
                header_text(response, ETAG),
                header_text(response, LAST_MODIFIED),
            );
            let (limit, wanted) = self.body_wanted(purpose, status, content_type.as_deref());
            let (body, truncated) = if wanted {
                answer
                    .read(limit)
                    .await
                    .map_err(|source| FetchError::Body {
                        url: url.to_string(),
                        source,
                    })?
            } else {
                (Vec::new(), false)
            };
            Ok(Exchange::Done {
                status: status.as_u16(),
                content_type,
                body,
                truncated,
                etag,
                last_modified,
            })
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: url.to_string(),
                    timeout,
                })
            });
        if let Err(err) = &result
            && std::error::Error::source(err).is_some_and(client::is_past_deadline)
        {
            debug!(task = %self.cfg.task, %url, "not written: past the send deadline; waiting for it");
            return None;
        }
        let status = match &result {
            Ok(Exchange::Done { status, .. } | Exchange::Redirect { status, .. }) => Some(*status),
            Err(_) => None,
        };
        politeness.observe(status, started.elapsed());
        Some(Timed {
            sent_at,
            elapsed: started.elapsed(),
            result,
        })
    }

    /// How much of a response's body to read, and whether to read it at all: an HTML page, a
    /// sitemap (with `sitemaps`, up to the protocol's 50 MB), a `robots.txt`; only on success.
    fn body_wanted(
        &self,
        purpose: Purpose,
        status: StatusCode,
        content_type: Option<&str>,
    ) -> (usize, bool) {
        let sitemap = self.cfg.sitemaps && content_type.is_some_and(sitemap::is_xml);
        match purpose {
            Purpose::Page if sitemap => (sitemap::MAX_SITEMAP_BYTES, status.is_success()),
            Purpose::Page => (
                self.cfg.max_body_bytes,
                status.is_success() && content_type.is_some_and(is_html),
            ),
            Purpose::Robots => (MAX_ROBOTS_BYTES, status.is_success()),
        }
    }

    /// Refuses a URL whose host is an internal IP address the policy does not allow: the HTTP
    /// client connects to an IP literal without asking the (guarded) resolver.
    fn check_literal(&self, url: &Url) -> Result<(), FetchError> {
        let (host, address) = match url.host() {
            Some(url::Host::Ipv4(ip)) => (url.host_str(), std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => (url.host_str(), std::net::IpAddr::V6(ip)),
            _ => return Ok(()),
        };
        self.cfg
            .address_policy
            .check(host.unwrap_or_default(), address)
            .map_err(|source| FetchError::BlockedAddress {
                url: url.to_string(),
                source,
            })
    }

    /// Resolves when the task's rate limit allows one more request.
    async fn wait_turn(&self) {
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }

    /// The `robots.txt` of `url`'s origin, from the worker's cache (fetched by whichever task
    /// asks first); returns the origin and the filled cache entry.
    async fn robots_of(&self, url: &Url) -> (String, Arc<crate::polite::RobotsEntry>) {
        let origin = origin_key(url);
        // Shared by the worker's crawls: the rules depend on the agent, so it is in the key.
        let key = format!("{origin} {}", self.cfg.robots_agent);
        let politeness = &self.cfg.politeness;
        let entry = politeness.robots_entry(&key);
        let (_, robots) = entry
            .cell
            .get_or_init(|| async {
                let robots = self.fetch_robots(&origin).await;
                if let Robots::Rules(robot) = &robots {
                    politeness.crawl_delay(url.host_str().unwrap_or_default(), robot.delay);
                }
                (tokio::time::Instant::now(), robots)
            })
            .await;
        if matches!(robots, Robots::Blocked { .. }) {
            // Another task may allow that address: the refusal is this task's own.
            politeness.forget_robots(&key, &entry);
        }
        (origin, entry)
    }

    async fn robots_allow(&self, url: &Url) -> Result<(), FetchError> {
        if !self.cfg.respect_robots {
            return Ok(());
        }
        let (origin, entry) = self.robots_of(url).await;
        let (_, robots) = entry.cell.get().expect("filled by robots_of");
        let robots_url = format!("{origin}/robots.txt");
        robots.check(url).map_err(|denied| match denied {
            Denied::Disallowed => FetchError::RobotsDisallowed {
                url: url.to_string(),
                robots_url,
            },
            Denied::Unavailable { reason } => FetchError::RobotsUnavailable {
                url: url.to_string(),
                host: host_port(url),
                robots_url,
                reason: reason.to_owned(),
            },
            Denied::Blocked { url, blocked } => FetchError::BlockedAddress {
                url: url.to_owned(),
                source: blocked.clone(),
            },
        })
    }

    async fn fetch_robots(&self, origin: &str) -> Robots {
        let agent = &self.cfg.robots_agent;
        let mut current = match Url::parse(&format!("{origin}/robots.txt")) {
            Ok(url) => url,
            Err(err) => {
                return Robots::from_response(
                    agent,
                    RobotsResponse::Failed {
                        reason: err.to_string(),
                    },
                );
            }
        };
        let mut response = RobotsResponse::RedirectsUnresolved;
        for _ in 0..=MAX_ROBOTS_REDIRECTS {
            match self.exchange(&current, Purpose::Robots, None).await.result {
                Ok(Exchange::Redirect { location, .. }) => {
                    match location.and_then(|loc| resolve(&current, &loc)) {
                        Some(next) => current = next,
                        None => break,
                    }
                }
                Ok(Exchange::Done { status, body, .. }) => {
                    response = RobotsResponse::Status { status, body };
                    break;
                }
                Err(FetchError::BlockedAddress { url, source }) => {
                    response = RobotsResponse::Blocked {
                        url,
                        blocked: source,
                    };
                    break;
                }
                Err(err) => {
                    response = RobotsResponse::Failed {
                        reason: error_chain(&err),
                    };
                    break;
                }
            }
        }
        let robots = Robots::from_response(agent, response);
        match &robots {
            Robots::Unavailable { reason } => {
                warn!(task = %self.cfg.task, origin, reason, "robots.txt unavailable: host treated as disallowed");
            }
            Robots::Blocked { blocked, .. } => {
                warn!(task = %self.cfg.task, origin, %blocked, "robots.txt not fetched: its address is internal");
            }
            Robots::AllowAll { reason } => {
                debug!(task = %self.cfg.task, origin, reason, "no robots.txt rules");
            }
            Robots::Rules(_) => debug!(task = %self.cfg.task, origin, "robots.txt rules loaded"),
        }
        robots
    }
}

/// The links a page with rules leads to: those its rule's `follow` entries select (with the rule
/// each names, or the first rule matching the link), then any other link on the page that some
/// rule's `match` claims. A link that is neither is not followed.
fn follow_with_rules(
    rules: &Rules,
    extraction: Option<&Extraction>,
    links: Vec<Url>,
) -> Vec<(Url, Option<usize>)> {
    let mut out: Vec<(Url, Option<usize>)> = Vec::new();
    let mut taken = HashSet::new();
    for (link, named) in extraction.map(|e| e.follow.as_slice()).unwrap_or_default() {
        if taken.insert(link.clone()) {
            out.push((
                link.clone(),
                named.or_else(|| rules.rule_for(link.as_str())),
            ));
        }
    }
    for link in links {
        if let Some(index) = rules.rule_for(link.as_str())
            && taken.insert(link.clone())
        {
            out.push((link, Some(index)));
        }
    }
    out
}

/// A response header's value as text (lossy).
fn header_text<B>(response: &http::Response<B>, name: HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The conditional request headers for what an earlier run stored: `If-None-Match` with its
/// `ETag`, `If-Modified-Since` with its `Last-Modified` (RFC 9110: a server that knows the
/// `ETag` ignores the date).
fn conditional_headers(stored: Option<&Stored>) -> Vec<(HeaderName, String)> {
    let Some(stored) = stored else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(etag) = stored.etag.as_deref().filter(|e| !e.is_empty()) {
        out.push((IF_NONE_MATCH, etag.to_owned()));
    }
    if let Some(date) = stored.last_modified.as_deref().filter(|d| !d.is_empty()) {
        out.push((IF_MODIFIED_SINCE, date.to_owned()));
    }
    out
}

/// Whether a 304 answers our conditional request: it is for the URL itself (not a redirect
/// hop) and we sent a validator.
fn conditional_sent(first: bool, stored: Option<&Stored>) -> bool {
    first && !conditional_headers(stored).is_empty()
}

/// Whether a body with hash `hash` is the one an earlier run stored.
fn same_body(stored: Option<&Stored>, hash: &str) -> bool {
    stored
        .and_then(|s| s.content_hash.as_deref())
        .is_some_and(|h| h == hash)
}

/// Whether a sitemap's `lastmod` says the page has not changed since its stored fetch.
fn not_newer(lastmod: Option<Timestamp>, stored: &Stored) -> bool {
    match (lastmod, stored.fetched_at) {
        (Some(lastmod), Some(fetched)) => lastmod <= fetched,
        _ => false,
    }
}

/// SHA-256 of a body, hex.
fn content_hash(body: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(body);
    let mut out = String::with_capacity(64);
    for byte in &digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// TLS with the `ring` provider (the one kube uses here), Mozilla's roots
/// built in so a bare container image works, plus the system's roots when it
/// has any (a corporate CA, say).
pub(crate) fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls
}

/// Failures worth another try: the next request may well succeed.
fn is_transient(err: &FetchError) -> bool {
    matches!(
        err,
        FetchError::Timeout { .. }
            | FetchError::Connect { .. }
            | FetchError::Request { .. }
            | FetchError::Body { .. }
    )
}

/// 429 and the 5xx a server or proxy sends when it is overloaded or restarting.
fn is_transient_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn is_html(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/html"))
}

/// Decodes with the `charset` the server declared (UTF-8 otherwise; a BOM wins).
fn decode<'a>(body: &'a [u8], content_type: Option<&str>) -> std::borrow::Cow<'a, str> {
    let encoding = content_type
        .and_then(|ct| {
            ct.split(';').skip(1).find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("charset")
                    .then(|| value.trim().trim_matches('"'))
            })
        })
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode(body).0
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    }
}

fn request_error(url: &Url, source: HttpError) -> FetchError {
    if let Some(blocked) = find_blocked(&source) {
        return FetchError::BlockedAddress {
            url: url.to_string(),
            source: blocked.clone(),
        };
    }
    if source.is_connect() {
        FetchError::Connect {
            url: url.to_string(),
            host: host_port(url),
            source,
        }
    } else {
        FetchError::Request {
            url: url.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_content_types() {
        assert!(is_html("text/html"));
        assert!(is_html("Text/HTML; charset=utf-8"));
        assert!(!is_html("application/xhtml+xml"));
        assert!(!is_html("text/plain"));
        assert!(!is_html(""));
    }

    #[test]
    fn decoding_honours_charset() {
        assert_eq!(
            decode(b"caf\xe9", Some("text/html; charset=ISO-8859-1")),
            "café"
        );
        assert_eq!(decode(b"caf\xc3\xa9", Some("text/html")), "café");
        assert_eq!(
            decode(b"caf\xc3\xa9", Some("text/html; charset=\"bogus\"")),
            "café"
        );
        assert_eq!(decode(b"\xff", None), "\u{fffd}");
    }

    fn stored(etag: Option<&str>, date: Option<&str>) -> Stored {
        Stored {
            etag: etag.map(str::to_owned),
            last_modified: date.map(str::to_owned),
            content_hash: Some(content_hash(b"body")),
            content_type: None,
            fetched_at: Some("2026-12-01T00:00:00Z".parse().unwrap()),
            followed: Vec::new(),
        }
    }

    #[test]
    fn conditional_requests_send_the_stored_validators() {
        let names = |s: Option<&Stored>| -> Vec<(String, String)> {
            conditional_headers(s)
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect()
        };
        assert!(names(None).is_empty());
        assert!(names(Some(&stored(None, None))).is_empty());
        assert!(names(Some(&stored(Some(""), None))).is_empty());
        let date = "Tue, 01 Dec 2026 00:00:00 GMT";
        assert_eq!(
            names(Some(&stored(Some("\"v1\""), Some(date)))),
            [
                ("if-none-match".to_owned(), "\"v1\"".to_owned()),
                ("if-modified-since".to_owned(), date.to_owned())
            ]
        );
        // A 304 counts only for a request that carried a validator, for the URL itself.
        assert!(conditional_sent(true, Some(&stored(None, Some(date)))));
        assert!(!conditional_sent(false, Some(&stored(None, Some(date)))));
        assert!(!conditional_sent(true, Some(&stored(None, None))));
        assert!(!conditional_sent(true, None));
    }

    #[test]
    fn unchanged_bodies_and_lastmods() {
        let s = stored(None, None);
        assert!(same_body(Some(&s), &content_hash(b"body")));
        assert!(!same_body(Some(&s), &content_hash(b"body!")));
        assert!(!same_body(None, &content_hash(b"body")));
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let at = |t: &str| Some(t.parse::<Timestamp>().unwrap());
        assert!(not_newer(at("2026-11-30T00:00:00Z"), &s));
        assert!(not_newer(at("2026-12-01T00:00:00Z"), &s));
        assert!(!not_newer(at("2026-12-01T00:00:01Z"), &s));
        assert!(!not_newer(None, &s));
        let never = Stored {
            fetched_at: None,
            ..s
        };
        assert!(!not_newer(at("2020-01-01T00:00:00Z"), &never));
    }

    #[test]
    fn tls_client_builds_without_a_process_wide_provider() {
        let cfg = CrawlConfig::new("t", ["https://example.com/"])
            .validated()
            .unwrap();
        let _ = Engine::new(cfg, CancellationToken::new());
    }
}

//! A local web site for crawl tests: an endless binary tree of pages per task
//! (`/t/<task>/<n>` links to `2n` and `2n+1`), `/slow/<task>/<n>` pages that answer after a
//! delay, a finite tree of [`VERSIONED_PAGES`] pages per task that can change
//! (`/v/<task>/<n>`: `ETag` and `Last-Modified`, `304` to a matching `If-None-Match` /
//! `If-Modified-Since`, a sitemap at `/v/<task>/sitemap.xml`), and a log of every request with the
//! worker and assignment that sent it (parsed from the User-Agent
//! `crawler-operator/<v> (worker <pod>; assignment <n>)`), its status and the body bytes sent.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::HeaderMap,
    response::Html,
    routing::get,
};
use serde_json::json;

use super::{
    judge::Verdict,
    story::{BOUND, POLL},
    wait_for,
};

/// One request the site received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub task: String,
    pub worker: String,
    pub assignment: i64,
    pub cookie: Option<String>,
    /// The number `n` of the path (`/t/<task>/<n>`, `/shelf/<task>/list/<n>`, ...).
    pub page: u64,
    /// The status sent (200 unless the page says otherwise: 304 for a versioned page whose
    /// validators matched).
    pub status: u16,
    /// Body bytes sent (counted for the versioned pages; 0 elsewhere).
    pub bytes: u64,
}

/// An endless binary tree of pages per task: /t/<task>/<n> links to 2n and 2n+1.
pub struct Site {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    versioned: Arc<Versioned>,
}

impl Site {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// The site on loopback address `ip` (every 127.x.y.z is a host of its own on Linux): a
    /// second host for a crawl, with a request log of its own.
    pub async fn start_on(ip: &str) -> Self {
        Self::serve(ip, false).await
    }

    /// The site on 127.0.0.1 with a robots.txt that names the sitemap of task
    /// [`ROBOTS_SITEMAP_TASK`] (a `Sitemap:` line).
    pub async fn start_with_robots_sitemap() -> Self {
        Self::serve("127.0.0.1", true).await
    }

    async fn serve(ip: &str, robots_sitemap: bool) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut robots = "User-agent: *\nAllow: /\n".to_owned();
        if robots_sitemap {
            let _ = writeln!(
                robots,
                "Sitemap: http://{addr}/v/{ROBOTS_SITEMAP_TASK}/sitemap.xml"
            );
        }
        let versioned = Arc::new(Versioned {
            hits: Arc::clone(&hits),
            pages: Mutex::default(),
        });
        let app = Router::new()
            .route("/robots.txt", get(move || async move { robots }))
            .route("/t/{task}/{n}", get(page))
            .route("/slow/{task}/{n}", get(slow_page))
            .route("/shelf/{task}/list/{n}", get(shelf_list))
            .route("/shelf/{task}/book/{n}", get(shelf_book))
            .with_state(Arc::clone(&hits))
            .merge(
                Router::new()
                    .route("/v/{task}/sitemap.xml", get(versioned_sitemap))
                    .route("/v/{task}/{n}", get(versioned_page))
                    .with_state(Arc::clone(&versioned)),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            hits,
            versioned,
        }
    }

    pub fn seed(&self, task: &str) -> String {
        format!("http://{}/t/{task}/1", self.addr)
    }

    /// A seed whose pages each take 3 s to answer.
    pub fn slow_seed(&self, task: &str) -> String {
        format!("http://{}/slow/{task}/1", self.addr)
    }

    /// When `task` moved from worker `from` to worker `to`: the last request `from` made and the
    /// first request `to` made.
    pub fn handover(&self, task: &str, from: &str, to: &str) -> (Instant, Instant) {
        let hits = self.hits(task);
        let last = hits.iter().filter(|h| h.worker == from).map(|h| h.at).max();
        let first = hits.iter().filter(|h| h.worker == to).map(|h| h.at).min();
        let last = last.unwrap_or_else(|| panic!("{from} never requested {task}"));
        let first = first.unwrap_or_else(|| panic!("{to} never requested {task}"));
        (last, first)
    }

    /// Tasks whose requests interleave between assignments: a request of an older assignment
    /// made after the first request of a newer one means two workers ran the task at once.
    /// Returns one line per violation.
    pub fn overlaps(&self) -> Vec<String> {
        let hits = self.hits.lock().unwrap().clone();
        let mut tasks: std::collections::BTreeMap<&str, Vec<&Hit>> =
            std::collections::BTreeMap::new();
        for h in &hits {
            tasks.entry(&h.task).or_default().push(h);
        }
        let mut violations = Vec::new();
        for (task, hits) in tasks {
            let mut first_of: std::collections::BTreeMap<i64, Instant> =
                std::collections::BTreeMap::new();
            for h in &hits {
                let first = first_of.entry(h.assignment).or_insert(h.at);
                *first = (*first).min(h.at);
            }
            for h in &hits {
                if let Some((newer, at)) = first_of
                    .range(h.assignment + 1..)
                    .map(|(a, t)| (*a, *t))
                    .min_by_key(|(_, t)| *t)
                    && h.at > at
                {
                    violations.push(format!(
                        "{task}: {} (assignment {}) still requested {:?} after assignment {newer} started",
                        h.worker,
                        h.assignment,
                        h.at - at
                    ));
                }
            }
        }
        violations
    }

    /// Judge `overlap`: every request the site received is judged (see [`Site::overlaps`]), and
    /// every handover is measured ([`Site::handover_gaps`]). Figures: tasks, handovers, and the
    /// smallest and median gap in ms.
    pub fn overlap_verdict(&self) -> Verdict {
        let hits = self.hits.lock().unwrap().clone();
        let mut verdict = Verdict::new("overlap");
        verdict.judged = hits.len();
        for v in self.overlaps() {
            verdict.violation("request-after-newer-assignment", v);
        }
        let tasks: std::collections::BTreeSet<&str> =
            hits.iter().map(|h| h.task.as_str()).collect();
        verdict.count("tasks", tasks.len());
        let gaps = self.handover_gaps();
        verdict.count("handovers", gaps.len());
        gap_figures(&mut verdict, &gaps);
        verdict
    }

    /// For every task and every pair of consecutive assignments that both made requests: the gap
    /// in ms from the older one's last request to the newer one's first (negative if they
    /// overlapped).
    pub fn handover_gaps(&self) -> Vec<i128> {
        handover_gaps(&self.hits.lock().unwrap())
    }

    pub fn hits(&self, task: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.task == task)
            .cloned()
            .collect()
    }

    /// How long after `since` the last request for `task` came (zero if none did): how tests
    /// measure when a stopped task went quiet.
    pub fn last_hit_after(&self, task: &str, since: Instant) -> Duration {
        self.hits(task)
            .iter()
            .map(|h| h.at.saturating_duration_since(since))
            .max()
            .unwrap_or_default()
    }

    /// Waits for `count` requests for `task` from `worker` (made after `after`, if given).
    pub async fn wait_for_hits(
        &self,
        task: &str,
        worker: &str,
        after: Option<Instant>,
        count: usize,
    ) {
        wait_for(
            &format!("{count} requests for {task} from {worker}"),
            BOUND,
            POLL,
            || async {
                let n = self
                    .hits(task)
                    .iter()
                    .filter(|h| h.worker == worker && after.is_none_or(|a| h.at > a))
                    .count();
                if n >= count {
                    Ok(())
                } else {
                    Err(format!("{n} so far"))
                }
            },
        )
        .await;
    }
}

/// Book list pages of the shelf: this many pages of [`SHELF_PER_PAGE`] books each.
pub const SHELF_PAGES: u64 = 3;
pub const SHELF_PER_PAGE: u64 = 4;
/// The one book page without a title (an incomplete record for a rule that requires one).
pub const SHELF_UNTITLED: u64 = SHELF_PAGES * SHELF_PER_PAGE;

impl Site {
    /// The first list page of a book shelf: `/shelf/<task>/list/<n>` lists books
    /// `/shelf/<task>/book/<m>` and links to the next list page; every page also links to an
    /// page of the tree (`/t/<task>/999`) that no rule wants.
    pub fn shelf_seed(&self, task: &str) -> String {
        format!("http://{}/shelf/{task}/list/1", self.addr)
    }
}

/// What a book page of the shelf says: title, author, price.
pub fn shelf_book_data(n: u64) -> (String, String, String) {
    (
        format!("Book {n}"),
        format!("Author {}", n % 3),
        format!("{n}.50"),
    )
}

async fn shelf_list(
    State(hits): State<Arc<Mutex<Vec<Hit>>>>,
    Path((task, n)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Html<String> {
    record_hit(&hits, &task, n, &headers);
    let mut books = String::new();
    for i in 1..=SHELF_PER_PAGE {
        let m = (n - 1) * SHELF_PER_PAGE + i;
        let _ = write!(
            books,
            "<li><a class=\"book\" href=\"/shelf/{task}/book/{m}\">book {m}</a></li>"
        );
    }
    let next = if n < SHELF_PAGES {
        format!(
            "<a class=\"next\" href=\"/shelf/{task}/list/{}\">next</a>",
            n + 1
        )
    } else {
        String::new()
    };
    Html(format!(
        "<html><head><title>Shelf page {n}</title></head><body><ul class=\"books\">{books}</ul>\
         {next} <a href=\"/t/{task}/999\">about</a></body></html>"
    ))
}

async fn shelf_book(
    State(hits): State<Arc<Mutex<Vec<Hit>>>>,
    Path((task, n)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Html<String> {
    record_hit(&hits, &task, n, &headers);
    let (title, author, price) = shelf_book_data(n);
    let title = if n == SHELF_UNTITLED {
        String::new()
    } else {
        format!("<h1 class=\"title\">{title}</h1>")
    };
    Html(format!(
        "<html><body>{title}<p class=\"author\">by <a href=\"/t/{task}/998\">{author}</a></p>\
         <p class=\"price\">Price: {price} EUR</p><a href=\"/shelf/{task}/list/1\">all books</a></body></html>"
    ))
}

fn record_hit(hits: &Mutex<Vec<Hit>>, task: &str, n: u64, headers: &HeaderMap) {
    record_response(hits, task, n, headers, 200, 0);
}

fn record_response(
    hits: &Mutex<Vec<Hit>>,
    task: &str,
    n: u64,
    headers: &HeaderMap,
    status: u16,
    bytes: u64,
) {
    let ua = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // "crawler-operator/0.1.0 (worker worker-1; assignment 2)"
    let worker = ua
        .split("(worker ")
        .nth(1)
        .and_then(|w| w.split([';', ')']).next())
        .unwrap_or("?")
        .to_owned();
    let assignment = ua
        .split("assignment ")
        .nth(1)
        .and_then(|a| a.trim_end_matches(')').parse().ok())
        .unwrap_or(-1);
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    hits.lock().unwrap().push(Hit {
        at: Instant::now(),
        task: task.to_owned(),
        worker,
        assignment,
        cookie,
        page: n,
        status,
        bytes,
    });
}

/// Pages of a versioned site (`/v/<task>/<n>`, n = 1..=63): a binary tree five links deep.
pub const VERSIONED_PAGES: u64 = 63;
/// The task whose sitemap the site's robots.txt names.
pub const ROBOTS_SITEMAP_TASK: &str = "robots-sitemap";
/// When an unchanged versioned page was last modified (before any test ran).
const ORIGINAL_DATE: &str = "Thu, 01 Jan 2026 00:00:00 GMT";

/// The changes made to versioned pages, per task.
struct Versioned {
    hits: Arc<Mutex<Vec<Hit>>>,
    pages: Mutex<std::collections::HashMap<(String, u64), Change>>,
}

/// What changed on one versioned page: its version (0: the original), when, and the links it
/// no longer has.
#[derive(Clone, Default)]
struct Change {
    version: u32,
    at: Option<jiff::Timestamp>,
    removed: Vec<u64>,
}

impl Versioned {
    fn change(&self, task: &str, n: u64) -> Change {
        self.pages
            .lock()
            .unwrap()
            .get(&(task.to_owned(), n))
            .cloned()
            .unwrap_or_default()
    }

    /// The links of page `n` as it is now.
    fn links(&self, task: &str, n: u64) -> Vec<u64> {
        let removed = self.change(task, n).removed;
        [2 * n, 2 * n + 1]
            .into_iter()
            .filter(|c| *c <= VERSIONED_PAGES && !removed.contains(c))
            .collect()
    }
}

/// Whether a versioned page sends validators: all but every sixteenth (16, 32, 48), which a
/// recrawl can only find unchanged by its body's hash.
pub fn sends_validators(n: u64) -> bool {
    !n.is_multiple_of(16)
}

impl Site {
    /// The first page of task `task`'s versioned site.
    pub fn versioned_seed(&self, task: &str) -> String {
        format!("http://{}/v/{task}/1", self.addr)
    }

    /// The sitemap of task `task`'s versioned site: every page, with its `lastmod`.
    pub fn sitemap_url(&self, task: &str) -> String {
        format!("http://{}/v/{task}/sitemap.xml", self.addr)
    }

    /// Changes page `n`'s content (its title says the new version; its `ETag`, `Last-Modified` and
    /// sitemap lastmod move on).
    pub fn change_page(&self, task: &str, n: u64) {
        let mut pages = self.versioned.pages.lock().unwrap();
        let change = pages.entry((task.to_owned(), n)).or_default();
        change.version += 1;
        change.at = Some(jiff::Timestamp::now());
    }

    /// Takes the link to page `child` off page `parent` (a change of `parent`).
    pub fn remove_link(&self, task: &str, parent: u64, child: u64) {
        self.change_page(task, parent);
        let mut pages = self.versioned.pages.lock().unwrap();
        let change = pages.entry((task.to_owned(), parent)).or_default();
        change.removed.push(child);
    }

    /// The versioned pages of `task` reachable from page 1 now.
    pub fn reachable(&self, task: &str) -> Vec<u64> {
        let mut out = Vec::new();
        let mut todo = vec![1];
        while let Some(n) = todo.pop() {
            out.push(n);
            todo.extend(self.versioned.links(task, n));
        }
        out.sort_unstable();
        out
    }
}

async fn versioned_page(
    State(site): State<Arc<Versioned>>,
    Path((task, n)): Path<(String, u64)>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::{
        http::{StatusCode, header},
        response::IntoResponse,
    };
    if n == 0 || n > VERSIONED_PAGES {
        record_response(&site.hits, &task, n, &headers, 404, 0);
        return StatusCode::NOT_FOUND.into_response();
    }
    let change = site.change(&task, n);
    let etag = format!("\"{task}-{n}-v{}\"", change.version);
    let date = change.at.map_or_else(
        || ORIGINAL_DATE.to_owned(),
        |at| {
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&at)
                .unwrap()
        },
    );
    let validators = sends_validators(n);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // RFC 9110 13.2.2: If-None-Match first; If-Modified-Since only without it.
    let not_modified = validators
        && match header("if-none-match") {
            Some(tags) => tags.split(',').any(|t| t.trim() == etag),
            None => header("if-modified-since").is_some_and(|since| since == date),
        };
    let mut response = if not_modified {
        record_response(&site.hits, &task, n, &headers, 304, 0);
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut links = String::new();
        for c in site.links(&task, n) {
            let _ = write!(links, "<a href=\"/v/{task}/{c}\">page {c}</a> ");
        }
        let mut body = format!(
            "<html><head><title>{task} page {n} version {}</title></head><body>{links}",
            change.version
        );
        // Pages of a realistic size (2 KiB), so the bytes a recrawl saves show.
        while body.len() < 2048 {
            body.push_str("<p>lorem ipsum dolor sit amet, consectetur adipiscing elit</p>");
        }
        body.push_str("</body></html>");
        record_response(&site.hits, &task, n, &headers, 200, body.len() as u64);
        ([(header::CONTENT_TYPE, "text/html")], body).into_response()
    };
    if validators {
        let h = response.headers_mut();
        h.insert(header::ETAG, etag.parse().unwrap());
        h.insert(header::LAST_MODIFIED, date.parse().unwrap());
    }
    response
}

async fn versioned_sitemap(
    State(site): State<Arc<Versioned>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
    );
    for n in 1..=VERSIONED_PAGES {
        let lastmod = site
            .change(&task, n)
            .at
            .map_or_else(|| "2026-01-01".to_owned(), |at| at.to_string());
        let _ = writeln!(
            body,
            "<url><loc>http://{host}/v/{task}/{n}</loc><lastmod>{lastmod}</lastmod></url>"
        );
    }
    // An entry off the site's host: never queued (outside the allowed hosts).
    body.push_str("<url><loc>http://elsewhere.invalid/page</loc></url>\n</urlset>\n");
    record_response(&site.hits, &task, 0, &headers, 200, body.len() as u64);
    (
        [(axum::http::header::CONTENT_TYPE, "application/xml")],
        body,
    )
}

async fn page(
    State(hits): State<Arc<Mutex<Vec<Hit>>>>,
    Path((task, n)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Html<String> {
    record_hit(&hits, &task, n, &headers);
    Html(format!(
        "<html><head><title>{task} page {n}</title></head><body>\
         <a href=\"/t/{task}/{}\">left</a> <a href=\"/t/{task}/{}\">right</a></body></html>",
        2 * n,
        2 * n + 1
    ))
}

async fn slow_page(
    state: State<Arc<Mutex<Vec<Hit>>>>,
    path: Path<(String, u64)>,
    headers: HeaderMap,
) -> Html<String> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    page(state, path, headers).await
}

/// The value of an unlabelled sample in an `OpenMetrics` text.
pub fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

/// A crawl that keeps going for the whole test: deep, at 20 requests/s.
pub fn endless(site: &Site, task: &str) -> serde_json::Value {
    json!({ "seeds": [site.seed(task)], "maxDepth": 10, "rateLimit": { "requestsPerSecond": 20, "burst": 1 } })
}

/// Adds `min_gap_ms` and `median_gap_ms` of `gaps` to `verdict`.
pub fn gap_figures(verdict: &mut Verdict, gaps: &[i128]) {
    let mut ms = gaps.to_vec();
    ms.sort_unstable();
    let show = |v: Option<&i128>| v.map_or("-".to_owned(), ToString::to_string);
    verdict.figure("min_gap_ms", &show(ms.first()));
    verdict.figure("median_gap_ms", &show(ms.get(ms.len() / 2)));
}

/// See [`Site::handover_gaps`].
fn handover_gaps(hits: &[Hit]) -> Vec<i128> {
    let mut spans: std::collections::BTreeMap<(&str, i64), (Instant, Instant)> =
        std::collections::BTreeMap::new();
    for h in hits {
        let span = spans
            .entry((h.task.as_str(), h.assignment))
            .or_insert((h.at, h.at));
        span.0 = span.0.min(h.at);
        span.1 = span.1.max(h.at);
    }
    let mut gaps = Vec::new();
    let mut previous: Option<(&str, Instant)> = None;
    for ((task, _), (first, last)) in &spans {
        if let Some((prev_task, prev_last)) = previous
            && prev_task == *task
        {
            let gap = if *first >= prev_last {
                i128::try_from((*first - prev_last).as_millis()).unwrap_or(i128::MAX)
            } else {
                -i128::try_from((prev_last - *first).as_millis()).unwrap_or(i128::MAX)
            };
            gaps.push(gap);
        }
        previous = Some((task, *last));
    }
    gaps
}

//! The crawl engine against a real web site served by the test on 127.0.0.1.
//!
//! The site counts requests per path and stamps their arrival, so the tests
//! check what a site owner would see: which pages were asked for, how often,
//! and how far apart. Timing checks assert lower bounds on spacing and
//! generous upper bounds on promptness: the machine has 2 loaded cores.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use crawler_crawl::{
    self as crawl, AddressPolicy, CrawlConfig, CrawlOutcome, JsonLinesSink, PageRecord, Progress,
    RateLimit, Sink, SinkError, StopReason,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

// === the test site ===

#[derive(Clone)]
enum Page {
    /// HTML; `{site}` is replaced by this site's origin, `{port}` by its port.
    Html(String),
    Redirect(&'static str),
    /// A redirect to a URL known only at run time (another site's).
    Moved(String),
    Slow(Duration),
    Status(u16),
    Typed(&'static str, String),
}

fn html(body: &str) -> Page {
    Page::Html(body.to_owned())
}

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    at: Instant,
    cookie: Option<String>,
    user_agent: Option<String>,
}

struct SiteState {
    origin: String,
    pages: HashMap<String, Page>,
    hits: Mutex<Vec<Hit>>,
    count: watch::Sender<usize>,
}

struct Site {
    addr: SocketAddr,
    state: Arc<SiteState>,
}

impl Site {
    async fn start(pages: Vec<(&str, Page)>) -> Site {
        Site::start_on("127.0.0.1", pages).await
    }

    /// A site on another loopback address (every 127.x.y.z is one on Linux).
    async fn start_on(ip: &str, pages: Vec<(&str, Page)>) -> Site {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SiteState {
            origin: format!("http://{addr}"),
            pages: pages
                .into_iter()
                .map(|(path, page)| (path.to_owned(), page))
                .collect(),
            hits: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        });
        let app = Router::new().fallback(serve).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Site { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.hits().iter().filter(|h| h.path == path).count()
    }

    fn total(&self) -> usize {
        self.state.hits.lock().len()
    }

    async fn wait_for_hits(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| *c >= n))
            .await
            .expect("the site saw the requests in time")
            .unwrap();
    }
}

async fn serve(State(site): State<Arc<SiteState>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let header = |name| {
        headers
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap_or("").to_owned())
    };
    let hit = Hit {
        path: path.clone(),
        at: Instant::now(),
        cookie: header(header::COOKIE),
        user_agent: header(header::USER_AGENT),
    };
    {
        let mut hits = site.hits.lock();
        hits.push(hit);
        site.count.send_replace(hits.len());
    }
    let html_response = |body: &str| {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body.replace("{site}", &site.origin)
                .replace("{port}", site.origin.rsplit(':').next().unwrap_or("")),
        )
            .into_response()
    };
    match site.pages.get(&path) {
        Some(Page::Html(body)) => html_response(body),
        Some(Page::Redirect(to)) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, to.parse().unwrap());
            (StatusCode::FOUND, headers).into_response()
        }
        Some(Page::Moved(to)) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, to.parse().unwrap());
            (StatusCode::MOVED_PERMANENTLY, headers).into_response()
        }
        Some(Page::Slow(delay)) => {
            tokio::time::sleep(*delay).await;
            html_response("<title>slow</title>")
        }
        Some(Page::Status(code)) => StatusCode::from_u16(*code).unwrap().into_response(),
        Some(Page::Typed(content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], body.clone()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

// === the crawl side ===

/// Collects records in memory; clones share the list.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<PageRecord>>>);

impl Sink for Records {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        self.0.lock().push(record.clone());
        Ok(())
    }
}

impl Records {
    fn all(&self) -> Vec<PageRecord> {
        self.0.lock().clone()
    }

    fn get(&self, url: &str) -> PageRecord {
        self.all()
            .into_iter()
            .find(|r| r.url == url)
            .unwrap_or_else(|| panic!("no record for {url}: {:#?}", self.all()))
    }
}

/// A config fast enough not to slow the functional tests down. The test sites are on loopback,
/// which a crawl refuses unless allowed: these tests allow it (the guard's own tests below
/// start from [`CrawlConfig::new`]'s default, which allows no internal address).
fn config(seeds: &[String]) -> CrawlConfig {
    let mut config = CrawlConfig::new("task-test", seeds.iter().cloned());
    config.address_policy = loopback();
    config.rate_limit = RateLimit {
        requests_per_second: 500.0,
        burst: 50,
    };
    config.request_timeout = Duration::from_secs(10);
    config
}

/// Every loopback address allowed.
fn loopback() -> AddressPolicy {
    "127.0.0.0/8,::1/128".parse().unwrap()
}

async fn crawl(config: CrawlConfig) -> (CrawlOutcome, Records) {
    let records = Records::default();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        crawl::run(config, records.clone(), CancellationToken::new(), |_| {}),
    )
    .await
    .expect("the crawl finishes")
    .expect("the crawl runs");
    (outcome, records)
}

fn urls(records: &[PageRecord]) -> Vec<&str> {
    records.iter().map(|r| r.url.as_str()).collect()
}

// === what a crawl fetches ===

const ROBOTS: &str = "User-agent: *\nDisallow: /private/\n";

/// Pages with every kind of link the engine must treat carefully.
async fn main_site(offsite: &Site) -> Site {
    let home = format!(
        r#"<html><head><title>Home</title></head><body>
        <a href="/a">a</a> <a href="/a#top">a again</a> <a href="/a">a thrice</a>
        <a href="{{site}}/b">absolute b</a> <a href="HTTP://127.0.0.1:{{port}}/b#x">b, odd spelling</a>
        <a href="/private/secret">robots says no</a>
        <a href="{offsite}/">another port is another host</a>
        <a href="http://localhost:{{port}}/b">another name is another host</a>
        <a href="mailto:owner@example.com">mail</a> <a href="javascript:alert(1)">js</a>
        <a href="ftp://127.0.0.1/file">ftp</a> <a href="data:text/html,x">data</a>
        <a href="/based/page">base</a> <a href="/data.json">json</a>
        </body></html>"#,
        offsite = offsite.url(""),
    );
    Site::start(vec![
        ("/robots.txt", Page::Typed("text/plain", ROBOTS.to_owned())),
        ("/", Page::Html(home)),
        (
            "/a",
            html(r#"<title>A</title><a href="/a/deep">deeper</a><a href="/">home</a><a href="/b">b</a>"#),
        ),
        ("/a/deep", html(r#"<title>Deep</title><a href="/a/deeper">too deep</a>"#)),
        ("/a/deeper", html("<title>Deeper</title>")),
        ("/b", html("<title>B</title>")),
        ("/private/secret", html("<title>secret</title>")),
        (
            "/based/page",
            html(r#"<head><base href="/other/"></head><a href="target">t</a>"#),
        ),
        ("/other/target", html("<title>Target</title>")),
        ("/based/target", html("<title>wrong base</title>")),
        (
            "/data.json",
            Page::Typed("application/json", r#"{"x": "<a href='/never'>"}"#.to_owned()),
        ),
        ("/never", html("never")),
    ])
    .await
}

#[tokio::test]
async fn crawls_breadth_first_within_depth_hosts_and_robots() {
    let offsite = Site::start(vec![("/", html("<a href='/x'>x</a>"))]).await;
    let site = main_site(&offsite).await;
    let (outcome, records) = crawl(config(&[site.url("/")])).await;
    let records = records.all();

    assert_eq!(outcome.stop, StopReason::Finished);
    // Depth 2: the seed, its links, their links; not /a/deeper (depth 3).
    let mut fetched: Vec<String> = site.hits().into_iter().map(|h| h.path).collect();
    fetched.sort();
    assert_eq!(
        fetched,
        [
            "/",
            "/a",
            "/a/deep",
            "/b",
            "/based/page",
            "/data.json",
            "/other/target",
            "/robots.txt",
        ],
        "each page requested exactly once, robots.txt once"
    );
    assert_eq!(offsite.total(), 0, "the other host was never contacted");

    // One record per URL, none twice; the robots refusal is a record too.
    let mut seen = urls(&records);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), records.len(), "{:#?}", urls(&records));
    assert_eq!(records.len(), 8);

    let home = records.iter().find(|r| r.url == site.url("/")).unwrap();
    assert_eq!(home.depth, 0);
    assert_eq!(home.status, Some(200));
    assert_eq!(home.title.as_deref(), Some("Home"));
    assert!(
        home.links.contains(&offsite.url("/")),
        "off-site links are listed"
    );
    assert!(
        home.links
            .iter()
            .all(|l| l.starts_with("http://") || l.starts_with("https://")),
        "{:?}",
        home.links
    );
    assert_eq!(home.links_count, home.links.len());
    assert_eq!(home.task, "task-test");
    assert!(home.bytes > 0);

    let by_url = |path: &str| records.iter().find(|r| r.url == site.url(path)).unwrap();
    assert_eq!(by_url("/a").depth, 1);
    assert_eq!(by_url("/a/deep").depth, 2);
    assert_eq!(by_url("/other/target").depth, 2);
    let secret = by_url("/private/secret");
    assert_eq!(secret.error_kind.as_deref(), Some("robots_disallowed"));
    assert_eq!(secret.status, None);
    assert!(secret.error.as_deref().unwrap().contains("/robots.txt"));
    let json = by_url("/data.json");
    assert_eq!(json.links_count, 0, "only text/html is parsed");
    assert_eq!(json.content_type.as_deref(), Some("application/json"));

    let agents: Vec<_> = site.hits().into_iter().map(|h| h.user_agent).collect();
    assert!(
        agents
            .iter()
            .all(|ua| ua.as_deref() == Some(crawl::DEFAULT_USER_AGENT)),
        "{agents:?}"
    );
}

#[tokio::test]
async fn depth_zero_fetches_the_seeds_only() {
    let offsite = Site::start(vec![]).await;
    let site = main_site(&offsite).await;
    let mut cfg = config(&[site.url("/"), site.url("/b"), site.url("/#dup")]);
    cfg.max_depth = 0;
    let (_, records) = crawl(cfg).await;
    assert_eq!(urls(&records.all()), [site.url("/"), site.url("/b")]);
    assert_eq!(site.total(), 3, "robots.txt, / and /b: {:?}", site.hits());
}

#[tokio::test]
async fn allowed_hosts_can_widen_the_crawl() {
    let offsite = Site::start(vec![("/", html("<title>Other</title>"))]).await;
    let site = main_site(&offsite).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.max_depth = 1;
    cfg.allowed_hosts = Some(vec![site.addr.to_string(), offsite.addr.to_string()]);
    let (_, records) = crawl(cfg).await;
    assert_eq!(offsite.count("/"), 1);
    assert_eq!(offsite.count("/robots.txt"), 1, "robots.txt per origin");
    assert_eq!(
        records.get(&offsite.url("/")).title.as_deref(),
        Some("Other")
    );
}

#[tokio::test]
async fn max_pages_bounds_the_requests() {
    let offsite = Site::start(vec![]).await;
    let site = main_site(&offsite).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.max_pages = 3;
    let (outcome, records) = crawl(cfg).await;
    assert_eq!(outcome.stop, StopReason::MaxPages);
    let pages = site
        .hits()
        .iter()
        .filter(|h| h.path != "/robots.txt")
        .count();
    assert_eq!(pages, 3);
    assert_eq!(
        records.all().iter().filter(|r| r.status.is_some()).count(),
        3
    );
    assert_eq!(
        outcome.progress.queued, 0,
        "the queue held no more than max_pages allowed"
    );
}

// === failures become records, and the crawl goes on ===

#[tokio::test]
async fn slow_page_times_out_and_the_crawl_continues() {
    let site = Site::start(vec![
        (
            "/",
            html(r#"<a href="/slow">slow</a><a href="/b">b</a><a href="/c">c</a>"#),
        ),
        ("/slow", Page::Slow(Duration::from_secs(30))),
        ("/b", html("<title>B</title>")),
        ("/c", html("<title>C</title>")),
    ])
    .await;
    let mut cfg = config(&[site.url("/")]);
    cfg.request_timeout = Duration::from_millis(500);
    cfg.concurrency = 1;
    let started = Instant::now();
    let (outcome, records) = crawl(cfg).await;
    let took = started.elapsed();

    let slow = records.get(&site.url("/slow"));
    assert_eq!(slow.error_kind.as_deref(), Some("timeout"));
    assert!(slow.error.as_deref().unwrap().contains("/slow"));
    assert_eq!(slow.status, None);
    assert!(slow.elapsed_ms >= 450, "{}", slow.elapsed_ms);
    assert_eq!(records.get(&site.url("/c")).status, Some(200));
    assert_eq!(outcome.stop, StopReason::Finished);
    assert_eq!(outcome.progress.errors, 1);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test]
async fn redirects_loops_chains_and_duplicates() {
    let site = Site::start(vec![
        (
            "/",
            html(
                r#"<a href="/loop1">loop</a> <a href="/self">self</a> <a href="/hop/0">chain</a>
                <a href="/to-b">to b</a> <a href="/b">b</a> <a href="/away">away</a>
                <a href="/ok">ok</a> <a href="/nowhere">no location</a>"#,
            ),
        ),
        ("/loop1", Page::Redirect("/loop2")),
        ("/loop2", Page::Redirect("/loop1")),
        ("/self", Page::Redirect("/self")),
        ("/hop/0", Page::Redirect("/hop/1")),
        ("/hop/1", Page::Redirect("/hop/2")),
        ("/hop/2", Page::Redirect("/hop/3")),
        ("/hop/3", Page::Redirect("/hop/4")),
        ("/hop/4", Page::Redirect("/hop/5")),
        ("/to-b", Page::Redirect("/b")),
        ("/b", html("<title>B</title>")),
        ("/away", Page::Redirect("http://localhost:9/")),
        ("/ok", Page::Redirect("/landing")),
        (
            "/landing",
            html(r#"<title>Landed</title><a href="/landing-link">l</a>"#),
        ),
        ("/landing-link", html("<title>L</title>")),
        ("/nowhere", Page::Status(302)),
    ])
    .await;
    let mut cfg = config(&[site.url("/")]);
    cfg.max_redirects = 3;
    let (outcome, records) = crawl(cfg).await;
    assert_eq!(outcome.stop, StopReason::Finished);

    let kind = |path: &str| records.get(&site.url(path)).error_kind;
    assert_eq!(kind("/loop1").as_deref(), Some("redirect_loop"));
    assert_eq!(site.count("/loop1"), 1);
    assert_eq!(site.count("/loop2"), 1);
    assert_eq!(kind("/self").as_deref(), Some("redirect_loop"));
    assert_eq!(site.count("/self"), 1);
    assert_eq!(kind("/hop/0").as_deref(), Some("too_many_redirects"));
    assert_eq!(site.count("/hop/3"), 1);
    assert_eq!(site.count("/hop/4"), 0, "gave up after 3 redirects");
    assert_eq!(kind("/away").as_deref(), Some("redirect_offsite"));
    assert_eq!(kind("/nowhere").as_deref(), Some("bad_redirect"));

    // A redirect to a page the crawl has anyway does not fetch it twice.
    assert_eq!(site.count("/b"), 1);
    let to_b = records.get(&site.url("/to-b"));
    assert_eq!(to_b.final_url, site.url("/b"));
    assert_eq!(to_b.error, None);

    // A redirect to a new page fetches it, and its links are followed.
    let ok = records.get(&site.url("/ok"));
    assert_eq!(ok.final_url, site.url("/landing"));
    assert_eq!(ok.status, Some(200));
    assert_eq!(ok.title.as_deref(), Some("Landed"));
    assert_eq!(site.count("/landing-link"), 1);
}

#[tokio::test]
async fn body_is_read_up_to_the_limit() {
    let big = format!(
        "<title>Big</title>{}<a href='/after'>a</a>",
        "x".repeat(100_000)
    );
    let site = Site::start(vec![("/", Page::Html(big)), ("/after", html("a"))]).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.max_body_bytes = 10_000;
    let (outcome, records) = crawl(cfg).await;
    let home = records.get(&site.url("/"));
    assert_eq!(home.bytes, 10_000);
    assert!(home.truncated);
    assert_eq!(home.title.as_deref(), Some("Big"));
    assert_eq!(site.count("/after"), 0, "the link was past the limit");
    assert_eq!(outcome.progress.bytes, 10_000);
}

// === robots.txt outcomes ===

#[tokio::test]
async fn robots_server_error_disallows_the_host() {
    let site = Site::start(vec![
        ("/robots.txt", Page::Status(503)),
        ("/", html("<a href='/a'>a</a>")),
    ])
    .await;
    let (_, records) = crawl(config(&[site.url("/")])).await;
    let paths: Vec<String> = site.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/robots.txt"], "no page of the host was fetched");
    let home = records.get(&site.url("/"));
    assert_eq!(home.error_kind.as_deref(), Some("robots_unavailable"));
    let error = home.error.unwrap();
    assert!(
        error.contains("503") && error.contains("disallowed"),
        "{error}"
    );
}

#[tokio::test]
async fn robots_unreachable_disallows_the_host() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (outcome, records) = crawl(config(&[format!("http://127.0.0.1:{port}/")])).await;
    let record = &records.all()[0];
    assert_eq!(record.error_kind.as_deref(), Some("robots_unavailable"));
    assert!(
        record
            .error
            .as_deref()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{record:?}"
    );
    assert_eq!(outcome.progress.pages_fetched, 0);
    assert_eq!(outcome.progress.errors, 1);
}

#[tokio::test]
async fn robots_not_found_allows_all_and_can_be_ignored() {
    let pages = || {
        vec![
            ("/", html("<a href='/private/x'>p</a>")),
            ("/private/x", html("<title>P</title>")),
        ]
    };
    let site = Site::start(pages()).await; // robots.txt: 404
    let (_, records) = crawl(config(&[site.url("/")])).await;
    assert_eq!(records.get(&site.url("/private/x")).status, Some(200));

    let mut with_robots = pages();
    with_robots.push(("/robots.txt", Page::Typed("text/plain", ROBOTS.to_owned())));
    let site = Site::start(with_robots).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.respect_robots = false;
    crawl(cfg).await;
    assert_eq!(site.count("/robots.txt"), 0);
    assert_eq!(site.count("/private/x"), 1);
}

// === rate limit, measured by the site ===

/// A home page linking to `n` pages.
async fn wide_site(n: usize) -> Site {
    let links: Vec<String> = (0..n)
        .map(|i| format!("<a href='/p/{i}'>{i}</a>"))
        .collect();
    let links = links.concat();
    let mut pages = vec![("/", Page::Html(links))];
    let paths: Vec<String> = (0..n).map(|i| format!("/p/{i}")).collect();
    for path in &paths {
        pages.push((path.as_str(), html("<title>p</title>")));
    }
    Site::start(pages).await
}

fn arrival_times(site: &Site) -> Vec<Instant> {
    let mut times: Vec<Instant> = site.hits().iter().map(|h| h.at).collect();
    times.sort();
    times
}

/// The limiter releases request `j` at least `(j - i - (burst - 1))` periods
/// after request `i`. Arrival adds a delay that differs per request but does
/// not accumulate, so one allowance for it covers every pair.
fn assert_rate(times: &[Instant], period: Duration, burst: u32, jitter: Duration) {
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let periods = u32::try_from(j - i).unwrap().saturating_sub(burst - 1);
            let floor = (period * periods).saturating_sub(jitter);
            let apart = times[j] - times[i];
            assert!(
                apart >= floor,
                "requests {i} and {j} arrived {apart:?} apart, less than {floor:?}"
            );
        }
    }
}

fn describe(times: &[Instant]) -> String {
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let min = gaps.iter().min().unwrap();
    let max = gaps.iter().max().unwrap();
    let mean = (times[times.len() - 1] - times[0]) / u32::try_from(gaps.len()).unwrap();
    format!(
        "{} requests, gaps min {min:?} mean {mean:?} max {max:?}",
        times.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_every_request() {
    let site = wide_site(12).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.rate_limit = RateLimit {
        requests_per_second: 5.0,
        burst: 1,
    };
    cfg.concurrency = 4; // the limit holds across concurrent visits
    let (_, records) = crawl(cfg).await;

    let times = arrival_times(&site);
    assert_eq!(times.len(), 14, "robots.txt + 13 pages");
    // Visits wait up to 800 ms for their turn; elapsed_ms is the request alone.
    let mut elapsed: Vec<u64> = records.all().iter().map(|r| r.elapsed_ms).collect();
    elapsed.sort_unstable();
    assert!(elapsed[elapsed.len() / 2] < 100, "elapsed_ms {elapsed:?}");
    eprintln!("5 rps, burst 1: {}", describe(&times));
    // 200 ms apart as released. On arrival each gap >= 125 ms, and the 13
    // gaps together >= 2.525 s (a mean of >= 194 ms); with 3 busy loops on
    // the 2 cores the smallest gap seen was 161 ms.
    assert_rate(
        &times,
        Duration::from_millis(200),
        1,
        Duration::from_millis(75),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_allows_the_burst_then_the_rate() {
    let site = wide_site(8).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.rate_limit = RateLimit {
        requests_per_second: 5.0,
        burst: 3,
    };
    cfg.concurrency = 4;
    crawl(cfg).await;

    let times = arrival_times(&site);
    assert_eq!(times.len(), 10);
    eprintln!("5 rps, burst 3: {}", describe(&times));
    eprintln!("  first three within {:?}", times[2] - times[0]);
    assert_rate(
        &times,
        Duration::from_millis(200),
        3,
        Duration::from_millis(75),
    );
}

// === cancellation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_all_new_requests() {
    let site = wide_site(40).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.rate_limit = RateLimit {
        requests_per_second: 4.0,
        burst: 1,
    };
    cfg.concurrency = 3;
    let cancel = CancellationToken::new();
    let records = Records::default();
    let task = tokio::spawn(crawl::run(cfg, records.clone(), cancel.clone(), |_| {}));

    // Cancel right after a request arrives: the next is ~250 ms away, so
    // none is on the wire.
    site.wait_for_hits(4).await;
    cancel.cancel();
    let cancelled_at = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns promptly after cancel")
        .unwrap()
        .unwrap();
    let latency = cancelled_at.elapsed();
    let seen_at_cancel = site.total();

    // At 4 rps the site would see 4 more requests in this second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("cancel while waiting on the rate limit: run returned after {latency:?}");
    assert_eq!(outcome.stop, StopReason::Cancelled);
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    let late: Vec<_> = site
        .hits()
        .into_iter()
        .filter(|h| h.at > cancelled_at + Duration::from_millis(100))
        .collect();
    assert!(late.is_empty(), "requests after cancel: {late:?}");
    assert_eq!(site.total(), seen_at_cancel);
    assert!(site.total() <= 5, "{:?}", site.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_a_request_in_flight() {
    let site = Site::start(vec![
        ("/", html("<a href='/slow'>s</a><a href='/b'>b</a>")),
        ("/slow", Page::Slow(Duration::from_secs(60))),
        ("/b", html("b")),
    ])
    .await;
    let mut cfg = config(&[site.url("/slow"), site.url("/b")]);
    cfg.request_timeout = Duration::from_secs(120);
    cfg.concurrency = 1;
    let cancel = CancellationToken::new();
    let progress = watch::channel(Progress::default()).0;
    let mut progress_rx = progress.subscribe();
    let task = tokio::spawn(crawl::run(
        cfg,
        Records::default(),
        cancel.clone(),
        crawl::watch_progress(progress),
    ));
    site.wait_for_hits(2).await; // robots.txt, then /slow
    assert_eq!(progress_rx.borrow_and_update().in_flight, 1);
    let started = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns promptly after cancel")
        .unwrap()
        .unwrap();
    let latency = started.elapsed();
    eprintln!("cancel with a request in flight: run returned after {latency:?}");
    assert_eq!(outcome.stop, StopReason::Cancelled);
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(site.count("/b"), 0);
    assert_eq!(progress_rx.borrow().in_flight, 0);
}

/// A buffering sink whose batches never commit (a store that waits for its database forever);
/// counts the flushes it was asked for and how many pages it holds.
#[derive(Clone, Default)]
struct Stuck {
    flushes: Arc<Mutex<usize>>,
    /// Flushes that complete before the sink gets stuck (`usize::MAX`: never stuck).
    until: usize,
    delay: Duration,
}

impl Sink for Stuck {
    async fn write(&mut self, _record: &PageRecord) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let n = {
            let mut flushes = self.flushes.lock();
            *flushes += 1;
            *flushes
        };
        if n > self.until {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_stop_never_waits_on_a_checkpoint_that_does_not_complete() {
    let site = wide_site(200).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.checkpoint_interval = Duration::from_millis(50);
    cfg.rate_limit = RateLimit {
        requests_per_second: 20.0,
        burst: 1,
    };
    let sink = Stuck::default();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(crawl::run(cfg, sink.clone(), cancel.clone(), |_| {}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while *sink.flushes.lock() == 0 {
        assert!(Instant::now() < deadline, "no checkpoint was taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the crawl went on waiting for its checkpoint after the stop")
        .unwrap()
        .unwrap();
    let took = stop.elapsed();
    eprintln!("a stuck checkpoint: the crawl returned {took:?} after the stop");
    assert_eq!(outcome.stop, StopReason::Cancelled);
    // The checkpoint gave way at once; the final one had its 3 s and was given up.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        *sink.flushes.lock(),
        2,
        "the checkpoint, then the final one"
    );
}

#[tokio::test]
async fn a_finished_crawl_waits_for_its_last_batch() {
    let site = Site::start(vec![("/", html("<title>only</title>"))]).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.checkpoint_interval = Duration::from_secs(60);
    // The last batch takes longer than the bound a stopped crawl gives it.
    let sink = Stuck {
        until: usize::MAX,
        delay: Duration::from_secs(4),
        ..Stuck::default()
    };
    let started = Instant::now();
    let outcome = crawl::run(cfg, sink.clone(), CancellationToken::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.stop, StopReason::Finished);
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(*sink.flushes.lock(), 1);
}

// === secrets, sinks, progress, config ===

#[tokio::test]
async fn extra_headers_are_sent_but_never_logged_or_recorded() {
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    let logs = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Callsites first seen by another test's thread (no subscriber there) may have cached "not
    // interested" while this one was being registered: a load-dependent miss of every line
    // (seen in CI). Rebuilding the cache once this subscriber is in place settles it.
    tracing::callsite::rebuild_interest_cache();

    let site = Site::start(vec![("/", html("<a href='/b'>b</a>")), ("/b", html("b"))]).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.headers.insert("Cookie", "session=s3cr3t-value");
    cfg.headers.insert("X-Api-Key", "k3y-value");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let sink = JsonLinesSink::append_file(&path).await.unwrap();
    crawl::run(cfg.clone(), sink, CancellationToken::new(), |_| {})
        .await
        .unwrap();

    let cookies: Vec<_> = site
        .hits()
        .into_iter()
        .map(|h| (h.path, h.cookie))
        .collect();
    assert!(
        cookies.contains(&("/b".into(), Some("session=s3cr3t-value".into()))),
        "{cookies:?}"
    );
    assert!(
        cookies.contains(&("/robots.txt".into(), None)),
        "robots.txt is fetched without the secret headers: {cookies:?}"
    );
    let logs = String::from_utf8(logs.0.lock().clone()).unwrap();
    assert!(logs.contains("crawl starting"), "the capture works: {logs}");
    for text in [
        logs,
        std::fs::read_to_string(&path).unwrap(),
        format!("{cfg:?}"),
    ] {
        assert!(
            !text.contains("s3cr3t") && !text.contains("k3y-value"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn file_sink_appends_one_json_line_per_record() {
    let site = Site::start(vec![
        ("/", html("<title>T</title><a href='/b'>b</a>")),
        ("/b", html("b")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    for _ in 0..2 {
        let sink = JsonLinesSink::append_file(&path).await.unwrap();
        crawl::run(
            config(&[site.url("/")]),
            sink,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "two runs of two pages, appended");
    for line in &lines {
        for field in [
            "url",
            "final_url",
            "status",
            "title",
            "links_count",
            "links",
            "depth",
            "fetched_at",
            "elapsed_ms",
            "error",
            "task",
        ] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        let at = line["fetched_at"].as_str().unwrap();
        at.parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{at} is not RFC 3339: {e}"));
    }
    assert_eq!(lines[0]["title"], "T");
    assert_eq!(lines[0]["links"][0], site.url("/b"));
}

#[tokio::test]
async fn progress_is_reported_as_the_crawl_goes() {
    let offsite = Site::start(vec![]).await;
    let site = main_site(&offsite).await;
    let mut snapshots: Vec<Progress> = Vec::new();
    let records = Records::default();
    let outcome = crawl::run(
        config(&[site.url("/")]),
        records.clone(),
        CancellationToken::new(),
        |p: &Progress| snapshots.push(p.clone()),
    )
    .await
    .unwrap();

    let last = snapshots.last().unwrap();
    assert_eq!(last, &outcome.progress);
    assert_eq!(last.pages_fetched, 7);
    assert_eq!(last.errors, 1, "the robots refusal");
    assert_eq!(last.queued, 0);
    assert_eq!(last.in_flight, 0);
    assert!(last.last_activity.is_some());
    let bytes: u64 = records.all().iter().map(|r| r.bytes).sum();
    assert_eq!(last.bytes, bytes);
    assert!(snapshots.iter().any(|p| p.queued > 0));
    assert!(
        snapshots
            .windows(2)
            .all(|w| w[0].pages_fetched <= w[1].pages_fetched && w[0].bytes <= w[1].bytes)
    );
}

#[tokio::test]
async fn invalid_config_is_refused_before_any_request() {
    let site = Site::start(vec![]).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.rate_limit.requests_per_second = 0.0;
    let err = crawl::run(cfg, Records::default(), CancellationToken::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.category(), "InvalidConfig");
    assert!(
        crawl::error::error_chain(&err).contains("requests per second"),
        "{err}"
    );
    assert_eq!(site.total(), 0);
}

// === extraction rules ===

fn book_page(title: &str, author: &str, price: &str) -> Page {
    Page::Html(format!(
        r#"<html><head><title>{title}</title></head><body>
        <h1 class="title">{title}</h1><p class="author">by <a href="/authors/x">{author}</a></p>
        <p class="price">Price: {price}</p><a href="/about">about</a><a href="/books/">all books</a>
        </body></html>"#
    ))
}

fn book_rules() -> Vec<crawl::Rule> {
    use crawl::{Field, Follow, Rule};
    let field = |selector: &str| Field {
        selector: selector.into(),
        ..Field::default()
    };
    vec![
        Rule {
            name: "list".into(),
            url_match: Some(r"/books/(\?page=\d+)?$".into()),
            follow: vec![
                Follow {
                    selector: "ul.books a".into(),
                    rule: Some("book".into()),
                },
                Follow {
                    selector: "a.next".into(),
                    rule: None,
                },
            ],
            fields: std::collections::BTreeMap::new(),
        },
        Rule {
            name: "book".into(),
            url_match: Some(r"/books/\d+$".into()),
            follow: vec![],
            fields: [
                (
                    "title".to_owned(),
                    Field {
                        required: true,
                        ..field("h1.title")
                    },
                ),
                ("author".to_owned(), field(".author a")),
                (
                    "price".to_owned(),
                    Field {
                        pattern: Some(r"([0-9.]+)".into()),
                        required: true,
                        ..field(".price")
                    },
                ),
            ]
            .into(),
        },
    ]
}

#[tokio::test]
async fn rules_follow_list_pages_to_detail_pages_and_extract_fields() {
    let site = Site::start(vec![
        ("/robots.txt", Page::Typed("text/plain", "User-agent: *\n".to_owned())),
        (
            "/books/",
            html(r#"<title>Books</title><ul class="books"><li><a href="/books/1">Dune</a><li><a href="/books/2">Emma</a></ul>
                <a class="next" href="?page=2">next</a><a href="/about">about</a>
                <aside><a href="/books/3">featured</a></aside>"#),
        ),
        (
            "/books/?page=2",
            html(r#"<ul class="books"><li><a href="/books/4">untitled</a><li><a href="/books/5">gone</a></ul>"#),
        ),
        ("/books/1", book_page("Dune", "Frank Herbert", "9.99")),
        ("/books/2", book_page("Emma", "Jane Austen", "4.50")),
        ("/books/3", book_page("Ulysses", "James Joyce", "12.00")),
        ("/books/4", html(r#"<p class="price">Price: 1.00</p>"#)),
        ("/about", html("<title>About</title>")),
    ])
    .await;
    let mut cfg = config(&[site.url("/books/")]);
    cfg.max_depth = 3;
    cfg.rules = book_rules();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let latest = progress.clone();
    let records = Records::default();
    let outcome = crawl::run(cfg, records.clone(), CancellationToken::new(), move |p| {
        *latest.lock() = p.clone();
    })
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Finished);

    // Pages that match no rule and that no rule follows are never fetched.
    assert_eq!(site.count("/about"), 0, "{:?}", site.hits());
    assert_eq!(site.count("/authors/x"), 0);
    let all = records.all();
    let mut fetched: Vec<&str> = urls(&all);
    fetched.sort_unstable();
    let expected: Vec<String> = [
        "/books/",
        "/books/1",
        "/books/2",
        "/books/3",
        "/books/4",
        "/books/5",
        "/books/?page=2",
    ]
    .iter()
    .map(|p| site.url(p))
    .collect();
    assert_eq!(
        fetched,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let dune = records.get(&site.url("/books/1"));
    assert_eq!(dune.rule.as_deref(), Some("book"));
    let json = serde_json::to_value(&dune).unwrap();
    assert_eq!(
        json["fields"],
        serde_json::json!({"title": "Dune", "author": "Frank Herbert", "price": "9.99"})
    );
    assert_eq!(json["incomplete"], false);
    assert!(
        json.get("missing").is_none(),
        "empty lists are left out: {json}"
    );
    // Found through a plain link that the book rule's `match` claims.
    assert_eq!(
        records.get(&site.url("/books/3")).fields["title"],
        crawl::FieldValue::One("Ulysses".into())
    );

    let list = records.get(&site.url("/books/"));
    assert_eq!(list.rule.as_deref(), Some("list"));
    assert!(list.fields.is_empty() && !list.incomplete);

    // A page without a required field, and a page that could not be fetched, are incomplete
    // records; the crawl itself goes on.
    let untitled = records.get(&site.url("/books/4"));
    assert!(untitled.incomplete);
    assert_eq!(untitled.missing, ["title"]);
    assert_eq!(
        untitled.fields["price"],
        crawl::FieldValue::One("1.00".into())
    );
    let gone = records.get(&site.url("/books/5"));
    assert_eq!(gone.status, Some(404));
    assert!(
        gone.incomplete && gone.missing == ["price", "title"],
        "{gone:?}"
    );
    assert_eq!(progress.lock().incomplete, 2);
    assert_eq!(outcome.progress.incomplete, 2);
}

#[tokio::test]
async fn invalid_rules_are_refused_before_any_request() {
    let site = Site::start(vec![]).await;
    let mut cfg = config(&[site.url("/")]);
    cfg.rules = book_rules();
    cfg.rules[1].fields.get_mut("price").unwrap().pattern = Some("([0-9".into());
    let err = crawl::run(cfg, Records::default(), CancellationToken::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.category(), "InvalidConfig");
    let message = crawl::error::error_chain(&err);
    assert!(
        message.contains(
            r#"rule "book": fields.price.pattern "([0-9": not a valid regular expression"#
        ),
        "{message}"
    );
    assert_eq!(site.total(), 0);
}

/// Issue 21, item 6: a crawl resumed from its stored frontier after a spec change follows the
/// new spec, not the one the frontier was queued under. The frontier holds pages of a host the
/// new `allowedHosts` took out and a page deeper than the new `maxDepth`; the new spec adds a
/// seed. Judged from both sites' request logs.
#[tokio::test]
async fn a_resumed_frontier_is_checked_against_the_current_spec() {
    let kept = Site::start(vec![
        ("/", html("<title>root</title>")),
        ("/a", html("<title>a</title>")),
        ("/deep", html("<title>deep</title>")),
        ("/new-seed", html("<title>new seed</title>")),
    ])
    .await;
    let removed = Site::start(vec![("/b", html("<title>b</title>"))]).await;
    let frontier = crawl::Frontier {
        seen: vec![kept.url("/")],
        queue: vec![
            (kept.url("/a"), 1),
            (removed.url("/b"), 1),
            (kept.url("/deep"), 2),
        ],
        progress: crawl::Progress {
            pages_fetched: 1,
            ..crawl::Progress::default()
        },
        requested: 1,
        previous: None,
    };
    // The new spec: only `kept`'s host, depth 1, and a second seed.
    let mut config = config(&[kept.url("/"), kept.url("/new-seed")]);
    config.max_depth = 1;
    config.allowed_hosts = Some(vec![kept.addr.to_string()]);
    config.respect_robots = false;
    let records = Records::default();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        crawl::run_from(
            config,
            Some(frontier),
            records.clone(),
            CancellationToken::new(),
            |_| {},
        ),
    )
    .await
    .expect("the crawl finishes")
    .expect("the crawl runs");
    assert_eq!(outcome.stop, StopReason::Finished);
    let mut paths: Vec<String> = kept.hits().into_iter().map(|h| h.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/a", "/new-seed"],
        "the root was fetched before the move"
    );
    assert_eq!(
        removed.total(),
        0,
        "a host taken out of allowedHosts is never requested: {:?}",
        removed.hits()
    );
}

// === the address guard: no internal address unless the installation allows it ===
//
// Every test here connects to loopback only (127.0.0.1, 127.0.0.2, 127.0.0.3, each a host of its
// own on Linux), so a broken guard cannot send a packet anywhere else; the other internal ranges
// are checked at the resolver step, where a refusal means no connection is attempted.

/// `config`, but with the guard's default (no internal address) or the given allow-list.
fn guarded(seeds: &[String], allow: &str) -> CrawlConfig {
    let mut cfg = config(seeds);
    cfg.address_policy = allow.parse().unwrap();
    cfg
}

fn assert_blocked(record: &PageRecord, refused: &str, address: &str) {
    assert_eq!(
        record.error_kind.as_deref(),
        Some("blocked_address"),
        "{record:#?}"
    );
    let error = record.error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!(
            "{refused} was not fetched: refused to connect to "
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!("{address} is a loopback address (in 127.0.0.0/8)"))
            || error.contains(&format!("{address} is a loopback address (in ::1/128)")),
        "{error}"
    );
    assert!(
        error.contains("--allow-internal-cidrs") && error.contains("worker.allowInternalCIDRs"),
        "the refusal says how to allow it: {error}"
    );
}

#[tokio::test]
async fn a_loopback_seed_is_refused_by_default_and_crawled_when_allowed() {
    let site = Site::start(vec![
        ("/robots.txt", Page::Status(404)),
        ("/", html(r#"<title>Home</title><a href="/a">a</a>"#)),
        ("/a", html("<title>A</title>")),
    ])
    .await;
    let ipv6 = "http://[::1]:9/".to_owned();
    // The URL parser writes it as [::ffff:7f00:1]; the guard judges the IPv4 address it reaches.
    let mapped = url::Url::parse(&format!("http://[::ffff:127.0.0.1]:{}/", site.addr.port()))
        .unwrap()
        .to_string();
    let seeds = [site.url("/"), ipv6.clone(), mapped.clone()];
    let (outcome, records) = crawl(guarded(&seeds, "")).await;
    assert_eq!(
        site.total(),
        0,
        "nothing reached the site: {:?}",
        site.hits()
    );
    assert_blocked(
        &records.get(&site.url("/")),
        &site.url("/robots.txt"),
        "127.0.0.1",
    );
    assert_blocked(&records.get(&ipv6), "http://[::1]:9/robots.txt", "::1");
    let error = records.get(&mapped).error.unwrap();
    assert!(
        error.contains("is a loopback address (in 127.0.0.0/8)"),
        "{error}"
    );
    assert!(records.all().iter().all(|r| r.status.is_none()));
    assert_eq!(outcome.progress.errors, 3);
    assert_eq!(outcome.progress.pages_fetched, 0);

    // Without robots.txt the page request itself is the one refused.
    let mut cfg = guarded(&[site.url("/")], "");
    cfg.respect_robots = false;
    let (_, records) = crawl(cfg).await;
    assert_blocked(&records.get(&site.url("/")), &site.url("/"), "127.0.0.1");
    assert_eq!(site.total(), 0);

    let (outcome, records) = crawl(guarded(&[site.url("/")], "127.0.0.1/32")).await;
    assert_eq!(outcome.progress.errors, 0, "{:#?}", records.all());
    assert_eq!(records.get(&site.url("/a")).title.as_deref(), Some("A"));
    assert_eq!(site.count("/"), 1);
}

/// Site B on 127.0.0.1, and site A on 127.0.0.2 whose pages link and redirect to B.
async fn two_sites() -> (Site, Site) {
    let b = Site::start(vec![
        ("/robots.txt", Page::Status(404)),
        ("/", html("<title>B</title>")),
        ("/linked", html("<title>B linked</title>")),
    ])
    .await;
    let a = Site::start_on(
        "127.0.0.2",
        vec![
            ("/robots.txt", Page::Status(404)),
            (
                "/",
                Page::Html(format!(
                    r#"<title>A</title><a href="{}">to B</a><a href="/away">away</a>"#,
                    b.url("/linked")
                )),
            ),
            ("/away", Page::Moved(b.url("/"))),
        ],
    )
    .await;
    (a, b)
}

#[tokio::test]
async fn a_followed_link_and_a_redirect_to_loopback_are_refused_unless_allowed() {
    let (a, b) = two_sites().await;
    let hosts = Some(vec![a.addr.ip().to_string(), b.addr.ip().to_string()]);
    // A is allowed (127.0.0.2/32), B (127.0.0.1) is not.
    let mut cfg = guarded(&[a.url("/")], "127.0.0.2/32");
    cfg.allowed_hosts.clone_from(&hosts);
    let (outcome, records) = crawl(cfg).await;
    assert_eq!(records.get(&a.url("/")).title.as_deref(), Some("A"));
    assert_blocked(
        &records.get(&b.url("/linked")),
        &b.url("/robots.txt"),
        "127.0.0.1",
    );
    let away = records.get(&a.url("/away"));
    assert_eq!(away.final_url, b.url("/"));
    assert_blocked(&away, &b.url("/robots.txt"), "127.0.0.1");
    assert_eq!(b.total(), 0, "nothing reached B: {:?}", b.hits());
    assert_eq!(outcome.progress.errors, 2);

    // The same without robots.txt: the link's request and the redirect hop are the ones refused.
    let mut cfg = guarded(&[a.url("/")], "127.0.0.2/32");
    cfg.allowed_hosts.clone_from(&hosts);
    cfg.respect_robots = false;
    let (_, records) = crawl(cfg).await;
    assert_blocked(
        &records.get(&b.url("/linked")),
        &b.url("/linked"),
        "127.0.0.1",
    );
    assert_blocked(&records.get(&a.url("/away")), &b.url("/"), "127.0.0.1");
    assert_eq!(b.total(), 0, "nothing reached B: {:?}", b.hits());

    // Allowed: both are fetched.
    let mut cfg = guarded(&[a.url("/")], "127.0.0.0/8");
    cfg.allowed_hosts = hosts;
    let (outcome, records) = crawl(cfg).await;
    assert_eq!(outcome.progress.errors, 0, "{:#?}", records.all());
    assert_eq!(
        records.get(&b.url("/linked")).title.as_deref(),
        Some("B linked")
    );
    let away = records.get(&a.url("/away"));
    assert_eq!((away.status, away.title.as_deref()), (Some(200), Some("B")));
}

#[tokio::test]
async fn a_redirect_from_an_allowed_address_to_another_loopback_address_is_refused() {
    let target = Site::start_on("127.0.0.2", vec![("/", html("<title>inside</title>"))]).await;
    let site = Site::start(vec![
        ("/robots.txt", Page::Status(404)),
        ("/", html(r#"<a href="/jump">jump</a>"#)),
        ("/jump", Page::Moved(target.url("/"))),
    ])
    .await;
    let mut cfg = guarded(&[site.url("/")], "127.0.0.1/32");
    cfg.allowed_hosts = Some(vec!["127.0.0.1".into(), "127.0.0.2".into()]);
    cfg.respect_robots = false;
    let (_, records) = crawl(cfg).await;
    assert_eq!(records.get(&site.url("/")).status, Some(200));
    let jump = records.get(&site.url("/jump"));
    assert_eq!(jump.status, Some(301), "the first hop was fetched");
    assert_blocked(&jump, &target.url("/"), "127.0.0.2");
    assert_eq!(target.total(), 0, "nothing reached 127.0.0.2");
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
    let site = Site::start_on(
        "127.0.0.3",
        vec![
            ("/robots.txt", Page::Status(404)),
            ("/", html("<title>named</title>")),
        ],
    )
    .await;
    let seed = format!("http://intranet.test:{}/", site.addr.port());
    let resolver = crawl::Resolver::fixed([("intranet.test", vec![site.addr.ip()])]);

    let mut cfg = guarded(std::slice::from_ref(&seed), "");
    cfg.resolver = resolver.clone();
    let (_, records) = crawl(cfg).await;
    let record = records.get(&seed);
    assert_blocked(
        &record,
        &format!("http://intranet.test:{}/robots.txt", site.addr.port()),
        "127.0.0.3",
    );
    let error = record.error.unwrap();
    assert!(
        error.contains("refused to connect to intranet.test at 127.0.0.3"),
        "{error}"
    );
    assert_eq!(site.total(), 0);

    // 127.0.0.1 allowed is not 127.0.0.3 allowed.
    let mut cfg = guarded(std::slice::from_ref(&seed), "127.0.0.1/32");
    cfg.resolver = resolver.clone();
    let (_, records) = crawl(cfg).await;
    assert_eq!(
        records.get(&seed).error_kind.as_deref(),
        Some("blocked_address")
    );
    assert_eq!(site.total(), 0);

    let mut cfg = guarded(std::slice::from_ref(&seed), "127.0.0.3/32");
    cfg.resolver = resolver;
    let (_, records) = crawl(cfg).await;
    assert_eq!(records.get(&seed).title.as_deref(), Some("named"));
}

/// A resolver that answers `first` once, then `then` for ever: a name rebound between two
/// connections.
struct Rebinding {
    calls: Mutex<u32>,
    first: std::net::IpAddr,
    then: std::net::IpAddr,
}

impl crawl::address::Resolve for Rebinding {
    fn resolve(&self, _: crawl::address::Name) -> crawl::address::Resolving {
        let mut calls = self.calls.lock();
        *calls += 1;
        let ip = if *calls == 1 { self.first } else { self.then };
        Box::pin(async move {
            Ok(Box::new(std::iter::once(SocketAddr::new(ip, 0))) as crawl::address::Addrs)
        })
    }
}

#[tokio::test]
async fn a_name_rebound_to_a_refused_address_is_refused_on_the_next_connection() {
    // The site closes every connection, so each request connects (and resolves) again. It
    // listens on 127.0.0.1 only; the rebound address, 127.0.0.2, is loopback too.
    let app = Router::new().fallback(|uri: Uri| async move {
        let body = if uri.path() == "/" {
            r#"<title>first</title><a href="/second">second</a>"#
        } else {
            "<title>second</title>"
        };
        (
            [
                (header::CONTENT_TYPE, "text/html"),
                (header::CONNECTION, "close"),
            ],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let seed = format!("http://rebind.test:{port}/");
    let mut cfg = guarded(std::slice::from_ref(&seed), "127.0.0.1/32");
    cfg.respect_robots = false;
    cfg.concurrency = 1;
    cfg.resolver = crawl::Resolver::custom(Rebinding {
        calls: Mutex::new(0),
        first: "127.0.0.1".parse().unwrap(),
        then: "127.0.0.2".parse().unwrap(),
    });
    let (_, records) = crawl(cfg).await;
    assert_eq!(records.get(&seed).title.as_deref(), Some("first"));
    let second = records.get(&format!("http://rebind.test:{port}/second"));
    assert_eq!(
        second.error_kind.as_deref(),
        Some("blocked_address"),
        "{second:#?}"
    );
    assert!(
        second
            .error
            .unwrap()
            .contains("refused to connect to rebind.test at 127.0.0.2"),
    );
}

/// The other internal ranges, at the resolver step the HTTP client goes through: a refusal
/// there means the client has no address to connect to, so nothing is sent (this test never
/// makes a request).
#[tokio::test]
async fn names_of_other_internal_addresses_are_refused_at_resolution() {
    use crawl::address::{AddressPolicy, Resolver, find_blocked, guard};
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let cases = [
        (
            "metadata.test",
            "169.254.169.254",
            "link-local",
            "169.254.0.0/16",
        ),
        ("ten.test", "10.0.0.1", "private (RFC 1918)", "10.0.0.0/8"),
        (
            "home.test",
            "192.168.1.1",
            "private (RFC 1918)",
            "192.168.0.0/16",
        ),
        ("ula.test", "fd00::1", "unique local (RFC 4193)", "fc00::/7"),
        (
            "cgnat.test",
            "100.64.0.1",
            "carrier-grade NAT (RFC 6598)",
            "100.64.0.0/10",
        ),
        (
            "mapped.test",
            "::ffff:169.254.169.254",
            "link-local",
            "169.254.0.0/16",
        ),
        ("v6-link.test", "fe80::1", "link-local", "fe80::/10"),
        (
            "any.test",
            "0.0.0.0",
            "unspecified (\"this network\")",
            "0.0.0.0/8",
        ),
        ("group.test", "239.1.2.3", "multicast", "224.0.0.0/4"),
    ];
    let resolver = Resolver::fixed(cases.iter().map(|(n, a, ..)| (*n, vec![ip(a)])));
    let denied = guard(&resolver, &AddressPolicy::deny_internal());
    for (name, address, kind, range) in cases {
        let Err(err) = denied.resolve(name.parse().unwrap()).await else {
            panic!("{name} ({address}) resolved past the guard");
        };
        let blocked = find_blocked(&*err).expect("the guard's refusal");
        assert_eq!(blocked.host, name);
        assert_eq!(blocked.address, ip(address));
        assert_eq!(blocked.internal.kind, kind, "{name}");
        assert_eq!(blocked.internal.range.to_string(), range, "{name}");
    }
    // An allow-list opens exactly its ranges.
    let allowed = guard(&resolver, &"10.0.0.0/8,fd00::/8".parse().unwrap());
    for name in ["ten.test", "ula.test"] {
        let addrs: Vec<_> = allowed
            .resolve(name.parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs.len(), 1, "{name}");
    }
    for name in ["metadata.test", "home.test", "mapped.test"] {
        assert!(
            allowed.resolve(name.parse().unwrap()).await.is_err(),
            "{name}"
        );
    }
}

/// A resolver that answers `ip` after `delay`, and says when it was asked.
struct SlowResolver {
    ip: std::net::IpAddr,
    delay: Duration,
    asked: tokio::sync::mpsc::UnboundedSender<()>,
}

impl crawl::address::Resolve for SlowResolver {
    fn resolve(&self, _: crawl::address::Name) -> crawl::address::Resolving {
        let (ip, delay) = (self.ip, self.delay);
        let _ = self.asked.send(());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Box::new(std::iter::once(SocketAddr::new(ip, 0))) as crawl::address::Addrs)
        })
    }
}

/// Issue 21, item 7: the owner's deadline passes after the engine's check and before the
/// request's bytes are written (here while its connection resolves the name; after a process
/// pause, while the connection's task has not run yet). The client refuses the write, and the
/// request is held like one the check stopped: once the deadline moves on it goes out, and the
/// crawl ends as if nothing happened. Without the hold, `robots.txt` fails and the host is
/// treated as disallowed for a minute.
#[tokio::test]
async fn a_request_refused_at_the_write_waits_for_the_deadline_and_goes_out() {
    let site = Site::start(vec![
        (
            "/robots.txt",
            Page::Typed("text/plain", "User-agent: *\nAllow: /\n".into()),
        ),
        ("/", html("<title>held</title>")),
    ])
    .await;
    let seed = format!("http://held.test:{}/", site.addr.port());
    let mut cfg = config(std::slice::from_ref(&seed));
    let (asked, mut resolving) = tokio::sync::mpsc::unbounded_channel();
    cfg.resolver = crawl::Resolver::custom(SlowResolver {
        ip: "127.0.0.1".parse().unwrap(),
        delay: Duration::from_millis(300),
        asked,
    });
    let (deadline, valid_until) =
        watch::channel(Some(tokio::time::Instant::now() + Duration::from_secs(60)));
    cfg.send_deadline = crawl::SendDeadline::new(valid_until);
    let owner = tokio::spawn(async move {
        // The first connection is being made: the deadline passes before it can write.
        resolving.recv().await.unwrap();
        deadline.send_replace(Some(tokio::time::Instant::now()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        deadline.send_replace(Some(tokio::time::Instant::now() + Duration::from_secs(60)));
        resolving
    });
    let (outcome, records) = crawl(cfg).await;
    let mut resolving = owner.await.unwrap();
    assert_eq!(outcome.stop, StopReason::Finished);
    let page = records.get(&seed);
    assert_eq!(page.title.as_deref(), Some("held"), "{page:#?}");
    assert_eq!(page.error, None);
    assert_eq!(site.count("/robots.txt"), 1, "{:?}", site.hits());
    assert_eq!(site.count("/"), 1, "{:?}", site.hits());
    assert!(
        resolving.try_recv().is_ok(),
        "the held request connected again after the renewal"
    );
}

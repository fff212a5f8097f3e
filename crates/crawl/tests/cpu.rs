//! The engine's CPU per page on a local site (`--ignored`; run it with `--release`):
//! `cargo test --workspace --release -p crawler-crawl --test cpu -- --ignored --nocapture`.
//!
//! 20 tasks crawl 500 pages each (2.3 KiB, two links) from one loopback site in this process,
//! with no rate limit to speak of: the process's CPU time (site included) over the pages.
//! `CPU_VALIDATORS=1` measures a sink that stores validators (as the PostgreSQL store does: the
//! engine then hashes each body and keeps its `ETag`, `Last-Modified` and followed links).

use std::{fmt::Write as _, sync::Arc, time::Duration};

use axum::{Router, extract::Path, http::header, response::IntoResponse, routing::get};
use crawler_crawl::{
    self as crawl, AddressPolicy, CrawlConfig, PageRecord, RateLimit, Sink, SinkError,
};
use tokio_util::sync::CancellationToken;

const TASKS: usize = 20;
const PAGES: usize = 500;

struct Count(Arc<std::sync::atomic::AtomicU64>);

impl Sink for Count {
    async fn write(&mut self, _record: &PageRecord) -> Result<(), SinkError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn stores_validators(&self) -> bool {
        std::env::var_os("CPU_VALIDATORS").is_some()
    }
}

async fn page(Path((task, i)): Path<(usize, usize)>) -> impl IntoResponse {
    let mut body = String::with_capacity(2400);
    body.push_str("<html><head><title>page</title></head><body>");
    for n in [2 * i + 1, 2 * i + 2] {
        if n < PAGES {
            let _ = write!(body, "<a href=\"/t/{task}/{n}\">next {n}</a>");
        }
    }
    while body.len() < 2300 {
        body.push_str("<p>lorem ipsum dolor sit amet, consectetur adipiscing elit</p>");
    }
    body.push_str("</body></html>");
    ([(header::CONTENT_TYPE, "text/html")], body)
}

/// User and system CPU of this process, from /proc (clock ticks of 10 ms).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --release and --ignored"]
async fn cpu_per_thousand_pages() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/t/{task}/{i}", get(page))
        .route("/robots.txt", get(|| async { "User-agent: *\nAllow: /\n" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let policy: AddressPolicy = "127.0.0.0/8".parse().unwrap();
    let configs: Vec<CrawlConfig> = (0..TASKS)
        .map(|t| {
            let mut c = CrawlConfig::new(format!("t{t}"), [format!("http://{addr}/t/{t}/0")]);
            c.address_policy = policy.clone();
            c.max_depth = 20;
            c.concurrency = 4;
            c.rate_limit = RateLimit {
                requests_per_second: 100_000.0,
                burst: 1000,
            };
            c
        })
        .collect();
    let configs = share(configs);
    let before = cpu();
    let wall = std::time::Instant::now();
    let runs = configs.into_iter().map(|c| {
        let sink = Count(count.clone());
        async move {
            crawl::run(c, sink, CancellationToken::new(), |_| {})
                .await
                .unwrap()
        }
    });
    futures::future::join_all(runs).await;
    let used = cpu().saturating_sub(before);
    let pages = count.load(std::sync::atomic::Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let per_thousand = used.as_secs_f64() / pages as f64 * 1000.0;
    println!(
        "{pages} pages in {:?}, {used:?} CPU (site included): {per_thousand:.3} CPU-s per 1,000 pages",
        wall.elapsed()
    );
    assert_eq!(pages, (TASKS * PAGES) as u64);
}

/// One per-host gate for all the tasks, as a worker has (this file also builds without it).
fn share(configs: Vec<CrawlConfig>) -> Vec<CrawlConfig> {
    let shared = crawl::Politeness::default();
    configs
        .into_iter()
        .map(|mut c| {
            c.politeness = shared.clone();
            c
        })
        .collect()
}

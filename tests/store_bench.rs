//! Result-store benchmarks (`make bench-store`, ignored in `cargo test`): one worker's crawl of
//! the local site stored to PostgreSQL (fsync on) against the JSON-lines file sink, side by side
//! in one run; what checkpointing costs; how fast a moved crawl is going again; how many pages a
//! move fetches twice. Prints a Markdown section; with `BENCH_UPDATE_DOC=1` it replaces the
//! generated store section of BENCHMARKS.md.

// A benchmark report: counts become rates (f64), and the run reads as one story.
#![allow(clippy::cast_precision_loss, clippy::too_many_lines)]

use crate::support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use crawler_crawl::{
    self as crawl, CrawlConfig, Discovered, JsonLinesSink, PageRecord, Sink, SinkError,
};
use crawler_operator::store::{PgSink, Store, TaskKey, TlsOptions};
use support::{postgres::Postgres, site::Site};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PAGES: u64 = 4000;
const ROUNDS: usize = 3;

/// Times what the crawl loop spends waiting on its sink.
struct Timed<S> {
    inner: S,
    busy: Duration,
}

impl<S: Sink> Sink for Timed<S> {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        self.write_visit(record, &[]).await
    }
    async fn write_visit(&mut self, r: &PageRecord, d: &[Discovered]) -> Result<(), SinkError> {
        let start = Instant::now();
        let result = self.inner.write_visit(r, d).await;
        self.busy += start.elapsed();
        result
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        let start = Instant::now();
        let result = self.inner.flush().await;
        self.busy += start.elapsed();
        result
    }
}

fn config(site: &Site, task: &str, checkpoint: Duration) -> CrawlConfig {
    let mut config = CrawlConfig::new(task, [site.seed(task)]);
    // The local site is on loopback, which a crawl refuses unless the installation allows it.
    config.address_policy = "127.0.0.0/8".parse().unwrap();
    config.max_depth = 20;
    config.max_pages = PAGES;
    config.concurrency = 8;
    config.rate_limit.requests_per_second = 1_000_000.0;
    config.rate_limit.burst = 1000;
    config.checkpoint_interval = checkpoint;
    config
}

fn key(task: &str, assignment: i64) -> TaskKey {
    TaskKey {
        namespace: "bench".into(),
        uid: task.into(),
        name: task.into(),
        worker: format!("worker-{assignment}"),
        assignment,
        run: 1,
    }
}

struct Run {
    pages_per_s: f64,
    busy_share: f64,
}

async fn crawl_timed<S: Sink>(
    config: CrawlConfig,
    frontier: Option<crawl::Frontier>,
    sink: S,
) -> Run {
    let mut timed = Timed {
        inner: sink,
        busy: Duration::ZERO,
    };
    let start = Instant::now();
    let outcome = crawl::run_from(
        config,
        frontier,
        &mut timed,
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(outcome.stop, crawl::StopReason::MaxPages);
    Run {
        pages_per_s: outcome.progress.pages_fetched as f64 / elapsed.as_secs_f64(),
        busy_share: timed.busy.as_secs_f64() / elapsed.as_secs_f64(),
    }
}

/// Opens the store's sink for assignment `assignment` of `task`, as a worker starting it does;
/// returns it and the frontier to resume from.
async fn open(
    store: &Store,
    task: &str,
    assignment: i64,
    seeds: &[String],
) -> (PgSink, crawl::Frontier) {
    PgSink::open(
        store.clone(),
        key(task, assignment),
        seeds,
        watch::channel(None).0,
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// The crawl of `config` from `frontier` into `sink`, cancelled once `pages` were fetched (as a
/// move stops it); a future, so the caller may await or spawn it.
fn crawl_until<S: Sink>(
    config: CrawlConfig,
    frontier: crawl::Frontier,
    sink: S,
    pages: u64,
) -> impl Future<Output = Result<crawl::CrawlOutcome, crawl::CrawlError>> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    crawl::run_from(config, Some(frontier), sink, cancel, move |p| {
        if p.pages_fetched >= pages {
            stop.cancel();
        }
    })
}

async fn postgres_run(store: &Store, site: &Site, task: &str, checkpoint: Duration) -> Run {
    let config = config(site, task, checkpoint);
    let seeds = config.normalized_seeds().unwrap();
    let (sink, frontier) = open(store, task, 1, &seeds).await;
    crawl_timed(config, Some(frontier), sink).await
}

async fn file_run(site: &Site, task: &str, dir: &std::path::Path) -> Run {
    let sink = JsonLinesSink::append_file(dir.join(format!("{task}.jsonl")))
        .await
        .unwrap();
    crawl_timed(config(site, task, Duration::from_secs(1)), None, sink).await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-store"]
async fn store_benchmarks() {
    let pg = Postgres::start(true);
    let url = pg.database("bench");
    let store = Store::new(&url, &TlsOptions::default(), true).unwrap();
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();

    // Warm-up (connections, migrations, the page cache), not counted.
    postgres_run(&store, &site, "warm-pg", Duration::from_secs(1)).await;
    file_run(&site, "warm-file", dir.path()).await;

    let mut series: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let file = file_run(&site, &format!("file-{round}"), dir.path()).await;
        series.entry("file").or_default().push(file);
        for (label, interval) in [
            ("postgres, checkpoint 1 s (default)", Duration::from_secs(1)),
            ("postgres, checkpoint 100 ms", Duration::from_millis(100)),
            ("postgres, checkpoint 10 s", Duration::from_secs(10)),
        ] {
            let run = postgres_run(
                &store,
                &site,
                &format!("pg-{round}-{}", interval.as_millis()),
                interval,
            )
            .await;
            series.entry(label).or_default().push(run);
        }
    }
    let rate = |label: &str| median(series[label].iter().map(|r| r.pages_per_s).collect());
    let busy = |label: &str| median(series[label].iter().map(|r| r.busy_share).collect());
    let file = rate("file");
    let default = rate("postgres, checkpoint 1 s (default)");
    let every_10s = rate("postgres, checkpoint 10 s");

    // A move: stop a crawl after 2000 stored pages, open a newer assignment, time its first
    // request; count pages fetched twice.
    let task = "move";
    let mut cfg = config(&site, task, Duration::from_secs(1));
    cfg.max_pages = 10_000;
    let seeds = cfg.normalized_seeds().unwrap();
    let (sink, frontier) = open(&store, task, 1, &seeds).await;
    let first = crawl_until(cfg.clone(), frontier, sink, 2000)
        .await
        .unwrap();
    let moved = Instant::now();
    let hits_before = site.hits(task).len();
    let (sink, frontier) = open(&store, task, 2, &seeds).await;
    let opened = moved.elapsed();
    let resumed_from = frontier.progress.pages_fetched;
    let queued = frontier.queue.len();
    let second = tokio::spawn(crawl_until(cfg, frontier, sink, 3000));
    let first_new = loop {
        if let Some(h) = site.hits(task).get(hits_before) {
            break h.at.saturating_duration_since(moved);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let second = second.await.unwrap().unwrap();
    let mut fetches: BTreeMap<u64, usize> = BTreeMap::new();
    for h in site.hits(task) {
        *fetches.entry(h.page).or_default() += 1;
    }
    let twice = fetches.values().filter(|n| **n > 1).count();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Result store: one worker, the local site, PostgreSQL 15 with fsync on (median of {ROUNDS} alternating runs of {PAGES} pages, concurrency 8, no rate limit)\n"
    );
    let _ = writeln!(
        out,
        "| sink | pages/s | vs file | crawl time waiting on the sink |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for label in series.keys() {
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.2}x | {:.1} % |",
            rate(label),
            rate(label) / file,
            busy(label) * 100.0
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| goal | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    let ratio = default / file;
    let _ = writeln!(
        out,
        "| postgres sink >= 0.8x the file sink | {ratio:.2}x | {} |",
        if ratio >= 0.8 { "met" } else { "missed" }
    );
    let cost = (1.0 - default / every_10s).max(0.0);
    let _ = writeln!(
        out,
        "| checkpoint cost <= 5 % of throughput (1 s vs 10 s interval) | {:.1} % | {} |",
        cost * 100.0,
        if cost <= 0.05 { "met" } else { "missed" }
    );
    let _ = writeln!(
        out,
        "| move to first new page <= 1 s plus the handoff | {first_new:.1?} (claim + frontier read of {resumed_from} stored, {queued} queued: {opened:.1?}) | {} |",
        if first_new <= Duration::from_secs(1) {
            "met"
        } else {
            "missed"
        }
    );
    let _ = writeln!(
        out,
        "| 0 pages re-fetched beyond the last checkpoint interval | {twice} fetched twice ({} pages before the move, {} after) | {} |",
        first.progress.pages_fetched,
        second.progress.pages_fetched,
        if twice <= 8 {
            "met (at most the 8 in flight)"
        } else {
            "missed"
        }
    );
    println!("{out}");
    if std::env::var_os("BENCH_UPDATE_DOC").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = (
            "<!-- BEGIN GENERATED by `make bench-store` (tests/store_bench.rs) -->",
            "<!-- END GENERATED store -->",
        );
        let section = format!("{begin}\n\n{out}\n{end}");
        let doc = match (doc.find(begin), doc.find(end)) {
            (Some(a), Some(b)) => format!("{}{section}{}", &doc[..a], &doc[b + end.len()..]),
            _ => format!("{}\n{section}\n", doc.trim_end()),
        };
        std::fs::write(path, doc).unwrap();
    }
}

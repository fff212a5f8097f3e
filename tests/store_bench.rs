//! Result-store benchmarks (`make bench-store`, ignored in `cargo test`): one worker's crawl of
//! the local site stored to PostgreSQL (fsync on) against the JSON-lines file sink, side by side
//! in one run; what checkpointing costs; how fast a moved crawl is going again; how many pages a
//! move fetches twice; and `crawler-operator results` streaming 1,000,000 stored rows (rows/s and
//! the exporting process's peak RSS). Each prints a Markdown section; with `BENCH_UPDATE_DOC=1`
//! each replaces its generated section of BENCHMARKS.md.

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
    update_doc(
        "<!-- BEGIN GENERATED by `make bench-store` (tests/store_bench.rs) -->",
        "<!-- END GENERATED store -->",
        &out,
    );
}

/// With `BENCH_UPDATE_DOC=1`, replaces the section of BENCHMARKS.md between `begin` and `end`
/// with `out` (appended when the markers are not there).
fn update_doc(begin: &str, end: &str, out: &str) {
    if std::env::var_os("BENCH_UPDATE_DOC").is_none() {
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = format!("{begin}\n\n{out}\n{end}");
    let doc = match (doc.find(begin), doc.find(end)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &doc[..a], &doc[b + end.len()..]),
        _ => format!("{}\n{section}\n", doc.trim_end()),
    };
    std::fs::write(path, doc).unwrap();
}

/// Rows of the `results` benchmark.
const EXPORT_ROWS: u32 = 1_000_000;

/// Inserts `n` visited rows of task (`bench`, `uid`) in one statement (titles, three extracted
/// fields each, validators, as a crawl stores them).
fn insert_rows(pg: &Postgres, db: &str, uid: &str, n: u32) {
    pg.psql(
        db,
        &format!(
            "INSERT INTO crawl_tasks (namespace, resource_uid, name, assignment, worker,
                                      claimed_at, updated_at, run)
             VALUES ('bench', '{uid}', '{uid}', 1, 'worker-1', now(), now(), 1);
             INSERT INTO crawl_pages (namespace, resource_uid, url, state, depth, status,
               final_url, title, content_type, bytes, links_count, fetched_at, elapsed_ms,
               truncated, fields, worker, assignment, stored_at, queued_run, run, etag,
               last_modified, content_hash, unchanged, followed)
             SELECT 'bench', '{uid}', 'https://books.example/item/' || i, 'visited', 2, 200,
               'https://books.example/item/' || i, 'Book number ' || i || ', a title',
               'text/html; charset=utf-8', 20000 + i % 5000, 40,
               '2026-12-06T09:00:00Z'::timestamptz + i * interval '1 ms', 35, false,
               jsonb_build_object('author', 'Author ' || i % 977, 'price', (i % 90) || '.50',
                                  'tags', jsonb_build_array('fiction', 'tag' || i % 13)),
               'worker-1', 1, now(), 1, 1, '\"' || md5(i::text) || '\"',
               'Sat, 05 Dec 2026 10:00:00 GMT', encode(sha256(i::text::bytea), 'hex'), false,
               jsonb_build_array('https://books.example/item/' || (2 * i))
               FROM generate_series(1, {n}) AS i"
        ),
    )
    .unwrap();
}

/// One `results` export by the real binary, its output read and counted here.
struct Export {
    rows: u64,
    bytes: u64,
    wall: Duration,
    /// The peak resident set (`VmHWM` of /proc/<pid>/status, read every 10 ms while it ran), KiB.
    peak_rss_kib: u64,
}

fn export(url: &str, uid: &str, format: &str) -> Export {
    use std::io::Read as _;
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crawler-operator"))
        .args([
            "results", uid, "-n", "bench", "--uid", uid, "--format", format,
        ])
        .env("CRAWLER_DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut rows, mut bytes) = (0_u64, 0_u64);
        let mut buf = vec![0_u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break (rows, bytes);
            }
            bytes += n as u64;
            #[allow(clippy::naive_bytecount)] // a benchmark's reader, not worth a crate
            let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
            rows += lines as u64;
        }
    });
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "results --format {format}: {status}");
    let (rows, bytes) = reader.join().unwrap();
    Export {
        rows,
        bytes,
        wall: started.elapsed(),
        peak_rss_kib: peak,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-store"]
async fn results_streams_a_million_rows_in_constant_memory() {
    let pg = Postgres::start(true);
    let url = pg.database("bench_results");
    let db = Postgres::db_of(&url).to_owned();
    // The schema, as a worker creates it.
    Store::new(&url, &TlsOptions::default(), true)
        .unwrap()
        .check()
        .await
        .unwrap();
    let inserting = Instant::now();
    insert_rows(&pg, &db, "small", 10_000);
    insert_rows(&pg, &db, "million", EXPORT_ROWS);
    pg.psql(&db, "VACUUM ANALYZE crawl_pages").unwrap();
    let inserted = inserting.elapsed();
    let size = pg
        .psql(
            &db,
            "SELECT pg_size_pretty(pg_total_relation_size('crawl_pages'))",
        )
        .unwrap();

    let small = export(&url, "small", "jsonl");
    let jsonl = export(&url, "million", "jsonl");
    let csv = export(&url, "million", "csv");
    assert_eq!(small.rows, 10_000);
    assert_eq!(jsonl.rows, u64::from(EXPORT_ROWS));
    assert_eq!(csv.rows, u64::from(EXPORT_ROWS) + 1, "CSV has a header");

    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### `crawler-operator results`: {EXPORT_ROWS} stored rows streamed out ({build}, PostgreSQL 15 on loopback, the output read by the benchmark)\n"
    );
    let _ = writeln!(
        out,
        "Rows inserted with one `INSERT ... SELECT ... FROM generate_series` ({} rows in {inserted:.1?}; `crawl_pages` is {size} with its indexes). Peak RSS: `VmHWM` of the exporting process, read every 10 ms while it ran.\n",
        EXPORT_ROWS + 10_000
    );
    let _ = writeln!(
        out,
        "| command | rows out | MB out | wall | rows/s | peak RSS |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (label, e) in [
        ("`results` (JSON lines), 10,000 rows", &small),
        ("`results` (JSON lines), 1,000,000 rows", &jsonl),
        ("`results --format csv`, 1,000,000 rows", &csv),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.0} | {:.1?} | {:.0} | {:.1} MiB |",
            e.rows,
            e.bytes as f64 / 1e6,
            e.wall,
            e.rows as f64 / e.wall.as_secs_f64(),
            e.peak_rss_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(out);
    let growth = jsonl.peak_rss_kib.saturating_sub(small.peak_rss_kib);
    let _ = writeln!(out, "| goal | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| constant memory: 100x the rows, peak RSS within 8 MiB | {:.1} MiB more for 1,000,000 rows than for 10,000 | {} |",
        growth as f64 / 1024.0,
        if growth <= 8 * 1024 { "met" } else { "missed" }
    );
    println!("{out}");
    update_doc(
        "<!-- BEGIN GENERATED by `make bench-store` (tests/store_bench.rs, results) -->",
        "<!-- END GENERATED results -->",
        &out,
    );
}

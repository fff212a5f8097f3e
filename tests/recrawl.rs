//! Incremental recrawls and sitemaps against a real PostgreSQL and the local site's versioned
//! pages (`/v/<task>/<n>`: `ETag`, `Last-Modified`, 304s, a sitemap; tests/support/site.rs).
//!
//! Two runs over one store go through the code path a worker uses: `PgSink::open` with the
//! run's `TaskKey` (assignment and `status.run`), then `crawl::run_from` with the frontier it
//! returns. The run numbers are given here as the controller sets `status.run` (its schedule is
//! tested with the controller); each run is a new assignment, as the contract says. Judged from
//! the site's request log (statuses and body bytes sent) and the store's rows.

// Ratios of counts are printed as f64.
#![allow(clippy::cast_precision_loss)]

use crate::support;

use crawler_crawl::{self as crawl, CrawlConfig, RateLimit};
use crawler_operator::store::{PgSink, Store, TaskKey, TlsOptions, export};
use support::{
    judge::Verdict,
    postgres::{self, Postgres},
    site::{Hit, ROBOTS_SITEMAP_TASK, Site, VERSIONED_PAGES, sends_validators},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NS: &str = "ns";

fn key(task: &str, assignment: i64, run: i64) -> TaskKey {
    TaskKey {
        namespace: NS.into(),
        uid: format!("uid-{task}"),
        name: task.into(),
        worker: "worker-1".into(),
        assignment,
        run,
    }
}

/// A crawl of `seeds` as a worker runs it for `assignment` (the site logs the assignment from
/// the User-Agent) and run `run`: loopback allowed, no rate limit to speak of.
fn config(task: &str, seeds: &[String], assignment: i64, run: u64) -> CrawlConfig {
    let mut config = CrawlConfig::new(task, seeds.to_vec());
    config.address_policy = "127.0.0.0/8".parse().unwrap();
    config.max_depth = 10;
    config.max_pages = 1000;
    config.concurrency = 4;
    config.rate_limit = RateLimit {
        requests_per_second: 1000.0,
        burst: 100,
    };
    config.user_agent = format!(
        "{} (worker worker-1; assignment {assignment})",
        crawl::DEFAULT_USER_AGENT
    );
    config.run = run;
    config
}

/// Opens the store for the run (the claim, the seeds queued, the frontier read) and crawls.
async fn crawl_run(store: &Store, config: CrawlConfig, assignment: i64) -> crawl::CrawlOutcome {
    let seeds = config.normalized_seeds().unwrap();
    let run = i64::try_from(config.run).unwrap();
    let (sink, frontier) = PgSink::open(
        store.clone(),
        key(&config.task, assignment, run),
        &seeds,
        watch::channel(None).0,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let outcome = crawl::run_from(
        config,
        Some(frontier),
        sink,
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, crawl::StopReason::Finished, "{outcome:?}");
    outcome
}

fn fresh_store(pg: &Postgres, prefix: &str) -> (Store, String) {
    let url = pg.database(prefix);
    let db = Postgres::db_of(&url).to_owned();
    (Store::new(&url, &TlsOptions::default(), true).unwrap(), db)
}

/// The page requests of `task` by `assignment` (the sitemap, page 0, left out).
fn page_hits(site: &Site, task: &str, assignment: i64) -> Vec<Hit> {
    site.hits(task)
        .into_iter()
        .filter(|h| h.assignment == assignment && h.page != 0)
        .collect()
}

fn bytes(hits: &[Hit]) -> u64 {
    hits.iter().map(|h| h.bytes).sum()
}

/// `column` of the stored row of page `n` of `task`.
fn stored(pg: &Postgres, db: &str, site: &Site, task: &str, n: u64, column: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT {column} FROM crawl_pages WHERE resource_uid = 'uid-{task}' AND url = \
             'http://{}/v/{task}/{n}'",
            site.addr
        ),
    )
    .unwrap()
}

/// The store's records of `task` for `--run run`, through the export path `results` uses.
async fn exported_run(url: &str, task: &str, run: i64) -> Vec<serde_json::Value> {
    let db = crawler_operator::store::Database::new(
        url,
        &TlsOptions::default(),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let client = db.connect().await.unwrap();
    export::prepare_session(&client).await.unwrap();
    let selection = export::Selection {
        namespace: NS.into(),
        uid: format!("uid-{task}"),
        run: Some(run),
        assignment: None,
    };
    let mut writer = export::Writer::new(
        Vec::new(),
        export::Format::Jsonl,
        export::STORE_COLUMNS,
        None,
    );
    export::from_store(&client, &selection, &mut writer)
        .await
        .unwrap();
    String::from_utf8(writer.finish().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_recrawl_of_an_unchanged_site_is_answered_304_or_unchanged() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "recrawl_same");
    let site = Site::start().await;
    let task = "same";
    let seeds = [site.versioned_seed(task)];

    let first = crawl_run(&store, config(task, &seeds, 1, 1), 1).await;
    let second = crawl_run(&store, config(task, &seeds, 2, 2), 2).await;

    let (run1, run2) = (page_hits(&site, task, 1), page_hits(&site, task, 2));
    let answered_304 = run2.iter().filter(|h| h.status == 304).count();
    let (bytes1, bytes2) = (bytes(&run1), bytes(&run2));
    let stored_run2 = pg
        .psql(
            &db,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE unchanged) FROM crawl_pages
              WHERE run = 2",
        )
        .unwrap();
    let (rows2, unchanged2) = stored_run2.split_once(' ').unwrap();
    let (rows2, unchanged2): (usize, usize) = (rows2.parse().unwrap(), unchanged2.parse().unwrap());

    let mut verdict = Verdict::new("recrawl-unchanged");
    verdict.judged = run2.len();
    let pages = usize::try_from(VERSIONED_PAGES).unwrap();
    if run1.len() != pages || rows2 != pages {
        verdict.violation(
            "pages",
            format!(
                "run 1 requested {}, run 2 stored {rows2}, of {pages}",
                run1.len()
            ),
        );
    }
    // At least 90 % of the pages answered 304 or found unchanged, at most 10 % of the bytes.
    if unchanged2 * 10 < pages * 9 {
        verdict.violation("unchanged", format!("{unchanged2} of {pages} unchanged"));
    }
    if bytes2 * 10 > bytes1 {
        verdict.violation(
            "bytes",
            format!("{bytes2} of {bytes1} bytes downloaded again"),
        );
    }
    let expected_304 = (1..=VERSIONED_PAGES)
        .filter(|n| sends_validators(*n))
        .count();
    if answered_304 != expected_304 {
        verdict.violation(
            "answered-304",
            format!("{answered_304} answered 304, expected {expected_304}"),
        );
    }
    if second.progress.pages_unchanged != u64::try_from(pages).unwrap()
        || first.progress.pages_unchanged != 0
    {
        verdict.violation(
            "progress",
            format!(
                "pagesUnchanged {} then {}",
                first.progress.pages_unchanged, second.progress.pages_unchanged
            ),
        );
    }
    verdict.count("pages", pages);
    verdict.count("answered_304", answered_304);
    verdict.count("unchanged", unchanged2);
    verdict.count("bytes_run1", usize::try_from(bytes1).unwrap());
    verdict.count("bytes_run2", usize::try_from(bytes2).unwrap());
    verdict.figure(
        "ratio_304_or_unchanged",
        &format!("{:.3}", unchanged2 as f64 / pages as f64),
    );
    verdict.figure(
        "bytes_ratio",
        &format!("{:.3}", bytes2 as f64 / bytes1 as f64),
    );
    verdict.print_and_assert();

    // An unchanged page keeps what its earlier fetch stored (status 200, its title), with the
    // run that found it unchanged.
    assert_eq!(
        stored(
            pg,
            &db,
            &site,
            task,
            2,
            "status || ' ' || title || ' ' || run || ' ' || unchanged"
        ),
        format!("200 {task} page 2 version 0 2 true")
    );
    assert_eq!(
        stored(
            pg,
            &db,
            &site,
            task,
            16,
            "etag IS NULL AND content_hash IS NOT NULL"
        ),
        "t",
        "a page without validators is compared by its body's hash"
    );
}

#[tokio::test]
async fn a_changed_page_is_rewritten_and_a_removed_link_is_no_longer_followed() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "recrawl_changed");
    let site = Site::start().await;
    let task = "changed";
    let seeds = [site.versioned_seed(task)];

    crawl_run(&store, config(task, &seeds, 1, 1), 1).await;
    site.change_page(task, 3);
    // Page 2 no longer links page 5: 5 and everything under it (10, 11, 20-23, 40-47) is out of
    // the site now.
    site.remove_link(task, 2, 5);
    let reachable = site.reachable(task);
    assert_eq!(reachable.len(), 48);
    let second = crawl_run(&store, config(task, &seeds, 2, 2), 2).await;

    let run2 = page_hits(&site, task, 2);
    let mut requested: Vec<u64> = run2.iter().map(|h| h.page).collect();
    requested.sort_unstable();
    assert_eq!(
        requested, reachable,
        "run 2 requests exactly the pages still linked"
    );
    let full: Vec<u64> = run2
        .iter()
        .filter(|h| h.status == 200)
        .map(|h| h.page)
        .collect();
    for n in [2, 3] {
        assert!(full.contains(&n), "changed page {n} downloaded: {full:?}");
    }
    assert_eq!(second.progress.pages_unchanged, 48 - 2);

    // The changed pages are rewritten (their title, not unchanged) by run 2; the page no longer
    // linked keeps run 1's row.
    assert_eq!(
        stored(
            pg,
            &db,
            &site,
            task,
            3,
            "title || ' ' || run || ' ' || unchanged"
        ),
        format!("{task} page 3 version 1 2 false")
    );
    assert_eq!(
        stored(
            pg,
            &db,
            &site,
            task,
            2,
            "links_count || ' ' || run || ' ' || unchanged"
        ),
        "1 2 false"
    );
    assert_eq!(stored(pg, &db, &site, task, 5, "run"), "1");
    assert_eq!(stored(pg, &db, &site, task, 47, "run"), "1");

    // `results --run 2`: the pages run 2 reached, changed or not; `--run 1` what only run 1 did.
    let url = pg.url(&db);
    let records = exported_run(&url, task, 2).await;
    assert_eq!(records.len(), 48);
    assert_eq!(
        records.iter().filter(|r| r["unchanged"] == true).count(),
        46
    );
    assert!(records.iter().all(|r| r["run"] == 2));
    let only_run1 = exported_run(&url, task, 1).await;
    assert_eq!(only_run1.len(), 15);
}

#[tokio::test]
async fn a_run_resumed_after_a_move_continues_its_own_frontier() {
    let pg = postgres::shared();
    let (store, _db) = fresh_store(pg, "recrawl_resume");
    let site = Site::start().await;
    let task = "resume";
    let seeds = [site.versioned_seed(task)];
    crawl_run(&store, config(task, &seeds, 1, 1), 1).await;

    // Run 2 stops after 20 pages (a move), and continues as assignment 3 of the same run.
    let cfg = config(task, &seeds, 2, 2);
    let (sink, frontier) = PgSink::open(
        store.clone(),
        key(task, 2, 2),
        &cfg.normalized_seeds().unwrap(),
        watch::channel(None).0,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    crawl::run_from(cfg, Some(frontier), sink, cancel, move |p| {
        if p.pages_fetched >= 20 {
            stop.cancel();
        }
    })
    .await
    .unwrap();
    let resumed = crawl_run(&store, config(task, &seeds, 3, 2), 3).await;

    // Every page is requested once in run 2 (but those in flight at the stop), none of run 1's
    // left out, and the run's counts continue.
    let mut counts = std::collections::BTreeMap::<u64, usize>::new();
    for h in page_hits(&site, task, 2)
        .into_iter()
        .chain(page_hits(&site, task, 3))
    {
        *counts.entry(h.page).or_default() += 1;
    }
    let twice = counts.values().filter(|c| **c > 1).count();
    assert_eq!(counts.len(), usize::try_from(VERSIONED_PAGES).unwrap());
    assert!(
        twice <= 4,
        "{twice} pages requested twice in run 2: {counts:?}"
    );
    assert!(
        resumed.progress.pages_unchanged >= VERSIONED_PAGES - 4,
        "{:?}",
        resumed.progress
    );
}

// === sitemaps ===

/// Sitemap crawls: depth 0, so only the seeds and what the sitemaps list are fetched.
fn sitemap_config(task: &str, seeds: &[String], assignment: i64, run: u64) -> CrawlConfig {
    let mut config = config(task, seeds, assignment, run);
    config.max_depth = 0;
    config.sitemaps = true;
    config
}

#[tokio::test]
async fn a_sitemap_seed_queues_the_pages_it_lists() {
    let site = Site::start().await;
    let task = "sitemap-seed";
    let records = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = Collect(std::sync::Arc::clone(&records));
    let outcome = crawl::run(
        sitemap_config(task, &[site.sitemap_url(task)], 1, 1),
        sink,
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, crawl::StopReason::Finished);
    let mut pages: Vec<u64> = page_hits(&site, task, 1).iter().map(|h| h.page).collect();
    pages.sort_unstable();
    assert_eq!(
        pages,
        (1..=VERSIONED_PAGES).collect::<Vec<_>>(),
        "every listed page, at depth 0 (maxDepth 0 fetches seeds only otherwise)"
    );
    let records = records.lock().clone();
    assert!(
        records.iter().all(|r| r.depth == 0),
        "sitemap URLs are at depth 0"
    );
    assert!(
        !records.iter().any(|r| r.url.contains("elsewhere.invalid")),
        "an entry outside the allowed hosts is not queued"
    );

    // Without spec.sitemaps the sitemap is a page like any other: nothing it lists is fetched.
    let task = "sitemap-off";
    let mut off = sitemap_config(task, &[site.sitemap_url(task)], 1, 1);
    off.sitemaps = false;
    crawl::run(off, Collect::default(), CancellationToken::new(), |_| {})
        .await
        .unwrap();
    assert!(page_hits(&site, task, 1).is_empty());
}

#[tokio::test]
async fn the_sitemaps_robots_txt_names_are_queued_with_the_seeds() {
    let site = Site::start_with_robots_sitemap().await;
    let task = ROBOTS_SITEMAP_TASK;
    // The seed is a page; the site's robots.txt names this task's sitemap.
    crawl::run(
        sitemap_config(task, &[site.versioned_seed(task)], 1, 1),
        Collect::default(),
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        page_hits(&site, task, 1).len(),
        usize::try_from(VERSIONED_PAGES).unwrap()
    );
}

#[tokio::test]
async fn a_recrawl_skips_the_pages_whose_lastmod_is_not_newer() {
    let pg = postgres::shared();
    let (store, _db) = fresh_store(pg, "recrawl_lastmod");
    let site = Site::start().await;
    let task = "lastmod";
    let seeds = [site.sitemap_url(task)];
    crawl_run(&store, sitemap_config(task, &seeds, 1, 1), 1).await;
    site.change_page(task, 7);
    let second = crawl_run(&store, sitemap_config(task, &seeds, 2, 2), 2).await;

    // Only the page whose lastmod moved on is requested again (and the sitemap itself).
    let pages: Vec<u64> = page_hits(&site, task, 2).iter().map(|h| h.page).collect();
    assert_eq!(pages, [7]);
    let sitemap_fetches = site
        .hits(task)
        .iter()
        .filter(|h| h.assignment == 2 && h.page == 0)
        .count();
    assert_eq!(sitemap_fetches, 1);
    assert_eq!(second.progress.pages_unchanged, VERSIONED_PAGES - 1);
}

/// Records in memory.
#[derive(Clone, Default)]
struct Collect(std::sync::Arc<parking_lot::Mutex<Vec<crawl::PageRecord>>>);

impl crawl::Sink for Collect {
    async fn write(&mut self, record: &crawl::PageRecord) -> Result<(), crawl::SinkError> {
        self.0.lock().push(record.clone());
        Ok(())
    }
}

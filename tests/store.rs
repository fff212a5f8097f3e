//! The PostgreSQL result store against a real PostgreSQL (tests/support/postgres.rs) and the
//! local site: fencing by assignment number, exactly one row per URL, resume from the stored
//! frontier, and a database crash in the middle of a crawl. No Kubernetes here: the worker
//! processes' part is in tests/worker.rs.

use crate::support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crawler_crawl::{self as crawl, CrawlConfig, Discovered, PageRecord, Sink, SinkError};
use crawler_operator::store::{PgSink, Store, StoreHealth, TaskKey, TlsOptions};
use support::{postgres, site::Site};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn key(assignment: i64, worker: &str) -> TaskKey {
    TaskKey {
        namespace: "ns".into(),
        uid: "uid-1".into(),
        name: "task".into(),
        worker: worker.into(),
        assignment,
        run: 1,
    }
}

/// A fetched HTML page of task "task", with nothing extracted.
fn record(url: &str) -> PageRecord {
    PageRecord {
        task: "task".into(),
        url: url.into(),
        final_url: url.into(),
        status: Some(200),
        title: Some("t".into()),
        depth: 1,
        fetched_at: jiff::Timestamp::now(),
        elapsed_ms: 1,
        content_type: Some("text/html".into()),
        bytes: 10,
        ..PageRecord::default()
    }
}

fn health() -> StoreHealth {
    watch::channel(None).0
}

async fn open(store: &Store, assignment: i64, worker: &str) -> Result<PgSink, SinkError> {
    postgres::open_sink(store, key(assignment, worker))
        .await
        .map(|(sink, _)| sink)
}

/// A migrated store on a fresh database of `pg`; returns it and the database's
/// name (for `psql`).
fn fresh_store(pg: &postgres::Postgres, prefix: &str) -> (Store, String) {
    let url = pg.database(prefix);
    let db = postgres::Postgres::db_of(&url).to_owned();
    (Store::new(&url, &TlsOptions::default(), true).unwrap(), db)
}

/// Writes a page record for each of `urls` and flushes them as one batch.
async fn write_batch(sink: &mut PgSink, urls: impl IntoIterator<Item = String>) {
    for url in urls {
        sink.write(&record(&url)).await.unwrap();
    }
    sink.flush().await.unwrap();
}

/// How many page rows were stored by an assignment after a newer one had claimed the task: what
/// the fence exists to keep at 0.
fn rows_stored_after_a_newer_claim(pg: &postgres::Postgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) FROM crawl_pages p JOIN crawl_tasks t USING (namespace, resource_uid)
          WHERE p.assignment < t.assignment AND p.stored_at > t.claimed_at",
    )
    .unwrap()
}

/// `rows|distinct urls|still queued` of the page table: one row per URL and nothing left to
/// visit is `n|n|0`.
fn page_rows(pg: &postgres::Postgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*), count(DISTINCT url), count(*) FILTER (WHERE state = 'queued')
           FROM crawl_pages",
    )
    .unwrap()
}

#[tokio::test]
async fn a_write_from_an_older_assignment_is_refused_once_a_newer_one_has_written() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "fence");

    let mut old = open(&store, 1, "worker-1").await.unwrap();
    write_batch(&mut old, (0..3).map(|n| format!("http://a.example/{n}"))).await;

    // The new owner's claim is its first write: from here on the old one is refused.
    let mut new = open(&store, 2, "worker-2").await.unwrap();
    old.write_visit(
        &record("http://a.example/late"),
        &[Discovered {
            url: "http://a.example/late-link".into(),
            depth: 2,
        }],
    )
    .await
    .unwrap();
    let err = old.flush().await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("assignment 2") && text.contains("assignment 1"),
        "{text}"
    );

    // Nothing of the refused batch is stored: the fence check and the writes are one transaction.
    let late = pg
        .psql(
            &db,
            "SELECT count(*) FROM crawl_pages WHERE url LIKE '%late%'",
        )
        .unwrap();
    assert_eq!(late, "0");
    // An old owner that starts again is refused at once.
    assert!(
        open(&store, 1, "worker-1")
            .await
            .err()
            .expect("refused")
            .is_fenced()
    );

    // A re-fetch by the new owner updates the row; nothing is duplicated. Extracted fields go
    // into the JSON column.
    let mut refetched = record("http://a.example/1");
    refetched.fields.insert(
        "price".into(),
        crawler_crawl::FieldValue::One("12.50".into()),
    );
    new.write(&refetched).await.unwrap();
    new.flush().await.unwrap();
    let rows = pg
        .psql(
            &db,
            "SELECT url || ' ' || assignment FROM crawl_pages WHERE state = 'visited' ORDER BY url",
        )
        .unwrap();
    assert_eq!(
        rows,
        "http://a.example/0 1\nhttp://a.example/1 2\nhttp://a.example/2 1"
    );
    // No row of assignment 1 was stored after assignment 2 claimed the task.
    assert_eq!(rows_stored_after_a_newer_claim(pg, &db), "0");
    let fields = pg
        .psql(
            &db,
            "SELECT fields::text FROM crawl_pages WHERE url = 'http://a.example/1'",
        )
        .unwrap();
    assert_eq!(fields, r#"{"price": "12.50"}"#);
    let fence = pg
        .psql(&db, "SELECT assignment || ' ' || worker FROM crawl_tasks")
        .unwrap();
    assert_eq!(fence, "2 worker-2");
}

#[tokio::test]
async fn two_writers_racing_never_interleave_older_after_newer() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "race");
    let mut old = open(&store, 1, "worker-1").await.unwrap();
    let old_writer = tokio::spawn(async move {
        let mut written = 0;
        for n in 0..2000 {
            old.write(&record(&format!("http://a.example/old/{n}")))
                .await
                .unwrap();
            match old.flush().await {
                Ok(()) => written += 1,
                Err(e) if e.is_fenced() => return written,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the old writer was never refused");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut new = open(&store, 2, "worker-2").await.unwrap();
    write_batch(&mut new, ["http://a.example/new".to_owned()]).await;
    let written = old_writer.await.unwrap();
    assert!(written > 0, "the old writer wrote nothing before the claim");
    let stored: i64 = pg
        .psql(
            &db,
            "SELECT count(*) FROM crawl_pages WHERE assignment = 1 AND state = 'visited'",
        )
        .unwrap()
        .parse()
        .unwrap();
    // Every batch the old writer saw committed is stored, and nothing more (one record a batch).
    assert_eq!(stored, written);
    assert_eq!(rows_stored_after_a_newer_claim(pg, &db), "0");
}

/// Opens a sink for object `uid` of the task named "task".
async fn open_as(
    store: &Store,
    uid: &str,
    assignment: i64,
    worker: &str,
) -> (PgSink, crawl::Frontier) {
    let key = TaskKey {
        uid: uid.into(),
        ..key(assignment, worker)
    };
    postgres::open_sink(store, key)
        .await
        .unwrap_or_else(|e| panic!("opening {uid} at assignment {assignment}: {e}"))
}

/// The fence is keyed by the resource's uid, not its name: an object created again under the
/// name of a deleted one is a new task, whose assignment 1 is not refused by the old object's
/// higher number, and which does not resume the old object's crawl.
#[tokio::test]
async fn an_object_created_again_under_a_deleted_ones_name_has_a_fence_of_its_own() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "recreated");
    // The old object, moved twice: its fence stands at 3.
    let (mut old, _) = open_as(&store, "uid-old", 3, "worker-1").await;
    write_batch(&mut old, (0..3).map(|n| format!("http://a.example/{n}"))).await;

    // Created again under the same name: assignment 1 of another uid opens and writes.
    let (mut new, frontier) = open_as(&store, "uid-new", 1, "worker-2").await;
    assert_eq!(
        (frontier.progress.pages_fetched, frontier.queue.len()),
        (0, 1),
        "starts from its seeds, not from the old object's pages"
    );
    write_batch(&mut new, ["http://a.example/0".to_owned()]).await;
    let fences = pg
        .psql(
            &db,
            "SELECT resource_uid || ' ' || name || ' ' || assignment FROM crawl_tasks ORDER BY resource_uid",
        )
        .unwrap();
    assert_eq!(fences, "uid-new task 1\nuid-old task 3");
    // Neither fences the other: the old object's writer (still running somewhere) is kept out
    // of the new task's rows by the uid, not refused by the new number.
    write_batch(&mut old, ["http://a.example/late".to_owned()]).await;
    let rows = pg
        .psql(
            &db,
            "SELECT resource_uid || ' ' || count(*) FROM crawl_pages WHERE state = 'visited' \
             GROUP BY resource_uid ORDER BY resource_uid",
        )
        .unwrap();
    assert_eq!(rows, "uid-new 1\nuid-old 4");
}

/// A crawl of 63 pages (depth 5 of the site's binary tree), stopped after `stop_after` pages and
/// resumed by a second sink of a newer assignment.
fn tree(site: &Site, task: &str) -> CrawlConfig {
    let mut config = CrawlConfig::new(task, [site.seed(task)]);
    // The local site is on loopback, which a crawl refuses unless the installation allows it.
    config.address_policy = "127.0.0.0/8".parse().unwrap();
    config.max_depth = 5;
    config.rate_limit.requests_per_second = 200.0;
    config.rate_limit.burst = 5;
    config.checkpoint_interval = Duration::from_millis(100);
    config
}

async fn crawl_with(
    store: &Store,
    config: CrawlConfig,
    assignment: i64,
    stop_after: Option<u64>,
    health: StoreHealth,
) -> (crawl::Frontier, crawl::CrawlOutcome) {
    let seeds = config.normalized_seeds().unwrap();
    let worker = format!("worker-{assignment}");
    let (sink, frontier) = PgSink::open(
        store.clone(),
        key(assignment, &worker),
        &seeds,
        health,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let outcome = crawl::run_from(config, Some(frontier.clone()), sink, cancel, move |p| {
        if stop_after.is_some_and(|n| p.pages_fetched >= n) {
            stop.cancel();
        }
    })
    .await
    .unwrap();
    (frontier, outcome)
}

fn fetch_counts(site: &Site, task: &str) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for hit in site.hits(task) {
        *counts.entry(hit.page).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_crawl_resumes_from_the_stored_frontier() {
    let pg = postgres::shared();
    let (store, db) = fresh_store(pg, "resume");
    let site = Site::start().await;

    let (_, first) = crawl_with(&store, tree(&site, "r"), 1, Some(20), health()).await;
    assert_eq!(first.stop, crawl::StopReason::Cancelled);
    let stored: u64 = pg
        .psql(
            &db,
            "SELECT count(*) FROM crawl_pages WHERE state = 'visited'",
        )
        .unwrap()
        .parse()
        .unwrap();
    // Stopping writes the last batch: what the first run recorded is stored.
    assert_eq!(stored, first.progress.pages_fetched);

    let (frontier, second) = crawl_with(&store, tree(&site, "r"), 2, None, health()).await;
    assert_eq!(second.stop, crawl::StopReason::Finished);
    // The count continues from the stored pages instead of starting at 0.
    assert_eq!(frontier.progress.pages_fetched, stored);
    assert_eq!(second.progress.pages_fetched, 63);
    assert_eq!(page_rows(pg, &db), "63|63|0");

    // Pages fetched twice: only visits in flight when the first run stopped (dropped unrecorded,
    // still queued), at most the crawl's concurrency.
    let counts = fetch_counts(&site, "r");
    assert_eq!(counts.len(), 63);
    let twice: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| *p)
        .collect();
    println!("STORE resume: {stored} pages stored before the move, re-fetched after it: {twice:?}");
    assert!(twice.len() <= 2, "re-fetched: {twice:?}");

    // A finished task that starts again fetches nothing.
    let before = site.hits("r").len();
    let (_, third) = crawl_with(&store, tree(&site, "r"), 3, None, health()).await;
    assert_eq!(third.stop, crawl::StopReason::Finished);
    assert_eq!(third.progress.pages_fetched, 63);
    assert_eq!(site.hits("r").len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_crawl_pauses_the_crawl_and_loses_nothing() {
    // A server of its own: the others' tests must not see it go away.
    let pg = postgres::Postgres::start(false);
    let (store, db) = fresh_store(&pg, "crash");
    let site = Site::start().await;
    let mut config = tree(&site, "c");
    config.max_depth = 7; // 255 pages
    config.rate_limit.requests_per_second = 50.0;
    config.rate_limit.burst = 1;

    let (health_tx, mut health_rx) = watch::channel(None);
    let waited = tokio::spawn(async move {
        let mut why = None;
        while health_rx.changed().await.is_ok() {
            why = why.or_else(|| health_rx.borrow().clone());
        }
        (why, health_rx.borrow().clone())
    });
    let crawl = tokio::spawn({
        let store = store.clone();
        async move { crawl_with(&store, config, 1, None, health_tx).await }
    });
    site.wait_for_hits("c", "?", None, 40).await;
    pg.crash_and_restart(Duration::from_secs(2)).await;
    let (_, outcome) = crawl.await.unwrap();
    assert_eq!(outcome.stop, crawl::StopReason::Finished);
    assert_eq!(outcome.progress.pages_fetched, 255);
    // The sink said why it waited (the worker turns this into the task's condition).
    let (why, last) = waited.await.unwrap();
    let why = why.expect("the sink never reported waiting for the database");
    assert!(why.contains("waiting for the database"), "{why}");
    assert_eq!(last, None, "healthy again at the end");
    assert_eq!(page_rows(&pg, &db), "255|255|0");
    let counts = fetch_counts(&site, "c");
    assert_eq!(counts.len(), 255);
    assert!(counts.values().all(|n| *n == 1), "a page was fetched twice");
    assert!(
        std::fs::read_to_string(&pg.server.log)
            .unwrap()
            .contains("database system was interrupted"),
        "the server did not go through crash recovery"
    );
}

/// Waits (up to `bound`) until `health` says the sink waits for the database; returns why.
async fn waiting(health: &mut watch::Receiver<Option<String>>, bound: Duration) -> Option<String> {
    tokio::time::timeout(bound, async {
        loop {
            if let Some(why) = health.borrow_and_update().clone() {
                return Some(why);
            }
            if health.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// A previous owner died between its fence upsert and COMMIT (its node went away): its session,
/// opened as the worker opens its own, keeps the task's row locked and says nothing more. The
/// next owner's claim says it waits (the lock timeout), a stop ends that wait at once, and the
/// server itself ends the dead session (idle in transaction), so the next claim proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_open_transaction_is_ended_by_the_server_and_the_next_owner_proceeds() {
    let pg = postgres::shared();
    let url = pg.database("deadowner");
    let db = postgres::Postgres::db_of(&url).to_owned();
    let store = Store::new(&url, &TlsOptions::default(), true).unwrap();
    drop(open(&store, 1, "worker-1").await.unwrap());

    let owner =
        crawler_operator::store::connect(&url, &TlsOptions::default(), Duration::from_secs(5))
            .await
            .unwrap();
    owner
        .batch_execute(
            "BEGIN; UPDATE crawl_tasks SET assignment = 2, worker = 'worker-2' \
             WHERE resource_uid = 'uid-1'",
        )
        .await
        .unwrap();
    let died = Instant::now();

    // A new owner stopped while it waits for the lock: its open returns at once.
    let (health_tx, mut health_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let blocked = tokio::spawn({
        let (store, cancel) = (store.clone(), cancel.clone());
        async move {
            let seeds = ["http://a.example/".to_owned()];
            PgSink::open(store, key(3, "worker-3"), &seeds, health_tx, cancel)
                .await
                .map(drop)
        }
    });
    let why = waiting(&mut health_rx, Duration::from_secs(4))
        .await
        .expect("the blocked claim never said it waits");
    let shown = died.elapsed();
    assert!(why.contains("lock"), "{why}");
    let stop = Instant::now();
    cancel.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(1), blocked)
        .await
        .expect("the claim went on waiting after the stop")
        .unwrap();
    let stop_took = stop.elapsed();
    assert!(stopped.is_err(), "a stopped claim reported success");

    // The server ends the dead owner's session; the next claim proceeds.
    let claimed = tokio::time::timeout(Duration::from_secs(20), open(&store, 3, "worker-3"))
        .await
        .expect("the claim still waits for the dead owner's lock")
        .unwrap();
    let proceeded = died.elapsed();
    let ended = owner.simple_query("SELECT 1").await.unwrap_err();
    println!(
        "STORE dead owner: waiting shown after {shown:?}, a stop ended the wait in {stop_took:?}, \
         the next owner claimed {proceeded:?} after the owner died; its session: {}",
        crawler_operator::store::describe(&ended)
    );
    assert!(proceeded < Duration::from_secs(10), "{proceeded:?}");
    drop(claimed);
    assert_eq!(
        pg.psql(&db, "SELECT assignment || ' ' || worker FROM crawl_tasks")
            .unwrap(),
        "3 worker-3"
    );
    // What every session of the worker carries, as the server sees it.
    let session =
        crawler_operator::store::connect(&url, &TlsOptions::default(), Duration::from_secs(5))
            .await
            .unwrap();
    let mut shown = Vec::new();
    for setting in [
        "lock_timeout",
        "statement_timeout",
        "idle_in_transaction_session_timeout",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
    ] {
        let row = session
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap();
        shown.push(row.get::<_, String>(0));
    }
    assert_eq!(shown, ["2s", "30s", "5s", "5", "2", "3"]);
}

/// A running crawl's batch is blocked by a row lock another session holds (without the worker's
/// timeouts, as any foreign session): a stop ends the crawl without waiting for that write (the
/// last batch is given up after the final-checkpoint bound), and the abandoned writer leaves no
/// transaction open behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_never_waits_on_a_blocked_batch_and_leaves_no_transaction_open() {
    let pg = postgres::shared();
    let url = format!("{}?application_name=blocked-writer", pg.database("blocked"));
    let db = postgres::Postgres::db_of(url.split('?').next().unwrap()).to_owned();
    let store = Store::new(&url, &TlsOptions::default(), true).unwrap();
    let site = Site::start().await;
    let mut config = tree(&site, "b");
    config.max_depth = 10;
    config.rate_limit.requests_per_second = 50.0;
    config.rate_limit.burst = 1;
    let seeds = config.normalized_seeds().unwrap();
    let (health_tx, mut health_rx) = watch::channel(None);
    let (sink, frontier) = PgSink::open(
        store.clone(),
        key(1, "worker-1"),
        &seeds,
        health_tx,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let crawl = tokio::spawn(crawl::run_from(
        config,
        Some(frontier),
        sink,
        cancel.clone(),
        |_| {},
    ));
    site.wait_for_hits("b", "?", None, 20).await;

    let (holder, connection) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let holder_connection = tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; SELECT * FROM crawl_tasks FOR UPDATE")
        .await
        .unwrap();
    let why = waiting(&mut health_rx, Duration::from_secs(6))
        .await
        .expect("the blocked batch never said it waits");
    assert!(why.contains("lock"), "{why}");

    let stop = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(8), crawl)
        .await
        .expect("the crawl went on waiting for its blocked batch after the stop")
        .unwrap()
        .unwrap();
    let stop_took = stop.elapsed();
    assert_eq!(outcome.stop, crawl::StopReason::Cancelled);

    // The abandoned writer's session: gone (or at least out of any transaction) within the
    // lock timeout.
    let open_left = || {
        pg.psql(
            &db,
            "SELECT count(*) FROM pg_stat_activity \
              WHERE application_name = 'blocked-writer' AND xact_start IS NOT NULL",
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    while open_left() != "0" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = open_left();
    let cleared = stop.elapsed();
    println!(
        "STORE blocked batch: the crawl returned {stop_took:?} after the stop, the writer's \
         transactions open {cleared:?} after it: {left}"
    );
    // The final checkpoint's bound (3 s) and a little.
    assert!(stop_took < Duration::from_secs(5), "{stop_took:?}");
    assert_eq!(left, "0", "the abandoned writer keeps a transaction open");
    drop(holder);
    holder_connection.abort();
}

#[tokio::test]
async fn a_missing_table_names_the_command_that_creates_it() {
    let pg = postgres::shared();
    let url = pg.database("nomigrate");
    let store = Store::new(&url, &TlsOptions::default(), false).unwrap();
    let err = open(&store, 1, "worker-1").await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("crawler-operator migrate"), "{text}");

    let bad = Store::new(
        "postgres://u:pw@127.0.0.1:notaport/x",
        &TlsOptions::default(),
        true,
    )
    .expect_err("refused");
    assert!(bad.to_string().contains("--database-url"), "{bad}");
}

/// A host for the retry test: `/` links to `/flaky` (a 500 to its first request, then a page)
/// and `/down` (a 500 every time); robots.txt is a 404.
async fn flaky_site() -> String {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };
    let flaky = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                axum::response::Html(
                    "<html><title>root</title><a href=\"/flaky\">f</a> <a href=\"/down\">d</a></html>",
                )
            }),
        )
        .route(
            "/flaky",
            get(move || {
                let flaky = flaky.clone();
                async move {
                    if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    } else {
                        axum::response::Html("<html><title>flaky</title></html>").into_response()
                    }
                }
            }),
        )
        .route(
            "/down",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A page that needed retries is stored with how many requests it took and the last error that
/// was retried, and `results` (the store's export) gives both out, as JSON and as CSV cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_needed_retries_is_stored_with_its_attempts_and_last_error() {
    use crawler_operator::store::export::{self, Format, Selection, Writer};
    let pg = postgres::shared();
    let url = pg.database("retries");
    let db = postgres::Postgres::db_of(&url).to_owned();
    let store = Store::new(&url, &TlsOptions::default(), true).unwrap();
    let origin = flaky_site().await;

    let mut config = CrawlConfig::new("task", [format!("{origin}/")]);
    config.address_policy = "127.0.0.0/8".parse().unwrap();
    config.max_depth = 1;
    config.rate_limit.requests_per_second = 100.0;
    config.retries.max_retries = 2;
    config.retries.backoff.start = Duration::from_millis(50);
    config.retries.backoff.jitter = 0.0;
    let seeds = config.normalized_seeds().unwrap();
    let (sink, frontier) = PgSink::open(
        store.clone(),
        key(1, "worker-1"),
        &seeds,
        health(),
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
    assert_eq!(outcome.stop, crawl::StopReason::Finished);

    let rows = pg
        .psql(
            &db,
            "SELECT regexp_replace(url, '^http://[^/]+', '') || ' ' || COALESCE(status::text, '-')
                    || ' ' || attempts || ' '
                    || COALESCE(regexp_replace(last_error, 'http://[^/]+', 'ORIGIN'), '-')
               FROM crawl_pages WHERE state = 'visited' ORDER BY url",
        )
        .unwrap();
    println!("STORE retries:\n{rows}");
    assert_eq!(
        rows,
        "/ 200 1 -\n\
         /down 500 3 HTTP 500 from ORIGIN/down\n\
         /flaky 200 2 HTTP 500 from ORIGIN/flaky"
    );

    // Out of the store again, as `crawler-operator results` reads it: JSON lines and CSV cells.
    let client =
        crawler_operator::store::connect(&url, &TlsOptions::default(), Duration::from_secs(5))
            .await
            .unwrap();
    export::prepare_session(&client).await.unwrap();
    let sel = Selection {
        namespace: "ns".into(),
        uid: "uid-1".into(),
        ..Selection::default()
    };
    let mut jsonl = Writer::new(Vec::new(), Format::Jsonl, export::STORE_COLUMNS, None);
    export::from_store(&client, &sel, &mut jsonl).await.unwrap();
    let text = String::from_utf8(jsonl.finish().unwrap()).unwrap();
    let flaky: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["url"].as_str().unwrap().ends_with("/flaky"))
        .unwrap();
    assert_eq!(flaky["attempts"], 2, "{flaky}");
    assert_eq!(
        flaky["last_error"],
        format!("HTTP 500 from {origin}/flaky"),
        "{flaky}"
    );
    let mut csv = Writer::new(Vec::new(), Format::Csv, export::STORE_COLUMNS, None);
    export::from_store(&client, &sel, &mut csv).await.unwrap();
    let text = String::from_utf8(csv.finish().unwrap()).unwrap();
    // The two columns come last (added after the others, so a reader by position keeps working).
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with(",content_hash,attempts,last_error"),
        "{text}"
    );
    let down = lines
        .find(|l| l.starts_with(&format!("{origin}/down,")))
        .unwrap();
    assert!(
        down.ends_with(&format!(",3,HTTP 500 from {origin}/down")),
        "{down}"
    );
}

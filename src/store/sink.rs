//! [`PgSink`]: a crawl task's pages and frontier, written in fenced batches.
//!
//! The sink waits out an unreachable or restarting database (the crawl pauses: the engine
//! awaits the write), reporting why through [`StoreHealth`]; it stops at once on a fencing
//! refusal and on errors a person must fix. A batch that may or may not have committed when
//! the connection broke is written again: every statement in it is idempotent (upserts keyed by
//! URL, the fence upsert), so nothing is lost and nothing is duplicated.
//!
//! Nothing here waits on the database past a stop: opening (the claim) gives up the moment the
//! run is cancelled, a hand-over that would wait behind a blocked batch gives way to the stop,
//! and a sink dropped with a batch still unwritten (the engine gives its final checkpoint a
//! bound) aborts its writer, closing the connection, so no transaction of it stays open past
//! the session's lock and statement timeouts ([`super::LOCK_TIMEOUT`]).

use std::{collections::HashSet, sync::Arc, time::Duration};

use crawler_crawl::{
    Discovered, Frontier, PageRecord, Previous, PreviousFetches, Progress, Sink, SinkError, Stored,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::{
    sync::{OnceCell, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_postgres::{Client, GenericClient};
use tokio_util::sync::CancellationToken;

use super::{Database, StoreError, TlsOptions, describe, is_transient};

/// Pages held before a write even when the checkpoint interval has not passed.
pub const BATCH: usize = 200;
/// Bound on connecting, so an unreachable host is retried rather than waited on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `None` while the store works; `Some(why)` while the task waits for the database.
pub type StoreHealth = watch::Sender<Option<String>>;

/// Which task, and which assignment of it, a sink writes for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskKey {
    pub namespace: String,
    /// `metadata.uid`: a resource deleted and created again under its name is a new task.
    pub uid: String,
    pub name: String,
    pub worker: String,
    /// `status.assignments`: the fencing token.
    pub assignment: i64,
    /// `status.run` (1 when unset): the crawl run this assignment belongs to. A higher run than
    /// the stored one starts from the seeds, with the earlier runs' pages as validators only; a
    /// run changes only with a new assignment, so the fence still decides who writes.
    pub run: i64,
}

/// A database shared by every task of a worker: its connection string and whether the
/// worker applies the migrations (once, before the first task opens).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    migrate: bool,
    migrated: Arc<OnceCell<()>>,
}

/// Why an attempt failed: wait and try again, or give up with a message for a person.
enum Failure {
    Transient(String),
    Fatal(String),
    Fenced(i64),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_transient(&e) {
            Failure::Transient(describe(&e))
        } else {
            Failure::Fatal(describe(&e))
        }
    }
}

impl std::fmt::Debug for Store {
    /// Host and database only: the connection string's password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db)
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Checks the connection string and its TLS settings now, so a bad one fails the worker at
    /// start, naming the setting (and never echoing the password).
    pub fn new(url: &str, tls: &TlsOptions, migrate: bool) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(Database::new(url, tls, CONNECT_TIMEOUT)?),
            migrate,
            migrated: Arc::new(OnceCell::new()),
        })
    }

    /// Connects once (applying the migrations when the worker does): called at worker start so
    /// a wrong database or missing rights show in the log before any task runs. Tasks retry by
    /// themselves; this only reports.
    pub async fn check(&self) -> Result<(), String> {
        match self.connect().await {
            Err(Failure::Transient(why) | Failure::Fatal(why)) => Err(why),
            Ok(_) | Err(Failure::Fenced(_)) => Ok(()),
        }
    }

    async fn connect(&self) -> Result<Client, Failure> {
        // A refused certificate or a server without TLS is a setting to fix: not retried.
        let mut client = self
            .db
            .connect()
            .await
            .map_err(|e| match self.db.tls_failure(&e) {
                Some(why) => Failure::Fatal(why),
                None => Failure::from(e),
            })?;
        if self.migrate {
            self.migrated
                .get_or_try_init(|| async {
                    super::migrate(&mut client)
                        .await
                        .map(drop)
                        .map_err(|e| match e {
                            StoreError::Migration { source, .. } | StoreError::Query(source) => {
                                Failure::from(source)
                            }
                            other => Failure::Fatal(other.to_string()),
                        })
                })
                .await?;
        }
        Ok(client)
    }
}

/// A task's writer to [`Store`]; see the module docs.
///
/// Batches are written by a task of their own, one at a time, while the crawl goes on (at most
/// one batch waits behind the one being written, so memory stays bounded and a slow database
/// slows the crawl down rather than piling up pages). [`Sink::flush`] waits until everything
/// handed over is committed. A batch the store refuses (fenced) or cannot take (an error a
/// person must fix) ends the writer; the next write or flush returns that error.
///
/// Dropping it aborts the writer (see the module docs).
pub struct PgSink {
    pages: Vec<Value>,
    queued: Vec<Value>,
    batches: mpsc::Sender<Batch>,
    writer: Option<JoinHandle<Result<(), SinkError>>>,
    /// The run's cancellation: a hand-over that does not wait for the commit gives way to it.
    cancel: CancellationToken,
}

impl Drop for PgSink {
    /// A batch still being written is given up: the writer's transaction is dropped (a ROLLBACK
    /// is queued) with its connection, instead of living on detached.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

/// What the writer task writes in one transaction, and whom to tell when it is committed.
struct Batch {
    pages: Vec<Value>,
    queued: Vec<Value>,
    committed: Option<oneshot::Sender<()>>,
}

/// The writer task's state: one connection, the fence key, the retry and health reporting.
struct Writer {
    store: Store,
    client: Option<Client>,
    key: TaskKey,
    pages: Vec<Value>,
    queued: Vec<Value>,
    health: StoreHealth,
    cancel: CancellationToken,
}

const FENCE: &str = "
INSERT INTO crawl_tasks AS t (namespace, resource_uid, name, assignment, worker, claimed_at, updated_at, run)
VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp(), $6)
ON CONFLICT (namespace, resource_uid) DO UPDATE
   SET name = EXCLUDED.name, worker = EXCLUDED.worker, assignment = EXCLUDED.assignment,
       run = EXCLUDED.run,
       -- Read here, once the row's lock is held (an older writer's transaction has committed),
       -- not in VALUES, which is evaluated before waiting for it.
       claimed_at = CASE WHEN t.assignment = EXCLUDED.assignment THEN t.claimed_at
                         ELSE clock_timestamp() END,
       updated_at = clock_timestamp()
 WHERE t.assignment <= EXCLUDED.assignment
RETURNING t.assignment";

/// Queues URLs in run $6: new ones as `queued` rows; one an earlier run knows joins this run's
/// frontier (its stored fetch stays, for validators); one this run knows already is left alone.
const QUEUE: &str = "
INSERT INTO crawl_pages AS p (namespace, resource_uid, url, state, depth, worker, assignment,
    stored_at, queued_run)
SELECT $1, $2, r.url, 'queued', r.depth, $3, $4, clock_timestamp(), $6
  FROM jsonb_to_recordset($5::jsonb) AS r(url text, depth integer)
ON CONFLICT (namespace, resource_uid, url) DO UPDATE
   SET queued_run = EXCLUDED.queued_run, depth = EXCLUDED.depth
 WHERE p.queued_run < EXCLUDED.queued_run";

/// Stores visited pages of run $6. An unchanged page (`unchanged`: 304, same body, or a sitemap
/// `lastmod` not newer) keeps what its earlier fetch stored: only the run, the fetch time, the
/// flag, that fetch's attempts and last retried error (and the writer's bookkeeping) change,
/// and validators the server sent anew.
const PAGES: &str = "
INSERT INTO crawl_pages AS p (namespace, resource_uid, url, state, depth, status, final_url, title,
    content_type, bytes, links_count, fetched_at, elapsed_ms, truncated, error, error_kind, fields,
    worker, assignment, stored_at, queued_run, run, etag, last_modified, content_hash, unchanged,
    followed, attempts, last_error)
SELECT $1, $2, r.url, 'visited', r.depth, r.status, r.final_url, r.title, r.content_type, r.bytes,
       r.links_count, r.fetched_at, r.elapsed_ms, r.truncated, r.error, r.error_kind,
       COALESCE(r.fields, '{}'::jsonb), $3, $4, clock_timestamp(), $6, $6, r.etag,
       r.last_modified, r.content_hash, COALESCE(r.unchanged, false), r.followed, r.attempts,
       r.last_error
  FROM jsonb_to_recordset($5::jsonb) AS r(url text, depth integer, status integer,
       final_url text, title text, content_type text, bytes bigint, links_count integer,
       fetched_at timestamptz, elapsed_ms bigint, truncated boolean, error text,
       error_kind text, fields jsonb, etag text, last_modified text, content_hash text,
       unchanged boolean, followed jsonb, attempts integer, last_error text)
ON CONFLICT (namespace, resource_uid, url) DO UPDATE SET
    state = 'visited', fetched_at = EXCLUDED.fetched_at, unchanged = EXCLUDED.unchanged,
    attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
    run = EXCLUDED.run, worker = EXCLUDED.worker, assignment = EXCLUDED.assignment,
    stored_at = EXCLUDED.stored_at,
    depth = CASE WHEN p.queued_run = EXCLUDED.queued_run THEN LEAST(p.depth, EXCLUDED.depth)
                 ELSE EXCLUDED.depth END,
    queued_run = EXCLUDED.queued_run,
    etag = CASE WHEN EXCLUDED.unchanged THEN COALESCE(EXCLUDED.etag, p.etag) ELSE EXCLUDED.etag END,
    last_modified = CASE WHEN EXCLUDED.unchanged THEN COALESCE(EXCLUDED.last_modified, p.last_modified)
                         ELSE EXCLUDED.last_modified END,
    status = CASE WHEN EXCLUDED.unchanged THEN p.status ELSE EXCLUDED.status END,
    final_url = CASE WHEN EXCLUDED.unchanged THEN p.final_url ELSE EXCLUDED.final_url END,
    title = CASE WHEN EXCLUDED.unchanged THEN p.title ELSE EXCLUDED.title END,
    content_type = CASE WHEN EXCLUDED.unchanged THEN p.content_type ELSE EXCLUDED.content_type END,
    bytes = CASE WHEN EXCLUDED.unchanged THEN p.bytes ELSE EXCLUDED.bytes END,
    links_count = CASE WHEN EXCLUDED.unchanged THEN p.links_count ELSE EXCLUDED.links_count END,
    elapsed_ms = CASE WHEN EXCLUDED.unchanged THEN p.elapsed_ms ELSE EXCLUDED.elapsed_ms END,
    truncated = CASE WHEN EXCLUDED.unchanged THEN p.truncated ELSE EXCLUDED.truncated END,
    error = CASE WHEN EXCLUDED.unchanged THEN p.error ELSE EXCLUDED.error END,
    error_kind = CASE WHEN EXCLUDED.unchanged THEN p.error_kind ELSE EXCLUDED.error_kind END,
    fields = CASE WHEN EXCLUDED.unchanged THEN p.fields ELSE EXCLUDED.fields END,
    content_hash = CASE WHEN EXCLUDED.unchanged THEN p.content_hash ELSE EXCLUDED.content_hash END,
    followed = CASE WHEN EXCLUDED.unchanged THEN p.followed ELSE EXCLUDED.followed END";

/// An earlier run's fetch of one URL, for [`PgPrevious`].
const PREVIOUS: &str = "
SELECT etag, last_modified, content_hash, content_type, fetched_at, followed
  FROM crawl_pages
 WHERE namespace = $1 AND resource_uid = $2 AND url = $3 AND state = 'visited' AND run < $4";

impl PgSink {
    /// Claims the task for `key.assignment` (raising its fence: from here on no older
    /// assignment can write), records the seeds as queued, and reads back what to resume from.
    /// Waits out an unreachable database or a lock another session holds (see [`StoreHealth`])
    /// until `cancel` fires, which ends the wait at once, also in the middle of a statement.
    pub async fn open(
        store: Store,
        key: TaskKey,
        seeds: &[String],
        health: StoreHealth,
        cancel: CancellationToken,
    ) -> Result<(Self, Frontier), SinkError> {
        let mut writer = Writer {
            store,
            client: None,
            key,
            pages: Vec::new(),
            queued: seeds
                .iter()
                .map(|u| json!({"url": u, "depth": 0}))
                .collect(),
            health,
            cancel,
        };
        let mut delay = backoff();
        let stop = writer.cancel.clone();
        let frontier = loop {
            let attempt = tokio::select! {
                biased;
                () = stop.cancelled() => None,
                result = writer.try_open() => Some(result),
            };
            let Some(result) = attempt else {
                // The transaction and the connection are dropped with the attempt: the server
                // ends the statement within its lock or statement timeout and rolls back.
                writer.client = None;
                return Err(SinkError::Other(
                    "stopped while claiming the task in the database".to_owned(),
                ));
            };
            if let Some(frontier) = writer.settle(result, &mut delay).await? {
                writer.queued.clear();
                break frontier;
            }
        };
        let (batches, rx) = mpsc::channel(1);
        let sink = Self {
            pages: Vec::new(),
            queued: Vec::new(),
            batches,
            cancel: writer.cancel.clone(),
            writer: Some(tokio::spawn(writer.run(rx))),
        };
        Ok((sink, frontier))
    }

    /// Hands the current batch to the writer; with `wait`, returns once it (and every batch
    /// before it) is committed. Without `wait`, a hand-over that would wait behind a batch being
    /// written gives way to the run's cancellation and keeps its pages (the final flush takes
    /// them). Safe to drop at any await: the pages leave `self` only once the writer has room.
    async fn hand_over(&mut self, wait: bool) -> Result<(), SinkError> {
        let (committed, done) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let handed = {
            let permit = if wait {
                self.batches.reserve().await
            } else {
                tokio::select! {
                    biased;
                    permit = self.batches.reserve() => permit,
                    () = self.cancel.cancelled() => return Ok(()),
                }
            };
            permit.map(|permit| {
                permit.send(Batch {
                    pages: std::mem::take(&mut self.pages),
                    queued: std::mem::take(&mut self.queued),
                    committed,
                });
            })
        };
        if handed.is_err() {
            return Err(self.writer_error().await);
        }
        if let Some(done) = done
            && done.await.is_err()
        {
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    /// Why the writer task ended.
    async fn writer_error(&mut self) -> SinkError {
        match self.writer.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => SinkError::Other("the result store's writer stopped".to_owned()),
                Err(e) => SinkError::Other(format!("the result store's writer failed: {e}")),
            },
            None => SinkError::Other(
                "the result store's writer stopped earlier (the error was reported then)"
                    .to_owned(),
            ),
        }
    }
}

impl Writer {
    async fn run(mut self, mut batches: mpsc::Receiver<Batch>) -> Result<(), SinkError> {
        while let Some(batch) = batches.recv().await {
            if !batch.pages.is_empty() || !batch.queued.is_empty() {
                self.pages = batch.pages;
                self.queued = batch.queued;
                let mut delay = backoff();
                loop {
                    let result = self.try_flush().await;
                    if self.settle(result, &mut delay).await?.is_some() {
                        break;
                    }
                }
            }
            if let Some(committed) = batch.committed {
                let _ = committed.send(());
            }
        }
        Ok(())
    }

    /// `Ok(Some)` on success, `Ok(None)` after waiting out a transient failure.
    async fn settle<T>(
        &mut self,
        result: Result<T, Failure>,
        delay: &mut impl Iterator<Item = Duration>,
    ) -> Result<Option<T>, SinkError> {
        match result {
            Ok(value) => {
                if self.health.borrow().is_some() {
                    tracing::info!(task = %self.key.name, "the database is back; the task goes on");
                    self.health.send_replace(None);
                }
                Ok(Some(value))
            }
            Err(Failure::Fenced(current)) => Err(SinkError::Fenced {
                task: self.key.name.clone(),
                assignment: self.key.assignment,
                current,
            }),
            Err(Failure::Fatal(why)) => Err(SinkError::Other(format!("the database: {why}"))),
            Err(Failure::Transient(why)) => {
                self.client = None;
                let wait = delay.next().unwrap_or(BACKOFF_MAX);
                let message = format!(
                    "waiting for the database (--database-url): {why}; trying again in {}ms, \
                     nothing fetched is lost",
                    wait.as_millis()
                );
                tracing::warn!(task = %self.key.name, "{message}");
                self.health.send_replace(Some(message));
                tokio::select! {
                    () = self.cancel.cancelled() => Err(SinkError::Other(format!(
                        "stopped while waiting for the database: {why}"
                    ))),
                    () = tokio::time::sleep(wait) => Ok(None),
                }
            }
        }
    }

    async fn client(&mut self) -> Result<&mut Client, Failure> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.store.connect().await?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn try_open(&mut self) -> Result<Frontier, Failure> {
        let key = self.key.clone();
        let queued = Value::Array(self.queued.clone());
        let client = self.client().await?;
        let tx = client.transaction().await?;
        fence(&tx, &key).await?;
        write_rows(&tx, QUEUE, &key, &queued).await?;
        // This run's rows: the seen set; those it has not visited yet: the queue. A new run has
        // only its seeds here (queued above); the earlier runs' rows serve as validators.
        let rows = tx
            .query(
                "SELECT url, depth, run IS DISTINCT FROM $3 FROM crawl_pages
                  WHERE namespace = $1 AND resource_uid = $2 AND queued_run = $3",
                &[&key.namespace, &key.uid, &key.run],
            )
            .await?;
        let counts = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE status IS NOT NULL),
                        count(*) FILTER (WHERE error IS NOT NULL),
                        COALESCE(sum(bytes) FILTER (WHERE NOT unchanged), 0)::bigint,
                        count(*) FILTER (WHERE error_kind IS NULL OR error_kind NOT LIKE 'robots%'),
                        count(*) FILTER (WHERE unchanged)
                   FROM crawl_pages
                  WHERE namespace = $1 AND resource_uid = $2 AND state = 'visited' AND run = $3",
                &[&key.namespace, &key.uid, &key.run],
            )
            .await?;
        let earlier = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM crawl_pages
                                 WHERE namespace = $1 AND resource_uid = $2 AND run < $3)",
                &[&key.namespace, &key.uid, &key.run],
            )
            .await?
            .get::<_, bool>(0);
        tx.commit().await?;
        let mut frontier = Frontier::default();
        for row in rows {
            let url: String = row.get(0);
            let depth: i32 = row.get(1);
            if row.get::<_, bool>(2) {
                frontier
                    .queue
                    .push((url.clone(), u32::try_from(depth).unwrap_or(0)));
            }
            frontier.seen.push(url);
        }
        let count = |i: usize| u64::try_from(counts.get::<_, i64>(i)).unwrap_or(0);
        frontier.progress = Progress {
            pages_fetched: count(0),
            errors: count(1),
            bytes: count(2),
            pages_unchanged: count(4),
            ..Progress::default()
        };
        frontier.requested = count(3);
        if earlier {
            frontier.previous = Some(PreviousFetches(Arc::new(PgPrevious {
                store: self.store.clone(),
                key: key.clone(),
                client: tokio::sync::Mutex::new(None),
                down_until: parking_lot::Mutex::new(None),
            })));
        }
        Ok(frontier)
    }

    async fn try_flush(&mut self) -> Result<(), Failure> {
        let key = self.key.clone();
        // The engine visits each URL once per run; keep the last record of a URL regardless,
        // since one statement may not update a row twice.
        let mut urls = HashSet::new();
        let pages: Vec<&Value> = self
            .pages
            .iter()
            .rev()
            .filter(|p| urls.insert(p["url"].as_str().unwrap_or_default().to_owned()))
            .collect();
        let pages = json!(pages);
        let queued = Value::Array(self.queued.clone());
        let client = self.client().await?;
        let tx = client.transaction().await?;
        fence(&tx, &key).await?;
        if queued.as_array().is_some_and(|q| !q.is_empty()) {
            write_rows(&tx, QUEUE, &key, &queued).await?;
        }
        if pages.as_array().is_some_and(|p| !p.is_empty()) {
            write_rows(&tx, PAGES, &key, &pages).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Raises the task's fence to this assignment, or finds it higher: then the write is refused.
async fn fence(tx: &impl GenericClient, key: &TaskKey) -> Result<(), Failure> {
    let claimed = tx
        .query_opt(
            FENCE,
            &[
                &key.namespace,
                &key.uid,
                &key.name,
                &key.assignment,
                &key.worker,
                &key.run,
            ],
        )
        .await?;
    if claimed.is_some() {
        return Ok(());
    }
    let current: i64 = tx
        .query_one(
            "SELECT assignment FROM crawl_tasks WHERE namespace = $1 AND resource_uid = $2",
            &[&key.namespace, &key.uid],
        )
        .await?
        .get(0);
    Err(Failure::Fenced(current))
}

/// Runs [`QUEUE`] or [`PAGES`]: both take the task's key, assignment and run and one JSON
/// array of rows, so each batch statement is called the same way.
async fn write_rows(
    tx: &impl GenericClient,
    statement: &str,
    key: &TaskKey,
    rows: &Value,
) -> Result<(), Failure> {
    tx.execute(
        statement,
        &[
            &key.namespace,
            &key.uid,
            &key.worker,
            &key.assignment,
            rows,
            &key.run,
        ],
    )
    .await?;
    Ok(())
}

/// A record as the `jsonb_to_recordset` of [`PAGES`] reads it. `fields` is the record's
/// extracted-fields object when the record has one, else an empty object.
fn page_row(record: &PageRecord) -> Value {
    let fields = serde_json::to_value(record)
        .ok()
        .and_then(|mut v| v.get_mut("fields").map(Value::take))
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({
        "url": record.url,
        "depth": record.depth,
        "status": record.status,
        "final_url": record.final_url,
        "title": record.title,
        "content_type": record.content_type,
        "bytes": record.bytes,
        "links_count": record.links_count,
        "fetched_at": record.fetched_at.to_string(),
        "elapsed_ms": record.elapsed_ms,
        "truncated": record.truncated,
        "error": record.error,
        "error_kind": record.error_kind,
        "fields": fields,
        "etag": record.etag,
        "last_modified": record.last_modified,
        "content_hash": record.content_hash,
        "unchanged": record.unchanged,
        "followed": record.followed,
        "attempts": record.attempts,
        "last_error": record.last_error,
    })
}

/// The earlier runs' fetches of a task, looked up per URL on a connection of their own
/// (queries from concurrent visits are pipelined on it). A failed lookup is not an error: the
/// page is fetched in full, and lookups pause for [`LOOKUP_PAUSE`] so a database that is away
/// is not asked once per page (the writer reports and waits it out).
struct PgPrevious {
    store: Store,
    key: TaskKey,
    client: tokio::sync::Mutex<Option<(Arc<Client>, tokio_postgres::Statement)>>,
    down_until: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// How long lookups pause after one failed.
const LOOKUP_PAUSE: Duration = Duration::from_secs(5);

impl PgPrevious {
    async fn client(&self) -> Option<(Arc<Client>, tokio_postgres::Statement)> {
        let mut guard = self.client.lock().await;
        if let Some((client, statement)) = guard.as_ref()
            && !client.is_closed()
        {
            return Some((Arc::clone(client), statement.clone()));
        }
        let client = self.store.connect().await.ok()?;
        let statement = client.prepare(PREVIOUS).await.ok()?;
        let client = Arc::new(client);
        *guard = Some((Arc::clone(&client), statement.clone()));
        Some((client, statement))
    }

    async fn try_lookup(&self, url: &str) -> Result<Option<Stored>, ()> {
        let (client, statement) = self.client().await.ok_or(())?;
        let row = client
            .query_opt(
                &statement,
                &[&self.key.namespace, &self.key.uid, &url, &self.key.run],
            )
            .await
            .map_err(|e| {
                tracing::debug!(task = %self.key.name, error = %describe(&e), "validator lookup failed");
            })?;
        Ok(row.map(|row| Stored {
            etag: row.get(0),
            last_modified: row.get(1),
            content_hash: row.get(2),
            content_type: row.get(3),
            fetched_at: row.get(4),
            followed: row
                .get::<_, Option<Value>>(5)
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
        }))
    }
}

impl Previous for PgPrevious {
    fn lookup<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Option<Stored>> {
        Box::pin(async move {
            if self
                .down_until
                .lock()
                .is_some_and(|until| std::time::Instant::now() < until)
            {
                return None;
            }
            if let Ok(Ok(found)) = tokio::time::timeout(CONNECT_TIMEOUT, self.try_lookup(url)).await
            {
                found
            } else {
                *self.down_until.lock() = Some(std::time::Instant::now() + LOOKUP_PAUSE);
                None
            }
        })
    }
}

impl Sink for PgSink {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        self.write_visit(record, &[]).await
    }

    async fn write_visit(
        &mut self,
        record: &PageRecord,
        discovered: &[Discovered],
    ) -> Result<(), SinkError> {
        self.pages.push(page_row(record));
        self.queued.extend(
            discovered
                .iter()
                .map(|d| json!({"url": d.url, "depth": d.depth})),
        );
        if self.pages.len() >= BATCH {
            self.hand_over(false).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.hand_over(true).await
    }

    fn stores_validators(&self) -> bool {
        true
    }
}

/// The longest wait between two attempts of the writer.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// 100 ms doubling to 5 s: a restarting database (a few seconds) is noticed within a second
/// of coming back, an absent one costs a connection attempt every 5 s.
fn backoff() -> impl Iterator<Item = Duration> + Send {
    crate::retry::doubling(Duration::from_millis(100), BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let ms: Vec<u128> = backoff().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}

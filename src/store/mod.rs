//! The PostgreSQL result store: one table per concern, owned by this project's migrations.
//!
//! ```text
//!  crawl_tasks  one row per task (namespace, resource uid): the highest assignment that has
//!               written (the fence), who holds it, when it was claimed
//!  crawl_pages  one row per (namespace, resource uid, normalised URL): the frontier, the dedup
//!               set and the results at once (state 'queued' until visited, then 'visited'
//!               with the page's fields)
//! ```
//!
//! Every write is a transaction that first raises-or-checks the task's fence row (an upsert
//! that only succeeds while the stored assignment is not higher than the writer's) and then
//! writes pages and newly queued links. The upsert takes the row's lock, so writes of one task
//! are serialised, and a writer whose assignment is lower than the stored one gets no row back:
//! its transaction is rolled back and the task stops ([`crawl::SinkError::Fenced`]). That is a
//! fencing token in Kleppmann's sense, with `status.assignments` as the token: once the new
//! owner has written (its claim at start is a write), nothing of an older owner is ever stored.
//!
//! Resume comes from the same table: the visited rows are the seen set and the progress
//! counts, the queued rows are the queue. [`sink::PgSink`] writes in batches (every
//! `checkpoint_interval`, or every [`sink::BATCH`] pages), so a move re-fetches at most what
//! the last interval fetched.
//!
//! [`Database`] is how both the worker and `crawler-operator migrate` connect, and every session
//! is set up there, in one place: the connection string with its TLS settings ([`tls`]: libpq's
//! `sslmode`, a CA from a file), client TCP keepalives of seconds ([`configure`]), and the
//! server-side timeouts that keep a dead or stuck session from blocking the task's next owner
//! ([`session_settings`]; see the constants below for the values and why).

pub mod export;
pub mod sink;
pub mod tls;

use std::{fmt::Write as _, time::Duration};

use thiserror::Error;
use tokio_postgres::{Client, error::SqlState};

pub use sink::{PgSink, Store, StoreHealth, TaskKey};
pub use tls::{SslMode, TlsOptions};

/// The schema, one entry per version, applied in order, each in its own transaction. Never
/// edit an entry that has shipped: add one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "crawl_tasks and crawl_pages",
        r"
CREATE TABLE crawl_tasks (
    namespace     text        NOT NULL,
    resource_uid  text        NOT NULL,
    name          text        NOT NULL,
    -- The fence: the highest status.assignments that has written for this task.
    assignment    bigint      NOT NULL,
    worker        text        NOT NULL,
    -- When that assignment first wrote (its claim at start).
    claimed_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (namespace, resource_uid)
);
CREATE TABLE crawl_pages (
    namespace     text        NOT NULL,
    resource_uid  text        NOT NULL,
    url           text        NOT NULL,
    -- 'queued': in the frontier, not yet visited; 'visited': the columns below are filled.
    state         text        NOT NULL CHECK (state IN ('queued', 'visited')),
    depth         integer     NOT NULL,
    status        integer,
    final_url     text,
    title         text,
    content_type  text,
    bytes         bigint,
    links_count   integer,
    fetched_at    timestamptz,
    elapsed_ms    bigint,
    truncated     boolean,
    error         text,
    error_kind    text,
    -- Extracted fields (spec.rules); an empty object until a task has rules.
    fields        jsonb       NOT NULL DEFAULT '{}',
    worker        text,
    assignment    bigint,
    stored_at     timestamptz NOT NULL,
    PRIMARY KEY (namespace, resource_uid, url)
);
-- The queue of one task, shallowest first, read on resume.
CREATE INDEX crawl_pages_queued ON crawl_pages (namespace, resource_uid, depth)
    WHERE state = 'queued';
",
    ),
    (
        2,
        "crawl runs and validators for incremental recrawls",
        r"
-- The task's current run (status.run): a higher one starts a new crawl from the seeds.
ALTER TABLE crawl_tasks ADD COLUMN run bigint NOT NULL DEFAULT 1;
-- queued_run: the run whose frontier holds the URL (queued or visited in it): the seen set of
-- run R is its rows with queued_run = R, its queue those not visited in R (run < R or NULL).
-- run: the run that last fetched the page (NULL while never visited).
-- etag, last_modified: the validators of that fetch; content_hash: SHA-256 of its body (hex);
-- unchanged: that fetch found the page as stored (304, same hash, or a sitemap lastmod not
-- newer) and left the other columns as they were; followed: the links the crawl followed from
-- the page (a JSON array), queued again when it is unchanged.
ALTER TABLE crawl_pages
    ADD COLUMN queued_run    bigint  NOT NULL DEFAULT 1,
    ADD COLUMN run           bigint,
    ADD COLUMN etag          text,
    ADD COLUMN last_modified text,
    ADD COLUMN content_hash  text,
    ADD COLUMN unchanged     boolean NOT NULL DEFAULT false,
    ADD COLUMN followed      jsonb;
-- Pages stored before runs were numbered were fetched by run 1.
UPDATE crawl_pages SET run = 1 WHERE state = 'visited';
",
    ),
    (
        3,
        "attempts and the last retried error of a fetch",
        r"
-- attempts: the requests the last fetch made for the URL (1, plus the retries of transient
-- failures; 0 when none was sent, e.g. refused by robots.txt); last_error: the last failure that
-- was retried (a timeout, a reset, 'HTTP 503 from ...'), kept when a retry then succeeded.
-- NULL on pages stored before this migration (not known) and on queued rows.
ALTER TABLE crawl_pages
    ADD COLUMN attempts   integer,
    ADD COLUMN last_error text;
",
    ),
];

/// Errors of the store outside a crawl (migrations, connecting), with the setting involved.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "the database connection string (--database-url / CRAWLER_DATABASE_URL) is not valid: \
         {0}; expected e.g. postgres://user:password@host:5432/dbname"
    )]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("cannot connect to the database named by --database-url / CRAWLER_DATABASE_URL")]
    Connect(#[source] tokio_postgres::Error),
    /// A TLS setting that cannot work (found before connecting).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The TLS handshake failed: the error and what to do.
    #[error("cannot connect to the database named by --database-url / CRAWLER_DATABASE_URL: {0}")]
    TlsConnect(String),
    #[error("migration {version} ({name}) failed")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
}

/// How long a statement waits for a lock before it fails (SQLSTATE 55P03), and the task reports
/// `WaitingForDatabase` and tries again. The only locks a worker waits for are its task's rows,
/// held by one batch transaction of the task's other writer (milliseconds); longer means a
/// session that will not let go (a dead owner's, or anyone's): say so soon.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one statement may run. The longest the worker sends is the resume read of a task's
/// rows (well under a second for 100 000 pages); this only stops one that is stuck.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session may sit idle inside a transaction before the server ends it (and rolls
/// back, freeing its locks). A worker never waits inside a transaction for anything but the
/// database (its batches are built before `BEGIN`), so a transaction idle this long belongs to
/// a worker that died, froze or lost its network between two statements. It is shorter than the
/// time the controller takes to move the task off a dead worker (at least 0.8 D after its death,
/// 8 s at the default heartbeat duration D = 10 s), so the next owner normally finds the lock
/// gone.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive: first probe after this much silence, then every [`KEEPALIVE_INTERVAL`], the
/// connection given up after [`KEEPALIVE_RETRIES`] unanswered probes (11 s in all, instead of the
/// system's two hours). Set on both ends: the worker notices a dead server or path, the server
/// a dead worker.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_RETRIES: u32 = 3;

/// The session settings sent once per connection, right after it is made (a `SET` each, one
/// round trip). Sent rather than put in the startup packet's `options`, which connection
/// poolers such as `PgBouncer` refuse; they override what the role or database sets.
pub fn session_settings() -> String {
    format!(
        "SET lock_timeout = {}; SET statement_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}; SET tcp_keepalives_idle = {}; \
         SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {KEEPALIVE_RETRIES}",
        LOCK_TIMEOUT.as_millis(),
        STATEMENT_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
    )
}

/// Sets what every connection of the worker needs on the parsed connection string: the connect
/// bound, client keepalives (and a TCP user timeout of the same length, for data the server
/// never acknowledges), and an application name for `pg_stat_activity` unless the string names
/// one.
pub fn configure(config: &mut tokio_postgres::Config, connect_timeout: Duration) {
    config.connect_timeout(connect_timeout);
    config.keepalives(true);
    config.keepalives_idle(KEEPALIVE_IDLE);
    config.keepalives_interval(KEEPALIVE_INTERVAL);
    config.keepalives_retries(KEEPALIVE_RETRIES);
    config.tcp_user_timeout(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES);
    if config.get_application_name().is_none() {
        config.application_name("crawler-operator");
    }
}

/// How to reach the database: the connection string, parsed, and its TLS settings. Built (and
/// so checked) once, at start; every connection of the process is made from it.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: tls::Tls,
}

impl std::fmt::Debug for Database {
    /// Hosts, database and TLS only: the connection string's password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses `url` (with `sslmode` / `sslrootcert`, merged with `tls`) and reads the CA file:
    /// a wrong setting fails here, naming it (and never echoing the password). Each connection
    /// attempt is bounded by `timeout`, so an unreachable host fails rather than hangs.
    pub fn new(url: &str, tls: &TlsOptions, timeout: Duration) -> Result<Self, StoreError> {
        let (tls, rest) = tls::Tls::from_connection_string(url, tls)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(StoreError::BadUrl)?;
        tls.configure(&mut config);
        configure(&mut config, timeout);
        Ok(Self { config, tls })
    }

    /// The TLS settings in effect.
    pub fn tls(&self) -> &tls::Tls {
        &self.tls
    }

    /// Opens a session: connects (with TLS as configured), drives the connection on its own
    /// task, and applies [`session_settings`]. Every connection of the process is made here.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.connector()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        client.batch_execute(&session_settings()).await?;
        Ok(client)
    }

    /// A failed [`Database::connect`] for a person: the error, and when TLS is why, what to do
    /// (`Some` then: a setting to fix, not worth retrying).
    pub fn tls_failure(&self, e: &tokio_postgres::Error) -> Option<String> {
        self.tls
            .hint(e)
            .map(|hint| format!("{}; {hint}", describe(e)))
    }
}

/// Connects once (`crawler-operator migrate`): [`Database::new`] then [`Database::connect`].
pub async fn connect(url: &str, tls: &TlsOptions, timeout: Duration) -> Result<Client, StoreError> {
    let db = Database::new(url, tls, timeout)?;
    db.connect().await.map_err(|e| match db.tls_failure(&e) {
        Some(why) => StoreError::TlsConnect(why),
        None => StoreError::Connect(e),
    })
}

/// Applies the migrations not yet applied; returns the versions it applied. Safe to run from
/// many workers at once: a transaction-scoped advisory lock serialises them.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS crawler_schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .or_else(|e| {
            // Two first migrations racing on CREATE TABLE IF NOT EXISTS: the loser sees a
            // unique violation on the catalog; the table exists either way.
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // A migration may wait for another's lock and run long (a backfill): neither bound of
        // the session applies to it. A stuck migration is ended by a stop of whoever waits on it.
        tx.batch_execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
            .await?;
        // 0x6372_6177 = "craw": one lock for every crawler-operator migration.
        tx.execute("SELECT pg_advisory_xact_lock(1668440439)", &[])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM crawler_schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let migration = |source| StoreError::Migration {
            version,
            name,
            source,
        };
        tx.batch_execute(sql).await.map_err(migration)?;
        tx.execute(
            "INSERT INTO crawler_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(migration)?;
        tx.commit().await.map_err(migration)?;
        tracing::info!(version, name, "applied database migration");
        applied.push(version);
    }
    Ok(applied)
}

/// Whether an error is worth waiting out (the server is unreachable, restarting, or the
/// connection broke), as opposed to one a person must fix (a missing table, bad credentials).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O, closed connection, timeout
        Some(code) => {
            let class = &code.code()[..2];
            class == "08" // connection exception
                || class == "57" // operator intervention: admin shutdown, cannot connect now
                || class == "53" // insufficient resources: too many connections, disk full
                // lock_timeout: another session holds a row this write needs
                || *code == SqlState::LOCK_NOT_AVAILABLE
                // the server ended a session left idle inside a transaction
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

/// One line for a person: the error and its database detail, with what to do for the errors a
/// user causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    if let Some(db) = e.as_db_error() {
        let _ = write!(out, ": {}", db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(out, " ({detail})");
        }
    } else if let Some(source) = std::error::Error::source(e) {
        let _ = write!(out, ": {source}");
    }
    match e.code() {
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
            out.push_str(
                "; the schema is missing or old: run `crawler-operator migrate` against this \
                 database (or start the worker with --migrate=true)",
            );
        }
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            out.push_str(
                "; check the user and password in the Secret named by the chart's \
                 store.postgres.secretName (key url)",
            );
        }
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => {
            let _ = write!(
                out,
                "; another session holds this task's rows locked, most likely a previous owner \
                 whose transaction has not ended (the server ends one left idle by a dead worker \
                 after {IDLE_IN_TRANSACTION_TIMEOUT:?}; pg_stat_activity and pg_locks show who \
                 holds it)"
            );
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            out.push_str("; create the database, or fix its name in the connection string");
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, (version, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i32::try_from(i).unwrap() + 1);
        }
    }

    #[test]
    fn the_session_settings_are_the_documented_bounds() {
        assert_eq!(
            session_settings(),
            "SET lock_timeout = 2000; SET statement_timeout = 30000; \
             SET idle_in_transaction_session_timeout = 5000; SET tcp_keepalives_idle = 5; \
             SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
        );
        // A lock wait is reported well before the server ends a dead owner's session, and a
        // statement is never cut before a lock wait is.
        assert!(LOCK_TIMEOUT < IDLE_IN_TRANSACTION_TIMEOUT);
        assert!(LOCK_TIMEOUT < STATEMENT_TIMEOUT);
    }

    #[tokio::test]
    async fn a_bad_connection_string_names_the_setting_and_not_the_password() {
        let err = connect(
            "postgres://u:secret@host:notaport/db",
            &TlsOptions::default(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--database-url"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

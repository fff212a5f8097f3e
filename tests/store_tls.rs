//! TLS to the result store against a real PostgreSQL with `ssl=on` (tests/support/postgres.rs;
//! its certificate made by the test, signed by a CA of the test's): what each `sslmode` does, what
//! it checks, and the messages a wrong setting gets. The connection code is the one the worker
//! (`Store`) and `crawler-operator migrate` use; the last test runs the real binary.

use crate::support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crawler_crawl::{PageRecord, Sink};
use crawler_operator::store::{self, SslMode, Store, TaskKey, TlsOptions};
use support::postgres::{self, Postgres};

const TIMEOUT: Duration = Duration::from_secs(10);

fn tls_server() -> (&'static Postgres, &'static Path) {
    let pg = postgres::shared_tls();
    (pg, pg.ca_file.as_deref().expect("the TLS server's CA"))
}

/// `url` (from [`Postgres::database`], no query yet) with `query` appended.
fn with(url: &str, query: &str) -> String {
    if query.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{query}")
    }
}

/// An error and its causes on one line, as the binary logs it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

async fn connect(url: &str, options: &TlsOptions) -> Result<tokio_postgres::Client, String> {
    store::connect(url, options, TIMEOUT)
        .await
        .map_err(|e| chain(&e))
}

/// Whether the server sees this connection as encrypted.
async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn ca(path: &Path) -> TlsOptions {
    TlsOptions {
        sslmode: None,
        ca_file: Some(path.to_owned()),
    }
}

#[tokio::test]
async fn every_sslmode_connects_to_a_server_with_ssl_on_and_only_disable_is_unencrypted() {
    let (pg, ca_file) = tls_server();
    let url = pg.database("tls_modes");
    let ca_path = ca_file.display().to_string();
    let key_values = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslmode=verify-full sslrootcert='{ca_path}'",
        pg.port,
        Postgres::db_of(&url)
    );
    let cases: Vec<(&str, String, TlsOptions, bool)> = vec![
        // disable against ssl=on: the server accepts plain TCP too, so it connects, unencrypted.
        (
            "disable",
            with(&url, "sslmode=disable"),
            TlsOptions::default(),
            false,
        ),
        (
            "no sslmode (prefer)",
            url.clone(),
            TlsOptions::default(),
            true,
        ),
        (
            "prefer",
            with(&url, "sslmode=prefer"),
            TlsOptions::default(),
            true,
        ),
        // require without a CA: encrypted, the certificate not checked.
        (
            "require",
            with(&url, "sslmode=require"),
            TlsOptions::default(),
            true,
        ),
        (
            "verify-ca, sslrootcert",
            with(&url, &format!("sslmode=verify-ca&sslrootcert={ca_path}")),
            TlsOptions::default(),
            true,
        ),
        (
            "verify-full, sslrootcert",
            with(&url, &format!("sslmode=verify-full&sslrootcert={ca_path}")),
            TlsOptions::default(),
            true,
        ),
        (
            "verify-full, the flags",
            url.clone(),
            TlsOptions {
                sslmode: Some(SslMode::VerifyFull),
                ca_file: Some(ca_file.to_owned()),
            },
            true,
        ),
        (
            "verify-full, key-value string",
            key_values,
            TlsOptions::default(),
            true,
        ),
    ];
    for (what, conn, options, want_tls) in cases {
        let started = Instant::now();
        let client = connect(&conn, &options)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let elapsed = started.elapsed();
        assert_eq!(encrypted(&client).await, want_tls, "{what}");
        eprintln!("{what}: connected in {elapsed:.1?}, encrypted {want_tls}");
    }
}

#[tokio::test]
async fn verify_ca_checks_the_chain_only_and_verify_full_the_host_name_too() {
    let (pg, ca_file) = tls_server();
    let options = ca(ca_file);
    // The certificate names localhost and 127.0.0.1; db.invalid is another name for the same
    // server (hostaddr says where to connect, host is the name TLS checks).
    let other_name = |mode: &str| {
        format!(
            "postgres://postgres@db.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}",
            pg.port
        )
    };
    let client = connect(&other_name("verify-ca"), &options)
        .await
        .expect("verify-ca does not check the host name");
    assert!(encrypted(&client).await);

    let err = connect(&other_name("verify-full"), &options)
        .await
        .expect_err("verify-full refuses a host the certificate does not name");
    for part in [
        "does not name the host",
        "sslmode=verify-full",
        "sslmode=verify-ca",
        "db.invalid",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    eprintln!("verify-full, host not in the certificate: {err}");

    let named = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
        pg.port
    );
    let client = connect(&named, &options)
        .await
        .expect("verify-full accepts a name the certificate lists");
    assert!(encrypted(&client).await);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_message_naming_the_setting_and_fails_the_start_at_once() {
    let (pg, _) = tls_server();
    let dir = tempfile::tempdir().unwrap();
    let wrong = support::certs::unrelated_ca(dir.path(), "some-other-ca");
    let url = pg.database("tls_wrong_ca");
    // require with a CA checks the chain, as libpq's does.
    for mode in ["verify-ca", "verify-full", "require"] {
        let err = connect(&with(&url, &format!("sslmode={mode}")), &ca(&wrong))
            .await
            .expect_err("a certificate from another CA is refused");
        for part in [
            "not issued by the CA",
            &wrong.display().to_string(),
            &format!("sslmode={mode}"),
            "sslrootcert",
            "--database-ca-file",
            "give the CA that issued the server's certificate",
        ] {
            assert!(err.contains(part), "{mode}: {part:?} missing from: {err}");
        }
        assert!(!err.contains("password"), "{err}");
        if mode == "verify-ca" {
            eprintln!("wrong CA: {err}");
        }
    }

    // The worker's store: reported at start, and a task fails at once instead of waiting for a
    // certificate to change.
    let store = Store::new(
        &with(
            &url,
            &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
        ),
        &TlsOptions::default(),
        true,
    )
    .unwrap();
    let why = store.check().await.expect_err("refused");
    assert!(why.contains("sslrootcert"), "{why}");
    let started = Instant::now();
    let opened = tokio::time::timeout(Duration::from_secs(30), postgres::open_sink(&store, key()))
        .await
        .expect("a refused certificate is not retried");
    let err = opened.err().expect("refused").to_string();
    assert!(err.contains("not issued by the CA"), "{err}");
    eprintln!("the task failed {:.1?} after it opened", started.elapsed());
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused_and_prefer_falls_back_to_plain() {
    let plain = postgres::shared();
    let url = plain.database("tls_plain");
    let err = connect(&with(&url, "sslmode=require"), &TlsOptions::default())
        .await
        .expect_err("no TLS, refused");
    for part in [
        "does not accept TLS",
        "sslmode=require",
        "ssl = on",
        "sslmode=prefer or disable",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    eprintln!("require against plain TCP: {err}");

    let client = connect(&with(&url, "sslmode=prefer"), &TlsOptions::default())
        .await
        .expect("prefer takes what the server offers");
    assert!(!encrypted(&client).await);
}

fn key() -> TaskKey {
    TaskKey {
        namespace: "ns".into(),
        uid: "uid-tls".into(),
        name: "task".into(),
        worker: "worker-1".into(),
        assignment: 1,
        run: 1,
    }
}

#[tokio::test]
async fn the_result_store_writes_over_verify_full() {
    let (pg, ca_file) = tls_server();
    let url = pg.database("tls_store");
    let db = Postgres::db_of(&url).to_owned();
    let store = Store::new(&with(&url, "sslmode=verify-full"), &ca(ca_file), true).unwrap();
    let (mut sink, _) = postgres::open_sink(&store, key()).await.unwrap();
    sink.write(&PageRecord {
        task: "task".into(),
        url: "http://a.example/".into(),
        final_url: "http://a.example/".into(),
        status: Some(200),
        fetched_at: jiff::Timestamp::now(),
        ..PageRecord::default()
    })
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM crawl_pages WHERE state = 'visited'"
        )
        .unwrap(),
        "1"
    );
    // The sink's own connection, as the server sees it.
    let sink_connections = pg
        .psql(
            &db,
            &format!(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a
                   JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = '{db}' AND a.application_name = 'crawler-operator'"
            ),
        )
        .unwrap();
    let (tls, all) = sink_connections.split_once('|').unwrap();
    assert!(all != "0" && tls == all, "TLS|all: {sink_connections}");
}

#[tokio::test]
async fn crawler_operator_migrate_connects_with_verify_full_and_refuses_a_wrong_ca() {
    let (pg, ca_file) = tls_server();
    let url = with(&pg.database("tls_migrate"), "sslmode=verify-full");
    let migrate = |ca: &Path| {
        Command::new(env!("CARGO_BIN_EXE_crawler-operator"))
            .args(["migrate", "--database-ca-file"])
            .arg(ca)
            .env("CRAWLER_DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let out = migrate(ca_file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Every migration there is, in order: a fresh database gets them all.
    let all: Vec<_> = crawler_operator::store::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .collect();
    assert!(
        out.status.success() && stdout.contains(&format!("applied migrations {all:?}")),
        "{out:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let wrong = support::certs::unrelated_ca(dir.path(), "some-other-ca");
    let out = migrate(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A setting to fix: the configuration exit status (2), the setting named.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sslrootcert") && stderr.contains("not issued by the CA"),
        "{stderr}"
    );
}

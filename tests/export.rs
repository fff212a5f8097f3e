//! `crawler-operator results`: the real binary reads a crawl's records out of a real PostgreSQL
//! (the resource's name resolved through the real kube-apiserver) and out of a file a real
//! worker process wrote. CSV is judged by Python's `csv` module, an independent RFC 4180 reader.

use crate::support;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Output, Stdio},
};

use kube::ResourceExt;
use serde_json::{Value, json};
use support::{
    postgres::{self, Postgres},
    site::{SHELF_PAGES, SHELF_PER_PAGE},
    story::{Story, phase, worker_1_running},
};

const BINARY: &str = env!("CARGO_BIN_EXE_crawler-operator");

/// A migrated, empty result store; returns its connection string and database name.
fn store(prefix: &str) -> (String, String) {
    let pg = postgres::shared();
    let url = pg.database(prefix);
    let db = Postgres::db_of(&url).to_owned();
    let out = Command::new(BINARY)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {out:?}");
    (url, db)
}

fn sql(db: &str, query: &str) -> String {
    postgres::shared()
        .psql(db, query)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// `results` with `args`, the test cluster's kubeconfig and nothing else from this process's
/// environment.
fn results(story: &Story, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("results")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", story.cp.kubeconfig_path())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// CSV text parsed by Python's csv module: the rows, as JSON.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.reader(sys.stdin, strict=True))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Page rows of task (`ns`, `uid`): `n` visited pages of assignment `assignment`, urls
/// `http://a.example/<prefix>/<i>`; every third has fields; titles hold commas, quotes and a
/// line break.
fn insert_pages(db: &str, ns: &str, uid: &str, prefix: &str, n: u32, assignment: i64) {
    sql(
        db,
        &format!(
            "INSERT INTO crawl_pages (namespace, resource_uid, url, state, depth, status, final_url,
               title, content_type, bytes, links_count, fetched_at, elapsed_ms, truncated, fields,
               worker, assignment, stored_at, run)
             SELECT '{ns}', '{uid}', 'http://a.example/{prefix}/' || i, 'visited', 1, 200,
               'http://a.example/{prefix}/' || i, 'Page ' || i || ', \"quoted\"' || chr(10) || 'end',
               'text/html', 1000 + i, 2, '2026-12-06T09:00:00Z'::timestamptz + i * interval '1 ms',
               5, false,
               CASE WHEN i % 3 = 0 THEN jsonb_build_object('author', 'Ann ' || i,
                    'tags', jsonb_build_array('a', 'b,c')) ELSE '{{}}' END,
               'worker-1', {assignment}, now(), {assignment}
               FROM generate_series(1, {n}) AS i"
        ),
    );
}

/// A story with resource `shelf` and a store holding 40 of its pages (30 of assignment 1, 10 of
/// assignment 2), another task's pages and a queued row; returns the story, its namespace, the
/// resource's uid, the `--database-url` flag and the database name.
async fn shelf_in_the_store(prefix: &str) -> (Story, String, String, String, String) {
    let story = Story::new(prefix).await;
    let ns = story.ns().to_owned();
    story
        .apply_resource("shelf", json!({ "seeds": ["http://a.example/"] }))
        .await;
    let uid = story.api().get("shelf").await.unwrap().uid().unwrap();
    let (url, db) = store(&prefix.replace('-', "_"));
    insert_pages(&db, &ns, &uid, "one", 30, 1);
    insert_pages(&db, &ns, &uid, "two", 10, 2);
    sql(
        &db,
        &format!(
            "INSERT INTO crawl_tasks VALUES ('{ns}', '{uid}', 'shelf', 2, 'worker-1', now(), now())"
        ),
    );
    // One page needed retries: how many requests it took and the last error retried.
    sql(
        &db,
        "UPDATE crawl_pages SET attempts = 3, last_error = 'HTTP 503 from http://a.example/one/3'
          WHERE url = 'http://a.example/one/3'",
    );
    // Not this resource's: another uid in the namespace, and a queued (unvisited) row.
    insert_pages(&db, &ns, "another-uid", "other", 5, 1);
    sql(
        &db,
        &format!(
            "INSERT INTO crawl_pages (namespace, resource_uid, url, state, depth, stored_at)
             VALUES ('{ns}', '{uid}', 'http://a.example/queued', 'queued', 2, now())"
        ),
    );
    (story, ns, uid, format!("--database-url={url}"), db)
}

/// `attempts` and `last_error` of the page that needed retries (JSON text).
const RETRIED: &str = "3 \"HTTP 503 from http://a.example/one/3\"";

fn retried(record: &Value) -> String {
    format!("{} {}", record["attempts"], record["last_error"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_streams_a_resources_pages_from_the_store_as_jsonl_and_csv() {
    let (story, ns, _uid, db_flag, _db) = shelf_in_the_store("results-cli").await;

    // JSON lines: every visited page, one object each, ordered by URL.
    let out = results(&story, &["shelf", "-n", &ns, &db_flag]);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40, "{}", stderr(&out));
    let urls: Vec<&str> = lines.iter().map(|l| l["url"].as_str().unwrap()).collect();
    let mut sorted = urls.clone();
    sorted.sort_unstable();
    assert_eq!(urls, sorted);
    assert!(
        urls.iter()
            .all(|u| !u.contains("other") && !u.ends_with("queued"))
    );
    let page = lines
        .iter()
        .find(|l| l["url"] == "http://a.example/one/3")
        .unwrap();
    assert_eq!(page["title"], "Page 3, \"quoted\"\nend");
    assert_eq!(page["status"], 200);
    assert_eq!(
        page["fields"],
        json!({"author": "Ann 3", "tags": ["a", "b,c"]})
    );
    assert_eq!(page["fetched_at"], "2026-12-06T09:00:00.003+00:00");
    assert_eq!(page["assignment"], 1);
    assert_eq!(retried(page), RETRIED);

    // CSV: a header and one row per page, read back by an RFC 4180 reader.
    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--format=csv"]);
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows.len(), 41);
    assert_eq!(
        rows[0].join(","),
        "url,final_url,status,title,content_type,bytes,links_count,depth,fetched_at,elapsed_ms,\
         truncated,error,error_kind,fields,worker,assignment,run,unchanged,etag,last_modified,\
         content_hash,attempts,last_error"
    );
    let row = rows
        .iter()
        .find(|r| r[0] == "http://a.example/one/3")
        .unwrap();
    assert_eq!(row[3], "Page 3, \"quoted\"\nend");
    assert_eq!(row[11], "", "a null error is an empty cell");
    assert_eq!(format!("{} \"{}\"", row[21], row[22]), RETRIED);
    assert_eq!(
        serde_json::from_str::<Value>(&row[13]).unwrap(),
        json!({"author": "Ann 3", "tags": ["a", "b,c"]})
    );

    // --run N: the pages last fetched by run N (here run N was assignment N); --assignment N:
    // the pages last stored by assignment N.
    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--run=2"]);
    let run: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(run.len(), 10);
    assert!(run.iter().all(|l| l["run"] == 2), "{run:?}");
    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--assignment=1"]);
    let assigned: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(assigned.len(), 30);
    assert!(
        assigned.iter().all(|l| l["assignment"] == 1),
        "{assigned:?}"
    );

    // --fields-only: the fields object per line; in CSV a column per field name.
    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--fields-only"]);
    let fields: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        fields.len(),
        10 + 3,
        "every third page of each run has fields"
    );
    assert!(
        fields
            .iter()
            .all(|f| f["author"].is_string() && f.get("url").is_none())
    );
    let out = results(
        &story,
        &[
            "shelf",
            "-n",
            &ns,
            &db_flag,
            "--fields-only",
            "--format=csv",
        ],
    );
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows[0], ["author", "tags"]);
    assert_eq!(rows.len(), 14);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[0].starts_with("Ann ") && r[1] == "[\"a\",\"b,c\"]")
    );
}

/// Mistakes a user can make: each says what was wrong, with its exit status; a deleted
/// resource's pages are found under its uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_says_what_is_missing_and_reads_a_deleted_resource_by_uid() {
    let (story, ns, uid, db_flag, _db) = shelf_in_the_store("results-err").await;
    // Mistakes a user can make: each says what was wrong, with its exit status.
    let out = results(&story, &["nosuch", "-n", &ns, &db_flag]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains(&format!(
            "no crawlerresource \"nosuch\" in namespace \"{ns}\""
        )),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    let out = results(&story, &["shelf", "-n", &ns]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("--database-url or CRAWLER_DATABASE_URL"),
        "{}",
        stderr(&out)
    );

    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--run=7"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("no pages of crawlerresource")
            && stderr(&out).contains("its latest run in the store is"),
        "{}",
        stderr(&out)
    );

    story
        .apply_resource("never-ran", json!({ "seeds": ["http://a.example/"] }))
        .await;
    let out = results(&story, &["never-ran", "-n", &ns, &db_flag]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("the result store holds no pages of crawlerresource"),
        "{}",
        stderr(&out)
    );

    // A deleted resource: its pages stay under its uid; the error names it, --uid reads them.
    story
        .api()
        .delete("shelf", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    support::wait_for(
        "shelf deleted",
        support::story::BOUND,
        support::story::POLL,
        || async {
            match story.api().get_opt("shelf").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let out = results(&story, &["shelf", "-n", &ns, &db_flag]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains(&format!("uid {uid} (claimed "))
            && stderr(&out).contains("pass --uid"),
        "{}",
        stderr(&out)
    );
    let out = results(&story, &["shelf", "-n", &ns, &db_flag, "--uid", &uid]);
    assert_eq!(stdout(&out).lines().count(), 40);
}

/// `results ... | head -1`: the reader leaves after one line; the command ends quietly, status 0,
/// though the store holds far more rows than a pipe buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_into_a_reader_that_leaves_ends_quietly_with_status_0() {
    let story = Story::new("results-pipe").await;
    let (url, db) = store("results_pipe");
    insert_pages(&db, story.ns(), "uid-pipe", "p", 100_000, 1);
    let mut child = Command::new(BINARY)
        .args(["results", "anything", "-n", story.ns(), "--uid=uid-pipe"])
        .arg(format!("--database-url={url}"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("{\"url\""), "{first}");
    // stdout closed here, as `head` does once it has its line.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stderr(&out), "", "nothing said about the closed pipe");
}

/// The file sink: a real worker process crawls the book shelf (with extraction rules) and a
/// tree beside it into one file; `results --file` reads one task's records out of it, as
/// `kubectl exec` into the worker Pod does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reads_one_tasks_records_from_a_worker_processs_file() {
    let (site, story) = worker_1_running("results-file").await;
    let rules = json!([
        { "name": "list", "match": "/list/[0-9]+$",
          "follow": [{ "selector": "ul.books a.book", "rule": "book" }, { "selector": "a.next" }] },
        { "name": "book", "fields": {
            "title": { "selector": "h1.title" },
            "author": { "selector": ".author a" } } }
    ]);
    story
        .apply_resource(
            "shelf",
            json!({ "seeds": [site.shelf_seed("shelf")], "maxDepth": 5,
                    "rateLimit": { "requestsPerSecond": 50, "burst": 5 }, "rules": rules }),
        )
        .await;
    story
        .apply_resource(
            "tree",
            json!({ "seeds": [site.seed("tree")], "maxDepth": 3,
                    "rateLimit": { "requestsPerSecond": 50, "burst": 5 } }),
        )
        .await;
    for name in ["shelf", "tree"] {
        story
            .wait_for_resource(name, "Succeeded", |r| {
                phase(r) == Some(crawler_operator::crd::Phase::Succeeded)
            })
            .await;
    }
    let file = story.output_of("worker-1");
    let file = file.to_str().unwrap();

    let out = results(&story, &["tree", "--file", file]);
    let tree: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tree.len(), 15, "depth 3 of a binary tree");
    assert!(tree.iter().all(|r| r["task"] == "tree"));

    let books = SHELF_PAGES * SHELF_PER_PAGE;
    let out = results(
        &story,
        &["shelf", "--file", file, "--fields-only", "--format=csv"],
    );
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows[0], ["author", "title"]);
    assert_eq!(
        rows.len() as u64,
        1 + books,
        "a row per book page: {rows:?}"
    );

    let out = results(&story, &["shelf", "--file", file, "--format=csv"]);
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows[0][..3], ["task", "url", "final_url"]);
    assert_eq!(
        rows.len() as u64,
        1 + books + SHELF_PAGES,
        "books and list pages"
    );
    // The request count of each page (no retries on the local site) and the last error retried.
    let width = rows[0].len();
    assert_eq!(rows[0][width - 2..], ["attempts", "last_error"]);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[width - 2] == "1" && r[width - 1].is_empty()),
        "{rows:?}"
    );

    let out = results(&story, &["nosuch", "--file", file]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("holds no records of task \"nosuch\""),
        "{}",
        stderr(&out)
    );
}

/// `results` connects as the worker does: `--database-sslmode=verify-full` with the CA reads
/// the pages (TLS, the server's certificate checked); a CA file that cannot work is a setting
/// to fix (status 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_connects_with_the_workers_tls_flags() {
    let pg = postgres::shared_tls();
    let url = pg.database("results_tls");
    let db = Postgres::db_of(&url).to_owned();
    let ca = pg.ca_file.as_ref().unwrap().to_str().unwrap().to_owned();
    let tls = [
        "--database-sslmode=verify-full",
        &format!("--database-ca-file={ca}"),
    ];
    let out = Command::new(BINARY)
        .args(["migrate", "--database-url", &url])
        .args(tls)
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {out:?}");
    pg.psql(
        &db,
        "INSERT INTO crawl_pages (namespace, resource_uid, url, state, depth, fields, stored_at)
         SELECT 'ns', 'uid-tls', 'http://a.example/' || i, 'visited', 0, '{}', now()
           FROM generate_series(1, 5) AS i",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(BINARY)
            .args([
                "results",
                "x",
                "-n",
                "ns",
                "--uid=uid-tls",
                "--database-url",
                &url,
            ])
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let out = run(&tls);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);

    let out = run(&[
        "--database-sslmode=verify-full",
        "--database-ca-file=/nonexistent/ca.pem",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("/nonexistent/ca.pem"),
        "{}",
        stderr(&out)
    );
}

//! `crawler-operator results`: a crawl's records out, as JSON lines or CSV, in constant memory.
//!
//! ```text
//!  crawl_pages (PostgreSQL) ── one query, rows streamed (query_raw) ──┐
//!  a file sink's JSON lines ── read line by line, kept if task = T ───┼─> Writer ─> stdout
//! ```
//!
//! Every source yields one JSON object per record: the store builds it on the server
//! (`json_build_object`), the file already holds it. [`Writer`] turns it into a line of JSON, a
//! CSV row (RFC 4180), or only its `fields`; for whole CSV rows the store sends text cells
//! instead, so the client parses no JSON. Nothing is collected: a row is written before the
//! next is read, and the database connection's bounded channel (one message) plus TCP flow
//! control hold the server back while stdout is slow. The one pre-pass is for CSV with
//! `--fields-only`: the header needs every field name, read first with `SELECT DISTINCT`.

use std::{
    collections::BTreeSet,
    io::{self, BufRead, Write},
    path::Path,
};

use futures::{StreamExt, pin_mut};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio_postgres::Client;

use super::describe;

/// What a line of output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header, then one row per record (RFC 4180: `,`, CRLF line ends, fields with `,`, `"`,
    /// CR or LF quoted, `"` doubled).
    Csv,
}

/// The columns of a record from the store, in order (CSV header and JSON keys alike).
pub const STORE_COLUMNS: &[&str] = &[
    "url",
    "final_url",
    "status",
    "title",
    "content_type",
    "bytes",
    "links_count",
    "depth",
    "fetched_at",
    "elapsed_ms",
    "truncated",
    "error",
    "error_kind",
    "fields",
    "worker",
    "assignment",
    "run",
    "unchanged",
    "etag",
    "last_modified",
    "content_hash",
    "attempts",
    "last_error",
];

/// The columns of a record from a file sink (the worker's JSON lines, `crawl::PageRecord`).
pub const FILE_COLUMNS: &[&str] = &[
    "task",
    "url",
    "final_url",
    "status",
    "title",
    "content_type",
    "bytes",
    "links_count",
    "links",
    "depth",
    "fetched_at",
    "elapsed_ms",
    "truncated",
    "error",
    "error_kind",
    "rule",
    "fields",
    "missing",
    "incomplete",
    "run",
    "unchanged",
    "attempts",
    "last_error",
];

/// Why an export ended early.
#[derive(Debug, Error)]
pub enum ExportError {
    /// Writing to the output failed. A closed pipe (`| head`) is [`ExportError::is_closed_output`].
    #[error("cannot write the records: {0}")]
    Output(#[source] io::Error),
    #[error("cannot read the records from the database: {}", describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Nothing matched: what was asked for, and where to look instead.
    #[error("{0}")]
    Empty(String),
    /// A line of the file that is not a JSON object (a file that is not a worker's output).
    #[error(
        "{path}, line {line}: not a record of the worker's file sink ({why}); give the file the \
         worker writes (its --output, the chart's worker.output.path)"
    )]
    NotARecord {
        path: String,
        line: u64,
        why: String,
    },
}

impl ExportError {
    /// Nothing matched what was asked for (exit status 1, "not found").
    pub fn is_empty(&self) -> bool {
        matches!(self, ExportError::Empty(_))
    }

    /// The reader went away (`results ... | head`): not a failure, the export just ends.
    pub fn is_closed_output(&self) -> bool {
        matches!(self, ExportError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Writes records in a [`Format`], `--fields-only` or whole. The CSV header goes out with the
/// first row, so an export without rows writes nothing.
pub struct Writer<W: Write> {
    out: W,
    format: Format,
    /// `Some`: only the extracted fields, these columns (for CSV; JSON lines print the object).
    fields_only: Option<Vec<String>>,
    columns: &'static [&'static str],
    header_written: bool,
    rows: u64,
    line: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// `field_columns`: with `--fields-only`, the field names (CSV columns); `None` for whole
    /// records with `columns`.
    pub fn new(
        out: W,
        format: Format,
        columns: &'static [&'static str],
        field_columns: Option<Vec<String>>,
    ) -> Self {
        Self {
            out,
            format,
            fields_only: field_columns,
            columns,
            header_written: false,
            rows: 0,
            line: Vec::with_capacity(4096),
        }
    }

    /// Records written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one record given as the text of a JSON object. With `--fields-only`, a record
    /// whose `fields` is empty or absent is skipped.
    pub fn record(&mut self, json: &str) -> Result<(), RecordError> {
        self.line.clear();
        match (&self.fields_only, self.format) {
            (None, Format::Jsonl) => {
                self.line.extend_from_slice(json.trim_end().as_bytes());
                self.line.push(b'\n');
            }
            (Some(_), Format::Jsonl) => {
                let record = parse(json)?;
                match record.get("fields") {
                    Some(Value::Object(fields)) if !fields.is_empty() => {
                        serde_json::to_writer(&mut self.line, fields)
                            .map_err(|e| RecordError::Bad(e.to_string()))?;
                        self.line.push(b'\n');
                    }
                    _ => return Ok(()),
                }
            }
            (None, Format::Csv) => {
                let record = parse(json)?;
                if !self.header_written {
                    csv_row(&mut self.line, self.columns.iter().copied());
                    self.header_written = true;
                }
                let cells: Vec<String> =
                    self.columns.iter().map(|c| cell(record.get(*c))).collect();
                csv_row(&mut self.line, cells.iter().map(String::as_str));
            }
            (Some(names), Format::Csv) => {
                let record = parse(json)?;
                let Some(Value::Object(fields)) = record.get("fields") else {
                    return Ok(());
                };
                if fields.is_empty() {
                    return Ok(());
                }
                if !self.header_written {
                    csv_row(&mut self.line, names.iter().map(String::as_str));
                    self.header_written = true;
                }
                let cells: Vec<String> = names.iter().map(|n| cell(fields.get(n))).collect();
                csv_row(&mut self.line, cells.iter().map(String::as_str));
            }
        }
        self.rows += 1;
        self.out.write_all(&self.line).map_err(RecordError::Output)
    }

    /// Writes one whole record as CSV cells already in text, in the writer's column order
    /// (what the store sends for CSV: no JSON to parse).
    pub fn cells(&mut self, cells: &[Option<&str>]) -> Result<(), RecordError> {
        self.line.clear();
        if !self.header_written {
            csv_row(&mut self.line, self.columns.iter().copied());
            self.header_written = true;
        }
        csv_row(&mut self.line, cells.iter().map(|c| c.unwrap_or("")));
        self.rows += 1;
        self.out.write_all(&self.line).map_err(RecordError::Output)
    }

    /// Whether records go out as whole CSV rows (then [`Writer::cells`] takes them).
    pub fn wants_cells(&self) -> bool {
        self.format == Format::Csv && self.fields_only.is_none()
    }

    /// Flushes the output and returns it.
    pub fn finish(mut self) -> Result<W, ExportError> {
        self.out.flush().map_err(ExportError::Output)?;
        Ok(self.out)
    }
}

/// Why [`Writer::record`] failed: the output, or a record that is not a JSON object.
#[derive(Debug)]
pub enum RecordError {
    Output(io::Error),
    Bad(String),
}

impl RecordError {
    /// As an [`ExportError`]: the output's, else what `bad` makes of the reason.
    fn into_export(self, bad: impl FnOnce(String) -> ExportError) -> ExportError {
        match self {
            RecordError::Output(e) => ExportError::Output(e),
            RecordError::Bad(why) => bad(why),
        }
    }
}

fn parse(json: &str) -> Result<Map<String, Value>, RecordError> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RecordError::Bad("not a JSON object".to_owned())),
        Err(e) => Err(RecordError::Bad(e.to_string())),
    }
}

/// A CSV cell: a string as it is, nothing for null or absent, anything else as JSON text (a
/// list of values reads `["a","b"]`).
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Appends one CSV row (RFC 4180), CRLF-terminated.
pub fn csv_row<'a>(out: &mut Vec<u8>, cells: impl Iterator<Item = &'a str>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if cell.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            for b in cell.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(cell.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Which stored pages: a task (namespace and resource uid), and optionally one run or one
/// assignment.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub namespace: String,
    pub uid: String,
    /// `--run N`: only the pages last fetched by crawl run N (`status.run`).
    pub run: Option<i64>,
    /// `--assignment N`: only the pages last stored by assignment N (`status.assignments`).
    pub assignment: Option<i64>,
}

/// The record of a stored page, built on the server (keys in [`STORE_COLUMNS`] order). Only
/// visited pages are records; `queued` rows are the frontier. Ordered by URL: the primary key's
/// index gives that order without a sort.
const RECORDS: &str = "
SELECT json_build_object(
         'url', url, 'final_url', final_url, 'status', status, 'title', title,
         'content_type', content_type, 'bytes', bytes, 'links_count', links_count,
         'depth', depth, 'fetched_at', fetched_at, 'elapsed_ms', elapsed_ms,
         'truncated', truncated, 'error', error, 'error_kind', error_kind, 'fields', fields,
         'worker', worker, 'assignment', assignment, 'run', run, 'unchanged', unchanged,
         'etag', etag, 'last_modified', last_modified, 'content_hash', content_hash,
         'attempts', attempts, 'last_error', last_error)::text
  FROM crawl_pages
 WHERE namespace = $1 AND resource_uid = $2 AND state = 'visited'
   AND ($3::bigint IS NULL OR run = $3) AND ($4::bigint IS NULL OR assignment = $4)
 ORDER BY url";

/// [`RECORDS`] as text cells for CSV, in [`STORE_COLUMNS`] order (the server formats every
/// value: the client only quotes).
const CELLS: &str = "
SELECT url, final_url, status::text, title, content_type, bytes::text, links_count::text,
       depth::text, to_json(fetched_at)#>>'{}', elapsed_ms::text, truncated::text, error,
       error_kind, fields::text, worker, assignment::text, run::text, unchanged::text, etag,
       last_modified, content_hash, attempts::text, last_error
  FROM crawl_pages
 WHERE namespace = $1 AND resource_uid = $2 AND state = 'visited'
   AND ($3::bigint IS NULL OR run = $3) AND ($4::bigint IS NULL OR assignment = $4)
 ORDER BY url";

const FIELD_NAMES: &str = "
SELECT DISTINCT k
  FROM crawl_pages, jsonb_object_keys(fields) AS k
 WHERE namespace = $1 AND resource_uid = $2 AND state = 'visited'
   AND ($3::bigint IS NULL OR run = $3) AND ($4::bigint IS NULL OR assignment = $4)
 ORDER BY k";

/// Prepares a session for a long read: no statement timeout (the export runs as long as the
/// reader takes), and timestamps in UTC (`2026-12-06T09:30:00.123+00:00`).
pub async fn prepare_session(client: &Client) -> Result<(), ExportError> {
    client
        .batch_execute("SET statement_timeout = 0; SET TimeZone = 'UTC'")
        .await
        .map_err(ExportError::Query)
}

/// The field names of the selected pages, sorted (CSV's header with `--fields-only`).
pub async fn field_names(client: &Client, sel: &Selection) -> Result<Vec<String>, ExportError> {
    let rows = client
        .query(
            FIELD_NAMES,
            &[&sel.namespace, &sel.uid, &sel.run, &sel.assignment],
        )
        .await
        .map_err(ExportError::Query)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Streams the selected pages into `writer`; returns how many records it wrote.
pub async fn from_store<W: Write>(
    client: &Client,
    sel: &Selection,
    writer: &mut Writer<W>,
) -> Result<u64, ExportError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&sel.namespace, &sel.uid, &sel.run, &sel.assignment];
    let cells = writer.wants_cells();
    let rows = client
        .query_raw(if cells { CELLS } else { RECORDS }, params)
        .await
        .map_err(ExportError::Query)?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(ExportError::Query)?;
        let written = if cells {
            let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
            writer.cells(&values)
        } else {
            writer.record(row.get(0))
        };
        written.map_err(|e| {
            e.into_export(|why| not_a_record(Path::new("the result store"), 0, why))
        })?;
    }
    Ok(writer.rows())
}

/// What [`task_summary`] found about a task in the store.
#[derive(Debug, PartialEq, Eq)]
pub struct TaskSummary {
    pub name: String,
    pub assignment: i64,
    /// The task's current run.
    pub run: i64,
}

/// The task's row in `crawl_tasks`, if the store knows it (to say why an export was empty).
pub async fn task_summary(
    client: &Client,
    namespace: &str,
    uid: &str,
) -> Result<Option<TaskSummary>, ExportError> {
    let row = client
        .query_opt(
            "SELECT name, assignment, run FROM crawl_tasks
              WHERE namespace = $1 AND resource_uid = $2",
            &[&namespace, &uid],
        )
        .await
        .map_err(ExportError::Query)?;
    Ok(row.map(|r| TaskSummary {
        name: r.get(0),
        assignment: r.get(1),
        run: r.get(2),
    }))
}

/// The uids the store holds for tasks named `name` in `namespace` (a deleted resource's pages
/// stay under its uid), newest claim first, with when they were claimed.
pub async fn uids_named(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String)>, ExportError> {
    let rows = client
        .query(
            "SELECT resource_uid, to_json(claimed_at)#>>'{}' FROM crawl_tasks
              WHERE namespace = $1 AND name = $2 ORDER BY claimed_at DESC LIMIT 10",
            &[&namespace, &name],
        )
        .await
        .map_err(ExportError::Query)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The field names of the records of `task` in a file sink's output, sorted (a first pass,
/// for CSV's header with `--fields-only`).
pub fn file_field_names(path: &Path, task: &str) -> Result<Vec<String>, ExportError> {
    let mut names = BTreeSet::new();
    each_line(path, task, |record| {
        if let Ok(map) = parse(record)
            && let Some(Value::Object(fields)) = map.get("fields")
        {
            names.extend(fields.keys().cloned());
        }
        Ok(())
    })?;
    Ok(names.into_iter().collect())
}

/// Streams the records of `task` in a file sink's output into `writer`; returns how many.
pub fn from_file<W: Write>(
    path: &Path,
    task: &str,
    writer: &mut Writer<W>,
) -> Result<u64, ExportError> {
    each_line(path, task, |record| {
        writer
            .record(record)
            .map_err(|e| e.into_export(|why| not_a_record(path, 0, why)))
    })?;
    Ok(writer.rows())
}

fn not_a_record(path: &Path, line: u64, why: String) -> ExportError {
    ExportError::NotARecord {
        path: path.display().to_string(),
        line,
        why,
    }
}

/// Calls `each` with every line of `path` whose `task` is `task`, one line in memory at a time.
fn each_line(
    path: &Path,
    task: &str,
    mut each: impl FnMut(&str) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        task: std::borrow::Cow<'a, str>,
    }
    let file_error = |source| ExportError::File {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(file_error)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.trim_end();
        if text.is_empty() {
            continue;
        }
        // A line cut short by a crash of the writer (the last one) is not a record: skipped.
        if !line.ends_with('\n') {
            return Ok(());
        }
        let head: Head =
            serde_json::from_str(text).map_err(|e| not_a_record(path, number, e.to_string()))?;
        if head.task == task {
            each(text).map_err(|e| match e {
                ExportError::NotARecord { path, why, .. } => ExportError::NotARecord {
                    path,
                    line: number,
                    why,
                },
                other => other,
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(cells: &[&str]) -> String {
        let mut out = Vec::new();
        csv_row(&mut out, cells.iter().copied());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_as_rfc_4180_says() {
        assert_eq!(csv(&["a", "b c", ""]), "a,b c,\r\n");
        assert_eq!(
            csv(&["x,y", "say \"hi\"", "two\nlines", "cr\r"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\r\n"
        );
    }

    #[test]
    fn records_become_lines_rows_or_their_fields() {
        let record = r#"{"url":"http://a/","status":200,"title":"A, \"b\"","fields":{"tags":["x","y"],"author":"Ann"},"error":null}"#;
        let empty = r#"{"url":"http://a/2","status":404,"fields":{}}"#;

        let mut w = Writer::new(Vec::new(), Format::Jsonl, STORE_COLUMNS, None);
        w.record(record).unwrap();
        w.record(empty).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(out, format!("{record}\n{empty}\n"));

        let mut w = Writer::new(Vec::new(), Format::Jsonl, STORE_COLUMNS, Some(Vec::new()));
        w.record(record).unwrap();
        w.record(empty).unwrap();
        assert_eq!(w.rows(), 1);
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(out, "{\"author\":\"Ann\",\"tags\":[\"x\",\"y\"]}\n");

        let mut w = Writer::new(
            Vec::new(),
            Format::Csv,
            &["url", "status", "title", "fields", "error"],
            None,
        );
        w.record(record).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(
            out,
            "url,status,title,fields,error\r\nhttp://a/,200,\"A, \"\"b\"\"\",\"{\"\"author\"\":\"\"Ann\"\",\"\"tags\"\":[\"\"x\"\",\"\"y\"\"]}\",\r\n"
        );

        let names = vec!["author".to_owned(), "price".to_owned(), "tags".to_owned()];
        let mut w = Writer::new(Vec::new(), Format::Csv, STORE_COLUMNS, Some(names));
        w.record(empty).unwrap();
        w.record(record).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(
            out,
            "author,price,tags\r\nAnn,,\"[\"\"x\"\",\"\"y\"\"]\"\r\n"
        );
    }

    #[test]
    fn a_closed_pipe_is_reported_as_such() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Writer::new(Closed, Format::Jsonl, STORE_COLUMNS, None);
        let e = w
            .record("{}")
            .unwrap_err()
            .into_export(|why| not_a_record(Path::new("x"), 1, why));
        assert!(e.is_closed_output(), "{e:?}");
    }
}

//! Where page records go: one JSON object per line, flushed per record, so a
//! killed worker loses at most the page it was writing.

use std::{collections::BTreeMap, future::Future, path::Path};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{error::SinkError, extract::FieldValue};

/// What the crawl learned about one URL. Exactly one record per URL the crawl
/// decided to visit, whether it was fetched, failed or was refused by
/// `robots.txt`. `Default` (empty, at the epoch, nothing extracted) lets a test write
/// only the fields it is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRecord {
    /// The crawl task's name.
    pub task: String,
    /// The URL as queued (normalised).
    pub url: String,
    /// Where the redirects ended; `url` when there were none.
    pub final_url: String,
    /// The last HTTP status seen; `None` when no response arrived.
    pub status: Option<u16>,
    pub title: Option<String>,
    /// `links.len()`.
    pub links_count: usize,
    /// Every `http`/`https` link on the page (normalised, each once), whether
    /// or not the crawl follows it.
    pub links: Vec<String>,
    /// Links from the nearest seed (seeds are 0).
    pub depth: u32,
    /// When the first request for this URL started (RFC 3339, UTC).
    pub fetched_at: jiff::Timestamp,
    /// Time spent in requests for this URL (rate-limit waits excluded).
    pub elapsed_ms: u64,
    pub content_type: Option<String>,
    /// Body bytes read (after decompression).
    pub bytes: u64,
    /// The body was longer than the configured limit and was cut.
    pub truncated: bool,
    /// What went wrong, with the URL and host involved.
    pub error: Option<String>,
    /// A bounded label for `error` (`timeout`, `redirect_loop`, `robots_disallowed`, …).
    pub error_kind: Option<String>,
    /// The extraction rule the page was given (`None`: no rules, or none applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What the rule extracted: a string per field, a list for `multiple` fields. Fields
    /// without a value are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldValue>,
    /// Required fields of the rule that have no value on this page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// `missing` is not empty: the record lacks data its rule requires (the crawl goes on).
    #[serde(default)]
    pub incomplete: bool,
    /// Requests made for the URL itself (1, plus the retries of transient failures); 0 when
    /// none was sent (refused by robots.txt, say). Redirect hops are not counted.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure that was retried (a timeout, a reset, `HTTP 503`), kept even when a
    /// retry then succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The crawl run that produced the record (`status.run` of the resource: 1 for the first
    /// crawl, one more for each new crawl from the seeds).
    #[serde(default)]
    pub run: u64,
    /// The page is as an earlier run stored it, and a store keeps that record rather than
    /// rewriting it: the server answered `304 Not Modified` to the stored validators, the body's
    /// hash equals the stored one, or its sitemap `lastmod` is not newer than the stored fetch
    /// (then no request was made). Only a sink that stores validators ([`Sink::stores_validators`],
    /// the PostgreSQL store) makes this possible.
    #[serde(default)]
    pub unchanged: bool,
    /// The response's `ETag` (of the URL itself: none when it redirected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The response's `Last-Modified` (of the URL itself: none when it redirected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// SHA-256 of the body read, hex (a successful response with a body, for a sink that
    /// stores validators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// The links the crawl follows from this page (within the allowed hosts, rules applied),
    /// each once: what a later run queues again when the page is unchanged. Filled for a sink
    /// that stores validators; not serialised.
    #[serde(skip)]
    pub followed: Vec<String>,
}

/// What a store kept of a URL's last fetch by an earlier run: the validators a conditional
/// request sends, the body's hash, and the links to queue again when the page is unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_hash: Option<String>,
    /// Its `Content-Type` (a sitemap is always fetched in full: it is where URLs are found).
    pub content_type: Option<String>,
    /// When it was fetched (a sitemap `lastmod` not newer than this skips the fetch).
    pub fetched_at: Option<jiff::Timestamp>,
    /// The links the crawl followed from it ([`PageRecord::followed`]).
    pub followed: Vec<String>,
}

/// Where the engine looks up a URL's [`Stored`] fetch: the PostgreSQL store in a run after the
/// first. Looked up per URL when it is visited (one indexed read), so nothing of the earlier
/// runs is held in memory.
pub trait Previous: Send + Sync {
    /// `None`: nothing stored, or the lookup failed (the page is then fetched as a new one).
    fn lookup<'a>(&'a self, url: &'a str) -> futures::future::BoxFuture<'a, Option<Stored>>;
}

/// A link the crawl queued because of a page: the URL (normalised) and its depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub url: String,
    pub depth: u32,
}

/// Receives records as the crawl produces them, in completion order.
///
/// A sink that keeps the crawl's frontier (the PostgreSQL store) also gets, with each record,
/// the links the crawl queued because of it ([`Sink::write_visit`]), and may buffer: the engine
/// calls [`Sink::flush`] at its checkpoint interval and when it stops.
pub trait Sink: Send {
    /// Writes one record durably enough that a crash right after loses nothing
    /// (for the JSON-lines sinks: written and flushed).
    fn write(&mut self, record: &PageRecord) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Writes one record and the links queued because of it; a sink without a frontier writes
    /// the record alone.
    fn write_visit(
        &mut self,
        record: &PageRecord,
        discovered: &[Discovered],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = discovered;
        self.write(record)
    }

    /// Makes everything written so far durable (a buffering sink writes its batch).
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Whether the sink keeps validators for a later run (`etag`, `last_modified`,
    /// `content_hash`, `followed`): only then does the engine compute the hash and the followed
    /// links of each page.
    fn stores_validators(&self) -> bool {
        false
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, record: &PageRecord) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).write(record)
    }

    fn write_visit(
        &mut self,
        record: &PageRecord,
        discovered: &[Discovered],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).write_visit(record, discovered)
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).flush()
    }

    fn stores_validators(&self) -> bool {
        (**self).stores_validators()
    }
}

/// Records as JSON lines on any async writer; see [`JsonLinesSink::stdout`]
/// and [`JsonLinesSink::append_file`].
#[derive(Debug)]
pub struct JsonLinesSink<W> {
    writer: W,
    target: String,
    line: Vec<u8>,
}

impl<W: AsyncWrite + Unpin + Send> JsonLinesSink<W> {
    /// `target` names the destination in error messages.
    pub fn new(writer: W, target: impl Into<String>) -> Self {
        Self {
            writer,
            target: target.into(),
            line: Vec::with_capacity(1024),
        }
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}

impl JsonLinesSink<tokio::io::Stdout> {
    pub fn stdout() -> Self {
        Self::new(tokio::io::stdout(), "stdout")
    }
}

impl JsonLinesSink<tokio::fs::File> {
    /// Opens `path` for appending, creating it if needed; earlier records stay.
    pub async fn append_file(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref();
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| SinkError::Io {
                target: path.display().to_string(),
                source,
            })?;
        Ok(Self::new(file, path.display().to_string()))
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for JsonLinesSink<W> {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(SinkError::Serialize)?;
        self.line.push(b'\n');
        let io = |source| SinkError::Io {
            target: self.target.clone(),
            source,
        };
        // One write_all per line: with O_APPEND, lines from two writers do not interleave.
        self.writer.write_all(&self.line).await.map_err(io)?;
        self.writer.flush().await.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(url: &str) -> PageRecord {
        PageRecord {
            task: "t".into(),
            url: url.into(),
            final_url: url.into(),
            status: Some(200),
            title: Some("Hi \"there\"\n".into()),
            links_count: 1,
            links: vec!["http://e.com/a".into()],
            depth: 0,
            fetched_at: "2025-01-02T03:04:05.678Z".parse().unwrap(),
            elapsed_ms: 12,
            content_type: Some("text/html".into()),
            bytes: 10,
            truncated: false,
            error: None,
            error_kind: None,
            rule: None,
            fields: BTreeMap::new(),
            missing: Vec::new(),
            incomplete: false,
            attempts: 1,
            last_error: None,
            run: 1,
            unchanged: false,
            etag: Some("\"v1\"".into()),
            last_modified: None,
            content_hash: None,
            followed: Vec::new(),
        }
    }

    #[tokio::test]
    async fn one_json_object_per_line() {
        let mut sink = JsonLinesSink::new(Vec::new(), "memory");
        sink.write(&record("http://e.com/")).await.unwrap();
        sink.write(&record("http://e.com/2")).await.unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(value["fetched_at"], "2025-01-02T03:04:05.678Z");
        assert_eq!(value["status"], 200);
        assert_eq!(value["error"], serde_json::Value::Null);
        let back: PageRecord = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back, record("http://e.com/2"));
    }

    #[tokio::test]
    async fn file_sink_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        for url in ["http://e.com/1", "http://e.com/2"] {
            let mut sink = JsonLinesSink::append_file(&path).await.unwrap();
            sink.write(&record(url)).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);

        let err = JsonLinesSink::append_file(dir.path().join("no/such/dir/x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}

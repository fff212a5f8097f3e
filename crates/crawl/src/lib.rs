//! The crawl engine: everything one crawl task does, with no Kubernetes in it.
//!
//! The worker maps a `CrawlerResource` into a [`CrawlConfig`] and calls
//! [`run`] with a [`Sink`] for the records, a `CancellationToken` it cancels
//! when the resource is deleted, suspended or moved, and a progress callback
//! it turns into status updates.
//!
//! - [`config`]: what a task may do, validated before the first request.
//! - [`address`]: which addresses a crawl may connect to (no internal ones unless allowed).
//! - [`client`]: the HTTP/1.1 client: connections the engine owns, each write checked against
//!   the owner's send deadline and stamped for the host's gate.
//! - [`engine`]: the breadth-first loop, rate limit, robots, redirects, cancellation.
//! - [`extract`]: declarative rules: which links to follow, which fields to take.
//! - [`polite`]: the per-host gate (delay, in flight, 429/503 windows) and `robots.txt` cache
//!   a worker's crawls share.
//! - [`html`], [`urls`]: pure parsing and URL rules (unit and property tested).
//! - `robots`: how a `robots.txt` response is read (internal).
//! - [`sink`]: the record and its JSON-lines writers; what a store kept of an earlier run.
//! - [`sitemap`]: sitemap and sitemap-index parsing (pure).
//! - [`error`]: errors with the URL and host involved.

pub mod address;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod extract;
pub mod gate;
pub mod html;
pub mod polite;
pub(crate) mod robots;
pub mod sink;
pub mod sitemap;
pub mod urls;

pub use address::{AddressPolicy, Blocked, Resolver};
pub use config::{CrawlConfig, DEFAULT_USER_AGENT, RateLimit, Retries, SecretHeaders};
pub use engine::{
    CrawlOutcome, Frontier, PreviousFetches, Progress, StopReason, run, run_from, watch_progress,
};
pub use error::{ConfigError, CrawlError, FetchError, SinkError};
pub use extract::{Field, FieldValue, Follow, Rule, RuleProblem, Rules, RulesError};
pub use gate::SendDeadline;
pub use polite::{Backoff, FetchObserver, HostBackoff, HostPolicy, Politeness};
pub use sink::{Discovered, JsonLinesSink, PageRecord, Previous, Sink, Stored};

//! Errors of the crawl engine, each naming the URL, host or setting involved.
//!
//! [`CrawlError`] ends a task; [`FetchError`] ends one page and becomes that
//! page's record, and the crawl goes on.

use std::{fmt::Write as _, time::Duration};

use thiserror::Error;

/// Why a crawl task could not run or had to stop early.
#[derive(Debug, Error)]
pub enum CrawlError {
    #[error("invalid crawl configuration for task {task}")]
    Config {
        task: String,
        #[source]
        source: ConfigError,
    },
    #[error("could not write the record for {url} (task {task})")]
    Sink {
        task: String,
        url: String,
        #[source]
        source: SinkError,
    },
}

impl CrawlError {
    /// A short, bounded label (for metrics and Kubernetes event reasons).
    pub fn category(&self) -> &'static str {
        match self {
            CrawlError::Config { .. } => "InvalidConfig",
            CrawlError::Sink { .. } => "Sink",
        }
    }
}

/// A crawl configuration the engine refuses. Header values are never shown.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("no seeds: give at least one http or https URL")]
    NoSeeds,
    #[error("seed {seed:?} is not a valid URL")]
    InvalidSeed {
        seed: String,
        #[source]
        source: url::ParseError,
    },
    #[error("seed {seed:?} is not an http or https URL with a host")]
    UnsupportedSeed { seed: String },
    #[error("seed {seed} is not on any of the allowed hosts")]
    SeedNotAllowed { seed: String },
    #[error("allowed host {host:?} is not a host or host:port")]
    AllowedHost { host: String },
    #[error(
        "requests per second must be a finite number above 0 giving a period between 1 ns and ~584 years, got {requests_per_second}"
    )]
    RateLimit { requests_per_second: f64 },
    #[error("the rate limit's burst must be at least 1")]
    Burst,
    #[error("the request timeout must be longer than zero")]
    ZeroTimeout,
    #[error("max pages must be at least 1")]
    ZeroMaxPages,
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("the user agent has characters a header cannot carry")]
    UserAgent,
    #[error("header {name:?}: {reason}")]
    Header { name: String, reason: &'static str },
    #[error("invalid extraction rules: {0}")]
    Rules(#[from] crate::extract::RulesError),
}

/// Why one page produced no usable response. Becomes the record's `error`.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("timed out after {timeout:?} fetching {url}")]
    Timeout { url: String, timeout: Duration },
    #[error("could not connect to {host} for {url}")]
    Connect {
        url: String,
        host: String,
        #[source]
        source: crate::client::HttpError,
    },
    #[error("request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: crate::client::HttpError,
    },
    #[error("reading the body of {url} failed")]
    Body {
        url: String,
        #[source]
        source: crate::client::HttpError,
    },
    #[error("redirect loop: {url} redirected to {target}, which this chain already visited")]
    RedirectLoop { url: String, target: String },
    #[error("more than {limit} redirects, starting at {url}")]
    TooManyRedirects { url: String, limit: u32 },
    #[error("{url} redirected to {target}, which is not on the allowed hosts")]
    RedirectOffsite { url: String, target: String },
    #[error("{url} answered {status} with an unusable Location {location:?}")]
    BadRedirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("{url} is disallowed by {robots_url}")]
    RobotsDisallowed { url: String, robots_url: String },
    #[error(
        "{robots_url} could not be fetched ({reason}); host {host} is treated as disallowed, as Google does"
    )]
    RobotsUnavailable {
        url: String,
        host: String,
        robots_url: String,
        reason: String,
    },
    /// The host is (or resolves only to) an internal address the installation does not allow:
    /// nothing was sent. `url` is the request refused: the page, a redirect hop or `robots.txt`.
    #[error("{url} was not fetched")]
    BlockedAddress {
        url: String,
        #[source]
        source: crate::address::Blocked,
    },
}

impl FetchError {
    /// Every value [`FetchError::kind`] returns.
    pub const KINDS: [&'static str; 11] = [
        "timeout",
        "connect",
        "request",
        "body",
        "redirect_loop",
        "too_many_redirects",
        "redirect_offsite",
        "bad_redirect",
        "robots_disallowed",
        "robots_unavailable",
        BLOCKED_ADDRESS,
    ];

    /// A short, bounded label, written to records as `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout { .. } => "timeout",
            FetchError::Connect { .. } => "connect",
            FetchError::Request { .. } => "request",
            FetchError::Body { .. } => "body",
            FetchError::RedirectLoop { .. } => "redirect_loop",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::RedirectOffsite { .. } => "redirect_offsite",
            FetchError::BadRedirect { .. } => "bad_redirect",
            FetchError::RobotsDisallowed { .. } => "robots_disallowed",
            FetchError::RobotsUnavailable { .. } => "robots_unavailable",
            FetchError::BlockedAddress { .. } => BLOCKED_ADDRESS,
        }
    }
}

/// The `error_kind` of a page whose request the address guard refused.
pub const BLOCKED_ADDRESS: &str = "blocked_address";

/// The bounded label for a record's `error_kind` (`other` for anything unknown), for metrics.
pub fn kind_label(kind: &str) -> &'static str {
    FetchError::KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// A record could not be written.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("could not write to {target}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not serialise the record")]
    Serialize(#[source] serde_json::Error),
    /// The store holds a newer assignment of this task: another worker owns it now. The worker
    /// stops the task at once; nothing of this write was kept.
    #[error(
        "refused as stale: the store holds assignment {current} of task {task}, this worker runs \
         assignment {assignment}; the task moved to another worker, so this one stops it"
    )]
    Fenced {
        task: String,
        assignment: i64,
        current: i64,
    },
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    /// Whether the task must stop now because a newer owner holds it (never retried).
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }
}

impl CrawlError {
    /// The sink's error, when the crawl stopped because a record could not be written.
    pub fn sink_error(&self) -> Option<&SinkError> {
        match self {
            CrawlError::Sink { source, .. } => Some(source),
            CrawlError::Config { .. } => None,
        }
    }
}

/// An error and its sources, `: `-separated, for a one-line record field.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // A wrapper may repeat its inner error in its own message.
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn chain_includes_sources() {
        let err = ConfigError::InvalidSeed {
            seed: "x".into(),
            source: url::ParseError::RelativeUrlWithoutBase,
        };
        assert_eq!(
            error_chain(&err),
            "seed \"x\" is not a valid URL: relative URL without a base"
        );
        assert!(err.source().is_some());
    }
}

//! What one crawl task is allowed to do. Plain Rust: the worker maps the
//! `CrawlerResource` spec (and a Secret, for headers) into a [`CrawlConfig`].
//!
//! Validation happens once, in [`CrawlConfig::validate`], which turns the
//! public, loosely typed fields into the engine's own `Validated` form, so a
//! bad spec is refused before a single request is made.

use std::{fmt, num::NonZeroU32, time::Duration};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{
    address::{AddressPolicy, Resolver},
    error::ConfigError,
    extract::{Rule, Rules},
    gate::SendDeadline,
    polite::{Backoff, Politeness},
    urls::{HostFilter, normalize},
};

/// The `User-Agent` sent when the config does not name one.
pub const DEFAULT_USER_AGENT: &str = concat!("crawler-operator/", env!("CARGO_PKG_VERSION"));

/// One crawl task. Build it with [`CrawlConfig::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct CrawlConfig {
    /// The task's name; copied into every record.
    pub task: String,
    /// Where the crawl starts: absolute `http` or `https` URLs.
    pub seeds: Vec<String>,
    /// How many links away from a seed the crawl goes; 0 fetches the seeds only.
    pub max_depth: u32,
    /// Hosts the crawl may visit: `host` (any port) or `host:port`. `None`
    /// means the seeds' hosts (with the seed's port when it names a
    /// non-default one), which keeps a crawl on the sites it was given.
    pub allowed_hosts: Option<Vec<String>>,
    /// Also allow subdomains of the allowed hosts (`a.example.com` for `example.com`).
    pub include_subdomains: bool,
    /// One limit for every request of the task, `robots.txt` included.
    pub rate_limit: RateLimit,
    /// Bound on one request: connecting, the response head and reading the body.
    pub request_timeout: Duration,
    /// Most page requests the task makes (`robots.txt` fetches not counted).
    pub max_pages: u64,
    /// Bodies are read up to this many bytes; the rest is not downloaded.
    pub max_body_bytes: usize,
    /// Redirects followed from one URL before giving up with an error record.
    pub max_redirects: u32,
    /// Page requests in flight at once (the rate limit still applies).
    pub concurrency: usize,
    /// The `User-Agent` header; its product token (before `/`) is the agent
    /// matched against `robots.txt`.
    pub user_agent: String,
    /// Extra request headers (a `Cookie`, say), sent on page requests to the
    /// allowed hosts only. Their values never appear in logs or `Debug`.
    pub headers: SecretHeaders,
    /// Honour `robots.txt`.
    pub respect_robots: bool,
    /// Extraction rules (see [`crate::extract`]). Empty: every link is followed and nothing is
    /// extracted. Otherwise a page's links are followed only through its rule's `follow`
    /// entries or when they match a rule's `url_match`.
    pub rules: Vec<Rule>,
    /// How often a buffering sink is told to write what it holds (for the PostgreSQL store: a
    /// checkpoint of the pages and the frontier). A move re-fetches at most what the last
    /// interval fetched. Zero is taken as 1 s.
    pub checkpoint_interval: Duration,
    /// Internal address ranges (loopback, private, link-local, ...) the crawl may connect to
    /// anyway: the installation's allow-list. None by default: a URL whose host is, or resolves
    /// only to, an internal address gets a `blocked_address` record (see [`crate::address`]).
    pub address_policy: AddressPolicy,
    /// Where host names are resolved: the system's resolver by default (a test gives a fixed
    /// map). The address guard filters whatever it returns.
    pub resolver: Resolver,
    /// The per-host gate and `robots.txt` cache shared by every crawl of the worker (clone one
    /// handle into each config). The default is a handle of this config's own, whose policy
    /// bounds nothing but 429/503 windows (see [`crate::polite::HostPolicy::default`]).
    pub politeness: Politeness,
    /// Transient failures of a page request retried, per URL.
    pub retries: Retries,
    /// Until when requests may be sent (the worker's heartbeat; see [`crate::gate`]). None by
    /// default.
    pub send_deadline: SendDeadline,
    /// The crawl run (`status.run`), copied into every record; 1 for the first crawl.
    pub run: u64,
    /// Back-off windows of the task's hosts that its previous owner reported (a 429/503 with
    /// its `Retry-After`): [`Politeness::hold`] keeps them before the first request, so a task
    /// moved inside a window sends nothing into it. Empty by default.
    pub carried_backoff: Vec<crate::polite::HostBackoff>,
    /// Use sitemaps as a discovery source: the `Sitemap:` lines of the seed hosts'
    /// `robots.txt` are queued with the seeds, and an XML response that is a sitemap or a
    /// sitemap index (a seed, say) queues the URLs it lists, at the sitemap's own depth (0 for a
    /// seed or a `robots.txt` line), within the allowed hosts. With a store of an earlier run, a
    /// URL whose `lastmod` is not newer than its stored fetch is not fetched again.
    pub sitemaps: bool,
}

/// Retries of one URL after a connect error, a timeout, a reset or a 5xx (and 429) answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    /// Requests after the first; 0 turns retries off.
    pub max_retries: u32,
    /// The wait before each retry (the per-host gate may wait longer: a 429/503 window).
    pub backoff: Backoff,
}

impl Default for Retries {
    /// Two retries, after 1 s and 2 s (±10 %), at most 30 s apart.
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff: Backoff {
                start: Duration::from_secs(1),
                factor: 2.0,
                cap: Duration::from_secs(30),
                jitter: 0.1,
            },
        }
    }
}

/// Requests per second across the whole task, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate; finite and greater than zero (0.5 is one request every 2 s).
    pub requests_per_second: f64,
    /// Requests that may go out back to back before the sustained rate applies; at least 1.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: 1.0,
            burst: 1,
        }
    }
}

/// Request headers whose values are secret (they come from a Kubernetes
/// Secret). `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretHeaders(Vec<(String, String)>);

impl SecretHeaders {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header; a name given twice is sent twice.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header names, for diagnostics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }
}

impl fmt::Debug for SecretHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name, "<redacted>")))
            .finish()
    }
}

impl CrawlConfig {
    /// A config with polite defaults: depth 2, 1 request/s, 30 s timeout,
    /// 10,000 pages, 5 MiB bodies, 10 redirects, 2 requests in flight,
    /// `robots.txt` honoured, the seeds' hosts only, no internal address.
    pub fn new<S: Into<String>>(
        task: impl Into<String>,
        seeds: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            task: task.into(),
            seeds: seeds.into_iter().map(Into::into).collect(),
            max_depth: 2,
            allowed_hosts: None,
            include_subdomains: false,
            rate_limit: RateLimit::default(),
            request_timeout: Duration::from_secs(30),
            max_pages: 10_000,
            max_body_bytes: 5 * 1024 * 1024,
            max_redirects: 10,
            concurrency: 2,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            headers: SecretHeaders::default(),
            respect_robots: true,
            rules: Vec::new(),
            checkpoint_interval: Duration::from_secs(1),
            address_policy: AddressPolicy::deny_internal(),
            resolver: Resolver::system(),
            politeness: Politeness::default(),
            retries: Retries::default(),
            send_deadline: SendDeadline::default(),
            run: 1,
            carried_backoff: Vec::new(),
            sitemaps: false,
        }
    }

    /// Whether `user_agent` can be sent as a `User-Agent` header.
    pub fn user_agent_checked(&self, user_agent: &str) -> bool {
        HeaderValue::from_str(user_agent).is_ok()
    }

    /// Checks everything the engine relies on; [`run`](super::run) calls it first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validated().map(drop)
    }

    pub(crate) fn validated(&self) -> Result<Validated, ConfigError> {
        let seeds = self.parse_seeds()?;
        let hosts = match &self.allowed_hosts {
            Some(entries) => HostFilter::parse(entries, self.include_subdomains)?,
            None => HostFilter::from_seeds(&seeds, self.include_subdomains),
        };
        if let Some(seed) = seeds.iter().find(|seed| !hosts.allows(seed)) {
            return Err(ConfigError::SeedNotAllowed {
                seed: seed.to_string(),
            });
        }
        let period = rate_period(self.rate_limit.requests_per_second)?;
        let burst = NonZeroU32::new(self.rate_limit.burst).ok_or(ConfigError::Burst)?;
        if self.request_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_pages == 0 {
            return Err(ConfigError::ZeroMaxPages);
        }
        if self.concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        let user_agent =
            HeaderValue::from_str(&self.user_agent).map_err(|_| ConfigError::UserAgent)?;
        let rules = Rules::compile(&self.rules)?;
        Ok(Validated {
            task: self.task.clone(),
            seeds,
            max_depth: self.max_depth,
            hosts,
            period,
            burst,
            request_timeout: self.request_timeout,
            max_pages: self.max_pages,
            max_body_bytes: self.max_body_bytes,
            max_redirects: self.max_redirects,
            concurrency: self.concurrency,
            robots_agent: robots_agent(&self.user_agent),
            user_agent,
            headers: self.header_map()?,
            respect_robots: self.respect_robots,
            rules,
            checkpoint_interval: if self.checkpoint_interval.is_zero() {
                Duration::from_secs(1)
            } else {
                self.checkpoint_interval
            },
            address_policy: self.address_policy.clone(),
            resolver: self.resolver.clone(),
            politeness: self.politeness.clone(),
            retries: self.retries,
            send_deadline: self.send_deadline.clone(),
            run: self.run,
            carried_backoff: self.carried_backoff.clone(),
            sitemaps: self.sitemaps,
        })
    }

    /// The seeds as the engine queues them (parsed, normalised, each once): what a store
    /// records as the frontier's starting point.
    pub fn normalized_seeds(&self) -> Result<Vec<String>, ConfigError> {
        Ok(self
            .parse_seeds()?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    fn parse_seeds(&self) -> Result<Vec<Url>, ConfigError> {
        if self.seeds.is_empty() {
            return Err(ConfigError::NoSeeds);
        }
        let mut seeds: Vec<Url> = Vec::with_capacity(self.seeds.len());
        for seed in &self.seeds {
            let parsed = Url::parse(seed.trim()).map_err(|source| ConfigError::InvalidSeed {
                seed: seed.clone(),
                source,
            })?;
            let url = normalize(&parsed)
                .ok_or_else(|| ConfigError::UnsupportedSeed { seed: seed.clone() })?;
            if !seeds.contains(&url) {
                seeds.push(url);
            }
        }
        Ok(seeds)
    }

    fn header_map(&self) -> Result<HeaderMap, ConfigError> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers.0 {
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| ConfigError::Header {
                    name: name.clone(),
                    reason: "not a valid header name",
                })?;
            // The value is never echoed: it may be a session cookie.
            let mut header_value =
                HeaderValue::from_str(value).map_err(|_| ConfigError::Header {
                    name: name.clone(),
                    reason: "the value has characters a header cannot carry",
                })?;
            header_value.set_sensitive(true);
            map.append(header_name, header_value);
        }
        Ok(map)
    }
}

/// The time between two requests at the sustained rate.
fn rate_period(requests_per_second: f64) -> Result<Duration, ConfigError> {
    let invalid = ConfigError::RateLimit {
        requests_per_second,
    };
    if !requests_per_second.is_finite() || requests_per_second <= 0.0 {
        return Err(invalid);
    }
    match Duration::try_from_secs_f64(1.0 / requests_per_second) {
        Ok(period) if !period.is_zero() => Ok(period),
        _ => Err(invalid),
    }
}

/// The product token of a `User-Agent` (`crawler-operator` in
/// `crawler-operator/0.1 (+https://…)`), which is what `robots.txt` groups name.
fn robots_agent(user_agent: &str) -> String {
    let token = user_agent
        .split(|c: char| c == '/' || c.is_whitespace())
        .find(|part| !part.is_empty())
        .unwrap_or("*");
    token.to_owned()
}

/// A config the engine can run: parsed, checked, defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub task: String,
    pub seeds: Vec<Url>,
    pub max_depth: u32,
    pub hosts: HostFilter,
    pub period: Duration,
    pub burst: NonZeroU32,
    pub request_timeout: Duration,
    pub max_pages: u64,
    pub max_body_bytes: usize,
    pub max_redirects: u32,
    pub concurrency: usize,
    pub user_agent: HeaderValue,
    pub robots_agent: String,
    pub headers: HeaderMap,
    pub respect_robots: bool,
    pub rules: Rules,
    pub checkpoint_interval: Duration,
    pub address_policy: AddressPolicy,
    pub resolver: Resolver,
    pub politeness: Politeness,
    pub retries: Retries,
    pub send_deadline: SendDeadline,
    pub run: u64,
    pub carried_backoff: Vec<crate::polite::HostBackoff>,
    pub sitemaps: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CrawlConfig {
        CrawlConfig::new("t", ["http://Example.COM:80/a#x"])
    }

    #[test]
    fn defaults_validate_and_normalise_seeds() {
        let valid = config().validated().unwrap();
        assert_eq!(valid.seeds[0].as_str(), "http://example.com/a");
        assert_eq!(valid.robots_agent, "crawler-operator");
        assert_eq!(valid.period, Duration::from_secs(1));
    }

    #[test]
    fn rejects_bad_input_with_context() {
        let mut c = config();
        c.seeds = vec!["mailto:a@b.c".into()];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::UnsupportedSeed { .. })
        ));
        let mut c = config();
        c.seeds = vec!["not a url".into()];
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
        for rps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300] {
            let mut c = config();
            c.rate_limit.requests_per_second = rps;
            assert!(
                matches!(c.validate(), Err(ConfigError::RateLimit { .. })),
                "{rps}"
            );
        }
        let mut c = config();
        c.rate_limit.burst = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Burst)));
        let mut c = config();
        c.allowed_hosts = Some(vec!["other.org".into()]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SeedNotAllowed { .. })
        ));
    }

    #[test]
    fn header_values_never_show() {
        let mut c = config();
        c.headers.insert("Cookie", "session=hunter2");
        let shown = format!("{c:?} {:?}", c.validated().unwrap());
        assert!(shown.contains("Cookie"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        c.headers.insert("X-Bad", "line\nbreak hunter3");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("X-Bad") && !err.contains("hunter3"), "{err}");
    }

    #[test]
    fn robots_agent_is_the_product_token() {
        assert_eq!(robots_agent("MyBot/1.0 (+https://x)"), "MyBot");
        assert_eq!(robots_agent("  plain"), "plain");
        assert_eq!(robots_agent(""), "*");
    }
}

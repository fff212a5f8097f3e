//! URL rules: which URLs the crawler may follow, and when two URLs are the same page.

use url::{Host, Url};

use super::error::ConfigError;

/// The form of a URL the crawler deduplicates on, or `None` for URLs it never
/// follows (anything but `http`/`https`, or no host).
///
/// The `url` crate already lowercases the scheme and host, drops the
/// scheme's default port, resolves `.`/`..` and percent-encodes; on top of
/// that the fragment goes, since `/a#x` and `/a#y` are one request.
pub fn normalize(url: &Url) -> Option<Url> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    let mut url = url.clone();
    url.set_fragment(None);
    Some(url)
}

/// Parses `input` (relative to `base`) and normalises it; `None` if it does
/// not parse or is not a URL the crawler follows.
pub fn resolve(base: &Url, input: &str) -> Option<Url> {
    normalize(&base.join(input).ok()?)
}

/// The key `robots.txt` rules are cached under: scheme, host and port.
pub(crate) fn origin_key(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Which hosts a crawl may visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFilter {
    entries: Vec<HostEntry>,
    include_subdomains: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostEntry {
    host: Host<String>,
    /// `None`: any port.
    port: Option<u16>,
}

impl HostFilter {
    /// Entries are `host` or `host:port` (`[::1]:8080` for IPv6).
    pub fn parse(entries: &[String], include_subdomains: bool) -> Result<Self, ConfigError> {
        let entries = entries
            .iter()
            .map(|entry| {
                parse_entry(entry.trim()).ok_or_else(|| ConfigError::AllowedHost {
                    host: entry.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            entries,
            include_subdomains,
        })
    }

    /// The seeds' hosts; a seed that names a non-default port limits its
    /// host to that port, so `http://127.0.0.1:8080/` does not allow every
    /// service on the machine.
    pub fn from_seeds(seeds: &[Url], include_subdomains: bool) -> Self {
        let mut entries: Vec<HostEntry> = Vec::new();
        for seed in seeds {
            if let Some(host) = seed.host() {
                let entry = HostEntry {
                    host: host.to_owned(),
                    port: seed.port(),
                };
                if !entries.contains(&entry) {
                    entries.push(entry);
                }
            }
        }
        Self {
            entries,
            include_subdomains,
        }
    }

    /// The hosts as the per-host gate keys them (`Url::host_str`: no port, IPv6 in brackets).
    pub(crate) fn gate_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.iter().map(|e| e.host.to_string()).collect();
        keys.dedup();
        keys
    }

    pub fn allows(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return false;
        };
        self.entries.iter().any(|entry| {
            entry.port.is_none_or(|p| p == port)
                && host_matches(&entry.host, &host, self.include_subdomains)
        })
    }
}

fn host_matches(allowed: &Host<String>, host: &Host<&str>, include_subdomains: bool) -> bool {
    match (allowed, host) {
        (Host::Domain(allowed), Host::Domain(host)) => {
            host == allowed
                || (include_subdomains
                    && host.len() > allowed.len()
                    && host.ends_with(allowed.as_str())
                    && host.as_bytes()[host.len() - allowed.len() - 1] == b'.')
        }
        (Host::Ipv4(a), Host::Ipv4(b)) => a == b,
        (Host::Ipv6(a), Host::Ipv6(b)) => a == b,
        _ => false,
    }
}

fn parse_entry(entry: &str) -> Option<HostEntry> {
    // Let the URL parser do IDNA, lowercasing and IP parsing; an explicit
    // port is split off first so that `:80` is kept rather than dropped as
    // http's default.
    let (host, port) = split_port(entry)?;
    let url = Url::parse(&format!("http://{host}/")).ok()?;
    if url.path() != "/" || !url.username().is_empty() || url.port().is_some() {
        return None;
    }
    Some(HostEntry {
        host: url.host()?.to_owned(),
        port,
    })
}

fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if entry.is_empty() || entry.contains(['/', '@', '?', '#']) {
        return None;
    }
    let port_start = if entry.starts_with('[') {
        entry.find(']').map(|end| end + 1)?
    } else {
        entry.rfind(':').unwrap_or(entry.len())
    };
    match &entry[port_start..] {
        "" => Some((entry, None)),
        rest => {
            let port = rest.strip_prefix(':')?.parse().ok()?;
            Some((&entry[..port_start], Some(port)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn normalisation() {
        let n = |s: &str| normalize(&url(s)).map(|u| u.to_string());
        assert_eq!(
            n("HTTP://Example.COM:80/a/../b?q=1#frag").as_deref(),
            Some("http://example.com/b?q=1")
        );
        assert_eq!(
            n("https://example.com:443").as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            n("https://example.com:8443/").as_deref(),
            Some("https://example.com:8443/")
        );
        for never in [
            "mailto:a@example.com",
            "javascript:alert(1)",
            "ftp://example.com/f",
            "data:text/html,<a>",
            "file:///etc/passwd",
        ] {
            assert_eq!(n(never), None, "{never}");
        }
    }

    #[test]
    fn resolve_relative_links() {
        let base = url("http://example.com/dir/page.html");
        let r = |s: &str| resolve(&base, s).map(|u| u.to_string());
        assert_eq!(r("other").as_deref(), Some("http://example.com/dir/other"));
        assert_eq!(r("  /top  ").as_deref(), Some("http://example.com/top"));
        assert_eq!(
            r("//cdn.example.org/x").as_deref(),
            Some("http://cdn.example.org/x")
        );
        assert_eq!(
            r("#only-fragment").as_deref(),
            Some("http://example.com/dir/page.html")
        );
        assert_eq!(r("JavaScript:void(0)"), None);
        assert_eq!(r("http://[::1"), None);
    }

    #[test]
    fn host_filter_exact_port_and_subdomains() {
        let f = HostFilter::parse(&["Example.com".into(), "127.0.0.1:8080".into()], false).unwrap();
        assert!(f.allows(&url("http://example.com/")));
        assert!(f.allows(&url("https://example.com:8443/")));
        assert!(!f.allows(&url("http://www.example.com/")));
        assert!(!f.allows(&url("http://badexample.com/")));
        assert!(f.allows(&url("http://127.0.0.1:8080/")));
        assert!(!f.allows(&url("http://127.0.0.1:8081/")));
        assert!(!f.allows(&url("http://localhost:8080/")));

        let sub = HostFilter::parse(&["example.com".into()], true).unwrap();
        assert!(sub.allows(&url("http://a.b.example.com/")));
        assert!(!sub.allows(&url("http://badexample.com/")));
        assert!(!sub.allows(&url("http://example.com.evil.org/")));

        let v6 = HostFilter::parse(&["[::1]:80".into()], false).unwrap();
        assert!(v6.allows(&url("http://[::1]/")));
        assert!(!v6.allows(&url("http://[::1]:81/")));

        for bad in ["", "a/b", "user@host", "host:port", "host:99999", "[::1"] {
            assert!(HostFilter::parse(&[bad.into()], false).is_err(), "{bad}");
        }
    }

    #[test]
    fn seeds_define_default_hosts() {
        let f = HostFilter::from_seeds(
            &[url("https://example.com/x"), url("http://127.0.0.1:3000/")],
            false,
        );
        assert!(f.allows(&url("http://example.com/other")));
        assert!(f.allows(&url("http://127.0.0.1:3000/b")));
        assert!(!f.allows(&url("http://127.0.0.1:3001/b")));
    }
}

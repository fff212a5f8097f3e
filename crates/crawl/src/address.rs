//! Which addresses a crawl may connect to: every global address, and an internal one (loopback,
//! private, link-local, CGNAT, multicast, unspecified, documentation, ...) only inside a range
//! the installation allows ([`AddressPolicy`], the worker's `--allow-internal-cidrs`).
//!
//! A `CrawlerResource` is written by a user and crawled with the worker's network position, so
//! without this guard `http://169.254.169.254/` (cloud metadata), a Service name or
//! `http://127.0.0.1:…` would be fetched and, with an extraction rule, handed back through the
//! result store. The check is on the address actually connected to, never on the URL's text:
//!
//! ```text
//!  URL host ─┬─ IP literal (no DNS asked)  ──▶ AddressPolicy::check   (engine, every request)
//!            └─ name ──▶ Resolver ──▶ guard(): drop refused addresses ──▶ connect to the rest
//! ```
//!
//! Every request goes through both (seeds, followed links, each redirect hop, `robots.txt`), and
//! every new connection resolves again, so a name that answers a public address first and an
//! internal one later (DNS rebinding) is refused the second time.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::Arc,
};

pub use ipnet::IpNet;
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;

/// A host name to resolve (a URL's host that is not an IP address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The addresses a name resolved to (their ports are ignored: the URL's is used).
pub type Addrs = Box<dyn Iterator<Item = SocketAddr> + Send>;

/// Why a name did not resolve (for the guard: a [`Blocked`], found with [`find_blocked`]).
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// A resolution under way.
pub type Resolving = Pin<Box<dyn Future<Output = Result<Addrs, ResolveError>> + Send>>;

/// Resolves host names for the engine's connections ([`Resolver::custom`] takes one).
pub trait Resolve: Send + Sync {
    fn resolve(&self, name: Name) -> Resolving;
}

/// Internal ranges a crawl may connect to anyway (none by default). Global addresses are always
/// allowed; this only ever widens what the guard lets through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

/// Where a refused address falls: the special-purpose range and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Internal {
    /// The range, e.g. `169.254.0.0/16`.
    pub range: IpNet,
    /// What the range is, e.g. `link-local`.
    pub kind: &'static str,
}

/// A connection the guard refused: the host asked for and the address it would have reached.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct Blocked {
    /// The URL's host (a name, or the address itself).
    pub host: String,
    pub address: IpAddr,
    pub internal: Internal,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Blocked {
            host,
            address,
            internal,
        } = self;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        write!(f, "refused to connect to {host}")?;
        if bare.parse::<IpAddr>().ok().as_ref() != Some(address) {
            write!(f, " at {address}")?;
        }
        let article = if internal.kind.starts_with(['a', 'e', 'i', 'o', 'u', 'I']) {
            "an"
        } else {
            "a"
        };
        write!(
            f,
            ": {address} is {article} {} address (in {}); internal addresses are crawled only \
             where the installation allows them (the worker's --allow-internal-cidrs, chart \
             value worker.allowInternalCIDRs)",
            internal.kind, internal.range
        )
    }
}

/// A CIDR list entry that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error(
    "{entry:?} is not a CIDR (e.g. 10.0.0.0/8, fd00::/8) or an IP address; give a \
     comma-separated list, or nothing to allow no internal address"
)]
pub struct CidrError {
    pub entry: String,
}

impl AddressPolicy {
    /// No internal address allowed: what a worker does without `--allow-internal-cidrs`.
    pub fn deny_internal() -> Self {
        Self::default()
    }

    /// Allows these internal ranges (each truncated to its network).
    pub fn allowing(ranges: impl IntoIterator<Item = IpNet>) -> Self {
        let mut allowed: Vec<IpNet> = Vec::new();
        for range in ranges {
            let range = range.trunc();
            if !allowed.contains(&range) {
                allowed.push(range);
            }
        }
        Self { allowed }
    }

    /// The allowed internal ranges.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// `Ok` when a crawl may connect to `address`; the refusal names `host`.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Blocked> {
        match self.verdict(address) {
            None => Ok(()),
            Some(internal) => Err(Blocked {
                host: host.to_owned(),
                address,
                internal,
            }),
        }
    }

    /// The internal range that refuses `address`, or `None` when it may be reached (a global
    /// address, or an internal one inside an allowed range). An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is judged as the IPv4 address it reaches.
    pub fn verdict(&self, address: IpAddr) -> Option<Internal> {
        let address = address.to_canonical();
        let internal = internal_range(address)?;
        (!self.allowed.iter().any(|range| range.contains(&address))).then_some(internal)
    }

    /// Keeps the addresses a crawl may connect to; all refused is the first refusal.
    pub fn filter(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Blocked> {
        let mut kept = Vec::new();
        let mut refused = None;
        for addr in addrs {
            match self.check(host, addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(blocked) => {
                    refused.get_or_insert(blocked);
                }
            }
        }
        match refused {
            Some(blocked) if kept.is_empty() => Err(blocked),
            _ => Ok(kept),
        }
    }
}

/// A comma-separated list of CIDRs or single addresses (`10.0.0.0/8,127.0.0.1,fd00::/8`);
/// empty entries are skipped, so `""` allows nothing.
impl FromStr for AddressPolicy {
    type Err = CidrError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let ranges = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| CidrError {
                        entry: entry.to_owned(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::allowing(ranges))
    }
}

impl fmt::Display for AddressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.allowed.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(groups: [u16; 8], prefix: u8) -> Ipv6Net {
    let g = groups;
    Ipv6Net::new_assert(
        Ipv6Addr::new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]),
        prefix,
    )
}

/// The IPv4 ranges of the IANA special-purpose registry that are not globally reachable (RFC
/// 6890 and successors), plus multicast and the reserved class E.
const INTERNAL_V4: [(Ipv4Net, &str); 15] = [
    (v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT (RFC 6598)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignment"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// The same for IPv6. Ranges that embed an IPv4 address (mapped, NAT64, 6to4) are judged by
/// that address in [`internal_range`] first.
const INTERNAL_V6: [(Ipv6Net, &str); 13] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible (deprecated)",
    ),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignment",
    ),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (
        v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        "segment routing (SRv6)",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (RFC 4193)",
    ),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// The internal range `address` falls in, or `None` for a global address. Pure: the policy's
/// verdict and the tests build on it.
pub fn internal_range(address: IpAddr) -> Option<Internal> {
    match address.to_canonical() {
        IpAddr::V4(v4) => INTERNAL_V4
            .iter()
            .find(|(range, _)| range.contains(&v4))
            .map(|(range, kind)| Internal {
                range: IpNet::V4(*range),
                kind,
            }),
        IpAddr::V6(v6) => {
            // An address that carries an IPv4 address reaches it (through a NAT64 gateway or a
            // 6to4 relay): judge that one.
            let octets = v6.octets();
            let embedded = if NAT64.contains(&v6) {
                Some(Ipv4Addr::new(
                    octets[12], octets[13], octets[14], octets[15],
                ))
            } else if SIX_TO_FOUR.contains(&v6) {
                Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]))
            } else {
                None
            };
            if let Some(inner) = embedded.and_then(|v4| internal_range(IpAddr::V4(v4))) {
                return Some(inner);
            }
            INTERNAL_V6
                .iter()
                .find(|(range, _)| range.contains(&v6))
                .map(|(range, kind)| Internal {
                    range: IpNet::V6(*range),
                    kind,
                })
        }
    }
}

/// Where a crawl resolves host names: the system's resolver by default. Whatever it returns
/// goes through the address guard.
#[derive(Clone, Default)]
pub struct Resolver(Option<Arc<dyn Resolve>>);

impl Resolver {
    /// `getaddrinfo` (through tokio's blocking pool).
    pub fn system() -> Self {
        Self(None)
    }

    /// A resolver of the caller's (a test's, say).
    pub fn custom(resolver: impl Resolve + 'static) -> Self {
        Self(Some(Arc::new(resolver)))
    }

    /// A fixed map of host names (lowercase) to addresses, used instead of DNS: a name not in
    /// it does not resolve.
    pub fn fixed<N: Into<String>>(entries: impl IntoIterator<Item = (N, Vec<IpAddr>)>) -> Self {
        Self::custom(FixedResolver(
            entries
                .into_iter()
                .map(|(name, addrs)| (name.into().to_ascii_lowercase(), addrs))
                .collect(),
        ))
    }

    fn inner(&self) -> Arc<dyn Resolve> {
        self.0.clone().unwrap_or_else(|| Arc::new(SystemResolver))
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

/// `resolver`, with every address `policy` refuses removed: what the engine's HTTP client
/// resolves through. A name whose addresses are all refused fails with [`Blocked`] (found in
/// the request error's sources), so the client never connects to any of them.
pub fn guard(resolver: &Resolver, policy: &AddressPolicy) -> Arc<dyn Resolve> {
    Arc::new(Guarded {
        inner: resolver.inner(),
        policy: Arc::new(policy.clone()),
    })
}

struct Guarded {
    inner: Arc<dyn Resolve>,
    policy: Arc<AddressPolicy>,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let resolving = self.inner.resolve(name);
        let policy = self.policy.clone();
        Box::pin(async move {
            let kept = policy.filter(&host, resolving.await?)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

struct FixedResolver(HashMap<String, Vec<IpAddr>>);

impl Resolve for FixedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.get(&name.as_str().to_ascii_lowercase()).cloned();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs =
                found.ok_or_else(|| format!("{host} is not in the fixed resolver's map"))?;
            Ok(Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

/// The guard's refusal among an error's sources (a request error wraps the resolver's).
pub fn find_blocked<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return Some(blocked);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let policy = AddressPolicy::deny_internal();
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.0.0.3", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("::", "unspecified"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("10.96.0.1", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("::ffff:192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local (RFC 4193)"),
            ("fc00::1", "unique local (RFC 4193)"),
            ("fd00:ec2::254", "unique local (RFC 4193)"),
            ("100.64.0.1", "carrier-grade NAT (RFC 6598)"),
            ("100.127.255.255", "carrier-grade NAT (RFC 6598)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation (TEST-NET-1)"),
            ("2001:db8::1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::127.0.0.1", "IPv4-compatible (deprecated)"),
        ] {
            let err = policy.check("h.example", ip(address)).unwrap_err();
            assert_eq!(err.internal.kind, kind, "{address}");
            assert_eq!(err.address, ip(address));
        }
    }

    #[test]
    fn global_addresses_pass() {
        let policy = AddressPolicy::deny_internal();
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.169.0.0",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(policy.verdict(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn the_allow_list_opens_its_ranges_only() {
        let policy: AddressPolicy = "127.0.0.1/32, 10.0.0.0/8,fd00::1".parse().unwrap();
        assert_eq!(policy.to_string(), "127.0.0.1/32,10.0.0.0/8,fd00::1/128");
        assert!(policy.check("x", ip("127.0.0.1")).is_ok());
        assert!(policy.check("x", ip("::ffff:127.0.0.1")).is_ok());
        assert!(policy.check("x", ip("127.0.0.2")).is_err());
        assert!(policy.check("x", ip("10.1.2.3")).is_ok());
        assert!(policy.check("x", ip("fd00::1")).is_ok());
        assert!(policy.check("x", ip("fd00::2")).is_err());
        assert!(policy.check("x", ip("169.254.169.254")).is_err());
        // Host bits are dropped, duplicates kept once.
        let policy: AddressPolicy = "10.1.2.3/8,10.0.0.0/8".parse().unwrap();
        assert_eq!(policy.allowed(), &["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(
            " , ".parse::<AddressPolicy>().unwrap(),
            AddressPolicy::default()
        );
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = "10.0.0.0/8,10.0.0.0/33"
            .parse::<AddressPolicy>()
            .unwrap_err();
        assert_eq!(err.entry, "10.0.0.0/33");
        assert!(
            err.to_string().contains("\"10.0.0.0/33\" is not a CIDR"),
            "{err}"
        );
        assert!("localhost".parse::<AddressPolicy>().is_err());
    }

    #[test]
    fn the_refusal_says_what_and_how_to_allow_it() {
        let policy = AddressPolicy::deny_internal();
        let err = policy
            .check("metadata.internal", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused to connect to metadata.internal at 169.254.169.254: 169.254.169.254 is a \
             link-local address (in 169.254.0.0/16); internal addresses are crawled only where \
             the installation allows them (the worker's --allow-internal-cidrs, chart value \
             worker.allowInternalCIDRs)"
        );
        let err = policy.check("[::1]", ip("::1")).unwrap_err().to_string();
        assert!(
            err.starts_with("refused to connect to [::1]: ::1 is a loopback"),
            "{err}"
        );
        let err = policy
            .check("10.0.0.1", ip("10.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.0.1 is a private (RFC 1918) address (in 10.0.0.0/8)"),
            "{err}"
        );
        let err = policy.check("i", ip("192.0.0.8")).unwrap_err().to_string();
        assert!(
            err.contains("is an IETF protocol assignment address"),
            "{err}"
        );
    }

    #[test]
    fn filtering_keeps_the_allowed_and_refuses_when_none_is_left() {
        let sock = |s: &str| SocketAddr::new(ip(s), 0);
        let policy = AddressPolicy::deny_internal();
        assert_eq!(
            policy
                .filter("h", [sock("10.0.0.1"), sock("8.8.8.8")])
                .unwrap(),
            vec![sock("8.8.8.8")]
        );
        let err = policy
            .filter("h", [sock("10.0.0.1"), sock("fd00::1")])
            .unwrap_err();
        assert_eq!(err.address, ip("10.0.0.1"));
        // Nothing resolved is not a refusal: the connection fails as it would anyway.
        assert_eq!(policy.filter("h", []).unwrap(), vec![]);
    }

    proptest! {
        /// Every address of a listed internal range is refused unless allowed, and allowing
        /// exactly that range lets it through; an IPv4-mapped form gets the same verdict.
        #[test]
        fn verdicts_follow_the_ranges(bits in any::<u32>(), pick in 0usize..INTERNAL_V4.len()) {
            let (range, _) = INTERNAL_V4[pick];
            let host_bits = bits & !u32::from(range.netmask());
            let address = Ipv4Addr::from(u32::from(range.network()) | host_bits);
            let denied = AddressPolicy::deny_internal();
            prop_assert!(denied.verdict(IpAddr::V4(address)).is_some());
            prop_assert!(denied.verdict(IpAddr::V6(address.to_ipv6_mapped())).is_some());
            let allowed = AddressPolicy::allowing([IpNet::V4(range)]);
            prop_assert_eq!(allowed.verdict(IpAddr::V4(address)), None);
            prop_assert_eq!(allowed.verdict(IpAddr::V6(address.to_ipv6_mapped())), None);
        }

        #[test]
        fn the_list_round_trips(ranges in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..5)) {
            let policy = AddressPolicy::allowing(
                ranges.iter().map(|(a, p)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(*a), *p).unwrap())),
            );
            prop_assert_eq!(policy.to_string().parse::<AddressPolicy>().unwrap(), policy);
        }
    }
}

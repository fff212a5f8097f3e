//! `robots.txt`: what a fetch result means for a host, and the rules for one URL.
//!
//! The outcomes follow Google's documented handling (and RFC 9309):
//! a 2xx is parsed; a 4xx other than 429 means there are no rules (allow
//! all); a 429, a 5xx, a timeout or an unreachable host means the whole
//! host is off limits until the next crawl; more than five redirects count
//! as "not found".

use texting_robots::Robot;
use url::Url;

use crate::address::Blocked;

/// `robots.txt` bodies are read up to this size; Google reads 500 KiB.
pub(crate) const MAX_ROBOTS_BYTES: usize = 500 * 1024;
/// Redirects followed when fetching `robots.txt` (RFC 9309: at least five).
pub(crate) const MAX_ROBOTS_REDIRECTS: u32 = 5;

/// What `robots.txt` says about one origin.
#[derive(Debug)]
pub(crate) enum Robots {
    /// No usable file (a 4xx, too many redirects, or an unparsable body).
    AllowAll { reason: String },
    /// The rules for our agent.
    Rules(Box<Robot>),
    /// The file could not be fetched (a 5xx, 429, timeout, connection
    /// error): the host is treated as fully disallowed.
    Unavailable { reason: String },
    /// A request for the file (`url`) went to an internal address the installation does not
    /// allow: nothing was sent, and the host's pages are reported as refused for the same reason.
    Blocked { url: String, blocked: Blocked },
}

/// What a finished `robots.txt` fetch looked like.
#[derive(Debug)]
pub(crate) enum RobotsResponse {
    Status {
        status: u16,
        body: Vec<u8>,
    },
    /// More than [`MAX_ROBOTS_REDIRECTS`] redirects, or one without a usable `Location`.
    RedirectsUnresolved,
    Failed {
        reason: String,
    },
    /// The address guard refused a request for the file (`url`).
    Blocked {
        url: String,
        blocked: Blocked,
    },
}

impl Robots {
    pub(crate) fn from_response(agent: &str, response: RobotsResponse) -> Self {
        match response {
            RobotsResponse::Status { status, body } if (200..300).contains(&status) => {
                match Robot::new(agent, &body) {
                    Ok(robot) => Robots::Rules(Box::new(robot)),
                    Err(err) => Robots::AllowAll {
                        reason: format!("robots.txt did not parse ({err}); no rules applied"),
                    },
                }
            }
            RobotsResponse::Status { status: 429, .. } => Robots::Unavailable {
                reason: "HTTP 429 Too Many Requests".to_owned(),
            },
            RobotsResponse::Status { status, .. } if (400..500).contains(&status) => {
                Robots::AllowAll {
                    reason: format!("HTTP {status}: no robots.txt"),
                }
            }
            RobotsResponse::Status { status, .. } => Robots::Unavailable {
                reason: format!("HTTP {status}"),
            },
            RobotsResponse::RedirectsUnresolved => Robots::AllowAll {
                reason: format!(
                    "redirects (at most {MAX_ROBOTS_REDIRECTS}) led to no robots.txt: no rules applied"
                ),
            },
            RobotsResponse::Failed { reason } => Robots::Unavailable { reason },
            RobotsResponse::Blocked { url, blocked } => Robots::Blocked { url, blocked },
        }
    }

    /// `Ok` when `url` may be fetched, else why not.
    pub(crate) fn check(&self, url: &Url) -> Result<(), Denied<'_>> {
        match self {
            Robots::AllowAll { .. } => Ok(()),
            Robots::Rules(robot) if robot.allowed(url.as_str()) => Ok(()),
            Robots::Rules(_) => Err(Denied::Disallowed),
            Robots::Unavailable { reason } => Err(Denied::Unavailable { reason }),
            Robots::Blocked { url, blocked } => Err(Denied::Blocked { url, blocked }),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Denied<'a> {
    Disallowed,
    Unavailable { reason: &'a str },
    Blocked { url: &'a str, blocked: &'a Blocked },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robots(status: u16, body: &str) -> Robots {
        Robots::from_response(
            "crawler-operator",
            RobotsResponse::Status {
                status,
                body: body.as_bytes().to_vec(),
            },
        )
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn rules_for_our_agent() {
        let r = robots(
            200,
            "User-agent: *\nDisallow: /private/\n\nUser-agent: crawler-operator\nDisallow: /mine\nAllow: /mine/ok\n",
        );
        // Our own group replaces the `*` group.
        assert!(r.check(&url("http://e.com/private/x")).is_ok());
        assert_eq!(r.check(&url("http://e.com/mine")), Err(Denied::Disallowed));
        assert!(r.check(&url("http://e.com/mine/ok")).is_ok());
        assert!(r.check(&url("http://e.com/robots.txt")).is_ok());

        let star = robots(200, "User-agent: *\nDisallow: /private/\n");
        assert_eq!(
            star.check(&url("http://e.com/private/x?y")),
            Err(Denied::Disallowed)
        );
        assert!(star.check(&url("http://e.com/public")).is_ok());
    }

    #[test]
    fn status_codes_as_google_reads_them() {
        for status in [404, 410, 401, 403] {
            assert!(
                robots(status, "Disallow: /")
                    .check(&url("http://e.com/x"))
                    .is_ok(),
                "{status}"
            );
        }
        for status in [429, 500, 503, 599, 100] {
            assert!(
                matches!(
                    robots(status, "").check(&url("http://e.com/x")),
                    Err(Denied::Unavailable { .. })
                ),
                "{status}"
            );
        }
        let failed = Robots::from_response(
            "a",
            RobotsResponse::Failed {
                reason: "connection refused".into(),
            },
        );
        assert_eq!(
            failed.check(&url("http://e.com/")),
            Err(Denied::Unavailable {
                reason: "connection refused"
            })
        );
        let redirects = Robots::from_response("a", RobotsResponse::RedirectsUnresolved);
        assert!(redirects.check(&url("http://e.com/")).is_ok());
    }

    #[test]
    fn garbage_bodies_do_not_panic() {
        for body in [
            "\0\0\u{a0}Disallow",
            "User-agent",
            "Disallow: *$$$[",
            "\u{feff}Allow: /",
        ] {
            let _ = robots(200, body).check(&url("http://e.com/é?q=ü"));
        }
    }
}

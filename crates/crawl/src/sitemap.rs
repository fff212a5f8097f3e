//! Sitemaps (<https://www.sitemaps.org/protocol.html>): a `<urlset>` lists a site's pages, a
//! `<sitemapindex>` lists more sitemaps; each entry has a `<loc>` and maybe a `<lastmod>`.
//!
//! Pure parsing, bounded as the protocol bounds a file: at most [`MAX_ENTRIES`] entries are
//! read (the rest is reported as cut), and the engine reads at most [`MAX_SITEMAP_BYTES`] of a
//! body. Compressed sitemaps (`.xml.gz` served as `application/gzip`) are not read.

use jiff::{Timestamp, civil::Date, tz::TimeZone};
use quick_xml::{Reader, events::Event};

/// The protocol's bound on entries per file.
pub const MAX_ENTRIES: usize = 50_000;
/// The protocol's bound on a file's size (uncompressed): 50 MB.
pub const MAX_SITEMAP_BYTES: usize = 50 * 1000 * 1000;

/// What a sitemap file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<urlset>`: pages.
    UrlSet,
    /// `<sitemapindex>`: more sitemaps.
    Index,
}

/// One `<url>` or `<sitemap>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `<loc>`, unescaped and trimmed (not yet resolved or normalised).
    pub loc: String,
    /// `<lastmod>` (W3C datetime: a date, or a date and time with a zone); `None` when absent
    /// or not a date.
    pub lastmod: Option<Timestamp>,
}

/// A parsed sitemap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sitemap {
    pub kind: Kind,
    pub entries: Vec<Entry>,
    /// More than [`MAX_ENTRIES`] entries: the rest were not read.
    pub cut: bool,
}

/// Parses `body` as a sitemap; `None` when it is not one (not XML, or its root element is
/// neither `urlset` nor `sitemapindex`). An XML error part-way keeps the entries read so far.
pub fn parse(body: &[u8]) -> Option<Sitemap> {
    let mut reader = Reader::from_reader(body);
    let mut kind = None;
    let mut entries = Vec::new();
    let mut cut = false;
    // Inside an entry: its loc and lastmod so far; which of the two the text belongs to.
    let mut entry: Option<(String, String)> = None;
    let mut field: Option<bool> = None; // Some(true): loc, Some(false): lastmod
    loop {
        let event = match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(event) => event,
        };
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                match kind {
                    None => {
                        kind = Some(match name {
                            "urlset" => Kind::UrlSet,
                            "sitemapindex" => Kind::Index,
                            _ => return None,
                        });
                    }
                    Some(k) => match name {
                        "url" if k == Kind::UrlSet => entry = Some(Default::default()),
                        "sitemap" if k == Kind::Index => entry = Some(Default::default()),
                        "loc" if entry.is_some() => field = Some(true),
                        "lastmod" if entry.is_some() => field = Some(false),
                        _ => {}
                    },
                }
            }
            Event::Empty(e) if kind.is_none() => {
                // `<urlset/>`: a sitemap without entries.
                return match e.local_name().as_ref() {
                    "urlset" => Some(Sitemap {
                        kind: Kind::UrlSet,
                        entries,
                        cut,
                    }),
                    "sitemapindex" => Some(Sitemap {
                        kind: Kind::Index,
                        entries,
                        cut,
                    }),
                    _ => None,
                };
            }
            Event::Text(t) => append(&mut entry, field, &t.xml10_content()),
            Event::CData(t) => append(&mut entry, field, &t.xml10_content()),
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                        .unwrap_or_default()
                        .to_owned(),
                };
                append(&mut entry, field, &text);
            }
            Event::End(e) => match e.local_name().as_ref() {
                "loc" | "lastmod" => field = None,
                "url" | "sitemap" => {
                    if let Some((loc, lastmod)) = entry.take() {
                        let loc = loc.trim();
                        if !loc.is_empty() {
                            if entries.len() >= MAX_ENTRIES {
                                cut = true;
                                break;
                            }
                            entries.push(Entry {
                                loc: loc.to_owned(),
                                lastmod: parse_lastmod(lastmod.trim()),
                            });
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    kind.map(|kind| Sitemap { kind, entries, cut })
}

fn append(entry: &mut Option<(String, String)>, field: Option<bool>, text: &str) {
    match (entry, field) {
        (Some((loc, _)), Some(true)) => loc.push_str(text),
        (Some((_, lastmod)), Some(false)) => lastmod.push_str(text),
        _ => {}
    }
}

/// A W3C datetime as the protocol allows it: `2026-12-06`, `2026-12-06T09:30:00+01:00`,
/// `2026-12-06T09:30:00Z`, `2026-12-06T09:30+01:00`. A date alone is its start, in UTC.
pub fn parse_lastmod(text: &str) -> Option<Timestamp> {
    if text.is_empty() {
        return None;
    }
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    // Minutes without seconds (`2026-12-06T09:30+01:00`) or a year-month (`2026-12`).
    if let Some((date, rest)) = text.split_once('T') {
        let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
        let (time, zone) = rest.split_at(zone_at);
        if time.len() == 5 {
            return format!("{date}T{time}:00{zone}").parse().ok();
        }
        return None;
    }
    let date: Date = match text.len() {
        7 => format!("{text}-01").parse().ok()?,
        4 => format!("{text}-01-01").parse().ok()?,
        _ => text.parse().ok()?,
    };
    date.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// Whether a response's `Content-Type` may hold a sitemap: XML (`application/xml`, `text/xml`,
/// or a `+xml` type).
pub fn is_xml(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/xml")
        || essence.eq_ignore_ascii_case("text/xml")
        || essence.to_ascii_lowercase().ends_with("+xml")
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[allow(clippy::unnecessary_wraps)] // compared with Option<Timestamp> fields
    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_urlset_with_locs_and_lastmods() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc> https://example.com/a?x=1&amp;y=2 </loc><lastmod>2026-12-01</lastmod></url>
  <url><loc><![CDATA[https://example.com/b]]></loc><lastmod>2026-12-02T10:00:00+01:00</lastmod><priority>0.5</priority></url>
  <url><loc>https://example.com/c&#x2F;d</loc><lastmod>not a date</lastmod></url>
  <url><lastmod>2026-12-01</lastmod></url>
</urlset>"#;
        let map = parse(body).unwrap();
        assert_eq!(map.kind, Kind::UrlSet);
        assert!(!map.cut);
        assert_eq!(
            map.entries,
            [
                Entry {
                    loc: "https://example.com/a?x=1&y=2".into(),
                    lastmod: ts("2026-12-01T00:00:00Z"),
                },
                Entry {
                    loc: "https://example.com/b".into(),
                    lastmod: ts("2026-12-02T09:00:00Z"),
                },
                Entry {
                    loc: "https://example.com/c/d".into(),
                    lastmod: None,
                },
            ]
        );
    }

    #[test]
    fn a_sitemap_index_with_a_namespace_prefix() {
        let body = br#"<sm:sitemapindex xmlns:sm="http://www.sitemaps.org/schemas/sitemap/0.9">
  <sm:sitemap><sm:loc>https://example.com/s1.xml</sm:loc></sm:sitemap>
  <sm:sitemap><sm:loc>https://example.com/s2.xml</sm:loc><sm:lastmod>2026-11-30T08:00Z</sm:lastmod></sm:sitemap>
</sm:sitemapindex>"#;
        let map = parse(body).unwrap();
        assert_eq!(map.kind, Kind::Index);
        assert_eq!(map.entries.len(), 2);
        assert_eq!(map.entries[1].lastmod, ts("2026-11-30T08:00:00Z"));
    }

    #[test]
    fn not_a_sitemap() {
        assert_eq!(parse(b"<html><body>hi</body></html>"), None);
        assert_eq!(parse(b"plain text"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"<rss><channel/></rss>"), None);
        assert_eq!(
            parse(b"<urlset/>"),
            Some(Sitemap {
                kind: Kind::UrlSet,
                entries: Vec::new(),
                cut: false
            })
        );
    }

    #[test]
    fn entries_past_the_protocol_bound_are_cut() {
        let mut body = String::from("<urlset>");
        for i in 0..=MAX_ENTRIES {
            let _ = write!(body, "<url><loc>https://e.com/{i}</loc></url>");
        }
        body.push_str("</urlset>");
        let map = parse(body.as_bytes()).unwrap();
        assert_eq!(map.entries.len(), MAX_ENTRIES);
        assert!(map.cut);
    }

    #[test]
    fn a_broken_file_keeps_what_was_read() {
        let map =
            parse(b"<urlset><url><loc>https://e.com/1</loc></url><url><loc>https://e.com/2</lo")
                .unwrap();
        assert_eq!(map.entries.len(), 1);
    }

    #[test]
    fn lastmod_formats() {
        assert_eq!(parse_lastmod("2026-12-06"), ts("2026-12-06T00:00:00Z"));
        assert_eq!(parse_lastmod("2026-12"), ts("2026-12-01T00:00:00Z"));
        assert_eq!(parse_lastmod("2026"), ts("2026-01-01T00:00:00Z"));
        assert_eq!(
            parse_lastmod("2026-12-06T09:30:15.5-02:00"),
            ts("2026-12-06T11:30:15.5Z")
        );
        assert_eq!(
            parse_lastmod("2026-12-06T09:30Z"),
            ts("2026-12-06T09:30:00Z")
        );
        assert_eq!(parse_lastmod(""), None);
        assert_eq!(parse_lastmod("yesterday"), None);
        assert_eq!(parse_lastmod("2026-13-01"), None);
    }

    #[test]
    fn xml_content_types() {
        assert!(is_xml("application/xml"));
        assert!(is_xml("text/xml; charset=utf-8"));
        assert!(is_xml("application/rss+xml"));
        assert!(!is_xml("text/html"));
        assert!(!is_xml("application/gzip"));
    }
}

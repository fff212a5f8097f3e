//! What the crawler reads from an HTML page: its title, the links it may follow and, with a
//! rule, the fields the rule extracts (one parse for all of it).

use std::{collections::HashSet, sync::LazyLock};

use scraper::{Html, Selector};
use url::Url;

use super::{
    extract::{Extraction, Rules},
    urls::{normalize, resolve},
};

static TITLE: LazyLock<Selector> = LazyLock::new(|| selector("title"));
static BASE: LazyLock<Selector> = LazyLock::new(|| selector("base[href]"));
static ANCHOR: LazyLock<Selector> = LazyLock::new(|| selector("a[href]"));

fn selector(css: &str) -> Selector {
    Selector::parse(css).expect("static selector parses")
}

/// Titles longer than this are cut (at a character boundary).
const MAX_TITLE_CHARS: usize = 1024;

/// The parts of a page the crawl uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The first `<title>`, whitespace collapsed; `None` when absent or empty.
    pub title: Option<String>,
    /// Every `<a href>` that resolves to an `http`/`https` URL, normalised,
    /// first occurrence first, each once.
    pub links: Vec<Url>,
}

/// Parses `html` served at `page_url`. Relative links resolve against the
/// first `<base href>` (itself resolved against `page_url`) when there is one.
/// Never fails: HTML parsing is forgiving and unusable links are skipped.
pub fn parse_page(html: &str, page_url: &Url) -> Page {
    page_of(&Html::parse_document(html), page_url).0
}

/// Parses `html` once for both the page's links and what rule `rule` extracts from it.
/// Without a rule (`None`) nothing is extracted, as [`parse_page`].
pub fn parse_with_rule(
    html: &str,
    page_url: &Url,
    rules: &Rules,
    rule: Option<usize>,
) -> (Page, Option<Extraction>) {
    let document = Html::parse_document(html);
    let (page, base) = page_of(&document, page_url);
    let extraction = rule.map(|index| rules.extract(index, &document, &base));
    (page, extraction)
}

/// The page's title and links, and the URL its relative links resolve against.
fn page_of(document: &Html, page_url: &Url) -> (Page, Url) {
    let title = document
        .select(&TITLE)
        .next()
        .map(|t| collapse_whitespace(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    let base = document
        .select(&BASE)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page_url.join(href.trim()).ok())
        .filter(|base| !base.cannot_be_a_base())
        .unwrap_or_else(|| page_url.clone());
    let mut seen = HashSet::new();
    let links = document
        .select(&ANCHOR)
        .filter_map(|a| a.value().attr("href"))
        .filter_map(|href| resolve(&base, href))
        .filter(|url| seen.insert(url.clone()))
        .collect();
    (Page { title, links }, base)
}

/// The links of `html` served at `page_url`; see [`parse_page`].
pub fn extract_links(html: &str, page_url: &Url) -> Vec<Url> {
    parse_page(html, page_url).links
}

/// Parses and normalises one URL string, `None` when it is not one the
/// crawler would follow.
pub fn normalize_str(input: &str) -> Option<Url> {
    normalize(&Url::parse(input.trim()).ok()?)
}

fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TITLE_CHARS));
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    match out.char_indices().nth(MAX_TITLE_CHARS) {
        Some((cut, _)) => out[..cut].to_owned(),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn strings(links: &[Url]) -> Vec<&str> {
        links.iter().map(Url::as_str).collect()
    }

    #[test]
    fn title_and_links() {
        let html = r#"<!doctype html><html><head><title>
              Hello
              world </title></head><body>
            <a href="/a">a</a>
            <a href="/a#again">dup with fragment</a>
            <a href="b?x=1">relative</a>
            <a href="HTTP://EXAMPLE.com:80/a">same as /a</a>
            <a href="https://other.org/">off-site, still listed</a>
            <a href="mailto:me@example.com">mail</a>
            <a href="javascript:void(0)">js</a>
            <a href="ftp://example.com/file">ftp</a>
            <a href="data:text/html,hi">data</a>
            <a href="">empty: the page itself</a>
            <a>no href</a>
            <link href="/not-an-anchor">
        </body></html>"#;
        let page = parse_page(html, &url("http://example.com/dir/index.html"));
        assert_eq!(page.title.as_deref(), Some("Hello world"));
        assert_eq!(
            strings(&page.links),
            [
                "http://example.com/a",
                "http://example.com/dir/b?x=1",
                "https://other.org/",
                "http://example.com/dir/index.html",
            ]
        );
    }

    #[test]
    fn base_href_is_respected() {
        let html = r#"<html><head><base href="/other/"><base href="/ignored/"></head>
            <body><a href="target">t</a><a href="/abs">abs</a></body></html>"#;
        let links = extract_links(html, &url("http://example.com/based/page"));
        assert_eq!(
            strings(&links),
            ["http://example.com/other/target", "http://example.com/abs"]
        );

        let absolute_base = r#"<base href="https://cdn.example.org/x/"><a href="y">y</a>"#;
        let links = extract_links(absolute_base, &url("http://example.com/"));
        assert_eq!(strings(&links), ["https://cdn.example.org/x/y"]);

        // A base that cannot be a base (or does not parse) is ignored.
        let odd = r#"<base href="javascript:x"><a href="y">y</a>"#;
        let links = extract_links(odd, &url("http://example.com/d/p"));
        assert_eq!(strings(&links), ["http://example.com/d/y"]);
    }

    #[test]
    fn no_title() {
        assert_eq!(parse_page("<p>hi", &url("http://e.com/")).title, None);
        assert_eq!(
            parse_page("<title>  </title>", &url("http://e.com/")).title,
            None
        );
        let long = format!("<title>{}</title>", "é".repeat(5000));
        let title = parse_page(&long, &url("http://e.com/")).title.unwrap();
        assert_eq!(title.chars().count(), MAX_TITLE_CHARS);
    }

    fn html_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<a href=\"".to_owned()),
            Just("\">".to_owned()),
            Just("</a>".to_owned()),
            Just("<base href=\"".to_owned()),
            Just("<title>".to_owned()),
            Just("</title>".to_owned()),
            Just("mailto:".to_owned()),
            Just("javascript:".to_owned()),
            Just("http://".to_owned()),
            Just("//".to_owned()),
            Just("../".to_owned()),
            Just("#".to_owned()),
            Just("%".to_owned()),
            Just("[::1]".to_owned()),
            Just(":99999".to_owned()),
            "\\PC{0,12}",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn link_extraction_never_panics(html in html_soup(), raw in "\\PC*") {
            let base = url("http://example.com/a/b");
            for links in [extract_links(&html, &base), extract_links(&raw, &base)] {
                for link in links {
                    prop_assert!(matches!(link.scheme(), "http" | "https"));
                    prop_assert!(link.fragment().is_none());
                }
            }
        }

        #[test]
        fn normalisation_never_panics_and_is_idempotent(input in "\\PC*", soup in html_soup()) {
            for s in [input.as_str(), soup.as_str()] {
                if let Some(u) = normalize_str(s) {
                    prop_assert_eq!(normalize_str(u.as_str()), Some(u.clone()));
                }
                let _ = resolve(&url("https://example.com/x/"), s);
            }
        }
    }
}

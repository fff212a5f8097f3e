//! Declarative extraction: rules that say which pages to follow and what to take from them.
//!
//! A task's rules are compiled once ([`Rules::compile`]) and then evaluated on every page it
//! fetches. The same compiler validates a `CrawlerResource` in the controller, so a rule that
//! cannot compile is reported there (naming the rule and the selector or pattern) before any
//! worker starts the task.
//!
//! ```text
//!  page URL ──rule_for──▶ rule ──fields──▶ {name: value | [values]}, missing required names
//!                          └──follow──▶ (link, rule named by the follow)
//! ```
//!
//! Nothing a user writes can make evaluation panic, run for long or grow without bound:
//! regular expressions are compiled by the `regex` crate (linear time, compiled size capped by
//! [`MAX_REGEX_BYTES`]); CSS selectors are length-capped and `:has()`, whose cost grows with the
//! square of the page, is refused; every output is capped (values per field, characters per
//! value, bytes per page, links per page).

use std::{collections::BTreeMap, fmt, sync::Arc};

use ego_tree::iter::Edge;
use regex::{Regex, RegexBuilder};
use scraper::{ElementRef, Html, Selector, selector::ToCss};
use serde::{Deserialize, Serialize};
use url::Url;

use super::urls::resolve;

/// Most rules a task may have.
pub const MAX_RULES: usize = 32;
/// Most `follow` entries in one rule.
pub const MAX_FOLLOWS: usize = 16;
/// Most fields in one rule (so, per page).
pub const MAX_FIELDS: usize = 32;
/// Longest rule or field name (a DNS label's length).
pub const MAX_NAME_CHARS: usize = 63;
/// Longest CSS selector.
pub const MAX_SELECTOR_CHARS: usize = 512;
/// Longest regular expression (`match` or `pattern`) as written.
pub const MAX_PATTERN_CHARS: usize = 1024;
/// Most memory one compiled regular expression may take (the `regex` crate's `size_limit`).
pub const MAX_REGEX_BYTES: usize = 1 << 20;
/// Values kept for a `multiple` field.
pub const MAX_VALUES: usize = 100;
/// Longest value, in characters; longer ones are cut.
pub const MAX_VALUE_CHARS: usize = 4096;
/// How much of an element's text or HTML a `pattern` searches (the start of it).
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// Total characters of all values of one page; values past it are dropped.
pub const MAX_PAGE_VALUE_CHARS: usize = 256 * 1024;
/// Links one page may add through its rule's `follow` selectors.
pub const MAX_FOLLOW_LINKS: usize = 10_000;
/// Pages whose elements nest deeper than this are not extracted from (their records are
/// incomplete when the rule has required fields). Matching a descendant combinator walks an
/// element's ancestors, so its cost grows with depth times elements; browsers stop nesting at
/// this same depth (Blink's parser attaches deeper elements as siblings), so real pages stay
/// below it.
pub const MAX_DEPTH: usize = 512;

/// One rule as written: which pages it applies to, which links to follow from them, and which
/// fields to extract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Names the rule in records, in `follow` entries and in errors.
    pub name: String,
    /// A regular expression searched in a page's URL. Pages are given the first rule that
    /// matches (unless a `follow` named their rule). `None`: only pages a `follow` names it for.
    pub url_match: Option<String>,
    /// Links to follow from pages of this rule.
    pub follow: Vec<Follow>,
    /// What to extract from pages of this rule, by field name.
    pub fields: BTreeMap<String, Field>,
}

/// Links to follow: the `href` of every element the selector matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Follow {
    pub selector: String,
    /// The rule for the pages reached; `None`: the first rule whose `url_match` matches, or none.
    pub rule: Option<String>,
}

/// One field to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub selector: String,
    /// `text` (whitespace collapsed), `html` (inner HTML) or `attr:NAME`.
    pub value: String,
    /// A regular expression searched in the value: its first capture group (or the whole match
    /// when it has none) becomes the value; no match means no value.
    pub pattern: Option<String>,
    /// Every matching element's value (a list) instead of the first one's.
    pub multiple: bool,
    /// A page without this field is recorded as incomplete.
    pub required: bool,
}

impl Default for Field {
    fn default() -> Self {
        Self {
            selector: String::new(),
            value: "text".to_owned(),
            pattern: None,
            multiple: false,
            required: false,
        }
    }
}

/// An extracted value: one string, or a list for a `multiple` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    One(String),
    Many(Vec<String>),
}

/// What went wrong in one rule, naming the rule and the part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// The rule's name (or `#N`, its position from 0, when the name itself is the problem).
    pub rule: String,
    /// Which part: `name`, `match`, `follow[0].selector`, `fields.title.pattern`, ...
    pub part: String,
    /// What was written there (cut to 120 characters).
    pub input: String,
    /// What is wrong, with the parser's own message where there is one.
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {:?}: {} {:?}: {}",
            self.rule, self.part, self.input, self.message
        )
    }
}

/// Rules that could not compile: every problem found, in rule order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_problems(.problems))]
pub struct RulesError {
    pub problems: Vec<RuleProblem>,
}

fn display_problems(problems: &[RuleProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compiled rules: cheap to clone, evaluated on every page of a task.
#[derive(Debug, Clone, Default)]
pub struct Rules(Arc<[Compiled]>);

#[derive(Debug)]
struct Compiled {
    name: String,
    url_match: Option<Regex>,
    follow: Vec<(Selector, Option<usize>)>,
    fields: Vec<CompiledField>,
}

#[derive(Debug)]
struct CompiledField {
    name: String,
    selector: Selector,
    value: ValueKind,
    pattern: Option<Regex>,
    multiple: bool,
    required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueKind {
    Text,
    Html,
    Attr(String),
}

/// What a rule found on one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extraction {
    /// Fields that have a value.
    pub fields: BTreeMap<String, FieldValue>,
    /// Required fields without a value, in field-name order.
    pub missing: Vec<String>,
    /// Links the rule follows, with the rule each names (index into the rules), each once.
    pub follow: Vec<(Url, Option<usize>)>,
}

impl Rules {
    /// Compiles `rules`, or lists everything wrong with them.
    pub fn compile(rules: &[Rule]) -> Result<Self, RulesError> {
        let mut problems = Problems::default();
        if rules.len() > MAX_RULES {
            problems.add(
                "",
                "rules",
                "",
                format!(
                    "{} rules; at most {MAX_RULES} are allowed: merge rules or split the task",
                    rules.len()
                ),
            );
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(message) = name_problem(&rule.name) {
                problems.add(&format!("#{i}"), "name", &rule.name, message);
            } else if names.insert(&rule.name, i).is_some() {
                problems.add(
                    &format!("#{i}"),
                    "name",
                    &rule.name,
                    "another rule has this name: give each rule its own".to_owned(),
                );
            }
        }
        let compiled: Vec<Compiled> = rules
            .iter()
            .map(|rule| compile_rule(rule, &names, &mut problems))
            .collect();
        if problems.0.is_empty() {
            Ok(Self(compiled.into()))
        } else {
            Err(RulesError {
                problems: problems.0,
            })
        }
    }

    /// No rules: the crawl follows every link and extracts nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first rule whose `match` finds itself in `url`.
    pub fn rule_for(&self, url: &str) -> Option<usize> {
        self.0.iter().position(|rule| {
            rule.url_match
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(url))
        })
    }

    /// The name of rule `index` (from [`Rules::rule_for`] or a follow).
    pub fn name(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(|rule| rule.name.as_str())
    }

    /// Evaluates rule `index` on a parsed page; relative links resolve against `base` (the
    /// page's `<base href>`, or its URL).
    pub fn extract(&self, index: usize, document: &Html, base: &Url) -> Extraction {
        let Some(rule) = self.0.get(index) else {
            return Extraction::default();
        };
        let mut out = Extraction::default();
        if deeper_than(document, MAX_DEPTH) {
            out.missing = rule
                .fields
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name.clone())
                .collect();
            return out;
        }
        let mut budget = MAX_PAGE_VALUE_CHARS;
        for field in &rule.fields {
            let mut values = Vec::new();
            for element in document.select(&field.selector) {
                if budget == 0 || values.len() == MAX_VALUES {
                    break;
                }
                if let Some(value) = field.value_of(element) {
                    let value = cut_chars(&value, MAX_VALUE_CHARS.min(budget)).to_owned();
                    budget -= value.chars().count();
                    values.push(value);
                    if !field.multiple {
                        break;
                    }
                }
            }
            let value = if field.multiple {
                (!values.is_empty()).then_some(FieldValue::Many(values))
            } else {
                values.pop().map(FieldValue::One)
            };
            match value {
                Some(value) => {
                    out.fields.insert(field.name.clone(), value);
                }
                None if field.required => out.missing.push(field.name.clone()),
                None => {}
            }
        }
        let mut seen = std::collections::HashSet::new();
        'follow: for (selector, target) in &rule.follow {
            for element in document.select(selector) {
                if out.follow.len() == MAX_FOLLOW_LINKS {
                    break 'follow;
                }
                let Some(link) = element.attr("href").and_then(|href| resolve(base, href)) else {
                    continue;
                };
                if seen.insert(link.clone()) {
                    out.follow.push((link, *target));
                }
            }
        }
        out
    }

    /// Parses `html` and evaluates rule `index` on it (tests and benchmarks; the engine parses
    /// each page once for links and fields together).
    pub fn extract_html(&self, index: usize, html: &str, page_url: &Url) -> Extraction {
        self.extract(index, &Html::parse_document(html), page_url)
    }
}

impl CompiledField {
    fn value_of(&self, element: ElementRef<'_>) -> Option<String> {
        let source = match &self.value {
            ValueKind::Text => {
                let mut text = String::new();
                for piece in element.text() {
                    if text.len() + piece.len() > MAX_SOURCE_BYTES {
                        text.push_str(cut_bytes(piece, MAX_SOURCE_BYTES - text.len()));
                        break;
                    }
                    text.push_str(piece);
                }
                collapse_whitespace(&text)
            }
            ValueKind::Html => {
                let html = element.inner_html();
                cut_bytes(html.trim(), MAX_SOURCE_BYTES).to_owned()
            }
            ValueKind::Attr(name) => {
                cut_bytes(element.attr(name)?.trim(), MAX_SOURCE_BYTES).to_owned()
            }
        };
        let value = match &self.pattern {
            None => source,
            Some(pattern) => {
                let captures = pattern.captures(&source)?;
                let found = captures.get(1).or_else(|| captures.get(0))?;
                found.as_str().trim().to_owned()
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

#[derive(Default)]
struct Problems(Vec<RuleProblem>);

impl Problems {
    fn add(&mut self, rule: &str, part: &str, input: &str, message: String) {
        self.0.push(RuleProblem {
            rule: rule.to_owned(),
            part: part.to_owned(),
            input: cut_chars(input, 120).to_owned(),
            message,
        });
    }
}

/// Compiles one rule; what cannot compile is left out and added to `problems`.
fn compile_rule(rule: &Rule, names: &BTreeMap<&str, usize>, problems: &mut Problems) -> Compiled {
    let name = rule.name.as_str();
    let url_match = rule.url_match.as_deref().and_then(|pattern| {
        compile_regex(pattern)
            .map_err(|message| problems.add(name, "match", pattern, message))
            .ok()
    });
    if rule.follow.len() > MAX_FOLLOWS {
        let message = format!(
            "{} entries; at most {MAX_FOLLOWS} are allowed",
            rule.follow.len()
        );
        problems.add(name, "follow", "", message);
    }
    let mut follow = Vec::with_capacity(rule.follow.len());
    for (j, entry) in rule.follow.iter().enumerate() {
        let selector = compile_selector(&entry.selector)
            .map_err(|message| {
                problems.add(
                    name,
                    &format!("follow[{j}].selector"),
                    &entry.selector,
                    message,
                );
            })
            .ok();
        let target = match entry.rule.as_deref() {
            None => Some(None),
            Some(target) => {
                let index = names.get(target).copied();
                if index.is_none() {
                    problems.add(
                        name,
                        &format!("follow[{j}].rule"),
                        target,
                        "no rule has this name: name one of the task's rules, or leave it out to pick the rule by `match`".to_owned(),
                    );
                }
                index.map(Some)
            }
        };
        if let (Some(selector), Some(target)) = (selector, target) {
            follow.push((selector, target));
        }
    }
    if rule.fields.len() > MAX_FIELDS {
        let message = format!(
            "{} fields; at most {MAX_FIELDS} are allowed",
            rule.fields.len()
        );
        problems.add(name, "fields", "", message);
    }
    let fields = rule
        .fields
        .iter()
        .filter_map(|(field_name, field)| compile_field(name, field_name, field, problems))
        .collect();
    Compiled {
        name: rule.name.clone(),
        url_match,
        follow,
        fields,
    }
}

fn compile_field(
    rule: &str,
    name: &str,
    field: &Field,
    problems: &mut Problems,
) -> Option<CompiledField> {
    let at = |part: &str| format!("fields.{name}.{part}");
    if let Some(message) = name_problem(name) {
        problems.add(rule, &format!("fields.{name}"), name, message);
    }
    let selector = compile_selector(&field.selector)
        .map_err(|message| problems.add(rule, &at("selector"), &field.selector, message))
        .ok();
    let value = parse_value(&field.value)
        .map_err(|message| problems.add(rule, &at("value"), &field.value, message))
        .ok();
    let pattern = match field.pattern.as_deref() {
        None => Some(None),
        Some(pattern) => compile_regex(pattern)
            .map(Some)
            .map_err(|message| problems.add(rule, &at("pattern"), pattern, message))
            .ok(),
    };
    Some(CompiledField {
        name: name.to_owned(),
        selector: selector?,
        value: value?,
        pattern: pattern?,
        multiple: field.multiple,
        required: field.required,
    })
}

/// Whether any node of `document` is nested more than `max` levels deep (one linear walk).
fn deeper_than(document: &Html, max: usize) -> bool {
    let mut depth = 0usize;
    for edge in document.tree.root().traverse() {
        match edge {
            Edge::Open(_) => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            Edge::Close(_) => depth -= 1,
        }
    }
    false
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a name is required".to_owned());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Some(format!("longer than {MAX_NAME_CHARS} characters"));
    }
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!valid).then(|| {
        "use letters, digits, '_' and '-', starting with a letter (e.g. book_title)".to_owned()
    })
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(format!(
            "longer than {MAX_PATTERN_CHARS} characters: shorten the regular expression"
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .nest_limit(64)
        .build()
        .map_err(|err| {
            // The parser's message spans several lines (the pattern, a caret, the error).
            format!(
                "not a valid regular expression (Rust regex syntax): {}",
                err.to_string()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
}

fn compile_selector(css: &str) -> Result<Selector, String> {
    if css.trim().is_empty() {
        return Err("a CSS selector is required (e.g. h1.title)".to_owned());
    }
    if css.chars().count() > MAX_SELECTOR_CHARS {
        return Err(format!(
            "longer than {MAX_SELECTOR_CHARS} characters: shorten the selector"
        ));
    }
    let selector = Selector::parse(css).map_err(|err| {
        let reason = match err {
            scraper::error::SelectorErrorKind::UnexpectedSelectorParseError(kind) => {
                format!("{kind:?}")
            }
            other => other.to_string(),
        };
        format!("not a valid CSS selector: {reason}")
    })?;
    // Serialised, the selector spells `:has(` plainly however it was escaped.
    if selector
        .to_css_string()
        .to_ascii_lowercase()
        .contains(":has(")
    {
        return Err(
            ":has() is not supported: its cost grows with the square of the page; select the element itself or its parent with a child combinator".to_owned(),
        );
    }
    Ok(selector)
}

fn parse_value(value: &str) -> Result<ValueKind, String> {
    match value {
        "text" => Ok(ValueKind::Text),
        "html" => Ok(ValueKind::Html),
        _ => match value.strip_prefix("attr:") {
            Some(name)
                if !name.is_empty()
                    && name.len() <= MAX_NAME_CHARS
                    && name.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')
                    }) =>
            {
                Ok(ValueKind::Attr(name.to_ascii_lowercase()))
            }
            _ => Err("must be text, html or attr:NAME (e.g. attr:href)".to_owned()),
        },
    }
}

/// The first `max` characters of `s`.
fn cut_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIST: &str = r#"<html><head><title>Books</title></head><body>
        <ul>
          <li><a class="book" href="/books/1">Dune</a></li>
          <li><a class="book" href="/books/2">Emma</a></li>
          <li><a class="book" href="/books/1#again">Dune again</a></li>
        </ul>
        <a class="next" href="?page=2">next</a>
        </body></html>"#;

    const DETAIL: &str = r#"<html><body>
        <h1 class="title">  Dune
           </h1>
        <span class="author"><a href="/a/herbert">Frank Herbert</a></span>
        <span class="price">Price: 9.99 EUR</span>
        <span class="rating" data-score="4.3">★★★★</span>
        <ul class="tags"><li>sf</li><li> classic </li><li></li></ul>
        <div class="blurb"><p>Spice <b>must</b> flow</p></div>
        </body></html>"#;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn field(selector: &str, value: &str) -> Field {
        Field {
            selector: selector.into(),
            value: value.into(),
            ..Field::default()
        }
    }

    fn book_rules() -> Vec<Rule> {
        vec![
            Rule {
                name: "list".into(),
                url_match: Some(r"/books/(\?page=\d+)?$".into()),
                follow: vec![
                    Follow {
                        selector: "a.book".into(),
                        rule: Some("book".into()),
                    },
                    Follow {
                        selector: "a.next".into(),
                        rule: None,
                    },
                ],
                fields: BTreeMap::new(),
            },
            Rule {
                name: "book".into(),
                url_match: Some(r"/books/\d+$".into()),
                follow: vec![],
                fields: BTreeMap::from([
                    (
                        "title".into(),
                        Field {
                            required: true,
                            ..field("h1.title", "text")
                        },
                    ),
                    ("author".into(), field(".author a", "text")),
                    (
                        "price".into(),
                        Field {
                            pattern: Some(r"([0-9]+(?:\.[0-9]+)?)".into()),
                            ..field(".price", "text")
                        },
                    ),
                    ("rating".into(), field(".rating", "attr:data-score")),
                    (
                        "tags".into(),
                        Field {
                            multiple: true,
                            ..field(".tags li", "text")
                        },
                    ),
                    ("blurb".into(), field(".blurb", "html")),
                    (
                        "isbn".into(),
                        Field {
                            required: true,
                            ..field(".isbn", "text")
                        },
                    ),
                    ("note".into(), field(".note", "text")),
                ]),
            },
        ]
    }

    #[test]
    fn rules_pick_pages_by_url_first_match_wins() {
        let rules = Rules::compile(&book_rules()).unwrap();
        assert_eq!(rules.rule_for("http://s/books/"), Some(0));
        assert_eq!(rules.rule_for("http://s/books/?page=3"), Some(0));
        assert_eq!(rules.rule_for("http://s/books/12"), Some(1));
        assert_eq!(rules.rule_for("http://s/about"), None);
        assert_eq!(rules.name(1), Some("book"));
    }

    #[test]
    fn list_rule_follows_with_named_rules() {
        let rules = Rules::compile(&book_rules()).unwrap();
        let out = rules.extract_html(0, LIST, &url("http://s/books/"));
        let follow: Vec<(&str, Option<usize>)> =
            out.follow.iter().map(|(u, r)| (u.as_str(), *r)).collect();
        assert_eq!(
            follow,
            [
                ("http://s/books/1", Some(1)),
                ("http://s/books/2", Some(1)),
                ("http://s/books/?page=2", None),
            ]
        );
        assert!(out.fields.is_empty() && out.missing.is_empty());
    }

    #[test]
    fn detail_rule_extracts_fields() {
        let rules = Rules::compile(&book_rules()).unwrap();
        let out = rules.extract_html(1, DETAIL, &url("http://s/books/1"));
        let one = |s: &str| Some(FieldValue::One(s.to_owned()));
        assert_eq!(out.fields.get("title").cloned(), one("Dune"));
        assert_eq!(out.fields.get("author").cloned(), one("Frank Herbert"));
        assert_eq!(out.fields.get("price").cloned(), one("9.99"));
        assert_eq!(out.fields.get("rating").cloned(), one("4.3"));
        assert_eq!(
            out.fields.get("tags").cloned(),
            Some(FieldValue::Many(vec!["sf".into(), "classic".into()]))
        );
        assert_eq!(
            out.fields.get("blurb").cloned(),
            one("<p>Spice <b>must</b> flow</p>")
        );
        // Missing and optional: absent; missing and required: named.
        assert!(!out.fields.contains_key("note"));
        assert_eq!(out.missing, ["isbn"]);
        let json = serde_json::to_value(&out.fields).unwrap();
        assert_eq!(json["tags"], serde_json::json!(["sf", "classic"]));
        assert_eq!(json["title"], "Dune");
    }

    #[test]
    fn pattern_without_group_takes_the_match_and_no_match_is_no_value() {
        let rules = Rules::compile(&[Rule {
            name: "r".into(),
            url_match: None,
            follow: vec![],
            fields: BTreeMap::from([
                (
                    "whole".into(),
                    Field {
                        pattern: Some(r"\d+\.\d+".into()),
                        ..field(".price", "text")
                    },
                ),
                (
                    "none".into(),
                    Field {
                        pattern: Some("USD".into()),
                        required: true,
                        ..field(".price", "text")
                    },
                ),
            ]),
        }])
        .unwrap();
        assert_eq!(
            rules.rule_for("http://s/anything"),
            None,
            "no match: only when named"
        );
        let out = rules.extract_html(0, DETAIL, &url("http://s/"));
        assert_eq!(out.fields["whole"], FieldValue::One("9.99".into()));
        assert_eq!(out.missing, ["none"]);
    }

    fn problems(rules: &[Rule]) -> Vec<String> {
        Rules::compile(rules)
            .unwrap_err()
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn invalid_rules_name_the_rule_and_the_part() {
        let mut rules = book_rules();
        rules[0].url_match = Some("(unclosed".into());
        rules[0].follow[0].selector = "a..book".into();
        rules[0].follow[1].rule = Some("nope".into());
        let book = rules[1].fields.get_mut("title").unwrap();
        book.pattern = Some("[z-a]".into());
        book.selector = "h1::".into();
        rules[1].fields.get_mut("rating").unwrap().value = "attribute:x".into();
        let found = problems(&rules);
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(
            found[0]
                .starts_with(r#"rule "list": match "(unclosed": not a valid regular expression"#),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with(
                r#"rule "list": follow[0].selector "a..book": not a valid CSS selector"#
            ),
            "{}",
            found[1]
        );
        assert!(
            found[2].starts_with(r#"rule "list": follow[1].rule "nope": no rule has this name"#),
            "{}",
            found[2]
        );
        assert!(
            found[3].starts_with(
                r#"rule "book": fields.rating.value "attribute:x": must be text, html or attr:NAME"#
            ),
            "{}",
            found[3]
        );
        assert!(
            found[4].starts_with(
                r#"rule "book": fields.title.selector "h1::": not a valid CSS selector"#
            ),
            "{}",
            found[4]
        );
        assert!(
            found[5].starts_with(
                r#"rule "book": fields.title.pattern "[z-a]": not a valid regular expression"#
            ),
            "{}",
            found[5]
        );
        assert!(
            !found.iter().any(|p| p.contains('\n')),
            "one line each: {found:#?}"
        );
    }

    #[test]
    fn structural_limits_and_names() {
        let empty = |name: &str| Rule {
            name: name.into(),
            ..Rule::default()
        };
        assert!(problems(&[empty("a"), empty("a")])[0].contains("another rule has this name"));
        assert!(problems(&[empty("")])[0].contains("a name is required"));
        assert!(problems(&[empty("9lives")])[0].contains("starting with a letter"));
        let many: Vec<Rule> = (0..=MAX_RULES).map(|i| empty(&format!("r{i}"))).collect();
        assert!(problems(&many)[0].contains("at most 32"));
        let mut huge = empty("r");
        huge.url_match = Some("a{1000}{1000}".into());
        assert!(
            problems(&[huge])[0].contains("not a valid regular expression"),
            "size limit"
        );
        let mut has = empty("r");
        has.follow.push(Follow {
            selector: "li:HAS(> a)".into(),
            rule: None,
        });
        assert!(problems(&[has])[0].contains(":has() is not supported"));
        let mut escaped = empty("r");
        escaped.follow.push(Follow {
            selector: r"li:h\61s(a)".into(),
            rule: None,
        });
        let found = Rules::compile(&[escaped])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            found.contains(":has()") || found.contains("not a valid CSS"),
            "{found}"
        );
        let mut long = empty("r");
        long.follow.push(Follow {
            selector: "a ".repeat(300),
            rule: None,
        });
        assert!(problems(&[long])[0].contains("longer than 512"));
        assert!(Rules::compile(&[]).unwrap().is_empty());
    }

    #[test]
    fn outputs_are_bounded() {
        let big = format!(
            "<ul>{}</ul><p class=long>{}</p>",
            "<li>item</li>".repeat(MAX_VALUES * 3),
            "word ".repeat(MAX_VALUE_CHARS)
        );
        let rules = Rules::compile(&[Rule {
            name: "r".into(),
            fields: BTreeMap::from([
                (
                    "items".into(),
                    Field {
                        multiple: true,
                        ..field("li", "text")
                    },
                ),
                ("long".into(), field(".long", "text")),
            ]),
            follow: vec![Follow {
                selector: "li".into(),
                rule: None,
            }],
            ..Rule::default()
        }])
        .unwrap();
        let out = rules.extract_html(0, &big, &url("http://s/"));
        let FieldValue::Many(items) = &out.fields["items"] else {
            panic!()
        };
        assert_eq!(items.len(), MAX_VALUES);
        let FieldValue::One(long) = &out.fields["long"] else {
            panic!()
        };
        assert_eq!(long.chars().count(), MAX_VALUE_CHARS);
        assert!(out.follow.is_empty(), "elements without href add no link");
    }

    /// Matching a descendant combinator walks each element's ancestors: on a page built to make
    /// that costly (deep nesting, no match) the cost grows with depth x elements. Up to
    /// [`MAX_DEPTH`] the rule runs; deeper pages are not extracted from.
    #[test]
    fn deep_pages_are_extracted_up_to_the_depth_limit() {
        let depth = MAX_DEPTH / 2 - 4;
        let page = format!(
            "{}<a href=/x>x</a>{}",
            "<div><span>".repeat(depth),
            "</span></div>".repeat(depth)
        );
        let rules = Rules::compile(&[Rule {
            name: "r".into(),
            fields: BTreeMap::from([
                (
                    "deep".into(),
                    Field {
                        multiple: true,
                        ..field("div span div span a", "text")
                    },
                ),
                (
                    "none".into(),
                    Field {
                        multiple: true,
                        ..field("p span", "text")
                    },
                ),
                (
                    "must".into(),
                    Field {
                        required: true,
                        ..field("span", "text")
                    },
                ),
            ]),
            follow: vec![Follow {
                selector: "div > span a".into(),
                rule: None,
            }],
            ..Rule::default()
        }])
        .unwrap();
        let out = rules.extract_html(0, &page, &url("http://s/"));
        assert_eq!(out.fields["deep"], FieldValue::Many(vec!["x".into()]));
        assert!(!out.fields.contains_key("none"));
        assert_eq!(out.follow.len(), 1);

        let deeper = format!("<div>{}</div>", "<span>".repeat(MAX_DEPTH));
        let out = rules.extract_html(0, &deeper, &url("http://s/"));
        let expected = Extraction {
            missing: vec!["must".into()],
            ..Extraction::default()
        };
        assert_eq!(out, expected);
    }

    fn css_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("a".to_owned()),
            Just("div".to_owned()),
            Just(" ".to_owned()),
            Just(">".to_owned()),
            Just("+".to_owned()),
            Just("~".to_owned()),
            Just(".x".to_owned()),
            Just("#y".to_owned()),
            Just("[href]".to_owned()),
            Just("[class~=\"".to_owned()),
            Just(":not(".to_owned()),
            Just(":is(".to_owned()),
            Just(":has(".to_owned()),
            Just(":nth-child(2n+1)".to_owned()),
            Just(")".to_owned()),
            Just(",".to_owned()),
            Just("*".to_owned()),
            Just("::".to_owned()),
            Just("\\".to_owned()),
            "\\PC{0,6}",
        ];
        prop::collection::vec(piece, 0..30).prop_map(|p| p.concat())
    }

    fn regex_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("*".to_owned()),
            Just("+".to_owned()),
            Just("?".to_owned()),
            Just("{2,}".to_owned()),
            Just("{1000}".to_owned()),
            Just("\\d".to_owned()),
            Just("\\w".to_owned()),
            Just(".".to_owned()),
            Just("|".to_owned()),
            Just("(?:".to_owned()),
            Just("(?P<n>".to_owned()),
            Just("^".to_owned()),
            Just("$".to_owned()),
            "\\PC{0,4}",
        ];
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    fn html_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<a href=\"".to_owned()),
            Just("\">".to_owned()),
            Just("</a>".to_owned()),
            Just("<div class=\"x\">".to_owned()),
            Just("</div>".to_owned()),
            Just("<li id=y>".to_owned()),
            Just("<p>".to_owned()),
            Just("<b>".to_owned()),
            Just("<!--".to_owned()),
            Just("-->".to_owned()),
            Just("<script>".to_owned()),
            Just("</script>".to_owned()),
            Just("&amp;".to_owned()),
            Just("/books/1".to_owned()),
            Just("javascript:".to_owned()),
            "\\PC{0,10}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
    }

    fn arbitrary_rule() -> impl Strategy<Value = Rule> {
        let value = prop_oneof![
            Just("text".to_owned()),
            Just("html".to_owned()),
            Just("attr:href".to_owned()),
            Just("attr:".to_owned()),
            "\\PC{0,8}",
        ];
        let field = (
            css_soup(),
            value,
            proptest::option::of(regex_soup()),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(selector, value, pattern, multiple, required)| Field {
                selector,
                value,
                pattern,
                multiple,
                required,
            });
        (
            proptest::option::of(regex_soup()),
            prop::collection::vec(
                (
                    css_soup(),
                    proptest::option::of(prop_oneof![Just("r".to_owned()), Just("zz".to_owned())]),
                ),
                0..3,
            ),
            prop::collection::btree_map("[a-z]{1,3}", field, 0..4),
        )
            .prop_map(|(url_match, follow, fields)| Rule {
                name: "r".into(),
                url_match,
                follow: follow
                    .into_iter()
                    .map(|(selector, rule)| Follow { selector, rule })
                    .collect(),
                fields,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the rules and the page, compiling and evaluating never panics, every
        /// problem names its rule and part on one line, and outputs stay within the bounds.
        #[test]
        fn arbitrary_rules_on_arbitrary_html(rule in arbitrary_rule(), html in html_soup(), path in "\\PC{0,20}") {
            match Rules::compile(std::slice::from_ref(&rule)) {
                Err(err) => {
                    prop_assert!(!err.problems.is_empty());
                    for p in &err.problems {
                        prop_assert_eq!(&p.rule, "r");
                        prop_assert!(!p.part.is_empty());
                        prop_assert!(!p.to_string().contains('\n'), "{}", p);
                    }
                }
                Ok(rules) => {
                    let page = url("http://s/dir/page");
                    let _ = rules.rule_for(&format!("http://s/{path}"));
                    let out = rules.extract_html(0, &html, &page);
                    let mut total = 0;
                    for (name, value) in &out.fields {
                        prop_assert!(rule.fields.contains_key(name));
                        let values = match value {
                            FieldValue::One(v) => vec![v.clone()],
                            FieldValue::Many(v) => v.clone(),
                        };
                        prop_assert!(values.len() <= MAX_VALUES);
                        for v in values {
                            prop_assert!(!v.is_empty());
                            prop_assert!(v.chars().count() <= MAX_VALUE_CHARS);
                            total += v.chars().count();
                        }
                    }
                    prop_assert!(total <= MAX_PAGE_VALUE_CHARS);
                    for name in &out.missing {
                        prop_assert!(rule.fields[name].required && !out.fields.contains_key(name));
                    }
                    for (link, target) in &out.follow {
                        prop_assert!(matches!(link.scheme(), "http" | "https"));
                        prop_assert!(target.is_none() || *target == Some(0));
                    }
                }
            }
        }
    }
}

//! A label selector written as text (`app=web,tier!=spot,pool in (a,b),!legacy`), the form
//! `kubectl -l` and a `labelSelector` query parameter take, checked as the API server checks it
//! (`labels.Parse` in k8s.io/apimachinery): the same grammar, operators and key and value rules.
//! The controller sends its `--worker-selector` to the API server as it is; this lets it refuse a
//! selector the API server would refuse before starting, instead of retrying a Pod watch that
//! can never succeed.

use std::collections::BTreeSet;

use super::{Operator, Requirement, WorkerSelector};

/// Why a selector text is not one the API server would accept. The message says what was found
/// where, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSelectorText {
    /// Not the grammar: `found` is what stood where `expected` should have.
    #[error("found {found}, expected {expected}")]
    Syntax {
        found: String,
        expected: &'static str,
    },
    /// A key that is not a qualified name (`[prefix/]name`).
    #[error("label key {key:?}: {reason}")]
    Key { key: String, reason: String },
    /// A value that is not a label value, or the wrong number or kind of values for its operator.
    #[error("label {key:?}: {reason}")]
    Value { key: String, reason: String },
}

impl WorkerSelector {
    /// Parses a label selector written as text. The empty text selects everything, as it does
    /// for the API server. `key=value` and `key==value` become `In` with one value, `key!=value`
    /// `NotIn` with one value.
    pub fn parse_text(text: &str) -> Result<Self, InvalidSelectorText> {
        Parser {
            tokens: lex(text),
            next: 0,
        }
        .selector()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A run of characters that are neither white space nor one of `=!(),<>`; `in` and `notin`
    /// are operators after a key and plain words everywhere else.
    Word(String),
    Equals,
    DoubleEquals,
    NotEquals,
    Not,
    Greater,
    Less,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    /// How an error message shows it.
    fn describe(&self) -> String {
        let symbol = match self {
            Token::Word(word) => return format!("{word:?}"),
            Token::End => return "the end of the selector".to_owned(),
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::Not => "!",
            Token::Greater => ">",
            Token::Less => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
        };
        format!("{symbol:?}")
    }
}

fn is_symbol(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits the text into tokens, the longest symbol first (`!=` before `!`); always ends with
/// [`Token::End`].
fn lex(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        let Some(first) = rest.chars().next() else {
            tokens.push(Token::End);
            return tokens;
        };
        if is_symbol(first) {
            let (token, len) = match (first, rest[1..].chars().next()) {
                ('!', Some('=')) => (Token::NotEquals, 2),
                ('=', Some('=')) => (Token::DoubleEquals, 2),
                ('=', _) => (Token::Equals, 1),
                ('!', _) => (Token::Not, 1),
                ('>', _) => (Token::Greater, 1),
                ('<', _) => (Token::Less, 1),
                ('(', _) => (Token::Open, 1),
                (')', _) => (Token::Close, 1),
                _ => (Token::Comma, 1),
            };
            tokens.push(token);
            rest = &rest[len..];
        } else {
            let end = rest
                .find(|c: char| is_symbol(c) || matches!(c, ' ' | '\t' | '\r' | '\n'))
                .unwrap_or(rest.len());
            tokens.push(Token::Word(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.next]
    }

    fn take(&mut self) -> Token {
        let token = self.tokens[self.next].clone();
        if token != Token::End {
            self.next += 1;
        }
        token
    }

    fn syntax(found: &Token, expected: &'static str) -> InvalidSelectorText {
        InvalidSelectorText::Syntax {
            found: found.describe(),
            expected,
        }
    }

    /// `requirement ("," requirement)*`, or nothing at all.
    fn selector(mut self) -> Result<WorkerSelector, InvalidSelectorText> {
        let mut selector = WorkerSelector::everything();
        if *self.peek() == Token::End {
            return Ok(selector);
        }
        loop {
            selector.match_expressions.push(self.requirement()?);
            match self.take() {
                Token::End => return Ok(selector),
                Token::Comma => {
                    if !matches!(self.peek(), Token::Word(_) | Token::Not) {
                        return Err(Self::syntax(
                            self.peek(),
                            "a label key or \"!\" after \",\"",
                        ));
                    }
                }
                other => return Err(Self::syntax(&other, "\",\" or the end of the selector")),
            }
        }
    }

    /// `!key`, `key`, `key in (values)`, `key notin (values)`, or `key` with `=`, `==`, `!=`,
    /// `>` or `<` and one value.
    fn requirement(&mut self) -> Result<Requirement, InvalidSelectorText> {
        let negated = *self.peek() == Token::Not;
        if negated {
            self.take();
        }
        let key = match self.take() {
            Token::Word(key) => key,
            other => return Err(Self::syntax(&other, "a label key")),
        };
        check_key(&key)?;
        if negated || matches!(self.peek(), Token::Comma | Token::End) {
            let operator = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Ok(Requirement { key, operator });
        }
        let operator = match self.take() {
            Token::Word(word) if word == "in" => Operator::In(self.set(&key)?),
            Token::Word(word) if word == "notin" => Operator::NotIn(self.set(&key)?),
            Token::Equals | Token::DoubleEquals => Operator::In(BTreeSet::from([self.one(&key)?])),
            Token::NotEquals => Operator::NotIn(BTreeSet::from([self.one(&key)?])),
            Token::Greater => Operator::Gt(integer(&key, &self.one(&key)?)?),
            Token::Less => Operator::Lt(integer(&key, &self.one(&key)?)?),
            other => {
                return Err(Self::syntax(
                    &other,
                    "an operator (=, ==, !=, in, notin, >, <), \",\" or the end of the selector",
                ));
            }
        };
        Ok(Requirement { key, operator })
    }

    /// The one value after `=`, `==`, `!=`, `>` or `<`: empty when a `,` or the end follows.
    fn one(&mut self, key: &str) -> Result<String, InvalidSelectorText> {
        if matches!(self.peek(), Token::Comma | Token::End) {
            return Ok(String::new());
        }
        match self.take() {
            Token::Word(value) => check_value(key, value),
            other => Err(Self::syntax(&other, "a label value")),
        }
    }

    /// `(a,b,c)`; an empty entry is the empty value, so `()` is the set holding "".
    fn set(&mut self, key: &str) -> Result<BTreeSet<String>, InvalidSelectorText> {
        let open = self.take();
        if open != Token::Open {
            return Err(Self::syntax(&open, "\"(\" and a list of values"));
        }
        let mut values = BTreeSet::new();
        let mut value = String::new();
        loop {
            match self.take() {
                Token::Word(word) if value.is_empty() => value = word,
                Token::Comma => {
                    values.insert(check_value(key, std::mem::take(&mut value))?);
                }
                Token::Close => {
                    values.insert(check_value(key, value)?);
                    return Ok(values);
                }
                other => return Err(Self::syntax(&other, "a label value, \",\" or \")\"")),
            }
        }
    }
}

/// `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters, the name at most 63
/// characters of `[A-Za-z0-9_.-]` that begin and end with a letter or digit.
fn check_key(key: &str) -> Result<(), InvalidSelectorText> {
    let invalid = |reason: String| InvalidSelectorText::Key {
        key: key.to_owned(),
        reason,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(invalid("the prefix before \"/\" is empty".to_owned()));
        }
        if let Some(reason) = dns_subdomain_problem(prefix) {
            return Err(invalid(format!("prefix {prefix:?} {reason}")));
        }
    }
    if name.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if let Some(reason) = name_problem(name) {
        return Err(invalid(format!("name {name:?} {reason}")));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9_.-]` that begin and end with a
/// letter or digit.
fn check_value(key: &str, value: String) -> Result<String, InvalidSelectorText> {
    match (value.is_empty(), name_problem(&value)) {
        (false, Some(reason)) => Err(InvalidSelectorText::Value {
            key: key.to_owned(),
            reason: format!("value {value:?} {reason}"),
        }),
        _ => Ok(value),
    }
}

fn integer(key: &str, value: &str) -> Result<i64, InvalidSelectorText> {
    value.parse().map_err(|_| InvalidSelectorText::Value {
        key: key.to_owned(),
        reason: format!("> and < compare integers, and {value:?} is not one"),
    })
}

/// What is wrong with a label name or value (non-empty), if anything.
fn name_problem(text: &str) -> Option<String> {
    if text.len() > 63 {
        return Some(format!(
            "is {} characters long, at most 63 are allowed",
            text.len()
        ));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let allowed = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !allowed || !alphanumeric(text.chars().next()) || !alphanumeric(text.chars().last()) {
        return Some(
            "must consist of letters, digits, '-', '_' or '.', and begin and end with a letter \
             or digit"
                .to_owned(),
        );
    }
    None
}

/// What is wrong with a DNS subdomain (RFC 1123), if anything.
fn dns_subdomain_problem(text: &str) -> Option<&'static str> {
    if text.len() > 253 {
        return Some("is longer than 253 characters");
    }
    let label_ok = |label: &str| {
        let edge =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        edge(label.chars().next())
            && edge(label.chars().last())
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if text.split('.').all(label_ok) {
        None
    } else {
        Some(
            "must be a DNS subdomain: lower-case letters, digits, '-' and '.', each part \
             beginning and ending with a letter or digit",
        )
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::selector::tests::labels;

    fn parse(text: &str) -> Result<WorkerSelector, InvalidSelectorText> {
        WorkerSelector::parse_text(text)
    }

    #[test]
    fn parses_every_operator_of_the_text_form() {
        let parsed = parse(
            "app.kubernetes.io/component=crawler-worker, tier!=spot,pool in (a, b),zone notin (x),\
             gpu,!legacy,env==prod,gen>3,rank<10",
        )
        .unwrap();
        let expected = WorkerSelector::default()
            .with_requirement(
                "app.kubernetes.io/component",
                Operator::is_in(["crawler-worker"]),
            )
            .with_requirement("tier", Operator::not_in(["spot"]))
            .with_requirement("pool", Operator::is_in(["a", "b"]))
            .with_requirement("zone", Operator::not_in(["x"]))
            .with_requirement("gpu", Operator::Exists)
            .with_requirement("legacy", Operator::DoesNotExist)
            .with_requirement("env", Operator::is_in(["prod"]))
            .with_requirement("gen", Operator::Gt(3))
            .with_requirement("rank", Operator::Lt(10));
        assert_eq!(parsed, expected);
    }

    #[test]
    fn accepts_what_the_api_server_accepts() {
        for text in [
            "",
            "   ",
            "a",
            "a=",
            "a=,b",
            "a in ()",
            "a in (,)",
            "a in (x,,y)",
            "in in (in)",
            "notin notin (notin)",
            "x in (foo,,baz),y,z notin ()",
            "example.com/a-b_c.d=V_1-2.3",
            "a=b,a=c",
            "app==",
            "gen>0",
            "\ta\n=\rb",
        ] {
            assert!(parse(text).is_ok(), "{text:?}: {:?}", parse(text));
        }
    }

    #[test]
    fn empty_values_and_sets_mean_the_empty_value() {
        assert_eq!(
            parse("a in (,x,)").unwrap(),
            WorkerSelector::default().with_requirement("a", Operator::is_in(["", "x"]))
        );
        assert_eq!(
            parse("a=").unwrap(),
            WorkerSelector::default().with_requirement("a", Operator::is_in([""]))
        );
    }

    #[test]
    fn matches_as_kubernetes_matches() {
        let worker = labels(&[("pool", "gpu"), ("gen", "4"), ("name", "abc")]);
        for (text, expected) in [
            ("", true),
            ("pool=gpu", true),
            ("pool!=gpu", false),
            ("zone!=a", true),
            ("pool in (cpu,gpu)", true),
            ("pool notin (gpu)", false),
            ("gen>3", true),
            ("gen>4", false),
            ("gen<5", true),
            ("name>1", false),
            ("missing<5", false),
            ("!pool", false),
            ("pool,gen", true),
            ("pool=gpu,gen<4", false),
        ] {
            assert_eq!(parse(text).unwrap().matches(&worker), expected, "{text:?}");
        }
    }

    #[test]
    fn refuses_what_the_api_server_refuses_and_says_why() {
        let cases = [
            (
                "app in (a",
                "found the end of the selector, expected a label value, \",\" or \")\"",
            ),
            (
                "app in a",
                "found \"a\", expected \"(\" and a list of values",
            ),
            (
                "app=web,",
                "found the end of the selector, expected a label key or \"!\" after \",\"",
            ),
            (",app", "found \",\", expected a label key"),
            ("app web", "found \"web\", expected an operator"),
            (
                "app=web=x",
                "found \"=\", expected \",\" or the end of the selector",
            ),
            (
                "!app=web",
                "found \"=\", expected \",\" or the end of the selector",
            ),
            ("app=(web)", "found \"(\", expected a label value"),
            (
                "app in (a b)",
                "found \"b\", expected a label value, \",\" or \")\"",
            ),
            ("=web", "found \"=\", expected a label key"),
            (
                "-app=web",
                "label key \"-app\": name \"-app\" must consist of letters",
            ),
            (
                "/app=web",
                "label key \"/app\": the prefix before \"/\" is empty",
            ),
            (
                "Example.com/app=web",
                "prefix \"Example.com\" must be a DNS subdomain",
            ),
            ("a/b/c=d", "name \"b/c\" must consist of letters"),
            (
                "gen>-1",
                "label \"gen\": value \"-1\" must consist of letters",
            ),
            (
                "app=web*",
                "label \"app\": value \"web*\" must consist of letters",
            ),
            (
                "gen>three",
                "label \"gen\": > and < compare integers, and \"three\" is not one",
            ),
            ("gen<", "\"\" is not one"),
        ];
        for (text, message) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(
                error.contains(message),
                "{text:?}: {error} should contain {message:?}"
            );
        }
        let long = "a".repeat(64);
        let error = parse(&format!("{long}=x")).unwrap_err().to_string();
        assert!(error.contains("64 characters long, at most 63"), "{error}");
        let error = parse(&format!("x={long}")).unwrap_err().to_string();
        assert!(error.contains("64 characters long, at most 63"), "{error}");
    }
}

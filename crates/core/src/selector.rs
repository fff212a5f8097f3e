//! Which workers a resource may run on: Kubernetes `LabelSelector` semantics over worker Pod
//! labels, as plain data so that placement stays free of API types (the operator converts
//! `LabelSelector` with [`Requirement::parse`]). The controller's `--worker-selector` is the same
//! thing written as text; [`WorkerSelector::parse_text`] (in `text`) checks it as the API server
//! would.

mod text;

use std::collections::{BTreeMap, BTreeSet};

pub use text::InvalidSelectorText;

/// A resource's `workerSelector`: every `match_labels` entry AND every requirement must hold.
/// The empty selector (the default) matches every worker, as in Kubernetes; a resource without
/// a `workerSelector` gets the empty one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

/// The `LabelSelector` operators. Values live inside the operator, so `Exists` with values
/// cannot be represented; `In` with no values (which matches nothing) can, but the conversion
/// from the API type refuses it, as Kubernetes does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The label is present and its value is one of these.
    In(BTreeSet<String>),
    /// The label is absent, or present with a value that is none of these.
    NotIn(BTreeSet<String>),
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value is an integer greater than this. Only the text form has it (`gen>3`);
    /// a `LabelSelector` object does not.
    Gt(i64),
    /// The label's value is an integer less than this (text form only, `gen<3`).
    Lt(i64),
}

impl WorkerSelector {
    /// The selector that matches every worker.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.match_labels.insert(key.into(), value.into());
        self
    }

    #[must_use]
    pub fn with_requirement(mut self, key: impl Into<String>, operator: Operator) -> Self {
        self.match_expressions.push(Requirement {
            key: key.into(),
            operator,
        });
        self
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|value| values.contains(value)),
            Operator::NotIn(values) => value.is_none_or(|value| !values.contains(value)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt(bound) => integer(value).is_some_and(|v| v > *bound),
            Operator::Lt(bound) => integer(value).is_some_and(|v| v < *bound),
        }
    }
}

/// A label value read as a decimal integer, as Kubernetes reads it for `Gt` and `Lt`.
fn integer(value: Option<&String>) -> Option<i64> {
    value.and_then(|v| v.parse().ok())
}

impl Operator {
    /// Builds `In` from any list of values (test and call-site convenience).
    pub fn is_in<I: IntoIterator<Item = S>, S: Into<String>>(values: I) -> Self {
        Operator::In(values.into_iter().map(Into::into).collect())
    }

    /// Builds `NotIn` from any list of values.
    pub fn not_in<I: IntoIterator<Item = S>, S: Into<String>>(values: I) -> Self {
        Operator::NotIn(values.into_iter().map(Into::into).collect())
    }

    /// The operator's spelling in the Kubernetes API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operator::In(_) => "In",
            Operator::NotIn(_) => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::Gt(_) => "Gt",
            Operator::Lt(_) => "Lt",
        }
    }
}

/// A `workerSelector` that Kubernetes itself would reject (`metav1.LabelSelectorAsSelector`).
/// The message names the key and says what to write instead, since it ends up in the
/// resource's status for a person to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSelector {
    #[error(
        "workerSelector: key {key:?} has unknown operator {operator:?}; use In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator { key: String, operator: String },
    #[error("workerSelector: key {key:?} uses operator {operator}, which needs at least one value")]
    MissingValues { key: String, operator: String },
    #[error("workerSelector: key {key:?} uses operator {operator}, which takes no values")]
    UnexpectedValues { key: String, operator: String },
}

impl Requirement {
    /// One `matchExpressions` entry as the API spells it (`values` absent and empty alike),
    /// checked as `metav1.LabelSelectorAsSelector` checks it. The operator crate calls this
    /// for each entry of a resource's `spec.workerSelector`, so placement only ever sees the
    /// validated form.
    pub fn parse(
        key: impl Into<String>,
        operator: &str,
        values: impl IntoIterator<Item = String>,
    ) -> Result<Self, InvalidSelector> {
        let key = key.into();
        let values: BTreeSet<String> = values.into_iter().collect();
        let operator = match (operator, values.is_empty()) {
            ("In", false) => Operator::In(values),
            ("NotIn", false) => Operator::NotIn(values),
            ("Exists", true) => Operator::Exists,
            ("DoesNotExist", true) => Operator::DoesNotExist,
            ("In" | "NotIn", true) => {
                return Err(InvalidSelector::MissingValues {
                    key,
                    operator: operator.to_owned(),
                });
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(InvalidSelector::UnexpectedValues {
                    key,
                    operator: operator.to_owned(),
                });
            }
            (other, _) => {
                return Err(InvalidSelector::UnknownOperator {
                    key,
                    operator: other.to_owned(),
                });
            }
        };
        Ok(Self { key, operator })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let gpu = labels(&[("gpu", "true"), ("zone", "a")]);
        let plain = labels(&[("zone", "b")]);
        let cases: &[(&str, WorkerSelector, bool, bool)] = &[
            (
                "empty matches everything",
                WorkerSelector::everything(),
                true,
                true,
            ),
            (
                "matchLabels",
                WorkerSelector::default().with_label("gpu", "true"),
                true,
                false,
            ),
            (
                "matchLabels needs every pair",
                WorkerSelector::default()
                    .with_label("gpu", "true")
                    .with_label("zone", "b"),
                false,
                false,
            ),
            (
                "In",
                WorkerSelector::default().with_requirement("zone", Operator::is_in(["a", "c"])),
                true,
                false,
            ),
            (
                "In on an absent label",
                WorkerSelector::default().with_requirement("rack", Operator::is_in(["1"])),
                false,
                false,
            ),
            (
                "NotIn",
                WorkerSelector::default().with_requirement("zone", Operator::not_in(["a"])),
                false,
                true,
            ),
            (
                "NotIn matches an absent label",
                WorkerSelector::default().with_requirement("gpu", Operator::not_in(["true"])),
                false,
                true,
            ),
            (
                "Exists",
                WorkerSelector::default().with_requirement("gpu", Operator::Exists),
                true,
                false,
            ),
            (
                "DoesNotExist",
                WorkerSelector::default().with_requirement("gpu", Operator::DoesNotExist),
                false,
                true,
            ),
            (
                "labels AND expressions",
                WorkerSelector::default()
                    .with_label("zone", "a")
                    .with_requirement("gpu", Operator::DoesNotExist),
                false,
                false,
            ),
        ];
        for (name, selector, on_gpu, on_plain) in cases {
            assert_eq!(selector.matches(&gpu), *on_gpu, "{name} on gpu worker");
            assert_eq!(
                selector.matches(&plain),
                *on_plain,
                "{name} on plain worker"
            );
        }
    }

    fn requirement(
        key: &str,
        operator: &str,
        values: &[&str],
    ) -> Result<Requirement, InvalidSelector> {
        Requirement::parse(key, operator, values.iter().map(|v| (*v).to_owned()))
    }

    #[test]
    fn parses_valid_requirements() {
        let parsed = [
            requirement("zone", "In", &["a", "b"]),
            requirement("tier", "NotIn", &["spot"]),
            requirement("gpu", "Exists", &[]),
            requirement("old", "DoesNotExist", &[]),
        ]
        .map(Result::unwrap);
        let expected = WorkerSelector::default()
            .with_requirement("zone", Operator::is_in(["a", "b"]))
            .with_requirement("tier", Operator::not_in(["spot"]))
            .with_requirement("gpu", Operator::Exists)
            .with_requirement("old", Operator::DoesNotExist)
            .match_expressions;
        assert_eq!(parsed.to_vec(), expected);
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        let cases = [
            (
                requirement("zone", "in", &["a"]),
                "key \"zone\" has unknown operator \"in\"; use In, NotIn, Exists or DoesNotExist",
            ),
            (requirement("zone", "Gt", &["1"]), "unknown operator \"Gt\""),
            (
                requirement("zone", "In", &[]),
                "key \"zone\" uses operator In, which needs at least one value",
            ),
            (
                requirement("zone", "NotIn", &[]),
                "operator NotIn, which needs at least one value",
            ),
            (
                requirement("gpu", "Exists", &["true"]),
                "key \"gpu\" uses operator Exists, which takes no values",
            ),
            (
                requirement("gpu", "DoesNotExist", &["x"]),
                "operator DoesNotExist, which takes no values",
            ),
        ];
        for (requirement, message) in cases {
            let error = requirement.unwrap_err().to_string();
            assert!(
                error.contains(message),
                "{error:?} should contain {message:?}"
            );
        }
    }
}

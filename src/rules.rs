//! `spec.rules` in the crawl engine's terms: the worker maps them into its `CrawlConfig`, and
//! the controller compiles them with the same compiler to report rules that cannot compile
//! before any worker is given the task.

use crawler_crawl::{Field, Follow, Rule, Rules, RulesError};

use crate::crd::{CrawlerResourceSpec, ExtractionRule};

/// The crawl engine's form of one rule.
pub fn to_crawl_rule(rule: &ExtractionRule) -> Rule {
    Rule {
        name: rule.name.clone(),
        url_match: rule.url_match.clone(),
        follow: rule
            .follow
            .iter()
            .map(|f| Follow {
                selector: f.selector.clone(),
                rule: f.rule.clone(),
            })
            .collect(),
        fields: rule
            .fields
            .iter()
            .map(|(name, field)| {
                let value = Field {
                    selector: field.selector.clone(),
                    value: field.value.clone(),
                    pattern: field.pattern.clone(),
                    multiple: field.multiple,
                    required: field.required,
                };
                (name.clone(), value)
            })
            .collect(),
    }
}

/// The engine's form of `spec.rules`.
pub fn crawl_rules(spec: &CrawlerResourceSpec) -> Vec<Rule> {
    spec.rules.iter().map(to_crawl_rule).collect()
}

/// Compiles `spec.rules` as a worker would: `Err` lists every rule and part that cannot compile.
pub fn check(spec: &CrawlerResourceSpec) -> Result<(), RulesError> {
    Rules::compile(&crawl_rules(spec)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> CrawlerResourceSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn spec_rules_map_and_compile() {
        let good = spec(serde_json::json!({
            "seeds": ["http://s/books/"],
            "rules": [
                {"name": "list", "match": "/books/$", "follow": [{"selector": "a.book", "rule": "book"}]},
                {"name": "book", "fields": {
                    "title": {"selector": "h1", "required": true},
                    "tags": {"selector": ".tag", "multiple": true, "value": "attr:data-x", "pattern": "(\\w+)"}
                }}
            ]
        }));
        let rules = crawl_rules(&good);
        assert_eq!(rules[0].url_match.as_deref(), Some("/books/$"));
        assert_eq!(rules[0].follow[0].rule.as_deref(), Some("book"));
        assert_eq!(rules[1].fields["title"].value, "text", "the default value");
        assert!(rules[1].fields["title"].required);
        assert!(rules[1].fields["tags"].multiple);
        check(&good).unwrap();

        let bad = spec(serde_json::json!({
            "seeds": ["http://s/"],
            "rules": [{"name": "book", "fields": {"title": {"selector": "h1[", "pattern": "(x"}}}]
        }));
        let err = check(&bad).unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert_eq!(err.problems[0].part, "fields.title.selector");
        assert_eq!(err.problems[1].part, "fields.title.pattern");
    }
}

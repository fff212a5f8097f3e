//! Extraction rules (`spec.rules`) against a real kube-apiserver, the real controller and worker
//! processes, and the local test site's book shelf: what the API server refuses, what the
//! controller reports and holds back, and what a worker extracts end to end.

use crate::support;

use crawler_operator::crd::{CONDITION_ASSIGNED, CONDITION_RULES_VALID, Phase, TaskState};
use serde_json::{Value, json};
use support::{
    site::{SHELF_PAGES, SHELF_PER_PAGE, SHELF_UNTITLED, Site, metric_value, shelf_book_data},
    story::{BOUND, POLL, Story, assigned_worker, worker_1_running},
    wait_for,
};

/// The book shelf's rules: list pages lead to book pages (and to the next list page), book
/// pages give a title (required), an author and a price.
fn shelf_rules() -> Value {
    json!([
        {
            "name": "list",
            "match": "/list/[0-9]+$",
            "follow": [
                { "selector": "ul.books a.book", "rule": "book" },
                { "selector": "a.next" }
            ]
        },
        {
            "name": "book",
            "fields": {
                "title": { "selector": "h1.title", "required": true },
                "author": { "selector": ".author a" },
                "price": { "selector": ".price", "pattern": "([0-9]+\\.[0-9]+)", "required": true }
            }
        }
    ])
}

fn shelf_spec(site: &Site, task: &str, rules: &Value) -> Value {
    json!({
        "seeds": [site.shelf_seed(task)],
        "maxDepth": 5,
        "rateLimit": { "requestsPerSecond": 50, "burst": 5 },
        "rules": rules,
    })
}

/// Waits until `shelf`'s crawl ended (phase `Succeeded`, unassigned) and checks it ran on
/// worker-1; returns its status.
async fn ran_on_worker_1(story: &Story) -> crawler_operator::crd::CrawlerResourceStatus {
    let r = story
        .wait_for_resource("shelf", "Succeeded", |r| {
            support::story::phase(r) == Some(Phase::Succeeded)
        })
        .await;
    assert_eq!(assigned_worker(&r), None);
    let status = r.status.unwrap();
    assert_eq!(status.last_worker.as_deref(), Some("worker-1"));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_book_shelf_is_crawled_and_its_books_extracted() {
    let (site, story) = worker_1_running("rules").await;
    story
        .apply_resource("shelf", shelf_spec(&site, "shelf", &shelf_rules()))
        .await;
    let progress = story
        .wait_for_progress("shelf", "the crawl completed", |p| {
            p.state == TaskState::Completed
        })
        .await;
    assert_eq!(progress.worker, "worker-1");
    ran_on_worker_1(&story).await;
    let books = SHELF_PAGES * SHELF_PER_PAGE;
    assert_eq!(
        progress.pages_fetched,
        i64::try_from(SHELF_PAGES + books).unwrap()
    );
    assert_eq!(progress.incomplete, 1, "the one untitled book");
    // List pages and book pages only: the links no rule wants (about, author) were not fetched.
    // Counted for the run that completed (a heartbeat lapse on a loaded machine may have
    // restarted the crawl from its seeds as a new assignment).
    assert_eq!(
        site.hits("shelf")
            .iter()
            .filter(|h| h.assignment == progress.assignment)
            .count(),
        usize::try_from(SHELF_PAGES + books).unwrap()
    );

    let r = story.api().get("shelf").await.unwrap();
    let rules_valid = r
        .status
        .unwrap()
        .condition(CONDITION_RULES_VALID)
        .cloned()
        .unwrap();
    assert_eq!(rules_valid.status, "True");

    let output = std::fs::read_to_string(story.output_of("worker-1")).unwrap();
    let records: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["task"] == "shelf")
        .collect();
    let mut extracted = 0;
    for n in 1..=books {
        let url = format!("http://{}/shelf/shelf/book/{n}", site.addr);
        let record = records
            .iter()
            .find(|r| r["url"] == url)
            .unwrap_or_else(|| panic!("no record for {url}"));
        assert_eq!(record["rule"], "book");
        let (title, author, price) = shelf_book_data(n);
        let price = price.as_str();
        if n == SHELF_UNTITLED {
            assert_eq!(record["incomplete"], true);
            assert_eq!(record["missing"], json!(["title"]));
            assert_eq!(
                record["fields"],
                json!({ "author": author, "price": price })
            );
        } else {
            assert_eq!(record["incomplete"], false);
            assert_eq!(
                record["fields"],
                json!({ "title": title, "author": author, "price": price })
            );
            extracted += 1;
        }
    }
    assert_eq!(extracted, books - 1);
    let lists: Vec<&Value> = records.iter().filter(|r| r["rule"] == "list").collect();
    assert_eq!(lists.len(), usize::try_from(SHELF_PAGES).unwrap());

    let (_, metrics) = Story::http_get(&story.workers[0], "/metrics").await;
    let incomplete = metric_value(&metrics, "crawler_worker_records_incomplete_total");
    assert!((incomplete - 1.0).abs() < f64::EPSILON, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_cannot_compile_are_reported_and_the_task_is_not_started() {
    let (site, story) = worker_1_running("badrules").await;
    let mut rules = shelf_rules();
    rules[0]["match"] = json!("/list/([0-9]+$");
    rules[1]["fields"]["title"]["selector"] = json!("h1..title");
    story
        .apply_resource("shelf", shelf_spec(&site, "shelf", &rules))
        .await;

    let api = story.api();
    let condition = wait_for("RulesValid=False", BOUND, POLL, || {
        let api = api.clone();
        async move {
            let r = api.get("shelf").await.map_err(|e| e.to_string())?;
            let status = r.status.unwrap_or_default();
            match status.condition(CONDITION_RULES_VALID) {
                Some(c) if c.status == "False" => Ok((c.clone(), status)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let (rules_valid, status) = condition;
    assert_eq!(rules_valid.reason, "InvalidRules");
    for named in [
        r#"rule "list": match "/list/([0-9]+$": not a valid regular expression"#,
        r#"rule "book": fields.title.selector "h1..title": not a valid CSS selector"#,
    ] {
        assert!(
            rules_valid.message.contains(named),
            "{}",
            rules_valid.message
        );
    }
    assert_eq!(status.phase, Some(Phase::Unschedulable));
    assert_eq!(status.assigned_worker, None);
    let assigned = status.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(
        (assigned.status.as_str(), assigned.reason.as_str()),
        ("False", "InvalidRules")
    );
    // Events are published off the decision path, up to 2 s later.
    let story_ref = &story;
    let warning = wait_for("an InvalidRules Event", BOUND, POLL, || async move {
        let events = story_ref.events().await;
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some("InvalidRules"))
            .cloned()
            .ok_or_else(|| format!("{} other Events", events.len()))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .note
            .as_deref()
            .unwrap_or("")
            .contains(r#"rule "list""#)
    );
    assert!(
        site.hits("shelf").is_empty(),
        "a task with bad rules never runs"
    );

    // Fixed with a new apply: placed, run, and the condition turns True.
    story
        .apply_resource("shelf", shelf_spec(&site, "shelf", &shelf_rules()))
        .await;
    story
        .wait_for_progress("shelf", "the crawl completed", |p| {
            p.state == TaskState::Completed
        })
        .await;
    let status = ran_on_worker_1(&story).await;
    assert_eq!(
        status.condition(CONDITION_RULES_VALID).unwrap().status,
        "True"
    );
    assert!(!site.hits("shelf").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structurally_bad_rules_are_refused_by_the_api_server_naming_the_field() {
    let story = Story::new("rulesschema").await;
    let rule = |name: &str| json!({ "name": name, "match": "/x" });
    let too_many: Vec<Value> = (0..33).map(|i| rule(&format!("r{i}"))).collect();
    let cases = [
        (json!([rule("a"), rule("a")]), "rule names must be unique"),
        (
            json!([{ "name": "a", "follow": [{ "selector": "a", "rule": "nowhere" }] }]),
            "a follow entry's rule must name a rule in spec.rules",
        ),
        (json!(too_many), "spec.rules"),
        (json!([rule("9lives")]), "spec.rules[0].name"),
        (
            json!([{ "name": "a", "fields": { "t": { "selector": "h1", "value": "inner" } } }]),
            "spec.rules[0].fields.t.value",
        ),
        (
            json!([{ "name": "a", "fields": { "bad name": { "selector": "h1" } } }]),
            "field names use letters",
        ),
        (
            json!([{ "name": "a", "fields": { "t": { "selector": "a".repeat(513) } } }]),
            "spec.rules[0].fields.t.selector",
        ),
        (
            json!([{ "name": "a", "match": "x".repeat(1025) }]),
            "spec.rules[0].match",
        ),
    ];
    for (rules, expected) in cases {
        let spec = json!({ "seeds": ["https://a.example/"], "rules": rules });
        let message = story.refused_spec(&spec).await;
        assert!(
            message.contains(expected),
            "{rules}: message {message:?} does not say {expected:?}"
        );
    }
    assert!(story.api().get_opt("bad").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_the_rule_language() {
    let story = Story::new("explain").await;
    for (path, expected) in [
        ("crawlerresources.spec.rules", "first match wins"),
        (
            "crawlerresources.spec.rules.match",
            "searched in the page URL",
        ),
        (
            "crawlerresources.spec.rules.follow.rule",
            "The rule for the pages reached",
        ),
        ("crawlerresources.spec.rules.fields.value", "attr:NAME"),
        (
            "crawlerresources.spec.rules.fields.pattern",
            "first capture group",
        ),
        ("crawlerresources.spec.rules.fields.required", "incomplete"),
    ] {
        story.wait_for_explain(path, expected).await;
    }
}

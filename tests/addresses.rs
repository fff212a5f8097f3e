//! The address guard through the whole path a user takes: a `CrawlerResource` applied to the real
//! API server, assigned by the controller, crawled by a worker process. Its seeds are the local
//! test site, on loopback: a worker without `--allow-internal-cidrs` refuses them (the records,
//! the metrics and the progress say why), a worker that allows loopback crawls them. Nothing here
//! connects anywhere but loopback, even with the guard broken.

use crate::support;

use serde_json::json;
use support::{site::Site, story::Story};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_seed_is_refused_without_the_allow_list_and_crawled_with_it() {
    let site = Site::start().await;
    let mut story = Story::new("guard").await;
    // worker-1 runs with no internal range allowed, as a worker does by default.
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    let outside = story.start_worker_with("worker-1", None, &["--allow-internal-cidrs=".into()]);

    // An IP literal, and a name the system resolves to loopback (/etc/hosts).
    let port = site.addr.port();
    let literal = site.seed("task-inside");
    let named = format!("http://localhost:{port}/t/task-inside/1");
    story
        .apply_resource(
            "task-inside",
            json!({ "seeds": [literal, named], "maxDepth": 2, "rateLimit": { "requestsPerSecond": 20, "burst": 1 } }),
        )
        .await;
    story.assert_assigned("task-inside", "worker-1").await;
    let progress = story
        .wait_for_progress("task-inside", "both seeds refused", |p| p.errors >= 2)
        .await;
    assert_eq!(progress.worker, "worker-1");
    assert_eq!(progress.pages_fetched, 0, "{progress:?}");
    assert!(
        site.hits("task-inside").is_empty(),
        "the site was reached: {:?}",
        site.hits("task-inside")
    );

    // The records say what was refused and how to allow it.
    let output = std::fs::read_to_string(story.output_of("worker-1")).unwrap();
    let records: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["task"] == "task-inside")
        .collect();
    assert_eq!(records.len(), 2, "{output}");
    for record in &records {
        assert_eq!(record["error_kind"], "blocked_address", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(
            error.contains("is a loopback address")
                && error.contains("--allow-internal-cidrs")
                && error.contains("worker.allowInternalCIDRs"),
            "{error}"
        );
    }
    let by_name = records
        .iter()
        .find(|r| r["url"].as_str().unwrap().contains("localhost"))
        .expect("the named seed's record");
    let error = by_name["error"].as_str().unwrap();
    assert!(
        error.contains("refused to connect to localhost at 127.0.0.1")
            || error.contains("refused to connect to localhost at ::1"),
        "{error}"
    );

    // Counted.
    let (_, metrics) = Story::http_get(&story.workers[outside], "/metrics").await;
    assert!(
        metrics.contains("\ncrawler_worker_requests_blocked_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("crawler_worker_fetch_errors_total{kind=\"blocked_address\"} 2"),
        "{metrics}"
    );

    // worker-2 allows loopback (the story's default, `--allow-internal-cidrs=127.0.0.0/8,::1/128`);
    // a resource that selects it is crawled.
    story
        .worker("worker-2", &[("crawler.dev/network", "inside")])
        .await;
    let inside = story.start_worker("worker-2", None);
    story
        .apply_resource(
            "task-allowed",
            json!({
                "seeds": [site.seed("task-allowed")],
                "maxDepth": 3,
                "rateLimit": { "requestsPerSecond": 20, "burst": 1 },
                "workerSelector": { "matchLabels": { "crawler.dev/network": "inside" } },
            }),
        )
        .await;
    story.assert_assigned("task-allowed", "worker-2").await;
    site.wait_for_hits("task-allowed", "worker-2", None, 3)
        .await;
    let progress = story
        .wait_for_progress("task-allowed", "pages fetched", |p| p.pages_fetched >= 3)
        .await;
    assert_eq!(progress.errors, 0, "{progress:?}");
    let (_, metrics) = Story::http_get(&story.workers[inside], "/metrics").await;
    assert!(
        metrics.contains("\ncrawler_worker_requests_blocked_total 0\n"),
        "{metrics}"
    );
}

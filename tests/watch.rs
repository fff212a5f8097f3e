//! The checked watch (`src/watch.rs`) against a real kube-apiserver, through a proxy that can
//! freeze its connections: a live watch proves its freshness every few seconds, and a watch whose
//! connection went silent is noticed within the idle bound and resumes on a new connection.

use crate::support;

use std::time::Duration;

use crawler_operator::watch::{self, Cycle, IDLE, Selector, Update};

/// The controller's cycle, and the harness workers': 2 s, stale after 5 s.
const CYCLE: Cycle = Cycle::SHORT;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::proxy::Proxy;
use tokio::time::Instant;

async fn create(api: &Api<ConfigMap>, name: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "watched": "yes" } },
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watch_is_noticed_within_the_idle_bound_and_freshness_resumes() {
    let cp = support::control_plane();
    let ns = cp.namespace("checked-watch").await;
    let proxy = Proxy::start(cp.apiserver_addr());
    let watched: Api<ConfigMap> = Api::namespaced(cp.client_via(&proxy), ns.name());
    let direct: Api<ConfigMap> = Api::namespaced(cp.client(), ns.name());
    create(&direct, "before").await;
    let selector = Selector {
        labels: Some("watched=yes".to_owned()),
        ..Selector::default()
    };
    let mut updates = std::pin::pin!(watch::checked(watched, selector, CYCLE));

    // Live: lists one cycle apart, so the view never goes stale.
    let started = Instant::now();
    let mut anchor: Option<Instant> = None;
    let mut widest = Duration::ZERO;
    let mut anchors = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let update = tokio::time::timeout(CYCLE.stale_after(), updates.next())
            .await
            .expect("something within the stale bound")
            .expect("the stream never ends");
        let now = Instant::now();
        match update {
            Update::Listed { items, as_of } => {
                assert_eq!(items.len(), 1);
                if let Some(a) = anchor {
                    widest = widest.max(now - a);
                }
                anchor = Some(as_of);
                anchors += 1;
            }
            Update::Failed(why) => panic!("a live watch failed: {why}"),
            Update::Apply(_) | Update::Delete(_) => {}
        }
        assert!(
            CYCLE.is_fresh(anchor, now),
            "the view went stale while the watch was live"
        );
    }
    println!(
        "live: {anchors} lists in 8 s; widest age of the view when a new anchor landed {widest:?} (stale after {:?})",
        CYCLE.stale_after()
    );
    assert!(anchors >= 3, "a list every cycle");

    // Silent: every open connection freezes (the watch's and the idle pooled ones); the stream
    // notices within one cycle plus the idle bound, and a change made meanwhile arrives through a
    // LIST on a new connection.
    let frozen = proxy.freeze();
    let froze = Instant::now();
    create(&direct, "during").await;
    let mut noticed = None;
    let mut seen_during = None;
    while seen_during.is_none() {
        let update = tokio::time::timeout(IDLE + CYCLE.stale_after(), updates.next())
            .await
            .expect("the stream recovers on a new connection")
            .unwrap();
        match update {
            Update::Failed(why) => {
                noticed.get_or_insert((froze.elapsed(), why));
            }
            Update::Apply(cm) if cm.metadata.name.as_deref() == Some("during") => {
                seen_during = Some(froze.elapsed());
            }
            Update::Listed { items, .. }
                if items
                    .iter()
                    .any(|c| c.metadata.name.as_deref() == Some("during")) =>
            {
                seen_during = Some(froze.elapsed());
            }
            _ => {}
        }
    }
    let (noticed, why) = noticed.expect("the stall was reported");
    println!(
        "frozen ({frozen} connections): stall noticed after {noticed:?} ({why}); the change made meanwhile arrived {seen_during:?} after the freeze"
    );
    let bound = CYCLE.length() + IDLE;
    assert!(
        noticed <= bound + Duration::from_millis(500),
        "noticed after {noticed:?}, bound {bound:?}"
    );
    assert!(
        why.contains("silent") || why.contains("unanswered"),
        "{why}"
    );
}

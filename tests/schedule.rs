//! Recurring crawls (issue 23): `spec.schedule` runs a crawl again at each firing as a new run
//! (`status.run` one more, a new assignment, from the seeds); `concurrencyPolicy` Forbid skips a
//! firing while a run is open, Replace stops it on its worker before the next starts; `suspend`
//! pauses the schedule; a spec change after a crawl succeeded is a new run. Real controller and
//! worker processes; judged on the site's request log (never two runs of a task at once, each run
//! from the seeds) and on the resources' status, polled.

use crate::support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crawler_operator::crd::{CrawlerResourceStatus, Phase};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{
    judge::Verdict,
    site::{Site, endless},
    story::{BOUND, HEARTBEAT, Story, phase, worker_1_running},
};

/// The firing interval the tests use: `@every` of a few seconds (the minimum is 5 s).
const EVERY: &str = "@every 5s";

/// A small finite crawl: the seed and two levels of the site's tree (7 pages), at 20 requests/s.
fn small(site: &Site, task: &str) -> serde_json::Value {
    json!({
        "seeds": [site.seed(task)],
        "maxDepth": 2,
        "rateLimit": { "requestsPerSecond": 20, "burst": 1 },
    })
}

const SMALL_PAGES: usize = 7;

/// `spec` with `spec.schedule` (and `more` fields) merged in.
fn with(mut spec: serde_json::Value, more: &serde_json::Value) -> serde_json::Value {
    let fields = spec.as_object_mut().unwrap();
    fields.insert("schedule".into(), json!(EVERY));
    for (k, v) in more.as_object().unwrap() {
        fields.insert(k.clone(), v.clone());
    }
    spec
}

/// What the test saw of one resource, polled every 50 ms: when (monotonic and wall clock), and
/// the status.
#[derive(Default)]
struct Timeline {
    seen: Vec<(Instant, Timestamp, CrawlerResourceStatus)>,
}

impl Timeline {
    /// Polls `name` until `done` says so (judging the whole timeline), at most `bound`.
    async fn until(
        &mut self,
        story: &Story,
        name: &str,
        what: &str,
        bound: Duration,
        done: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(r) = story.api().get(name).await {
                self.seen.push((
                    Instant::now(),
                    Timestamp::now(),
                    r.status.unwrap_or_default(),
                ));
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} not seen within {bound:?}; last status {:?}\n{}",
                self.seen.last().map(|s| &s.2),
                story.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn last(&self) -> Option<&CrawlerResourceStatus> {
        self.seen.last().map(|s| &s.2)
    }

    /// Each run number seen assigned: (assignment, wall-clock delay from its firing to when the
    /// test first saw it assigned).
    fn runs(&self) -> BTreeMap<i64, (i64, Duration)> {
        let mut runs = BTreeMap::new();
        for (_, wall, s) in &self.seen {
            if let (Some(Phase::Assigned), Some(run), Some(assignment)) =
                (s.phase, s.run, s.assignments)
            {
                runs.entry(run).or_insert_with(|| {
                    let fired = s.last_schedule_time.as_ref().map_or(*wall, |t| t.0);
                    let delay = wall.duration_since(fired).unsigned_abs();
                    (assignment, delay)
                });
            }
        }
        runs
    }

    fn saw(&self, what: impl Fn(&CrawlerResourceStatus) -> bool) -> bool {
        self.seen.iter().any(|(_, _, s)| what(s))
    }
}

fn succeeded_run(s: &CrawlerResourceStatus, run: i64) -> bool {
    s.phase == Some(Phase::Succeeded) && s.run == Some(run)
}

fn scheduled_reason(s: &CrawlerResourceStatus) -> Option<&str> {
    s.condition("Scheduled").map(|c| c.reason.as_str())
}

/// Pages of `task` the site served per assignment.
fn pages_by_assignment(site: &Site, task: &str) -> BTreeMap<i64, BTreeSet<u64>> {
    let mut pages: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
    for h in site.hits(task) {
        pages.entry(h.assignment).or_default().insert(h.page);
    }
    pages
}

/// Two workers of the site's tasks never run at once: no request of an older assignment after
/// the first request of a newer one.
fn no_overlap(verdict: &mut Verdict, site: &Site) {
    verdict.judged += 1;
    for v in site.overlaps() {
        verdict.violation("two-runs-at-once", v);
    }
}

/// Each run's assignment crawled from the seed (page 1).
fn each_run_from_the_seeds(
    verdict: &mut Verdict,
    site: &Site,
    task: &str,
    runs: &BTreeMap<i64, (i64, Duration)>,
    pages: Option<usize>,
) {
    let served = pages_by_assignment(site, task);
    for (run, (assignment, _)) in runs {
        verdict.judged += 1;
        let got = served.get(assignment);
        let ok = got.is_some_and(|p| p.contains(&1) && pages.is_none_or(|n| p.len() == n));
        if !ok {
            verdict.violation(
                "run-not-from-the-seeds",
                format!("run {run} (assignment {assignment}): pages {got:?}"),
            );
        }
    }
}

fn delay_figures(verdict: &mut Verdict, runs: &BTreeMap<i64, (i64, Duration)>) {
    let mut ms: Vec<u128> = runs.values().map(|(_, d)| d.as_millis()).collect();
    ms.sort_unstable();
    verdict.figure("firing_to_assigned_ms", &format!("{ms:?}"));
}

/// A crawl on `@every 5s` runs at each firing as a new run: run 1, then run 2, each a new
/// assignment that fetches its 7 pages from the seed; between runs it is `Succeeded`,
/// unassigned, showing the next firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_the_crawl_at_each_firing_as_a_new_run() {
    let (site, story) = worker_1_running("schedule-runs").await;
    story
        .apply_resource("nightly", with(small(&site, "nightly"), &json!({})))
        .await;
    let mut timeline = Timeline::default();
    timeline
        .until(&story, "nightly", "run 2 succeeded", BOUND * 2, |t| {
            t.last().is_some_and(|s| succeeded_run(s, 2))
        })
        .await;

    let mut verdict = Verdict::new("schedule-runs");
    let runs = timeline.runs();
    verdict.judged += 1;
    if runs.keys().copied().collect::<Vec<_>>() != [1, 2] || runs[&1].0 == runs[&2].0 {
        verdict.violation(
            "runs",
            format!("runs seen (run: assignment, delay): {runs:?}"),
        );
    }
    each_run_from_the_seeds(&mut verdict, &site, "nightly", &runs, Some(SMALL_PAGES));
    no_overlap(&mut verdict, &site);
    verdict.judged += 1;
    if !timeline.saw(|s| {
        succeeded_run(s, 1)
            && s.assigned_worker.is_none()
            && s.next_schedule_time.as_ref().map(|t| t.0)
                > s.last_schedule_time.as_ref().map(|t| t.0)
            && s.last_successful_time.is_some()
    }) {
        verdict.violation(
            "between-runs",
            "run 1 never seen Succeeded with its next firing".to_owned(),
        );
    }
    let r = story.api().get("nightly").await.unwrap();
    let s = r.status.unwrap();
    verdict.judged += 1;
    if s.last_worker.as_deref() != Some("worker-1") || scheduled_reason(&s) != Some("Scheduled") {
        verdict.violation("status", format!("{s:?}"));
    }
    delay_figures(&mut verdict, &runs);
    verdict.count("requests", site.hits("nightly").len());
    verdict.print_and_assert();
}

/// `Forbid`: a firing while a slow run (7 pages at one a second) is open is skipped, which the
/// `Scheduled` condition (reason `ScheduleSkipped`) and an Event show; run 1 goes on to the end,
/// and (as a `CronJob`'s, without a starting deadline) the skipped firing starts run 2 once run 1
/// finished: the site never sees the two runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_a_firing_while_a_slow_run_is_open() {
    let (site, story) = worker_1_running("schedule-forbid").await;
    // 7 pages at one request a second: a run takes 6 s or more, so a firing (every 5 s) falls
    // within every run.
    let spec = json!({
        "seeds": [site.seed("slow")],
        "maxDepth": 2,
        "rateLimit": { "requestsPerSecond": 1, "burst": 1 },
    });
    story
        .apply_resource(
            "slow",
            with(spec, &json!({ "concurrencyPolicy": "Forbid" })),
        )
        .await;
    let mut timeline = Timeline::default();
    timeline
        .until(
            &story,
            "slow",
            "a skipped firing, then run 2",
            BOUND * 2,
            |t| {
                t.saw(|s| scheduled_reason(s) == Some("ScheduleSkipped"))
                    && t.last().is_some_and(|s| s.run >= Some(2))
            },
        )
        .await;

    let mut verdict = Verdict::new("schedule-forbid");
    verdict.judged += 1;
    if !timeline.saw(|s| {
        scheduled_reason(s) == Some("ScheduleSkipped")
            && s.phase == Some(Phase::Assigned)
            && s.run == Some(1)
    }) {
        verdict.violation(
            "skip-not-shown",
            "no ScheduleSkipped condition seen while run 1 ran".to_owned(),
        );
    }
    verdict.judged += 1;
    let events = story.events().await;
    let skipped: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ScheduleSkipped"))
        .filter_map(|e| e.note.clone())
        .collect();
    if skipped.is_empty() || !skipped[0].contains("run 1 has not finished") {
        verdict.violation("skip-event", format!("{skipped:?}"));
    }
    no_overlap(&mut verdict, &site);
    let runs = timeline.runs();
    verdict.judged += 1;
    // Run 2 started once run 1 had succeeded (its Succeeded phase may last too short a time
    // for the poll: the skipped firing starts run 2 at once).
    let first_of_run_2 = timeline
        .seen
        .iter()
        .map(|s| &s.2)
        .find(|s| s.run == Some(2));
    if first_of_run_2.is_none_or(|s| s.last_successful_time.is_none()) {
        verdict.violation(
            "run-1-cut-short",
            format!("run 2 started before run 1 succeeded: {first_of_run_2:?}"),
        );
    }
    let mut finished = runs.clone();
    finished.retain(|run, _| *run == 1);
    each_run_from_the_seeds(&mut verdict, &site, "slow", &finished, Some(SMALL_PAGES));
    verdict.count("skip_events", skipped.len());
    delay_figures(&mut verdict, &runs);
    verdict.print_and_assert();
}

/// `Replace`: an endless crawl is replaced at each firing; the new run (a new assignment, from
/// the seeds) starts only after the old one stopped on its worker: the site never sees a request
/// of an older run after the first of a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_stops_the_open_run_before_the_next_starts() {
    let (site, story) = worker_1_running("schedule-replace").await;
    story
        .apply_resource(
            "endless",
            with(
                endless(&site, "endless"),
                &json!({ "concurrencyPolicy": "Replace" }),
            ),
        )
        .await;
    let mut timeline = Timeline::default();
    timeline
        .until(&story, "endless", "run 3 assigned", BOUND * 2, |t| {
            t.last()
                .is_some_and(|s| s.run >= Some(3) && s.phase == Some(Phase::Assigned))
        })
        .await;
    // Let run 3 make requests, so an old run still crawling would show.
    site.wait_for_hits("endless", "worker-1", None, 1).await;
    tokio::time::sleep(HEARTBEAT).await;

    let mut verdict = Verdict::new("schedule-replace");
    no_overlap(&mut verdict, &site);
    verdict.judged += 1;
    if !timeline.saw(|s| s.phase == Some(Phase::Releasing)) {
        verdict.violation(
            "no-release",
            "the open run was never released first".to_owned(),
        );
    }
    let runs = timeline.runs();
    verdict.judged += 1;
    let assignments: BTreeSet<i64> = runs.values().map(|(a, _)| *a).collect();
    if runs.len() < 3 || assignments.len() != runs.len() {
        verdict.violation("runs", format!("{runs:?}"));
    }
    // Runs 1 and 2 were replaced while crawling: each started from the seed.
    let replaced: BTreeMap<i64, (i64, Duration)> = runs
        .iter()
        .filter(|(r, _)| **r < 3)
        .map(|(r, v)| (*r, *v))
        .collect();
    each_run_from_the_seeds(&mut verdict, &site, "endless", &replaced, None);
    let gaps = site.handover_gaps();
    support::site::gap_figures(&mut verdict, &gaps);
    delay_figures(&mut verdict, &runs);
    verdict.print_and_assert();
}

/// `suspend: true` pauses the schedule: no next firing shown, nothing fetched over two firings;
/// unsuspended, the most recent missed firing runs (as a `CronJob`'s without a starting deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_pauses_the_schedule() {
    let (site, story) = worker_1_running("schedule-suspend").await;
    story
        .apply_resource("paused", with(small(&site, "paused"), &json!({})))
        .await;
    let mut timeline = Timeline::default();
    timeline
        .until(&story, "paused", "run 1 succeeded", BOUND * 2, |t| {
            t.last().is_some_and(|s| succeeded_run(s, 1))
        })
        .await;
    story.set_suspend("paused", true).await;
    timeline
        .until(&story, "paused", "the schedule paused", BOUND, |t| {
            t.last().is_some_and(|s| {
                s.next_schedule_time.is_none() && scheduled_reason(s) == Some("Suspended")
            })
        })
        .await;
    let paused = Instant::now();
    // Two firings' time, and one more second for a tick.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut verdict = Verdict::new("schedule-suspend");
    let during: Vec<u64> = site
        .hits("paused")
        .iter()
        .filter(|h| h.at > paused)
        .map(|h| h.page)
        .collect();
    let r = story.api().get("paused").await.unwrap();
    let s = r.status.clone().unwrap();
    verdict.judged += 1;
    if !during.is_empty() || s.run != Some(1) || phase(&r) != Some(Phase::Succeeded) {
        verdict.violation(
            "fired-while-suspended",
            format!("pages {during:?} fetched; status {s:?}"),
        );
    }
    story.set_suspend("paused", false).await;
    let resumed = Instant::now();
    // Run 2 succeeded, or already gave way to run 3: on a loaded machine a firing may fall while
    // run 2 crawls, and Forbid then starts it as soon as run 2 ends, in the same write.
    timeline
        .until(&story, "paused", "run 2 succeeded", BOUND, |t| {
            t.last()
                .is_some_and(|s| succeeded_run(s, 2) || s.run.is_some_and(|run| run > 2))
        })
        .await;
    verdict.judged += 1;
    // Run 2 is the first assignment that crawls after the unsuspend: all its pages, once.
    let after: Vec<_> = site
        .hits("paused")
        .into_iter()
        .filter(|h| h.at > resumed)
        .collect();
    let first = after.iter().map(|h| h.assignment).min();
    let run_2 = after.iter().filter(|h| Some(h.assignment) == first).count();
    if run_2 != SMALL_PAGES {
        verdict.violation(
            "not-resumed",
            format!("{run_2} requests of the first assignment after unsuspending"),
        );
    }
    verdict.figure(
        "unsuspend_to_run_2_ms",
        &site
            .hits("paused")
            .iter()
            .filter(|h| h.at > resumed)
            .map(|h| h.at.duration_since(resumed).as_millis())
            .min()
            .unwrap_or_default()
            .to_string(),
    );
    verdict.print_and_assert();
}

/// A crawl without a schedule is run 1; a spec change after it succeeded runs it again as run 2
/// (a new assignment, from the seeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_after_success_is_a_new_run() {
    let (site, story) = worker_1_running("schedule-respec").await;
    story.apply_resource("once", small(&site, "once")).await;
    let mut timeline = Timeline::default();
    timeline
        .until(&story, "once", "run 1 succeeded", BOUND, |t| {
            t.last().is_some_and(|s| succeeded_run(s, 1))
        })
        .await;
    story
        .api()
        .patch(
            "once",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "maxDepth": 1 } })),
        )
        .await
        .unwrap();
    timeline
        .until(&story, "once", "run 2 succeeded", BOUND, |t| {
            t.last()
                .is_some_and(|s| succeeded_run(s, 2) && s.completed_generation == Some(2))
        })
        .await;
    let mut verdict = Verdict::new("schedule-respec");
    let runs = timeline.runs();
    verdict.judged += 1;
    if runs.keys().copied().collect::<Vec<_>>() != [1, 2] {
        verdict.violation("runs", format!("{runs:?}"));
    }
    each_run_from_the_seeds(&mut verdict, &site, "once", &runs, None);
    verdict.judged += 1;
    let pages = pages_by_assignment(&site, "once");
    if pages.get(&runs[&2].0).map(BTreeSet::len) != Some(3) {
        verdict.violation("run-2-pages", format!("{pages:?}"));
    }
    verdict.print_and_assert();
}

/// The API server refuses what the schema can see: a schedule that is not cron syntax, `CronJob`'s
/// `Allow`, a TTL on a scheduled crawl; it accepts `examples/scheduled.yaml`; `kubectl explain`
/// describes every new field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fields_are_validated_at_apply_and_explained() {
    let story = Story::new("schedule-explain").await;
    let seeds = json!(["https://books.example.org/tag/"]);
    for (spec, says) in [
        (
            json!({ "seeds": seeds, "schedule": "every night" }),
            "schedule must be five cron fields",
        ),
        (
            json!({ "seeds": seeds, "schedule": "TZ=UTC 0 3 * * *" }),
            "set the time zone in spec.timeZone",
        ),
        (
            json!({ "seeds": seeds, "schedule": "@daily", "concurrencyPolicy": "Allow" }),
            "supported values: \"Forbid\", \"Replace\"",
        ),
        (
            json!({ "seeds": seeds, "schedule": "@daily", "ttlSecondsAfterFinished": 60 }),
            "ttlSecondsAfterFinished does not apply to a scheduled crawl",
        ),
        (
            json!({ "seeds": seeds, "schedule": "@daily", "timeZone": "Europe/../etc" }),
            "timeZone must be an IANA time zone name",
        ),
        (
            json!({ "seeds": seeds, "schedule": "@daily", "startingDeadlineSeconds": -1 }),
            "startingDeadlineSeconds",
        ),
    ] {
        let message = story.refused_spec(&spec).await;
        assert!(message.contains(says), "{spec}: {message}");
    }
    // The example in the repository is accepted as it is.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/scheduled.yaml"
    ))
    .unwrap();
    let example: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    story
        .apply_resource("nightly-books", example["spec"].clone())
        .await;
    for (path, expected) in [
        ("crawlerresources.spec.schedule", "@every <duration>"),
        ("crawlerresources.spec.timeZone", "IANA time zone"),
        (
            "crawlerresources.spec.concurrencyPolicy",
            "`Allow` is not offered",
        ),
        (
            "crawlerresources.spec.startingDeadlineSeconds",
            "startingDeadlineSeconds",
        ),
        ("crawlerresources.status.run", "one more for each"),
        (
            "crawlerresources.status.lastScheduleTime",
            "lastScheduleTime",
        ),
        (
            "crawlerresources.status.lastSuccessfulTime",
            "lastSuccessfulTime",
        ),
        ("crawlerresources.status.nextScheduleTime", "fires next"),
    ] {
        story.wait_for_explain(path, expected).await;
    }
}

/// The whole product path of an incremental recrawl: a scheduled crawl with the postgres sink,
/// real controller and worker processes. The controller numbers the runs (`status.run`), the
/// worker gives the run to the store, and run 2 of the unchanged versioned site sends
/// conditional requests: at least 90 % of its pages are answered 304 or found unchanged, at most
/// 10 % of run 1's bytes are downloaded again, and `progress.pagesUnchanged` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_crawl_with_the_store_recrawls_only_what_changed() {
    use support::{postgres, site::VERSIONED_PAGES};
    let site = Site::start().await;
    let url = postgres::shared().database("sched_recrawl");
    let db = postgres::Postgres::db_of(&url).to_owned();
    let mut story = Story::new("schedule-recrawl").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.start_worker_with(
        "worker-1",
        None,
        &[
            "--sink=postgres".to_owned(),
            format!("--database-url={url}"),
            "--checkpoint-interval=200ms".to_owned(),
        ],
    );
    let spec = json!({
        "seeds": [site.versioned_seed("weekly")],
        "maxDepth": 10,
        "rateLimit": { "requestsPerSecond": 100, "burst": 10 },
        "schedule": EVERY,
    });
    story.apply_resource("weekly", spec).await;
    let mut timeline = Timeline::default();
    timeline
        .until(&story, "weekly", "run 2 succeeded", BOUND * 3, |t| {
            t.last().is_some_and(|s| succeeded_run(s, 2))
        })
        .await;
    // No run 3 while the test reads the figures.
    story
        .api()
        .patch(
            "weekly",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "suspend": true } })),
        )
        .await
        .unwrap();

    let mut verdict = Verdict::new("schedule-recrawl");
    let runs = timeline.runs();
    let assignment_of = |run: i64| runs.get(&run).map(|(a, _)| *a);
    let (Some(first), Some(second)) = (assignment_of(1), assignment_of(2)) else {
        panic!("runs 1 and 2 not both seen assigned: {runs:?}");
    };
    // Run 1 is every assignment before run 2's first (a lapse may have moved it), run 2 is
    // run 2's assignment.
    let hits = site.hits("weekly");
    let (first_run, later): (Vec<_>, Vec<_>) = hits
        .iter()
        .filter(|h| h.page != 0 && h.assignment >= first)
        .partition(|h| h.assignment < second);
    let second_run: Vec<_> = later
        .into_iter()
        .filter(|h| h.assignment == second)
        .collect();
    let bytes = |hits: &[&support::site::Hit]| hits.iter().map(|h| h.bytes).sum::<u64>();
    let answered_304 = second_run.iter().filter(|h| h.status == 304).count();
    let stored = postgres::shared()
        .psql(
            &db,
            "SELECT count(*), count(*) FILTER (WHERE unchanged) FROM crawl_pages WHERE run = 2",
        )
        .unwrap();
    let (fetched, unchanged) = stored
        .split_once('|')
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap();
    let progress = timeline.last().and_then(|s| s.progress.clone());
    verdict.judged += 1;
    if fetched != VERSIONED_PAGES || unchanged * 10 < fetched * 9 {
        verdict.violation(
            "not-unchanged",
            format!("run 2 stored {fetched} pages, {unchanged} unchanged (want {VERSIONED_PAGES}, >= 90 %)"),
        );
    }
    verdict.judged += 1;
    if bytes(&second_run) * 10 > bytes(&first_run) {
        verdict.violation(
            "re-downloaded",
            format!(
                "run 2 downloaded {} bytes, run 1 {}",
                bytes(&second_run),
                bytes(&first_run)
            ),
        );
    }
    verdict.judged += 1;
    if progress.as_ref().map(|p| p.pages_unchanged) != Some(i64::try_from(unchanged).unwrap()) {
        verdict.violation(
            "progress",
            format!("progress {progress:?}, store says {unchanged} unchanged"),
        );
    }
    no_overlap(&mut verdict, &site);
    verdict.figure("run2_requests", &second_run.len());
    verdict.figure("run2_answered_304", &answered_304);
    verdict.figure("run2_unchanged", &unchanged);
    verdict.figure("bytes_run1", &bytes(&first_run));
    verdict.figure("bytes_run2", &bytes(&second_run));
    verdict.print_and_assert();
}

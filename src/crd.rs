//! The `CrawlerResource` API: the contract users write (`spec`) and read (`status`).
//!
//! Validation lives in the generated `OpenAPI` schema and CEL rules, so the API server itself refuses a
//! bad spec at `kubectl apply` with a message that names the field. Field ownership of `status` is
//! split by server-side apply field managers: the controller owns the assignment fields and the
//! `Assigned` condition; the worker (a later addition) owns what it reports about the crawl.

// kube's derive copies our #[serde] attributes onto the types it generates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every crawler-operator resource.
pub const GROUP: &str = "crawler.dev";
/// Condition type the controller owns: is this resource placed on a worker?
pub const CONDITION_ASSIGNED: &str = "Assigned";
/// Condition type the controller owns: do `spec.rules` compile? A resource whose rules do not is
/// not placed.
pub const CONDITION_RULES_VALID: &str = "RulesValid";
/// Condition type the controller owns on a scheduled crawl: is `spec.schedule` in force, and what
/// did its last firing do (started a run, skipped, missed)?
pub const CONDITION_SCHEDULED: &str = "Scheduled";

/// One crawl task: what to crawl, how politely, how heavy it is and where it may run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crawler.dev",
    version = "v1alpha1",
    kind = "CrawlerResource",
    namespaced,
    status = "CrawlerResourceStatus",
    derive = "PartialEq",
    shortname = "crr",
    category = "crawler",
    doc = "One crawl task, assigned by the crawler-operator controller to the least-loaded ready worker Pod.",
    selectable = ".status.assignedWorker",
    printcolumn(
        name = "Worker",
        type_ = "string",
        json_path = ".status.assignedWorker",
        description = "Worker Pod the task is assigned to (none once it succeeded: see lastWorker)"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Scheduled, Assigned, Releasing, Unschedulable, Suspended, BackOff, Succeeded or Failed"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.progress.state",
        description = "What the worker reports: Running, Completed, Failed or Stopped"
    ),
    printcolumn(
        name = "Pages",
        type_ = "integer",
        json_path = ".status.progress.pagesFetched",
        description = "Pages fetched by the last run"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".spec.task",
        priority = "1",
        description = "Crawl task the worker runs (empty: the resource's name)"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.assignedAddress",
        priority = "1",
        description = "Worker address, podIP:port"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".spec.weight",
        priority = "1",
        description = "Load units the task costs its worker"
    ),
    printcolumn(
        name = "Assignments",
        type_ = "integer",
        json_path = ".status.assignments",
        priority = "1",
        description = "How many times the task has been (re)assigned"
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = "1"
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.failures",
        priority = "1",
        description = "Failed runs of the current spec (at most spec.backoffLimit are retried)"
    ),
    printcolumn(
        name = "Run",
        type_ = "integer",
        json_path = ".status.run",
        priority = "1",
        description = "The crawl run of the current (or last) assignment: each new crawl from the seeds adds one"
    ),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        priority = "1",
        description = "When spec.schedule fires next"
    ),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completedAt",
        priority = "1",
        description = "When the controller saw the last run of the current spec complete"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.schedule) || !has(self.ttlSecondsAfterFinished)").message("ttlSecondsAfterFinished does not apply to a scheduled crawl: it never finishes for good (the next firing runs it again); remove one of spec.schedule and spec.ttlSecondsAfterFinished"))]
pub struct CrawlerResourceSpec {
    /// Which crawl task the worker runs. Defaults to the resource's name; unlike the name it may
    /// contain underscores (`douban_book_list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    )]
    pub task: Option<String>,

    /// Where the crawl starts: absolute http:// or https:// URLs (1 to 100).
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 2048)))]
    #[x_kube(validation = Rule::new("self.all(s, isURL(s) && url(s).getScheme() in ['http', 'https'] && url(s).getHostname() != '')").message("every seed must be an absolute http:// or https:// URL with a host, e.g. https://books.example.org/tag/"))]
    pub seeds: Vec<String>,

    /// Hosts the crawl may visit (exact host names). Defaults to the hosts of the seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 100),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")
        )
    )]
    pub allowed_hosts: Option<Vec<String>>,

    /// How many links deep to follow from a seed (0: the seeds only).
    #[serde(default = "default_max_depth")]
    #[schemars(range(min = 0, max = 10))]
    pub max_depth: i32,

    /// Stop after this many pages (unset: 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_pages: Option<i32>,

    /// How fast the task may send requests, across all its hosts.
    #[serde(default)]
    pub rate_limit: RateLimit,

    /// Load units this task costs its worker; a worker's load is the sum of its tasks' weights.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: i32,

    /// Only worker Pods whose labels match may run this task (a standard label selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "worker_selector_schema")]
    pub worker_selector: Option<LabelSelector>,

    /// A suspended task is unassigned and stops on its worker; unsuspending places it again.
    #[serde(default)]
    pub suspend: bool,

    /// Cookies to send, read from a Secret in the same namespace (never written inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_secret_ref: Option<SecretKeyRef>,

    /// What to extract, and which links to follow (at most 32 rules, first match wins). A page
    /// gets the rule a `follow` entry named for it, else the first rule whose `match` finds
    /// itself in its URL. With rules, a page's links are followed only through its rule's
    /// `follow` entries or when a rule's `match` claims them. Without rules every link within
    /// the hosts is followed and nothing is extracted. Regular expressions and selectors that do
    /// not compile are reported in the `RulesValid` condition and the task is not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(o, o.name == r.name))").message("rule names must be unique: two rules in spec.rules have the same name"))]
    #[x_kube(validation = Rule::new("self.all(r, !has(r.follow) || r.follow.all(f, !has(f.rule) || self.exists(o, o.name == f.rule)))").message("a follow entry's rule must name a rule in spec.rules"))]
    pub rules: Vec<ExtractionRule>,

    /// How many failed runs are retried before the crawl is `Failed` for good, as a Job's
    /// `backoffLimit` (default 6). A run fails when its crawl fails or cannot start (a missing
    /// cookie Secret, an unusable database); it is placed again after a back-off (10 s, 20 s,
    /// 40 s, ... at most 6 min), as a new assignment. After `backoffLimit + 1` failed runs of the
    /// same spec the phase is `Failed`: unassigned, never run again until the spec changes.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,

    /// A run that takes longer than this many seconds (counted from its start on its worker) is
    /// stopped and the crawl is `Failed` for good with reason `DeadlineExceeded`, as a Job's
    /// `activeDeadlineSeconds`: not retried, whatever `backoffLimit` says. Unset: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub active_deadline_seconds: Option<i64>,

    /// Delete this resource that many seconds after its crawl finished (phase `Succeeded` or
    /// `Failed`), as a Job's `ttlSecondsAfterFinished` (0: at once). Stored results are kept:
    /// the `postgres` sink's rows stay under the resource's uid, the `file` sink's lines where
    /// they were written. Unset: kept until deleted by hand. Not allowed with `spec.schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Run the crawl again and again, as a `CronJob`: each firing starts a new run from the seeds
    /// (`status.run` adds one). `CronJob`'s syntax: five fields `minute hour day-of-month month
    /// day-of-week` (e.g. `0 3 * * *`, `*/15 * * * MON-FRI`) or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`; as an extension, `@every <duration>` (e.g. `@every 30s`, at least
    /// 5s) fires that long after the previous firing. The first run is at the first firing; a
    /// finished run stays `Succeeded` (or `Failed`) until the next one, which `nextScheduleTime`
    /// shows. A spec change does not start a run of a scheduled crawl: the next firing runs the
    /// new spec. Errors the schema cannot see (a minute of 60) are reported in the `Scheduled`
    /// condition, and the crawl is not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(r"self.matches('^ *(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|@every +[0-9][0-9a-zA-Z. ]*|[0-9A-Za-z*?/,-]+( +[0-9A-Za-z*?/,-]+){4}) *$')").message("schedule must be five cron fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), a macro (@hourly, @daily, @weekly, @monthly, @yearly) or '@every <duration>' (e.g. '@every 30s'); set the time zone in spec.timeZone, not in the schedule"))]
    pub schedule: Option<String>,

    /// The IANA time zone `spec.schedule` is read in, e.g. `Europe/Paris`, as a `CronJob`'s
    /// `timeZone` (default `UTC`). A name the controller's time zone database does not know is
    /// reported in the `Scheduled` condition, and the crawl is not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')").message("timeZone must be an IANA time zone name such as UTC, Europe/Paris or America/New_York"))]
    pub time_zone: Option<String>,

    /// What a firing does while the previous run of a scheduled crawl has not finished:
    /// `Forbid` (the default) skips the firing (an Event and the `Scheduled` condition say so);
    /// `Replace` stops the running run on its worker and, once the worker confirmed the stop,
    /// starts a new one. `CronJob`'s `Allow` is not offered: a resource is one task with one
    /// frontier, and two runs of it cannot crawl at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,

    /// A firing that could not be acted on within this many seconds (no controller led, the
    /// schedule was suspended) is skipped, as a `CronJob`'s `startingDeadlineSeconds`. Unset: the
    /// most recent missed firing runs as soon as it can (earlier ones are not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub starting_deadline_seconds: Option<i64>,

    /// Use sitemaps to find pages (default false). The `Sitemap:` lines of the seed hosts'
    /// robots.txt are queued with the seeds, and a seed (or any page) that is a sitemap or a
    /// sitemap index (XML `<urlset>` / `<sitemapindex>`) queues the URLs it lists at its own
    /// depth (0 for a seed: they count as seeds for maxDepth), within allowedHosts, at most
    /// 50,000 per file and 50 MB read. With the postgres sink, a later run does not fetch again
    /// a URL whose `<lastmod>` is not newer than its stored fetch (counted in
    /// progress.pagesUnchanged). Compressed (.xml.gz) sitemaps are not read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sitemaps: bool,
}

/// What a firing of `spec.schedule` does while the previous run has not finished:
/// `Forbid` (the default) skips the firing (an Event and the `Scheduled` condition say so);
/// `Replace` stops the running run on its worker and, once the worker confirmed the stop,
/// starts a new one. `CronJob`'s `Allow` is not offered: a resource is one task with one
/// frontier, and two runs of it cannot crawl at once.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    /// Skip the firing; the running run goes on.
    #[default]
    Forbid,
    /// Stop the running run, then start a new one.
    Replace,
}

/// One extraction rule: which pages it applies to, which links to follow from them and which
/// fields to extract.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExtractionRule {
    /// Names the rule in records, in `follow` entries and in error messages.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]*$")
    )]
    pub name: String,
    /// A regular expression (Rust regex syntax) searched in the page URL, e.g.
    /// `/subject/[0-9]+/$`. Unset: the rule applies only to pages a `follow` entry names it for.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub url_match: Option<String>,
    /// Links to follow from pages of this rule (at most 16 entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub follow: Vec<FollowLinks>,
    /// Fields to extract, by name (at most 32). Each becomes a key of the record's `fields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z][A-Za-z0-9_-]*$') && size(k) <= 63)").message("field names use letters, digits, '_' and '-', start with a letter and are at most 63 characters"))]
    pub fields: BTreeMap<String, ExtractField>,
}

/// Links to follow: the `href` of every element the selector matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FollowLinks {
    /// A CSS selector, e.g. `a.next` or `ul.books a`. `:has()` is not supported.
    #[schemars(length(min = 1, max = 512))]
    pub selector: String,
    /// The rule for the pages reached. Unset: the first rule whose `match` finds itself in the
    /// link (or none: the page is fetched and recorded, nothing extracted or followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub rule: Option<String>,
}

/// One field to extract from a page.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExtractField {
    /// A CSS selector, e.g. `h1 span[property="v:itemreviewed"]`. `:has()` is not supported.
    #[schemars(length(min = 1, max = 512))]
    pub selector: String,
    /// What to take from the element: `text` (whitespace collapsed, the default), `html` (its
    /// inner HTML) or `attr:NAME` (an attribute, e.g. `attr:href`).
    #[serde(default = "default_field_value")]
    #[schemars(
        length(min = 1, max = 68),
        regex(pattern = r"^(text|html|attr:[A-Za-z0-9_:.-]+)$")
    )]
    pub value: String,
    /// A regular expression searched in the value: its first capture group (or the whole match)
    /// becomes the value, e.g. `([0-9.]+)` for a price; no match means no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: Option<String>,
    /// Take every matching element's value (a list, at most 100) instead of the first.
    #[serde(default)]
    pub multiple: bool,
    /// A page without this field is recorded as incomplete (`incomplete: true`, `missing`).
    #[serde(default)]
    pub required: bool,
}

/// Request rate of one task.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (0.01 to 100; 0.1 is one request every ten seconds).
    #[serde(default = "default_requests_per_second")]
    #[schemars(range(min = 0.01, max = 100.0))]
    // The API server checks `minimum` of an integer value against the minimum truncated to an
    // integer, so `requestsPerSecond: 0` passes `minimum: 0.01`; this rule closes that gap.
    #[x_kube(validation = Rule::new("self >= 0.01 && self <= 100.0").message("requestsPerSecond must be between 0.01 and 100"))]
    pub requests_per_second: f64,
    /// How many requests may go out back to back before the rate applies (1 to 100).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100))]
    pub burst: i32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
        }
    }
}

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key within the Secret whose value is sent.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Where a resource stands, as the controller last decided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not yet considered by a leading controller.
    Pending,
    /// Placed on a ready worker (`assignedWorker`).
    Assigned,
    /// Being moved off `assignedWorker` (a handoff): that worker was asked to stop the task and
    /// the new placement waits until it confirms the stop (`progress.released`) or its heartbeat
    /// lapses. The task counts on that worker until then; the `Assigned` condition says why.
    Releasing,
    /// No worker may take it now; the `Assigned` condition says why. Placed as soon as one can.
    Unschedulable,
    /// `spec.suspend` is true: unassigned on purpose.
    Suspended,
    /// A scheduled crawl (`spec.schedule`) that has not run yet: placed at its first firing
    /// (`nextScheduleTime`).
    Scheduled,
    /// The crawl of the current spec finished (its worker reported `Completed` for the current
    /// assignment): unassigned, it holds no room on any worker and never runs again, whatever
    /// happens to workers or controllers, until its spec changes (a `metadata.generation` above
    /// `completedGeneration`), or, with `spec.schedule`, until its next firing.
    /// `lastWorker` and `completedAt` say where and when.
    Succeeded,
    /// The last run failed (`lastFailure` says how) and fewer than `spec.backoffLimit` runs
    /// have failed: unassigned, it holds no room, and is placed again at `retryAt`.
    BackOff,
    /// The crawl of the current spec failed for good: more than `spec.backoffLimit` runs failed,
    /// or one exceeded `spec.activeDeadlineSeconds`. Unassigned, never run again until its spec
    /// changes; `failures`, `failedAt` and `lastFailure` say how.
    Failed,
}

/// What the controller (and later the worker) report about a resource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CrawlerResourceStatus {
    /// `Pending`, `Scheduled`, `Assigned`, `Releasing`, `Unschedulable`, `Suspended`, `BackOff`,
    /// `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Name of the worker Pod that runs the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_worker: Option<String>,
    /// podIP:port of that worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_address: Option<String>,
    /// When the current assignment was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Time>,
    /// How many times the task has been assigned (1 after the first placement; each move adds one).
    /// Identifies an assignment together with the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignments: Option<i64>,
    /// The crawl run this assignment belongs to: 1 for the first crawl, and one more for each
    /// new crawl from the seeds (a `spec.schedule` firing, or a spec change after the crawl
    /// finished). A move, a restart or a retry after a failed run continues the same run. The
    /// result store keeps, per page, the run that last fetched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The `metadata.generation` of the spec the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The worker Pod that ran the last run that completed (kept once the task is unassigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_worker: Option<String>,
    /// When the controller saw the last run complete (its phase became `Succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// The `metadata.generation` of the spec whose run completed. A spec change (a higher
    /// generation) runs the crawl again; nothing else does (with `spec.schedule`: only its next
    /// firing does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_generation: Option<i64>,
    /// Failed runs of the spec of `observedGeneration` (a spec change starts the count again).
    /// More than `spec.backoffLimit` make the crawl `Failed` for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i32>,
    /// The last failed run: its worker, its assignment, and what the worker said (kept after
    /// the next run started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// In phase `BackOff`: when the crawl is placed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// When the crawl failed for good (its phase became `Failed`); `spec.ttlSecondsAfterFinished`
    /// counts from here, or from `completedAt` for a crawl that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Time>,
    /// A scheduled crawl: the firing of `spec.schedule` that started the current (or last) run,
    /// as a `CronJob`'s `lastScheduleTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// A scheduled crawl: when a run last succeeded, as a `CronJob`'s `lastSuccessfulTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// A scheduled crawl: when `spec.schedule` fires next (none while `spec.suspend` is true or
    /// the schedule is invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The leader term the controller's last status write was decided in: the holder and
    /// `leaseTransitions` of the controller's leader-election Lease. The chart's admission policy
    /// `<fullname>-leader-fence` refuses a controller status write whose term is not the Lease's
    /// current one (a write held in the network past its leader's term).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_term: Option<ControllerTerm>,
    /// What the worker running the task reports (owned by the worker's field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TaskProgress>,
    /// Standard conditions, merged by type: `Assigned` is the controller's; `Complete` and
    /// `Failed` are the worker's (`kubectl wait --for=condition=Complete crr/NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A leader's term, stamped on every status write the controller makes (see
/// docs/architecture.md, Leader election).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ControllerTerm {
    /// The replica that made the write: the Lease's `holderIdentity` while it led.
    pub holder: String,
    /// The Lease's `leaseTransitions` during that term (one more for every acquisition).
    pub lease_transitions: i32,
}

/// What a worker reports about the task it runs, written under the worker's own field manager.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    /// Worker Pod that wrote this report.
    pub worker: String,
    /// The `status.assignments` number of the assignment this report is about: a report whose
    /// number is older than `status.assignments` is from a previous placement.
    pub assignment: i64,
    /// Running, Completed, Failed or Stopped.
    pub state: TaskState,
    /// The `metadata.generation` of the spec this run crawls: a `Completed` report finishes the
    /// crawl only for that spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Pages fetched (answered with any HTTP status): with the postgres sink, every page the task
    /// has stored, continued after a move or restart; with the file sink, since the task started
    /// on this worker.
    pub pages_fetched: i64,
    /// Requests that failed (timeouts, connection errors, robots refusals, ...).
    pub errors: i64,
    /// Records whose extraction rule's required fields were missing.
    #[serde(default)]
    pub incomplete: i64,
    /// Pages of this run found unchanged since an earlier run and left as stored: answered
    /// `304 Not Modified` to the stored `ETag` / `Last-Modified`, fetched with the stored body's
    /// hash, or skipped because their sitemap `lastmod` is not newer than the stored fetch.
    /// Only with the postgres sink (the file sink keeps no validators: always 0).
    #[serde(default)]
    pub pages_unchanged: i64,
    /// When the task last fetched a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    /// Why the task failed or stopped, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why a run ended `Failed`: `CannotStart`, `CrawlFailed` or `DeadlineExceeded` (the run
    /// took longer than `spec.activeDeadlineSeconds`: the crawl fails for good, not retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The worker let go of this assignment after the controller asked it to (phase
    /// `Releasing`): it stopped the task, wrote its results, and never runs this assignment
    /// again. The controller completes the handoff on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// A host of the task inside a 429/503 back-off window when this report was written: no
    /// request goes to it before `until`. A worker that takes the task over (a move, a restart)
    /// keeps the window too, for every task it runs on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_backoff: Option<HostBackoffReport>,
}

/// A host's back-off window, as `status.progress.hostBackoff` shows it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostBackoffReport {
    /// The host (lower case, no port).
    pub host: String,
    /// The end of the window: its `Retry-After`, or the exponential back-off's.
    pub until: Time,
    /// The status that opened it: 429 or 503.
    pub status: i32,
}

/// Lifecycle of a task on its worker.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskState {
    /// Crawling.
    #[default]
    Running,
    /// Finished: every page within the limits was fetched.
    Completed,
    /// The run failed: it could not start (missing Secret, output not writable), the crawl
    /// failed, or it exceeded `spec.activeDeadlineSeconds`; see `reason` and `message`. The
    /// worker never runs that assignment again: the controller retries with back-off.
    Failed,
    /// Stopped by its worker (shutdown, a release for a move or suspend, or the heartbeat could
    /// not be renewed).
    Stopped,
}

impl CrawlerResourceSpec {
    /// The crawl task the worker runs: `spec.task`, or the resource's name.
    pub fn task_name<'a>(&'a self, resource_name: &'a str) -> &'a str {
        self.task.as_deref().unwrap_or(resource_name)
    }

    /// `weight` as load units (the schema guarantees 1..=1000; a hand-made object with 0 or less
    /// still costs one unit, so it can never make a worker look emptier than it is).
    pub fn load_units(&self) -> u32 {
        u32::try_from(self.weight).unwrap_or(0).max(1)
    }
}

impl CrawlerResourceStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The worker's report that the run of the current assignment, crawling the spec of
    /// `generation`, completed: the report is of the assigned worker and of this very
    /// assignment, so no older run's report (another worker, another assignment, an earlier
    /// spec) can finish the crawl.
    pub fn completed_run(&self, generation: Option<i64>) -> Option<&TaskProgress> {
        self.progress.as_ref().filter(|p| {
            p.state == TaskState::Completed
                && self.assigned_worker.as_deref() == Some(p.worker.as_str())
                && self.assignments == Some(p.assignment)
                && p.generation.is_some()
                && p.generation == generation
        })
    }

    /// The worker's report that the run of the current assignment, crawling the spec of
    /// `generation`, failed (same test as [`Self::completed_run`]): the controller counts it
    /// once, then unassigns the task (back-off or `Failed` for good).
    pub fn failed_run(&self, generation: Option<i64>) -> Option<&TaskProgress> {
        self.progress.as_ref().filter(|p| {
            p.state == TaskState::Failed
                && self.assigned_worker.as_deref() == Some(p.worker.as_str())
                && self.assignments == Some(p.assignment)
                && p.generation.is_some()
                && p.generation == generation
        })
    }

    /// Whether the crawl of the spec of `generation` is over: the controller marked it
    /// `Succeeded` for that generation.
    pub fn succeeded(&self, generation: Option<i64>) -> bool {
        self.phase == Some(Phase::Succeeded)
            && self.completed_generation.is_some()
            && self.completed_generation == generation
    }

    /// Whether the crawl of the spec of `generation` failed for good: the controller marked it
    /// `Failed` when it acted on that generation.
    pub fn failed_for_good(&self, generation: Option<i64>) -> bool {
        self.phase == Some(Phase::Failed)
            && self.observed_generation.is_some()
            && self.observed_generation == generation
    }

    /// Whether a worker must not start (or start again) the run this status describes for the
    /// spec of `generation`: the crawl succeeded or failed for good, or its current run already
    /// reported `Completed` or `Failed` (the controller has not acted on it yet: it retries a
    /// failed run as a new assignment, after a back-off). A worker's belt and braces against a
    /// stale view.
    pub fn finished(&self, generation: Option<i64>) -> bool {
        self.succeeded(generation)
            || self.failed_for_good(generation)
            || self.completed_run(generation).is_some()
            || self.failed_run(generation).is_some()
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters
/// (Kubernetes' qualified name). CEL's RE2 has no look-around, so the lengths are separate checks.
const LABEL_KEY_RE: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 characters, alphanumeric at both ends.
const LABEL_VALUE_RE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// `spec.workerSelector`: the `LabelSelector` schema, bounded (the CEL cost budget needs every
/// list and string bounded) and with the rules the API server applies to a Pod's selectors, so
/// that a selector no worker could ever match for a reason of syntax is refused at apply, naming
/// the field (`spec.workerSelector.matchExpressions[0]: ...`).
fn worker_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let key_rule = |what: &str| {
        format!(
            "{what}.matches('{LABEL_KEY_RE}') && ({what}.indexOf('/') < 0 || {what}.indexOf('/') <= 253)"
        )
    };
    let value_rule = |what: &str| format!("{what}.matches('{LABEL_VALUE_RE}')");
    let key_message = "must be a valid label key: an optional DNS subdomain prefix and '/', then at \
        most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or \
        digit (e.g. crawler.dev/pool)";
    let value_message = "must be a valid label value: at most 63 characters of letters, digits, '-', \
        '_' or '.', starting and ending with a letter or digit (or empty)";
    schemars::json_schema!({
        "description": "Only worker Pods whose labels match may run this task (a standard label selector).",
        "type": "object",
        "nullable": true,
        "properties": {
            "matchLabels": {
                "description": "Labels a worker Pod must carry, all of them, with these values.",
                "type": "object",
                "maxProperties": 32,
                "additionalProperties": { "type": "string", "maxLength": 63 },
                "x-kubernetes-validations": [
                    {
                        "rule": format!("self.all(k, k.size() <= 317 && {})", key_rule("k")),
                        "message": format!("every key of matchLabels {key_message}"),
                    },
                    {
                        "rule": format!("self.all(k, {})", value_rule("self[k]")),
                        "message": format!("every value of matchLabels {value_message}"),
                    },
                ],
            },
            "matchExpressions": {
                "description": "Label requirements, all of which a worker Pod must meet.",
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key the requirement applies to.",
                            "type": "string",
                            "maxLength": 317,
                            "x-kubernetes-validations": [{
                                "rule": key_rule("self"),
                                "message": format!("key {key_message}"),
                            }],
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "maxLength": 16,
                            "x-kubernetes-validations": [{
                                "rule": "self in ['In', 'NotIn', 'Exists', 'DoesNotExist']",
                                "messageExpression": "'operator must be In, NotIn, Exists or DoesNotExist, not ' + self",
                            }],
                        },
                        "values": {
                            "description": "The values for In and NotIn (at least one); empty for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": 64,
                            "items": { "type": "string", "maxLength": 63 },
                            "x-kubernetes-validations": [{
                                "rule": format!("self.all(v, {})", value_rule("v")),
                                "message": format!("every value {value_message}"),
                            }],
                        },
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                            "messageExpression": "'operator ' + self.operator + ' needs at least one value in values'",
                        },
                        {
                            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                            "messageExpression": "'operator ' + self.operator + ' takes no values: remove values, or use In or NotIn'",
                        },
                    ],
                },
            },
        },
    })
}

fn default_field_value() -> String {
    "text".to_owned()
}
fn default_max_depth() -> i32 {
    1
}
fn default_weight() -> i32 {
    1
}
fn default_requests_per_second() -> f64 {
    1.0
}
fn default_burst() -> i32 {
    1
}
fn default_backoff_limit() -> i32 {
    6
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn crd_has_status_selectable_field_and_bounded_lists() {
        let crd = serde_json::to_value(CrawlerResource::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        assert_eq!(
            version["selectableFields"][0]["jsonPath"],
            ".status.assignedWorker"
        );
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["seeds"]["maxItems"], 100);
        assert_eq!(spec["seeds"]["items"]["maxLength"], 2048);
        assert_eq!(spec["weight"]["default"], 1);
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    }

    /// What a worker reads before it starts a task: only the current assignment's `Completed`
    /// report of the current spec, or `Succeeded` for the current spec, means "finished".
    #[test]
    fn a_status_says_finished_only_for_the_current_run_of_the_current_spec() {
        let status = |phase, (worker, assignment, generation), state| CrawlerResourceStatus {
            phase: Some(phase),
            assigned_worker: Some("w1".to_owned()),
            assignments: Some(2),
            completed_generation: (phase == Phase::Succeeded).then_some(3),
            progress: Some(TaskProgress {
                worker: String::from(worker),
                assignment,
                state,
                generation,
                ..TaskProgress::default()
            }),
            ..CrawlerResourceStatus::default()
        };
        let cases = [
            (
                Phase::Assigned,
                ("w1", 2, Some(3)),
                TaskState::Completed,
                true,
            ),
            (
                Phase::Releasing,
                ("w1", 2, Some(3)),
                TaskState::Completed,
                true,
            ),
            (
                Phase::Assigned,
                ("w1", 2, Some(3)),
                TaskState::Running,
                false,
            ),
            (Phase::Assigned, ("w1", 2, Some(3)), TaskState::Failed, true),
            (
                Phase::Assigned,
                ("w1", 1, Some(3)),
                TaskState::Failed,
                false,
            ),
            (
                Phase::Assigned,
                ("w1", 1, Some(3)),
                TaskState::Completed,
                false,
            ),
            (
                Phase::Assigned,
                ("w0", 2, Some(3)),
                TaskState::Completed,
                false,
            ),
            (
                Phase::Assigned,
                ("w1", 2, Some(2)),
                TaskState::Completed,
                false,
            ),
            (
                Phase::Assigned,
                ("w1", 2, None),
                TaskState::Completed,
                false,
            ),
            (
                Phase::Succeeded,
                ("w1", 2, Some(3)),
                TaskState::Running,
                true,
            ),
        ];
        for (phase, run, state, finished) in cases {
            let s = status(phase, run, state);
            assert_eq!(s.finished(Some(3)), finished, "{phase:?} {run:?} {state:?}");
            // A spec changed since (generation 4) is another crawl: never finished by these.
            assert!(!s.finished(Some(4)), "{phase:?} {run:?} {state:?}");
        }
    }

    #[test]
    fn minimal_spec_deserializes_with_defaults() {
        let spec: CrawlerResourceSpec =
            serde_json::from_value(serde_json::json!({"seeds": ["https://example.org/"]})).unwrap();
        assert_eq!(spec.weight, 1);
        assert_eq!(spec.max_depth, 1);
        assert_eq!(spec.backoff_limit, 6, "a Job's default");
        assert_eq!(spec.active_deadline_seconds, None);
        assert_eq!(spec.ttl_seconds_after_finished, None);
        assert_eq!(spec.rate_limit, RateLimit::default());
        assert_eq!(spec.task_name("task-test-4"), "task-test-4");
        assert!(!spec.suspend);
    }
}

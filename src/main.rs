//! `crawler-operator`: one binary, one subcommand per role.
// Doc comments in this file are `--help` text for people, not rustdoc: no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use crawler_core::{PolicyKind, WorkerSelector};
use crawler_crawl::AddressPolicy;
use crawler_operator::{
    controller,
    crd::CrawlerResource,
    leader::{LeaderElector, LeaseSettings},
    telemetry::{self, Health, Metrics, Role, Routes},
    worker,
};
use kube::CustomResourceExt;
use tokio::sync::watch;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Parser)]
#[command(
    name = "crawler-operator",
    version,
    about = "A distributed web crawler whose control plane is Kubernetes"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line. Level: RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CRAWLER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Elect a leader and assign every CrawlerResource to a worker Pod (run 2 replicas for HA).
    Controller(ControllerArgs),
    /// Run the crawl tasks assigned to this worker Pod (one process per worker Pod).
    Worker(WorkerArgs),
    /// Print the CrawlerResource CustomResourceDefinition as YAML (what crds/ holds).
    Crdgen,
    /// Apply the result store's schema migrations to a PostgreSQL database and exit (workers
    /// with --sink=postgres also apply them at start unless --migrate=false).
    Migrate(MigrateArgs),
    /// Print a crawl's records to stdout as JSON lines or CSV, streamed: from the PostgreSQL
    /// result store (--database-url), or from a file sink's output (--file, e.g. with kubectl
    /// exec in the worker Pod). docs/worker.md#reading-the-results.
    Results(ResultsArgs),
}

#[derive(Args)]
struct ResultsArgs {
    /// The CrawlerResource (looked up through the API server for its uid, which keys its pages
    /// in the store). With --uid: the name is not looked up. With --file: the task name the
    /// records carry (the resource's name unless spec.task says otherwise).
    name: String,
    /// The resource's namespace (default: the kubeconfig's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output: one JSON object per line, or CSV with a header (RFC 4180).
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Only the pages last fetched by crawl run N (status.run: 1 for the first crawl, one more
    /// for each new crawl from the seeds). A page the run found unchanged is in it too
    /// (unchanged: true, with the fields stored when it last changed); a page the run no longer
    /// reached is not.
    #[arg(long, conflicts_with = "file")]
    run: Option<i64>,
    /// Only the pages last stored by assignment N (status.assignments: one run may span several
    /// assignments when the task moves).
    #[arg(long, conflicts_with = "file")]
    assignment: Option<i64>,
    /// Only the extracted fields (spec.rules): per line the fields object, or in CSV one column
    /// per field name; pages without fields are left out.
    #[arg(long)]
    fields_only: bool,
    /// The resource's metadata.uid, for a resource deleted since (its pages stay in the store
    /// under its uid); the API server is not asked.
    #[arg(long, conflicts_with = "file")]
    uid: Option<String>,
    /// Read a file sink's JSON lines (the worker's --output) instead of the store, keeping the
    /// records whose task is NAME.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The result store's connection string, as the worker has it (env CRAWLER_DATABASE_URL).
    #[arg(long, env = "CRAWLER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    tls: DatabaseTlsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Args)]
struct MigrateArgs {
    /// PostgreSQL connection string, e.g. postgres://user:password@host:5432/crawler. Give it
    /// through the environment (a Secret in a Pod), not on the command line.
    #[arg(long, env = "CRAWLER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    tls: DatabaseTlsArgs,
}

/// TLS to PostgreSQL (docs/worker.md#tls-to-postgresql). Each may also be given in the
/// connection string (sslmode=, sslrootcert=); given in both places, they must agree.
#[derive(Args)]
struct DatabaseTlsArgs {
    /// TLS to the database, as libpq's sslmode: disable; prefer (the default: TLS when the
    /// server offers it, its certificate checked only with a CA); require (always TLS, the
    /// certificate checked only with a CA); verify-ca (always TLS, the certificate must chain to
    /// --database-ca-file); verify-full (and must name the host connected to).
    #[arg(long, env = "CRAWLER_DATABASE_SSLMODE")]
    database_sslmode: Option<crawler_operator::store::SslMode>,
    /// The CA certificate(s), PEM, the database server's certificate must chain to (what
    /// sslrootcert= in the connection string names). The chart mounts it from the Secret named
    /// by worker.postgres.tls.caSecretName.
    #[arg(long, env = "CRAWLER_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
}

impl DatabaseTlsArgs {
    fn options(&self) -> crawler_operator::store::TlsOptions {
        crawler_operator::store::TlsOptions {
            sslmode: self.database_sslmode,
            ca_file: self.database_ca_file.clone(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SinkKind {
    /// JSON lines to --output (stdout or a file). No fencing; a moved task starts again.
    File,
    /// The PostgreSQL result store at --database-url: fenced writes, resume after a move.
    Postgres,
}

#[derive(Args)]
struct WorkerArgs {
    /// Name of the worker Pod this process plays (assignments name it).
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// Namespace of that Pod.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// UID of that Pod (downward API metadata.uid): the Pod then owns the heartbeat Lease, which
    /// is garbage-collected with it.
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
    /// Where page records go: JSON lines (file) or the PostgreSQL result store (postgres).
    #[arg(long, value_enum, default_value_t = SinkKind::File, env = "CRAWLER_SINK")]
    sink: SinkKind,
    /// With --sink=file: "-" for stdout, or a file path (appended to).
    #[arg(long, default_value = "-", env = "CRAWLER_OUTPUT")]
    output: String,
    /// With --sink=postgres: the connection string, e.g.
    /// postgres://user:password@host:5432/crawler. Give it through the environment (the chart
    /// reads it from a Secret), never inline.
    #[arg(long, env = "CRAWLER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    database_tls: DatabaseTlsArgs,
    /// With --sink=postgres: apply the schema migrations at start (false: run
    /// `crawler-operator migrate` yourself, e.g. when the worker's user may not create tables).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "CRAWLER_MIGRATE")]
    migrate: bool,
    /// With --sink=postgres: how often a task's pages and frontier are written (at most this
    /// much crawling is fetched again after a move).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// Heartbeat Lease duration: the controller treats the worker as gone this long after its last
    /// renewal; the worker stops its tasks after half of it without a renewal.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    heartbeat_duration: Duration,
    /// Address of the HTTP server for /metrics (and /healthz, /readyz unless --probe-addr is set).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// A separate address for /healthz and /readyz (default: served with /metrics).
    #[arg(long, env = "CRAWLER_PROBE_ADDR")]
    probe_addr: Option<SocketAddr>,
    /// How often a running task's page counts are written into its status. A change of state
    /// (started, waiting for the database, a host backing off, stopped, finished) is written at
    /// once, whatever this says; the live counts are in the worker's metrics.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    progress_interval: Duration,
    /// Use only cookie Secrets labelled crawler.dev/cookie=true: a task whose
    /// spec.cookieSecretRef names another Secret fails, saying so (false: any Secret this worker
    /// may read).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "CRAWLER_REQUIRE_COOKIE_LABEL")]
    require_cookie_label: bool,
    /// Internal address ranges a crawl may connect to, comma-separated CIDRs (e.g.
    /// 10.20.0.0/16,fd00:20::/32; a bare address is one host). Without it a crawl refuses every
    /// loopback, private, link-local, CGNAT, multicast and other non-public address: the page's
    /// record says blocked_address.
    #[arg(long, default_value = "", env = "CRAWLER_ALLOW_INTERNAL_CIDRS")]
    allow_internal_cidrs: AddressPolicy,
    #[command(flatten)]
    polite: PoliteArgs,
}

/// What every host sees of this worker, whatever its tasks ask (see docs/worker.md#politeness).
#[derive(Args)]
struct PoliteArgs {
    /// The User-Agent of every request, name/version (+contact URL) by convention, e.g.
    /// "examplebot/1.0 (+https://example.com/bot)"; robots.txt groups are matched on its name.
    /// The worker adds "(worker <pod>; assignment <n>)".
    #[arg(long, default_value = crawler_crawl::DEFAULT_USER_AGENT, env = "CRAWLER_USER_AGENT")]
    user_agent: String,
    /// Most requests per second to one host from all the tasks of this worker (each task's
    /// spec.rateLimit still applies to the task: a resource can only be slower). The delay
    /// between two requests to a host counts from the end of one as well as the start.
    #[arg(long, default_value_t = 2.0)]
    host_requests_per_second: f64,
    /// Most requests in flight to one host at once from all the tasks of this worker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    host_max_in_flight: u32,
    /// A robots.txt Crawl-delay is honoured up to this (a longer one is taken as this).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_crawl_delay: Duration,
    /// How long a fetched robots.txt is used by the tasks of this worker (RFC 9309: at most 24h).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    robots_ttl: Duration,
    /// After a 429 or 503 without Retry-After: the first window during which the host gets no
    /// request; it doubles (--backoff-factor) with each such answer in a row.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    backoff_start: Duration,
    #[arg(long, default_value_t = 2.0)]
    backoff_factor: f64,
    /// The longest back-off window; also the most a Retry-After is honoured.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Each back-off window is moved by up to this fraction either way.
    #[arg(long, default_value_t = 0.1)]
    backoff_jitter: f64,
    /// Retries of a page after a connect error, a timeout, a reset, a 429 or a 5xx.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    max_retries: u32,
    /// The wait before the first retry of a page; it doubles for each next one.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    retry_delay: Duration,
}

impl PoliteArgs {
    /// The per-host policy and the retries, checked: a value that makes no sense is refused with
    /// the flag's name.
    fn policy(&self) -> anyhow::Result<(crawler_crawl::HostPolicy, crawler_crawl::Retries)> {
        let rate = self.host_requests_per_second;
        let min_delay = (rate.is_finite() && rate > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
            .flatten()
            .with_context(|| {
                format!("--host-requests-per-second {rate}: give a number of requests per second above 0 (0.5 is one every 2 s)")
            })?;
        anyhow::ensure!(
            self.backoff_factor.is_finite() && self.backoff_factor >= 1.0,
            "--backoff-factor {}: give a factor of 1 or more (2 doubles each window)",
            self.backoff_factor
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.backoff_jitter),
            "--backoff-jitter {}: give a fraction between 0 and 1 (0.1 is 10 %)",
            self.backoff_jitter
        );
        anyhow::ensure!(
            self.robots_ttl <= Duration::from_secs(24 * 3600),
            "--robots-ttl {:?}: RFC 9309 asks crawlers not to use a robots.txt for more than 24h",
            self.robots_ttl
        );
        anyhow::ensure!(
            crawler_crawl::CrawlConfig::new("check", ["http://example.com/"])
                .user_agent_checked(&self.user_agent),
            "--user-agent {:?}: a header value cannot carry these characters",
            self.user_agent
        );
        let backoff = crawler_crawl::Backoff {
            start: self.backoff_start,
            factor: self.backoff_factor,
            cap: self.backoff_cap,
            jitter: self.backoff_jitter,
        };
        let policy = crawler_crawl::HostPolicy {
            min_delay,
            max_in_flight: self.host_max_in_flight as usize,
            max_crawl_delay: self.max_crawl_delay,
            backoff,
            max_retry_after: self.backoff_cap,
            robots_ttl: self.robots_ttl,
        };
        let retries = crawler_crawl::Retries {
            max_retries: self.max_retries,
            backoff: crawler_crawl::Backoff {
                start: self.retry_delay,
                ..crawler_crawl::Retries::default().backoff
            },
        };
        Ok((policy, retries))
    }
}

#[derive(Args)]
struct ControllerArgs {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Label selector that makes a Pod a worker (the text form kubectl -l takes, e.g.
    /// "pool in (a,b),!legacy"); one the API server would refuse stops the controller at start.
    #[arg(long, default_value = "app.kubernetes.io/component=crawler-worker")]
    worker_selector: String,
    /// Port of the worker process's HTTP server (its --metrics-addr); `status.assignedAddress`
    /// is podIP:port.
    #[arg(long, default_value_t = 9090)]
    worker_port: u16,
    /// Placement policy: least-loaded (spread) or bin-pack (fill the fullest worker that fits).
    #[arg(long, default_value = "least-loaded")]
    policy: PolicyKind,
    /// Status writes in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Bound on each status write; never past the end of the leader's term (a write that could
    /// not finish within it is not sent).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    write_timeout: Duration,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "crawler-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else --namespace, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else hostname-pid).
    #[arg(long)]
    identity: Option<String>,
    /// How long standbys wait after the leader's last renewal before taking over.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal (< lease duration).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// Address of the HTTP server for /metrics (and /healthz, /readyz unless --probe-addr is set).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// A separate address for /healthz and /readyz (default: served with /metrics).
    #[arg(long, env = "CRAWLER_PROBE_ADDR")]
    probe_addr: Option<SocketAddr>,
    /// Interval between renewals / acquisition attempts (< renew deadline).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
    /// Move placed tasks to even out load, e.g. after workers join (off: nothing well placed
    /// ever moves). Each move restarts the task on its new worker, so it is budgeted and damped
    /// by the flags below. Not with --policy=bin-pack.
    #[arg(long, env = "CRAWLER_REBALANCE")]
    rebalance: bool,
    /// With --rebalance: moves per second on average (a token bucket holding one second's
    /// worth, at least one move); e.g. 0.2 for one move every 5 s.
    #[arg(long, default_value_t = controller::rebalance::DEFAULT_MOVES_PER_SECOND, requires = "rebalance")]
    rebalance_moves_per_second: f64,
    /// With --rebalance: a task moves only from a worker carrying more than this many load units
    /// above the target, and only if the move narrows the gap (hysteresis).
    #[arg(long, default_value_t = controller::rebalance::DEFAULT_THRESHOLD, requires = "rebalance")]
    rebalance_threshold: u64,
    /// With --rebalance: a task placed or moved less than this long ago stays where it is.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "rebalance")]
    rebalance_cooldown: Duration,
    /// How long a crawl whose run failed waits before it is placed again, after its first
    /// failure; doubling with each failure, up to --backoff-max (a Job's: 10 s, 20 s, 40 s, ...).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// The longest wait between a failed run and the next (a Job's: 6 min).
    #[arg(long, default_value = "6m", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// Host affinity: a task goes only to the worker that runs the tasks sharing a host with it
    /// (its hosts: spec.allowedHosts, else its seeds' hosts), so each host is crawled by one
    /// worker process and the workers' per-host budget (--host-requests-per-second,
    /// --host-max-in-flight) holds for the whole installation. false: the budget holds per
    /// worker only (N workers crawling a host may send it N times the budget).
    #[arg(long, env = "CRAWLER_HOST_AFFINITY", default_value_t = true, action = clap::ArgAction::Set)]
    host_affinity: bool,
    /// The longest --heartbeat-duration of this installation's workers. A controller that
    /// starts waits half of it before it takes a worker Pod whose heartbeat Lease it never saw for
    /// one without a heartbeat (a live worker re-creates a deleted Lease within a fifth of it);
    /// too short a value could move a task off a worker that still runs it.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    worker_heartbeat_duration: Duration,
}

/// Exit status of a configuration the process cannot run with: flags, environment, kubeconfig or
/// in-cluster settings (clap's usage errors exit with 2 as well). Fix the configuration.
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit status of a failure while running (API server unreachable for too long, a port in use,
/// a task that panicked). Restarting may help.
const EXIT_RUNTIME: u8 = 1;

/// Marks an error as something asked for that does not exist (no such resource, no stored
/// pages): exit status 1, like `kubectl get` of a missing object.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// Marks an error as the user's configuration rather than a failure while running.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadConfig(anyhow::Error);

fn bad_config(error: impl Into<anyhow::Error>) -> anyhow::Error {
    BadConfig(error.into()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Crdgen => crdgen(),
        Command::Controller(args) => tokio::runtime::Runtime::new()
            .context("cannot start the Tokio runtime")
            .and_then(|rt| rt.block_on(run_controller(args))),
        Command::Worker(args) => tokio::runtime::Runtime::new()
            .context("cannot start the Tokio runtime")
            .and_then(|rt| rt.block_on(run_worker(args))),
        Command::Migrate(args) => tokio::runtime::Runtime::new()
            .context("cannot start the Tokio runtime")
            .and_then(|rt| rt.block_on(run_migrate(args))),
        Command::Results(args) => tokio::runtime::Runtime::new()
            .context("cannot start the Tokio runtime")
            .and_then(|rt| rt.block_on(run_results(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, kind) = if e.chain().any(<dyn std::error::Error>::is::<BadConfig>) {
                (EXIT_BAD_CONFIG, "configuration")
            } else if e.chain().any(|e| {
                e.is::<NotFound>()
                    || e.downcast_ref::<crawler_operator::store::export::ExportError>()
                        .is_some_and(crawler_operator::store::export::ExportError::is_empty)
            }) {
                (EXIT_RUNTIME, "not found")
            } else {
                (EXIT_RUNTIME, "runtime")
            };
            // Once, through the log: with --log-format json this is one JSON object like every
            // other line on stderr.
            tracing::error!(exit_code = code, kind, "{e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colours only on a terminal: log files and collectors get plain text.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
}

fn crdgen() -> anyhow::Result<()> {
    let yaml = serde_saphyr::to_string(&CrawlerResource::crd())
        .context("cannot render the CRD as YAML")?;
    print!("{yaml}");
    Ok(())
}

/// `--worker-selector`, checked: it is sent to the API server as it is, and a selector it refuses
/// would fail every Pod watch, retried forever. Refused here instead, with the reason.
fn check_worker_selector(selector: &str) -> anyhow::Result<()> {
    WorkerSelector::parse_text(selector).map_err(|e| {
        bad_config(anyhow::anyhow!(
            "--worker-selector {selector:?} is not a label selector the API server accepts: {e}; \
             write one such as app.kubernetes.io/component=crawler-worker or \"pool in \
             (a,b),!legacy\""
        ))
    })?;
    Ok(())
}

/// `--backoff-base` and `--backoff-max`, checked.
fn retry_backoff(args: &ControllerArgs) -> anyhow::Result<controller::index::RetryBackoff> {
    if args.backoff_base.is_zero() || args.backoff_max < args.backoff_base {
        return Err(bad_config(anyhow::anyhow!(
            "--backoff-base ({:?}) must be above zero and at most --backoff-max ({:?})",
            args.backoff_base,
            args.backoff_max
        )));
    }
    Ok(controller::index::RetryBackoff {
        base: args.backoff_base,
        max: args.backoff_max,
    })
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let mut lease = LeaseSettings::new(lease_namespace, &args.lease_name, &identity);
    lease.lease_duration = args.lease_duration;
    lease.renew_deadline = args.renew_deadline;
    lease.retry_period = args.retry_period;
    lease
        .validate()
        .context("invalid leader-election flags")
        .map_err(bad_config)?;

    check_worker_selector(&args.worker_selector)?;

    let rebalance = args
        .rebalance
        .then_some(controller::rebalance::RebalanceSettings {
            moves_per_second: args.rebalance_moves_per_second,
            threshold: args.rebalance_threshold,
            cooldown: args.rebalance_cooldown,
        });
    if let Some(rebalance) = &rebalance {
        rebalance.validate(args.policy).map_err(bad_config)?;
    }

    let retry_backoff = retry_backoff(&args)?;
    let client = kube_client().await?;
    let settings = controller::Settings {
        namespace: args.namespace,
        worker_selector: args.worker_selector,
        worker_port: args.worker_port,
        policy: args.policy,
        concurrency: usize::from(args.concurrency),
        write_timeout: args.write_timeout,
        instance: identity,
        rebalance,
        retry_backoff,
        host_affinity: args.host_affinity,
        unseen_heartbeat_wait: crawler_operator::heartbeat::unseen_wait(
            args.worker_heartbeat_duration,
        ),
    };

    let elector = LeaderElector::new(client.clone(), lease)
        .context("invalid leader-election flags")
        .map_err(bad_config)?;
    let leadership = elector.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    // The Lease is released only after the controller stopped and its writes in flight ended
    // (bounded by the write timeout), so that none lands after a standby took over.
    let (release_tx, release_rx) = watch::channel(false);
    let mut election = tokio::spawn(elector.run(stopped(release_rx)));
    let signals = tokio::spawn({
        let stop_tx = std::sync::Arc::clone(&stop_tx);
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        }
    });

    let metrics = Metrics::new(Role::Controller);
    let health = Health::new();
    let http = serve_telemetry(
        args.metrics_addr,
        args.probe_addr,
        &metrics,
        &health,
        &stop_rx,
    )
    .await?;
    let controller = controller::run(
        client,
        settings,
        leadership,
        metrics,
        health,
        stopped(stop_rx),
    );
    tokio::pin!(controller);
    let result = tokio::select! {
        r = &mut controller => {
            // The controller stopped (shutdown or failure) and its writes are done: release the
            // Lease so a standby takes over at once rather than after the lease duration.
            signals.abort();
            let _ = stop_tx.send(true);
            let _ = release_tx.send(true);
            r
        }
        r = &mut election => match r {
            // The elector returns Ok only once released, after the controller stopped.
            Ok(Ok(())) => controller.await,
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("leader election failed")),
            Err(e) => Err(anyhow::Error::new(e).context("leader election task failed")),
        },
    };
    for server in http {
        server.abort();
    }
    let _ = release_tx.send(true);
    if !election.is_finished() {
        // Wake the elector (if the controller ended on its own) and let it release the Lease.
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    result
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    if args.heartbeat_duration < Duration::from_secs(1) {
        return Err(bad_config(anyhow::anyhow!(
            "--heartbeat-duration must be at least 1s (got {:?})",
            args.heartbeat_duration
        )));
    }
    let name_len = crawler_operator::heartbeat::lease_name(&args.pod_name).len();
    if name_len > 253 {
        return Err(bad_config(anyhow::anyhow!(
            "the Pod name {:?} is too long for its heartbeat Lease name ({name_len} > 253 characters)",
            args.pod_name
        )));
    }
    let (policy, retries) = args.polite.policy().map_err(bad_config)?;
    let client = kube_client().await?;
    let output = match (args.sink, args.output.as_str()) {
        (SinkKind::Postgres, _) => {
            let url = args.database_url.as_deref().ok_or_else(|| {
                bad_config(anyhow::anyhow!(
                    "--sink=postgres needs --database-url (or CRAWLER_DATABASE_URL; the chart sets \
                     it from the Secret named by worker.postgres.secretName)"
                ))
            })?;
            worker::Output::Postgres(
                crawler_operator::store::Store::new(
                    url,
                    &args.database_tls.options(),
                    args.migrate,
                )
                .map_err(bad_config)?,
            )
        }
        (SinkKind::File, "-") => worker::Output::Stdout,
        (SinkKind::File, path) => worker::Output::File(path.into()),
    };
    let metrics = Metrics::new(Role::Worker);
    let politeness = crawler_crawl::Politeness::with_observer(
        policy,
        Some(std::sync::Arc::new(metrics.clone())),
    );
    let settings = worker::Settings {
        pod_name: args.pod_name,
        pod_uid: args.pod_uid.filter(|uid| !uid.is_empty()),
        namespace: args.namespace,
        output,
        heartbeat_duration: args.heartbeat_duration,
        progress_interval: args.progress_interval,
        checkpoint_interval: args.checkpoint_interval,
        require_cookie_label: args.require_cookie_label,
        address_policy: args.allow_internal_cidrs,
        politeness,
        retries,
        user_agent: args.polite.user_agent,
    };
    let health = Health::new();
    // The worker's servers run until the process ends: aborted below.
    let (_keep, never) = watch::channel(false);
    let http = serve_telemetry(
        args.metrics_addr,
        args.probe_addr,
        &metrics,
        &health,
        &never,
    )
    .await?;
    // Hosts in a back-off window change with time, not with events: sampled.
    let backoff_gauge = {
        let (politeness, metrics) = (settings.politeness.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.set_hosts_in_backoff(politeness.hosts_in_backoff());
            }
        })
    };
    let result = worker::run(client, settings, metrics, health, shutdown_signal()).await;
    backoff_gauge.abort();
    for server in http {
        server.abort();
    }
    result
}

/// The Kubernetes client: in a Pod from its ServiceAccount (`KUBERNETES_SERVICE_HOST`/`_PORT`, the
/// token and CA under /var/run/secrets/kubernetes.io/serviceaccount), elsewhere from $KUBECONFIG
/// or ~/.kube/config. Failing here is a configuration problem.
async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        bad_config(anyhow::Error::new(e).context(
            "cannot build a Kubernetes client (in a Pod: mount its ServiceAccount token and set \
             KUBERNETES_SERVICE_HOST/PORT; elsewhere: set $KUBECONFIG or write ~/.kube/config)",
        ))
    })
}

/// Binds the metrics address and, when given, the separate probe address (both before anything
/// else starts, so a port in use fails fast) and serves them until `stop` turns true.
async fn serve_telemetry(
    metrics_addr: SocketAddr,
    probe_addr: Option<SocketAddr>,
    metrics: &Metrics,
    health: &Health,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let mut servers = Vec::new();
    match probe_addr {
        None => servers.push(telemetry::bind(metrics_addr).await?),
        Some(probe_addr) => {
            if probe_addr == metrics_addr {
                return Err(bad_config(anyhow::anyhow!(
                    "--probe-addr {probe_addr} is the same as --metrics-addr: leave it out to serve \
                     the probes with /metrics, or give another port"
                )));
            }
            servers.push(telemetry::bind_routes(metrics_addr, Routes::Metrics).await?);
            servers.push(telemetry::bind_routes(probe_addr, Routes::Probes).await?);
        }
    }
    Ok(servers
        .into_iter()
        .map(|server| {
            tokio::spawn(server.serve(metrics.clone(), health.clone(), stopped(stop.clone())))
        })
        .collect())
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    use crawler_operator::store;
    let mut client = store::connect(
        &args.database_url,
        &args.tls.options(),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| match e {
        // A setting to fix, TLS included: a refused certificate is not worth retrying.
        store::StoreError::BadUrl(_)
        | store::StoreError::Tls(_)
        | store::StoreError::TlsConnect(_) => bad_config(e),
        other => other.into(),
    })?;
    let applied = store::migrate(&mut client).await.map_err(|e| match e {
        store::StoreError::Migration {
            version,
            name,
            source,
        } => anyhow::anyhow!(
            "migration {version} ({name}) failed: {}",
            store::describe(&source)
        ),
        store::StoreError::Query(source) => anyhow::anyhow!("{}", store::describe(&source)),
        other => other.into(),
    })?;
    let latest = store::MIGRATIONS.last().map_or(0, |m| m.0);
    if applied.is_empty() {
        println!("the schema is current (version {latest})");
    } else {
        println!("applied migrations {applied:?}; the schema is at version {latest}");
    }
    Ok(())
}

/// `results`: a crawl's records to stdout (docs/worker.md#reading-the-results).
async fn run_results(args: ResultsArgs) -> anyhow::Result<()> {
    use crawler_operator::store::{self, export};
    let format = match args.format {
        ExportFormat::Jsonl => export::Format::Jsonl,
        ExportFormat::Csv => export::Format::Csv,
    };
    let out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    if let Some(path) = &args.file {
        return quietly(export_file(&args, path, format, out)).map(drop);
    }
    let url = args.database_url.as_deref().ok_or_else(|| {
        bad_config(anyhow::anyhow!(
            "results needs the result store's connection string: --database-url or \
             CRAWLER_DATABASE_URL (what the workers' Secret holds, worker.postgres.secretName); \
             with the file sink, read the worker's output with --file instead \
             (docs/worker.md#reading-the-results)"
        ))
    })?;
    let db = store::Database::new(url, &args.tls.options(), Duration::from_secs(10))
        .map_err(bad_config)?;
    let (namespace, uid, resource) = resolve_task(&args, &db).await?;
    let client = db.connect().await.map_err(|e| match db.tls_failure(&e) {
        Some(why) => bad_config(anyhow::anyhow!(store::StoreError::TlsConnect(why))),
        None => anyhow::Error::new(store::StoreError::Connect(e)),
    })?;
    export::prepare_session(&client).await?;
    let selection = export::Selection {
        namespace: namespace.clone(),
        uid: uid.clone(),
        run: args.run,
        assignment: args.assignment,
    };
    let names = match (args.fields_only, format) {
        (false, _) => None,
        (true, export::Format::Jsonl) => Some(Vec::new()),
        (true, export::Format::Csv) => Some(export::field_names(&client, &selection).await?),
    };
    let mut writer = export::Writer::new(out, format, export::STORE_COLUMNS, names);
    let written = async {
        export::from_store(&client, &selection, &mut writer).await?;
        let rows = writer.rows();
        writer.finish()?;
        Ok(rows)
    };
    // Written, or the reader left: done.
    if quietly(written.await)? != Some(0) {
        return Ok(());
    }
    let who = match &resource {
        Some(name) => format!("crawlerresource {namespace}/{name} (uid {uid})"),
        None => format!("uid {uid} in namespace {namespace}"),
    };
    let why = match export::task_summary(&client, &namespace, &uid).await? {
        None => format!(
            "the result store holds no pages of {who}: it has not run with --sink=postgres \
             against this database (with the file sink, read the worker's output with --file)"
        ),
        Some(task) if args.run.is_some() => format!(
            "no pages of {who} were last fetched by run {}; its latest run in the store is {} \
             (leave out --run for every stored page)",
            args.run.unwrap_or_default(),
            task.run
        ),
        Some(task) if args.assignment.is_some() => format!(
            "no pages of {who} were last stored by assignment {}; its latest assignment in the \
             store is {}",
            args.assignment.unwrap_or_default(),
            task.assignment
        ),
        Some(_) if args.fields_only => format!(
            "no page of {who} has extracted fields (spec.rules); leave out --fields-only for \
             whole records"
        ),
        Some(_) => format!("the result store holds no visited pages of {who} yet"),
    };
    Err(NotFound(why).into())
}

/// An export's outcome for the command: a reader that went away (`| head`) ends it quietly,
/// with status 0 (`Ok(None)`).
fn quietly<T>(
    result: Result<T, crawler_operator::store::export::ExportError>,
) -> anyhow::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_closed_output() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `results --file`: the records of task NAME in a file sink's output.
fn export_file(
    args: &ResultsArgs,
    path: &std::path::Path,
    format: crawler_operator::store::export::Format,
    out: impl std::io::Write,
) -> Result<(), crawler_operator::store::export::ExportError> {
    use crawler_operator::store::export::{self, ExportError};
    let names = match (args.fields_only, format) {
        (false, _) => None,
        (true, export::Format::Jsonl) => Some(Vec::new()),
        (true, export::Format::Csv) => Some(export::file_field_names(path, &args.name)?),
    };
    let mut writer = export::Writer::new(out, format, export::FILE_COLUMNS, names);
    export::from_file(path, &args.name, &mut writer)?;
    let rows = writer.rows();
    writer.finish()?;
    if rows == 0 {
        let what = if args.fields_only {
            "with extracted fields "
        } else {
            ""
        };
        return Err(ExportError::Empty(format!(
            "{} holds no records {what}of task {:?} (a record names its task: the resource's \
             name unless spec.task sets another; `kubectl get crr -o wide` shows TASK)",
            path.display(),
            args.name
        )));
    }
    Ok(())
}

/// The task whose pages to read: the namespace, the resource uid, and the resource's name when
/// it was looked up. A name the API server does not know is an error that names the uids the
/// store holds under that name (a deleted resource's pages stay).
async fn resolve_task(
    args: &ResultsArgs,
    db: &crawler_operator::store::Database,
) -> anyhow::Result<(String, String, Option<String>)> {
    use crawler_operator::store::export;
    if let Some(uid) = &args.uid {
        let namespace = match &args.namespace {
            Some(ns) => ns.clone(),
            None => kube::Config::infer()
                .await
                .map_or_else(|_| "default".to_owned(), |c| c.default_namespace),
        };
        return Ok((namespace, uid.clone(), None));
    }
    let client = kube_client().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: kube::Api<CrawlerResource> = kube::Api::namespaced(client, &namespace);
    let found = api.get_opt(&args.name).await.with_context(|| {
        format!(
            "cannot read crawlerresource {namespace}/{} from the API server",
            args.name
        )
    })?;
    if let Some(uid) = found.and_then(|r| r.metadata.uid) {
        return Ok((namespace, uid, Some(args.name.clone())));
    }
    let known = match db.connect().await {
        Ok(client) => export::uids_named(&client, &namespace, &args.name)
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let hint = if known.is_empty() {
        " (check the name and -n; for a deleted resource, pass its uid with --uid)".to_owned()
    } else {
        let list: Vec<String> = known
            .iter()
            .map(|(uid, at)| format!("{uid} (claimed {at})"))
            .collect();
        format!(
            "; the result store holds pages of a deleted resource of that name: uid {}: pass \
             --uid",
            list.join(", ")
        )
    };
    Err(NotFound(format!(
        "no crawlerresource {:?} in namespace {namespace:?}{hint}",
        args.name
    ))
    .into())
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "crawler-operator".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

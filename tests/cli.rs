//! The command line's failure contract (README "Exit status"): a fatal error is printed once, in
//! the chosen log format (with `--log-format json`, one JSON object per line like every other log
//! line), and the exit status says whether the configuration is wrong (2) or running failed (1).
//! The real binary, no control plane needed: every case fails before talking to one.

use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_crawler-operator");

/// Runs the binary with `args` in an environment without any Kubernetes configuration except
/// what `env` adds.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"));
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The one line on stderr, parsed: asserts there is exactly one and that it is JSON.
fn one_json_line(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", lines[0]))
}

#[test]
fn bad_flags_exit_2_with_one_json_line_naming_the_flag() {
    let out = run(
        &[
            "--log-format=json",
            "worker",
            "--pod-name=w",
            "--namespace=n",
            "--heartbeat-duration=100ms",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = one_json_line(&out);
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["exit_code"], 2, "{line}");
    assert_eq!(line["fields"]["kind"], "configuration", "{line}");
    let message = line["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains("--heartbeat-duration must be at least 1s"),
        "{message}"
    );

    let out = run(
        &[
            "--log-format=json",
            "controller",
            "--lease-duration=10s",
            "--renew-deadline=20s",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = one_json_line(&out)["fields"]["message"].to_string();
    assert!(
        message.contains("invalid leader-election flags"),
        "{message}"
    );
}

#[test]
fn bad_rebalance_flags_exit_2_saying_what_to_do() {
    for (args, says) in [
        (
            &["--rebalance", "--rebalance-moves-per-second=0"][..],
            "--rebalance-moves-per-second must be a number above 0",
        ),
        (
            &["--rebalance", "--policy=bin-pack"][..],
            "use --policy=least-loaded with --rebalance, or leave --rebalance off",
        ),
    ] {
        let mut all = vec!["--log-format=json", "controller"];
        all.extend_from_slice(args);
        let out = run(&all, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let message = one_json_line(&out)["fields"]["message"].to_string();
        assert!(message.contains(says), "{args:?}: {message}");
    }
    // A rebalance flag without --rebalance would do nothing: clap refuses it (exit 2, its own
    // usage message).
    let out = run(&["controller", "--rebalance-threshold=3"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rebalance-threshold") && stderr.contains("--rebalance"),
        "{stderr}"
    );
}

/// The API server would refuse these selectors on every Pod watch (retried forever): the
/// controller refuses them at start, with the parser's reason, before it needs a cluster.
#[test]
fn an_invalid_worker_selector_exits_2_at_start_with_the_reason() {
    for (selector, says) in [
        (
            "pool in (a,b",
            "found the end of the selector, expected a label value, \",\" or \")\"",
        ),
        (
            "app.kubernetes.io/component=crawler worker",
            "found \"worker\", expected \",\" or the end of the selector",
        ),
        (
            "-pool=gpu",
            "label key \"-pool\": name \"-pool\" must consist of letters",
        ),
        (
            "pool=gpu*",
            "label \"pool\": value \"gpu*\" must consist of letters",
        ),
    ] {
        let out = run(
            &[
                "--log-format=json",
                "controller",
                &format!("--worker-selector={selector}"),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{selector:?}: {out:?}");
        let line = one_json_line(&out);
        assert_eq!(line["fields"]["kind"], "configuration", "{line}");
        let message = line["fields"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("--worker-selector {selector:?}")) && message.contains(says),
            "{selector:?}: {message}"
        );
    }
    // A valid one gets past the check: the next failure is the missing cluster configuration.
    let out = run(
        &[
            "--log-format=json",
            "controller",
            "--worker-selector=pool in (a,b),!legacy,gen>2",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = one_json_line(&out)["fields"]["message"].to_string();
    assert!(
        message.contains("cannot build a Kubernetes client") && !message.contains("selector"),
        "{message}"
    );
}

#[test]
fn no_kubernetes_configuration_is_a_configuration_error() {
    let out = run(
        &[
            "--log-format=json",
            "worker",
            "--pod-name=w",
            "--namespace=n",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = one_json_line(&out)["fields"]["message"].to_string();
    assert!(
        message.contains("cannot build a Kubernetes client")
            && message.contains("KUBERNETES_SERVICE_HOST"),
        "says what to set: {message}"
    );
}

#[test]
fn the_probe_address_must_differ_from_the_metrics_address() {
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), KUBECONFIG).unwrap();
    let out = run(
        &[
            "--log-format=json",
            "worker",
            "--pod-name=w",
            "--namespace=n",
            "--metrics-addr=127.0.0.1:9999",
            "--probe-addr=127.0.0.1:9999",
        ],
        &[("KUBECONFIG", kubeconfig.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = one_json_line(&out)["fields"]["message"].to_string();
    assert!(message.contains("--probe-addr"), "{message}");
}

/// A port already taken is a failure while running (1), and in text format the error appears
/// once, not once per layer.
#[test]
fn a_port_in_use_is_a_runtime_failure_printed_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), KUBECONFIG).unwrap();
    let out = run(
        &[
            "worker",
            "--pod-name=w",
            "--namespace=n",
            &format!("--metrics-addr={free}"),
            &format!("--probe-addr={addr}"),
        ],
        &[("KUBECONFIG", kubeconfig.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let says = format!("cannot listen on {addr} for /healthz and /readyz");
    assert_eq!(stderr.matches(&says).count(), 1, "said once: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A kubeconfig that builds a client (nothing is contacted before the failures above).
const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user: {token: t}
";

#[test]
fn a_bad_allow_internal_cidrs_entry_exits_2_naming_it() {
    let expect = "\"10.0.0.0/33\" is not a CIDR";
    let out = run(
        &[
            "worker",
            "--pod-name=w",
            "--namespace=n",
            "--allow-internal-cidrs=127.0.0.0/8,10.0.0.0/33",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expect), "{stderr}");
    // The same from the environment (the chart's and an operator's other way to set it).
    let out = run(
        &["worker", "--pod-name=w", "--namespace=n"],
        &[("CRAWLER_ALLOW_INTERNAL_CIDRS", "10.0.0.0/33")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expect), "{stderr}");
}

#[test]
fn bad_politeness_flags_exit_2_saying_what_to_give() {
    for (flag, expect) in [
        (
            "--host-requests-per-second=0",
            "give a number of requests per second above 0",
        ),
        ("--backoff-factor=0.5", "give a factor of 1 or more"),
        ("--backoff-jitter=2", "give a fraction between 0 and 1"),
        (
            "--robots-ttl=48h",
            "not to use a robots.txt for more than 24h",
        ),
    ] {
        let out = run(&["worker", "--pod-name=w", "--namespace=n", flag], &[]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{flag}: {stderr}");
    }
}

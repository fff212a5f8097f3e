#!/usr/bin/env python3
"""Builds every test target of the workspace (`cargo test --no-run`), then runs the test binaries
side by side instead of one after another, as `cargo test` does.

The integration tests are one binary (tests/it.rs). Its suites spend most of their time waiting
on their control planes (leases, heartbeats, watches), so it runs with more test threads than
cores, and as two processes started first: the suites in LONG_SUITES (run one test at a time by
their own locks) in one, all other suites in the other. The unit-test binaries run next to them.
Each process's output is printed whole when it ends (libtest's `test result:` lines included),
and the run fails if any fails.

    hack/test-all.py [--container] [-- ARGS...]
        --container    also build the container image (hack/image.sh, dev profile) and run the
                       ignored container suite against it (what `make container-test` does),
                       next to the other tests
        ARGS           go to every test binary (e.g. a name filter); the integration binary then
                       runs as one process
    TEST_JOBS=N        processes at once (default 4)
    TEST_THREADS=N     test threads of each integration-test process (default 6)
    CARGO=...          the cargo to use (default cargo)
"""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

# Suites whose tests take a lock of their own that runs them (all, or the one that pauses the API
# server) one at a time: they set the length of the run, so each gets a process of its own,
# started first.
LONG_SUITES = ["reliability::", "leader::"]
INTEGRATION = "it"
IMAGE = "crawler-operator:test"


class Job:
    """One process to run (or a few, one after another), with what `cargo test` would print."""

    def __init__(self, name: str, steps: list[tuple[list[str], str, dict[str, str]]]):
        self.name = name
        self.steps = steps  # (argv, working directory, extra environment)


def build() -> list[tuple[str, str, str]]:
    """(target name, executable, package dir) of every test binary, in cargo's order."""
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [cargo, "test", "--workspace", "--locked", "--all-targets", "--no-run",
           "--message-format=json-render-diagnostics"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"test-all: `{' '.join(cmd)}` failed (exit {out.returncode}); see the errors above")
    binaries = []
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        name = f"{target['name']} ({target['kind'][0]}, {target['src_path'].removeprefix(os.getcwd() + '/')})"
        binaries.append((name, msg["executable"], str(pathlib.Path(msg["manifest_path"]).parent)))
    return binaries


def plan(binaries: list[tuple[str, str, str]], args: list[str], container: bool) -> list[Job]:
    """The processes to run, longest first."""
    threads = [f"--test-threads={os.environ.get('TEST_THREADS', '6')}"]
    if any(a.startswith("--test-threads") for a in args):
        threads = []
    first, rest = [], []
    for name, exe, cwd in binaries:
        if name.split(" ")[0] != INTEGRATION:
            rest.append(Job(name, [([exe, *args], cwd, {})]))
            continue
        if args:
            first.append(Job(name, [([exe, *threads, *args], cwd, {})]))
            continue
        for suite in LONG_SUITES:
            first.append(Job(f"{name} {suite}", [([exe, *threads, suite], cwd, {})]))
        skip = [a for suite in LONG_SUITES for a in ("--skip", suite)]
        first.append(Job(f"{name} (the other suites)", [([exe, *threads, *skip], cwd, {})]))
        if container:
            root = os.getcwd()
            first.append(Job(f"{name} container:: (image {IMAGE}, dev profile)", [
                (["hack/image.sh", "build"], root, {"IMAGE": IMAGE, "IMAGE_PROFILE": "dev"}),
                ([exe, "--ignored", "--nocapture", "container::"], cwd, {"CRAWLER_IMAGE": IMAGE}),
            ]))
    return first + rest


def run(job: Job) -> tuple[Job, int, float, str]:
    started = time.monotonic()
    code = 0
    with tempfile.TemporaryFile(mode="w+") as log:
        for argv, cwd, env in job.steps:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            # cargo test runs each binary from its package's directory; so do we.
            code = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **env}).returncode
            if code != 0:
                break
        log.seek(0)
        return job, code, time.monotonic() - started, log.read()


def main() -> int:
    argv = sys.argv[1:]
    container = "--container" in argv[:argv.index("--") if "--" in argv else len(argv)]
    args = argv[argv.index("--") + 1:] if "--" in argv else []
    unknown = [a for a in argv[:argv.index("--") if "--" in argv else len(argv)] if a != "--container"]
    if unknown:
        sys.exit(f"test-all: unknown option(s) {unknown}; usage: hack/test-all.py [--container] [-- ARGS...]")
    jobs = int(os.environ.get("TEST_JOBS", "4"))
    binaries = build()
    todo = plan(binaries, args, container)
    print(f"test-all: {len(binaries)} test binaries as {len(todo)} processes, {jobs} at a time",
          flush=True)
    started = time.monotonic()
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(run, job) for job in todo]
        for future in concurrent.futures.as_completed(futures):
            job, code, took, output = future.result()
            print(f"\n     Running {job.name} ({took:.1f} s)\n{output}", end="", flush=True)
            if code != 0:
                failed.append(f"{job.name} (exit {code})")
    print(f"\ntest-all: {len(todo)} processes in {time.monotonic() - started:.0f} s")
    if failed:
        print("test-all: failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Builds every test target of the workspace (`cargo test --no-run`), then runs the test binaries
several at a time instead of one after another, as `cargo test` does.

Each integration-test binary starts its own etcd + kube-apiserver and spends most of its time
waiting on them (leases, heartbeats, watches), so running a few side by side shortens `make test`
without making any test share a control plane with another binary. Each binary's output is
printed whole when it ends (libtest's own `test result:` lines included), and the run fails if
any binary fails.

    hack/test-all.py [-- ARGS...]     ARGS go to every test binary (e.g. a name filter)
    TEST_JOBS=N                        binaries at once (default 3; 1 = cargo test's order)
    CARGO=...                          the cargo to use (default cargo)
"""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def build() -> list[tuple[str, str, str]]:
    """(name, executable, package dir) of every test binary, in cargo's order."""
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


def run(binary: tuple[str, str, str], args: list[str]) -> tuple[str, int, float, str]:
    name, exe, cwd = binary
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        # cargo test runs each binary from its package's directory; so do we.
        code = subprocess.run([exe, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
        log.seek(0)
        return name, code, time.monotonic() - started, log.read()


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    jobs = int(os.environ.get("TEST_JOBS", "3"))
    binaries = build()
    print(f"test-all: {len(binaries)} test binaries, {jobs} at a time", flush=True)
    started = time.monotonic()
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for name, code, took, output in pool.map(lambda b: run(b, args), binaries):
            print(f"\n     Running {name} ({took:.1f} s)\n{output}", end="", flush=True)
            if code != 0:
                failed.append(f"{name} (exit {code})")
    print(f"\ntest-all: {len(binaries)} binaries in {time.monotonic() - started:.0f} s")
    if failed:
        print("test-all: failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

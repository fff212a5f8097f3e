//! Every integration test of the operator package, in one test binary.
//!
//! Each file in `tests/` is a module here, named after the file (`tests/leader.rs` is `leader`),
//! so the harness (`tests/support`) and the whole dependency graph are compiled and linked once
//! instead of once per file. Select a file's tests with its module path:
//!
//! ```text
//! cargo test --test it leader::                  # the tests of tests/leader.rs
//! cargo test --test it leader::of_two_replicas   # one test
//! cargo test --test it -- --ignored container::  # an ignored suite (make container-test)
//! ```
//!
//! Each suite still gets the control plane it had as a binary of its own: see
//! [`support::control_plane`]. Cargo.toml sets `autotests = false`, so a new file in `tests/` runs
//! only once it is listed here; [`every_test_file_is_part_of_a_test_binary`] fails until it is.

mod support;

mod addresses;
mod admission;
mod chart;
mod cli;
mod container;
mod controller;
mod demo;
mod export;
mod fence;
mod finished;
mod handoff;
mod heartbeat;
mod jobfields;
mod leader;
mod pause;
mod politeness;
mod progress;
mod races;
mod rebalance;
mod recrawl;
mod reliability;
mod results;
mod rules;
mod schedule;
mod silent;
mod smoke;
mod store;
mod store_bench;
mod store_tls;
mod term;
mod watch;
mod worker;

/// With `autotests = false`, cargo builds only the test targets Cargo.toml lists: a file added to
/// `tests/` but listed nowhere would silently never run. Every `tests/*.rs` must be a module of
/// this file, and every directory in `tests/` a module here or a `[[test]]` path in Cargo.toml.
#[test]
fn every_test_file_is_part_of_a_test_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let this = std::fs::read_to_string(root.join("tests/it.rs")).expect("reading tests/it.rs");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("reading Cargo.toml");
    let modules: Vec<&str> = this
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).expect("listing tests/") {
        let path = entry.expect("a tests/ entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name");
        let listed = if path.is_dir() {
            modules.contains(&name) || manifest.contains(&format!("path = \"tests/{name}/"))
        } else if let Some(module) = name.strip_suffix(".rs") {
            module == "it" || modules.contains(&module)
        } else {
            true // not Rust
        };
        if !listed {
            missing.push(format!("tests/{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{missing:?} would never run: add `mod <file name>;` to tests/it.rs (a directory: or a \
         [[test]] with its path to Cargo.toml)"
    );
}

//! Finds the etcd / kube-apiserver / kubectl binaries the way controller-runtime's envtest does,
//! falling back to the cache directory that `hack/install-tools.sh` fills.

use std::env;
use std::path::PathBuf;

/// The pins, read at compile time so the harness and the install script cannot disagree.
const VERSIONS_ENV: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/versions.env"));

/// `etcd`, `kube-apiserver` or `kubectl`: `$TEST_ASSET_<NAME>`, else `$KUBEBUILDER_ASSETS/<name>`,
/// else the install script's cache directory. Panics with instructions if the file is missing.
pub fn binary(name: &str) -> PathBuf {
    let var = format!("TEST_ASSET_{}", name.to_uppercase().replace('-', "_"));
    let (path, source) = if let Some(path) = non_empty_var(&var) {
        (PathBuf::from(path), var.clone())
    } else if let Some(assets) = non_empty_var("KUBEBUILDER_ASSETS") {
        (
            PathBuf::from(assets).join(name),
            "KUBEBUILDER_ASSETS".to_owned(),
        )
    } else {
        (
            cache_dir().join(name),
            "the hack/install-tools.sh cache".to_owned(),
        )
    };
    assert!(
        path.is_file(),
        "{name} not found at {} (from {source}). Run `make tools` (or hack/install-tools.sh), \
         or point {var} or KUBEBUILDER_ASSETS at existing binaries.",
        path.display()
    );
    path
}

/// `hack/install-tools.sh --print-dir`, computed the same way (an empty variable counts as unset,
/// as with bash's `${VAR:-default}`).
pub fn cache_dir() -> PathBuf {
    let root = non_empty_var("CRAWLER_TOOLS_CACHE").map_or_else(
        || {
            let cache = non_empty_var("XDG_CACHE_HOME").map_or_else(
                || PathBuf::from(non_empty_var("HOME").expect("HOME is not set")).join(".cache"),
                PathBuf::from,
            );
            cache.join("crawler-operator")
        },
        PathBuf::from,
    );
    root.join(format!(
        "k8s-v{}-etcd-v{}-helm-v{}-kwok-v{}",
        version("KUBE_VERSION"),
        version("ETCD_VERSION"),
        version("HELM_VERSION"),
        version("KWOK_VERSION")
    ))
}

fn version(key: &str) -> &'static str {
    VERSIONS_ENV
        .lines()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(k, _)| *k == key)
        .map_or_else(
            || panic!("hack/versions.env has no {key}"),
            |(_, v)| v.trim().trim_matches('"'),
        )
}

fn non_empty_var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

//! A task's cookie: the value of the Secret key named by `spec.cookieSecretRef`, read with the
//! worker's own rights, and which Secrets may serve as one.
//!
//! The worker is a deputy: it sends the value to hosts the resource's author chose. The chart's
//! admission policy lets only authors who may `get` the Secret name it; this module is the guard
//! that still holds when admission is bypassed: with `--require-cookie-label` (the default) only a
//! Secret someone labelled [`COOKIE_LABEL`]`=`[`COOKIE_LABEL_VALUE`] is used, so Secrets nobody
//! marked as cookies (the database's connection string, tokens) never leave through a crawl.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::crd::SecretKeyRef;

/// The label that marks a Secret as holding cookies for crawls.
pub const COOKIE_LABEL: &str = "crawler.dev/cookie";
/// Its value.
pub const COOKIE_LABEL_VALUE: &str = "true";

/// Bound on reading a task's cookie Secret (the client has no read timeout): a hung read fails
/// the start, which is retried with backoff like any other start failure.
const SECRET_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the cookie named by `secret_ref` from `namespace`. The error says what to fix.
pub(super) async fn read(
    client: &Client,
    namespace: &str,
    secret_ref: &SecretKeyRef,
    require_label: bool,
) -> Result<String, String> {
    let name = &secret_ref.name;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = tokio::time::timeout(SECRET_READ_TIMEOUT, secrets.get_opt(name))
        .await
        .map_err(|_| {
            format!(
                "reading Secret {namespace}/{name} for spec.cookieSecretRef timed out after {SECRET_READ_TIMEOUT:?}"
            )
        })?;
    let secret = read.map_err(|e| {
        format!("cannot read Secret {namespace}/{name} for spec.cookieSecretRef: {e}")
    })?;
    let secret = secret.ok_or_else(|| {
        format!("Secret {namespace}/{name} named by spec.cookieSecretRef does not exist: create it, or remove cookieSecretRef")
    })?;
    let labels = secret.metadata.labels.unwrap_or_default();
    check_label(namespace, name, &labels, require_label)?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} has no key {:?} (named by spec.cookieSecretRef.key)",
                secret_ref.key
            )
        })?;
    let cookie = String::from_utf8(value.0.clone()).map_err(|_| {
        format!(
            "the value of key {:?} in Secret {name} is not UTF-8 text",
            secret_ref.key
        )
    })?;
    Ok(cookie.trim().to_owned())
}

/// With `require_label`, a Secret is a cookie only if labelled [`COOKIE_LABEL`]`=true`. Checked
/// before its value is looked at, so an unmarked Secret's value is never used.
fn check_label(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    require_label: bool,
) -> Result<(), String> {
    if !require_label || labels.get(COOKIE_LABEL).map(String::as_str) == Some(COOKIE_LABEL_VALUE) {
        return Ok(());
    }
    Err(format!(
        "Secret {namespace}/{name} named by spec.cookieSecretRef is not labelled \
         {COOKIE_LABEL}={COOKIE_LABEL_VALUE}, and workers send only Secrets marked as cookies: if it \
         holds this crawl's cookies, label it (kubectl -n {namespace} label secret {name} \
         {COOKIE_LABEL}={COOKIE_LABEL_VALUE}); else name another Secret"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_a_secret_labelled_as_a_cookie_is_used_when_the_label_is_required() {
        let marked = labels(&[(COOKIE_LABEL, "true"), ("app", "shop")]);
        assert_eq!(check_label("ns", "login", &marked, true), Ok(()));
        for unmarked in [
            labels(&[]),
            labels(&[(COOKIE_LABEL, "false")]),
            labels(&[(COOKIE_LABEL, "True")]),
            labels(&[("crawler.dev/cookies", "true")]),
        ] {
            let message = check_label("ns", "db", &unmarked, true).unwrap_err();
            assert!(
                message.contains("Secret ns/db")
                    && message.contains("kubectl -n ns label secret db crawler.dev/cookie=true"),
                "{message}"
            );
        }
    }

    #[test]
    fn any_readable_secret_is_used_when_the_label_is_not_required() {
        assert_eq!(check_label("ns", "db", &labels(&[]), false), Ok(()));
    }
}

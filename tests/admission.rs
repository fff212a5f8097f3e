//! The chart's admission policy (`templates/admission-policy.yaml`, installed by `helm install`,
//! not a copy) against the real API server, with real users: `ServiceAccount` tokens from the
//! `TokenRequest` API, so the API server authenticates each request as that account (no
//! impersonation). A worker sends the Secret named by `spec.cookieSecretRef` to the hosts the
//! resource's author chose; the policy lets only someone who may `get` that Secret name it, or
//! change where it goes.
//!
//! The policy is cluster-wide, so this suite has a control plane of its own
//! ([`support::OWN_CONTROL_PLANE`]).

use crate::{chart, support};

use std::{fmt::Debug, time::Duration};

use crawler_operator::crd::CrawlerResource;
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{ControlPlane, wait_for};

const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// alice may `get` Secret `login`, bob may not; both may create and edit `CrawlerResources`. The
/// controller and the workers (the chart's own accounts) write status whoever may read what.
#[tokio::test]
#[allow(clippy::too_many_lines)] // one story, read top to bottom
async fn only_an_author_who_may_read_the_cookie_secret_may_name_it_or_redirect_it() {
    let cp = support::control_plane();
    let ns = cp.namespace("admission").await;
    let ns = ns.name();
    chart::install_crd(cp).await;
    chart::helm_install(cp, ns, "adm", &["fullnameOverride=adm"]).await;
    let installed = std::time::Instant::now();
    let admin = cp.client();
    for name in ["login", "db"] {
        create(
            &admin,
            ns,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": name, "labels": { "crawler.dev/cookie": "true" } },
                "stringData": { "cookie": "session=s3cr3t" },
            }),
        )
        .await;
    }
    let alice = user(cp, ns, "alice").await;
    let bob = user(cp, ns, "bob").await;
    let [alice_name, bob_name] =
        ["alice", "bob"].map(|u| format!("system:serviceaccount:{ns}:{u}"));
    create_role(
        &admin,
        ns,
        "author",
        json!([{ "apiGroups": ["crawler.dev"], "resources": ["crawlerresources"],
                 "verbs": ["get", "list", "create", "update", "patch"] }]),
        &["alice", "bob"],
    )
    .await;
    create_role(
        &admin,
        ns,
        "login-reader",
        json!([{ "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["login"],
                 "verbs": ["get"] }]),
        &["alice"],
    )
    .await;
    let as_alice: Api<CrawlerResource> = Api::namespaced(alice.clone(), ns);
    let as_bob: Api<CrawlerResource> = Api::namespaced(bob.clone(), ns);
    // RBAC as the test set it up (so a refusal below is the policy's, not a missing rule).
    let secrets: Api<Secret> = Api::namespaced(alice.clone(), ns);
    secrets
        .get("login")
        .await
        .expect("alice may get Secret login");
    let bobs_secrets: Api<Secret> = Api::namespaced(bob.clone(), ns);
    assert_eq!(status_code(&bobs_secrets.get("login").await), Some(403));

    // A policy takes effect once the API server's policy informer has it: until a dry run of
    // bob's create is refused.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for("the policy to be enforced", BOUND, POLL, || async {
        match as_bob
            .create(&dry_run, &resource("probe", Some("login")))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!(
        "policy enforced {:?} after helm install",
        installed.elapsed()
    );

    // CREATE.
    let refused = as_bob
        .create(&PostParams::default(), &resource("bobs", Some("login")))
        .await;
    let message = refused_message("bob names Secret login", &refused);
    for part in [
        "spec.cookieSecretRef names Secret \"login\"",
        &format!("in namespace \"{ns}\""),
        &format!("which {bob_name} may not get"),
        "Name a Secret you may read, ask for get on this one",
        "or remove spec.cookieSecretRef",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
    assert!(
        as_bob.get_opt("bobs").await.unwrap().is_none(),
        "refused, yet created"
    );
    let message = refused_message(
        "alice names Secret db (she may get only login)",
        &as_alice
            .create(&PostParams::default(), &resource("alices-db", Some("db")))
            .await,
    );
    assert!(message.contains("Secret \"db\""), "{message}");
    assert!(message.contains(&alice_name), "{message}");
    as_alice
        .create(&PostParams::default(), &resource("alices", Some("login")))
        .await
        .expect("alice, who may get Secret login, names it");
    as_bob
        .create(&PostParams::default(), &resource("bobs-plain", None))
        .await
        .expect("a resource without cookieSecretRef is none of the policy's business");

    // UPDATE by bob of alice's resource: redirecting her cookie is refused...
    let merge = |patch| Patch::Merge(patch);
    for (what, spec) in [
        ("seeds", json!({ "seeds": ["https://attacker.example/"] })),
        (
            "allowedHosts",
            json!({ "allowedHosts": ["books.example.org", "attacker.example"] }),
        ),
        ("maxDepth", json!({ "maxDepth": 5 })),
        (
            "rules",
            json!({ "rules": [{ "name": "all", "fields": { "page": { "selector": "body", "value": "html" } } }] }),
        ),
        (
            "cookieSecretRef.key",
            json!({ "cookieSecretRef": { "name": "login", "key": "other" } }),
        ),
    ] {
        let patched = as_bob
            .patch(
                "alices",
                &PatchParams::default(),
                &merge(json!({ "spec": spec })),
            )
            .await;
        let message = refused_message(&format!("bob changes spec.{what} of alice's"), &patched);
        assert!(
            message.contains("Secret \"login\"")
                && message.contains(
                    "changing any spec field of such a resource but suspend, weight and workerSelector needs get on its Secret"
                ),
            "{message}"
        );
    }
    // ...and so is naming her Secret in his own resource after the fact.
    let message = refused_message(
        "bob adds cookieSecretRef login to his resource",
        &as_bob
            .patch(
                "bobs-plain",
                &PatchParams::default(),
                &merge(
                    json!({ "spec": { "cookieSecretRef": { "name": "login", "key": "cookie" } } }),
                ),
            )
            .await,
    );
    assert!(message.contains("Secret \"login\""), "{message}");
    // What does not change where the cookie goes passes: metadata, suspend, weight, the worker
    // pool.
    for (what, patch) in [
        (
            "a label",
            json!({ "metadata": { "labels": { "team": "crawl" } } }),
        ),
        ("spec.suspend", json!({ "spec": { "suspend": true } })),
        ("spec.weight", json!({ "spec": { "weight": 3 } })),
        (
            "spec.workerSelector",
            json!({ "spec": { "workerSelector": { "matchLabels": { "pool": "b" } } } }),
        ),
    ] {
        as_bob
            .patch("alices", &PatchParams::default(), &merge(patch))
            .await
            .unwrap_or_else(|e| panic!("bob changes {what} of alice's resource: {e}"));
    }
    // alice, who may read it, changes where her cookie goes.
    as_alice
        .patch(
            "alices",
            &PatchParams::default(),
            &merge(json!({ "spec": { "seeds": ["https://books.example.org/new/"] } })),
        )
        .await
        .expect("alice changes her resource's seeds");
    let alices = as_alice.get("alices").await.unwrap();
    assert_eq!(
        alices.spec.seeds,
        ["https://books.example.org/new/"],
        "bob's refused changes left no trace"
    );
    assert_eq!(alices.spec.max_depth, 1);

    // Status writes of the chart's controller and worker (real tokens of the chart's accounts;
    // the controller may read no Secret at all) go through the status subresource, which the
    // policy does not match.
    for (account, manager, status) in [
        (
            "adm-controller",
            "crawler-operator",
            json!({ "phase": "Assigned", "assignedWorker": "worker-0", "assignments": 1 }),
        ),
        (
            "adm-worker",
            "crawler-worker",
            json!({ "progress": { "worker": "worker-0", "assignment": 1, "state": "Running", "pagesFetched": 3, "errors": 0 } }),
        ),
    ] {
        let client = user_token(cp, ns, account).await;
        Api::<CrawlerResource>::namespaced(client, ns)
            .patch_status(
                "alices",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(json!({
                    "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
                    "status": status,
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("{account} writes status of alice's resource: {e}"));
    }
    let status = as_bob
        .get("alices")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert_eq!(status.assigned_worker.as_deref(), Some("worker-0"));
    assert_eq!(status.progress.map(|p| p.pages_fetched), Some(3));

    // Removing the cookie takes nothing away from anyone: allowed to bob.
    as_bob
        .patch(
            "alices",
            &PatchParams::default(),
            &merge(json!({ "spec": { "cookieSecretRef": null } })),
        )
        .await
        .expect("bob removes the cookie from alice's resource");
}

/// With the policy turned off (`admissionPolicy.enabled=false`) the chart installs no policy and
/// no binding; with `[Warn, Audit]` bob's create passes with a warning that names the Secret.
#[tokio::test]
async fn the_policy_can_be_turned_off_or_made_to_warn() {
    // A control plane of its own: the other test's policy denies, in every namespace.
    let cp = &ControlPlane::builder().start();
    let ns = cp.namespace("admission-warn").await;
    let ns = ns.name();
    chart::install_crd(cp).await;
    chart::helm_install(
        cp,
        ns,
        // Not "off": an unquoted label value that YAML reads as a boolean (see the report).
        "disabled",
        &["fullnameOverride=disabled", "admissionPolicy.enabled=false"],
    )
    .await;
    let policies = chart::kubectl(
        cp,
        &[
            "get",
            "validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-o",
            "name",
        ],
    )
    .await;
    assert!(
        !policies.contains("disabled-cookie-secret-access"),
        "{policies}"
    );

    chart::helm_install(
        cp,
        ns,
        "warn",
        &[
            "fullnameOverride=warn",
            "admissionPolicy.validationActions={Warn,Audit}",
        ],
    )
    .await;
    let admin = cp.client();
    create(
        &admin,
        ns,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "login", "labels": { "crawler.dev/cookie": "true" } },
            "stringData": { "cookie": "session=s3cr3t" },
        }),
    )
    .await;
    let _bob = user(cp, ns, "bob").await;
    create_role(
        &admin,
        ns,
        "author",
        json!([{ "apiGroups": ["crawler.dev"], "resources": ["crawlerresources"], "verbs": ["create", "get"] }]),
        &["bob"],
    )
    .await;
    // kubectl prints the API server's warnings on stderr: a real token in a kubeconfig of its
    // own, as bob would use it.
    let kubeconfig = token_kubeconfig(cp, ns, "bob").await;
    let manifest = cp.dir().join(format!("{ns}-bobs.yaml"));
    std::fs::write(
        &manifest,
        serde_json::to_string(&resource("bobs", Some("login"))).unwrap(),
    )
    .unwrap();
    let stderr = wait_for("the warning policy to be enforced", BOUND, POLL, || async {
        let out = tokio::process::Command::new(support::tools::binary("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", ns, "create", "--dry-run=server", "-f"])
            .arg(&manifest)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && stderr.contains("Secret \"login\"") {
            Ok(stderr)
        } else {
            Err(format!("{}: {stderr}", out.status))
        }
    })
    .await;
    assert!(stderr.contains("Warning:"), "{stderr}");
}

// ----------------------------------------------------------------------------------------------
// Helpers

/// A `CrawlerResource` named `name`, with a cookie from Secret `secret` (key `cookie`) if any.
fn resource(name: &str, secret: Option<&str>) -> CrawlerResource {
    let mut spec = json!({ "seeds": ["https://books.example.org/tag/"] });
    if let Some(secret) = secret {
        spec["cookieSecretRef"] = json!({ "name": secret, "key": "cookie" });
    }
    serde_json::from_value(json!({
        "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

/// `ServiceAccount` `name` in `ns`, and a client that authenticates with a token of it.
async fn user(cp: &ControlPlane, ns: &str, name: &str) -> Client {
    create(
        &cp.client(),
        ns,
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": name } }),
    )
    .await;
    user_token(cp, ns, name).await
}

/// A token of `ServiceAccount` `ns/name` from the `TokenRequest` API (audience: the API server).
async fn token(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "audiences": [], "expirationSeconds": 3600 } }))
            .unwrap();
    Api::<ServiceAccount>::namespaced(cp.client(), ns)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {ns}/{name}: {e}"))
        .status
        .expect("a TokenRequest status")
        .token
        .expect("a token")
}

/// A client of the test API server that authenticates as `ServiceAccount` `ns/name` with a token
/// (the admin's certificate is not sent).
pub(crate) async fn user_token(cp: &ControlPlane, ns: &str, name: &str) -> Client {
    let mut config = cp.config();
    config.auth_info = serde_json::from_value(json!({ "token": token(cp, ns, name).await }))
        .expect("an AuthInfo with a token");
    Client::try_from(config).expect("a client with a token")
}

/// A kubeconfig file for `ServiceAccount` `ns/name`: the admin's, with a token as its user.
pub(crate) async fn token_kubeconfig(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(cp.kubeconfig_path()).expect("reading the kubeconfig");
    let (user, contexts) = ("  user:\n", "contexts:\n");
    let start = admin.find(user).expect("a user entry") + user.len();
    let end = admin.find(contexts).expect("a contexts entry");
    let token = token(cp, ns, name).await;
    let config = format!("{}    token: {token}\n{}", &admin[..start], &admin[end..]);
    let path = cp.dir().join(format!("{ns}-{name}.kubeconfig"));
    std::fs::write(&path, config).expect("writing a kubeconfig");
    path
}

/// Role `name` with `rules`, bound to these `ServiceAccounts` of `ns`.
async fn create_role(
    admin: &Client,
    ns: &str,
    name: &str,
    rules: serde_json::Value,
    accounts: &[&str],
) {
    let role: Role =
        serde_json::from_value(json!({ "metadata": { "name": name }, "rules": rules })).unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("creating Role {name}: {e}"));
    let subjects: Vec<_> = accounts
        .iter()
        .map(|a| json!({ "kind": "ServiceAccount", "name": a, "namespace": ns }))
        .collect();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": subjects,
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("creating RoleBinding {name}: {e}"));
}

/// Creates any namespaced object from JSON (as the admin).
async fn create(admin: &Client, ns: &str, body: serde_json::Value) {
    let object: kube::api::DynamicObject = serde_json::from_value(body.clone()).unwrap();
    let (group, version) = body["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .unwrap_or(("", body["apiVersion"].as_str().unwrap()));
    let kind = body["kind"].as_str().unwrap();
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    Api::<kube::api::DynamicObject>::namespaced_with(admin.clone(), ns, &resource)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind} in {ns}: {e}"));
}

fn status_code<T>(result: &Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// The message of a request the policy refused (403 from a `ValidatingAdmissionPolicy`).
fn refused_message<T: Debug>(what: &str, result: &Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("ValidatingAdmissionPolicy") =>
        {
            status.message.clone()
        }
        other => panic!("{what}: expected a 403 from the admission policy, got {other:?}"),
    }
}

//! An HTTP-aware fault proxy for the API server, for races where *which* request is slow matters
//! (a heartbeat Lease read, one watch, a status write), not the whole connection (for that, see
//! [`super::proxy::Proxy`], which moves bytes and cannot tell requests apart through TLS).
//!
//! It terminates TLS, reads each request, and applies the first [`Rule`] whose matcher accepts it
//! (method, path, query and body, as a [`Call`]), then forwards it over a TLS connection of its
//! own:
//!
//! | [`Action`] | what the client sees |
//! |---|---|
//! | `DelayRequest(d)` | the request reaches the API server `d` late (it is served as of then) |
//! | `DelayResponse(d)` | the request is served at once; its answer reaches the client `d` late |
//! | `Hold` | the request reaches the API server only when the test calls [`Rule::release`] |
//! | `Stall` | the response's headers pass, then no byte of its body (nor its end) until [`Rule::release`]: a watch that went silent |
//! | `Fail(code)` | the proxy answers `code` with a `Status` body; the API server sees nothing |
//! | `Drop` | the proxy closes the connection without an answer; the API server sees nothing: an API server that cannot be reached, failing fast |
//!
//! kube 5's client retries a 429, 503 or 504 by itself (up to 15 times, backing off from 5 ms),
//! so `Fail(503)` is a request that goes out again and again and lands late once the rule ends,
//! not a refusal: use `Drop` (or a status it does not retry, such as 500) to cut a process off.
//!
//! Requests no rule matches pass untouched. A release lets through what the rule holds or stalls
//! at that moment; what it matches later waits for the next release ([`ApiProxy::remove`] ends
//! the rule, releasing what it held). A rule can also be opened ([`Rule::open`]: what it holds or
//! stalls passes, as if it were not there) and closed again ([`Rule::close`]: a stream it let
//! pass stops passing bytes from that moment, as a connection that goes silent mid-stream).
//!
//! A rule counts what it matched, what the API server answered (and with which status) and what
//! clients gave up on, and remembers each call (when, and the request with its body), so a test
//! can wait for a request to arrive, check it is the one it means, and report counts.
//! [`Rule::release_on_answer`] couples two rules with no test in between: "when the API server
//! has answered a request of this rule, release that one".
//!
//! ```ignore
//! let proxy = ApiProxy::start(story.cp);
//! let stall = proxy.rule("heartbeat watch", |c| c.is_watch() && c.path.ends_with("/leases"), Action::Stall);
//! let reads = proxy.rule("heartbeat reads", |c| c.method == Method::GET && c.path.contains("/leases/crawler-worker-"),
//!     Action::DelayResponse(Duration::from_secs(1)));
//! story.start_controller_behind("controller-a", &proxy, &[]);
//! ```
//!
//! **Authentication.** Client certificates cannot pass a TLS-terminating proxy: it does not ask
//! for one and authenticates upstream itself. A request with an `Authorization` header (a bearer
//! token, e.g. a `ServiceAccount`'s) goes upstream on a connection without a client certificate, so
//! the API server sees the token's user; a request without one goes with the admin's client pair
//! (`system:masters`), the identity the harness's kubeconfig gives every process. So a process
//! behind the proxy keeps its kubeconfig; only the server URL changes. (No test sends a token
//! through the proxy yet.)
//!
//! **TLS and HTTP.** Downstream the proxy serves the API server's own serving pair (the test CA
//! signed it for 127.0.0.1, so the kubeconfig's CA verifies the proxy as it does the server);
//! upstream it verifies the API server against that CA. HTTP/1.1 on both sides (kube 5's client
//! speaks nothing else: one request per connection at a time), one upstream connection per
//! request, so a client that drops a request (a timeout) closes exactly that request's upstream
//! connection, as it would without the proxy. A client that hangs up while its request is held
//! is never forwarded (counted as abandoned).
//!
//! **Runtime.** The proxy runs on a tokio runtime of its own, on a thread of its own: it keeps
//! working while the test's runtime is busy, outlives no test that holds it (dropping it stops
//! it), and its rules are changed from any thread without `.await`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ControlPlane;

/// What a rule does with a request it matches (see the module doc's table).
#[derive(Clone, Copy, Debug)]
pub enum Action {
    DelayRequest(Duration),
    DelayResponse(Duration),
    Hold,
    Stall,
    Fail(u16),
    Drop,
}

/// A request as the rules see it.
#[derive(Clone, Debug)]
pub struct Call {
    /// When the proxy had read the whole request.
    pub at: Instant,
    pub method: Method,
    /// E.g. `/apis/coordination.k8s.io/v1/namespaces/ns/leases/crawler-worker-w1`.
    pub path: String,
    /// The raw query string, without `?` (empty if none).
    pub query: String,
    pub body: Bytes,
}

impl Call {
    /// The value of query parameter `name` (as sent: not percent-decoded).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// A watch request (`?watch=true` or `?watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|v| v == "true" || v == "1")
    }

    /// The body as text (lossy), e.g. to check which write a held PATCH is.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A rule added by [`ApiProxy::rule`]; a handle to release what it holds and read its counts.
#[derive(Clone)]
pub struct Rule {
    state: Arc<RuleState>,
}

type Matcher = Box<dyn Fn(&Call) -> bool + Send + Sync>;

struct RuleState {
    name: String,
    matches: Matcher,
    action: Action,
    calls: Mutex<Vec<Call>>,
    /// Requests it matched that the API server answered (the response headers came back).
    answered: AtomicU64,
    /// The status code of each answer, in the order they came.
    statuses: Mutex<Vec<u16>>,
    /// Requests it matched whose client hung up while the proxy delayed, held or stalled them.
    abandoned: AtomicU64,
    /// Releases and openings: a request held or stalled when `releases` was `e` goes on once
    /// it is past `e`, or while the rule is open.
    gate: watch::Sender<Gate>,
    /// Released whenever the API server answers a request this rule matched.
    release_on_answer: Mutex<Option<Arc<RuleState>>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    releases: u64,
    open: bool,
}

impl RuleState {
    fn release(&self) {
        self.gate.send_modify(|g| g.releases += 1);
    }

    fn releases(&self) -> u64 {
        self.gate.borrow().releases
    }

    /// Waits until what came at `epoch` may pass: the rule was released since, or is open.
    /// Returns whether it was released (for good) rather than open (for now).
    async fn passes(&self, epoch: u64) -> bool {
        let mut rx = self.gate.subscribe();
        let gate = rx.wait_for(|g| g.open || g.releases > epoch).await;
        gate.map_or(true, |g| g.releases > epoch)
    }
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// How many requests it matched so far.
    pub fn matched(&self) -> usize {
        self.state.calls.lock().unwrap().len()
    }

    /// Every request it matched so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// How many of its requests the API server answered so far.
    pub fn answered(&self) -> u64 {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// The API server's status code for each of its requests answered so far, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.state.statuses.lock().unwrap().clone()
    }

    /// How many of its requests their clients gave up on while the proxy delayed, held or
    /// stalled them (none of those was forwarded if it was still held or delayed).
    pub fn abandoned(&self) -> u64 {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    /// How many times it was released.
    pub fn releases(&self) -> u64 {
        self.state.releases()
    }

    /// Lets every request it holds or stalls now go on; later ones wait for the next release.
    pub fn release(&self) {
        self.state.release();
    }

    /// Lets what it holds or stalls pass, now and later, until [`Rule::close`] (still counted).
    pub fn open(&self) {
        self.state.gate.send_modify(|g| g.open = true);
    }

    /// Holds and stalls again from now on: a stream it let pass while open passes nothing more
    /// (until opened or released), as if its connection went silent.
    pub fn close(&self) {
        self.state.gate.send_modify(|g| g.open = false);
    }

    /// Releases `other` each time the API server answers a request of this rule (checked as the
    /// answer reaches the proxy, before any delay of this rule's).
    pub fn release_on_answer(&self, other: &Rule) {
        *self.state.release_on_answer.lock().unwrap() = Some(Arc::clone(&other.state));
    }

    /// Waits (polling, up to `timeout`) until the rule matched a request that `which` accepts;
    /// returns the first, or panics saying how many it matched.
    pub async fn wait_for_call(
        &self,
        what: &str,
        which: impl Fn(&Call) -> bool,
        timeout: Duration,
    ) -> Call {
        super::wait_for(
            &format!("{what} (rule '{}')", self.state.name),
            timeout,
            Duration::from_millis(20),
            || async {
                let calls = self.calls();
                calls
                    .iter()
                    .find(|c| which(c))
                    .cloned()
                    .ok_or_else(|| format!("{} other requests matched", calls.len()))
            },
        )
        .await
    }
}

/// The proxy; stops when dropped. See the module doc.
pub struct ApiProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    upstream: SocketAddr,
    /// Upstream TLS with the admin's client pair, and without one (for bearer tokens).
    as_admin: TlsConnector,
    anonymous: TlsConnector,
    rules: Mutex<Vec<Arc<RuleState>>>,
    /// Requests forwarded to the API server, matched or not.
    forwarded: AtomicU64,
}

impl ApiProxy {
    /// Listens on a free loopback port, in front of `cp`'s API server.
    pub fn start(cp: &ControlPlane) -> ApiProxy {
        let dir = cp.dir();
        let ca = pem_cert(&dir.join("ca.crt"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("the test CA as a trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = || {
            rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots.clone())
        };
        let mut as_admin = client()
            .with_client_auth_cert(
                vec![pem_cert(&dir.join("admin.crt"))],
                pem_key(&dir.join("admin.key")),
            )
            .expect("the admin client pair");
        as_admin.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut anonymous = client().with_no_client_auth();
        anonymous.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![pem_cert(&dir.join("apiserver.crt"))],
                pem_key(&dir.join("apiserver.key")),
            )
            .expect("the API server's serving pair");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server));

        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: cp.apiserver_addr(),
            as_admin: TlsConnector::from(Arc::new(as_admin)),
            anonymous: TlsConnector::from(Arc::new(anonymous)),
            rules: Mutex::default(),
            forwarded: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("api-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    tokio::select! {
                        () = serving.accept_loop(listener, acceptor) => {}
                        _ = stopped => {}
                    }
                });
                // Connections still open (stalled watches) are dropped, not waited for.
                runtime.shutdown_background();
            })
            .expect("spawning the proxy thread");
        ApiProxy {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// The address clients connect to (`https://<addr>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule, after the existing ones (the first that matches a request applies). It
    /// applies to requests that arrive from now on.
    pub fn rule(
        &self,
        name: &str,
        matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
        action: Action,
    ) -> Rule {
        let state = Arc::new(RuleState {
            name: name.to_owned(),
            matches: Box::new(matches),
            action,
            calls: Mutex::default(),
            answered: AtomicU64::new(0),
            statuses: Mutex::default(),
            abandoned: AtomicU64::new(0),
            gate: watch::Sender::new(Gate::default()),
            release_on_answer: Mutex::default(),
        });
        self.shared.rules.lock().unwrap().push(Arc::clone(&state));
        Rule { state }
    }

    /// Ends `rule`: later requests pass it by, and what it holds or stalls now goes on.
    pub fn remove(&self, rule: &Rule) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .retain(|r| !Arc::ptr_eq(r, &rule.state));
        rule.release();
    }

    /// Requests forwarded to the API server so far, matched by a rule or not.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A request the proxy closes the connection on, unanswered (`Action::Drop`).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by a rule of the test proxy")
    }
}

impl std::error::Error for Dropped {}

/// Marks a matched request abandoned unless disarmed: the handler's future is dropped when its
/// client hangs up (hyper notices the EOF) before the whole response was sent.
struct Abandoned(Option<Arc<RuleState>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(rule) = self.0.take() {
            rule.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Shared {
    async fn accept_loop(self: Arc<Self>, listener: tokio::net::TcpListener, tls: TlsAcceptor) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (shared, tls) = (Arc::clone(&self), tls.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                // An error closes the connection without an answer (`Action::Drop`).
                let service = hyper::service::service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { shared.handle(request).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, Dropped> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Ok(status(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request: {e}"),
                ));
            }
        };
        let call = Call {
            at: Instant::now(),
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body: body.clone(),
        };
        let rule = self
            .rules
            .lock()
            .unwrap()
            .iter()
            .find(|r| (r.matches)(&call))
            .cloned();
        let Some(rule) = rule else {
            return Ok(match self.forward(parts, body).await {
                Ok(response) => response.map(BodyExt::boxed),
                Err(e) => status(StatusCode::BAD_GATEWAY, &e),
            });
        };
        let epoch = rule.releases();
        rule.calls.lock().unwrap().push(call);
        let mut abandoned = Abandoned(Some(Arc::clone(&rule)));
        match rule.action {
            Action::Fail(code) => {
                abandoned.0 = None;
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let message = format!("refused by the test proxy's rule '{}'", rule.name);
                return Ok(status(code, &message));
            }
            Action::Drop => {
                abandoned.0 = None;
                return Err(Dropped);
            }
            Action::DelayRequest(delay) => tokio::time::sleep(delay).await,
            Action::Hold => {
                rule.passes(epoch).await;
            }
            Action::DelayResponse(_) | Action::Stall => {}
        }
        let response = match self.forward(parts, body).await {
            Ok(response) => response,
            Err(e) => {
                abandoned.0 = None;
                return Ok(status(StatusCode::BAD_GATEWAY, &e));
            }
        };
        rule.answered.fetch_add(1, Ordering::SeqCst);
        rule.statuses
            .lock()
            .unwrap()
            .push(response.status().as_u16());
        if let Some(other) = rule.release_on_answer.lock().unwrap().as_ref() {
            other.release();
        }
        if let Action::DelayResponse(delay) = rule.action {
            tokio::time::sleep(delay).await;
        }
        let (parts, body) = response.into_parts();
        let body = if matches!(rule.action, Action::Stall) {
            stalled(body, Arc::clone(&rule), epoch, abandoned)
        } else {
            abandoned.0 = None;
            body.boxed()
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Sends the request to the API server on a new connection; the response's body streams.
    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect(self.upstream)
            .await
            .map_err(|e| format!("connecting to the API server: {e}"))?;
        let tls = if parts.headers.contains_key(header::AUTHORIZATION) {
            &self.anonymous
        } else {
            &self.as_admin
        };
        let stream = tls
            .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
            .await
            .map_err(|e| format!("TLS to the API server: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP to the API server: {e}"))?;
        // Ends when the response has been read (or dropped) and `sender` is gone.
        tokio::spawn(connection);
        self.forwarded.fetch_add(1, Ordering::SeqCst);
        sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| format!("the API server did not answer: {e}"))
    }
}

/// `body`, passing nothing (no frame, no end) until `rule` is released past `epoch`, then
/// everything; while the rule is open, frames pass one by one (each waits if it closes). Stops
/// reading the API server's side when the client goes away.
fn stalled(
    mut body: Incoming,
    rule: Arc<RuleState>,
    epoch: u64,
    abandoned: Abandoned,
) -> ProxyBody {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(16);
    tokio::spawn(async move {
        let mut abandoned = abandoned;
        let mut released = false;
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = tx.closed() => return,
            };
            if !released {
                tokio::select! {
                    for_good = rule.passes(epoch) => released = for_good,
                    () = tx.closed() => return,
                }
            }
            let Some(frame) = frame else { break };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
        abandoned.0 = None;
    });
    let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    StreamBody::new(frames).boxed()
}

/// A response made by the proxy: a Kubernetes `Status` with `code` and `message`.
fn status(code: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": code.canonical_reason().unwrap_or_default().replace(' ', ""),
        "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("reading a certificate from {}: {e}", path.display()))
}

fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("reading a private key from {}: {e}", path.display()))
}

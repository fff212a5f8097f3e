//! The operations surface of both roles: Prometheus metrics, health, and the HTTP server that
//! serves them (`GET /metrics`, `/healthz`, `/readyz`).
//!
//! ```text
//!  controller / worker ── Metrics methods ──> Registry (prefix crawler) ──┐
//!                      └─ Health::set_ready ─> Health ────────────────────┼─> serve(): axum
//!                                                                         │   /metrics /healthz /readyz
//! ```
//!
//! Metric names, labels and meanings are listed in `docs/operations.md` (a test keeps the two in
//! step).

mod health;
mod metrics;

use std::{future::Future, io, net::SocketAddr};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

pub use self::{
    health::Health,
    metrics::{
        AssignmentKind, EventOutcome, Metrics, RebalanceStage, ReconcileOutcome, Role,
        TaskStopReason, WorkerLoad, WriteOutcome,
    },
};

/// Content type of `/metrics`: the `OpenMetrics` text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound listener that is not serving yet: [`Server::local_addr`] tells the port when binding
/// to port 0.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
}

/// Which endpoints a [`Server`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics`, `/healthz` and `/readyz`.
    All,
    /// `/metrics` only (the probes are served elsewhere).
    Metrics,
    /// `/healthz` and `/readyz` only.
    Probes,
}

impl Routes {
    fn describe(self) -> &'static str {
        match self {
            Routes::All => "/metrics, /healthz and /readyz",
            Routes::Metrics => "/metrics",
            Routes::Probes => "/healthz and /readyz",
        }
    }
}

/// Binds `addr` for all three endpoints; the error names the address and why it failed (e.g.
/// address in use).
pub async fn bind(addr: SocketAddr) -> io::Result<Server> {
    bind_routes(addr, Routes::All).await
}

/// Binds `addr` for `routes`.
pub async fn bind_routes(addr: SocketAddr, routes: Routes) -> io::Result<Server> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        context(
            &e,
            &format!("cannot listen on {addr} for {}", routes.describe()),
        )
    })?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| context(&e, &format!("cannot read the address bound for {addr}")))?;
    Ok(Server {
        listener,
        local_addr,
        routes,
    })
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    bind(addr).await?.serve(metrics, health, shutdown).await
}

impl Server {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets requests in flight finish.
    pub async fn serve(
        self,
        metrics: Metrics,
        health: Health,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let addr = self.local_addr;
        let what = self.routes.describe();
        tracing::info!(%addr, "serving {what}");
        axum::serve(self.listener, routes(self.routes, metrics, health))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| context(&e, &format!("the server for {what} on {addr} failed")))
    }
}

/// The routes alone, for a process that serves them from its own server.
pub fn router(metrics: Metrics, health: Health) -> Router {
    routes(Routes::All, metrics, health)
}

fn routes(which: Routes, metrics: Metrics, health: Health) -> Router {
    let mut router = Router::new();
    if which != Routes::Probes {
        router = router.route("/metrics", get(get_metrics));
    }
    if which != Routes::Metrics {
        router = router
            .route("/healthz", get(get_healthz))
            .route("/readyz", get(get_readyz));
    }
    router.with_state(AppState { metrics, health })
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

async fn get_metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}

async fn get_healthz(State(state): State<AppState>) -> Response {
    if state.health.is_live() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live").into_response()
    }
}

async fn get_readyz(State(state): State<AppState>) -> Response {
    if state.health.is_ready() {
        return "ok".into_response();
    }
    let body = match state.health.not_ready_reason() {
        Some(reason) => format!("not ready: {reason}"),
        None => "not ready".to_owned(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Keeps the error's kind and adds what was being done.
fn context(e: &io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;

    struct Reply {
        status: u16,
        content_type: Option<String>,
        body: String,
    }

    /// GET over raw HTTP/1.1 with `Connection: close`, so the body ends where the stream does.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).await.unwrap();
            raw
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers within 10 s");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let content_type = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.trim().to_owned());
        Reply {
            status: status.parse().unwrap(),
            content_type,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_health_until_shutdown() {
        let metrics = Metrics::new(Role::Controller);
        let health = Health::new();
        let server = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(metrics.clone(), health.clone(), async {
            let _ = stopped.await;
        }));

        metrics.set_queue_depth(3);
        let reply = get(addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.content_type.as_deref(),
            Some(OPENMETRICS_CONTENT_TYPE)
        );
        assert!(
            reply.body.contains("\ncrawler_controller_queue_depth 3\n"),
            "{}",
            reply.body
        );
        assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);

        let reply = get(addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

        let reply = get(addr, "/readyz").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "not ready: starting")
        );

        health.set_ready(true);
        let reply = get(addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

        health.set_not_ready("the Pod and CrawlerResource watches have not listed yet");
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "not ready: the Pod and CrawlerResource watches have not listed yet"
        );

        health.set_live(false);
        let reply = get(addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (503, "not live"));

        assert_eq!(get(addr, "/nope").await.status, 404);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the server stops within 10 s of shutdown")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[tokio::test]
    async fn a_bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Metrics::new(Role::Worker), Health::new(), async {})
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let message = err.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("in use"), "{message}");
    }
}

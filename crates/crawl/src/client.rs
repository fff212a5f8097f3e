//! The engine's HTTP/1.1 client: hyper's connection API over connections this module opens and
//! pools, so that what leaves the process is checked where it leaves.
//!
//! ```text
//!  Engine::exchange ── permit (host gate) ── Client::get ─┬─ idle connection of the origin
//!                                                         └─ connect: guard resolver → TCP → TLS
//!       every write ──▶ Wire: past the send deadline? refuse   (nothing leaves after a pause)
//!                             first byte of a request? stamp its departure (the host's delay
//!                             counts from then)
//! ```
//!
//! A general-purpose client (reqwest, hyper-util's pool) hands a request to a connection task
//! and writes it whenever that task runs. After a process pause (SIGSTOP, a frozen VM) that task
//! can write a request the engine let through before the pause, past the owner's heartbeat, and
//! on a busy machine it can write one late enough that it reaches the host closer to the previous
//! one than the host's delay. Both are decided here, at the write: [`Wire`] refuses bytes once the
//! [`SendDeadline`] has passed, and stamps the request's [`Departure`] with its first byte.
//!
//! What it does: GET, HTTP/1.1 (keep-alive, origin-form, `Host`), `gzip` bodies decoded, a
//! connect timeout over resolution, TCP and TLS, idle connections kept per origin (a connection
//! goes back only after its body was read to the end). What it leaves to the engine: redirects
//! (each hop is its own request), the request timeout, retries, IP-literal policy.

use std::{
    collections::HashMap,
    io::{self, Read as _},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, Response,
    header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, HOST},
};
use http_body_util::{BodyExt, Empty};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::debug;
use url::Url;

use crate::{
    address::{Name, Resolve, ResolveError},
    gate::SendDeadline,
    polite::Departure,
};

/// A request refused at the write: the owner's send deadline had passed (its heartbeat lapsed,
/// e.g. during a process pause). Nothing of it left.
#[derive(Debug, Error)]
#[error(
    "not sent: past the worker's send deadline (its heartbeat lapsed, e.g. the process was paused); \
     it is sent again once the heartbeat is renewed"
)]
pub struct PastDeadline;

/// Whether `err` or one of its sources is a [`PastDeadline`] refusal (as the socket's I/O error
/// carries it, inside hyper's).
pub fn is_past_deadline(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        let inner = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .is_some_and(<dyn std::error::Error + Send + Sync>::is::<PastDeadline>);
        if inner || e.is::<PastDeadline>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Why a request got no response, or its body could not be read.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("could not resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: ResolveError,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("could not connect to {address}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{host} is not a name TLS can verify")]
    ServerName { host: String },
    #[error("the TLS handshake with {host} failed")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("the HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("the request could not be built")]
    Build(#[source] http::Error),
    #[error("the exchange failed")]
    Exchange(#[source] hyper::Error),
    #[error("the body could not be read")]
    Body(#[source] hyper::Error),
    #[error("the gzip body could not be decoded")]
    Decode(#[source] io::Error),
}

impl HttpError {
    /// No connection was made (resolution, TCP or TLS failed).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            HttpError::Resolve { .. }
                | HttpError::NoAddress { .. }
                | HttpError::Connect { .. }
                | HttpError::ConnectTimeout(_)
                | HttpError::ServerName { .. }
                | HttpError::Tls { .. }
        )
    }
}

/// Scheme, host and port: what one connection serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Option<Self> {
        Some(Self {
            https: url.scheme() == "https",
            host: url.host_str()?.to_owned(),
            port: url.port_or_known_default()?,
        })
    }
}

/// A connection: hyper's handle, and the slot its [`Wire`] stamps a departure from.
struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
    armed: Arc<Mutex<Option<Departure>>>,
}

impl Conn {
    fn arm(&self, departure: Option<Departure>) {
        *self.armed.lock() = departure;
    }
}

/// One task's client: its own idle connections (one task never shares a socket with another),
/// resolved through the task's guarded resolver, written only before its send deadline.
pub(crate) struct Client {
    resolver: Arc<dyn Resolve>,
    tls: TlsConnector,
    connect_timeout: Duration,
    deadline: SendDeadline,
    max_idle: usize,
    idle: Mutex<HashMap<Origin, Vec<Conn>>>,
}

impl Client {
    pub(crate) fn new(
        resolver: Arc<dyn Resolve>,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        deadline: SendDeadline,
        max_idle: usize,
    ) -> Self {
        Self {
            resolver,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            deadline,
            max_idle,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// GETs `url` with `headers` (`Host` and `Accept-Encoding: gzip` added unless given) on an
    /// idle connection of its origin or a new one; `departure` is stamped when its first byte
    /// leaves. An idle connection the server closed before the request left is given up for
    /// the next idle one, or a new one.
    pub(crate) async fn get(
        &self,
        url: &Url,
        mut headers: HeaderMap,
        departure: Option<Departure>,
    ) -> Result<Answer<'_>, HttpError> {
        let origin = Origin::of(url).ok_or_else(|| HttpError::NoAddress {
            host: url.to_string(),
        })?;
        if !headers.contains_key(HOST) {
            let host = match url.port() {
                Some(port) => format!("{}:{port}", origin.host),
                None => origin.host.clone(),
            };
            let value = HeaderValue::from_str(&host).map_err(|e| HttpError::Build(e.into()))?;
            headers.insert(HOST, value);
        }
        let gzip = !headers.contains_key(ACCEPT_ENCODING);
        if gzip {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let mut request = Request::get(target)
            .body(Empty::<Bytes>::new())
            .map_err(HttpError::Build)?;
        *request.headers_mut() = headers;

        let mut departure = departure;
        while let Some(mut conn) = self.checkout(&origin).await {
            conn.arm(departure.take());
            match conn.sender.try_send_request(request).await {
                Ok(response) => return Ok(Answer::new(self, origin, conn, response, gzip)),
                Err(mut failed) => {
                    departure = conn.armed.lock().take();
                    let Some(unsent) = failed.take_message() else {
                        return Err(HttpError::Exchange(failed.into_error()));
                    };
                    debug!(%url, error = %failed.error(), "an idle connection was closed: sending on another");
                    request = unsent;
                }
            }
        }
        let mut conn = self.connect(&origin, url).await?;
        conn.arm(departure);
        match conn.sender.send_request(request).await {
            Ok(response) => Ok(Answer::new(self, origin, conn, response, gzip)),
            Err(e) => Err(HttpError::Exchange(e)),
        }
    }

    /// An idle connection of `origin` ready for a request, if one is left.
    async fn checkout(&self, origin: &Origin) -> Option<Conn> {
        loop {
            let mut conn = self.idle.lock().get_mut(origin)?.pop()?;
            if conn.sender.is_closed() {
                continue;
            }
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    fn give_back(&self, origin: Origin, conn: Conn) {
        conn.arm(None);
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let conns = idle.entry(origin).or_default();
        if conns.len() < self.max_idle {
            conns.push(conn);
        }
    }

    /// A new connection to `origin`: resolved through the guard (or the IP literal), TCP, TLS
    /// for https, hyper's HTTP/1.1 handshake; its I/O task spawned. All within the connect
    /// timeout.
    async fn connect(&self, origin: &Origin, url: &Url) -> Result<Conn, HttpError> {
        let wire = tokio::time::timeout(self.connect_timeout, self.open(origin, url))
            .await
            .map_err(|_| HttpError::ConnectTimeout(self.connect_timeout))??;
        let armed = wire.armed.clone();
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(wire))
            .await
            .map_err(HttpError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
        Ok(Conn { sender, armed })
    }

    async fn open(&self, origin: &Origin, url: &Url) -> Result<Wire, HttpError> {
        let addresses: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), origin.port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), origin.port)],
            _ => {
                let Ok(name) = origin.host.parse::<Name>();
                self.resolver
                    .resolve(name)
                    .await
                    .map_err(|source| HttpError::Resolve {
                        host: origin.host.clone(),
                        source,
                    })?
                    .map(|a| SocketAddr::new(a.ip(), origin.port))
                    .collect()
            }
        };
        let mut last = None;
        let mut tcp = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(source) => last = Some(HttpError::Connect { address, source }),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last.unwrap_or_else(|| HttpError::NoAddress {
                host: origin.host.clone(),
            }));
        };
        let _ = tcp.set_nodelay(true);
        let stream = if origin.https {
            let bare = origin.host.trim_start_matches('[').trim_end_matches(']');
            let name =
                ServerName::try_from(bare.to_owned()).map_err(|_| HttpError::ServerName {
                    host: origin.host.clone(),
                })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    host: origin.host.clone(),
                    source,
                })?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Wire {
            stream,
            deadline: self.deadline.clone(),
            armed: Arc::new(Mutex::new(None)),
        })
    }
}

/// A response whose connection goes back to the client's idle ones once its body was read to
/// the end (dropped before that, the connection is closed).
pub(crate) struct Answer<'a> {
    client: &'a Client,
    origin: Origin,
    conn: Option<Conn>,
    gzip: bool,
    pub(crate) response: Response<Incoming>,
}

impl<'a> Answer<'a> {
    fn new(
        client: &'a Client,
        origin: Origin,
        conn: Conn,
        response: Response<Incoming>,
        asked_gzip: bool,
    ) -> Self {
        let gzip = asked_gzip
            && response
                .headers()
                .get(CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        Self {
            client,
            origin,
            conn: Some(conn),
            gzip,
            response,
        }
    }

    /// The body, at most `limit` bytes (decoded, for a gzip one), and whether it was cut there.
    pub(crate) async fn read(mut self, limit: usize) -> Result<(Vec<u8>, bool), HttpError> {
        let expected = self
            .response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = Vec::with_capacity(expected.min(limit));
        let mut truncated = false;
        let incoming = self.response.body_mut();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(HttpError::Body)?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if !truncated && let Some(conn) = self.conn.take() {
            self.client.give_back(self.origin.clone(), conn);
        }
        if !self.gzip {
            return Ok((body, truncated));
        }
        gunzip(&body, limit, truncated)
    }
}

/// A gzip body decoded, at most `limit` bytes. A body cut short (`cut`) decodes as far as it
/// goes; a whole one that does not decode is an error.
fn gunzip(compressed: &[u8], limit: usize, cut: bool) -> Result<(Vec<u8>, bool), HttpError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let decoded = flate2::read::GzDecoder::new(compressed)
        .take(cap)
        .read_to_end(&mut out);
    if let Err(e) = decoded
        && !cut
    {
        return Err(HttpError::Decode(e));
    }
    let over = out.len() > limit;
    out.truncate(limit);
    Ok((out, cut || over))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's socket, as hyper's I/O task sees it: every write is refused once the owner's
/// send deadline has passed, and the first byte of a request stamps its departure.
struct Wire {
    stream: Stream,
    deadline: SendDeadline,
    armed: Arc<Mutex<Option<Departure>>>,
}

impl Wire {
    fn check(&self) -> io::Result<()> {
        if self.deadline.allows(tokio::time::Instant::now()) {
            Ok(())
        } else {
            Err(io::Error::other(PastDeadline))
        }
    }

    fn left(&self, written: usize) {
        if written > 0
            && let Some(departure) = self.armed.lock().take()
        {
            departure.stamp();
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let written = ready!(match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        })?;
        this.left(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let written = ready!(match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        })?;
        this.left(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        sync::watch,
        time::Instant,
    };

    use super::*;
    use crate::{
        address::{AddressPolicy, Resolver, guard},
        polite::{HostPolicy, Politeness},
    };

    /// A keep-alive HTTP/1.1 site on loopback that counts connections and request heads, and
    /// answers every request with `body` (gzip-encoded with `gzip`).
    struct Counted {
        url: String,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    async fn site(body: &'static [u8], gzip: bool, close: bool) -> Counted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0_u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            r.fetch_add(1, Ordering::SeqCst);
                            let payload = if gzip { gz(body) } else { body.to_vec() };
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}{}\r\n",
                                payload.len(),
                                if gzip {
                                    "content-encoding: gzip\r\n"
                                } else {
                                    ""
                                },
                                if close { "connection: close\r\n" } else { "" },
                            );
                            let _ = socket.write_all(head.as_bytes()).await;
                            let _ = socket.write_all(&payload).await;
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Counted {
            url,
            connections,
            requests,
        }
    }

    fn client(deadline: SendDeadline) -> Client {
        let policy: AddressPolicy = "127.0.0.0/8".parse().unwrap();
        Client::new(
            guard(&Resolver::system(), &policy),
            crate::engine::tls_config(),
            Duration::from_secs(5),
            deadline,
            2,
        )
    }

    async fn get(client: &Client, url: &str) -> Result<Vec<u8>, HttpError> {
        let answer = client
            .get(&url.parse().unwrap(), HeaderMap::new(), None)
            .await?;
        Ok(answer.read(1 << 20).await?.0)
    }

    /// Issue 21, item 7: a request whose bytes would be written past the owner's send deadline
    /// (one the engine let through just before a process pause, written by the connection's
    /// task on waking) is refused at the write, on an idle connection and on a new one alike:
    /// the site receives nothing. Once the deadline moves on, requests go out again.
    #[tokio::test]
    async fn nothing_is_written_past_the_send_deadline() {
        let site = site(b"ok", false, false).await;
        let (tx, rx) = watch::channel(Some(Instant::now() + Duration::from_secs(60)));
        let client = client(SendDeadline::new(rx));
        assert_eq!(get(&client, &site.url).await.unwrap(), b"ok");
        assert_eq!(site.requests.load(Ordering::SeqCst), 1);

        tx.send_replace(Some(Instant::now()));
        for _ in 0..2 {
            // The first on the idle connection, the second on a new one.
            let err = get(&client, &site.url).await.unwrap_err();
            let chain = crate::error::error_chain(&err);
            assert!(chain.contains("past the worker's send deadline"), "{chain}");
            assert!(is_past_deadline(&err), "found among the sources: {err:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            site.requests.load(Ordering::SeqCst),
            1,
            "nothing reached the site"
        );
        assert_eq!(site.connections.load(Ordering::SeqCst), 2);

        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(get(&client, &site.url).await.unwrap(), b"ok");
        assert_eq!(site.requests.load(Ordering::SeqCst), 2);
    }

    /// A request's departure is stamped when its first byte is written, not when the gate let
    /// it through; one that never left is not.
    #[tokio::test]
    async fn the_first_write_stamps_the_departure() {
        let site = site(b"ok", false, false).await;
        let gate = Politeness::new(HostPolicy::default());
        let (tx, rx) = watch::channel(Some(Instant::now() + Duration::from_secs(60)));
        let client = client(SendDeadline::new(rx));
        let url: Url = site.url.parse().unwrap();
        let permit = gate.acquire("127.0.0.1").await;
        assert!(!permit.has_left());
        let answer = client
            .get(&url, HeaderMap::new(), Some(permit.departure()))
            .await
            .unwrap();
        assert!(permit.has_left());
        drop(answer);

        tx.send_replace(Some(Instant::now()));
        let refused = gate.acquire("127.0.0.1").await;
        assert!(
            client
                .get(&url, HeaderMap::new(), Some(refused.departure()))
                .await
                .is_err()
        );
        assert!(!refused.has_left(), "refused at the write: it never left");
    }

    /// https: TLS to the URL's name (SNI, and the certificate checked against it) over the
    /// same keep-alive connections; a certificate no root vouches for fails the handshake with
    /// an error that says so.
    #[tokio::test]
    async fn https_checks_the_certificate_against_the_name() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0_u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntls";
                        let _ = tls.write_all(answer.as_bytes()).await;
                    }
                });
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let trusting = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let policy: AddressPolicy = "127.0.0.0/8,::1/128".parse().unwrap();
        let resolver = guard(&Resolver::system(), &policy);
        let client = Client::new(
            resolver.clone(),
            trusting,
            Duration::from_secs(5),
            SendDeadline::default(),
            2,
        );
        let url = format!("https://localhost:{port}/");
        for _ in 0..2 {
            assert_eq!(get(&client, &url).await.unwrap(), b"tls");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2);

        let untrusting = Client::new(
            resolver,
            crate::engine::tls_config(),
            Duration::from_secs(5),
            SendDeadline::default(),
            2,
        );
        let err = get(&untrusting, &url).await.unwrap_err();
        let chain = crate::error::error_chain(&err);
        assert!(err.is_connect(), "{chain}");
        assert!(
            chain.contains("TLS handshake with localhost failed"),
            "{chain}"
        );
        assert!(chain.to_lowercase().contains("certificate"), "{chain}");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "nothing sent without TLS"
        );
    }

    /// Keep-alive: one connection serves requests one after another; a connection the site
    /// closes is not reused; a gzip body arrives decoded.
    #[tokio::test]
    async fn connections_are_reused_closed_ones_replaced_and_gzip_decoded() {
        let kept = site(b"<html>kept</html>", false, false).await;
        let client = client(SendDeadline::default());
        for _ in 0..3 {
            assert_eq!(get(&client, &kept.url).await.unwrap(), b"<html>kept</html>");
        }
        assert_eq!(kept.connections.load(Ordering::SeqCst), 1);

        let closed = site(b"bye", false, true).await;
        for _ in 0..3 {
            assert_eq!(get(&client, &closed.url).await.unwrap(), b"bye");
        }
        assert_eq!(closed.connections.load(Ordering::SeqCst), 3);

        let zipped = site(b"<html>small once zipped</html>", true, false).await;
        assert_eq!(
            get(&client, &zipped.url).await.unwrap(),
            b"<html>small once zipped</html>"
        );
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bodies_decode_within_the_limit() {
        let page = b"<html>".repeat(1000);
        assert_eq!(
            gunzip(&gz(&page), 10_000, false).unwrap(),
            (page.clone(), false)
        );
        let (cut, truncated) = gunzip(&gz(&page), 100, false).unwrap();
        assert_eq!((cut.as_slice(), truncated), (&page[..100], true));
        // A body cut short on the wire decodes as far as it goes.
        let whole = gz(&page);
        let (part, truncated) = gunzip(&whole[..whole.len() / 2], 10_000, true).unwrap();
        assert!(truncated);
        assert!(page.starts_with(&part));
        // A whole body that is not gzip is an error naming it.
        let err = gunzip(b"not gzip at all", 100, false).unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
    }
}

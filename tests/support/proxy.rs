//! A loopback TCP proxy that can be cut or frozen, for tests where one client loses the API
//! server while everything else keeps it.
//!
//! Two faults, per proxy (one proxy per process under test):
//! - [`Proxy::cut`]: every open connection is shut down (the client sees EOF or a reset) and new
//!   ones are held unanswered: a loud failure.
//! - [`Proxy::refuse`]: every open connection is shut down and new ones are closed as soon as
//!   they are accepted: an API server that fails fast. [`Proxy::accepted`] counts connections,
//!   so a test can tell how often a client tried.
//! - [`Proxy::freeze`]: every connection open at that instant stays open but passes no byte in
//!   either direction (no FIN, no RST), while new connections work: what a NAT or load balancer
//!   that lost its state looks like. Only a client that checks the liveness of its streams notices.
//!   [`Proxy::thaw`] delivers what was held; [`Proxy::thaw_delaying_the_rest`] lets a request whose
//!   client gave up meanwhile be served before the close behind it reaches the server.
//!
//! Plain threads and blocking sockets: the proxy belongs to no test's tokio runtime, so it keeps
//! working when the test that started it ends, and it needs no tokio feature beyond the crate's.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Forwards `127.0.0.1:<free port>` to a target until dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    next_id: AtomicU64,
    /// Connections accepted, forwarded or not.
    accepted: AtomicU64,
    state: Mutex<State>,
}

/// What the proxy does with a connection it accepts.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum NewConnections {
    #[default]
    Forward,
    /// Forwarded, and frozen at once (see [`Proxy::freeze_all`]).
    Freeze,
    /// Held unanswered (see [`Proxy::cut`]).
    Hold,
    /// Closed at once (see [`Proxy::refuse`]).
    Refuse,
}

#[derive(Default)]
struct State {
    /// What happens to a new connection.
    new: NewConnections,
    closed: bool,
    /// Connections frozen by [`Proxy::freeze`]: their pumps hold what they read and forward
    /// nothing until [`Proxy::thaw`].
    frozen: std::collections::HashSet<u64>,
    /// Connections thawed by [`Proxy::thaw_delaying_the_rest`], and how long what their
    /// clients sent after the held bytes waits.
    thawed: HashMap<u64, Duration>,
    /// The frozen connections hold only what their clients send (see
    /// [`Proxy::freeze_all_upstream`]).
    upstream_only: bool,
    /// Both sockets of every forwarded connection, to shut them down on `cut`.
    open: HashMap<u64, [TcpStream; 2]>,
    /// Connections accepted while cut: never answered until `restore` forwards them.
    held: Vec<TcpStream>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy to 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        });
        let accept = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept.accept_loop(&listener))
            .expect("spawning the proxy thread");
        Proxy { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every forwarded connection and blackholes new ones (accepted, never answered,
    /// as in a network partition: clients hit their connect or read timeouts).
    pub fn cut(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.new = NewConnections::Hold;
        for [a, b] in state.open.values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Closes every forwarded connection, and every new one as soon as it is accepted: clients
    /// fail at once (EOF in the TLS handshake), as against an API server that refuses fast.
    pub fn refuse(&self) {
        self.cut();
        let mut state = self.shared.state.lock().unwrap();
        state.new = NewConnections::Refuse;
        state.held.clear();
    }

    /// How many connections clients opened so far (forwarded, held or refused).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Forwards again, including the connections that arrived while cut.
    pub fn restore(&self) {
        let held = {
            let mut state = self.shared.state.lock().unwrap();
            state.new = NewConnections::Forward;
            std::mem::take(&mut state.held)
        };
        for conn in held {
            self.shared.forward(conn);
        }
    }

    /// Freezes every connection open now: sockets stay open, no byte passes either way, nothing
    /// is closed. New connections are forwarded as usual. Returns how many were frozen.
    pub fn freeze(&self) -> usize {
        let mut state = self.shared.state.lock().unwrap();
        let open: Vec<u64> = state.open.keys().copied().collect();
        state.frozen.extend(open.iter().copied());
        open.len()
    }

    /// Freezes every connection open now and every new one: the process is silently partitioned
    /// (a new connection is accepted and then passes nothing), and what it sends meanwhile is
    /// held, to be delivered late by [`Proxy::thaw`], as a network that delays packets.
    pub fn freeze_all(&self) -> usize {
        self.shared.state.lock().unwrap().new = NewConnections::Freeze;
        self.freeze()
    }

    /// [`Proxy::freeze_all`] in one direction: what the client sends is held, what the server
    /// sends still reaches it. The client keeps seeing the world (its watches' events, the
    /// answers to what it sent before) while every request it makes from now on, its writes
    /// and its Lease renewals, is held in the network.
    pub fn freeze_all_upstream(&self) -> usize {
        self.shared.state.lock().unwrap().upstream_only = true;
        self.freeze_all()
    }

    /// Lets the frozen connections pass bytes again (what they held is delivered late).
    pub fn thaw(&self) {
        self.thaw_delaying_the_rest(Duration::ZERO);
    }

    /// [`Proxy::thaw`], but on each connection only what it held is delivered at once; what its
    /// client sent after that arrives `delay` later. So a request held in the network is served
    /// in full even if its client gave up on it meanwhile. (Delivered back to back, a request
    /// and the TLS `close_notify` and FIN behind it may make the API server cancel the request,
    /// as Go does for a client that hung up: 8 of 32 held writes did not land that way in
    /// `tests/fence.rs`. A paused client, or a network that delays later packets too, sends no
    /// such close in time.)
    pub fn thaw_delaying_the_rest(&self, delay: Duration) {
        let mut state = self.shared.state.lock().unwrap();
        let frozen: Vec<u64> = state.frozen.iter().copied().collect();
        state
            .thawed
            .extend(frozen.into_iter().map(|id| (id, delay)));
        state.frozen.clear();
        state.upstream_only = false;
        if state.new == NewConnections::Freeze {
            state.new = NewConnections::Forward;
        }
    }

    pub fn is_cut(&self) -> bool {
        self.shared.state.lock().unwrap().new == NewConnections::Hold
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        let mut state = self.shared.state.lock().unwrap();
        state.closed = true;
        state.held.clear();
        drop(state);
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Shared {
    fn accept_loop(self: Arc<Self>, listener: &TcpListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return;
            }
            self.accepted.fetch_add(1, Ordering::SeqCst);
            if state.new == NewConnections::Refuse {
                let _ = conn.shutdown(Shutdown::Both);
                continue;
            }
            if state.new == NewConnections::Hold {
                state.held.push(conn);
                continue;
            }
            drop(state);
            self.forward(conn);
        }
    }

    /// Connects to the target and pumps bytes both ways on two threads.
    fn forward(self: &Arc<Self>, inbound: TcpStream) {
        let Ok(outbound) = TcpStream::connect_timeout(&self.target, Duration::from_secs(5)) else {
            return; // dropping `inbound` tells the client the target is down
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (Ok(in2), Ok(out2), Ok(in3), Ok(out3)) = (
            inbound.try_clone(),
            outbound.try_clone(),
            inbound.try_clone(),
            outbound.try_clone(),
        ) else {
            return;
        };
        {
            let mut state = self.state.lock().unwrap();
            if state.new == NewConnections::Hold {
                // `cut` came in while we were connecting: hold it like the others.
                state.held.push(inbound);
                return;
            }
            state.open.insert(id, [in3, out3]);
            if state.new == NewConnections::Freeze {
                state.frozen.insert(id);
            }
        }
        let up = Arc::clone(self);
        let upstream = thread::spawn(move || up.pump(id, true, inbound, outbound));
        let shared = Arc::clone(self);
        thread::spawn(move || {
            shared.pump(id, false, out2, in2);
            let _ = upstream.join();
            let mut state = shared.state.lock().unwrap();
            state.open.remove(&id);
            state.frozen.remove(&id);
            state.thawed.remove(&id);
        });
    }

    /// Copies `from` into `to` until EOF or an error, then shuts both down, so that the other
    /// direction ends too. While connection `id` is frozen, what was read is held (and nothing
    /// more is read, so the sender's buffers fill as on a dead path) until it thaws or the proxy
    /// goes away.
    fn pump(&self, id: u64, upstream: bool, mut from: TcpStream, mut to: TcpStream) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut held = false;
            let delay = loop {
                let state = self.state.lock().unwrap();
                if state.closed {
                    drop(state);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                if !state.frozen.contains(&id) || (state.upstream_only && !upstream) {
                    break state.thawed.get(&id).copied().filter(|_| held);
                }
                held = true;
                drop(state);
                thread::sleep(Duration::from_millis(20));
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(delay) = delay {
                thread::sleep(delay);
            }
        }
        // A frozen path passes no FIN either: the peer keeps waiting. (Reaching here while frozen
        // means this side closed or failed; the other side is left as it is.)
        {
            let state = self.state.lock().unwrap();
            if state.frozen.contains(&id) && (upstream || !state.upstream_only) {
                return;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

//! A loopback TCP proxy that can be cut, for tests where one client loses the API server while
//! everything else keeps it.
//!
//! Plain threads and blocking sockets: the proxy belongs to no test's tokio runtime, so it keeps
//! working when the test that started it ends, and it needs no tokio feature beyond the crate's.

use std::collections::HashMap;
use std::io;
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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cut: bool,
    closed: bool,
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
        state.cut = true;
        for [a, b] in state.open.values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Forwards again, including the connections that arrived while cut.
    pub fn restore(&self) {
        let held = {
            let mut state = self.shared.state.lock().unwrap();
            state.cut = false;
            std::mem::take(&mut state.held)
        };
        for conn in held {
            self.shared.forward(conn);
        }
    }

    pub fn is_cut(&self) -> bool {
        self.shared.state.lock().unwrap().cut
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
            if state.cut {
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
            if state.cut {
                // `cut` came in while we were connecting: hold it like the others.
                state.held.push(inbound);
                return;
            }
            state.open.insert(id, [in3, out3]);
        }
        let upstream = thread::spawn(move || pump(inbound, outbound));
        let shared = Arc::clone(self);
        thread::spawn(move || {
            pump(out2, in2);
            let _ = upstream.join();
            shared.state.lock().unwrap().open.remove(&id);
        });
    }
}

/// Copies `from` into `to` until EOF or an error, then shuts both down, so that the other
/// direction ends too.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

//! A TCP gate in front of a real server (the test PostgreSQL). Open, it
//! carries every connection through; shut, it cuts the connections it
//! carries and closes each new one at once, as a database host that went
//! away does. Opened again, the database is back with all it held.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Gate {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

struct State {
    open: bool,
    /// Both ends of every connection carried, to cut them when shut.
    carried: Vec<TcpStream>,
}

impl Gate {
    /// A gate to `target` on an ephemeral loopback port, open.
    pub fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            open: true,
            carried: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                // Held while deciding, so `shut` cannot slip in between.
                let mut s = st.lock().unwrap();
                if !s.open {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                s.carried.push(client.try_clone().unwrap());
                s.carried.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Gate { addr, state, stop }
    }

    /// `url` (a postgres:// URL) with its host and port replaced by the gate's.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
        let (_, path) = rest.split_once('/').expect("a database in the URL");
        format!("{scheme_user}@{}/{path}", self.addr)
    }

    /// The host and port `url` names.
    pub fn target_of(url: &str) -> SocketAddr {
        let rest = url.split_once('@').expect("user@host in the URL").1;
        rest.split('/').next().unwrap().parse().expect("host:port")
    }

    pub fn open(&self) {
        self.state.lock().unwrap().open = true;
    }

    /// Cuts what it carries and refuses what comes, until opened again.
    pub fn shut(&self) {
        let mut s = self.state.lock().unwrap();
        s.open = false;
        for c in s.carried.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` into `to` until either ends, then ends both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

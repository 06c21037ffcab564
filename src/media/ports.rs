//! RTP port pool: even ports from the configured range, each bound as a
//! non-blocking UDP socket. A port taken by another program is skipped,
//! not fatal. The sockets belong to no runtime: the media reactor watches
//! the ones it relays, and the browser gateway wraps its own for tokio.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no free RTP port in {min}..={max} on {ip}")]
    Exhausted { ip: IpAddr, min: u16, max: u16 },
}

struct State {
    next: u16,
    in_use: HashSet<u16>,
}

#[derive(Clone)]
pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    state: Arc<Mutex<State>>,
}

/// A bound RTP socket; the port returns to the pool on drop.
pub struct RtpSocket {
    pub socket: UdpSocket,
    pub port: u16,
    pool: PortPool,
}

impl Drop for RtpSocket {
    fn drop(&mut self) {
        if let Ok(mut s) = self.pool.state.lock() {
            s.in_use.remove(&self.port);
        }
    }
}

impl PortPool {
    pub fn new(ip: IpAddr, min: u16, max: u16) -> PortPool {
        let min = min + (min % 2);
        PortPool {
            ip,
            min,
            max,
            state: Arc::new(Mutex::new(State {
                next: min,
                in_use: HashSet::new(),
            })),
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Binds the next free even port.
    pub fn allocate(&self) -> Result<RtpSocket, PortError> {
        let slots = (u32::from(self.max) - u32::from(self.min)) / 2 + 1;
        for _ in 0..slots {
            let port = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let port = s.next;
                s.next = if u32::from(port) + 2 > u32::from(self.max) {
                    self.min
                } else {
                    port + 2
                };
                if s.in_use.contains(&port) {
                    continue;
                }
                s.in_use.insert(port);
                port
            };
            match bind(SocketAddr::new(self.ip, port)) {
                Ok(socket) => {
                    return Ok(RtpSocket {
                        socket,
                        port,
                        pool: self.clone(),
                    })
                }
                Err(_) => {
                    let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.in_use.remove(&port);
                }
            }
        }
        Err(PortError::Exhausted {
            ip: self.ip,
            min: self.min,
            max: self.max,
        })
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_even_ports_and_reuses_them() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41001, 41010);
        let a = pool.allocate().unwrap();
        assert_eq!(a.port % 2, 0);
        assert!(a.port >= 41002 && a.port <= 41010);
        let mut held = vec![a];
        while let Ok(s) = pool.allocate() {
            held.push(s);
            assert!(held.len() <= 5);
        }
        assert!(matches!(pool.allocate(), Err(PortError::Exhausted { .. })));
        held.pop();
        assert!(pool.allocate().is_ok());
    }

    #[test]
    fn skips_ports_taken_by_others() {
        let squatter = std::net::UdpSocket::bind("127.0.0.1:41020").unwrap();
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41020, 41023);
        let s = pool.allocate().unwrap();
        assert_eq!(s.port, 41022);
        drop(squatter);
    }
}

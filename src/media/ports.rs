//! RTP port pool: even ports from the configured range, each bound as a
//! non-blocking UDP socket. Each search starts at a random place in the
//! range: ports handed out in order told a stranger where the next call's
//! media would be. A port taken by another program is skipped,
//! not fatal. The sockets belong to no runtime: the media reactor watches
//! the ones it relays, and the browser gateway wraps its own for tokio.
//!
//! The reactor reads them in batches (`RtpSocket::recv_batch`, one
//! `recvmmsg(2)` for up to `BATCH` datagrams): a read that returns fewer
//! than it asked for has found the queue empty, so the usual second read,
//! the one that only learns `EAGAIN`, is saved. With 2,000 callers waiting
//! that was 100,000 system calls a second.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no free RTP port in {min}..={max} on {ip}")]
    Exhausted { ip: IpAddr, min: u16, max: u16 },
}

struct State {
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

/// Datagrams one `recv_batch` reads at most.
pub const BATCH: usize = 8;
/// Room for one datagram; a longer one is cut (and is no RTP we accept).
const DATAGRAM: usize = 2048;

/// Where `recv_batch` puts what it read: datagram `i` is `datagram(i)`.
pub struct Batch {
    bufs: [[u8; DATAGRAM]; BATCH],
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            bufs: [[0; DATAGRAM]; BATCH],
            lens: [0; BATCH],
            from: [None; BATCH],
        }
    }

    /// The `i`th datagram of the last read and its source (`None` for a
    /// source that is not IP, which a UDP socket never reports).
    pub fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.bufs[i][..self.lens[i]], self.from[i])
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

impl RtpSocket {
    /// Reads up to `BATCH` queued datagrams in one system call, without
    /// waiting. `Ok(n)` has `n >= 1`; fewer than `BATCH` means the queue
    /// was empty when the read stopped. An empty queue is `WouldBlock`.
    pub fn recv_batch(&self, batch: &mut Batch) -> std::io::Result<usize> {
        // SAFETY: zeroed `sockaddr_storage`, `iovec` and `mmsghdr` are
        // valid values (plain C structs; null pointers, zero lengths).
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovs[i].iov_base = batch.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = DATAGRAM;
            hdrs[i].msg_hdr.msg_name = std::ptr::from_mut(&mut names[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an iovec and a name
        // that live until the call returns, with their true lengths; the
        // kernel writes only within them.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            batch.lens[i] = (hdrs[i].msg_len as usize).min(DATAGRAM);
            batch.from[i] = socket_addr(&names[i]);
        }
        Ok(n)
    }
}

/// The address the kernel wrote into a `sockaddr_storage`.
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // which is smaller and no more strictly aligned.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
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
                in_use: HashSet::new(),
            })),
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Binds a free even port: the first free one from a random place in
    /// the range on.
    pub fn allocate(&self) -> Result<RtpSocket, PortError> {
        let slots = (u32::from(self.max) - u32::from(self.min)) / 2 + 1;
        let start = rand::random_range(0..slots);
        for k in 0..slots {
            let port = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let port = (u32::from(self.min) + 2 * ((start + k) % slots)) as u16;
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

    /// Each datagram comes out whole, in order, with its own source; a
    /// read short of `BATCH` empties the queue; an empty queue blocks.
    #[test]
    fn reads_a_batch_with_each_source() {
        for ip in ["127.0.0.1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let Ok(probe) = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) else {
                continue; // no IPv6 loopback here
            };
            drop(probe);
            let pool = PortPool::new(ip, 41030, 41060);
            let rtp = pool.allocate().unwrap();
            let to = SocketAddr::new(ip, rtp.port);
            let a = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            let b = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            let mut batch = Batch::new();
            let err = rtp.recv_batch(&mut batch).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
            // BATCH + 3 datagrams of growing length, from a and b in turn.
            let total = BATCH + 3;
            for k in 0..total {
                let from = if k % 2 == 0 { &a } else { &b };
                from.send_to(&vec![k as u8; 10 + k], to).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut seen = Vec::new();
            loop {
                match rtp.recv_batch(&mut batch) {
                    Ok(n) => {
                        assert!((1..=BATCH).contains(&n));
                        for i in 0..n {
                            let (data, from) = batch.datagram(i);
                            seen.push((data.to_vec(), from.unwrap()));
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(e) => panic!("read failed: {e}"),
                }
            }
            assert_eq!(seen.len(), total);
            for (k, (data, from)) in seen.iter().enumerate() {
                assert_eq!(data, &vec![k as u8; 10 + k]);
                let sender = if k % 2 == 0 { &a } else { &b };
                assert_eq!(*from, sender.local_addr().unwrap());
            }
            let err = rtp.recv_batch(&mut batch).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        }
    }

    /// Where the next call's media will be cannot be told from the last:
    /// 20 ports from a range of 500 are not handed out in order.
    #[test]
    fn ports_are_drawn_at_random() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 43000, 43999);
        let held: Vec<RtpSocket> = (0..20).map(|_| pool.allocate().unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|s| s.port).collect();
        assert!(ports
            .iter()
            .all(|p| p % 2 == 0 && (43000..=43999).contains(p)));
        let in_order = ports.windows(2).filter(|w| w[1] == w[0] + 2).count();
        assert!(in_order < 5, "{ports:?}");
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

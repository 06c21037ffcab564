//! Calls from each source that are answered, or being answered, and not
//! yet confirmed by an ACK. Each holds an RTP port until its dialog gives
//! up on the ACK (64 x T1, 32 s): 1,000 INVITEs never ACKed from one
//! trusted source once took the whole port pool, and real callers from
//! every other trunk got 503 for half a minute. A source past its bound
//! gets 503 (with Retry-After, so a trunk with a second route fails over)
//! until its calls are confirmed or given up; other sources are untouched.
//! A healthy trunk's calls are confirmed within a round trip, so the bound
//! is far above what one ever holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Unconfirmed {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_source: usize,
}

/// One source's place, held until its call is confirmed or gone.
pub struct Place {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Unconfirmed {
    pub fn new(per_source: usize) -> Unconfirmed {
        Unconfirmed {
            counts: Arc::default(),
            per_source,
        }
    }

    /// A place for one more unconfirmed call from `ip`, unless it holds
    /// its bound already.
    pub fn admit(&self, ip: IpAddr) -> Option<Place> {
        let mut counts = crate::lock(&self.counts);
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(Place {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = crate::lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source at its bound is refused until one of its calls is
    /// confirmed (its place dropped); another source is never affected.
    #[test]
    fn one_source_cannot_take_another_sources_places() {
        let u = Unconfirmed::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut held: Vec<Place> = (0..3).map(|_| u.admit(a).unwrap()).collect();
        assert!(u.admit(a).is_none());
        let other = u.admit(b).expect("another source");
        held.pop();
        let again = u.admit(a).expect("a place freed by a confirmed call");
        assert!(u.admit(a).is_none());
        drop((held, again, other));
        assert!(crate::lock(&u.counts).is_empty(), "no entry left behind");
    }
}

//! Slows, then blocks, a source that keeps failing authentication. Pure:
//! time comes in as an argument. Emergency calls never pass through here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// When failures start to cost, and how much.
#[derive(Debug, Clone, Copy)]
pub struct GuardPolicy {
    /// Failures are counted within this window.
    pub window: Duration,
    /// From this many failures on, each answer is delayed.
    pub slow_after: u32,
    /// Delay per failure beyond `slow_after`, capped at `max_delay`.
    pub delay_step: Duration,
    pub max_delay: Duration,
    /// From this many failures on, the source is refused outright...
    pub block_after: u32,
    /// ...for this long.
    pub block_for: Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            window: Duration::from_secs(600),
            slow_after: 3,
            delay_step: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            block_after: 10,
            block_for: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer, but only after this long.
    Delay(Duration),
    /// Refuse (403) without checking.
    Blocked,
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct AuthGuard {
    policy: GuardPolicy,
    sources: HashMap<IpAddr, Entry>,
}

impl AuthGuard {
    pub fn new(policy: GuardPolicy) -> AuthGuard {
        AuthGuard {
            policy,
            sources: HashMap::new(),
        }
    }

    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let p = self.policy;
        let Some(e) = self.sources.get_mut(&ip) else {
            return Verdict::Allow;
        };
        if let Some(until) = e.blocked_until {
            if now < until {
                return Verdict::Blocked;
            }
            self.sources.remove(&ip);
            return Verdict::Allow;
        }
        if now.saturating_duration_since(e.first) > p.window {
            self.sources.remove(&ip);
            return Verdict::Allow;
        }
        if e.failures >= p.slow_after {
            let extra = e.failures - p.slow_after + 1;
            return Verdict::Delay((p.delay_step * extra).min(p.max_delay));
        }
        Verdict::Allow
    }

    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let p = self.policy;
        let e = self.sources.entry(ip).or_insert(Entry {
            failures: 0,
            first: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.first) > p.window {
            *e = Entry {
                failures: 0,
                first: now,
                blocked_until: None,
            };
        }
        e.failures += 1;
        if e.failures >= p.block_after {
            e.blocked_until = Some(now + p.block_for);
        }
        // Bound memory under a spray of sources.
        if self.sources.len() > 100_000 {
            let window = p.window;
            self.sources.retain(|_, e| {
                e.blocked_until.is_some_and(|u| u > now)
                    || now.saturating_duration_since(e.first) <= window
            });
        }
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        if self
            .sources
            .get(&ip)
            .is_some_and(|e| e.blocked_until.is_none())
        {
            self.sources.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_then_blocks_then_forgives() {
        let mut g = AuthGuard::new(GuardPolicy::default());
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..2 {
            g.failed(ip, t0);
        }
        assert_eq!(g.check(ip, t0), Verdict::Allow);
        g.failed(ip, t0);
        assert_eq!(g.check(ip, t0), Verdict::Delay(Duration::from_secs(1)));
        for _ in 0..4 {
            g.failed(ip, t0);
        }
        assert_eq!(g.check(ip, t0), Verdict::Delay(Duration::from_secs(5)));
        for _ in 0..3 {
            g.failed(ip, t0);
        }
        assert_eq!(g.check(ip, t0), Verdict::Blocked);
        assert_eq!(
            g.check(other, t0),
            Verdict::Allow,
            "other sources are unaffected"
        );
        // A success does not lift a block.
        g.succeeded(ip);
        assert_eq!(g.check(ip, t0 + Duration::from_secs(899)), Verdict::Blocked);
        assert_eq!(g.check(ip, t0 + Duration::from_secs(901)), Verdict::Allow);
    }

    #[test]
    fn failures_age_out_and_success_clears() {
        let mut g = AuthGuard::new(GuardPolicy::default());
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            g.failed(ip, t0);
        }
        assert!(matches!(g.check(ip, t0), Verdict::Delay(_)));
        assert_eq!(g.check(ip, t0 + Duration::from_secs(601)), Verdict::Allow);
        for _ in 0..5 {
            g.failed(ip, t0);
        }
        g.succeeded(ip);
        assert_eq!(g.check(ip, t0), Verdict::Allow);
    }
}

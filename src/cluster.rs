//! Leader and standby: of the nodes sharing one PostgreSQL, the one
//! holding the lease (`store::lease`) takes calls; the others run fully
//! and answer 503 until the lease runs out and one of them takes it.
//!
//! A node leads only while it can prove its lease: until the moment it
//! sent its last successful renewal plus the lease's length. That moment
//! is measured on this node's monotonic clock and is never later than the
//! lease's end on the database's clock, so the node stops taking calls
//! before any other node can take the lease (two leaders never overlap).
//! With SQLite there is one node, and it always leads.

use crate::config::ClusterSection;
use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, info, warn};

/// Whether this node leads now; shared by SIP, `/healthz` and the task
/// that renews the lease.
#[derive(Clone)]
pub struct Leadership(Arc<Inner>);

struct Inner {
    node: String,
    /// This process, among any started under the same node name.
    process: String,
    /// What `until_us` counts from.
    epoch: Instant,
    /// The lease is proven until then (µs after `epoch`); 0: not held.
    until_us: AtomicU64,
}

impl Leadership {
    /// A node that leads for good (one node, SQLite).
    pub fn always(node: &str) -> Leadership {
        let l = Leadership::standby(node);
        l.0.until_us.store(u64::MAX, Ordering::SeqCst);
        l
    }

    fn standby(node: &str) -> Leadership {
        Leadership(Arc::new(Inner {
            node: node.to_string(),
            process: uuid::Uuid::new_v4().to_string(),
            epoch: Instant::now(),
            until_us: AtomicU64::new(0),
        }))
    }

    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// Whether this node may take a call now.
    pub fn leads(&self) -> bool {
        self.leads_at(Instant::now())
    }

    fn leads_at(&self, now: Instant) -> bool {
        let now_us = now.saturating_duration_since(self.0.epoch).as_micros() as u64;
        now_us < self.0.until_us.load(Ordering::SeqCst)
    }

    /// `leader` or `standby`, as `/healthz` says it.
    pub fn role(&self) -> &'static str {
        if self.leads() {
            "leader"
        } else {
            "standby"
        }
    }

    /// The lease is proven until `until`.
    fn held(&self, until: Instant) {
        let us = until.saturating_duration_since(self.0.epoch).as_micros() as u64;
        self.0.until_us.store(us.max(1), Ordering::SeqCst);
    }

    fn lost(&self) {
        self.0.until_us.store(0, Ordering::SeqCst);
    }
}

/// What becoming the leader asks of the rest of the node.
pub trait OnLead: Send + 'static {
    /// This node took the lease over from `previous` (None: nobody held
    /// it before, or this node did): the calls `previous` left open are
    /// this node's to close.
    fn took_over(&self, previous: Option<String>);
}

/// Takes and renews the lease every `cluster.renew`, for as long as the
/// process runs. Returns the shared state at once (standing by until the
/// first renewal succeeds).
pub fn spawn(store: Store, cluster: &ClusterSection, on_lead: impl OnLead) -> Leadership {
    let leadership = Leadership::standby(&cluster.node);
    let l = leadership.clone();
    let (lease, renew) = (cluster.lease, cluster.renew);
    tokio::spawn(async move {
        let mut last_term = None;
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                renew,
                store.try_lead(l.node(), &l.0.process, lease.as_millis() as i64),
            );
            match attempt.await {
                Ok(Ok(Some(held))) => {
                    l.held(sent + lease);
                    if last_term != Some(held.term) {
                        info!(node = l.node(), term = held.term, previous = ?held.previous, "this node leads");
                        on_lead.took_over(held.previous);
                        last_term = Some(held.term);
                    }
                }
                Ok(Ok(None)) => {
                    if last_term.take().is_some() {
                        error!(node = l.node(), "another node holds the lease: standing by");
                    }
                    l.lost();
                }
                Ok(Err(e)) => warn!(error = %e, "the lease could not be renewed"),
                Err(_) => warn!("the lease's renewal took longer than its interval"),
            }
            if !l.leads() && last_term.take().is_some() {
                error!(
                    node = l.node(),
                    "the lease ran out unrenewed: no new calls until it is back"
                );
            }
            tokio::time::sleep_until((sent + renew).into()).await;
        }
    });
    leadership
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_is_proven_until_its_end_and_not_a_moment_after() {
        let l = Leadership::standby("a");
        assert!(!l.leads());
        assert_eq!(l.role(), "standby");
        let now = Instant::now();
        l.held(now + Duration::from_secs(3));
        assert!(l.leads_at(now + Duration::from_millis(2_999)));
        assert!(!l.leads_at(now + Duration::from_secs(3)));
        l.lost();
        assert!(!l.leads_at(now));
        assert!(Leadership::always("b").leads());
    }
}

//! Leader and standby: of the nodes sharing one PostgreSQL, the one
//! holding the lease (`store::lease`) takes calls; the others run fully
//! and answer 503 until the lease runs out and one of them takes it.
//!
//! A leader leads only while it can prove its lease: until the moment it
//! sent its last successful renewal plus the lease's length, measured on
//! its own monotonic clock, which is never later than the lease's end on
//! the database's clock: it stops taking calls before another node can
//! take the lease, so two leaders never overlap. A leader the database
//! does not answer keeps the calls it has, and takes new ones again as
//! soon as it renews. A standby takes a lapsed lease only after a lease's
//! length in touch with the database, so that when the database comes
//! back the leader, renewing every `renew`, keeps its lease rather than
//! losing it to a race (a take-over that would cut its calls).
//!
//! Without a `[cluster]` section there is one node, and it always leads.

use crate::config::ClusterSection;
use crate::store::{Held, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// One renewal's outcome.
enum Outcome {
    Held(Held),
    /// Another process holds the lease, or it lapsed and this one may not
    /// take it yet.
    Refused,
    /// The database did not answer (an error, or no answer within `renew`).
    Unreachable,
}

/// What renewals have made of this node: the decisions of the renewing
/// task, without the database or the clock.
struct Renewal {
    lease: Duration,
    /// The term this node holds; None while standing by.
    term: Option<i64>,
    /// Since when every attempt has had an answer from the database.
    in_touch_since: Option<Instant>,
    /// The lease ran out unrenewed while this node held it (told once).
    cut_off: bool,
}

impl Renewal {
    fn new(lease: Duration) -> Renewal {
        Renewal {
            lease,
            term: None,
            in_touch_since: None,
            cut_off: false,
        }
    }

    /// Whether an attempt sent at `sent` may take a lapsed lease.
    fn may_take(&self, sent: Instant) -> bool {
        self.in_touch_since
            .is_some_and(|t| sent.saturating_duration_since(t) >= self.lease)
    }

    /// Applies the outcome of the attempt sent at `sent` to `l`. Returns
    /// `Some(previous)` when this node has just taken the lease over.
    fn after(&mut self, outcome: Outcome, sent: Instant, l: &Leadership) -> Option<Option<String>> {
        match outcome {
            Outcome::Held(held) => {
                self.in_touch_since.get_or_insert(sent);
                l.held(sent + self.lease);
                if std::mem::take(&mut self.cut_off) {
                    info!(
                        node = l.node(),
                        "the database answers again and the lease is still this node's: taking calls"
                    );
                }
                if self.term == Some(held.term) {
                    return None;
                }
                info!(node = l.node(), term = held.term, previous = ?held.previous, "this node leads");
                self.term = Some(held.term);
                Some(held.previous)
            }
            Outcome::Refused => {
                self.in_touch_since.get_or_insert(sent);
                self.cut_off = false;
                if self.term.take().is_some() {
                    error!(
                        node = l.node(),
                        "another node holds the lease: standing by (calls in progress go on)"
                    );
                }
                l.lost();
                None
            }
            Outcome::Unreachable => {
                self.in_touch_since = None;
                if self.term.is_some()
                    && !l.leads_at(sent)
                    && !std::mem::replace(&mut self.cut_off, true)
                {
                    error!(
                        node = l.node(),
                        "the lease ran out unrenewed: no new calls until the database answers (calls in progress go on)"
                    );
                }
                None
            }
        }
    }
}

/// Takes and renews the lease every `cluster.renew`, for as long as the
/// process runs. Returns the shared state at once (standing by until the
/// first renewal succeeds).
pub fn spawn(store: Store, cluster: &ClusterSection, on_lead: impl OnLead) -> Leadership {
    let leadership = Leadership::standby(&cluster.node);
    let l = leadership.clone();
    let (lease, renew) = (cluster.lease, cluster.renew);
    tokio::spawn(async move {
        let mut renewal = Renewal::new(lease);
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                renew,
                store.try_lead(
                    l.node(),
                    &l.0.process,
                    lease.as_millis() as i64,
                    renewal.may_take(sent),
                ),
            );
            let outcome = match attempt.await {
                Ok(Ok(Some(held))) => Outcome::Held(held),
                Ok(Ok(None)) => Outcome::Refused,
                Ok(Err(e)) => {
                    warn!(error = %e, "the lease could not be renewed");
                    Outcome::Unreachable
                }
                Err(_) => {
                    warn!("the lease's renewal took longer than its interval");
                    Outcome::Unreachable
                }
            };
            if let Some(previous) = renewal.after(outcome, sent, &l) {
                on_lead.took_over(previous);
            }
            tokio::time::sleep_until((sent + renew).into()).await;
        }
    });
    leadership
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn held(term: i64, previous: Option<&str>) -> Outcome {
        Outcome::Held(Held {
            term,
            previous: previous.map(Into::into),
        })
    }

    /// A leader cut off from the database takes no new call once its
    /// lease can no longer be proven, and takes calls again when it renews
    /// under the same term; it stands by when the database answers that
    /// another holds the lease. A standby may take a lapsed lease only
    /// after a lease's length in touch, and never while cut off.
    #[test]
    fn a_leader_without_the_database_stops_when_its_lease_is_unproven() {
        let lease = Duration::from_secs(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let l = Leadership::standby("a");
        let mut r = Renewal::new(lease);
        assert!(!r.may_take(at(0)), "not in touch yet");

        assert_eq!(r.after(held(1, None), at(0), &l), Some(None));
        assert!(l.leads_at(at(2_999)) && !l.leads_at(at(3_000)));
        assert_eq!(r.after(held(1, None), at(1_000), &l), None, "a renewal");
        assert!(r.may_take(at(3_000)) && !r.may_take(at(2_999)));

        // Cut off: still proven until the last renewal's lease ends.
        assert_eq!(r.after(Outcome::Unreachable, at(2_000), &l), None);
        assert!(l.leads_at(at(3_999)) && !l.leads_at(at(4_000)));
        assert_eq!(r.after(Outcome::Unreachable, at(5_000), &l), None);
        assert!(!l.leads_at(at(5_000)));
        assert!(!r.may_take(at(3_600_000)));
        // Back, and the lease still its own: leads under the same term,
        // nothing to take over.
        assert_eq!(r.after(held(1, None), at(60_000), &l), None);
        assert!(l.leads_at(at(62_999)) && !l.leads_at(at(63_000)));
        assert!(!r.may_take(at(62_999)) && r.may_take(at(63_000)));

        // Back to find another holding it: stands by.
        assert_eq!(r.after(Outcome::Refused, at(64_000), &l), None);
        assert!(!l.leads_at(at(64_000)));

        // A standby stays one while the database does not answer.
        r.after(Outcome::Unreachable, at(100_000), &l);
        assert!(!l.leads_at(at(100_000)));
        // Taking the lease over from another node says from whom.
        r.after(Outcome::Refused, at(101_000), &l);
        assert_eq!(
            r.after(held(2, Some("b")), at(104_000), &l),
            Some(Some("b".into()))
        );
        assert!(l.leads_at(at(106_999)));
    }
}

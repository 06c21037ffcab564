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
//! A standby reads, with each attempt, how long the holder's lease has
//! left. Once the holder is late with a renewal, a take-over is coming:
//! until the moment this node should lead (the lease's end, a renewal
//! later, and one more for the database's delay), an INVITE that reaches
//! it is held (100 Trying) rather than refused, and taken the moment this
//! node leads; a caller who dials in the seconds between a leader's death
//! and the take-over is answered, not turned away. An INVITE is refused
//! (503) only once a reading shows the holder renewed after the INVITE
//! came (it lives: the front should reach it), or this node cannot take
//! the lease (out of touch with the database), or a lease and two
//! renewals passed (`Leadership::after_take_over`). A reading that merely
//! does not show the holder late yet proves nothing: a holder is seen
//! late only a renewal after it died.
//!
//! Without a `[cluster]` section there is one node, and it always leads.

use crate::config::ClusterSection;
use crate::store::{Held, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Standing by: the holder's lease ends then, as last read (µs after
    /// `epoch`); 0: not known.
    holder_end_us: AtomicU64,
    /// Standing by: if the holder renews no more, this node should lead by
    /// then (µs after `epoch`); 0: it could not (out of touch).
    due_us: AtomicU64,
    /// How long the lease lasts, and how often it is read.
    lease: Duration,
    renew: Duration,
    /// Readings of the lease so far (each attempt, whatever its outcome).
    readings: AtomicU64,
    /// Whether the last reading had an answer from the database.
    reached: AtomicBool,
    /// Told after each reading.
    changed: tokio::sync::Notify,
}

impl Leadership {
    /// A node that leads for good (one node, SQLite).
    pub fn always(node: &str) -> Leadership {
        let l = Leadership::standby(node, Duration::ZERO, Duration::ZERO);
        l.0.until_us.store(u64::MAX, Ordering::SeqCst);
        l
    }

    fn standby(node: &str, lease: Duration, renew: Duration) -> Leadership {
        Leadership(Arc::new(Inner {
            node: node.to_string(),
            process: uuid::Uuid::new_v4().to_string(),
            epoch: Instant::now(),
            until_us: AtomicU64::new(0),
            holder_end_us: AtomicU64::new(0),
            due_us: AtomicU64::new(0),
            lease,
            renew,
            readings: AtomicU64::new(0),
            reached: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
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
        now_us_of(self, now) < self.0.until_us.load(Ordering::SeqCst)
    }

    /// Standing by while a take-over is coming (the holder, as last read,
    /// is late with a renewal): the moment by which this node should
    /// lead. None when it leads, or no take-over is seen coming. A holder
    /// that renews every `renew` is never seen with less than
    /// `lease - renew` left, give or take the database's delay (a quarter
    /// of a renewal allowed for it).
    fn taking_over_at(&self, now: Instant) -> Option<Instant> {
        let now_us = now_us_of(self, now);
        let end = self.0.holder_end_us.load(Ordering::SeqCst);
        let due = self.0.due_us.load(Ordering::SeqCst);
        let (lease, renew) = (self.0.lease, self.0.renew);
        let late_under = lease.saturating_sub(renew + renew / 4).as_micros() as u64;
        let late = end.saturating_sub(now_us) < late_under;
        (end > 0 && due > now_us && late && !self.leads_at(now))
            .then(|| self.0.epoch + Duration::from_micros(due))
    }

    /// For an INVITE that reached this node while it does not lead: waits
    /// until this node leads (true), or until it is clear it will not
    /// soon (false): a reading shows the holder renewed after the call
    /// came, or the last reading since had no answer from the database,
    /// or a take-over seen coming did not come in its time, or a lease and
    /// two renewals passed.
    pub async fn after_take_over(&self) -> bool {
        let arrived = Instant::now();
        let arrived_us = now_us_of(self, arrived);
        let before = self.0.readings.load(Ordering::SeqCst);
        let lease_us = self.0.lease.as_micros() as u64;
        let bound = arrived + self.0.lease + self.0.renew * 2;
        loop {
            let told = self.0.changed.notified();
            if self.leads() {
                return true;
            }
            let now = Instant::now();
            let until = match self.taking_over_at(now) {
                Some(by) => by,
                None => {
                    let fresh = self.0.readings.load(Ordering::SeqCst) > before;
                    if fresh && !self.0.reached.load(Ordering::SeqCst) {
                        return false;
                    }
                    // A lease that ends a lease after the call came was
                    // renewed after it: the holder lives.
                    if self.0.holder_end_us.load(Ordering::SeqCst) >= arrived_us + lease_us {
                        return false;
                    }
                    bound
                }
            };
            if now >= until {
                return false;
            }
            tokio::select! {
                _ = told => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// One more reading of the lease; `reached`: the database answered.
    fn read(&self, reached: bool) {
        self.0.reached.store(reached, Ordering::SeqCst);
        self.0.readings.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }

    /// Standing by: the holder's lease ends at `holder_end`, and this node
    /// should lead by `due` if it renews no more; None: not known.
    fn expect(&self, seen: Option<(Instant, Instant)>) {
        let (end, due) = seen.map_or((0, 0), |(end, due)| {
            (now_us_of(self, end).max(1), now_us_of(self, due).max(1))
        });
        self.0.holder_end_us.store(end, Ordering::SeqCst);
        self.0.due_us.store(due, Ordering::SeqCst);
        self.0.changed.notify_waiters();
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
        self.0
            .until_us
            .store(now_us_of(self, until).max(1), Ordering::SeqCst);
        self.expect(None);
    }

    fn lost(&self) {
        self.0.until_us.store(0, Ordering::SeqCst);
    }
}

fn now_us_of(l: &Leadership, t: Instant) -> u64 {
    t.saturating_duration_since(l.0.epoch).as_micros() as u64
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
    /// take it yet; with how long the lease had left then on the
    /// database's clock, when known (negative: it ran out that long ago).
    Refused(Option<i64>),
    /// The database did not answer (an error, or no answer within `renew`).
    Unreachable,
}

/// What renewals have made of this node: the decisions of the renewing
/// task, without the database or the clock.
struct Renewal {
    lease: Duration,
    renew: Duration,
    /// The term this node holds; None while standing by.
    term: Option<i64>,
    /// Since when every attempt has had an answer from the database.
    in_touch_since: Option<Instant>,
    /// The lease ran out unrenewed while this node held it (told once).
    cut_off: bool,
}

impl Renewal {
    fn new(lease: Duration, renew: Duration) -> Renewal {
        Renewal {
            lease,
            renew,
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

    /// Standing by, the attempt sent at `sent` found the lease with
    /// `left_ms` to run: when it ends, and by when this node should lead
    /// if the holder renews no more: an attempt at most a renewal after
    /// the lease's end (and after a lease's length in touch since `since`)
    /// takes it, and one more renewal allows for the database's delay.
    fn seen(&self, left_ms: i64, sent: Instant, since: Instant) -> (Instant, Instant) {
        let end = if left_ms >= 0 {
            sent + Duration::from_millis(left_ms as u64)
        } else {
            sent.checked_sub(Duration::from_millis(left_ms.unsigned_abs()))
                .unwrap_or(sent)
        };
        (end, end.max(since + self.lease) + self.renew * 2)
    }

    /// Applies the outcome of the attempt sent at `sent` to `l`. Returns
    /// `Some(previous)` when this node has just taken the lease over.
    fn after(&mut self, outcome: Outcome, sent: Instant, l: &Leadership) -> Option<Option<String>> {
        let reached = !matches!(outcome, Outcome::Unreachable);
        let after = self.apply(outcome, sent, l);
        l.read(reached);
        after
    }

    fn apply(&mut self, outcome: Outcome, sent: Instant, l: &Leadership) -> Option<Option<String>> {
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
            Outcome::Refused(left_ms) => {
                let since = *self.in_touch_since.get_or_insert(sent);
                self.cut_off = false;
                l.expect(left_ms.map(|left| self.seen(left, sent, since)));
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
                // What was seen coming stays until its time: one slow
                // answer does not turn the held callers away.
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
    let (lease, renew) = (cluster.lease, cluster.renew);
    let leadership = Leadership::standby(&cluster.node, lease, renew);
    let l = leadership.clone();
    tokio::spawn(async move {
        let mut renewal = Renewal::new(lease, renew);
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(renew, async {
                let held = store
                    .try_lead(
                        l.node(),
                        &l.0.process,
                        lease.as_millis() as i64,
                        renewal.may_take(sent),
                    )
                    .await?;
                match held {
                    Some(held) => Ok(Outcome::Held(held)),
                    // How long the holder's lease has left, to see a
                    // take-over coming; not knowing it only costs that.
                    None => Ok::<_, crate::store::StoreError>(Outcome::Refused(
                        store.lease_left_ms().await.ok().flatten(),
                    )),
                }
            });
            let outcome = match attempt.await {
                Ok(Ok(outcome)) => outcome,
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
        let l = Leadership::standby("a", Duration::from_secs(3), Duration::from_secs(1));
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
        let l = Leadership::standby("a", lease, Duration::from_secs(1));
        let mut r = Renewal::new(lease, Duration::from_secs(1));
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
        assert_eq!(r.after(Outcome::Refused(Some(2_500)), at(64_000), &l), None);
        assert!(!l.leads_at(at(64_000)));

        // A standby stays one while the database does not answer.
        r.after(Outcome::Unreachable, at(100_000), &l);
        assert!(!l.leads_at(at(100_000)));
        // Taking the lease over from another node says from whom.
        r.after(Outcome::Refused(None), at(101_000), &l);
        assert_eq!(
            r.after(held(2, Some("b")), at(104_000), &l),
            Some(Some("b".into()))
        );
        assert!(l.leads_at(at(106_999)));
    }

    /// A standby sees a take-over coming once the holder, as last read,
    /// is late with a renewal; it expects to lead by the lease's end (or a
    /// lease's length in touch) plus two renewals, and forgets it when the
    /// holder renews and when it leads; an unanswered attempt changes
    /// nothing before that time.
    #[test]
    fn a_standby_sees_a_take_over_coming_once_the_leader_is_late() {
        let (lease, renew) = (Duration::from_secs(3), Duration::from_secs(1));
        let l = Leadership::standby("b", lease, renew);
        // Instants on the leadership's own µs scale.
        let t0 = l.0.epoch;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Renewal::new(lease, renew);
        // Read with 2.9 s left: the holder renewed 100 ms ago and is late
        // only once 1.75 s are left, unless it renews again.
        r.after(Outcome::Refused(Some(2_900)), at(0), &l);
        assert_eq!(l.taking_over_at(at(1_000)), None);
        assert_eq!(l.taking_over_at(at(1_149)), None);
        assert_eq!(l.taking_over_at(at(1_151)), Some(at(5_000)));
        // It did renew: nothing coming.
        r.after(Outcome::Refused(Some(2_950)), at(1_000), &l);
        assert_eq!(l.taking_over_at(at(1_500)), None);
        // Then it stops: late from 2.2 s, due two renewals after the end
        // (3.95 s), never past that.
        r.after(Outcome::Refused(Some(1_950)), at(2_000), &l);
        assert_eq!(l.taking_over_at(at(2_000)), None);
        assert_eq!(l.taking_over_at(at(2_300)), Some(at(5_950)));
        assert_eq!(l.taking_over_at(at(5_950)), None, "not past its time");
        r.after(Outcome::Refused(Some(-50)), at(4_000), &l);
        assert_eq!(l.taking_over_at(at(4_000)), Some(at(5_950)));
        // One attempt unanswered: what was seen coming stays until its time.
        r.after(Outcome::Unreachable, at(4_500), &l);
        assert_eq!(l.taking_over_at(at(4_500)), Some(at(5_950)));
        // Back in touch: it may take the lease only after a lease's length.
        r.after(Outcome::Refused(Some(-2_000)), at(5_000), &l);
        assert_eq!(l.taking_over_at(at(5_000)), Some(at(10_000)));
        // Not knowing what is left: nothing expected.
        r.after(Outcome::Refused(None), at(6_000), &l);
        assert_eq!(l.taking_over_at(at(6_000)), None);
        r.after(Outcome::Refused(Some(-3_000)), at(7_000), &l);
        assert!(l.taking_over_at(at(7_000)).is_some());
        r.after(held(2, Some("a")), at(8_000), &l);
        assert_eq!(l.taking_over_at(at(8_000)), None, "it leads");
    }

    /// A held INVITE is refused once a reading shows the holder renewed
    /// after it came, or the database did not answer, or a lease and two
    /// renewals pass; a reading that only does not show the holder late
    /// yet keeps it waiting; it is taken the moment the lease is proven.
    #[tokio::test]
    async fn a_held_invite_is_refused_only_once_the_holder_is_seen_alive_after_it() {
        use tokio::time::timeout;
        let (lease, renew) = (Duration::from_secs(3), Duration::from_secs(1));
        let l = Leadership::standby("b", lease, renew);
        let mut r = Renewal::new(lease, renew);
        let pending = Duration::ZERO;

        let wait = l.after_take_over();
        tokio::pin!(wait);
        assert!(
            timeout(pending, &mut wait).await.is_err(),
            "waits for a reading"
        );
        // Renewed 100 ms before this reading: perhaps before the call came,
        // and not late yet; it may have died since.
        r.after(Outcome::Refused(Some(2_900)), Instant::now(), &l);
        assert!(timeout(pending, &mut wait).await.is_err(), "proves nothing");
        r.after(Outcome::Refused(Some(3_000)), Instant::now(), &l);
        assert!(!wait.await, "renewed after the call came: refused");

        let wait = l.after_take_over();
        tokio::pin!(wait);
        r.after(Outcome::Refused(Some(1_000)), Instant::now(), &l);
        assert!(
            timeout(pending, &mut wait).await.is_err(),
            "the holder is late: a take-over is coming"
        );
        r.after(held(2, Some("a")), Instant::now(), &l);
        assert!(wait.await, "this node leads: taken");

        // Another node holds it again; then the database does not answer.
        r.after(Outcome::Refused(Some(2_900)), Instant::now(), &l);
        let wait = l.after_take_over();
        tokio::pin!(wait);
        assert!(timeout(pending, &mut wait).await.is_err());
        r.after(Outcome::Unreachable, Instant::now(), &l);
        assert!(!wait.await, "out of touch, it cannot lead: refused");

        let l = Leadership::standby("c", Duration::from_millis(200), Duration::from_millis(50));
        let started = Instant::now();
        assert!(!l.after_take_over().await, "no reading at all");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}

//! The ACD: queues of waiting callers, their positions and overflow.
//!
//! Pure and deterministic: events and `now` go in, actions come out. It
//! never touches a socket or reads the clock, so tests drive it with a
//! fake clock (`runtime` is the thin task that feeds it real time).

pub mod runtime;

use crate::config::{parse_overflow, Overflow, QueueConfig};
use crate::ids::CallId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Waiting {
    call: CallId,
    /// When the caller first reached us: orders callers across overflow.
    arrived: Instant,
    /// When the caller entered this queue: starts the max-wait clock.
    entered: Instant,
}

#[derive(Debug, Clone)]
struct QueueState {
    max_wait: Duration,
    overflow: Option<String>,
    waiting: Vec<Waiting>,
}

/// What the ACD decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcdAction {
    /// The caller waited `max_wait` and now waits in `to`.
    Overflowed {
        call: CallId,
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    pub name: String,
    pub waiting: Vec<WaitingSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingSnapshot {
    pub call_id: CallId,
    pub position: u32,
    pub wait_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcdError {
    #[error("no queue named `{0}`")]
    UnknownQueue(String),
}

#[derive(Debug, Clone)]
pub struct Acd {
    queues: BTreeMap<String, QueueState>,
}

impl Acd {
    pub fn new(configs: &BTreeMap<String, QueueConfig>) -> Acd {
        let queues = configs
            .iter()
            .map(|(name, c)| {
                let overflow = c
                    .overflow
                    .as_deref()
                    .and_then(parse_overflow)
                    .map(|o| match o {
                        Overflow::Queue(q) => q,
                    });
                (
                    name.clone(),
                    QueueState {
                        max_wait: c.max_wait,
                        overflow,
                        waiting: Vec::new(),
                    },
                )
            })
            .collect();
        Acd { queues }
    }

    /// Puts a caller in a queue, ordered by first arrival (a caller that
    /// overflowed keeps its place ahead of later arrivals).
    pub fn enqueue(
        &mut self,
        call: CallId,
        queue: &str,
        arrived: Instant,
        now: Instant,
    ) -> Result<u32, AcdError> {
        self.remove(&call);
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| AcdError::UnknownQueue(queue.to_string()))?;
        let idx = q.waiting.partition_point(|w| w.arrived <= arrived);
        q.waiting.insert(
            idx,
            Waiting {
                call,
                arrived,
                entered: now,
            },
        );
        Ok(idx as u32 + 1)
    }

    /// Takes a caller out of whatever queue holds it.
    pub fn remove(&mut self, call: &CallId) -> bool {
        for q in self.queues.values_mut() {
            if let Some(i) = q.waiting.iter().position(|w| &w.call == call) {
                q.waiting.remove(i);
                return true;
            }
        }
        false
    }

    /// The caller's queue and 1-based position.
    pub fn position(&self, call: &CallId) -> Option<(&str, u32)> {
        self.queues.iter().find_map(|(name, q)| {
            q.waiting
                .iter()
                .position(|w| &w.call == call)
                .map(|i| (name.as_str(), i as u32 + 1))
        })
    }

    /// Applies every rule whose time has come.
    pub fn poll(&mut self, now: Instant) -> Vec<AcdAction> {
        let mut moves = Vec::new();
        for (name, q) in &mut self.queues {
            let Some(target) = &q.overflow else { continue };
            let max_wait = q.max_wait;
            let mut i = 0;
            while i < q.waiting.len() {
                if now.saturating_duration_since(q.waiting[i].entered) >= max_wait {
                    let w = q.waiting.remove(i);
                    moves.push((w, name.clone(), target.clone()));
                } else {
                    i += 1;
                }
            }
        }
        let mut actions = Vec::new();
        for (w, from, to) in moves {
            let call = w.call.clone();
            // Config checking guarantees the target exists; if it did not,
            // the caller stays where it was rather than being lost.
            if self.enqueue(w.call.clone(), &to, w.arrived, now).is_err() {
                let _ = self.enqueue(w.call, &from, w.arrived, w.entered);
                continue;
            }
            actions.push(AcdAction::Overflowed { call, from, to });
        }
        actions
    }

    /// When `poll` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| q.overflow.is_some())
            .flat_map(|q| q.waiting.iter().map(move |w| w.entered + q.max_wait))
            .min()
    }

    pub fn snapshot(&self, now: Instant) -> Vec<QueueSnapshot> {
        self.queues
            .iter()
            .map(|(name, q)| QueueSnapshot {
                name: name.clone(),
                waiting: q
                    .waiting
                    .iter()
                    .enumerate()
                    .map(|(i, w)| WaitingSnapshot {
                        call_id: w.call.clone(),
                        position: i as u32 + 1,
                        wait_ms: now.saturating_duration_since(w.arrived).as_millis() as u64,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> BTreeMap<String, QueueConfig> {
        let q = |name: &str, secs: u64, overflow: Option<&str>| {
            (
                name.to_string(),
                QueueConfig {
                    name: name.into(),
                    description: String::new(),
                    max_wait: Duration::from_secs(secs),
                    overflow: overflow.map(String::from),
                    prompt_interval: Duration::from_secs(10),
                },
            )
        };
        [q("a", 60, Some("queue:backup")), q("backup", 600, None)].into()
    }

    fn id(s: &str) -> CallId {
        CallId(s.into())
    }

    #[test]
    fn positions_follow_arrival() {
        let t0 = Instant::now();
        let mut acd = Acd::new(&queues());
        assert_eq!(acd.enqueue(id("1"), "a", t0, t0), Ok(1));
        assert_eq!(
            acd.enqueue(id("2"), "a", t0 + Duration::from_secs(1), t0),
            Ok(2)
        );
        assert_eq!(acd.position(&id("2")), Some(("a", 2)));
        assert!(acd.remove(&id("1")));
        assert_eq!(acd.position(&id("2")), Some(("a", 1)));
        assert!(!acd.remove(&id("1")));
        assert_eq!(
            acd.enqueue(id("x"), "nope", t0, t0),
            Err(AcdError::UnknownQueue("nope".into()))
        );
    }

    #[test]
    fn overflow_after_max_wait_keeps_arrival_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut acd = Acd::new(&queues());
        acd.enqueue(id("late"), "backup", t0 + s(30), t0 + s(30))
            .unwrap();
        acd.enqueue(id("early"), "a", t0, t0).unwrap();
        assert_eq!(acd.next_deadline(), Some(t0 + s(60)));
        assert!(acd.poll(t0 + s(59)).is_empty());
        let actions = acd.poll(t0 + s(60));
        assert_eq!(
            actions,
            vec![AcdAction::Overflowed {
                call: id("early"),
                from: "a".into(),
                to: "backup".into()
            }]
        );
        // Arrived first, so ahead of the caller already in backup.
        assert_eq!(acd.position(&id("early")), Some(("backup", 1)));
        assert_eq!(acd.position(&id("late")), Some(("backup", 2)));
        // The backup queue has no overflow: nobody is ever moved out.
        assert_eq!(acd.next_deadline(), None);
        assert!(acd.poll(t0 + s(100_000)).is_empty());
        assert_eq!(acd.position(&id("early")), Some(("backup", 1)));
    }

    #[test]
    fn snapshot_reports_wait_from_arrival() {
        let t0 = Instant::now();
        let mut acd = Acd::new(&queues());
        acd.enqueue(id("1"), "a", t0, t0).unwrap();
        let snap = acd.snapshot(t0 + Duration::from_millis(1500));
        let a = snap.iter().find(|q| q.name == "a").unwrap();
        assert_eq!(a.waiting[0].wait_ms, 1500);
        assert_eq!(a.waiting[0].position, 1);
    }
}

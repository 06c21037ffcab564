//! Live events for the panel: what changed, pushed as it happens.
//!
//! Calls announce when they are bridged to an agent and when they end; the
//! ACD's queues and agents, today's figures and incident changes follow.
//! Everything goes out on one broadcast channel; each panel connection
//! takes what its user may see (`web::live`) and, if it falls behind,
//! starts again from a fresh snapshot.

use crate::acd::runtime::AcdHandle;
use crate::acd::{AgentSnapshot, QueueSnapshot};
use crate::store::{now_ms, DayCounts, IncidentRow, Store};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// A call bridged to an agent: what the call-taker's screen opens with.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BridgedCall {
    pub call_id: String,
    pub incident_id: String,
    pub agent_id: String,
    pub caller_number: Option<String>,
    /// What the network said of the caller's location, if anything.
    pub location: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub service: String,
    pub arrived_at: i64,
    pub bridged_at: i64,
    /// The caller is speaking now (the desk counts their silence).
    pub speaking: bool,
    /// The caller pressed 5 twice.
    pub silent_emergency: bool,
    /// Prank calls from the number lately, if it is a repeat prank caller.
    pub pranks: u32,
}

/// Today's figures, as the supervisor sees them.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Figures {
    /// The start of "today" in the center's time zone (ms since the epoch).
    pub day_start: i64,
    #[serde(flatten)]
    pub counts: DayCounts,
    /// Percentages of all calls today; `None` before the first call.
    pub answered_10s_pct: Option<f64>,
    pub answered_20s_pct: Option<f64>,
    pub abandoned_pct: Option<f64>,
    pub prank_pct: Option<f64>,
    pub ghost_pct: Option<f64>,
    /// Average arrival-to-agent time of answered calls, in seconds.
    pub avg_answer_s: Option<f64>,
}

impl Figures {
    pub fn from_counts(day_start: i64, c: DayCounts) -> Figures {
        let pct = |n: i64| (c.calls > 0).then(|| 100.0 * n as f64 / c.calls as f64);
        Figures {
            day_start,
            answered_10s_pct: pct(c.answered_10s),
            answered_20s_pct: pct(c.answered_20s),
            abandoned_pct: pct(c.abandoned),
            prank_pct: pct(c.prank),
            ghost_pct: pct(c.ghost),
            avg_answer_s: (c.answered > 0)
                .then(|| c.answer_ms_total as f64 / c.answered as f64 / 1000.0),
            counts: c,
        }
    }
}

/// The start of the day that holds `now_ms`, in a zone `offset_hours`
/// from UTC.
pub fn day_start(now_ms: i64, offset_hours: i8) -> i64 {
    const DAY: i64 = 24 * 3600 * 1000;
    let offset = i64::from(offset_hours) * 3600 * 1000;
    (now_ms + offset).div_euclid(DAY) * DAY - offset
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Queues {
        at: i64,
        queues: Vec<QueueSnapshot>,
        agents: Vec<AgentSnapshot>,
    },
    CallBridged(BridgedCall),
    CallEnded {
        call_id: String,
        incident_id: String,
        agent_id: Option<String>,
        cause: String,
    },
    /// An incident changed; `previous_agency` is set when it moved, so the
    /// agency it left hears of it too.
    Incident {
        incident: IncidentRow,
        previous_agency: Option<String>,
    },
    /// What the agency an incident moved away from is told of it: that it
    /// left, and nothing of what it holds now (`web::live::shown`). Never
    /// broadcast, only made per user from `Incident`.
    IncidentLeft {
        incident_id: String,
    },
    Figures(Figures),
    /// The caller pressed 5 twice: a silent emergency. `agent_id`: the
    /// call-taker whose phone rings for it or who has it.
    SilentEmergency {
        call_id: String,
        incident_id: String,
        agent_id: Option<String>,
        at: i64,
    },
    /// The caller with this agent began speaking, or fell quiet.
    CallerVoice {
        call_id: String,
        agent_id: String,
        speaking: bool,
    },
    /// Where a warm transfer stands: ringing, talking, conference,
    /// completed, or how it ended (cancelled, no_answer...).
    Transfer {
        call_id: String,
        incident_id: String,
        transfer_id: String,
        /// The agent who had the caller (while they still do).
        agent_id: Option<String>,
        agency: String,
        dispatcher: Option<String>,
        state: String,
    },
}

/// The hub: cheap to clone, shared by calls, the store writer and the web.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    /// Calls bridged now, so a panel that (re)connects mid-call finds its call.
    bridged: Arc<Mutex<HashMap<String, BridgedCall>>>,
    /// Woken when call records changed (the figures are due again).
    calls_changed: Arc<Notify>,
    figures: Arc<Mutex<Option<Figures>>>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Live {
        // Deep enough for bursts; a slower client gets a snapshot instead.
        let (tx, _) = broadcast::channel(1024);
        Live {
            tx,
            bridged: Arc::default(),
            calls_changed: Arc::new(Notify::new()),
            figures: Arc::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    pub fn send(&self, ev: LiveEvent) {
        match &ev {
            LiveEvent::CallBridged(b) => {
                self.lock_bridged().insert(b.call_id.clone(), b.clone());
            }
            LiveEvent::CallEnded { call_id, .. } => {
                self.lock_bridged().remove(call_id);
            }
            _ => {}
        }
        let _ = self.tx.send(Arc::new(ev));
    }

    /// The call an agent talks on now, if any.
    pub fn bridged_to(&self, agent: &str) -> Option<BridgedCall> {
        self.lock_bridged()
            .values()
            .find(|b| b.agent_id == agent)
            .cloned()
    }

    fn lock_bridged(&self) -> std::sync::MutexGuard<'_, HashMap<String, BridgedCall>> {
        self.bridged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call records were written: the figures are due again.
    pub fn calls_changed(&self) {
        self.calls_changed.notify_one();
    }

    /// The latest figures, if they were ever computed.
    pub fn figures(&self) -> Option<Figures> {
        self.figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts the tasks that turn ACD changes and call records into
    /// events. Each coalesces bursts: at most one event per `QUEUES_EVERY`
    /// or `FIGURES_EVERY`, however many changes came in between.
    pub fn spawn_feeds(&self, acd: AcdHandle, store: Store, utc_offset_hours: i8) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = acd.changes();
            while changes.changed().await.is_ok() {
                tokio::time::sleep(QUEUES_EVERY).await;
                changes.mark_unchanged();
                // Nobody watching (a panel gets a snapshot when it connects).
                if me.tx.receiver_count() == 0 {
                    continue;
                }
                let queues = acd.snapshot().await;
                let agents = acd.agents().await;
                me.send(LiveEvent::Queues {
                    at: now_ms(),
                    queues,
                    agents,
                });
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            // Sent after every change of the call records (the supervisor's
            // lists follow them too), and when the figures move by the clock.
            let mut woken = true;
            loop {
                let start = day_start(now_ms(), utc_offset_hours);
                match store.day_counts(start, start + 24 * 3600 * 1000).await {
                    Ok(c) => {
                        let f = Figures::from_counts(start, c);
                        let fresh = {
                            let mut slot = me.figures.lock().unwrap_or_else(|p| p.into_inner());
                            let fresh = slot.as_ref() != Some(&f);
                            *slot = Some(f.clone());
                            fresh
                        };
                        if fresh || woken {
                            me.send(LiveEvent::Figures(f));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "figures not computed"),
                }
                // Again when calls change, and at least once a minute (the
                // day turns over; a database that was down comes back).
                woken = tokio::time::timeout(Duration::from_secs(60), me.calls_changed.notified())
                    .await
                    .is_ok();
                tokio::time::sleep(FIGURES_EVERY).await;
            }
        });
    }
}

const QUEUES_EVERY: Duration = Duration::from_millis(200);
const FIGURES_EVERY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_start_in_wib() {
        // 2026-11-23 00:30 WIB is 2026-11-22 17:30 UTC.
        let t = 1_795_368_600_000; // 2026-11-22T17:30:00Z
        let start = day_start(t, 7);
        assert_eq!(start, 1_795_366_800_000); // 2026-11-22T17:00:00Z
        assert_eq!(day_start(start, 7), start);
        assert_eq!(day_start(start - 1, 7), start - 24 * 3600 * 1000);
        assert_eq!(day_start(t, 0), 1_795_305_600_000); // 2026-11-22T00:00:00Z
    }

    #[test]
    fn figures_percentages() {
        let f = Figures::from_counts(
            0,
            DayCounts {
                calls: 8,
                answered: 4,
                answered_10s: 2,
                answered_20s: 3,
                answer_ms_total: 40_000,
                abandoned: 2,
                prank: 1,
                ghost: 2,
            },
        );
        assert_eq!(f.answered_10s_pct, Some(25.0));
        assert_eq!(f.answered_20s_pct, Some(37.5));
        assert_eq!(f.abandoned_pct, Some(25.0));
        assert_eq!(f.prank_pct, Some(12.5));
        assert_eq!(f.ghost_pct, Some(25.0));
        assert_eq!(f.avg_answer_s, Some(10.0));
        let none = Figures::from_counts(0, DayCounts::default());
        assert_eq!((none.answered_10s_pct, none.avg_answer_s), (None, None));
    }
}

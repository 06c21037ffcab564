//! The task that owns the ACD: feeds it commands and real time, and tells
//! each call what the ACD decided about it.

use super::{
    Acd, AcdAction, AcdError, AgentSnapshot, OfferFailure, QueueSnapshot, Requested, Skills,
};
use crate::ids::CallId;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// What the ACD tells a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcdNotice {
    Overflowed {
        from: String,
        to: String,
    },
    /// Dial this SIP destination (another center) and bridge to it.
    OverflowedToSip {
        from: String,
        target: String,
    },
    /// Ring this agent.
    Offer {
        agent: String,
    },
    /// Stop ringing this agent: it did not answer in time.
    RingTimeout {
        agent: String,
    },
}

enum Cmd {
    Enqueue {
        call: CallId,
        queue: String,
        require: Skills,
        /// Offer to this agent alone.
        only: Option<String>,
        arrived: Instant,
        standing: super::Standing,
        notices: mpsc::UnboundedSender<AcdNotice>,
        reply: oneshot::Sender<Option<u32>>,
    },
    Leave(CallId),
    Stand(CallId, super::Standing),
    Position(CallId, oneshot::Sender<Option<(String, u32)>>),
    Snapshot(oneshot::Sender<Vec<QueueSnapshot>>),
    Agents(oneshot::Sender<Vec<AgentSnapshot>>),
    CallOf(String, oneshot::Sender<Option<CallId>>),
    SetState(String, Requested, oneshot::Sender<Result<(), AcdError>>),
    Reachable(String, super::Reach, bool),
    Answered(CallId, String),
    OfferFailed(CallId, String, OfferFailure),
    CallEnded(String, String),
}

#[derive(Clone)]
pub struct AcdHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Counts the changes of queues and agents, for the live panel.
    changes: watch::Receiver<u64>,
}

impl AcdHandle {
    pub fn spawn(mut acd: Acd) -> AcdHandle {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let (changed_tx, changes) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut listeners: HashMap<CallId, mpsc::UnboundedSender<AcdNotice>> = HashMap::new();
            loop {
                let deadline = acd.next_deadline();
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                // Questions change nothing; everything else may.
                let mut changed = true;
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        let now = Instant::now();
                        changed = !matches!(cmd, Cmd::Position(..) | Cmd::Snapshot(_) | Cmd::Agents(_) | Cmd::CallOf(..));
                        match cmd {
                            Cmd::Enqueue { call, queue, require, only, arrived, standing, notices, reply } => {
                                let pos = match only {
                                    Some(agent) => acd.enqueue_for(call.clone(), &queue, &agent, arrived, now),
                                    None => acd.enqueue(call.clone(), &queue, require, arrived, now),
                                }
                                .ok();
                                // Placed before any offer is made (`poll`
                                // runs after the command).
                                if pos.is_some() && standing != super::Standing::Normal {
                                    acd.stand(&call, standing);
                                }
                                if pos.is_some() {
                                    listeners.insert(call, notices);
                                }
                                let _ = reply.send(pos);
                            }
                            Cmd::Leave(call) => {
                                acd.remove(&call, now);
                                listeners.remove(&call);
                            }
                            Cmd::Stand(call, standing) => {
                                acd.stand(&call, standing);
                            }
                            Cmd::Position(call, reply) => {
                                let _ = reply.send(acd.position(&call).map(|(q, p)| (q.to_string(), p)));
                            }
                            Cmd::Snapshot(reply) => {
                                let _ = reply.send(acd.snapshot(now));
                            }
                            Cmd::Agents(reply) => {
                                let _ = reply.send(acd.agents(now));
                            }
                            Cmd::CallOf(agent, reply) => {
                                let call = match acd.agent_state(&agent) {
                                    Some(super::AgentState::OnCall { call_id }) => Some(call_id.clone()),
                                    _ => None,
                                };
                                let _ = reply.send(call);
                            }
                            Cmd::SetState(agent, req, reply) => {
                                let _ = reply.send(acd.set_state(&agent, req, now));
                            }
                            Cmd::Reachable(agent, by, yes) => acd.set_reachable(&agent, by, yes, now),
                            Cmd::Answered(call, agent) => {
                                acd.answered(&call, &agent, now);
                                listeners.remove(&call);
                            }
                            Cmd::OfferFailed(call, agent, why) => acd.offer_failed(&call, &agent, why, now),
                            Cmd::CallEnded(agent, queue) => acd.call_ended(&agent, &queue, now),
                        }
                    }
                    _ = sleep => {}
                }
                for action in acd.poll(Instant::now()) {
                    let (call, notice) = match action {
                        AcdAction::Overflowed { call, from, to } => {
                            (call, AcdNotice::Overflowed { from, to })
                        }
                        AcdAction::Offer { call, agent, .. } => (call, AcdNotice::Offer { agent }),
                        AcdAction::RingTimeout { call, agent } => {
                            (call, AcdNotice::RingTimeout { agent })
                        }
                        AcdAction::OverflowedToSip { call, from, target } => {
                            (call, AcdNotice::OverflowedToSip { from, target })
                        }
                    };
                    if let Some(l) = listeners.get(&call) {
                        let _ = l.send(notice);
                    }
                }
                if changed {
                    changed_tx.send_modify(|v| *v += 1);
                }
            }
        });
        AcdHandle { tx, changes }
    }

    /// Changes when queues or agents may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).ok()?;
        rx.await.ok()
    }

    pub async fn enqueue(
        &self,
        call: CallId,
        queue: String,
        require: Skills,
        arrived: Instant,
        notices: mpsc::UnboundedSender<AcdNotice>,
    ) -> Option<u32> {
        let normal = super::Standing::Normal;
        self.enqueue_standing(call, queue, require, arrived, normal, notices)
            .await
    }

    /// Queues a caller who may stand apart: a silent emergency, or a
    /// repeat prank caller.
    pub async fn enqueue_standing(
        &self,
        call: CallId,
        queue: String,
        require: Skills,
        arrived: Instant,
        standing: super::Standing,
        notices: mpsc::UnboundedSender<AcdNotice>,
    ) -> Option<u32> {
        self.ask(|reply| Cmd::Enqueue {
            call,
            queue,
            require,
            only: None,
            arrived,
            standing,
            notices,
            reply,
        })
        .await
        .flatten()
    }

    /// Queues a call for one agent alone (a transfer to a named dispatcher).
    pub async fn enqueue_for(
        &self,
        call: CallId,
        queue: String,
        agent: String,
        arrived: Instant,
        notices: mpsc::UnboundedSender<AcdNotice>,
    ) -> Option<u32> {
        self.ask(|reply| Cmd::Enqueue {
            call,
            queue,
            require: Skills::new(),
            only: Some(agent),
            arrived,
            standing: super::Standing::Normal,
            notices,
            reply,
        })
        .await
        .flatten()
    }

    pub fn leave(&self, call: CallId) {
        let _ = self.tx.send(Cmd::Leave(call));
    }

    /// The caller pressed 5 twice: ahead of every other waiting caller.
    pub fn urgent(&self, call: CallId) {
        let _ = self.tx.send(Cmd::Stand(call, super::Standing::Urgent));
    }

    pub async fn position(&self, call: CallId) -> Option<(String, u32)> {
        self.ask(|r| Cmd::Position(call, r)).await.flatten()
    }

    pub async fn snapshot(&self) -> Vec<QueueSnapshot> {
        self.ask(Cmd::Snapshot).await.unwrap_or_default()
    }

    pub async fn agents(&self) -> Vec<AgentSnapshot> {
        self.ask(Cmd::Agents).await.unwrap_or_default()
    }

    /// The queue place (a call, or a transfer's place) the agent talks on.
    pub async fn call_of(&self, agent: String) -> Option<CallId> {
        self.ask(|r| Cmd::CallOf(agent, r)).await.flatten()
    }

    pub async fn set_state(&self, agent: String, req: Requested) -> Result<(), AcdError> {
        self.ask(|r| Cmd::SetState(agent.clone(), req, r))
            .await
            .unwrap_or(Err(AcdError::UnknownAgent(agent)))
    }

    pub fn reachable(&self, agent: String, by: super::Reach, yes: bool) {
        let _ = self.tx.send(Cmd::Reachable(agent, by, yes));
    }

    pub fn answered(&self, call: CallId, agent: String) {
        let _ = self.tx.send(Cmd::Answered(call, agent));
    }

    pub fn offer_failed(&self, call: CallId, agent: String, why: OfferFailure) {
        let _ = self.tx.send(Cmd::OfferFailed(call, agent, why));
    }

    pub fn call_ended(&self, agent: String, queue: String) {
        let _ = self.tx.send(Cmd::CallEnded(agent, queue));
    }
}

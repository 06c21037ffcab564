//! The task that owns the ACD: feeds it commands and real time, and tells
//! each call what the ACD decided about it.

use super::{Acd, AcdAction, QueueSnapshot};
use crate::ids::CallId;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What the ACD tells a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcdNotice {
    Overflowed { from: String, to: String },
}

pub enum AcdCommand {
    Enqueue {
        call: CallId,
        queue: String,
        arrived: Instant,
        notices: mpsc::UnboundedSender<AcdNotice>,
        reply: oneshot::Sender<Option<u32>>,
    },
    Leave {
        call: CallId,
    },
    Position {
        call: CallId,
        reply: oneshot::Sender<Option<(String, u32)>>,
    },
    Snapshot {
        reply: oneshot::Sender<Vec<QueueSnapshot>>,
    },
}

#[derive(Clone)]
pub struct AcdHandle {
    tx: mpsc::UnboundedSender<AcdCommand>,
}

impl AcdHandle {
    pub fn spawn(mut acd: Acd) -> AcdHandle {
        let (tx, mut rx) = mpsc::unbounded_channel::<AcdCommand>();
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
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(AcdCommand::Enqueue { call, queue, arrived, notices, reply }) => {
                            let pos = acd.enqueue(call.clone(), &queue, arrived, Instant::now()).ok();
                            if pos.is_some() {
                                listeners.insert(call, notices);
                            }
                            let _ = reply.send(pos);
                        }
                        Some(AcdCommand::Leave { call }) => {
                            acd.remove(&call);
                            listeners.remove(&call);
                        }
                        Some(AcdCommand::Position { call, reply }) => {
                            let _ = reply.send(acd.position(&call).map(|(q, p)| (q.to_string(), p)));
                        }
                        Some(AcdCommand::Snapshot { reply }) => {
                            let _ = reply.send(acd.snapshot(Instant::now()));
                        }
                        None => return,
                    },
                    _ = sleep => {}
                }
                for action in acd.poll(Instant::now()) {
                    match action {
                        AcdAction::Overflowed { call, from, to } => {
                            if let Some(l) = listeners.get(&call) {
                                let _ = l.send(AcdNotice::Overflowed { from, to });
                            }
                        }
                    }
                }
            }
        });
        AcdHandle { tx }
    }

    pub async fn enqueue(
        &self,
        call: CallId,
        queue: String,
        arrived: Instant,
        notices: mpsc::UnboundedSender<AcdNotice>,
    ) -> Option<u32> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AcdCommand::Enqueue {
                call,
                queue,
                arrived,
                notices,
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    pub fn leave(&self, call: CallId) {
        let _ = self.tx.send(AcdCommand::Leave { call });
    }

    pub async fn position(&self, call: CallId) -> Option<(String, u32)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(AcdCommand::Position { call, reply }).ok()?;
        rx.await.ok().flatten()
    }

    pub async fn snapshot(&self) -> Vec<QueueSnapshot> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(AcdCommand::Snapshot { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

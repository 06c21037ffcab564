//! Warm transfer: the panel (or, later, the agent's phone) asks a call to
//! hand its caller to an agency's dispatchers. The call task runs it (see
//! `converse`); this holds the requests and what a transfer in progress
//! keeps.

use super::AgentSide;
use crate::acd::runtime::AcdNotice;
use crate::ids::CallId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

pub type Reply = oneshot::Sender<Result<(), String>>;

/// What the panel asks of a call.
pub enum Control {
    /// Put the caller on hold and ring the agency's dispatchers.
    Transfer {
        agency: String,
        /// A named dispatcher of that agency, or any of them.
        agent: Option<String>,
        by: String,
        reply: Reply,
    },
    /// Caller and dispatcher talk; the agent's leg ends.
    Complete { by: String, reply: Reply },
    /// All three talk.
    Conference { by: String, reply: Reply },
    /// The dispatcher's leg ends; the agent has the caller again.
    Cancel { by: String, reply: Reply },
}

/// Every call's control channel, by call id.
#[derive(Clone, Default)]
pub struct Controls {
    map: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>>,
}

impl Controls {
    pub(crate) fn register(&self, call: &CallId) -> mpsc::UnboundedReceiver<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(call.to_string(), tx);
        rx
    }

    pub(crate) fn remove(&self, call: &CallId) {
        self.lock().remove(call.as_str());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Control>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request to a call in progress and waits for its answer.
    pub async fn send(
        &self,
        call: &str,
        make: impl FnOnce(Reply) -> Control,
    ) -> Result<(), String> {
        let tx = self
            .lock()
            .get(call)
            .cloned()
            .ok_or("the call is not in progress")?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .map_err(|_| "the call is not in progress".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the call ended".to_string()))
    }
}

/// A transfer in progress.
pub(crate) struct Transfer {
    pub id: String,
    pub seq: u32,
    pub agency: String,
    pub queue: String,
    /// The transfer's own place in the agency's queue.
    pub acd_id: CallId,
    pub notices: mpsc::UnboundedReceiver<AcdNotice>,
    /// Given up (call-taker told) when no dispatcher answered by then.
    pub deadline: tokio::time::Instant,
    /// The dispatcher's leg, ringing or answered.
    pub dispatcher: Option<AgentSide>,
    pub conference: bool,
    pub by: String,
}

impl Transfer {
    pub fn talking(&self) -> bool {
        self.dispatcher.as_ref().is_some_and(|d| d.talking)
    }
}

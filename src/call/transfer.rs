//! Warm transfer: the panel or the agent's phone asks a call to hand its
//! caller to an agency's dispatchers. The call's machine decides (see
//! `machine::transfer`); this carries the requests to the call.
//!
//! From the phone it comes two ways: a blind REFER to the agency, or an
//! attended transfer (RFC 5589 §7) — the phone holds the call, dials the
//! agency (a *consultation*, a second INVITE from the same phone, handed
//! to the call it belongs to as [`Control::Consult`]), then REFERs the
//! held call with Replaces naming the consultation.

use super::Services;
use crate::ids::CallId;
use crate::sip::ServerLeg;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

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
    /// The call-taker ends the call from the panel (a quick disposition):
    /// the caller's leg and their phone's, desk phone or browser alike.
    HangUp { by: String, reply: Reply },
    /// The agent's phone dialed `agency` while on this call: ring its
    /// dispatchers and connect them to this leg (not to the caller).
    Consult {
        agent: String,
        agency: String,
        leg: Box<ServerLeg>,
        offer: Option<Vec<u8>>,
    },
}

/// The place a call's `seq`-th transfer takes in the agency's queue.
pub(crate) fn transfer_place(call: &CallId, seq: u32) -> CallId {
    CallId(format!("{call}~t{seq}"))
}

/// The call a queue place belongs to: itself, or the call whose transfer
/// it is (a dispatcher who took a transfer is "on" the transfer's place).
pub(crate) fn call_of_place(place: &CallId) -> CallId {
    CallId(
        place
            .as_str()
            .split('~')
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Hands a consultation INVITE from an agent's phone to the call that
/// agent is on; refused when there is none.
pub(crate) async fn hand_consultation(
    s: Arc<Services>,
    leg: ServerLeg,
    offer: Option<Vec<u8>>,
    agent: String,
    agency: String,
) {
    let Some(place) = s.acd.call_of(agent.clone()).await else {
        info!("a consultation from a phone that is on no call: refused");
        leg.reject(403, "No call to transfer");
        return;
    };
    let call = call_of_place(&place);
    let consult = Control::Consult {
        agent,
        agency,
        leg: Box::new(leg),
        offer,
    };
    if let Err(Control::Consult { leg, .. }) = s.controls.hand(&call, consult) {
        leg.reject(403, "No call to transfer");
    }
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
        crate::lock(&self.map)
    }

    /// Gives a call in progress something to act on; hands it back when
    /// the call is gone.
    pub(crate) fn hand(&self, call: &CallId, control: Control) -> Result<(), Control> {
        match self.lock().get(call.as_str()) {
            Some(tx) => tx.send(control).map_err(|e| e.0),
            None => Err(control),
        }
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

//! Warm transfer: the panel or the agent's phone asks a call to hand its
//! caller to an agency's dispatchers. The call task runs it (see
//! `converse`); this holds the requests and what a transfer in progress
//! keeps.
//!
//! From the phone it comes two ways: a blind REFER to the agency, or an
//! attended transfer (RFC 5589 §7) — the phone holds the call, dials the
//! agency (a *consultation*, a second INVITE from the same phone, handed
//! to the call it belongs to as [`Control::Consult`]), then REFERs the
//! held call with Replaces naming the consultation.

use super::{AgentSide, Services};
use crate::acd::runtime::AcdNotice;
use crate::ids::CallId;
use crate::media::ports::RtpSocket;
use crate::media::sdp::{self, LocalAudio, Negotiated};
use crate::media::session::MediaParams;
use crate::sip::request::Replaces;
use crate::sip::ServerLeg;
use std::collections::HashMap;
use std::net::SocketAddr;
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
        self.map.lock().unwrap_or_else(|p| p.into_inner())
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
    /// For an attended transfer from the phone: the phone's consultation
    /// leg, which speaks for the agent while the dispatcher is on.
    pub consult: Option<Consultation>,
}

impl Transfer {
    pub fn talking(&self) -> bool {
        self.dispatcher.as_ref().is_some_and(|d| d.talking)
    }

    /// Whether a REFER's Replaces names this transfer's consultation.
    pub fn replaced_by(&self, r: &Replaces) -> bool {
        self.consult.as_ref().is_some_and(|c| c.leg.is_named_by(r))
    }

    /// Ends the consultation leg, if any: BYE once answered; before, a
    /// final answer (`unanswered`, e.g. 480 when nobody took it).
    pub async fn end_consult(&mut self, unanswered: (u16, &str)) {
        if let Some(c) = self.consult.take() {
            if c.answered {
                c.leg.hangup().await;
            } else {
                c.leg.reject(unanswered.0, unanswered.1);
            }
        }
    }
}

/// The phone's consultation INVITE, answered once a dispatcher answers.
pub(crate) struct Consultation {
    pub leg: ServerLeg,
    /// Taken by the media session when the dispatcher answers.
    pub rtp: Option<RtpSocket>,
    pub local: LocalAudio,
    pub negotiated: Negotiated,
    pub remote: Option<SocketAddr>,
    pub direction: sdp::Direction,
    pub answered: bool,
}

impl Consultation {
    /// Reads the phone's offer and takes a media port; the leg comes back
    /// with the SIP answer to send when that fails.
    pub fn new(
        s: &Services,
        leg: ServerLeg,
        offer: Option<&[u8]>,
    ) -> Result<Consultation, (ServerLeg, u16, &'static str)> {
        let remote = match offer.map(sdp::parse) {
            Some(Ok(r)) => r,
            // Late offers are for trunks; a phone consulting offers.
            _ => return Err((leg, 488, "Not Acceptable Here")),
        };
        let Ok(negotiated) = sdp::negotiate(&remote) else {
            return Err((leg, 488, "Not Acceptable Here"));
        };
        let Ok(rtp) = s.ports.allocate() else {
            return Err((leg, 503, "Service Unavailable"));
        };
        Ok(Consultation {
            leg,
            local: LocalAudio::new(s.config.server.sip.public_ip, rtp.port),
            rtp: Some(rtp),
            negotiated,
            remote: remote.addr,
            direction: remote.direction,
            answered: false,
        })
    }

    /// Answers the phone (a dispatcher is on): the socket and parameters
    /// the media session uses for the agent until the consultation ends.
    pub fn answer(&mut self, rtp_timeout: std::time::Duration) -> Option<(RtpSocket, MediaParams)> {
        let answer = sdp::answer(
            &self.local,
            &self.negotiated,
            sdp::answer_direction(self.direction),
        );
        self.leg.answer(answer).ok()?;
        self.answered = true;
        let params = MediaParams::new(&self.negotiated, self.remote, rtp_timeout);
        Some((self.rtp.take()?, params))
    }

    /// Answers a re-INVITE on the consultation (phones hold it before
    /// they REFER), keeping what was negotiated.
    pub fn reanswer(&mut self, offer: Option<&[u8]>) -> String {
        let dir = sdp::offered_direction(offer);
        self.local.version += 1;
        sdp::answer(&self.local, &self.negotiated, sdp::answer_direction(dir))
    }
}

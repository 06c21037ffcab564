//! The vocabulary of a call's legs, shared by whoever carries a leg (SIP
//! in `sip/`, the browser softphone in `webphone/`) and whoever runs the
//! call (`call/`). It names no transport: the gateway of the browser
//! phone speaks it without knowing SIP, and the call's state machine
//! reads it without knowing either.

use std::future::Future;
use std::pin::Pin;

/// Why a leg we placed (an agent's phone, a center, a called-back caller)
/// did not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFailure {
    NoAnswer,
    Declined,
    Unreachable,
}

/// What happens on a leg we placed (we sent the INVITE).
pub enum AgentLegEvent {
    /// 100 Trying: the far side is alive.
    Trying,
    Ringing,
    /// 200 OK with the far side's answer.
    Answered {
        sdp: Vec<u8>,
    },
    Failed(AgentFailure),
    ReOffer {
        sdp: Option<Vec<u8>>,
        responder: Responder,
    },
    /// The far side hung up (or the leg died) after answering.
    Ended,
    /// The leg is gone after answering without anyone hanging up (the
    /// browser softphone's tab closed): the caller must not be dropped.
    Lost,
    /// The agent's phone asks to transfer the call (REFER, RFC 3515):
    /// `target` is the Refer-To URI; `replaces` is set for an attended
    /// transfer (RFC 3891). Answer with `responder`.
    Refer {
        target: String,
        replaces: Option<String>,
        responder: Responder,
    },
}

/// How a leg that called us ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEnd {
    /// CANCEL before we answered.
    Cancelled,
    /// BYE from the caller.
    RemoteBye,
    /// We answered but no ACK came (RFC 3261 §13.3.1.4): BYE was sent.
    NoAck,
    /// We ended it.
    LocalBye,
    /// The dialog closed under us (the stack dropped it).
    Closed,
    /// Another reason the transport gave, as it named it.
    Other(String),
}

impl LegEnd {
    pub fn cause(&self) -> &str {
        match self {
            LegEnd::Cancelled => "caller_cancel",
            LegEnd::RemoteBye => "caller_bye",
            LegEnd::NoAck => "no_ack",
            LegEnd::LocalBye => "system_bye",
            LegEnd::Closed => "dialog_closed",
            LegEnd::Other(s) => s,
        }
    }
}

/// What happens on a leg that called us (the caller's INVITE, or a
/// phone's consultation).
pub enum LegEvent {
    /// The ACK came; it carries the answer when the INVITE had no offer.
    Confirmed {
        ack_body: Option<Vec<u8>>,
    },
    /// A re-INVITE or UPDATE: answer it with `Responder`.
    ReOffer {
        sdp: Option<Vec<u8>>,
        responder: Responder,
    },
    Ended(LegEnd),
}

/// What a request inside a leg is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 OK with this SDP.
    Sdp(String),
    /// A bodiless answer with this status (202 takes a REFER on).
    Status(u16),
}

/// Sends an answer where the request came from (a SIP transaction).
pub trait Respond: Send {
    fn respond(self: Box<Self>, answer: Answer) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Answers a re-INVITE, an UPDATE or a REFER. A request that came from
/// inside siaga (the browser softphone's hold button) has nobody to answer
/// on the wire: [`Responder::internal`].
pub struct Responder(Option<Box<dyn Respond>>);

impl Responder {
    pub fn new(to: Box<dyn Respond>) -> Responder {
        Responder(Some(to))
    }

    pub fn internal() -> Responder {
        Responder(None)
    }

    pub async fn send(self, answer: Answer) {
        if let Some(to) = self.0 {
            to.respond(answer).await;
        }
    }

    pub async fn ok_with_sdp(self, sdp: String) {
        self.send(Answer::Sdp(sdp)).await
    }

    pub async fn reject(self, code: u16) {
        self.send(Answer::Status(code)).await
    }

    /// 202 Accepted (a REFER taken on).
    pub async fn accept(self) {
        self.send(Answer::Status(202)).await
    }
}

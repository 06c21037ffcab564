//! The agent's side of a call: a SIP phone we INVITE, or the panel's
//! browser softphone. Both report the same events; the call cannot tell
//! them apart but for what a browser cannot do (be told of a REFER's
//! outcome: it never sends one).

use crate::leg::AgentLegEvent;
use crate::sip::AgentLeg;
use crate::webphone::BrowserLeg;

pub(crate) enum Leg {
    Phone(AgentLeg),
    Browser(BrowserLeg),
}

impl Leg {
    pub async fn next_event(&mut self) -> AgentLegEvent {
        match self {
            Leg::Phone(l) => l.next_event().await,
            Leg::Browser(l) => l.next_event().await,
        }
    }

    /// Stops ringing or hangs up, whichever applies.
    pub async fn end(&self) {
        match self {
            Leg::Phone(l) => l.end().await,
            Leg::Browser(l) => l.end(),
        }
    }

    /// Tells a phone how the transfer it asked for went.
    pub async fn notify_transfer(&self, code: u16, reason: &str, done: bool) {
        if let Leg::Phone(l) = self {
            l.notify_transfer(code, reason, done).await;
        }
    }
}

//! The caller's side of the queue: the ACD's offers, the agent's or
//! another center's leg, and what happens when they answer, fail or go.

use super::{
    offer_failure, read_answer, AcdOp, Call, EndCause, MediaOp, Notice, Now, Place, Placed,
    ReplyWith, Side, Stage, Target, OVERFLOW_RING_LIMIT, OVERFLOW_SILENCE_LIMIT,
};
use crate::acd::OfferFailure;
use crate::ids::{AgentId, QueueId};
use crate::leg::AgentFailure;
use crate::live::LiveEvent;
use crate::media::sdp::Direction;
use crate::store::StoreCmd;
use tracing::{info, warn};

impl Call {
    /// Takes the stage out to work on it by value; the handler puts the
    /// next one back.
    pub(super) fn take_stage(&mut self) -> Stage {
        std::mem::replace(&mut self.stage, Stage::Waiting { ringing: None })
    }

    pub(super) fn side(&self, who: AgentId, queue: QueueId, leg: super::LegId) -> Side {
        Side {
            leg,
            who,
            queue,
            law: self.codec.law,
            codec: None,
            version: 1,
            phone_holds: false,
        }
    }

    pub(super) fn on_notice(&mut self, notice: Notice, now: Now) {
        match notice {
            Notice::Overflowed { from, to } => {
                info!(%from, %to, "caller overflowed to the next queue");
                self.event("overflow", format!("{from} -> {to}"), now);
                self.store(StoreCmd::Queue {
                    id: self.id.clone(),
                    queue: to.to_string(),
                });
                self.queue = to;
            }
            Notice::OverflowedToSip { from, target } => {
                info!(%from, %target, "caller overflowed to another center");
                self.event("overflow", format!("{from} -> {target}"), now);
                if let Stage::Waiting {
                    ringing: Some(agent),
                } = self.take_stage()
                {
                    // The caller left the queue: the agent's phone stops.
                    self.end_leg(agent.leg, None);
                }
                let leg = self.ring(Target::Center(target.clone()));
                let center = self.side(target.into(), from.clone(), leg);
                self.stage = Stage::Overflowing {
                    center,
                    from,
                    started: now.at,
                    give_up: now.at + OVERFLOW_SILENCE_LIMIT,
                };
            }
            Notice::Offer(agent) => match self.take_stage() {
                Stage::Waiting { ringing } => {
                    if let Some(old) = ringing {
                        self.end_leg(old.leg, None);
                    }
                    let leg = self.ring(Target::Agent(agent.clone()));
                    let side = self.side(agent, self.queue.clone(), leg);
                    self.stage = Stage::Waiting {
                        ringing: Some(side),
                    };
                }
                other => {
                    warn!(%agent, "an offer for a call that is not waiting: ignored");
                    self.stage = other;
                }
            },
            Notice::RingTimeout(agent) => match self.take_stage() {
                Stage::Waiting { ringing: Some(a) } if a.who == agent => {
                    info!(%agent, "agent did not answer in time; trying the next");
                    self.end_leg(a.leg, None);
                    self.stage = Stage::Waiting { ringing: None };
                }
                other => self.stage = other,
            },
        }
    }

    pub(super) fn ring_failed(&mut self, leg: super::LegId, why: &'static str, now: Now) {
        match self.take_stage() {
            Stage::Waiting { ringing: Some(a) } if a.leg == leg => {
                warn!(agent = %a.who, reason = why, "cannot ring the agent");
                self.acd(AcdOp::OfferFailed(
                    Place::Caller,
                    a.who,
                    OfferFailure::Unreachable,
                ));
                self.stage = Stage::Waiting { ringing: None };
            }
            Stage::Overflowing { center, from, .. } if center.leg == leg => {
                warn!(target = %center.who, reason = why, "cannot reach the overflow target; back to the queue");
                self.queue = from.clone();
                self.acd(AcdOp::Enqueue(from));
                self.stage = Stage::Waiting { ringing: None };
            }
            other => {
                self.stage = other;
                self.dispatcher_ring_failed(leg, why, now);
            }
        }
    }

    /// The overflow target said nothing (or did not answer) in time.
    pub(super) fn center_gave_up(&mut self, now: Now) {
        if let Stage::Overflowing { center, from, .. } = self.take_stage() {
            warn!(target = %center.who, "the overflow target did not answer; back to the queue");
            self.end_leg(center.leg, None);
            self.give_back(center, from, now);
        }
    }

    /// An overflow target failed: the caller goes back to the queue it
    /// left, keeping its arrival time (so its place), and it is on record.
    fn give_back(&mut self, center: Side, from: QueueId, now: Now) {
        self.event("overflow_failed", format!("{} -> {from}", center.who), now);
        self.queue = from.clone();
        self.acd(AcdOp::Enqueue(from));
        self.stage = Stage::Waiting { ringing: None };
    }

    /// The agent or center did not take the call. An agent's failure goes
    /// to the ACD (the agent is set not ready, the call offered anew); a
    /// center's puts the caller back in the queue.
    fn not_taken(&mut self, stage: Stage, why: OfferFailure, now: Now) {
        match stage {
            Stage::Waiting { ringing: Some(a) } => {
                self.acd(AcdOp::OfferFailed(Place::Caller, a.who, why));
                self.stage = Stage::Waiting { ringing: None };
            }
            Stage::Overflowing { center, from, .. } => self.give_back(center, from, now),
            other => self.stage = other,
        }
    }

    /// An event on the leg of the agent (or center) the caller has or rings.
    pub(super) fn on_agent(&mut self, leg: super::LegId, ev: Placed, now: Now) {
        let stage = self.take_stage();
        let ours = match &stage {
            Stage::Waiting { ringing: Some(a) } => a.leg == leg,
            Stage::Overflowing { center, .. } | Stage::WithCenter { center } => center.leg == leg,
            Stage::Talking { agent, .. } => agent.leg == leg,
            _ => false,
        };
        if !ours {
            // A leg already let go of: what it says no longer matters.
            self.stage = stage;
            return;
        }
        match ev {
            Placed::Trying | Placed::Ringing => self.alive(stage),
            Placed::Answered(body) => self.answered(stage, &body, now),
            Placed::Failed(f) => {
                info!(failure = ?f, "the call was not taken");
                self.not_taken(stage, offer_failure(f), now);
            }
            Placed::ReOffer(offer, token) => self.agent_reoffer(stage, offer.as_deref(), token),
            Placed::Refer {
                target,
                replaces,
                token,
            } => {
                self.stage = stage;
                match replaces {
                    Some(named) => self.attended_refer(named, token, now),
                    None => self.blind_refer(&target, token),
                }
            }
            Placed::Ended | Placed::Lost => {
                let lost = ev == Placed::Lost;
                self.agent_gone(stage, lost, now);
            }
        }
    }

    fn alive(&mut self, stage: Stage) {
        self.stage = match stage {
            // Alive: it may take the full limit to answer.
            Stage::Overflowing {
                center,
                from,
                started,
                ..
            } => Stage::Overflowing {
                center,
                from,
                started,
                give_up: started + OVERFLOW_RING_LIMIT,
            },
            other => other,
        };
    }

    fn answered(&mut self, stage: Stage, body: &[u8], now: Now) {
        let (mut side, center) = match stage {
            Stage::Waiting { ringing: Some(a) } => (a, false),
            Stage::Overflowing { center, .. } => (center, true),
            // A repeated 200 changes nothing.
            other => {
                self.stage = other;
                return;
            }
        };
        let (remote, codec) = match read_answer(body) {
            Ok(x) => x,
            Err(e) => {
                warn!(agent = %side.who, error = %e, "answered with no usable SDP");
                self.end_leg(side.leg, None);
                let stage = match center {
                    false => Stage::Waiting {
                        ringing: Some(side),
                    },
                    true => {
                        let from = side.queue.clone();
                        Stage::Overflowing {
                            center: side,
                            from,
                            started: now.at,
                            give_up: now.at,
                        }
                    }
                };
                self.not_taken(stage, OfferFailure::Unreachable, now);
                return;
            }
        };
        info!(agent = %side.who, codec = super::super::codec_name(&codec), "answered; bridging");
        if !center {
            self.acd(AcdOp::Answered(Place::Caller, side.who.clone()));
            let bridged = self.bridged(&side.who, now);
            self.live(bridged);
        }
        self.store(StoreCmd::AgentAnswered {
            id: self.id.clone(),
            agent: side.who.to_string(),
            at: now.wall_ms,
        });
        self.agent_answered = Some(now.at);
        side.codec = Some(codec);
        self.announce_at = None;
        self.media(MediaOp::Bridge {
            leg: side.leg,
            remote,
            codec,
        });
        self.stage = match center {
            false => Stage::Talking {
                agent: side,
                transfer: None,
            },
            true => Stage::WithCenter { center: side },
        };
    }

    /// The agent's phone holds (sendonly/inactive) or resumes.
    fn agent_reoffer(&mut self, mut stage: Stage, offer: Option<&[u8]>, token: super::ReplyToken) {
        let (side, transferring) = match &mut stage {
            Stage::Waiting { ringing: Some(a) } => (a, false),
            Stage::Overflowing { center, .. } | Stage::WithCenter { center } => (center, false),
            Stage::Talking { agent, transfer } => (agent, transfer.is_some()),
            _ => unreachable!("on_agent checked the leg is this stage's"),
        };
        let (answer, offered) = side.reanswer(offer);
        let hold = matches!(offered, Direction::SendOnly | Direction::Inactive);
        side.phone_holds = hold;
        info!(agent = %side.who, hold, "agent hold changed");
        self.stage = stage;
        // During a transfer the caller is on hold already, and stays so
        // until it ends.
        if !transferring {
            self.media(MediaOp::Hold(hold));
        }
        self.reply(token, ReplyWith::Sdp(answer));
    }

    /// The agent's (or center's) leg ended or was lost.
    fn agent_gone(&mut self, stage: Stage, lost: bool, now: Now) {
        match stage {
            Stage::Talking {
                agent,
                transfer: Some(mut t),
            } => {
                if t.talking() {
                    info!(agent = %agent.who, "the agent hung up during the consultation: transfer completed");
                    self.complete(t, Some(agent), "system", None, now);
                } else {
                    info!(agent = %agent.who, "the agent left while the dispatcher rings: blind transfer");
                    self.out.push(super::Action::DropLeg(agent.leg));
                    self.left_ringing(&mut t, agent);
                    self.stage = Stage::Handover { transfer: t };
                }
            }
            Stage::Talking {
                agent,
                transfer: None,
            } if lost => {
                // Nobody hung up: the agent's browser went away. The
                // caller is not dropped for it; they wait at the front of
                // the queue (their arrival time).
                warn!(agent = %agent.who, "the agent's browser is gone mid-call: the caller waits in the queue again");
                self.out.push(super::Action::DropLeg(agent.leg));
                self.media(MediaOp::Unbridge);
                self.acd(AcdOp::CallEnded(agent.who.clone(), agent.queue.clone()));
                self.event("agent_lost", agent.who.to_string(), now);
                self.live(LiveEvent::CallEnded {
                    call_id: self.id.to_string(),
                    incident_id: self.incident.to_string(),
                    agent_id: Some(agent.who.to_string()),
                    cause: "agent_lost".into(),
                });
                self.back_to_queue(now);
            }
            Stage::Talking { .. } | Stage::WithCenter { .. } => {
                let center = matches!(stage, Stage::WithCenter { .. });
                info!("the other side hung up; ending the call");
                self.stage = stage;
                self.hang_up_caller();
                let cause = match center {
                    true => EndCause::OverflowBye,
                    false => EndCause::AgentBye,
                };
                self.end(cause, now);
            }
            // Before an answer a leg fails rather than ends.
            other => self.not_taken(other, offer_failure(AgentFailure::Unreachable), now),
        }
    }
}

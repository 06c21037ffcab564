//! Warm transfer inside the machine: the panel or the agent's phone asks
//! to hand the caller to an agency's dispatchers. Asked from the panel,
//! from the phone as a blind REFER to the agency, or as an attended
//! transfer (RFC 5589 §7): the phone holds the call, dials the agency (a
//! *consultation*, handed to this call), then REFERs the held call with
//! Replaces naming the consultation.

use super::{
    offer_failure, read_answer, AcdOp, Action, Call, LegId, MediaOp, Notice, Now, Place, Placed,
    ReplyToken, ReplyWith, Request, SdpAnswer, Side, Stage, Target,
};
use crate::acd::OfferFailure;
use crate::ids::{AgentId, QueueId, TransferId};
use crate::live::LiveEvent;
use crate::media::sdp::{self, Direction, Negotiated};
use crate::store::{NewTransfer, StoreCmd};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::Called;

/// A transfer under way.
#[derive(Debug)]
pub struct Transfer {
    id: TransferId,
    /// Its number among the call's transfers (its ACD place).
    seq: u32,
    agency: String,
    queue: QueueId,
    by: String,
    /// Given up (the call-taker told) when no dispatcher answered by then.
    deadline: Instant,
    dispatcher: Dispatcher,
    /// From an attended transfer: the phone's consultation leg, which
    /// speaks for the agent while the dispatcher is on.
    consult: Option<Consult>,
}

#[derive(Debug)]
enum Dispatcher {
    /// Waiting for the ACD to offer one.
    None,
    Ringing(Side),
    Talking {
        side: Side,
        conference: bool,
    },
}

/// The phone's consultation INVITE, answered once a dispatcher answers.
#[derive(Debug)]
pub(super) struct Consult {
    leg: LegId,
    codec: Negotiated,
    remote: Option<SocketAddr>,
    direction: Direction,
    version: u64,
    answered: bool,
}

/// A transfer asked of the ACD, and who asked.
pub(super) struct Pending {
    seq: u32,
    agency: String,
    queue: QueueId,
    timeout: Duration,
    by: String,
    origin: Origin,
}

enum Origin {
    Panel(ReplyToken),
    /// The phone's consultation (attended transfer).
    Phone(Consult),
    /// The phone's blind REFER.
    Refer(ReplyToken),
}

impl Transfer {
    pub fn talking(&self) -> bool {
        matches!(self.dispatcher, Dispatcher::Talking { .. })
    }

    /// When it is given up, while no dispatcher talks.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.talking()).then_some(self.deadline)
    }

    fn dispatcher(&self) -> Option<&Side> {
        match &self.dispatcher {
            Dispatcher::None => None,
            Dispatcher::Ringing(side) | Dispatcher::Talking { side, .. } => Some(side),
        }
    }

    fn dispatcher_mut(&mut self) -> Option<&mut Side> {
        match &mut self.dispatcher {
            Dispatcher::None => None,
            Dispatcher::Ringing(side) | Dispatcher::Talking { side, .. } => Some(side),
        }
    }
}

impl Call {
    /// The transfer under way, out of the stage, with the agent who has
    /// the caller (None: they left). [`Call::restore`] puts them back.
    fn take_transfer(&mut self) -> Option<(Transfer, Option<Side>)> {
        match self.take_stage() {
            Stage::Talking {
                agent,
                transfer: Some(t),
            } => Some((t, Some(agent))),
            Stage::Handover { transfer } => Some((transfer, None)),
            other => {
                self.stage = other;
                None
            }
        }
    }

    /// The stage for who is left: the agent (with the transfer, if it goes
    /// on), the caller waiting for a dispatcher, or, with neither, the
    /// caller back in the queue.
    fn restore(&mut self, agent: Option<Side>, transfer: Option<Transfer>, now: Now) {
        match (agent, transfer) {
            (Some(agent), transfer) => self.stage = Stage::Talking { agent, transfer },
            (None, Some(transfer)) => self.stage = Stage::Handover { transfer },
            (None, None) => self.back_to_queue(now),
        }
    }

    pub(super) fn is_dispatcher(&self, leg: LegId) -> bool {
        match &self.stage {
            Stage::Talking {
                transfer: Some(t), ..
            }
            | Stage::Handover { transfer: t } => t.dispatcher().is_some_and(|d| d.leg == leg),
            _ => false,
        }
    }

    pub(super) fn on_request(&mut self, req: Request, token: ReplyToken, now: Now) {
        let not_on_line = || ReplyWith::Done(Err("no dispatcher is on the line yet".into()));
        let conference = matches!(req, Request::Conference { .. });
        match req {
            Request::Transfer { agency, named, by } => {
                self.start_transfer(&agency, named, by, Origin::Panel(token))
            }
            Request::Conference { by } | Request::Complete { by } => match self.take_transfer() {
                Some((t, Some(agent))) if t.talking() => {
                    if conference {
                        self.conference(t, agent, &by, now);
                    } else {
                        self.complete(t, Some(agent), &by, None, now);
                    }
                    self.reply(token, ReplyWith::Done(Ok(())));
                }
                other => {
                    if let Some((t, agent)) = other {
                        self.restore(agent, Some(t), now);
                    }
                    self.reply(token, not_on_line());
                }
            },
            Request::HangUp { by } => match &self.stage {
                Stage::Talking {
                    agent,
                    transfer: None,
                } => {
                    let leg = agent.leg;
                    info!(by = %by, "the call-taker ended the call from the panel");
                    self.event("hangup", by, now);
                    self.end_leg(leg, None);
                    self.hang_up_caller();
                    self.end(super::EndCause::AgentBye, now);
                    self.reply(token, ReplyWith::Done(Ok(())));
                }
                _ => self.reply(
                    token,
                    ReplyWith::Done(Err("the call is not with its call-taker alone".into())),
                ),
            },
            Request::Cancel { by } => match self.take_transfer() {
                Some((t, agent)) => {
                    self.give_up(t, "cancelled", &by, agent.as_ref(), now);
                    self.restore(agent, None, now);
                    self.reply(token, ReplyWith::Done(Ok(())));
                }
                None => self.reply(
                    token,
                    ReplyWith::Done(Err("no transfer is in progress".into())),
                ),
            },
        }
    }

    /// All three talk.
    fn conference(&mut self, mut t: Transfer, agent: Side, by: &str, now: Now) {
        if let Dispatcher::Talking { conference, .. } = &mut t.dispatcher {
            *conference = true;
        }
        self.media(MediaOp::Conference);
        info!(by = %by, "warm transfer: conference");
        self.event("conference", format!("{} by {by}", t.agency), now);
        self.news(&t, Some(&agent), "conference");
        self.restore(Some(agent), Some(t), now);
    }

    /// The agent's phone dialed an agency while on this call.
    pub(super) fn on_consult(
        &mut self,
        leg: LegId,
        agent: AgentId,
        agency: &str,
        offer: Option<&[u8]>,
        port_free: bool,
    ) {
        let ours = matches!(&self.stage, Stage::Talking { agent: a, .. } if a.who == agent);
        if !ours {
            return self.refuse(leg, 403, "No call to transfer");
        }
        // Late offers are for trunks; a phone consulting offers.
        let remote = match offer.map(sdp::parse) {
            Some(Ok(r)) => r,
            _ => return self.refuse(leg, 488, "Not Acceptable Here"),
        };
        let Ok(codec) = sdp::negotiate(&remote) else {
            return self.refuse(leg, 488, "Not Acceptable Here");
        };
        if !port_free {
            warn!("the phone's consultation cannot be taken: no media port");
            return self.refuse(leg, 503, "Service Unavailable");
        }
        let consult = Consult {
            leg,
            codec,
            remote: remote.addr,
            direction: remote.direction,
            version: 1,
            answered: false,
        };
        self.start_transfer(agency, None, agent.to_string(), Origin::Phone(consult));
    }

    fn refuse(&mut self, leg: LegId, code: u16, reason: &'static str) {
        self.out.push(Action::Refuse { leg, code, reason });
    }

    /// Checks a transfer request and asks the ACD for the transfer's place
    /// in the agency's queue, for any of its dispatchers or the one named.
    fn start_transfer(&mut self, agency: &str, named: Option<AgentId>, by: String, origin: Origin) {
        let busy = self.pending.is_some()
            || matches!(
                self.stage,
                Stage::Talking {
                    transfer: Some(_),
                    ..
                }
            );
        let checked = if !matches!(self.stage, Stage::Talking { .. }) {
            Err("the call is not with an agent".to_string())
        } else if busy {
            Err("a transfer is in progress already".to_string())
        } else {
            self.rules
                .agencies
                .iter()
                .find(|a| a.id == agency)
                .ok_or_else(|| format!("no agency `{agency}`"))
                .and_then(|a| {
                    let queue = a
                        .queue
                        .clone()
                        .ok_or_else(|| format!("agency `{agency}` has no dispatcher queue"))?;
                    Ok((QueueId(queue), a.transfer_timeout))
                })
        };
        match checked {
            Ok((queue, timeout)) => {
                let seq = self.transfers + 1;
                self.acd(AcdOp::QueueTransfer {
                    seq,
                    queue: queue.clone(),
                    named,
                });
                self.pending = Some(Pending {
                    seq,
                    agency: agency.to_string(),
                    queue,
                    timeout,
                    by,
                    origin,
                });
            }
            Err(e) => self.transfer_refused(origin, e, busy),
        }
    }

    fn transfer_refused(&mut self, origin: Origin, error: String, busy: bool) {
        match origin {
            Origin::Panel(token) => self.reply(token, ReplyWith::Done(Err(error))),
            Origin::Phone(consult) => {
                warn!(%error, "the phone's consultation refused");
                let code = if busy { 486 } else { 403 };
                self.refuse(consult.leg, code, "Transfer Not Possible");
            }
            Origin::Refer(token) => {
                warn!(%error, "transfer request refused");
                self.reply(token, ReplyWith::Status(603));
            }
        }
    }

    /// The ACD's answer to the transfer asked last.
    pub(super) fn transfer_queued(&mut self, taken: bool, now: Now) {
        let Some(p) = self.pending.take() else { return };
        if !taken {
            let error = format!("the queue `{}` refused the transfer", p.queue);
            return self.transfer_refused(p.origin, error, false);
        }
        let agent = match self.take_stage() {
            Stage::Talking {
                agent,
                transfer: None,
            } => agent,
            // The answer comes in the turn that asked: nothing can have
            // changed the call in between; should it have, it is refused.
            other => {
                self.stage = other;
                let error = "the call changed while the transfer was asked".to_string();
                return self.transfer_refused(p.origin, error, false);
            }
        };
        self.transfers = p.seq;
        let mut t = Transfer {
            id: TransferId::new(),
            seq: p.seq,
            agency: p.agency,
            queue: p.queue,
            by: p.by.clone(),
            deadline: now.at + p.timeout,
            dispatcher: Dispatcher::None,
            consult: None,
        };
        match p.origin {
            Origin::Panel(token) => {
                info!(agency = %t.agency, by = %p.by, transfer = %t.id, "warm transfer: ringing the agency");
                self.media(MediaOp::Hold(true));
                self.begun(&t, Some(&agent), &p.by, now);
                self.news(&t, Some(&agent), "ringing");
                self.stage = Stage::Talking {
                    agent,
                    transfer: Some(t),
                };
                self.reply(token, ReplyWith::Done(Ok(())));
            }
            Origin::Phone(consult) => {
                info!(agency = %t.agency, agent = %p.by, transfer = %t.id, "attended transfer: the phone consults the agency");
                self.out.push(Action::Ringing(consult.leg));
                t.consult = Some(consult);
                self.media(MediaOp::Hold(true));
                self.begun(&t, Some(&agent), &p.by, now);
                self.assign_agency(&t, &p.by, now);
                self.news(&t, Some(&agent), "ringing");
                self.stage = Stage::Talking {
                    agent,
                    transfer: Some(t),
                };
            }
            Origin::Refer(token) => {
                // A blind transfer from the phone: accepted, the phone is
                // released at once, the caller waits on hold for the agency.
                self.reply(token, ReplyWith::Status(202));
                info!(agency = %t.agency, agent = %p.by, "blind transfer from the phone");
                self.begun(&t, Some(&agent), &p.by, now);
                self.assign_agency(&t, &p.by, now);
                self.end_leg(agent.leg, Some((200, "OK")));
                self.left_ringing(&mut t, agent);
                self.news(&t, None, "ringing");
                self.stage = Stage::Handover { transfer: t };
            }
        }
    }

    /// A REFER with Replaces (RFC 5589 §7): it must name the consultation
    /// this phone placed for this call.
    pub(super) fn attended_refer(&mut self, named: Option<LegId>, token: ReplyToken, now: Now) {
        let ours = match &self.stage {
            Stage::Talking {
                transfer: Some(t), ..
            } => t.consult.as_ref().is_some_and(|c| Some(c.leg) == named),
            _ => false,
        };
        if !ours {
            warn!("attended transfer refused: Replaces names no consultation of this call");
            return self.reply(token, ReplyWith::Status(603));
        }
        self.reply(token, ReplyWith::Status(202));
        let Some((mut t, Some(agent))) = self.take_transfer() else {
            unreachable!("checked above")
        };
        let by = agent.who.to_string();
        if t.talking() {
            info!(agent = %by, "attended transfer: caller and dispatcher joined");
            self.complete(t, Some(agent), &by, Some((200, "OK")), now);
        } else {
            info!(agent = %by, "attended transfer while the dispatcher rings: the caller waits for them");
            self.end_leg(agent.leg, Some((200, "OK")));
            self.left_ringing(&mut t, agent);
            self.stage = Stage::Handover { transfer: t };
        }
    }

    /// A REFER to an agency's id, from the phone.
    pub(super) fn blind_refer(&mut self, target: &str, token: ReplyToken) {
        let Some(agency) = self.rules.refer_agency(target) else {
            warn!(%target, "transfer request refused: no agency with a dispatcher queue");
            return self.reply(token, ReplyWith::Status(404));
        };
        let by = match &self.stage {
            Stage::Talking { agent, .. } => agent.who.to_string(),
            _ => String::new(),
        };
        self.start_transfer(&agency, None, by, Origin::Refer(token));
    }

    pub(super) fn on_transfer_notice(&mut self, seq: u32, notice: Notice, now: Now) {
        let Some((mut t, agent)) = self.take_transfer() else {
            return;
        };
        if t.seq == seq {
            match notice {
                Notice::Offer(id) => {
                    if let Dispatcher::Ringing(old) = &t.dispatcher {
                        let leg = old.leg;
                        self.end_leg(leg, None);
                    }
                    let leg = self.ring(Target::Agent(id.clone()));
                    let side = self.side(id, t.queue.clone(), leg);
                    t.dispatcher = Dispatcher::Ringing(side);
                    self.news(&t, agent.as_ref(), "ringing");
                }
                Notice::RingTimeout(id) => {
                    if matches!(&t.dispatcher, Dispatcher::Ringing(d) if d.who == id) {
                        info!(dispatcher = %id, "dispatcher did not answer in time; trying the next");
                        if let Dispatcher::Ringing(d) =
                            std::mem::replace(&mut t.dispatcher, Dispatcher::None)
                        {
                            self.end_leg(d.leg, None);
                        }
                    }
                }
                Notice::Overflowed { .. } | Notice::OverflowedToSip { .. } => {}
            }
        }
        self.restore(agent, Some(t), now);
    }

    pub(super) fn dispatcher_ring_failed(&mut self, leg: LegId, why: &'static str, now: Now) {
        let Some((mut t, agent)) = self.take_transfer() else {
            return;
        };
        if matches!(&t.dispatcher, Dispatcher::Ringing(d) if d.leg == leg) {
            if let Dispatcher::Ringing(d) = std::mem::replace(&mut t.dispatcher, Dispatcher::None) {
                warn!(dispatcher = %d.who, reason = why, "cannot ring the dispatcher");
                self.acd(AcdOp::OfferFailed(
                    Place::Transfer(t.seq),
                    d.who,
                    OfferFailure::Unreachable,
                ));
            }
        }
        self.restore(agent, Some(t), now);
    }

    /// An event on the dispatcher's leg.
    pub(super) fn on_dispatcher(&mut self, ev: Placed, now: Now) {
        let Some((mut t, agent)) = self.take_transfer() else {
            return;
        };
        match ev {
            Placed::Answered(body) => return self.dispatcher_answered(t, agent, &body, now),
            Placed::Failed(f) => {
                if let Dispatcher::Ringing(d) =
                    std::mem::replace(&mut t.dispatcher, Dispatcher::None)
                {
                    info!(dispatcher = %d.who, failure = ?f, "the dispatcher did not take the transfer");
                    self.acd(AcdOp::OfferFailed(
                        Place::Transfer(t.seq),
                        d.who,
                        offer_failure(f),
                    ));
                }
            }
            Placed::ReOffer(offer, token) => {
                if let Some(d) = t.dispatcher_mut() {
                    let (answer, _) = d.reanswer(offer.as_deref());
                    self.reply(token, ReplyWith::Sdp(answer));
                }
            }
            Placed::Ended | Placed::Lost => {
                info!("the dispatcher hung up; the agent has the caller again");
                self.give_up(t, "dispatcher_hung_up", "system", agent.as_ref(), now);
                return self.restore(agent, None, now);
            }
            Placed::Trying | Placed::Ringing => {}
            // The dispatcher's phone does not transfer a call it consults on.
            Placed::Refer { token, .. } => self.reply(token, ReplyWith::Status(603)),
        }
        self.restore(agent, Some(t), now);
    }

    fn dispatcher_answered(&mut self, mut t: Transfer, agent: Option<Side>, body: &[u8], now: Now) {
        let Dispatcher::Ringing(mut d) = std::mem::replace(&mut t.dispatcher, Dispatcher::None)
        else {
            // A repeated 200 changes nothing.
            return self.restore(agent, Some(t), now);
        };
        let (remote, codec) = match read_answer(body) {
            Ok(x) => x,
            Err(e) => {
                warn!(dispatcher = %d.who, error = %e, "the dispatcher answered with no usable SDP");
                self.end_leg(d.leg, None);
                let place = Place::Transfer(t.seq);
                self.acd(AcdOp::OfferFailed(place, d.who, OfferFailure::Unreachable));
                return self.restore(agent, Some(t), now);
            }
        };
        info!(dispatcher = %d.who, "warm transfer: the dispatcher answered");
        self.acd(AcdOp::Answered(Place::Transfer(t.seq), d.who.clone()));
        d.codec = Some(codec);
        let leg = d.leg;
        let who = d.who.clone();
        t.dispatcher = Dispatcher::Talking {
            side: d,
            conference: false,
        };
        if agent.is_none() {
            // The agent left while it rang: a blind transfer.
            self.store(StoreCmd::TransferAnswered {
                id: t.id.to_string(),
                agent: who.to_string(),
                at: now.wall_ms,
                recording_path: None,
                recording_error: None,
            });
            self.media(MediaOp::Bridge { leg, remote, codec });
            let by = t.by.clone();
            return self.complete(t, None, &by, None, now);
        }
        self.out.push(Action::RecordConsult {
            transfer: t.id.clone(),
            seq: t.seq,
            dispatcher: who,
        });
        // From the phone: its consultation is answered now and speaks for
        // the agent. (Should the phone have gone meanwhile, its end
        // arrives next and cancels.)
        let phone = t.consult.as_mut().map(|c| {
            c.answered = true;
            (c.leg, c.remote, c.codec, c.answer(c.direction))
        });
        let phone = phone.map(|(leg, remote, codec, answer)| {
            self.out.push(Action::Answer(answer));
            (leg, remote, codec)
        });
        self.media(MediaOp::Consult {
            leg,
            remote,
            codec,
            phone,
        });
        self.news(&t, agent.as_ref(), "talking");
        self.restore(agent, Some(t), now);
    }

    /// An event on the phone's consultation leg.
    pub(super) fn on_consultation(&mut self, leg: LegId, ev: Called, now: Now) {
        let Some((mut t, agent)) = self.take_transfer() else {
            return;
        };
        if t.consult.as_ref().is_none_or(|c| c.leg != leg) {
            return self.restore(agent, Some(t), now);
        }
        match ev {
            Called::Confirmed => {}
            Called::ReOffer(offer, token) => {
                // Phones hold the consultation before they REFER.
                if let Some(c) = t.consult.as_mut() {
                    c.version += 1;
                    let answer = c.answer(sdp::offered_direction(offer.as_deref()));
                    self.reply(token, ReplyWith::Sdp(answer));
                }
            }
            Called::Ended(why) => {
                info!(
                    cause = why.cause(),
                    "the phone ended its consultation: the transfer is cancelled"
                );
                t.consult = None;
                self.out.push(Action::DropLeg(leg));
                let by = agent
                    .as_ref()
                    .map_or("system".into(), |a| a.who.to_string());
                self.give_up(t, "cancelled", &by, agent.as_ref(), now);
                return self.restore(agent, None, now);
            }
        }
        self.restore(agent, Some(t), now);
    }

    pub(super) fn transfer_timed_out(&mut self, now: Now) {
        let Some((t, agent)) = self.take_transfer() else {
            return;
        };
        warn!(agency = %t.agency, "no dispatcher answered in time; the agent has the caller again");
        self.give_up(t, "no_answer", "system", agent.as_ref(), now);
        self.restore(agent, None, now);
    }

    /// The dispatcher takes the caller; the agent (if still there) is
    /// freed to wrap up. `notify` tells the agent's phone how the transfer
    /// it asked for went.
    pub(super) fn complete(
        &mut self,
        mut t: Transfer,
        agent: Option<Side>,
        by: &str,
        notify: Option<(u16, &'static str)>,
        now: Now,
    ) {
        if let Some(a) = agent {
            self.media(MediaOp::Complete);
            self.end_leg(a.leg, notify);
            self.transferred_away(&mut t, &a);
        }
        let Dispatcher::Talking { side, conference } =
            std::mem::replace(&mut t.dispatcher, Dispatcher::None)
        else {
            unreachable!("a transfer completes once its dispatcher talks")
        };
        let outcome = if conference {
            "conference_completed"
        } else {
            "completed"
        };
        info!(dispatcher = %side.who, outcome, "warm transfer completed");
        self.transfer_ended(&t, outcome, by, now);
        t.dispatcher = Dispatcher::Talking { side, conference };
        self.news(&t, None, "completed");
        let Dispatcher::Talking { side, .. } = t.dispatcher else {
            unreachable!("just put back")
        };
        // The dispatcher's screen opens the call as the call-taker's did.
        let bridged = self.bridged(&side.who, now);
        self.live(bridged);
        self.stage = Stage::Talking {
            agent: side,
            transfer: None,
        };
    }

    /// The agent left (hung up, or transferred) while the dispatcher still
    /// rings: the transfer goes on blind, and the caller waits on hold for
    /// whoever answers.
    pub(super) fn left_ringing(&mut self, t: &mut Transfer, gone: Side) {
        self.transferred_away(t, &gone);
        self.media(MediaOp::Unbridge);
    }

    /// The agent is done with a call they transferred: the phone's
    /// consultation (if any) ends, the agent goes to wrap-up, the panel hears.
    fn transferred_away(&mut self, t: &mut Transfer, gone: &Side) {
        self.end_consult(t, (487, "Request Terminated"));
        self.acd(AcdOp::CallEnded(gone.who.clone(), gone.queue.clone()));
        self.live(LiveEvent::CallEnded {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            agent_id: Some(gone.who.to_string()),
            cause: "transferred".into(),
        });
    }

    /// Ends the consultation leg, if any: BYE once answered; before, a
    /// final answer (`unanswered`, e.g. 480 when nobody took it).
    fn end_consult(&mut self, t: &mut Transfer, unanswered: (u16, &'static str)) {
        if let Some(c) = t.consult.take() {
            if c.answered {
                self.end_leg(c.leg, None);
            } else {
                self.refuse(c.leg, unanswered.0, unanswered.1);
            }
        }
    }

    /// Ends a transfer that did not complete: the dispatcher's leg
    /// (ringing or answered) goes, and the agent has the caller again.
    pub(super) fn give_up(
        &mut self,
        mut t: Transfer,
        outcome: &str,
        by: &str,
        agent: Option<&Side>,
        now: Now,
    ) {
        let talking = t.talking();
        match std::mem::replace(&mut t.dispatcher, Dispatcher::None) {
            Dispatcher::None => {}
            Dispatcher::Ringing(d) => self.end_leg(d.leg, None),
            Dispatcher::Talking { side, .. } => {
                self.end_leg(side.leg, None);
                self.acd(AcdOp::CallEnded(side.who, t.queue.clone()));
            }
        }
        self.acd(AcdOp::Leave(Place::Transfer(t.seq)));
        if talking {
            self.media(MediaOp::EndConsult);
        } else {
            self.media(MediaOp::Clear);
            self.media(MediaOp::Hold(false));
        }
        // The phone's consultation, when it came from one: nobody
        // answered (480), or it ends with the transfer.
        let unanswered = if outcome == "no_answer" {
            (480, "Temporarily Unavailable")
        } else {
            (487, "Request Terminated")
        };
        self.end_consult(&mut t, unanswered);
        // A phone that holds its leg (it consulted from the phone) resumes
        // it itself; until then the caller hears hold music.
        if agent.is_some_and(|a| a.phone_holds) {
            self.media(MediaOp::Hold(true));
        }
        info!(outcome, "warm transfer ended without completing");
        self.transfer_ended(&t, outcome, by, now);
        self.news(&t, agent, outcome);
    }

    /// A transfer has begun: on record, and the caller hears the hold prompt.
    fn begun(&mut self, t: &Transfer, from: Option<&Side>, by: &str, now: Now) {
        self.store(StoreCmd::TransferStarted(Box::new(NewTransfer {
            id: t.id.to_string(),
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            from_agent: from.map(|a| a.who.to_string()),
            agency: t.agency.clone(),
            requested_by: by.to_string(),
            at: now.wall_ms,
        })));
        self.media(MediaOp::Prompt("transfer"));
    }

    fn assign_agency(&mut self, t: &Transfer, by: &str, now: Now) {
        self.store(StoreCmd::AssignAgency {
            incident_id: self.incident.to_string(),
            agency: t.agency.clone(),
            actor: by.to_string(),
            at: now.wall_ms,
        });
    }

    fn transfer_ended(&mut self, t: &Transfer, outcome: &str, by: &str, now: Now) {
        self.store(StoreCmd::TransferEnded {
            id: t.id.to_string(),
            at: now.wall_ms,
            outcome: outcome.into(),
            actor: by.into(),
        });
    }

    /// Tells the panel where a transfer stands.
    fn news(&mut self, t: &Transfer, agent: Option<&Side>, state: &str) {
        self.live(LiveEvent::Transfer {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            transfer_id: t.id.to_string(),
            agent_id: agent.map(|a| a.who.to_string()),
            agency: t.agency.clone(),
            dispatcher: t.dispatcher().map(|d| d.who.to_string()),
            state: state.to_string(),
        });
    }
}

impl Consult {
    /// The answer to the phone's offer (`offered`: the direction it asked).
    fn answer(&self, offered: Direction) -> SdpAnswer {
        SdpAnswer {
            leg: Some(self.leg),
            version: self.version,
            codec: Ok(self.codec),
            direction: sdp::answer_direction(offered),
        }
    }
}

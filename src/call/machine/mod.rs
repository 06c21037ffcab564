//! The call as a state machine: plain state, no I/O, no clock of its own.
//!
//! [`Call::handle`] takes an [`Event`] (plain data: a leg's SIP event with
//! a reply token instead of the transaction, an ACD notice, a panel
//! control, a media event) and the time, and returns [`Action`]s for the
//! driver (`call::driver`) to carry out: ring, answer, reply, end a leg,
//! media commands, records, live events, ACD notices. [`Call::poll_timeout`]
//! says when [`Call::handle_timeout`] is due. The shape is quinn-proto's
//! `Connection`, and this project's own `Acd::poll(now)`.
//!
//! Results the driver learns while acting (a phone that could not be rung,
//! the ACD taking a transfer) come back as events in the same turn, before
//! anything else is read.

mod agent;
#[cfg(test)]
mod tests;
mod transfer;

use crate::acd::runtime::AcdNotice;
use crate::acd::OfferFailure;
use crate::config::AgencyConfig;
use crate::ids::{AgentId, CallId, IncidentId, QueueId, TransferId};
use crate::leg::{AgentFailure, LegEnd};
use crate::live::{BridgedCall, LiveEvent};
use crate::media::g711::Law;
use crate::media::listen::Twice;
use crate::media::sdp::{self, Direction, Negotiated};
use crate::store::StoreCmd;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub use transfer::Transfer;

/// The time an event happens: the monotonic clock for timers, the wall
/// clock (ms since the epoch) for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: i64,
}

/// A leg of this call other than the caller's, as the machine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u32);

/// A request waiting for its answer (a re-INVITE's transaction, a panel's
/// question). Valid during the turn that delivered it; one the machine
/// leaves unanswered is dropped with the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyToken(pub u64);

/// A place of this call in the ACD: the caller's own, or a transfer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Caller,
    Transfer(u32),
}

/// Why a call ended, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndCause {
    /// The caller's leg ended (their BYE or CANCEL, or the dialog died).
    Caller(LegEnd),
    /// The agent hung up.
    AgentBye,
    /// The other center an overflow reached hung up.
    OverflowBye,
    /// No RTP from the caller for the configured time.
    RtpTimeout,
    /// The media session stopped under the call.
    MediaFailed,
    /// The service shut down.
    Shutdown,
    /// Before the answer: the offer has no G.711.
    NoCommonCodec,
    /// The offer (or the ACK's answer) could not be read.
    BadSdp,
    /// Every RTP port is in use.
    NoMediaPort,
    /// A call-back's INVITE could not be sent, or its leg died.
    CallbackFailed,
    /// The called-back caller did not take the call.
    CallbackNotTaken(AgentFailure),
    /// The call's task ended before the call did (a panic).
    InternalError,
}

impl EndCause {
    pub fn as_str(&self) -> &str {
        match self {
            EndCause::Caller(why) => why.cause(),
            EndCause::AgentBye => "agent_bye",
            EndCause::OverflowBye => "overflow_bye",
            EndCause::RtpTimeout => "rtp_timeout",
            EndCause::MediaFailed => "media_failed",
            EndCause::Shutdown => "shutdown",
            EndCause::NoCommonCodec => "no_common_codec",
            EndCause::BadSdp => "bad_sdp",
            EndCause::NoMediaPort => "no_media_port",
            EndCause::CallbackFailed => "callback_failed",
            EndCause::CallbackNotTaken(AgentFailure::NoAnswer) => "callback_no_answer",
            EndCause::CallbackNotTaken(AgentFailure::Declined) => "callback_declined",
            EndCause::CallbackNotTaken(AgentFailure::Unreachable) => "callback_unreachable",
            EndCause::InternalError => "internal_error",
        }
    }

    /// What a transfer still under way at the end is closed with.
    fn transfer_outcome(&self) -> &str {
        match self {
            EndCause::Caller(LegEnd::RemoteBye | LegEnd::Cancelled) => "caller_hung_up",
            other => other.as_str(),
        }
    }
}

/// Whom a call rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An agent (their registered phone, or the panel's phone).
    Agent(AgentId),
    /// Another center (overflow).
    Center(String),
}

/// What an SDP answer on a leg says; the driver, which holds the leg's
/// address and port, writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpAnswer {
    /// None: the caller's leg.
    pub leg: Option<LegId>,
    /// The o= line's version.
    pub version: u64,
    /// What was negotiated, or (not answered yet) the law to offer.
    pub codec: Result<Negotiated, Law>,
    pub direction: Direction,
}

/// How a waiting request is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyWith {
    Sdp(SdpAnswer),
    /// A bodiless SIP answer (202 takes a REFER on, 603 refuses it).
    Status(u16),
    /// The panel's question: done, or why not.
    Done(Result<(), String>),
}

/// What the media session is told; sockets stay with the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaOp {
    /// Bridge the caller to this leg.
    Bridge {
        leg: LegId,
        remote: Option<SocketAddr>,
        codec: Negotiated,
    },
    Unbridge,
    Hold(bool),
    /// The agent consults a dispatcher on `leg`; from a phone's attended
    /// transfer, the phone's consultation speaks for the agent.
    Consult {
        leg: LegId,
        remote: Option<SocketAddr>,
        codec: Negotiated,
        phone: Option<(LegId, Option<SocketAddr>, Negotiated)>,
    },
    Conference,
    Complete,
    EndConsult,
    Clear,
    /// One of the prompts, by name (`transfer`, `silent-ack`).
    Prompt(&'static str),
    Stop,
}

/// What the ACD is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcdOp {
    /// The caller waits in `queue` (keeping its arrival, so its place).
    Enqueue(QueueId),
    /// A transfer's place in an agency's queue, for any dispatcher or one.
    QueueTransfer {
        seq: u32,
        queue: QueueId,
        named: Option<AgentId>,
    },
    Leave(Place),
    Answered(Place, AgentId),
    OfferFailed(Place, AgentId, OfferFailure),
    /// The agent is done with the call (wrap-up follows).
    CallEnded(AgentId, QueueId),
    /// The caller is a silent emergency: ahead of everyone waiting.
    Urgent,
}

/// What the driver does for the call.
#[derive(Debug)]
pub enum Action {
    Ring {
        leg: LegId,
        target: Target,
        law: Law,
    },
    /// Stops a leg ringing (CANCEL) or hangs it up (BYE), beside the
    /// call; first tells the phone how the transfer it asked for went.
    /// `None` is the caller's leg.
    EndLeg {
        leg: Option<LegId>,
        notify: Option<(u16, &'static str)>,
    },
    /// Forgets a leg that ended by itself.
    DropLeg(LegId),
    /// A final answer to a consultation not yet answered.
    Refuse {
        leg: LegId,
        code: u16,
        reason: &'static str,
    },
    /// 180 Ringing on a consultation.
    Ringing(LegId),
    /// 200 OK on a consultation.
    Answer(SdpAnswer),
    Reply {
        token: ReplyToken,
        with: ReplyWith,
    },
    Media(MediaOp),
    Store(Box<StoreCmd>),
    Live(Box<LiveEvent>),
    Acd(AcdOp),
    /// Tell the caller their place in the queue; `silent`: first ask a
    /// caller who has not spoken to press 5 twice if they cannot.
    Announce {
        silent: bool,
    },
    /// Open the consultation's recording and put the dispatcher's answer
    /// on record with it.
    RecordConsult {
        transfer: TransferId,
        seq: u32,
        dispatcher: AgentId,
    },
}

/// What the ACD tells the call, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Offer(AgentId),
    RingTimeout(AgentId),
    Overflowed { from: QueueId, to: QueueId },
    OverflowedToSip { from: QueueId, target: String },
}

impl From<AcdNotice> for Notice {
    fn from(n: AcdNotice) -> Notice {
        match n {
            AcdNotice::Offer { agent } => Notice::Offer(agent.into()),
            AcdNotice::RingTimeout { agent } => Notice::RingTimeout(agent.into()),
            AcdNotice::Overflowed { from, to } => Notice::Overflowed {
                from: from.into(),
                to: to.into(),
            },
            AcdNotice::OverflowedToSip { from, target } => Notice::OverflowedToSip {
                from: from.into(),
                target,
            },
        }
    }
}

/// A leg we placed, as it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    Trying,
    Ringing,
    Answered(Vec<u8>),
    Failed(AgentFailure),
    ReOffer(Option<Vec<u8>>, ReplyToken),
    Ended,
    Lost,
    /// A REFER. `replaces` is None for a blind transfer; for an attended
    /// one, whether its Replaces names a leg of this call, and which.
    Refer {
        target: String,
        replaces: Option<Option<LegId>>,
        token: ReplyToken,
    },
}

/// A leg that called us (the caller, a phone's consultation), as it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Called {
    Confirmed,
    ReOffer(Option<Vec<u8>>, ReplyToken),
    Ended(LegEnd),
}

/// A panel's (or a phone's) request to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Transfer {
        agency: String,
        named: Option<AgentId>,
        by: String,
    },
    Complete {
        by: String,
    },
    Conference {
        by: String,
    },
    Cancel {
        by: String,
    },
    /// The call-taker ends the call from the panel.
    HangUp {
        by: String,
    },
}

/// What happens to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Caller(Called),
    Placed(LegId, Placed),
    /// The phone's consultation leg.
    Consultation(LegId, Called),
    /// The driver could not ring a leg it was told to ring.
    RingFailed(LegId, &'static str),
    Acd(Place, Notice),
    /// The ACD took (or refused) the transfer asked for last.
    TransferQueued(bool),
    Request(Request, ReplyToken),
    /// The agent's phone dialed an agency while on this call (the first
    /// half of an attended transfer): a consultation leg, its offer, and
    /// whether a media port was free for it.
    Consult {
        leg: LegId,
        agent: AgentId,
        agency: String,
        offer: Option<Vec<u8>>,
        port_free: bool,
    },
    /// The queued prompts finished playing.
    Drained,
    RtpTimeout,
    MediaFailed,
    /// The call's recording file is open (true), or could not be made.
    RecordingOpened(Result<(), String>),
    /// The caller pressed a key.
    Key(char),
    /// The caller began speaking (true) or has been quiet a second.
    Voice(bool),
    /// Something came from the caller's line at last.
    Sound,
    Shutdown,
}

/// What the configuration says that a call needs to decide.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub agencies: Vec<AgencyConfig>,
    pub prompt_intervals: BTreeMap<String, Duration>,
    /// A caller gone this soon, before any agent answered: a ghost call.
    pub ghost_within: Duration,
    /// A call whose line carried nothing at all is a ghost call too.
    pub ghost_without_audio: bool,
}

impl Rules {
    pub fn of(config: &crate::config::Config) -> Rules {
        Rules {
            agencies: config.agencies.clone(),
            prompt_intervals: config
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.prompt_interval))
                .collect(),
            ghost_within: config.server.dispositions.ghost_hang_up_within,
            ghost_without_audio: config.server.dispositions.ghost_without_audio,
        }
    }

    fn prompt_interval(&self, queue: &QueueId) -> Duration {
        self.prompt_intervals
            .get(queue.as_str())
            .copied()
            .unwrap_or(Duration::from_secs(10))
    }

    /// The agency a REFER's target names: its user part is an agency's
    /// id, and that agency has a dispatcher queue.
    fn refer_agency(&self, target: &str) -> Option<String> {
        let user = target
            .strip_prefix("sip:")
            .or_else(|| target.strip_prefix("sips:"))?
            .split(['@', ';'])
            .next()?;
        crate::config::transfer_agency(user, &self.agencies)
    }
}

/// Who the caller is, as the panel of whoever takes the call shows it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub number: Option<String>,
    pub location: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub service: String,
    /// When they arrived; earlier is served first.
    pub arrived: Instant,
    pub arrived_ms: i64,
    /// Prank calls from this number lately, when that many make it a
    /// repeat prank caller (`[dispositions] prank_repeat`); else 0.
    pub pranks: u32,
}

/// Everything a call starts with once its caller is answered.
pub struct Start {
    pub id: CallId,
    pub incident: IncidentId,
    pub caller: Caller,
    pub queue: QueueId,
    /// What the caller's leg negotiated.
    pub codec: Negotiated,
    pub rules: Arc<Rules>,
}

/// A leg toward an agent, a dispatcher or another center.
#[derive(Debug, Clone)]
struct Side {
    leg: LegId,
    who: AgentId,
    /// The queue the agent took the call from (for their wrap-up).
    queue: QueueId,
    law: Law,
    /// What the answer negotiated, once answered.
    codec: Option<Negotiated>,
    version: u64,
    /// The phone holds this leg (its last offer was sendonly/inactive).
    phone_holds: bool,
}

impl Side {
    /// Answers a re-INVITE from the phone, keeping what was negotiated;
    /// also says which direction the phone offered (hold or not).
    fn reanswer(&mut self, offer: Option<&[u8]>) -> (SdpAnswer, Direction) {
        let offered = sdp::offered_direction(offer);
        self.version += 1;
        let answer = SdpAnswer {
            leg: Some(self.leg),
            version: self.version,
            codec: self.codec.ok_or(self.law),
            direction: sdp::answer_direction(offered),
        };
        (answer, offered)
    }
}

/// Where the call stands. Each state holds exactly the legs it has.
#[derive(Debug)]
enum Stage {
    /// In the queue; the agent whose phone rings, if any.
    Waiting {
        ringing: Option<Side>,
    },
    /// Out of the queue, ringing another center; back to `from` if it
    /// does not answer by `give_up`.
    Overflowing {
        center: Side,
        from: QueueId,
        started: Instant,
        give_up: Instant,
    },
    /// Talking with another center.
    WithCenter {
        center: Side,
    },
    /// Talking with an agent (a dispatcher, after a transfer); a transfer
    /// may be under way.
    Talking {
        agent: Side,
        transfer: Option<Transfer>,
    },
    /// The agent left while a transfer's dispatchers ring: the caller
    /// waits on hold for whoever answers.
    Handover {
        transfer: Transfer,
    },
    Ended(EndCause),
}

/// How long another center may take to answer an overflowed caller before
/// the caller goes back to the queue...
pub const OVERFLOW_RING_LIMIT: Duration = Duration::from_secs(30);
/// ...once it has shown it is alive (100 or 180); a target that says
/// nothing at all (down, or a closed port) is given up much sooner.
pub const OVERFLOW_SILENCE_LIMIT: Duration = Duration::from_secs(4);

/// One answered call: queued, rung, bridged, transferred, ended.
pub struct Call {
    id: CallId,
    incident: IncidentId,
    caller: Caller,
    rules: Arc<Rules>,
    /// The queue the caller waits in (it changes on overflow).
    queue: QueueId,
    /// The caller's leg: what it negotiated, and its SDP's version.
    codec: Negotiated,
    version: u64,
    stage: Stage,
    /// When the caller next hears their place in the queue.
    announce_at: Option<Instant>,
    /// The greeting has finished playing.
    greeted: bool,
    transfers: u32,
    /// A transfer asked of the ACD, whose answer comes next.
    pending: Option<transfer::Pending>,
    agent_answered: Option<Instant>,
    /// What the caller's line says without words.
    line: Line,
    next_leg: u32,
    out: Vec<Action>,
}

/// What the caller's line has said without words (`media::listen`).
#[derive(Debug, Default)]
struct Line {
    speaking: bool,
    /// They have spoken at some time in the call.
    spoke: bool,
    /// Anything at all came from the line.
    sound: bool,
    /// They pressed a key.
    pressed: bool,
    keys: Twice,
    /// When they pressed 5 twice: a silent emergency.
    silent_at: Option<Instant>,
}

/// How close together the two presses of 5 must come.
const FIVE_TWICE_WITHIN: Duration = Duration::from_secs(4);

impl Call {
    /// The call, answered; its first actions put the caller in the queue.
    pub fn new(start: Start) -> (Call, Vec<Action>) {
        let mut call = Call {
            id: start.id,
            incident: start.incident,
            caller: start.caller,
            rules: start.rules,
            queue: start.queue,
            codec: start.codec,
            version: 1,
            stage: Stage::Waiting { ringing: None },
            announce_at: None,
            greeted: false,
            transfers: 0,
            pending: None,
            agent_answered: None,
            line: Line::default(),
            next_leg: 0,
            out: Vec::new(),
        };
        call.acd(AcdOp::Enqueue(call.queue.clone()));
        let actions = std::mem::take(&mut call.out);
        (call, actions)
    }

    pub fn id(&self) -> &CallId {
        &self.id
    }

    pub fn caller_number(&self) -> Option<&str> {
        self.caller.number.as_deref()
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// A name for a leg that joins from outside (a phone's consultation).
    pub fn reserve_leg(&mut self) -> LegId {
        self.new_leg()
    }

    /// Whether the caller pressed 5 twice (a silent emergency).
    pub fn is_silent_emergency(&self) -> bool {
        self.line.silent_at.is_some()
    }

    /// Where the caller stands in the queues: a silent emergency ahead of
    /// all, a number with repeated pranks behind all.
    pub fn standing(&self) -> crate::acd::Standing {
        if self.is_silent_emergency() {
            crate::acd::Standing::Urgent
        } else if self.caller.pranks > 0 {
            crate::acd::Standing::Low
        } else {
            crate::acd::Standing::Normal
        }
    }

    /// Why the call ended, once it has.
    pub fn ended(&self) -> Option<&EndCause> {
        match &self.stage {
            Stage::Ended(cause) => Some(cause),
            _ => None,
        }
    }

    /// How long the caller waited for an agent (to the end, if none came).
    pub fn waited(&self, now: Instant) -> Duration {
        self.agent_answered
            .unwrap_or(now)
            .saturating_duration_since(self.caller.arrived)
    }

    /// When [`Call::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stage = match &self.stage {
            Stage::Overflowing { give_up, .. } => Some(*give_up),
            Stage::Talking {
                transfer: Some(t), ..
            }
            | Stage::Handover { transfer: t } => t.deadline(),
            _ => None,
        };
        [self.announce_at, stage].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Now) -> Vec<Action> {
        if self.announce_at.is_some_and(|t| t <= now.at) {
            self.announce_at = None;
            let silent = !self.line.spoke && self.line.silent_at.is_none();
            self.out.push(Action::Announce { silent });
        }
        match &self.stage {
            Stage::Overflowing { give_up, .. } if *give_up <= now.at => self.center_gave_up(now),
            Stage::Talking {
                transfer: Some(t), ..
            }
            | Stage::Handover { transfer: t }
                if t.deadline().is_some_and(|d| d <= now.at) =>
            {
                self.transfer_timed_out(now)
            }
            _ => {}
        }
        std::mem::take(&mut self.out)
    }

    pub fn handle(&mut self, event: Event, now: Now) -> Vec<Action> {
        if self.ended().is_some() {
            return Vec::new();
        }
        match event {
            Event::Caller(ev) => self.on_caller(ev, now),
            Event::Placed(leg, ev) => {
                if self.is_dispatcher(leg) {
                    self.on_dispatcher(ev, now)
                } else {
                    self.on_agent(leg, ev, now)
                }
            }
            Event::Consultation(leg, ev) => self.on_consultation(leg, ev, now),
            Event::RingFailed(leg, why) => self.ring_failed(leg, why, now),
            Event::Acd(Place::Caller, notice) => self.on_notice(notice, now),
            Event::Acd(Place::Transfer(seq), notice) => self.on_transfer_notice(seq, notice, now),
            Event::TransferQueued(taken) => self.transfer_queued(taken, now),
            Event::Request(req, token) => self.on_request(req, token, now),
            Event::Consult {
                leg,
                agent,
                agency,
                offer,
                port_free,
            } => self.on_consult(leg, agent, &agency, offer.as_deref(), port_free),
            Event::Drained => self.drained(now),
            Event::RtpTimeout => {
                warn!("no RTP from the caller; ending the call");
                self.hang_up_caller();
                self.end(EndCause::RtpTimeout, now);
            }
            Event::MediaFailed => {
                self.hang_up_caller();
                self.end(EndCause::MediaFailed, now);
            }
            Event::Key(key) => self.on_key(key, now),
            Event::Voice(speaking) => self.on_voice(speaking),
            Event::Sound => self.line.sound = true,
            Event::RecordingOpened(Ok(())) => {}
            Event::RecordingOpened(Err(error)) => {
                tracing::error!(%error, "recording could not start; the call continues unrecorded");
                self.store(StoreCmd::RecordingFailed {
                    id: self.id.clone(),
                    error,
                });
            }
            Event::Shutdown => {
                info!("ending the call: the service is shutting down");
                self.hang_up_caller();
                self.end(EndCause::Shutdown, now);
            }
        }
        std::mem::take(&mut self.out)
    }

    fn on_caller(&mut self, ev: Called, now: Now) {
        match ev {
            Called::Confirmed => {}
            Called::ReOffer(offer, token) => {
                // Keep the session as negotiated; answer with a new version.
                let keeps_g711 = offer
                    .as_deref()
                    .is_none_or(|b| sdp::parse(b).and_then(|r| sdp::negotiate(&r)).is_ok());
                let with = if keeps_g711 {
                    self.version += 1;
                    ReplyWith::Sdp(SdpAnswer {
                        leg: None,
                        version: self.version,
                        codec: Ok(self.codec),
                        direction: Direction::SendRecv,
                    })
                } else {
                    ReplyWith::Status(488)
                };
                self.out.push(Action::Reply { token, with });
            }
            Called::Ended(why) => self.end(EndCause::Caller(why), now),
        }
    }

    /// A key from the caller: 5 twice is a silent emergency (the UK's
    /// Silent Solution): someone there who cannot speak.
    fn on_key(&mut self, key: char, now: Now) {
        self.line.pressed = true;
        let at = now.at.saturating_duration_since(self.caller.arrived);
        let within = FIVE_TWICE_WITHIN.as_millis() as u64;
        if self
            .line
            .keys
            .pressed(key, at.as_millis() as u64, '5', within)
        {
            self.mark_silent_emergency(now);
        }
    }

    /// Marks the call a silent emergency, once: on record and on the
    /// incident's trail, ahead of every waiting caller, on the screens of
    /// the call-taker who has it and of the supervisors; a caller still
    /// waiting hears that the sign was received.
    fn mark_silent_emergency(&mut self, now: Now) {
        if self.line.silent_at.is_some() {
            return;
        }
        warn!("the caller pressed 5 twice: a silent emergency");
        self.line.silent_at = Some(now.at);
        self.store(StoreCmd::SilentEmergency {
            id: self.id.clone(),
            incident: self.incident.to_string(),
            at: now.wall_ms,
        });
        let (agent, waiting) = match &self.stage {
            Stage::Waiting { ringing } => (ringing.as_ref(), true),
            Stage::Overflowing { .. } => (None, true),
            Stage::Talking { agent, .. } => (Some(agent), false),
            _ => (None, false),
        };
        self.live(LiveEvent::SilentEmergency {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            agent_id: agent.map(|a| a.who.to_string()),
            at: now.wall_ms,
        });
        if waiting {
            self.acd(AcdOp::Urgent);
            self.media(MediaOp::Clear);
            self.media(MediaOp::Prompt("silent-ack"));
        }
    }

    /// The caller began or stopped speaking: the call-taker who has them
    /// sees it ("penelepon diam N dtk").
    fn on_voice(&mut self, speaking: bool) {
        self.line.speaking = speaking;
        self.line.spoke |= speaking;
        self.line.sound |= speaking;
        if let Stage::Talking { agent, .. } = &self.stage {
            let agent_id = agent.who.to_string();
            self.live(LiveEvent::CallerVoice {
                call_id: self.id.to_string(),
                agent_id,
                speaking,
            });
        }
    }

    /// The greeting or an announcement finished: the next announcement
    /// is due, unless someone is on the line.
    fn drained(&mut self, now: Now) {
        if matches!(self.stage, Stage::Talking { .. } | Stage::WithCenter { .. }) {
            return;
        }
        let wait = if self.greeted {
            self.rules.prompt_interval(&self.queue)
        } else {
            Duration::ZERO
        };
        self.greeted = true;
        self.announce_at = Some(now.at + wait);
    }

    /// The caller waits in the queue again, with their place (arrival
    /// time), and hears where they stand at once.
    fn back_to_queue(&mut self, now: Now) {
        warn!("the agent is gone: the caller waits in the queue again");
        self.stage = Stage::Waiting { ringing: None };
        self.acd(AcdOp::Enqueue(self.queue.clone()));
        self.announce_at = Some(now.at);
    }

    /// The call is over: everything still open is closed, and the record
    /// says why.
    fn end(&mut self, cause: EndCause, now: Now) {
        info!(cause = cause.as_str(), "call ended");
        let stage = std::mem::replace(&mut self.stage, Stage::Ended(cause.clone()));
        let (side, talking, transfer) = match stage {
            Stage::Waiting { ringing } => (ringing, false, None),
            Stage::Overflowing { center, .. } => (Some(center), false, None),
            Stage::WithCenter { center } => (Some(center), false, None),
            Stage::Talking { agent, transfer } => (Some(agent), true, transfer),
            Stage::Handover { transfer } => (None, false, Some(transfer)),
            Stage::Ended(_) => return,
        };
        let agent = side.as_ref().filter(|_| talking);
        if let Some(t) = transfer {
            let outcome = cause.transfer_outcome().to_string();
            self.give_up(t, &outcome, "system", agent, now);
        }
        self.acd(AcdOp::Leave(Place::Caller));
        self.live(LiveEvent::CallEnded {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            agent_id: agent.map(|a| a.who.to_string()),
            cause: cause.as_str().to_string(),
        });
        if let Some(a) = side {
            // Stop the phone ringing (CANCEL) or end its leg (BYE), unless
            // its own BYE ended the call.
            if cause == EndCause::AgentBye {
                self.out.push(Action::DropLeg(a.leg));
            } else {
                self.end_leg(a.leg, None);
            }
            if talking {
                self.acd(AcdOp::CallEnded(a.who, a.queue));
            }
        }
        self.out.push(Action::Media(MediaOp::Stop));
        let waited = self.waited(now.at);
        self.store(StoreCmd::Ended {
            id: self.id.clone(),
            at: now.wall_ms,
            wait_ms: Some(waited.as_millis() as i64),
            cause: cause.as_str().to_string(),
        });
        // Gone at once, before anyone answered: a ghost call, unless a
        // person has said otherwise (the store checks).
        let caller_left = matches!(
            cause,
            EndCause::Caller(LegEnd::RemoteBye | LegEnd::Cancelled)
        );
        let ghost = self.rules.ghost_within;
        let gone_at_once = caller_left
            && self.agent_answered.is_none()
            && !ghost.is_zero()
            && now.at.saturating_duration_since(self.caller.arrived) <= ghost;
        // Nothing came from the line the whole call, and no key: an open
        // line with no one on it (a pocket dial's dead microphone), ended
        // by the caller's side, the line's silence, or the call-taker.
        let nothing_heard = self.rules.ghost_without_audio
            && !self.line.sound
            && !self.line.pressed
            && (caller_left || matches!(cause, EndCause::RtpTimeout | EndCause::AgentBye));
        if gone_at_once || nothing_heard {
            self.store(StoreCmd::Classified {
                incident: self.incident.to_string(),
                category: "ghost".into(),
                at: now.wall_ms,
            });
        }
    }

    // The small words every handler uses.

    fn new_leg(&mut self) -> LegId {
        self.next_leg += 1;
        LegId(self.next_leg)
    }

    fn ring(&mut self, target: Target) -> LegId {
        let leg = self.new_leg();
        self.out.push(Action::Ring {
            leg,
            target,
            law: self.codec.law,
        });
        leg
    }

    fn end_leg(&mut self, leg: LegId, notify: Option<(u16, &'static str)>) {
        self.out.push(Action::EndLeg {
            leg: Some(leg),
            notify,
        });
    }

    fn hang_up_caller(&mut self) {
        self.out.push(Action::EndLeg {
            leg: None,
            notify: None,
        });
    }

    fn media(&mut self, op: MediaOp) {
        self.out.push(Action::Media(op));
    }

    fn acd(&mut self, op: AcdOp) {
        self.out.push(Action::Acd(op));
    }

    fn store(&mut self, cmd: StoreCmd) {
        self.out.push(Action::Store(Box::new(cmd)));
    }

    fn live(&mut self, event: LiveEvent) {
        self.out.push(Action::Live(Box::new(event)));
    }

    fn reply(&mut self, token: ReplyToken, with: ReplyWith) {
        self.out.push(Action::Reply { token, with });
    }

    fn event(&mut self, kind: &str, detail: String, now: Now) {
        self.store(StoreCmd::Event {
            id: self.id.clone(),
            at: now.wall_ms,
            kind: kind.into(),
            detail: Some(detail),
        });
    }

    /// What the panel of the agent who takes the call opens with.
    fn bridged(&self, agent: &AgentId, now: Now) -> LiveEvent {
        LiveEvent::CallBridged(BridgedCall {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            agent_id: agent.to_string(),
            caller_number: self.caller.number.clone(),
            location: self.caller.location.clone(),
            latitude: self.caller.latitude,
            longitude: self.caller.longitude,
            service: self.caller.service.clone(),
            arrived_at: self.caller.arrived_ms,
            bridged_at: now.wall_ms,
            speaking: self.line.speaking,
            silent_emergency: self.line.silent_at.is_some(),
            pranks: self.caller.pranks,
        })
    }
}

/// An agent's or center's answer: where to send it and what it
/// negotiated, or why it cannot be used.
fn read_answer(body: &[u8]) -> Result<(Option<SocketAddr>, Negotiated), sdp::SdpError> {
    sdp::parse(body).and_then(|r| sdp::negotiate(&r).map(|n| (r.addr, n)))
}

fn offer_failure(f: AgentFailure) -> OfferFailure {
    match f {
        AgentFailure::NoAnswer => OfferFailure::NoAnswer,
        AgentFailure::Declined => OfferFailure::Declined,
        AgentFailure::Unreachable => OfferFailure::Unreachable,
    }
}

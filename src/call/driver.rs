//! The thin driver around [`machine::Call`]: it owns the I/O (legs,
//! media session, recording files, the ACD's and the panel's channels),
//! turns what happens into events, and carries out the machine's actions.
//!
//! It never waits on a remote peer in its loop: every leg runs in its own
//! small task (`pump`), which reads the leg's events and carries out what
//! it is told, so ending a leg (up to 3 s for a BYE's or CANCEL's answer)
//! runs beside the call. Every source the loop selects on is a channel or
//! a timer, so cancel-safe. The call's end record is written whatever
//! happens: by the machine at its end, or by [`Driver`]'s drop (a panic).

use super::leg::Leg;
use super::machine::{
    self, AcdOp, Action, Call, Called, EndCause, Event, LegId, MediaOp, Now, Place, Placed,
    ReplyToken, ReplyWith, Request, SdpAnswer, Target,
};
use super::transfer::{transfer_place, Control, Reply};
use super::{close_consult, finish_recording, paths, CallerLeg, Conversation, Services, Unended};
use crate::acd::runtime::AcdNotice;
use crate::ids::{CallId, IncidentId, QueueId, TransferId};
use crate::leg::{AgentLegEvent, LegEvent, Responder};
use crate::live::LiveEvent;
use crate::media::g711::Law;
use crate::media::ports::RtpSocket;
use crate::media::prompts::Segment;
use crate::media::reactor::MediaControl;
use crate::media::recorder::{RecordError, Recording};
use crate::media::sdp::{self, LocalAudio};
use crate::media::session::{CallRecording, Finished, MediaCommand, MediaEvent, MediaParams};
use crate::sip::request::Replaces;
use crate::sip::{DialogName, ServerLeg};
use crate::store::{now_ms, StoreCmd};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// Queues, records and bridges an answered caller until the call ends,
/// then closes the recording and the record.
pub(crate) async fn converse(s: Arc<Services>, c: Conversation) {
    let mut driver = Driver::start(s, c);
    driver.run().await;
    driver.close().await;
}

/// What the loop hears from a leg's pump.
enum Heard {
    Placed(AgentLegEvent),
    Called(LegEvent),
}

/// Who a pump speaks for.
#[derive(Clone, Copy)]
enum Who {
    Caller,
    Leg(LegId),
}

/// What a pump is told to do with its leg.
enum LegCmd {
    /// CANCEL or BYE; a phone first hears how its transfer went.
    End {
        notify: Option<(u16, &'static str)>,
    },
    Ringing,
    Answer(String),
    Refuse(u16, &'static str),
}

/// The leg a pump holds.
enum Pumped {
    /// A leg we placed (agent, dispatcher, center).
    Placed(Leg),
    Caller(CallerLeg),
    /// A phone's consultation INVITE.
    Consult(ServerLeg),
}

impl Pumped {
    async fn next(&mut self) -> (Heard, bool) {
        match self {
            Pumped::Placed(l) => {
                let ev = l.next_event().await;
                let last = matches!(
                    ev,
                    AgentLegEvent::Ended | AgentLegEvent::Lost | AgentLegEvent::Failed(_)
                );
                (Heard::Placed(ev), last)
            }
            Pumped::Caller(l) => {
                let ev = l.next_event().await;
                let last = matches!(ev, LegEvent::Ended(_));
                (Heard::Called(ev), last)
            }
            Pumped::Consult(l) => {
                let ev = l.next_event().await;
                let last = matches!(ev, LegEvent::Ended(_));
                (Heard::Called(ev), last)
            }
        }
    }

    /// Carries out `cmd`; false once the leg is done with.
    async fn act(&mut self, cmd: LegCmd) -> bool {
        match (self, cmd) {
            (Pumped::Placed(l), LegCmd::End { notify }) => {
                if let Some((code, reason)) = notify {
                    l.notify_transfer(code, reason, true).await;
                }
                l.end().await;
                false
            }
            (Pumped::Caller(l), LegCmd::End { .. }) => {
                l.hangup().await;
                false
            }
            (Pumped::Consult(l), LegCmd::End { .. }) => {
                l.hangup().await;
                false
            }
            (Pumped::Consult(l), LegCmd::Ringing) => {
                l.ringing();
                true
            }
            (Pumped::Consult(l), LegCmd::Answer(sdp)) => {
                if let Err(e) = l.answer(sdp) {
                    warn!(error = %e, "the consultation went as it was answered");
                }
                true
            }
            (Pumped::Consult(l), LegCmd::Refuse(code, reason)) => {
                l.reject(code, reason);
                false
            }
            _ => true,
        }
    }
}

/// Runs one leg beside the call: its events to the call, the call's
/// commands to it. Commands come first, so an end the call asked for is
/// carried out even when the call is gone; when the call drops the
/// command channel, the leg is dropped with the pump.
async fn pump(
    who: Who,
    mut leg: Pumped,
    events: mpsc::UnboundedSender<(Who, Heard)>,
    mut cmds: mpsc::UnboundedReceiver<LegCmd>,
) {
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(cmd) => {
                    if !leg.act(cmd).await {
                        return;
                    }
                }
                None => return,
            },
            (heard, last) = leg.next(), if reading => {
                let sent = events.send((who, heard)).is_ok();
                reading = sent && !last;
            }
        }
    }
}

/// The driver's side of a leg.
struct LegHandle {
    cmds: mpsc::UnboundedSender<LegCmd>,
    /// The leg's media port, until the media session takes it.
    rtp: Option<RtpSocket>,
    local: LocalAudio,
    /// A consultation's dialog, for a REFER's Replaces.
    name: Option<DialogName>,
}

impl LegHandle {
    fn tell(&self, cmd: LegCmd) {
        let _ = self.cmds.send(cmd);
    }
}

/// What one wait of the loop brought.
enum Turn {
    Event(Event),
    /// The machine's timer is due.
    Timeout,
    /// Something the driver took care of itself.
    Quiet,
}

/// A request whose answer the machine gives.
enum Waiting {
    Sip(Responder),
    Panel(Reply),
}

pub(super) struct Driver {
    s: Arc<Services>,
    call: Call,
    id: CallId,
    incident: IncidentId,
    /// What enqueueing the caller needs besides the queue.
    require: crate::acd::Skills,
    arrived: Instant,
    arrived_ms: i64,
    caller: LegHandle,
    legs: HashMap<LegId, LegHandle>,
    heard_tx: mpsc::UnboundedSender<(Who, Heard)>,
    heard: mpsc::UnboundedReceiver<(Who, Heard)>,
    media: MediaControl,
    media_events: mpsc::UnboundedReceiver<MediaEvent>,
    session: Option<oneshot::Receiver<Finished>>,
    /// The call's recording file being created.
    opening: Option<JoinHandle<Result<Recording, RecordError>>>,
    /// The consultation's recording, opened for the next `Consult`.
    consult_recording: Option<Recording>,
    /// The transfer whose consultation the media session records now.
    consult_of: Option<TransferId>,
    notice_tx: mpsc::UnboundedSender<AcdNotice>,
    notices: mpsc::UnboundedReceiver<AcdNotice>,
    transfer_notices: Option<(u32, mpsc::UnboundedReceiver<AcdNotice>)>,
    controls: mpsc::UnboundedReceiver<Control>,
    waiting: HashMap<u64, Waiting>,
    next_token: u64,
    shutdown_told: bool,
    /// Puts the end on record should the machine not (a panic).
    unended: Option<Unended>,
    /// The machine's first actions, carried out as the loop starts.
    first: Vec<Action>,
}

impl Driver {
    fn start(s: Arc<Services>, c: Conversation) -> Driver {
        let codec = super::codec_name(&c.negotiated);
        let path = s
            .config
            .resolve(&s.config.server.media.recordings_dir)
            .join(paths::recording_path(c.arrived_ms, &c.call_id));
        // The caller hears the greeting at once; the file is created beside
        // it (on a busy or failing disk that can take seconds), and the
        // session holds the call's frames for it meanwhile.
        let opening = {
            let recorder = s.recorder.clone();
            let path = path.clone();
            tokio::spawn(async move { recorder.open(&path).await })
        };
        s.store.send(StoreCmd::Answered {
            id: c.call_id.clone(),
            at: c.answered_ms,
            codec: codec.to_string(),
            recording_path: Some(path.display().to_string()),
            recording_error: None,
        });
        let (ev_tx, media_events) = mpsc::unbounded_channel();
        let (media, session) = crate::media::reactor::start(
            c.rtp,
            MediaParams::new(
                &c.negotiated,
                c.remote_addr,
                s.config.server.media.rtp_timeout,
            ),
            CallRecording::Pending(s.recorder.held()),
            ev_tx,
        );
        let greeting = s
            .prompts
            .get(&c.greeting)
            .or_else(|| s.prompts.get("greeting-112"));
        let _ = media.send(MediaCommand::Background(s.prompts.get("hold-music")));
        let _ = media.send(MediaCommand::Play(
            greeting.into_iter().map(Segment::Audio).collect(),
        ));

        let (heard_tx, heard) = mpsc::unbounded_channel();
        let (cmds, rx) = mpsc::unbounded_channel();
        s.tracker.spawn(pump(
            Who::Caller,
            Pumped::Caller(c.caller),
            heard_tx.clone(),
            rx,
        ));
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let controls = s.controls.register(&c.call_id);
        let unended = Unended::new(&s.store, &c.call_id);
        let pranks = s.pranks.of(c.caller_number.as_deref());
        let (call, actions) = Call::new(machine::Start {
            id: c.call_id.clone(),
            incident: c.incident_id.clone(),
            caller: machine::Caller {
                number: c.caller_number,
                location: c.location.text,
                latitude: c.location.latitude,
                longitude: c.location.longitude,
                service: c.route.service.clone(),
                arrived: c.arrived,
                arrived_ms: c.arrived_ms,
                pranks,
            },
            queue: QueueId(c.route.queue.clone()),
            codec: c.negotiated,
            rules: s.rules.clone(),
        });
        Driver {
            id: c.call_id,
            incident: c.incident_id,
            require: c.route.require,
            arrived: c.arrived,
            arrived_ms: c.arrived_ms,
            caller: LegHandle {
                cmds,
                rtp: None,
                local: c.local,
                name: None,
            },
            call,
            legs: HashMap::new(),
            heard_tx,
            heard,
            media,
            media_events,
            session: Some(session),
            opening: Some(opening),
            consult_recording: None,
            consult_of: None,
            notice_tx,
            notices,
            transfer_notices: None,
            controls,
            waiting: HashMap::new(),
            next_token: 0,
            shutdown_told: false,
            unended: Some(unended),
            first: actions,
            s,
        }
    }
}

impl Driver {
    fn now() -> Now {
        Now {
            at: Instant::now(),
            wall_ms: now_ms(),
        }
    }

    async fn run(&mut self) {
        let first = std::mem::take(&mut self.first);
        self.act(first).await;
        while self.call.ended().is_none() {
            let event = self.next_event().await;
            let actions = match event {
                Some(ev) => self.call.handle(ev, Self::now()),
                None => self.call.handle_timeout(Self::now()),
            };
            self.act(actions).await;
            // A request the machine left unanswered is dropped with its turn.
            self.waiting.clear();
        }
    }

    /// The next thing that happens to the call; None when a timer is due.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.turn().await {
                Turn::Event(ev) => return Some(ev),
                Turn::Timeout => return None,
                Turn::Quiet => {}
            }
        }
    }

    async fn turn(&mut self) -> Turn {
        let deadline = self.call.poll_timeout();
        let timer = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let opened = async {
            match self.opening.as_mut() {
                Some(o) => o.await,
                None => std::future::pending().await,
            }
        };
        let transfer_notice = async {
            match self.transfer_notices.as_mut() {
                Some((seq, rx)) => match rx.recv().await {
                    Some(n) => (*seq, n),
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let shutdown = async {
            if self.shutdown_told {
                std::future::pending().await
            } else {
                self.s.hangup_all.cancelled().await
            }
        };
        tokio::select! {
            Some((who, heard)) = self.heard.recv() => Turn::Event(self.heard_from_leg(who, heard)),
            Some(n) = self.notices.recv() => Turn::Event(Event::Acd(Place::Caller, n.into())),
            (seq, n) = transfer_notice => Turn::Event(Event::Acd(Place::Transfer(seq), n.into())),
            Some(ctl) = self.controls.recv() => Turn::Event(self.request_of(ctl)),
            ev = self.media_events.recv() => self.media_says(ev),
            done = opened => {
                self.opening = None;
                Turn::Event(self.recording_opened(done))
            }
            _ = shutdown => {
                self.shutdown_told = true;
                Turn::Event(Event::Shutdown)
            }
            _ = timer => Turn::Timeout,
        }
    }

    fn token(&mut self, w: Waiting) -> ReplyToken {
        self.next_token += 1;
        self.waiting.insert(self.next_token, w);
        ReplyToken(self.next_token)
    }

    fn heard_from_leg(&mut self, who: Who, heard: Heard) -> Event {
        match (who, heard) {
            (Who::Caller, Heard::Called(ev)) => Event::Caller(self.called(ev)),
            (Who::Leg(leg), Heard::Called(ev)) => Event::Consultation(leg, self.called(ev)),
            (Who::Leg(leg), Heard::Placed(ev)) => Event::Placed(leg, self.placed(ev)),
            // The caller's pump speaks only of a leg that called.
            (Who::Caller, Heard::Placed(_)) => unreachable!("the caller's leg is pumped as called"),
        }
    }

    fn called(&mut self, ev: LegEvent) -> Called {
        match ev {
            LegEvent::Confirmed { .. } => Called::Confirmed,
            LegEvent::ReOffer { sdp, responder } => {
                Called::ReOffer(sdp, self.token(Waiting::Sip(responder)))
            }
            LegEvent::Ended(why) => Called::Ended(why),
        }
    }

    fn placed(&mut self, ev: AgentLegEvent) -> Placed {
        match ev {
            AgentLegEvent::Trying => Placed::Trying,
            AgentLegEvent::Ringing => Placed::Ringing,
            AgentLegEvent::Answered { sdp } => Placed::Answered(sdp),
            AgentLegEvent::Failed(f) => Placed::Failed(f),
            AgentLegEvent::ReOffer { sdp, responder } => {
                Placed::ReOffer(sdp, self.token(Waiting::Sip(responder)))
            }
            AgentLegEvent::Ended => Placed::Ended,
            AgentLegEvent::Lost => Placed::Lost,
            AgentLegEvent::Refer {
                target,
                replaces,
                responder,
            } => {
                // Which of this call's consultations the Replaces names.
                let replaces = replaces.map(|raw| {
                    let r = Replaces::parse(&raw)?;
                    self.legs.iter().find_map(|(id, h)| {
                        h.name
                            .as_ref()
                            .is_some_and(|n| n.is_named_by(&r))
                            .then_some(*id)
                    })
                });
                Placed::Refer {
                    target,
                    replaces,
                    token: self.token(Waiting::Sip(responder)),
                }
            }
        }
    }

    fn request_of(&mut self, ctl: Control) -> Event {
        let (req, reply) = match ctl {
            Control::Transfer {
                agency,
                agent,
                by,
                reply,
            } => (
                Request::Transfer {
                    agency,
                    named: agent.map(Into::into),
                    by,
                },
                reply,
            ),
            Control::Complete { by, reply } => (Request::Complete { by }, reply),
            Control::Conference { by, reply } => (Request::Conference { by }, reply),
            Control::Cancel { by, reply } => (Request::Cancel { by }, reply),
            Control::HangUp { by, reply } => (Request::HangUp { by }, reply),
            Control::Consult {
                agent,
                agency,
                leg,
                offer,
            } => return self.adopt_consultation(agent, agency, *leg, offer),
        };
        Event::Request(req, self.token(Waiting::Panel(reply)))
    }

    /// A phone's consultation INVITE joins the call as one of its legs,
    /// with a media port if one is free.
    fn adopt_consultation(
        &mut self,
        agent: String,
        agency: String,
        leg: ServerLeg,
        offer: Option<Vec<u8>>,
    ) -> Event {
        let id = self.call.reserve_leg();
        let rtp = self.s.ports.allocate().ok();
        let local = LocalAudio::new(
            self.s.config.server.sip.public_ip,
            rtp.as_ref().map_or(0, |r| r.port),
        );
        let name = Some(leg.name());
        self.spawn_leg(id, Pumped::Consult(leg), rtp, local, name);
        Event::Consult {
            leg: id,
            agent: agent.into(),
            agency,
            offer,
            port_free: self.legs.get(&id).is_some_and(|h| h.rtp.is_some()),
        }
    }

    fn spawn_leg(
        &mut self,
        id: LegId,
        leg: Pumped,
        rtp: Option<RtpSocket>,
        local: LocalAudio,
        name: Option<DialogName>,
    ) {
        let (cmds, rx) = mpsc::unbounded_channel();
        self.s
            .tracker
            .spawn(pump(Who::Leg(id), leg, self.heard_tx.clone(), rx));
        self.legs.insert(
            id,
            LegHandle {
                cmds,
                rtp,
                local,
                name,
            },
        );
    }

    fn media_says(&mut self, ev: Option<MediaEvent>) -> Turn {
        match ev {
            Some(MediaEvent::Drained) => Turn::Event(Event::Drained),
            Some(MediaEvent::RtpTimeout) => Turn::Event(Event::RtpTimeout),
            // The recordings are the driver's: nothing for the machine.
            Some(MediaEvent::ConsultClosed(rec)) => {
                if let (Some(rec), Some(id)) = (rec, self.consult_of.take()) {
                    close_consult(&self.s, id, rec);
                }
                Turn::Quiet
            }
            Some(MediaEvent::Key(key)) => Turn::Event(Event::Key(key)),
            Some(MediaEvent::Voice(speaking)) => Turn::Event(Event::Voice(speaking)),
            Some(MediaEvent::Sound) => Turn::Event(Event::Sound),
            None => Turn::Event(Event::MediaFailed),
        }
    }

    /// The call's file is made (or not): the session gets it, with what it
    /// held meanwhile.
    fn recording_opened(
        &mut self,
        done: Result<Result<Recording, RecordError>, tokio::task::JoinError>,
    ) -> Event {
        let (recording, result) = match opened(done) {
            Ok(rec) => (Some(rec), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let _ = self.media.send(MediaCommand::Record(recording));
        Event::RecordingOpened(result)
    }
}

impl Driver {
    /// Carries out the machine's actions in order; what acting learns
    /// (a ring that failed, the ACD's answer) goes back to the machine at
    /// once, and its actions follow.
    async fn act(&mut self, actions: Vec<Action>) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            if let Some(ev) = self.carry_out(action).await {
                todo.extend(self.call.handle(ev, Self::now()));
            }
        }
    }

    async fn carry_out(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Ring { leg, target, law } => {
                if let Err(why) = self.ring(leg, &target, law) {
                    return Some(Event::RingFailed(leg, why));
                }
            }
            Action::EndLeg { leg: None, .. } => self.caller.tell(LegCmd::End { notify: None }),
            Action::EndLeg {
                leg: Some(leg),
                notify,
            } => {
                if let Some(h) = self.legs.remove(&leg) {
                    h.tell(LegCmd::End { notify });
                }
            }
            Action::DropLeg(leg) => {
                self.legs.remove(&leg);
            }
            Action::Refuse { leg, code, reason } => {
                if let Some(h) = self.legs.remove(&leg) {
                    h.tell(LegCmd::Refuse(code, reason));
                }
            }
            Action::Ringing(leg) => {
                if let Some(h) = self.legs.get(&leg) {
                    h.tell(LegCmd::Ringing);
                }
            }
            Action::Answer(answer) => {
                let sdp = self.render(&answer);
                if let Some(h) = answer.leg.and_then(|l| self.legs.get(&l)) {
                    h.tell(LegCmd::Answer(sdp));
                }
            }
            Action::Reply { token, with } => self.reply(token, with).await,
            Action::Media(op) => self.media_op(op),
            Action::Store(cmd) => {
                if matches!(*cmd, StoreCmd::Ended { .. }) {
                    if let Some(unended) = self.unended.take() {
                        unended.hand_over();
                    }
                }
                self.s.store.send(*cmd);
            }
            Action::Live(ev) => self.s.live.send(*ev),
            Action::Acd(op) => return self.acd(op).await,
            Action::Announce { silent } => {
                let position = self
                    .s
                    .acd
                    .position(self.id.clone())
                    .await
                    .map(|(_, p)| p)
                    .unwrap_or(1);
                let mut prompt = Vec::new();
                if silent {
                    prompt.extend(self.s.prompts.get("silent").map(Segment::Audio));
                    prompt.push(Segment::Silence(crate::media::recorder::FRAME_SAMPLES * 25));
                }
                prompt.extend(self.s.prompts.queue_announcement(position));
                let _ = self.media.send(MediaCommand::Play(prompt));
            }
            Action::RecordConsult {
                transfer,
                seq,
                dispatcher,
            } => {
                self.record_consult(transfer, seq, dispatcher.to_string())
                    .await
            }
        }
        None
    }

    /// Writes an SDP answer for a leg with its address and port.
    fn render(&self, a: &SdpAnswer) -> String {
        let local = match a.leg {
            None => self.caller.local,
            Some(l) => self.legs.get(&l).map_or(self.caller.local, |h| h.local),
        };
        let local = LocalAudio {
            version: a.version,
            ..local
        };
        match a.codec {
            Ok(n) => sdp::answer(&local, &n, a.direction),
            Err(law) => sdp::offer_preferring(&local, law, a.direction),
        }
    }

    /// Answers a waiting request. A SIP answer is a send, not a wait for
    /// the peer; it goes out before anything the machine says next (a
    /// REFER's 202 before its NOTIFY).
    async fn reply(&mut self, token: ReplyToken, with: ReplyWith) {
        let Some(waiting) = self.waiting.remove(&token.0) else {
            return;
        };
        match (waiting, with) {
            (Waiting::Sip(r), ReplyWith::Sdp(a)) => r.ok_with_sdp(self.render(&a)).await,
            (Waiting::Sip(r), ReplyWith::Status(code)) => r.reject(code).await,
            (Waiting::Panel(reply), ReplyWith::Done(result)) => {
                let _ = reply.send(result);
            }
            (Waiting::Sip(r), ReplyWith::Done(_)) => r.reject(500).await,
            (Waiting::Panel(reply), _) => {
                let _ = reply.send(Err("the call could not answer".into()));
            }
        }
    }

    fn media_op(&mut self, op: MediaOp) {
        let timeout = self.s.config.server.media.rtp_timeout;
        let cmd = match op {
            MediaOp::Bridge { leg, remote, codec } => {
                let Some(rtp) = self.legs.get_mut(&leg).and_then(|h| h.rtp.take()) else {
                    warn!("a bridge to a leg without its media port: ignored");
                    return;
                };
                MediaCommand::Bridge {
                    rtp,
                    params: MediaParams::new(&codec, remote, timeout),
                }
            }
            MediaOp::Consult {
                leg,
                remote,
                codec,
                phone,
            } => {
                let Some(rtp) = self.legs.get_mut(&leg).and_then(|h| h.rtp.take()) else {
                    warn!("a consultation with a leg without its media port: ignored");
                    return;
                };
                let agent_leg = phone.and_then(|(leg, remote, codec)| {
                    let rtp = self.legs.get_mut(&leg)?.rtp.take()?;
                    Some((rtp, MediaParams::new(&codec, remote, timeout)))
                });
                MediaCommand::Consult {
                    rtp,
                    params: MediaParams::new(&codec, remote, timeout),
                    recording: self.consult_recording.take(),
                    agent_leg,
                }
            }
            MediaOp::Unbridge => MediaCommand::Unbridge,
            MediaOp::Hold(on) => MediaCommand::Hold(on),
            MediaOp::Conference => MediaCommand::Conference,
            MediaOp::Complete => MediaCommand::Complete,
            MediaOp::EndConsult => MediaCommand::EndConsult,
            MediaOp::Clear => MediaCommand::Clear,
            MediaOp::Prompt(name) => {
                let prompt = self.s.prompts.get(name).into_iter();
                MediaCommand::Play(prompt.map(Segment::Audio).collect())
            }
            MediaOp::Stop => MediaCommand::Stop,
        };
        let _ = self.media.send(cmd);
    }

    fn place(&self, place: Place) -> CallId {
        match place {
            Place::Caller => self.id.clone(),
            Place::Transfer(seq) => transfer_place(&self.id, seq),
        }
    }

    async fn acd(&mut self, op: AcdOp) -> Option<Event> {
        let acd = &self.s.acd;
        match op {
            AcdOp::Enqueue(queue) => {
                let queued = acd
                    .enqueue_standing(
                        self.id.clone(),
                        queue.to_string(),
                        self.require.clone(),
                        self.arrived,
                        self.call.standing(),
                        self.notice_tx.clone(),
                    )
                    .await;
                if queued.is_none() {
                    error!(%queue, "queue refused the call; it stays answered with prompts");
                }
            }
            AcdOp::QueueTransfer { seq, queue, named } => {
                let place = transfer_place(&self.id, seq);
                let (tx, rx) = mpsc::unbounded_channel();
                let queue = queue.to_string();
                let queued = match named {
                    Some(d) => acd.enqueue_for(place, queue, d.0, Instant::now(), tx).await,
                    None => {
                        let any = Default::default();
                        acd.enqueue(place, queue, any, Instant::now(), tx).await
                    }
                };
                if queued.is_some() {
                    self.transfer_notices = Some((seq, rx));
                }
                return Some(Event::TransferQueued(queued.is_some()));
            }
            AcdOp::Leave(place) => acd.leave(self.place(place)),
            AcdOp::Answered(place, agent) => acd.answered(self.place(place), agent.0),
            AcdOp::OfferFailed(place, agent, why) => {
                acd.offer_failed(self.place(place), agent.0, why)
            }
            AcdOp::CallEnded(agent, queue) => acd.call_ended(agent.0, queue.0),
            AcdOp::Urgent => acd.urgent(self.id.clone()),
        }
        None
    }

    /// Opens the consultation's recording (the media session's `Consult`
    /// takes it next) and puts the dispatcher's answer on record.
    async fn record_consult(&mut self, transfer: TransferId, seq: u32, dispatcher: String) {
        let path = self
            .s
            .config
            .resolve(&self.s.config.server.media.recordings_dir)
            .join(paths::transfer_recording_path(
                self.arrived_ms,
                &self.id,
                seq,
            ));
        let (recording, error) = match self.s.recorder.open(&path).await {
            Ok(r) => (Some(r), None),
            Err(e) => {
                error!(error = %e, "the consultation could not be recorded; it goes on");
                (None, Some(e.to_string()))
            }
        };
        self.s.store.send(StoreCmd::TransferAnswered {
            id: transfer.to_string(),
            agent: dispatcher,
            at: now_ms(),
            recording_path: recording.as_ref().map(|r| r.path().display().to_string()),
            recording_error: error,
        });
        self.consult_of = recording.as_ref().map(|_| transfer);
        self.consult_recording = recording;
    }

    /// Rings an agent's phone (or the panel's) or another center, offering
    /// the caller's law first so the bridge needs no transcoding.
    fn ring(&mut self, id: LegId, target: &Target, law: Law) -> Result<(), &'static str> {
        let s = self.s.clone();
        // An agent with the panel's phone on takes calls there.
        let browser = matches!(target, Target::Agent(a) if s.phones.has(a.as_str()));
        let binding = match target {
            Target::Agent(agent) if !browser => Some(
                s.sip
                    .agent_binding(agent.as_str())
                    .ok_or("not registered")?,
            ),
            _ => None,
        };
        let rtp = s.ports.allocate().map_err(|_| "no RTP port")?;
        // The browser's gateway is ours: it reaches the session where its
        // socket is bound, not at the address peers outside see.
        let ip = if browser {
            crate::webphone::reachable_here(s.ports.ip())
        } else {
            s.config.server.sip.public_ip
        };
        let local = LocalAudio::new(ip, rtp.port);
        let offer = sdp::offer_preferring(&local, law, sdp::Direction::SendRecv);
        let caller = self.call.caller_number().unwrap_or("anonymous").to_string();
        let http = s.config.server.http.listen;
        let incident = &self.incident;
        let call_info = Some(format!(
            "<http://{http}/api/incidents/{incident}>;purpose=info"
        ));
        let leg = match (target, binding) {
            (Target::Agent(agent), _) if browser => {
                let socket = s.ports.allocate().map_err(|_| "no RTP port")?;
                let who = self.call.caller();
                let location = who.location.clone().or_else(|| {
                    who.latitude
                        .zip(who.longitude)
                        .map(|(lat, lon)| format!("{lat:.5}, {lon:.5}"))
                });
                let ring = crate::webphone::Ring {
                    offer,
                    call_side: std::net::SocketAddr::new(ip, rtp.port),
                    socket,
                    caller_number: caller,
                    incident_id: incident.to_string(),
                    service: who.service.clone(),
                    location,
                    waited_ms: who.arrived.elapsed().as_millis() as u64,
                    silent_emergency: self.call.is_silent_emergency(),
                    pranks: who.pranks,
                };
                Leg::Browser(s.phones.ring(agent.as_str(), ring)?)
            }
            (Target::Agent(agent), Some(binding)) => {
                info!(%agent, contact = %binding.contact, "ringing agent");
                let leg = s.sip.call_agent(&binding, &caller, offer, call_info);
                Leg::Phone(leg.map_err(invite_failed)?)
            }
            (Target::Center(uri), _) => {
                let leg = s.sip.call_uri(uri, &caller, offer, call_info);
                Leg::Phone(leg.map_err(invite_failed)?)
            }
            (Target::Agent(_), None) => return Err("not registered"),
        };
        self.spawn_leg(id, Pumped::Placed(leg), Some(rtp), local, None);
        Ok(())
    }

    /// After the machine's end: the media session stops, the recordings
    /// are closed and summed, and the records say so.
    async fn close(&mut self) {
        self.s.controls.remove(&self.id);
        let Some(session) = self.session.take() else {
            return;
        };
        let finished = match session.await {
            Ok(x) => x,
            Err(e) => {
                error!(error = %e, "media session failed");
                return;
            }
        };
        let mut recording = finished.recording;
        // The call ended before its file was made: it gets what the session
        // held, and silence for the rest of the call.
        if let Some(o) = self.opening.take() {
            recording = match opened(o.await) {
                Ok(mut rec) => {
                    if let Some(held) = finished.held {
                        held.write_to(&mut rec);
                    }
                    Some(rec)
                }
                Err(error) => {
                    error!(%error, "recording could not start; the call continues unrecorded");
                    self.s.store.send(StoreCmd::RecordingFailed {
                        id: self.id.clone(),
                        error,
                    });
                    None
                }
            };
        }
        // A consultation still recording at the end, or whose close was
        // not read before the end.
        while let Ok(ev) = self.media_events.try_recv() {
            if let MediaEvent::ConsultClosed(Some(rec)) = ev {
                if let Some(id) = self.consult_of.take() {
                    close_consult(&self.s, id, rec);
                }
            }
        }
        if let (Some(rec), Some(id)) = (finished.consult, self.consult_of.take()) {
            close_consult(&self.s, id, rec);
        }
        if let Some(rec) = recording {
            let outcome = finish_recording(rec).await;
            if let Some(e) = &outcome.error {
                error!(error = %e, "recording was not closed cleanly");
            }
            self.s.store.send(StoreCmd::RecordingClosed {
                id: self.id.clone(),
                outcome,
            });
        }
    }
}

/// Why an INVITE could not be sent, logged whole; the machine hears the
/// short reason.
fn invite_failed(e: crate::sip::SipError) -> &'static str {
    warn!(error = %e, "INVITE not sent");
    "INVITE failed"
}

/// The call's recording once `Recorder::open` is done, or why not.
fn opened(
    done: Result<Result<Recording, RecordError>, tokio::task::JoinError>,
) -> Result<Recording, String> {
    match done {
        Ok(Ok(rec)) => Ok(rec),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Should the call's task end without the machine's end (a panic), the
/// legs are told to end, the ACD and the panel let go of the call, and
/// its end record is written all the same.
impl Drop for Driver {
    fn drop(&mut self) {
        let Some(unended) = self.unended.take() else {
            return;
        };
        error!("the call's task ended without its end; closing its record");
        self.caller.tell(LegCmd::End { notify: None });
        for (_, h) in self.legs.drain() {
            h.tell(LegCmd::End { notify: None });
        }
        self.s.controls.remove(&self.id);
        self.s.acd.leave(self.id.clone());
        if let Some((seq, _)) = self.transfer_notices {
            self.s.acd.leave(transfer_place(&self.id, seq));
        }
        self.s.live.send(LiveEvent::CallEnded {
            call_id: self.id.to_string(),
            incident_id: self.incident.to_string(),
            agent_id: None,
            cause: EndCause::InternalError.as_str().into(),
        });
        let waited = self.call.waited(Instant::now()).as_millis() as i64;
        unended.end(EndCause::InternalError, Some(waited));
    }
}

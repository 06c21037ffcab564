//! One call's media: the caller's leg, and up to two agent legs (the agent
//! talking with the caller, and during a warm transfer the dispatcher),
//! each symmetric RTP on a pooled port.
//!
//! Every 20 ms tick takes one frame of what the caller sent and one of what
//! the caller heard, and hands both to the recorder as a time-aligned
//! stereo frame. What the caller hears depends on the mode:
//!
//! - prompts (no agent, or the agent holds): the player's frame, paced;
//! - talk: the agent's packets, forwarded as they arrive (no transcoding
//!   when both legs use the same law);
//! - consult: the caller hears the player while the agent and the
//!   dispatcher talk privately (forwarded as they arrive); their two
//!   voices go to a second recording, the consultation's. In an attended
//!   transfer from the phone the agent speaks on the phone's
//!   consultation leg, which takes the agent's place until it ends;
//! - conference: all three mixed per tick, each hearing the other two.
//!
//! Per packet nothing is allocated, and nothing waits on the disk or the
//! database.
//!
//! A session is plain state driven from outside (`media::reactor`): `tick`
//! every 20 ms, `readable` when a leg's socket has packets to relay at
//! once, `apply` for each command. The caller's socket needs that wake-up
//! only in talk, where its packets are relayed as they come; otherwise
//! (prompts, consult, conference) they are only recorded or mixed, so the
//! tick reads what queued. `relayed` says which sockets need it now.

use super::g711::Law;
use super::listen::{EventKeys, ToneKeys, Vad};
use super::ports::{Batch, RtpSocket, BATCH};
use super::prompts::{Clip, Player, Segment};
use super::recorder::{Held, Recording, FRAME_SAMPLES};
use bytes::Buf;
use rtc::rtp::Header;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Most caller audio kept waiting for the next tick (200 ms): bounds
/// latency when the caller's clock runs faster than ours.
const MAX_BUFFERED: usize = FRAME_SAMPLES * 10;

/// How long a latched source's stream must have been silent before a new
/// stream (SSRC) from the same source is taken: a phone that restarts its
/// stream loses at most this much; a sender forging the source address
/// cannot cut into a live stream.
const RESTART_AFTER: Duration = Duration::from_millis(250);

/// Whose RTP a leg takes, and where the leg's RTP goes (symmetric RTP,
/// RFC 4961). A packet from the address the peer's SDP named is always
/// taken; otherwise the leg latches once, to the first source it hears
/// (a phone behind NAT sends from an address its SDP cannot know). Once
/// latched it takes only that source, and only that source's stream
/// (RFC 3550's SSRC): a stranger who finds the port is neither heard nor
/// recorded, and what it sends moves nothing (RTP hijack).
#[derive(Debug, Clone)]
struct Latch {
    /// The address the SDP named.
    offered: Option<SocketAddr>,
    /// Where this leg's RTP goes: `offered` until a source is latched.
    remote: Option<SocketAddr>,
    /// The source and stream taken, and when its last packet came.
    latched: Option<(SocketAddr, u32, Instant)>,
}

impl Latch {
    fn new(offered: Option<SocketAddr>) -> Latch {
        Latch {
            offered,
            remote: offered,
            latched: None,
        }
    }

    /// Whether a packet from `from` with `ssrc` belongs to this leg; if so
    /// the leg is latched to it.
    fn admit(&mut self, from: SocketAddr, ssrc: u32, now: Instant) -> bool {
        let take = match self.latched {
            None => true,
            Some((addr, current, last)) if addr == from => {
                ssrc == current || now.saturating_duration_since(last) >= RESTART_AFTER
            }
            Some(_) => Some(from) == self.offered,
        };
        if take {
            if self.latched.is_none_or(|(a, c, _)| (a, c) != (from, ssrc)) {
                debug!(%from, ssrc, "rtp latched");
            }
            self.latched = Some((from, ssrc, now));
            self.remote = Some(from);
        }
        take
    }
}

/// What the media leg was negotiated with.
#[derive(Debug, Clone)]
pub struct MediaParams {
    pub law: Law,
    pub pt: u8,
    pub dtmf_pt: Option<u8>,
    /// From SDP; replaced by the source of the caller's RTP (symmetric RTP).
    pub remote: Option<SocketAddr>,
    pub rtp_timeout: Duration,
}

impl MediaParams {
    /// A leg as its offer/answer negotiated it, sending to `remote`.
    pub fn new(
        n: &super::sdp::Negotiated,
        remote: Option<SocketAddr>,
        rtp_timeout: Duration,
    ) -> MediaParams {
        MediaParams {
            law: n.law,
            pt: n.pt,
            dtmf_pt: n.dtmf_pt,
            remote,
            rtp_timeout,
        }
    }
}

pub enum MediaCommand {
    /// Queue segments after what is already queued.
    Play(Vec<Segment>),
    /// Drop what is queued (the background keeps playing).
    Clear,
    Background(Option<Clip>),
    /// The call's recording, now that its file exists (None: it could
    /// not be made). What was held until then goes to it first.
    Record(Option<Recording>),
    /// Relay between the caller and this agent leg; prompts stop.
    Bridge {
        rtp: RtpSocket,
        params: MediaParams,
    },
    /// The agent leg is gone: back to prompts.
    Unbridge,
    /// The agent put the caller on hold (true) or took them off (false).
    Hold(bool),
    /// A dispatcher answered a warm transfer: the caller hears the player
    /// while agent and dispatcher talk; `recording` takes their voices.
    /// `agent_leg` is the phone's consultation leg of an attended
    /// transfer: it speaks for the agent until the consultation ends (the
    /// agent's first leg, on hold, is kept aside and comes back then).
    Consult {
        rtp: RtpSocket,
        params: MediaParams,
        recording: Option<Recording>,
        agent_leg: Option<(RtpSocket, MediaParams)>,
    },
    /// All three hear each other.
    Conference,
    /// The dispatcher takes the agent's place (the agent's leg is gone).
    Complete,
    /// The dispatcher's leg is gone: the agent talks with the caller again.
    EndConsult,
    Stop,
}

impl std::fmt::Debug for MediaCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            MediaCommand::Play(_) => "Play",
            MediaCommand::Clear => "Clear",
            MediaCommand::Background(_) => "Background",
            MediaCommand::Record(_) => "Record",
            MediaCommand::Bridge { .. } => "Bridge",
            MediaCommand::Unbridge => "Unbridge",
            MediaCommand::Hold(_) => "Hold",
            MediaCommand::Consult { .. } => "Consult",
            MediaCommand::Conference => "Conference",
            MediaCommand::Complete => "Complete",
            MediaCommand::EndConsult => "EndConsult",
            MediaCommand::Stop => "Stop",
        };
        f.write_str(name)
    }
}

/// The agent side of a bridge.
struct AgentSide {
    rtp: RtpSocket,
    params: MediaParams,
    latch: Latch,
    header: Header,
    /// What this leg sent, decoded, waiting for the next tick.
    heard: VecDeque<i16>,
}

impl AgentSide {
    fn new(rtp: RtpSocket, params: MediaParams) -> AgentSide {
        AgentSide {
            latch: Latch::new(params.remote),
            header: new_header(params.pt),
            params,
            rtp,
            heard: VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES),
        }
    }

    fn keep(&mut self, samples: &[i16]) {
        keep(&mut self.heard, samples);
    }

    fn take_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        take_frame(&mut self.heard)
    }
}

/// Buffers decoded audio for the next tick, keeping at most MAX_BUFFERED.
fn keep(q: &mut VecDeque<i16>, samples: &[i16]) {
    q.extend(samples);
    if q.len() > MAX_BUFFERED {
        let excess = q.len() - MAX_BUFFERED;
        q.drain(..excess);
    }
}

/// One tick's frame from a buffer; silence where it runs short.
/// Copied as the buffer's two slices: sample by sample through `drain` it
/// was 3.5 % of the media threads' time with 1,000 callers waiting.
fn take_frame(q: &mut VecDeque<i16>) -> [i16; FRAME_SAMPLES] {
    let mut f = [0i16; FRAME_SAMPLES];
    let n = q.len().min(FRAME_SAMPLES);
    let (front, back) = q.as_slices();
    let from_front = front.len().min(n);
    f[..from_front].copy_from_slice(&front[..from_front]);
    f[from_front..n].copy_from_slice(&back[..n - from_front]);
    q.drain(..n);
    f
}

fn mix(a: &[i16; FRAME_SAMPLES], b: &[i16; FRAME_SAMPLES]) -> [i16; FRAME_SAMPLES] {
    let mut out = [0i16; FRAME_SAMPLES];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x.saturating_add(*y);
    }
    out
}

/// What the caller hears now, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Prompts,
    Talk,
    Consult,
    Conference,
}

/// Sends one paced frame of audio on a leg, encoded in its law. A send
/// the kernel refuses (a full buffer) loses that packet, as UDP would.
fn send_frame(
    socket: &RtpSocket,
    to: Option<SocketAddr>,
    header: &mut Header,
    law: Law,
    samples: &[i16; FRAME_SAMPLES],
    buf: &mut [u8],
) -> bool {
    let hl = header.marshal_size();
    law.encode_into(samples, &mut buf[hl..hl + FRAME_SAMPLES]);
    let mut sent = false;
    if let Some(to) = to {
        if header.marshal_to(&mut buf[..hl]).is_ok() {
            match socket.socket.send_to(&buf[..hl + FRAME_SAMPLES], to) {
                Ok(_) => sent = true,
                Err(e) => debug!(error = %e, "rtp send failed"),
            }
        }
    }
    header.marker = false;
    header.sequence_number = header.sequence_number.wrapping_add(1);
    header.timestamp = header.timestamp.wrapping_add(FRAME_SAMPLES as u32);
    sent
}

/// Sends `samples` (decoded audio) or `raw` (already in `law`) as one RTP
/// packet with `header`, then advances the header.
#[allow(clippy::too_many_arguments)]
fn forward(
    socket: &RtpSocket,
    to: Option<SocketAddr>,
    header: &mut Header,
    law: Law,
    src_law: Law,
    raw: &[u8],
    samples: &[i16],
    buf: &mut [u8],
) {
    let hl = header.marshal_size();
    let n = raw.len().min(buf.len() - hl);
    if law == src_law {
        buf[hl..hl + n].copy_from_slice(&raw[..n]);
    } else {
        law.encode_into(&samples[..n], &mut buf[hl..hl + n]);
    }
    if let Some(to) = to {
        if header.marshal_to(&mut buf[..hl]).is_ok() {
            let _ = socket.socket.send_to(&buf[..hl + n], to);
        }
    }
    header.marker = false;
    header.sequence_number = header.sequence_number.wrapping_add(1);
    header.timestamp = header.timestamp.wrapping_add(n as u32);
}

fn new_header(pt: u8) -> Header {
    Header {
        version: 2,
        payload_type: pt,
        sequence_number: rand::random(),
        timestamp: rand::random(),
        ssrc: rand::random(),
        marker: true,
        ..Default::default()
    }
}

/// Reads one RTP packet's header and payload from `buf`.
fn parse(buf: &[u8]) -> Option<(Header, &[u8])> {
    let mut view = buf;
    let h = Header::unmarshal(&mut view).ok()?;
    if h.version != 2 {
        return None;
    }
    let mut payload = &buf[buf.len() - view.remaining()..];
    if h.padding {
        let pad = payload.last().copied().unwrap_or(0) as usize;
        payload = &payload[..payload.len().saturating_sub(pad)];
    }
    Some((h, payload))
}

/// Most packets one tick, or one wake-up of a leg, reads; the rest wait
/// for the next (a flood stays in the socket's queue, not on this thread).
pub const MAX_READ: usize = 32;

/// What the caller's packets tell the session.
struct CallerIn {
    /// Whose RTP is the caller's, and where theirs goes (symmetric).
    latch: Latch,
    /// The caller's audio, decoded, waiting for the next tick.
    heard: VecDeque<i16>,
    last_rx: Instant,
    timed_out: bool,
    /// Key presses sent as telephone-events...
    keys: EventKeys,
    /// ...and those found in the packet just read, for the session to tell.
    pressed: Option<char>,
}

impl CallerIn {
    /// One datagram from the caller: counted, latched onto, decoded into
    /// `heard` (and `decoded`). Returns its audio payload, to relay.
    fn packet<'a>(
        &mut self,
        datagram: &'a [u8],
        from: SocketAddr,
        params: &MediaParams,
        stats: &mut MediaStats,
        decoded: &mut [i16],
        now: Instant,
    ) -> Option<&'a [u8]> {
        let Some((h, payload)) = parse(datagram) else {
            stats.bad_packets += 1;
            return None;
        };
        if h.payload_type != params.pt && Some(h.payload_type) != params.dtmf_pt {
            stats.bad_packets += 1;
            return None;
        }
        if !self.latch.admit(from, h.ssrc, now) {
            stats.strangers += 1;
            return None;
        }
        if h.payload_type == params.pt {
            stats.packets_in += 1;
            self.last_rx = now;
            self.timed_out = false;
            let n = payload.len().min(decoded.len());
            params.law.decode_into(&payload[..n], &mut decoded[..n]);
            keep(&mut self.heard, &decoded[..n]);
            Some(&payload[..n])
        } else {
            stats.packets_in += 1;
            self.last_rx = now;
            self.pressed = self.keys.packet(h.timestamp, payload);
            None
        }
    }
}

pub enum MediaEvent {
    /// The queued segments finished playing.
    Drained,
    /// No RTP from the caller for `rtp_timeout`.
    RtpTimeout,
    /// A consultation ended (completed or not): its recording, to close.
    ConsultClosed(Option<Recording>),
    /// The caller pressed a key (a telephone-event, or a tone in the
    /// audio when their phone sends none).
    Key(char),
    /// The caller began speaking (true) or has been quiet a second.
    Voice(bool),
    /// Something came from the caller's line at last (see `listen`).
    Sound,
}

/// The call's recording, as the session feeds it.
pub enum CallRecording {
    /// None is made (a feature code's confirmation).
    Off,
    /// Its file is being created; frames are held until it is.
    Pending(Held),
    On(Recording),
}

/// What a finished session reports.
#[derive(Debug, Default, Clone)]
pub struct MediaStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bad_packets: u64,
    /// Packets from a source or stream that is not the leg's (`Latch`).
    pub strangers: u64,
}

/// What a session hands back when it stops.
pub struct Finished {
    pub stats: MediaStats,
    pub recording: Option<Recording>,
    /// What was held for a recording whose file did not exist yet.
    pub held: Option<Held>,
    /// A consultation's recording still open at the stop.
    pub consult: Option<Recording>,
}

/// Buffers for one read's work (a batch of datagrams, handled one after
/// the other), shared by every session one reactor thread drives.
pub struct Scratch {
    batch: Batch,
    out: [u8; 2048],
    decoded: [i16; 2048],
}

impl Scratch {
    pub fn new() -> Box<Scratch> {
        Box::new(Scratch {
            batch: Batch::new(),
            out: [0; 2048],
            decoded: [0; 2048],
        })
    }
}

/// A session's sockets, as the reactor names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Caller = 0,
    Agent = 1,
    Second = 2,
}

impl Leg {
    pub const ALL: [Leg; 3] = [Leg::Caller, Leg::Agent, Leg::Second];
}

/// One call's media: see the module's docs.
pub struct Session {
    rtp: RtpSocket,
    params: MediaParams,
    recording: CallRecording,
    commands: mpsc::UnboundedReceiver<MediaCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
    stats: MediaStats,
    player: Player,
    caller: CallerIn,
    header: Header,
    agent: Option<AgentSide>,
    /// The dispatcher of a warm transfer.
    second: Option<AgentSide>,
    /// The consultation's recording (agent left, dispatcher right).
    consult_rec: Option<Recording>,
    /// The agent's first leg while a consultation leg speaks for them.
    set_aside: Option<AgentSide>,
    conference: bool,
    held: bool,
    /// The caller's voice, and any sound at all (told once).
    vad: Vad,
    sound_told: bool,
    /// Key tones in the caller's audio.
    tones: ToneKeys,
}

impl Session {
    pub fn new(
        rtp: RtpSocket,
        params: MediaParams,
        recording: CallRecording,
        commands: mpsc::UnboundedReceiver<MediaCommand>,
        events: mpsc::UnboundedSender<MediaEvent>,
        now: Instant,
    ) -> Session {
        Session {
            caller: CallerIn {
                latch: Latch::new(params.remote),
                heard: VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES),
                last_rx: now,
                timed_out: false,
                keys: EventKeys::default(),
                pressed: None,
            },
            header: new_header(params.pt),
            rtp,
            params,
            recording,
            commands,
            events,
            stats: MediaStats::default(),
            player: Player::default(),
            agent: None,
            second: None,
            consult_rec: None,
            set_aside: None,
            conference: false,
            held: false,
            vad: Vad::default(),
            sound_told: false,
            tones: ToneKeys::default(),
        }
    }

    /// What the caller's frame says without words: speech starting or
    /// stopping, the first sound, a key's tone (unless their phone sends
    /// telephone-events, which would count each press twice).
    fn listen(&mut self, frame: &[i16; FRAME_SAMPLES]) {
        if let Some(h) = self.vad.frame(frame) {
            let _ = self
                .events
                .send(MediaEvent::Voice(h == super::listen::Heard::Speaking));
        }
        if !self.sound_told && self.vad.heard_sound() {
            self.sound_told = true;
            let _ = self.events.send(MediaEvent::Sound);
        }
        if !self.caller.keys.seen {
            if let Some(key) = self.tones.frame(frame) {
                let _ = self.events.send(MediaEvent::Key(key));
            }
        }
    }

    fn mode(&self) -> Mode {
        match (&self.agent, &self.second) {
            (None, _) => Mode::Prompts,
            (Some(_), None) if self.held => Mode::Prompts,
            (Some(_), None) => Mode::Talk,
            (Some(_), Some(_)) if self.conference => Mode::Conference,
            (Some(_), Some(_)) => Mode::Consult,
        }
    }

    /// The sockets whose packets must be handled as they arrive, by leg:
    /// the caller's in talk only, the agent's and the dispatcher's
    /// whenever they are there. The rest is read by the tick.
    pub fn relayed(&self) -> [Option<RawFd>; 3] {
        [
            (self.mode() == Mode::Talk).then(|| self.rtp.socket.as_raw_fd()),
            self.agent.as_ref().map(|a| a.rtp.socket.as_raw_fd()),
            self.second.as_ref().map(|b| b.rtp.socket.as_raw_fd()),
        ]
    }

    /// The next command the call sent, if any.
    pub fn next_command(&mut self) -> Result<MediaCommand, mpsc::error::TryRecvError> {
        self.commands.try_recv()
    }

    /// One 20 ms tick: one frame of what the caller sent and of what they
    /// heard to the recording; prompts (or the conference's mix) out.
    pub fn tick(&mut self, now: Instant, scratch: &mut Scratch) {
        let mode = self.mode();
        if mode != Mode::Talk {
            // Outside talk nobody is woken by the caller's packets: read
            // what queued since the last tick (a flood waits for the next).
            self.readable(Leg::Caller, now, scratch);
        }
        let remote = self.caller.latch.remote;
        let left = take_frame(&mut self.caller.heard);
        self.listen(&left);
        let mut right = [0i16; FRAME_SAMPLES];
        match mode {
            Mode::Talk => {
                // The agent's audio went out as it came; record it.
                if let Some(a) = self.agent.as_mut() {
                    right = a.take_frame();
                }
            }
            Mode::Conference => {
                if let (Some(a), Some(b)) = (self.agent.as_mut(), self.second.as_mut()) {
                    let fa = a.take_frame();
                    let fb = b.take_frame();
                    right = mix(&fa, &fb);
                    let law = self.params.law;
                    if send_frame(
                        &self.rtp,
                        remote,
                        &mut self.header,
                        law,
                        &right,
                        &mut scratch.out,
                    ) {
                        self.stats.packets_out += 1;
                    }
                    send_frame(
                        &a.rtp,
                        a.latch.remote,
                        &mut a.header,
                        a.params.law,
                        &mix(&left, &fb),
                        &mut scratch.out,
                    );
                    send_frame(
                        &b.rtp,
                        b.latch.remote,
                        &mut b.header,
                        b.params.law,
                        &mix(&left, &fa),
                        &mut scratch.out,
                    );
                    if let Some(rec) = &mut self.consult_rec {
                        rec.write(fa, fb, now);
                    }
                }
            }
            Mode::Prompts | Mode::Consult => {
                let busy_before = self.player.busy();
                let mut frame = [0i16; FRAME_SAMPLES];
                self.player.next_frame(&mut frame);
                let hl = self.header.marshal_size();
                if send_frame(
                    &self.rtp,
                    remote,
                    &mut self.header,
                    self.params.law,
                    &frame,
                    &mut scratch.out,
                ) {
                    self.stats.packets_out += 1;
                }
                // Record exactly what went on the wire.
                self.params
                    .law
                    .decode_into(&scratch.out[hl..hl + FRAME_SAMPLES], &mut right);
                // The frame that played the last queued audio just went out.
                if busy_before && !self.player.busy() {
                    let _ = self.events.send(MediaEvent::Drained);
                }
                if mode == Mode::Consult {
                    // Agent and dispatcher, as they were relayed.
                    if let (Some(a), Some(b)) = (self.agent.as_mut(), self.second.as_mut()) {
                        let (fa, fb) = (a.take_frame(), b.take_frame());
                        if let Some(rec) = &mut self.consult_rec {
                            rec.write(fa, fb, now);
                        }
                    }
                } else if let Some(a) = self.agent.as_mut() {
                    // On hold: what the agent says is not recorded as
                    // heard by the caller.
                    a.heard.clear();
                }
            }
        }
        match &mut self.recording {
            CallRecording::On(rec) => rec.write(left, right, now),
            CallRecording::Pending(held) => held.keep(left, right, now),
            CallRecording::Off => {}
        }

        if !self.caller.timed_out
            && now.duration_since(self.caller.last_rx) >= self.params.rtp_timeout
        {
            self.caller.timed_out = true;
            let _ = self.events.send(MediaEvent::RtpTimeout);
        }
    }

    /// Reads and handles what queued on one leg's socket, at most
    /// `MAX_READ` packets. Returns true when it stopped at that bound with
    /// more perhaps waiting.
    pub fn readable(&mut self, leg: Leg, now: Instant, scratch: &mut Scratch) -> bool {
        let mut read = 0;
        while read < MAX_READ {
            let socket = match leg {
                Leg::Caller => &self.rtp,
                Leg::Agent => match &self.agent {
                    Some(a) => &a.rtp,
                    None => return false,
                },
                Leg::Second => match &self.second {
                    Some(b) => &b.rtp,
                    None => return false,
                },
            };
            let n = match socket.recv_batch(&mut scratch.batch) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    debug!(error = %e, "rtp recv failed");
                    return false;
                }
            };
            for i in 0..n {
                match leg {
                    Leg::Caller => self.on_caller(i, now, scratch),
                    leg => self.on_agent_leg(leg, i, now, scratch),
                }
            }
            if n < BATCH {
                // The read stopped at an empty queue.
                return false;
            }
            read += n;
        }
        true
    }

    /// The caller's `i`th packet of the batch just read: kept, and in
    /// talk relayed to the agent at once.
    fn on_caller(&mut self, i: usize, now: Instant, scratch: &mut Scratch) {
        // Outside talk (the tick's reads, or a command changed the mode
        // since the wake-up) the packet is only counted and kept.
        let talk = self.mode() == Mode::Talk;
        let Scratch {
            batch,
            out,
            decoded,
        } = scratch;
        let (datagram, Some(from)) = batch.datagram(i) else {
            return;
        };
        let payload =
            self.caller
                .packet(datagram, from, &self.params, &mut self.stats, decoded, now);
        if let Some(key) = self.caller.pressed.take() {
            let _ = self.events.send(MediaEvent::Key(key));
        }
        let Some(payload) = payload else {
            return;
        };
        if !talk {
            return;
        }
        if let Some(a) = self.agent.as_mut() {
            let n = payload.len();
            forward(
                &a.rtp,
                a.latch.remote,
                &mut a.header,
                a.params.law,
                self.params.law,
                payload,
                &decoded[..n],
                out,
            );
        }
    }

    /// A packet on the agent's or the dispatcher's leg: relayed to the
    /// caller (the agent, in talk) or to the other of the two (consult),
    /// kept for the recording or the mix.
    fn on_agent_leg(&mut self, leg: Leg, i: usize, now: Instant, scratch: &mut Scratch) {
        let mode = self.mode();
        let (this, other) = match leg {
            Leg::Agent => (self.agent.as_mut(), self.second.as_mut()),
            Leg::Second | Leg::Caller => (self.second.as_mut(), self.agent.as_mut()),
        };
        let Some(this) = this else { return };
        let Scratch {
            batch,
            out,
            decoded,
        } = scratch;
        let (datagram, Some(from)) = batch.datagram(i) else {
            return;
        };
        let Some((h, payload)) = parse(datagram) else {
            self.stats.bad_packets += 1;
            return;
        };
        if h.payload_type != this.params.pt {
            return;
        }
        if !this.latch.admit(from, h.ssrc, now) {
            self.stats.strangers += 1;
            return;
        }
        let n = payload.len().min(decoded.len());
        this.params
            .law
            .decode_into(&payload[..n], &mut decoded[..n]);
        let (payload, decoded) = (&payload[..n], &decoded[..n]);
        match (mode, leg) {
            (Mode::Talk, Leg::Agent) => {
                this.keep(decoded);
                forward(
                    &self.rtp,
                    self.caller.latch.remote,
                    &mut self.header,
                    self.params.law,
                    this.params.law,
                    payload,
                    decoded,
                    out,
                );
                self.stats.packets_out += 1;
            }
            (Mode::Consult, _) => {
                this.keep(decoded);
                if let Some(o) = other {
                    forward(
                        &o.rtp,
                        o.latch.remote,
                        &mut o.header,
                        o.params.law,
                        this.params.law,
                        payload,
                        decoded,
                        out,
                    );
                }
            }
            (Mode::Conference, _) => this.keep(decoded),
            _ => {}
        }
    }

    /// Applies one command. Returns false for `Stop`.
    pub fn apply(&mut self, cmd: MediaCommand) -> bool {
        match cmd {
            MediaCommand::Play(segments) => self.player.enqueue(segments),
            MediaCommand::Clear => self.player.clear(),
            MediaCommand::Background(clip) => self.player.set_background(clip),
            MediaCommand::Record(recording) => {
                let before = std::mem::replace(&mut self.recording, CallRecording::Off);
                if let Some(mut rec) = recording {
                    if let CallRecording::Pending(held) = before {
                        held.write_to(&mut rec);
                    }
                    self.recording = CallRecording::On(rec);
                }
            }
            MediaCommand::Bridge { rtp, params } => {
                self.player.clear();
                self.held = false;
                self.header.marker = true;
                self.agent = Some(AgentSide::new(rtp, params));
            }
            MediaCommand::Unbridge => {
                self.agent = None;
                self.held = false;
            }
            MediaCommand::Hold(on) => {
                self.held = on;
                self.header.marker = true;
            }
            MediaCommand::Consult {
                rtp,
                params,
                recording,
                agent_leg,
            } => {
                if let Some((c_rtp, c_params)) = agent_leg {
                    self.set_aside = self.agent.replace(AgentSide::new(c_rtp, c_params));
                }
                if let Some(a) = self.agent.as_mut() {
                    a.heard.clear();
                    a.header.marker = true;
                }
                self.second = Some(AgentSide::new(rtp, params));
                self.consult_rec = recording;
                self.conference = false;
            }
            MediaCommand::Conference => {
                if self.second.is_some() {
                    self.conference = true;
                    self.player.clear();
                    self.header.marker = true;
                }
            }
            MediaCommand::Complete => {
                if let Some(b) = self.second.take() {
                    self.player.clear();
                    self.set_aside = None;
                    self.agent = Some(b);
                    self.held = false;
                    self.conference = false;
                    self.header.marker = true;
                    let _ = self
                        .events
                        .send(MediaEvent::ConsultClosed(self.consult_rec.take()));
                }
            }
            MediaCommand::EndConsult => {
                if self.second.take().is_some() {
                    if let Some(first) = self.set_aside.take() {
                        self.agent = Some(first);
                    }
                    self.player.clear();
                    self.held = false;
                    self.conference = false;
                    self.header.marker = true;
                    if let Some(a) = self.agent.as_mut() {
                        a.heard.clear();
                        a.header.marker = true;
                    }
                    let _ = self
                        .events
                        .send(MediaEvent::ConsultClosed(self.consult_rec.take()));
                }
            }
            MediaCommand::Stop => return false,
        }
        true
    }

    /// What the call gets back: the counts and the open recordings.
    pub fn finish(self) -> Finished {
        if self.stats.bad_packets > 0 {
            warn!(
                bad = self.stats.bad_packets,
                "ignored malformed or unexpected RTP packets"
            );
        }
        let (recording, held) = match self.recording {
            CallRecording::On(rec) => (Some(rec), None),
            CallRecording::Pending(held) => (None, Some(held)),
            CallRecording::Off => (None, None),
        };
        Finished {
            stats: self.stats,
            recording,
            held,
            consult: self.consult_rec,
        }
    }
}

impl MediaCommand {
    /// Whether applying it may drop, move or add a leg's socket, or change
    /// which sockets are relayed: the reactor takes its interest back
    /// first, so it never names a socket that is gone.
    pub fn moves_legs(&self) -> bool {
        !matches!(
            self,
            MediaCommand::Play(_)
                | MediaCommand::Clear
                | MediaCommand::Background(_)
                | MediaCommand::Record(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4961 symmetric RTP without hijack: the first source is latched
    /// (NAT), the SDP's address wins it back from a stranger who came
    /// first, no other source moves it, and a new stream from the latched
    /// source is taken only after the old one fell silent.
    #[test]
    fn a_leg_latches_once_and_only_the_sdp_address_moves_it() {
        let sdp: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let nat: SocketAddr = "192.0.2.7:61000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.66:5000".parse().unwrap();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);

        let mut l = Latch::new(Some(sdp));
        assert_eq!(l.remote, Some(sdp));
        assert!(l.admit(nat, 1, ms(0)), "the first source is latched");
        assert_eq!(l.remote, Some(nat));
        assert!(!l.admit(stranger, 1, ms(5)));
        assert!(!l.admit(stranger, 9, ms(400)));
        assert_eq!(l.remote, Some(nat));
        // Same source, another stream, while the first is live: refused;
        // once the first has been silent RESTART_AFTER, taken.
        assert!(l.admit(nat, 1, ms(20)));
        assert!(!l.admit(nat, 2, ms(40)));
        assert!(l.admit(nat, 1, ms(60)));
        assert!(l.admit(nat, 2, ms(60) + RESTART_AFTER));
        assert!(!l.admit(nat, 1, ms(60) + RESTART_AFTER));

        // A stranger who came first loses the leg to the SDP's address.
        let mut l = Latch::new(Some(sdp));
        assert!(l.admit(stranger, 7, ms(0)));
        assert!(l.admit(sdp, 1, ms(10)));
        assert_eq!(l.remote, Some(sdp));
        assert!(!l.admit(stranger, 7, ms(20)));
        assert!(!l.admit(stranger, 1, ms(1_000)));

        // No SDP address (late offer not yet answered): the first source.
        let mut l = Latch::new(None);
        assert_eq!(l.remote, None);
        assert!(l.admit(nat, 3, ms(0)));
        assert!(!l.admit(stranger, 3, ms(1)));
        assert_eq!(l.remote, Some(nat));
    }

    #[test]
    fn a_frame_is_taken_in_order_across_the_buffers_wrap_and_padded_with_silence() {
        // Wrap the ring: its samples sit in two slices.
        let mut q: VecDeque<i16> = VecDeque::with_capacity(256);
        q.extend(std::iter::repeat_n(-1, 200));
        while q.pop_front().is_some() {}
        q.extend(1..=250i16);
        assert!(
            !q.as_slices().1.is_empty(),
            "the test needs a wrapped buffer"
        );
        let f = take_frame(&mut q);
        let want: Vec<i16> = (1..=FRAME_SAMPLES as i16).collect();
        assert_eq!(f.as_slice(), want.as_slice());
        assert_eq!(q.len(), 250 - FRAME_SAMPLES);
        assert_eq!(q.front(), Some(&(FRAME_SAMPLES as i16 + 1)));
        // Less than a frame left: what there is, then silence.
        let f = take_frame(&mut q);
        let rest = 250 - FRAME_SAMPLES;
        assert_eq!(f[0], FRAME_SAMPLES as i16 + 1);
        assert_eq!(f[rest - 1], 250);
        assert!(f[rest..].iter().all(|&s| s == 0));
        assert!(q.is_empty());
        assert_eq!(take_frame(&mut q), [0; FRAME_SAMPLES]);
    }
}

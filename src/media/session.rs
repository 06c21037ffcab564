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
//! The caller's packets wake the session only when they are relayed as
//! they come (talk). Otherwise (prompts, consult, conference) they are
//! only recorded or mixed per tick, so the tick reads what queued on the
//! socket: one wake-up per 20 ms instead of two, for every waiting
//! caller.

use super::g711::Law;
use super::ports::RtpSocket;
use super::prompts::{Clip, Player, Segment};
use super::recorder::{Recording, FRAME_SAMPLES};
use bytes::Buf;
use rtc::rtp::Header;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

/// Most caller audio kept waiting for the next tick (200 ms): bounds
/// latency when the caller's clock runs faster than ours.
const MAX_BUFFERED: usize = FRAME_SAMPLES * 10;

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
    remote: Option<SocketAddr>,
    header: Header,
    /// What this leg sent, decoded, waiting for the next tick.
    heard: VecDeque<i16>,
}

impl AgentSide {
    fn new(rtp: RtpSocket, params: MediaParams) -> AgentSide {
        AgentSide {
            remote: params.remote,
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

/// Sends one paced frame of audio on a leg, encoded in its law.
async fn send_frame(
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
            sent = socket
                .socket
                .send_to(&buf[..hl + FRAME_SAMPLES], to)
                .await
                .is_ok();
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
async fn forward(
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
            let _ = socket.socket.send_to(&buf[..hl + n], to).await;
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

/// Most caller packets one tick reads; the rest wait for the next (a
/// flood stays in the socket's queue, not on this thread).
const MAX_READ_PER_TICK: usize = 32;

/// What the caller's packets tell the session.
struct CallerIn {
    /// Where the caller's RTP comes from, where theirs goes (symmetric).
    remote: Option<SocketAddr>,
    /// The caller's audio, decoded, waiting for the next tick.
    heard: VecDeque<i16>,
    last_rx: Instant,
    timed_out: bool,
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
    ) -> Option<&'a [u8]> {
        let Some((h, payload)) = parse(datagram) else {
            stats.bad_packets += 1;
            return None;
        };
        if h.payload_type == params.pt {
            stats.packets_in += 1;
            self.last_rx = Instant::now();
            self.timed_out = false;
            if self.remote != Some(from) {
                debug!(%from, "rtp latched to the caller's source");
                self.remote = Some(from);
            }
            let n = payload.len().min(decoded.len());
            params.law.decode_into(&payload[..n], &mut decoded[..n]);
            keep(&mut self.heard, &decoded[..n]);
            Some(&payload[..n])
        } else if Some(h.payload_type) == params.dtmf_pt {
            stats.packets_in += 1;
            self.last_rx = Instant::now();
            None
        } else {
            stats.bad_packets += 1;
            None
        }
    }
}

async fn recv_leg(
    agent: &Option<AgentSide>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match agent {
        Some(a) => a.rtp.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

pub enum MediaEvent {
    /// The queued segments finished playing.
    Drained,
    /// No RTP from the caller for `rtp_timeout`.
    RtpTimeout,
    /// A consultation ended (completed or not): its recording, to close.
    ConsultClosed(Option<Recording>),
}

/// What a finished session reports.
#[derive(Debug, Default, Clone)]
pub struct MediaStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bad_packets: u64,
}

/// What a session hands back when it stops.
pub struct Finished {
    pub stats: MediaStats,
    pub recording: Option<Recording>,
    /// A consultation's recording still open at the stop.
    pub consult: Option<Recording>,
}

pub async fn run(
    rtp: RtpSocket,
    params: MediaParams,
    recording: Option<Recording>,
    mut commands: mpsc::UnboundedReceiver<MediaCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> Finished {
    let mut stats = MediaStats::default();
    let mut player = Player::default();
    let mut caller = CallerIn {
        remote: params.remote,
        heard: VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES),
        last_rx: Instant::now(),
        timed_out: false,
    };
    let mut header = new_header(params.pt);
    let header_len = header.marshal_size();
    let mut out_buf = [0u8; 12 + FRAME_SAMPLES];
    let mut fwd_buf = vec![0u8; 2048];
    let mut in_buf = vec![0u8; 2048];
    let mut agent_buf = vec![0u8; 2048];
    let mut second_buf = vec![0u8; 2048];
    let mut decoded = [0i16; 2048];
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut agent: Option<AgentSide> = None;
    // The dispatcher of a warm transfer, and the consultation's recording.
    let mut second: Option<AgentSide> = None;
    let mut consult_rec: Option<Recording> = None;
    // The agent's first leg while a consultation leg speaks for them.
    let mut set_aside: Option<AgentSide> = None;
    let mut conference = false;
    let mut held = false;

    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);

    loop {
        let mode = match (&agent, &second) {
            (None, _) => Mode::Prompts,
            (Some(_), None) if held => Mode::Prompts,
            (Some(_), None) => Mode::Talk,
            (Some(_), Some(_)) if conference => Mode::Conference,
            (Some(_), Some(_)) => Mode::Consult,
        };
        tokio::select! {
            _ = tick.tick() => {
                if mode != Mode::Talk {
                    for _ in 0..MAX_READ_PER_TICK {
                        match rtp.socket.try_recv_from(&mut in_buf) {
                            Ok((len, from)) => {
                                caller.packet(&in_buf[..len], from, &params, &mut stats, &mut decoded);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                debug!(error = %e, "rtp recv failed");
                                break;
                            }
                        }
                    }
                }
                let remote = caller.remote;
                let left = take_frame(&mut caller.heard);
                let mut right = [0i16; FRAME_SAMPLES];
                match mode {
                    Mode::Talk => {
                        // The agent's audio went out as it came; record it.
                        if let Some(a) = agent.as_mut() {
                            right = a.take_frame();
                        }
                    }
                    Mode::Conference => {
                        if let (Some(a), Some(b)) = (agent.as_mut(), second.as_mut()) {
                            let fa = a.take_frame();
                            let fb = b.take_frame();
                            right = mix(&fa, &fb);
                            if send_frame(&rtp, remote, &mut header, params.law, &right, &mut fwd_buf).await {
                                stats.packets_out += 1;
                            }
                            send_frame(&a.rtp, a.remote, &mut a.header, a.params.law, &mix(&left, &fb), &mut fwd_buf).await;
                            send_frame(&b.rtp, b.remote, &mut b.header, b.params.law, &mix(&left, &fa), &mut fwd_buf).await;
                            if let Some(rec) = &consult_rec {
                                rec.write(fa, fb);
                            }
                        }
                    }
                    Mode::Prompts | Mode::Consult => {
                        let busy_before = player.busy();
                        player.next_frame(&mut frame);
                        {
                            let payload = &mut out_buf[header_len..header_len + FRAME_SAMPLES];
                            params.law.encode_into(&frame, payload);
                            // Record exactly what went on the wire.
                            params.law.decode_into(payload, &mut right);
                        }
                        if let Some(to) = remote {
                            if header.marshal_to(&mut out_buf[..header_len]).is_ok() {
                                match rtp.socket.send_to(&out_buf[..header_len + FRAME_SAMPLES], to).await {
                                    Ok(_) => stats.packets_out += 1,
                                    Err(e) => debug!(error = %e, "rtp send failed"),
                                }
                            }
                        }
                        header.marker = false;
                        header.sequence_number = header.sequence_number.wrapping_add(1);
                        header.timestamp = header.timestamp.wrapping_add(FRAME_SAMPLES as u32);
                        // The frame that played the last queued audio just went out.
                        if busy_before && !player.busy() {
                            let _ = events.send(MediaEvent::Drained);
                        }
                        if mode == Mode::Consult {
                            // Agent and dispatcher, as they were relayed.
                            if let (Some(a), Some(b)) = (agent.as_mut(), second.as_mut()) {
                                let (fa, fb) = (a.take_frame(), b.take_frame());
                                if let Some(rec) = &consult_rec {
                                    rec.write(fa, fb);
                                }
                            }
                        } else if let Some(a) = agent.as_mut() {
                            // On hold: what the agent says is not recorded as
                            // heard by the caller.
                            a.heard.clear();
                        }
                    }
                }
                if let Some(rec) = &recording {
                    rec.write(left, right);
                }

                if !caller.timed_out && caller.last_rx.elapsed() >= params.rtp_timeout {
                    caller.timed_out = true;
                    let _ = events.send(MediaEvent::RtpTimeout);
                }
            }
            // Only talk relays the caller's packets as they come; otherwise
            // the tick reads them.
            r = rtp.socket.recv_from(&mut in_buf), if mode == Mode::Talk => {
                let (len, from) = match r {
                    Ok(x) => x,
                    Err(e) => { debug!(error = %e, "rtp recv failed"); continue; }
                };
                let Some(payload) = caller.packet(&in_buf[..len], from, &params, &mut stats, &mut decoded) else {
                    continue;
                };
                if let Some(a) = agent.as_mut() {
                    let n = payload.len();
                    forward(&a.rtp, a.remote, &mut a.header, a.params.law, params.law, payload, &decoded[..n], &mut fwd_buf).await;
                }
            }
            r = recv_leg(&agent, &mut agent_buf) => {
                let Some(a) = agent.as_mut() else { continue };
                let Ok((len, from)) = r else { continue };
                let Some((h, payload)) = parse(&agent_buf[..len]) else {
                    stats.bad_packets += 1;
                    continue;
                };
                if h.payload_type != a.params.pt {
                    continue;
                }
                a.remote = Some(from);
                let n = payload.len().min(decoded.len());
                a.params.law.decode_into(&payload[..n], &mut decoded[..n]);
                match mode {
                    Mode::Talk => {
                        a.keep(&decoded[..n]);
                        forward(&rtp, caller.remote, &mut header, params.law, a.params.law, &payload[..n], &decoded[..n], &mut fwd_buf).await;
                        stats.packets_out += 1;
                    }
                    Mode::Consult => {
                        a.keep(&decoded[..n]);
                        if let Some(b) = second.as_mut() {
                            forward(&b.rtp, b.remote, &mut b.header, b.params.law, a.params.law, &payload[..n], &decoded[..n], &mut fwd_buf).await;
                        }
                    }
                    Mode::Conference => a.keep(&decoded[..n]),
                    Mode::Prompts => {}
                }
            }
            r = recv_leg(&second, &mut second_buf) => {
                let Some(b) = second.as_mut() else { continue };
                let Ok((len, from)) = r else { continue };
                let Some((h, payload)) = parse(&second_buf[..len]) else {
                    stats.bad_packets += 1;
                    continue;
                };
                if h.payload_type != b.params.pt {
                    continue;
                }
                b.remote = Some(from);
                let n = payload.len().min(decoded.len());
                b.params.law.decode_into(&payload[..n], &mut decoded[..n]);
                match mode {
                    Mode::Consult => {
                        b.keep(&decoded[..n]);
                        if let Some(a) = agent.as_mut() {
                            forward(&a.rtp, a.remote, &mut a.header, a.params.law, b.params.law, &payload[..n], &decoded[..n], &mut fwd_buf).await;
                        }
                    }
                    Mode::Conference => b.keep(&decoded[..n]),
                    Mode::Prompts | Mode::Talk => {}
                }
            }
            cmd = commands.recv() => match cmd {
                Some(MediaCommand::Play(segments)) => player.enqueue(segments),
                Some(MediaCommand::Clear) => player.clear(),
                Some(MediaCommand::Background(clip)) => player.set_background(clip),
                Some(MediaCommand::Bridge { rtp: agent_rtp, params: agent_params }) => {
                    player.clear();
                    held = false;
                    header.marker = true;
                    agent = Some(AgentSide::new(agent_rtp, agent_params));
                }
                Some(MediaCommand::Unbridge) => {
                    agent = None;
                    held = false;
                }
                Some(MediaCommand::Hold(on)) => {
                    held = on;
                    header.marker = true;
                }
                Some(MediaCommand::Consult { rtp: b_rtp, params: b_params, recording: rec, agent_leg }) => {
                    if let Some((c_rtp, c_params)) = agent_leg {
                        set_aside = agent.replace(AgentSide::new(c_rtp, c_params));
                    }
                    if let Some(a) = agent.as_mut() {
                        a.heard.clear();
                        a.header.marker = true;
                    }
                    second = Some(AgentSide::new(b_rtp, b_params));
                    consult_rec = rec;
                    conference = false;
                }
                Some(MediaCommand::Conference) => {
                    if second.is_some() {
                        conference = true;
                        player.clear();
                        header.marker = true;
                    }
                }
                Some(MediaCommand::Complete) => {
                    if let Some(b) = second.take() {
                        player.clear();
                        set_aside = None;
                        agent = Some(b);
                        held = false;
                        conference = false;
                        header.marker = true;
                        let _ = events.send(MediaEvent::ConsultClosed(consult_rec.take()));
                    }
                }
                Some(MediaCommand::EndConsult) => {
                    if second.take().is_some() {
                        if let Some(first) = set_aside.take() {
                            agent = Some(first);
                        }
                        player.clear();
                        held = false;
                        conference = false;
                        header.marker = true;
                        if let Some(a) = agent.as_mut() {
                            a.heard.clear();
                            a.header.marker = true;
                        }
                        let _ = events.send(MediaEvent::ConsultClosed(consult_rec.take()));
                    }
                }
                Some(MediaCommand::Stop) | None => break,
            }
        }
    }
    if stats.bad_packets > 0 {
        warn!(
            bad = stats.bad_packets,
            "ignored malformed or unexpected RTP packets"
        );
    }
    Finished {
        stats,
        recording,
        consult: consult_rec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

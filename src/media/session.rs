//! One call leg's media: symmetric RTP on a pooled port, paced every 20 ms.
//!
//! Each tick sends one frame of what the player (prompts, hold music) has,
//! takes one frame of what the caller sent, and hands both to the recorder
//! as a time-aligned stereo frame. Per packet nothing is allocated but the
//! recorder frame, and nothing waits on the disk or the database.

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
    heard: VecDeque<i16>,
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

async fn recv_agent(
    agent: &Option<AgentSide>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match agent {
        Some(a) => a.rtp.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The queued segments finished playing.
    Drained,
    /// No RTP from the caller for `rtp_timeout`.
    RtpTimeout,
}

/// What a finished session reports.
#[derive(Debug, Default, Clone)]
pub struct MediaStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bad_packets: u64,
}

pub async fn run(
    rtp: RtpSocket,
    params: MediaParams,
    recording: Option<Recording>,
    mut commands: mpsc::UnboundedReceiver<MediaCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> (MediaStats, Option<Recording>) {
    let mut stats = MediaStats::default();
    let mut player = Player::default();
    let mut remote = params.remote;
    let mut heard: VecDeque<i16> = VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES);
    let mut header = new_header(params.pt);
    let header_len = header.marshal_size();
    let mut out_buf = [0u8; 12 + FRAME_SAMPLES];
    let mut fwd_buf = vec![0u8; 2048];
    let mut in_buf = vec![0u8; 2048];
    let mut agent_buf = vec![0u8; 2048];
    let mut decoded = [0i16; 2048];
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut last_rx = Instant::now();
    let mut timed_out = false;
    let mut agent: Option<AgentSide> = None;
    let mut held = false;

    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);

    loop {
        let relaying = agent.is_some() && !held;
        tokio::select! {
            _ = tick.tick() => {
                let mut right = [0i16; FRAME_SAMPLES];
                if relaying {
                    // The agent's audio went out as it came; record it.
                    if let Some(a) = agent.as_mut() {
                        let n = a.heard.len().min(FRAME_SAMPLES);
                        for (dst, src) in right.iter_mut().zip(a.heard.drain(..n)) {
                            *dst = src;
                        }
                    }
                } else {
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
                    if let Some(a) = agent.as_mut() {
                        // On hold: what the agent says is not recorded as
                        // heard by the caller.
                        a.heard.clear();
                    }
                }
                let n = heard.len().min(FRAME_SAMPLES);
                if let Some(rec) = &recording {
                    let mut f = Box::new(([0i16; FRAME_SAMPLES], right));
                    for (dst, src) in f.0.iter_mut().zip(heard.drain(..n)) {
                        *dst = src;
                    }
                    rec.write(f);
                } else {
                    heard.drain(..n);
                }

                if !timed_out && last_rx.elapsed() >= params.rtp_timeout {
                    timed_out = true;
                    let _ = events.send(MediaEvent::RtpTimeout);
                }
            }
            r = rtp.socket.recv_from(&mut in_buf) => {
                let (len, from) = match r {
                    Ok(x) => x,
                    Err(e) => { debug!(error = %e, "rtp recv failed"); continue; }
                };
                let Some((h, payload)) = parse(&in_buf[..len]) else {
                    stats.bad_packets += 1;
                    continue;
                };
                if h.payload_type == params.pt {
                    stats.packets_in += 1;
                    last_rx = Instant::now();
                    timed_out = false;
                    if remote != Some(from) {
                        debug!(%from, "rtp latched to the caller's source");
                        remote = Some(from);
                    }
                    let n = payload.len().min(decoded.len());
                    params.law.decode_into(&payload[..n], &mut decoded[..n]);
                    heard.extend(&decoded[..n]);
                    if heard.len() > MAX_BUFFERED {
                        let excess = heard.len() - MAX_BUFFERED;
                        heard.drain(..excess);
                    }
                    if relaying {
                        if let Some(a) = agent.as_mut() {
                            forward(&a.rtp, a.remote, &mut a.header, a.params.law, params.law, &payload[..n], &decoded[..n], &mut fwd_buf).await;
                        }
                    }
                } else if Some(h.payload_type) == params.dtmf_pt {
                    stats.packets_in += 1;
                    last_rx = Instant::now();
                } else {
                    stats.bad_packets += 1;
                }
            }
            r = recv_agent(&agent, &mut agent_buf) => {
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
                if relaying {
                    a.heard.extend(&decoded[..n]);
                    if a.heard.len() > MAX_BUFFERED {
                        let excess = a.heard.len() - MAX_BUFFERED;
                        a.heard.drain(..excess);
                    }
                    forward(&rtp, remote, &mut header, params.law, a.params.law, &payload[..n], &decoded[..n], &mut fwd_buf).await;
                    stats.packets_out += 1;
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
                    agent = Some(AgentSide {
                        remote: agent_params.remote,
                        header: new_header(agent_params.pt),
                        params: agent_params,
                        rtp: agent_rtp,
                        heard: VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES),
                    });
                }
                Some(MediaCommand::Unbridge) => {
                    agent = None;
                    held = false;
                }
                Some(MediaCommand::Hold(on)) => {
                    held = on;
                    header.marker = true;
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
    (stats, recording)
}

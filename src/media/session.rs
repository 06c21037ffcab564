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

#[derive(Debug)]
pub enum MediaCommand {
    /// Queue segments after what is already queued.
    Play(Vec<Segment>),
    /// Drop what is queued (the background keeps playing).
    Clear,
    Background(Option<Clip>),
    Stop,
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
    let mut latched = false;
    let mut heard: VecDeque<i16> = VecDeque::with_capacity(MAX_BUFFERED + FRAME_SAMPLES);
    let mut header = Header {
        version: 2,
        payload_type: params.pt,
        sequence_number: rand::random(),
        timestamp: rand::random(),
        ssrc: rand::random(),
        marker: true,
        ..Default::default()
    };
    let header_len = header.marshal_size();
    let mut out_buf = [0u8; 12 + FRAME_SAMPLES];
    let mut in_buf = vec![0u8; 2048];
    let mut decoded = [0i16; 2048];
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut last_rx = Instant::now();
    let mut timed_out = false;

    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let busy_before = player.busy();
                player.next_frame(&mut frame);
                let mut sent = [0i16; FRAME_SAMPLES];
                {
                    let payload = &mut out_buf[header_len..header_len + FRAME_SAMPLES];
                    params.law.encode_into(&frame, payload);
                    // Record exactly what went on the wire.
                    params.law.decode_into(payload, &mut sent);
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

                if let Some(rec) = &recording {
                    let mut f = Box::new(([0i16; FRAME_SAMPLES], sent));
                    let n = heard.len().min(FRAME_SAMPLES);
                    for (dst, src) in f.0.iter_mut().zip(heard.drain(..n)) {
                        *dst = src;
                    }
                    rec.write(f);
                } else {
                    let n = heard.len().min(FRAME_SAMPLES);
                    heard.drain(..n);
                }

                // The frame that played the last queued audio just went out.
                if busy_before && !player.busy() {
                    let _ = events.send(MediaEvent::Drained);
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
                let mut view = &in_buf[..len];
                let Ok(h) = Header::unmarshal(&mut view) else {
                    stats.bad_packets += 1;
                    continue;
                };
                if h.version != 2 {
                    stats.bad_packets += 1;
                    continue;
                }
                let mut payload = view.chunk();
                if h.padding {
                    let pad = payload.last().copied().unwrap_or(0) as usize;
                    payload = &payload[..payload.len().saturating_sub(pad)];
                }
                if h.payload_type == params.pt {
                    stats.packets_in += 1;
                    last_rx = Instant::now();
                    timed_out = false;
                    if !latched || remote != Some(from) {
                        if remote != Some(from) {
                            debug!(%from, "rtp latched to caller's source");
                        }
                        remote = Some(from);
                        latched = true;
                    }
                    let n = payload.len().min(decoded.len());
                    params.law.decode_into(&payload[..n], &mut decoded[..n]);
                    heard.extend(&decoded[..n]);
                    if heard.len() > MAX_BUFFERED {
                        let excess = heard.len() - MAX_BUFFERED;
                        heard.drain(..excess);
                    }
                } else if Some(h.payload_type) == params.dtmf_pt {
                    stats.packets_in += 1;
                    last_rx = Instant::now();
                } else {
                    stats.bad_packets += 1;
                }
            }
            cmd = commands.recv() => match cmd {
                Some(MediaCommand::Play(segments)) => player.enqueue(segments),
                Some(MediaCommand::Clear) => player.clear(),
                Some(MediaCommand::Background(clip)) => player.set_background(clip),
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

//! One browser call leg: WebRTC to the browser, plain RTP to the call.
//!
//! We make the offer (the caller's G.711 law alone, and telephone-event),
//! gather our ICE candidates into it, and send it to the tab. When the
//! browser's answer has come and ICE and DTLS are up, the call is told
//! `Answered` with a plain SDP answer that points its media session at the
//! gateway's own pooled RTP socket. From then on two tasks relay: what the
//! session sends goes to the browser's track, what the browser's track
//! brings goes to the session, each packet as it arrives, payload as it
//! is, payload type mapped between the two negotiations.

use super::{FromTab, Phones, Ring, Settings};
use crate::leg::{AgentFailure, AgentLegEvent, Responder};
use crate::media::ports::RtpSocket;
use crate::media::sdp::{self, Direction, LocalAudio, Negotiated};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::shared::marshal::{Marshal, Unmarshal};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription, Registry,
};

/// The payload type of telephone-event we offer when the call offered none.
const DTMF_PT: u8 = 101;
/// How long gathering our own candidates may take before we offer what we
/// have (host candidates come at once; STUN may be slow or unreachable).
const GATHER_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long closing a connection may take.
const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct Gateway {
    pub phones: Phones,
    pub agent: String,
    pub leg: u64,
    pub settings: Settings,
    pub to_tab: mpsc::UnboundedSender<Value>,
    pub from_tab: mpsc::UnboundedReceiver<FromTab>,
    /// What the call's offer negotiates: the law, its payload types.
    pub offer: Negotiated,
    pub ring: Ring,
}

/// The call's view of a browser leg: the same events as a SIP leg.
pub struct BrowserLeg {
    events: mpsc::UnboundedReceiver<AgentLegEvent>,
    end: mpsc::UnboundedSender<()>,
    answered: bool,
    phones: Phones,
    agent: String,
    leg: u64,
}

impl BrowserLeg {
    pub async fn next_event(&mut self) -> AgentLegEvent {
        match self.events.recv().await {
            Some(ev) => {
                if matches!(ev, AgentLegEvent::Answered { .. }) {
                    self.answered = true;
                }
                ev
            }
            // The gateway stopped without a word: treat it as lost.
            None if self.answered => AgentLegEvent::Lost,
            None => AgentLegEvent::Failed(AgentFailure::Unreachable),
        }
    }

    /// Stops ringing or hangs up: the tab is told, the connection closed.
    pub fn end(&self) {
        let _ = self.end.send(());
    }
}

impl Drop for BrowserLeg {
    fn drop(&mut self) {
        let _ = self.end.send(());
        self.phones.forget(&self.agent, self.leg);
    }
}

pub(super) fn start(g: Gateway) -> BrowserLeg {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = mpsc::unbounded_channel();
    let leg = BrowserLeg {
        events,
        end: end_tx,
        answered: false,
        phones: g.phones.clone(),
        agent: g.agent.clone(),
        leg: g.leg,
    };
    // The connection's driver and the relay run where all media runs.
    crate::media::runtime::spawn(run(g, events_tx, end_rx));
    leg
}

struct Handler {
    gathered: mpsc::UnboundedSender<()>,
    states: mpsc::UnboundedSender<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.states.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
}

fn mime(law: crate::media::g711::Law) -> &'static str {
    match law {
        crate::media::g711::Law::Alaw => "audio/PCMA",
        crate::media::g711::Law::Ulaw => "audio/PCMU",
    }
}

fn codec(mime: &str, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_string(),
        clock_rate: 8000,
        channels: 1,
        sdp_fmtp_line: fmtp.to_string(),
        rtcp_feedback: vec![],
    }
}

/// The peer connection with our offer set, and the track we send on.
struct Built {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    states: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    /// Taken by the relay once connected.
    tracks: Option<mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>>,
    offer: String,
}

async fn build(settings: &Settings, offer: &Negotiated) -> webrtc::error::Result<Built> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(mime(offer.law), ""),
            payload_type: offer.pt,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec("audio/telephone-event", "0-16"),
            payload_type: offer.dtmf_pt.unwrap_or(DTMF_PT),
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    let mut config = RTCConfigurationBuilder::new();
    if !settings.ice_servers.is_empty() {
        config = config.with_ice_servers(vec![RTCIceServer {
            urls: settings.ice_servers.clone(),
            ..Default::default()
        }]);
    }
    let (gathered_tx, mut gathered) = mpsc::unbounded_channel();
    let (states_tx, states) = mpsc::unbounded_channel();
    let (tracks_tx, tracks) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config.build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler {
            gathered: gathered_tx,
            states: states_tx,
            tracks: tracks_tx,
        }))
        .with_udp_addrs(vec![SocketAddr::new(settings.ice_ip, 0)])
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let ssrc: u32 = rand::random();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "siaga".to_string(),
        "siaga-caller".to_string(),
        "caller".to_string(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec(mime(offer.law), ""),
            ..Default::default()
        }],
    )));
    pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await?;
    let desc = pc.create_offer(None).await?;
    pc.set_local_description(desc).await?;
    let _ = tokio::time::timeout(GATHER_LIMIT, gathered.recv()).await;
    let offer = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    Ok(Built {
        pc,
        track,
        ssrc,
        states,
        tracks: Some(tracks),
        offer,
    })
}

/// Payload types of one side mapped onto the other's.
#[derive(Debug, Clone, Copy)]
struct PtMap {
    from_audio: u8,
    to_audio: u8,
    from_dtmf: Option<u8>,
    to_dtmf: Option<u8>,
}

impl PtMap {
    /// From what one side negotiated onto what the other did.
    fn between(from: &Negotiated, to: &Negotiated) -> PtMap {
        PtMap {
            from_audio: from.pt,
            to_audio: to.pt,
            from_dtmf: from.dtmf_pt,
            to_dtmf: to.dtmf_pt,
        }
    }

    fn map(&self, pt: u8) -> Option<u8> {
        if pt == self.from_audio {
            Some(self.to_audio)
        } else if Some(pt) == self.from_dtmf {
            self.to_dtmf
        } else {
            None
        }
    }
}

/// How a leg ends, and what the tab is told (nothing, if it ended it).
type Outcome = (AgentLegEvent, Option<&'static str>);

/// The call ended the leg (or let go of it).
fn called_off(answered: bool) -> Outcome {
    let reason = if answered { "hangup" } else { "not_answered" };
    (AgentLegEvent::Ended, Some(reason))
}

/// The tab hung up, or declined while it rang.
fn tab_ended(answered: bool) -> Outcome {
    if answered {
        (AgentLegEvent::Ended, None)
    } else {
        (AgentLegEvent::Failed(AgentFailure::Declined), None)
    }
}

/// Nobody hung up, but the browser is gone: lost mid-call, unreachable
/// before.
fn lost(answered: bool, reason: &'static str) -> Outcome {
    if answered {
        (AgentLegEvent::Lost, Some(reason))
    } else {
        (
            AgentLegEvent::Failed(AgentFailure::Unreachable),
            Some(reason),
        )
    }
}

/// The gateway's plain RTP side: its pooled port, held for the lease, and
/// the same socket registered with the runtime the gateway runs on (pooled
/// sockets belong to no runtime; see `media::ports`).
struct Plain {
    socket: tokio::net::UdpSocket,
    _port: RtpSocket,
}

impl Plain {
    fn new(port: RtpSocket) -> std::io::Result<Plain> {
        let socket = tokio::net::UdpSocket::from_std(port.socket.try_clone()?)?;
        Ok(Plain {
            socket,
            _port: port,
        })
    }
}

async fn run(
    g: Gateway,
    events: mpsc::UnboundedSender<AgentLegEvent>,
    mut end: mpsc::UnboundedReceiver<()>,
) {
    let Gateway {
        leg,
        settings,
        to_tab,
        mut from_tab,
        offer,
        ring,
        agent,
        ..
    } = g;
    let ended = |reason: &str| {
        let _ = to_tab.send(json!({ "type": "ended", "leg": leg, "reason": reason }));
    };
    let plain = match Plain::new(ring.socket) {
        Ok(p) => p,
        Err(e) => {
            warn!(%agent, error = %e, "browser phone: its RTP socket could not be used");
            ended("error");
            let _ = events.send(AgentLegEvent::Failed(AgentFailure::Unreachable));
            return;
        }
    };
    let mut built = match build(&settings, &offer).await {
        Ok(b) => b,
        Err(e) => {
            warn!(%agent, error = %e, "browser phone: the WebRTC connection could not be set up");
            ended("error");
            let _ = events.send(AgentLegEvent::Failed(AgentFailure::Unreachable));
            return;
        }
    };
    let _ = to_tab.send(json!({
        "type": "incoming",
        "leg": leg,
        "sdp": built.offer,
        "caller_number": ring.caller_number,
        "incident_id": ring.incident_id,
        "service": ring.service,
        "location": ring.location,
        "waited_ms": ring.waited_ms,
        "silent_emergency": ring.silent_emergency,
        "pranks": ring.pranks,
        // The browser needs the same STUN/TURN servers to reach us.
        "ice_servers": settings.ice_servers,
    }));
    let _ = events.send(AgentLegEvent::Ringing);

    let socket = Arc::new(plain);
    // Our plain side as the call's session sees it: one SDP session, its
    // version raised by each re-offer (the hold button).
    let mut local = socket
        .socket
        .local_addr()
        .ok()
        .map(|a| LocalAudio::new(super::reachable_here(a.ip()), a.port()));
    // Set once the browser's answer is in: what it negotiated, and by when
    // ICE and DTLS must be up.
    let mut browser: Option<(Negotiated, Instant)> = None;
    let mut relays: Vec<JoinHandle<()>> = Vec::new();
    let mut plain: Option<Negotiated> = None;
    let (outcome, tell): Outcome = loop {
        let connect_by = async {
            match browser.as_ref() {
                Some((_, by)) if plain.is_none() => tokio::time::sleep_until(*by).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // The call's word first: it may have ended the leg and let go
            // of it (which also closes `from_tab`) in one go.
            biased;
            _ = end.recv() => {
                break called_off(plain.is_some());
            }
            msg = from_tab.recv() => match msg {
                // The call let go of the leg: as if it had ended it.
                None => break called_off(plain.is_some()),
                Some(msg) => match msg {
                FromTab::Answer(answer) if browser.is_none() => {
                    let n = sdp::parse(answer.as_bytes()).and_then(|r| sdp::negotiate(&r));
                    let n = match n {
                        Ok(n) if n.law == offer.law => n,
                        _ => {
                            warn!(%agent, "browser phone: the answer has not the law we offered");
                            break (AgentLegEvent::Failed(AgentFailure::Unreachable), Some("bad_answer"));
                        }
                    };
                    let desc = match RTCSessionDescription::answer(answer) {
                        Ok(d) => d,
                        Err(e) => {
                            warn!(%agent, error = %e, "browser phone: unreadable answer");
                            break (AgentLegEvent::Failed(AgentFailure::Unreachable), Some("bad_answer"));
                        }
                    };
                    if let Err(e) = built.pc.set_remote_description(desc).await {
                        warn!(%agent, error = %e, "browser phone: answer refused");
                        break (AgentLegEvent::Failed(AgentFailure::Unreachable), Some("bad_answer"));
                    }
                    debug!(%agent, leg, "browser answered; connecting");
                    browser = Some((n, Instant::now() + settings.connect_timeout));
                }
                FromTab::Answer(_) => {}
                FromTab::Decline(why) => {
                    info!(%agent, reason = %why, "browser phone: call not taken");
                    break tab_ended(plain.is_some());
                }
                FromTab::Hangup => break tab_ended(plain.is_some()),
                FromTab::Hold(on) => {
                    if let (Some(p), Some(here)) = (plain.as_ref(), local.as_mut()) {
                        // The hold button works like a phone's re-INVITE.
                        let dir = if on { Direction::SendOnly } else { Direction::SendRecv };
                        here.version += 1;
                        let reoffer = sdp::answer(here, p, dir);
                        let _ = events.send(AgentLegEvent::ReOffer {
                            sdp: Some(reoffer.into_bytes()),
                            responder: Responder::internal(),
                        });
                    }
                }
                FromTab::Gone => {
                    // Closed, reloaded, or its phone taken by another tab
                    // (which the old tab hears of, if it is still there).
                    info!(%agent, leg, "browser phone: the tab is gone");
                    break lost(plain.is_some(), "gone");
                }
                },
            },
            state = built.states.recv() => match state {
                Some(RTCPeerConnectionState::Connected) if plain.is_none() => {
                    let Some((n, _)) = browser.as_ref() else { continue };
                    let Some(here) = local.as_ref() else {
                        break (AgentLegEvent::Failed(AgentFailure::Unreachable), Some("error"));
                    };
                    // The call hears from us the law both sides share,
                    // with the call's own payload types.
                    let p = Negotiated {
                        law: offer.law,
                        pt: offer.pt,
                        dtmf_pt: n.dtmf_pt.and(offer.dtmf_pt),
                    };
                    relays = relay(&mut built, &socket, ring.call_side, &p, n);
                    let answer = sdp::answer(here, &p, Direction::SendRecv);
                    info!(%agent, leg, "browser phone connected (ICE, DTLS-SRTP)");
                    plain = Some(p);
                    let _ = events.send(AgentLegEvent::Answered { sdp: answer.into_bytes() });
                }
                Some(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) | None => {
                    warn!(%agent, leg, "browser phone: the connection failed");
                    break lost(plain.is_some(), "media_failed");
                }
                Some(_) => {}
            },
            _ = connect_by => {
                warn!(%agent, leg, "browser phone: ICE/DTLS did not come up in time");
                break (AgentLegEvent::Failed(AgentFailure::Unreachable), Some("media_failed"));
            }
        }
    };
    if let Some(reason) = tell {
        ended(reason);
    }
    for r in &relays {
        r.abort();
    }
    let _ = events.send(outcome);
    // Bounded: a connection whose driver is stuck must not keep this task,
    // and with it the pooled RTP port, forever.
    match tokio::time::timeout(CLOSE_LIMIT, built.pc.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "closing the browser connection"),
        Err(_) => {
            warn!(%agent, leg, "browser phone: the connection did not close in time; dropped")
        }
    }
}

/// Starts both directions of the relay.
fn relay(
    built: &mut Built,
    socket: &Arc<Plain>,
    call_side: SocketAddr,
    plain: &Negotiated,
    browser: &Negotiated,
) -> Vec<JoinHandle<()>> {
    let down = PtMap::between(plain, browser);
    let up = PtMap::between(browser, plain);
    let mut tasks = Vec::with_capacity(2);
    // The call's session → the browser.
    {
        let socket = Arc::clone(socket);
        let track = Arc::clone(&built.track);
        let ssrc = built.ssrc;
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.socket.recv_from(&mut buf).await else {
                    return;
                };
                if from != call_side {
                    continue;
                }
                let Ok(mut pkt) = rtp::Packet::unmarshal(&mut &buf[..n]) else {
                    continue;
                };
                let Some(pt) = down.map(pkt.header.payload_type) else {
                    continue;
                };
                pkt.header.payload_type = pt;
                pkt.header.ssrc = ssrc;
                if track.write_rtp(pkt).await.is_err() {
                    return;
                }
            }
        }));
    }
    // The browser → the call's session: its track, whether it came
    // before the connection did or comes later.
    if let Some(mut tracks) = built.tracks.take() {
        let socket = Arc::clone(socket);
        tasks.push(tokio::spawn(async move {
            while let Some(track) = tracks.recv().await {
                if track.kind().await == RtpCodecKind::Audio {
                    uplink(track, socket, call_side, up).await;
                    return;
                }
            }
        }));
    }
    tasks
}

/// Sends the browser's packets to the call, payload types mapped.
async fn uplink(track: Arc<dyn TrackRemote>, socket: Arc<Plain>, call_side: SocketAddr, up: PtMap) {
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(mut pkt) = ev else {
            if matches!(ev, TrackRemoteEvent::OnEnded) {
                return;
            }
            continue;
        };
        // Browsers probe bandwidth with padding-only packets: nothing
        // for a telephone.
        if pkt.payload.is_empty() {
            continue;
        }
        let Some(pt) = up.map(pkt.header.payload_type) else {
            continue;
        };
        pkt.header.payload_type = pt;
        pkt.header.padding = false;
        let Ok(bytes) = pkt.marshal() else { continue };
        let _ = socket.socket.send_to(&bytes, call_side).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_types_map_audio_and_dtmf_and_drop_the_rest() {
        let m = PtMap {
            from_audio: 8,
            to_audio: 8,
            from_dtmf: Some(101),
            to_dtmf: Some(126),
        };
        assert_eq!(m.map(8), Some(8));
        assert_eq!(m.map(101), Some(126));
        assert_eq!(m.map(0), None, "a law nobody negotiated");
        assert_eq!(m.map(13), None, "comfort noise");
        let no_dtmf = PtMap { to_dtmf: None, ..m };
        assert_eq!(no_dtmf.map(101), None, "DTMF the other side cannot take");
    }
}

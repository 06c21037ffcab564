//! One task per call: answer, greet, queue with position prompts, record,
//! and close the record whatever happened.
//!
//! The call never waits on the database (records go to the store writer)
//! and never drops the caller for load: past a queue's maximum wait it
//! overflows to the next queue and keeps waiting, recorded.

mod callback;
mod feature;
pub mod paths;

pub use callback::Callbacks;

use crate::acd::runtime::{AcdHandle, AcdNotice};
use crate::acd::OfferFailure;
use crate::config::Config;
use crate::ids::{CallId, IncidentId};
use crate::live::{BridgedCall, Live, LiveEvent};
use crate::media::g711::Law;
use crate::media::ports::PortPool;
use crate::media::ports::RtpSocket;
use crate::media::prompts::{Prompts, Segment};
use crate::media::recorder::{sha256_file, Recorder};
use crate::media::sdp::{self, LocalAudio, Negotiated};
use crate::media::session::{self, MediaCommand, MediaEvent, MediaParams};
use crate::sip::request::Location;
use crate::sip::{
    AgentFailure, AgentLeg, AgentLegEvent, CallKind, IncomingCall, LegEnd, LegEvent, SipHandle,
};
use crate::store::{now_ms, NewCall, NewIncident, StoreCmd, StoreWriter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

/// What every call shares.
pub struct Services {
    pub config: Arc<Config>,
    pub prompts: Prompts,
    pub ports: PortPool,
    pub recorder: Recorder,
    pub store: StoreWriter,
    pub acd: AcdHandle,
    /// Rings agents' phones.
    pub sip: SipHandle,
    /// Cancelled when the grace period of a shutdown is over.
    pub hangup_all: CancellationToken,
    /// Every call task, so a shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Tells the panel about bridged and ended calls.
    pub live: Live,
}

/// Takes every accepted call and runs it in its own task.
pub async fn run_intake(services: Arc<Services>, mut calls: mpsc::UnboundedReceiver<IncomingCall>) {
    while let Some(IncomingCall { leg, info, kind }) = calls.recv().await {
        match kind {
            CallKind::Emergency { route, trunk } => {
                let call_id = CallId::new();
                let incident_id = IncidentId::new();
                let span = info_span!(
                    "call",
                    call_id = %call_id,
                    incident_id = %incident_id,
                    service = %route.service,
                    source = %info.source,
                );
                let call = EmergencyCall {
                    leg,
                    info,
                    route,
                    trunk,
                };
                services
                    .tracker
                    .spawn(run_call(services.clone(), call, call_id, incident_id).instrument(span));
            }
            CallKind::Feature { agent, code } => {
                let span = info_span!("feature", %agent, ?code);
                services
                    .tracker
                    .spawn(feature::run(services.clone(), leg, info, agent, code).instrument(span));
            }
        }
    }
}

struct EmergencyCall {
    leg: crate::sip::ServerLeg,
    info: crate::sip::request::InviteInfo,
    route: crate::config::Route,
    trunk: Option<String>,
}

enum Phase {
    Greeting,
    Queued,
}

async fn run_call(s: Arc<Services>, call: EmergencyCall, call_id: CallId, incident_id: IncidentId) {
    let EmergencyCall {
        mut leg,
        info,
        route,
        trunk,
    } = call;
    let arrived = Instant::now();
    let arrived_ms = now_ms();
    info!(dialed = ?info.dialed, caller = ?info.caller_number, queue = %route.queue, "emergency call arrived");

    let location = info.location.clone().unwrap_or_default();
    let location_text = location.text.clone();
    s.store.send(StoreCmd::NewCall(Box::new((
        NewCall {
            id: call_id.clone(),
            incident_id: incident_id.clone(),
            sip_call_id: info.sip_call_id.clone(),
            from_uri: info.from_uri.clone(),
            to_uri: info.request_uri.clone(),
            caller_number: info.caller_number.clone(),
            dialed: info
                .dialed
                .as_ref()
                .map(|d| d.as_text())
                .unwrap_or_default(),
            service: route.service.clone(),
            route: route.name.clone(),
            queue: route.queue.clone(),
            source: info.source.to_string(),
            transport: info.transport.to_string(),
            trunk,
            arrived_at: arrived_ms,
        },
        NewIncident {
            id: incident_id.clone(),
            service: route.service.clone(),
            caller_number: info.caller_number.clone(),
            location_text,
            latitude: location.latitude,
            longitude: location.longitude,
            geolocation: info.geolocation.clone(),
            created_at: arrived_ms,
        },
    ))));
    let end = |cause: &str, wait_ms: Option<i64>| {
        s.store.send(StoreCmd::Ended {
            id: call_id.clone(),
            at: now_ms(),
            wait_ms,
            cause: cause.to_string(),
        });
    };

    // The offer, if the INVITE had one (else we offer in the 200 OK).
    let offer = match info.sdp.as_deref().map(sdp::parse) {
        None => None,
        Some(Ok(remote)) => match sdp::negotiate(&remote) {
            Ok(n) => Some((remote, n)),
            Err(e) => {
                warn!(error = %e, "refusing a call whose offer has no G.711");
                leg.reject(488, "Not Acceptable Here");
                end("no_common_codec", None);
                return;
            }
        },
        Some(Err(e)) => {
            warn!(error = %e, "refusing a call with an unreadable offer");
            leg.reject(488, "Not Acceptable Here");
            end("bad_sdp", None);
            return;
        }
    };

    let rtp = match s.ports.allocate() {
        Ok(r) => r,
        Err(e) => {
            // Only a full port range gets here; 503 lets the trunk try
            // another center at once rather than ring into nothing.
            error!(error = %e, "no RTP port for an emergency call");
            leg.reject(503, "Service Unavailable");
            end("no_media_port", None);
            return;
        }
    };

    if !route.answer_delay.is_zero() {
        leg.ringing();
        tokio::select! {
            _ = tokio::time::sleep(route.answer_delay) => {}
            ev = leg.next_event() => {
                if let LegEvent::Ended(why) = ev {
                    info!(cause = why.cause(), "caller left before answer");
                    end(why.cause(), None);
                    return;
                }
            }
        }
    }

    let local = LocalAudio::new(s.config.server.sip.public_ip, rtp.port);
    let answer_sdp = match &offer {
        Some((remote, n)) => sdp::answer(&local, n, sdp::answer_direction(remote.direction)),
        None => sdp::offer(&local),
    };
    if let Err(e) = leg.answer(answer_sdp.clone()) {
        warn!(error = %e, "caller left as we answered");
        end("caller_cancel", None);
        return;
    }
    let answered_ms = now_ms();

    // Late offer: the answer comes in the ACK.
    let (remote_addr, negotiated) = match offer {
        Some((remote, n)) => (remote.addr, n),
        None => match leg.next_event().await {
            LegEvent::Confirmed {
                ack_body: Some(body),
            } => match sdp::parse(&body).and_then(|r| sdp::negotiate(&r).map(|n| (r.addr, n))) {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "ACK carried no usable answer; ending the call");
                    leg.hangup().await;
                    end("bad_sdp", Some(0));
                    return;
                }
            },
            LegEvent::Ended(why) => {
                end(why.cause(), Some(0));
                return;
            }
            _ => {
                warn!("ACK without an answer to our offer; ending the call");
                leg.hangup().await;
                end("bad_sdp", Some(0));
                return;
            }
        },
    };
    converse(
        s,
        Conversation {
            call_id,
            incident_id,
            caller: CallerLeg::Inbound(leg),
            caller_number: info.caller_number.clone(),
            location,
            greeting: format!("greeting-{}", route.service),
            route,
            arrived,
            arrived_ms,
            answered_ms,
            negotiated,
            remote_addr,
            rtp,
            local,
        },
    )
    .await;
}

/// The caller's leg: the INVITE they sent us, or (a call-back) the one we
/// sent them, once answered.
pub(crate) enum CallerLeg {
    Inbound(crate::sip::ServerLeg),
    Outbound(AgentLeg),
}

impl CallerLeg {
    async fn next_event(&mut self) -> LegEvent {
        match self {
            CallerLeg::Inbound(leg) => leg.next_event().await,
            CallerLeg::Outbound(leg) => loop {
                match leg.next_event().await {
                    AgentLegEvent::ReOffer { sdp, responder } => {
                        return LegEvent::ReOffer { sdp, responder }
                    }
                    AgentLegEvent::Ended => return LegEvent::Ended(LegEnd::RemoteBye),
                    AgentLegEvent::Failed(_) => {
                        return LegEvent::Ended(LegEnd::Other("dialog_closed".into()))
                    }
                    // Provisional answers and a repeated 200 change nothing.
                    AgentLegEvent::Trying
                    | AgentLegEvent::Ringing
                    | AgentLegEvent::Answered { .. } => {}
                }
            },
        }
    }

    async fn hangup(&self) {
        match self {
            CallerLeg::Inbound(leg) => leg.hangup().await,
            CallerLeg::Outbound(leg) => leg.end().await,
        }
    }
}

/// An answered caller, ready to be queued, recorded and bridged.
pub(crate) struct Conversation {
    pub call_id: CallId,
    pub incident_id: IncidentId,
    pub caller: CallerLeg,
    pub caller_number: Option<String>,
    pub location: Location,
    /// The prompt played first.
    pub greeting: String,
    pub route: crate::config::Route,
    /// When the caller arrived; earlier is served first.
    pub arrived: Instant,
    pub arrived_ms: i64,
    pub answered_ms: i64,
    pub negotiated: Negotiated,
    pub remote_addr: Option<std::net::SocketAddr>,
    pub rtp: RtpSocket,
    pub local: LocalAudio,
}

/// Queues, records and bridges an answered caller until the call ends,
/// then closes the recording and the record.
pub(crate) async fn converse(s: Arc<Services>, c: Conversation) {
    let Conversation {
        call_id,
        incident_id,
        caller: mut leg,
        caller_number,
        location,
        greeting,
        route,
        arrived,
        arrived_ms,
        answered_ms,
        negotiated,
        remote_addr,
        rtp,
        local,
    } = c;
    let mut agent_answered: Option<Instant> = None;
    let end = |cause: &str, wait_ms: Option<i64>| {
        s.store.send(StoreCmd::Ended {
            id: call_id.clone(),
            at: now_ms(),
            wait_ms,
            cause: cause.to_string(),
        });
    };
    let codec = codec_name(&negotiated);

    let path = s
        .config
        .resolve(&s.config.server.media.recordings_dir)
        .join(paths::recording_path(arrived_ms, &call_id));
    let (recording, recording_error) = match s.recorder.open(&path) {
        Ok(r) => (Some(r), None),
        Err(e) => {
            // Loud, stored on the call, and the call goes on.
            error!(error = %e, "recording could not start; the call continues unrecorded");
            (None, Some(e.to_string()))
        }
    };
    s.store.send(StoreCmd::Answered {
        id: call_id.clone(),
        at: answered_ms,
        codec: codec.to_string(),
        recording_path: recording.as_ref().map(|r| r.path().display().to_string()),
        recording_error,
    });

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut media_events) = mpsc::unbounded_channel();
    let media = tokio::spawn(session::run(
        rtp,
        MediaParams {
            law: negotiated.law,
            pt: negotiated.pt,
            dtmf_pt: negotiated.dtmf_pt,
            remote: remote_addr,
            rtp_timeout: s.config.server.media.rtp_timeout,
        },
        recording,
        cmd_rx,
        ev_tx,
    ));
    let greeting = s
        .prompts
        .get(&greeting)
        .or_else(|| s.prompts.get("greeting-112"));
    let _ = cmd_tx.send(MediaCommand::Background(s.prompts.get("hold-music")));
    let _ = cmd_tx.send(MediaCommand::Play(
        greeting.into_iter().map(Segment::Audio).collect(),
    ));

    let (notice_tx, mut notices) = mpsc::unbounded_channel();
    let mut queue = route.queue.clone();
    if s.acd
        .enqueue(
            call_id.clone(),
            queue.clone(),
            route.require.clone(),
            arrived,
            notice_tx.clone(),
        )
        .await
        .is_none()
    {
        error!(%queue, "queue refused the call; it stays answered with prompts");
    }

    let mut phase = Phase::Greeting;
    let mut next_announcement: Option<tokio::time::Instant> = None;
    let mut version = 1u64;
    // The agent whose phone rings for this call, or who talks with the caller.
    let mut agent: Option<AgentSide> = None;
    let why: LegEnd = loop {
        let announce = async {
            match next_announcement {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // An overflow target that has not answered by then is given up.
        let give_up_at = agent
            .as_ref()
            .filter(|a| !a.talking)
            .and_then(|a| a.external.as_ref().map(|(_, t)| *t));
        let agent_event = async {
            match agent.as_mut() {
                Some(a) => a.leg.next_event().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = leg.next_event() => match ev {
                LegEvent::Confirmed { .. } => {}
                LegEvent::ReOffer { sdp: offer, responder } => {
                    // Keep the session as negotiated; answer with a new version.
                    let keeps_g711 = offer
                        .as_deref()
                        .map(|b| sdp::parse(b).and_then(|r| sdp::negotiate(&r)).is_ok())
                        .unwrap_or(true);
                    if keeps_g711 {
                        version += 1;
                        let again = LocalAudio { version, ..local };
                        responder.ok_with_sdp(sdp::answer(&again, &negotiated, sdp::Direction::SendRecv)).await;
                    } else {
                        responder.reject(488).await;
                    }
                }
                LegEvent::Ended(why) => break why,
            },
            ev = agent_event => {
                let Some(a) = agent.as_mut() else { continue };
                match ev {
                    AgentLegEvent::Trying | AgentLegEvent::Ringing => {
                        if let Some((_, give_up)) = a.external.as_mut() {
                            // Alive: it may take the full limit to answer.
                            *give_up = a.started + OVERFLOW_RING_LIMIT;
                        }
                    }
                    AgentLegEvent::Answered { sdp: body } => {
                        let parsed = sdp::parse(&body).and_then(|r| sdp::negotiate(&r).map(|n| (r.addr, n)));
                        let Some(rtp) = a.rtp.take() else { continue };
                        match parsed {
                            Ok((remote, n)) => {
                                info!(agent = %a.id, codec = codec_name(&n), "answered; bridging");
                                if a.external.is_none() {
                                    s.acd.answered(call_id.clone(), a.id.clone());
                                    s.live.send(LiveEvent::CallBridged(BridgedCall {
                                        call_id: call_id.to_string(),
                                        incident_id: incident_id.to_string(),
                                        agent_id: a.id.clone(),
                                        caller_number: caller_number.clone(),
                                        location: location.text.clone(),
                                        latitude: location.latitude,
                                        longitude: location.longitude,
                                        service: route.service.clone(),
                                        arrived_at: arrived_ms,
                                        bridged_at: now_ms(),
                                    }));
                                }
                                s.store.send(StoreCmd::AgentAnswered { id: call_id.clone(), agent: a.id.clone(), at: now_ms() });
                                agent_answered = Some(Instant::now());
                                a.talking = true;
                                a.codec = Some(n);
                                next_announcement = None;
                                let _ = cmd_tx.send(MediaCommand::Bridge {
                                    rtp,
                                    params: MediaParams {
                                        law: n.law,
                                        pt: n.pt,
                                        dtmf_pt: n.dtmf_pt,
                                        remote,
                                        rtp_timeout: s.config.server.media.rtp_timeout,
                                    },
                                });
                            }
                            Err(e) => {
                                warn!(agent = %a.id, error = %e, "answered with no usable SDP");
                                a.leg.end().await;
                                not_taken(&s, &call_id, a, OfferFailure::Unreachable, &route, arrived, &notice_tx).await;
                                agent = None;
                            }
                        }
                    }
                    AgentLegEvent::Failed(f) => {
                        info!(agent = %a.id, failure = ?f, "the call was not taken");
                        let why = match f {
                            AgentFailure::NoAnswer => OfferFailure::NoAnswer,
                            AgentFailure::Declined => OfferFailure::Declined,
                            AgentFailure::Unreachable => OfferFailure::Unreachable,
                        };
                        not_taken(&s, &call_id, a, why, &route, arrived, &notice_tx).await;
                        agent = None;
                    }
                    AgentLegEvent::ReOffer { sdp: offer, responder } => {
                        // The agent's phone holds (sendonly/inactive) or resumes.
                        let dir = offer
                            .as_deref()
                            .and_then(|b| sdp::parse(b).ok())
                            .map(|r| r.direction)
                            .unwrap_or(sdp::Direction::SendRecv);
                        let hold = matches!(dir, sdp::Direction::SendOnly | sdp::Direction::Inactive);
                        let _ = cmd_tx.send(MediaCommand::Hold(hold));
                        info!(agent = %a.id, hold, "agent hold changed");
                        a.version += 1;
                        let again = LocalAudio { version: a.version, ..a.local };
                        let direction = sdp::answer_direction(dir);
                        let answer = match &a.codec {
                            Some(n) => sdp::answer(&again, n, direction),
                            None => sdp::offer_preferring(&again, a.law, direction),
                        };
                        responder.ok_with_sdp(answer).await;
                    }
                    AgentLegEvent::Ended => {
                        info!(agent = %a.id, "the other side hung up; ending the call");
                        leg.hangup().await;
                        break LegEnd::Other(if a.external.is_some() { "overflow_bye" } else { "agent_bye" }.into());
                    }
                }
            }
            ev = media_events.recv() => match ev {
                Some(MediaEvent::Drained) => {
                    if agent.as_ref().is_some_and(|a| a.talking) {
                        continue;
                    }
                    let wait = match phase {
                        Phase::Greeting => Duration::ZERO,
                        Phase::Queued => prompt_interval(&s.config, &queue),
                    };
                    phase = Phase::Queued;
                    next_announcement = Some(tokio::time::Instant::now() + wait);
                }
                Some(MediaEvent::RtpTimeout) => {
                    warn!("no RTP from the caller; ending the call");
                    leg.hangup().await;
                    break LegEnd::Other("rtp_timeout".into());
                }
                None => break LegEnd::Other("media_failed".into()),
            },
            notice = notices.recv() => match notice {
                Some(AcdNotice::Overflowed { from, to }) => {
                    info!(%from, %to, "caller overflowed to the next queue");
                    s.store.send(StoreCmd::Event {
                        id: call_id.clone(),
                        at: now_ms(),
                        kind: "overflow".into(),
                        detail: Some(format!("{from} -> {to}")),
                    });
                    s.store.send(StoreCmd::Queue { id: call_id.clone(), queue: to.clone() });
                    queue = to;
                }
                Some(AcdNotice::OverflowedToSip { from, target }) => {
                    info!(%from, %target, "caller overflowed to another center");
                    s.store.send(StoreCmd::Event {
                        id: call_id.clone(),
                        at: now_ms(),
                        kind: "overflow".into(),
                        detail: Some(format!("{from} -> {target}")),
                    });
                    match ring(
                        &s,
                        RingTarget::Center { uri: &target, from_queue: &from },
                        caller_number.as_deref(),
                        &incident_id,
                        negotiated.law,
                    ) {
                        Ok(side) => agent = Some(side),
                        Err(why) => {
                            warn!(%target, reason = why, "cannot reach the overflow target; back to the queue");
                            let _ = s.acd.enqueue(call_id.clone(), from, route.require.clone(), arrived, notice_tx.clone()).await;
                        }
                    }
                }
                Some(AcdNotice::Offer { agent: id }) => {
                    match ring(&s, RingTarget::Agent(&id), caller_number.as_deref(), &incident_id, negotiated.law) {
                        Ok(side) => agent = Some(side),
                        Err(why) => {
                            warn!(agent = %id, reason = why, "cannot ring the agent");
                            s.acd.offer_failed(call_id.clone(), id, OfferFailure::Unreachable);
                        }
                    }
                }
                Some(AcdNotice::RingTimeout { agent: id }) => {
                    if let Some(a) = agent.take_if(|a| a.id == id && !a.talking) {
                        info!(agent = %id, "agent did not answer in time; trying the next");
                        a.leg.end().await;
                    }
                }
                None => {}
            },
            _ = async {
                match give_up_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(a) = agent.take() {
                    warn!(target = %a.id, "the overflow target did not answer; back to the queue");
                    a.leg.end().await;
                    give_back(&s, &call_id, &a, &route, arrived, &notice_tx).await;
                }
            }
            _ = s.hangup_all.cancelled() => {
                info!("ending the call: the service is shutting down");
                leg.hangup().await;
                break LegEnd::Other("shutdown".into());
            }
            _ = announce => {
                next_announcement = None;
                let position = s.acd.position(call_id.clone()).await.map(|(_, p)| p).unwrap_or(1);
                let _ = cmd_tx.send(MediaCommand::Play(s.prompts.queue_announcement(position)));
            }
        }
    };
    info!(cause = why.cause(), "call ended");

    s.acd.leave(call_id.clone());
    s.live.send(LiveEvent::CallEnded {
        call_id: call_id.to_string(),
        incident_id: incident_id.to_string(),
        agent_id: agent
            .as_ref()
            .filter(|a| a.talking && a.external.is_none())
            .map(|a| a.id.clone()),
        cause: why.cause().to_string(),
    });
    if let Some(a) = agent.take() {
        // Stop the agent's phone ringing (CANCEL) or end its leg (BYE).
        if !matches!(why, LegEnd::Other(ref c) if c == "agent_bye") {
            a.leg.end().await;
        }
        if a.talking && a.external.is_none() {
            s.acd.call_ended(a.id.clone(), queue.clone());
        }
    }
    let _ = cmd_tx.send(MediaCommand::Stop);
    let waited = agent_answered
        .unwrap_or_else(Instant::now)
        .duration_since(arrived);
    end(why.cause(), Some(waited.as_millis() as i64));
    let (_stats, recording) = match media.await {
        Ok(x) => x,
        Err(e) => {
            error!(error = %e, "media task failed");
            return;
        }
    };
    if let Some(rec) = recording {
        let (sha256, error) = match rec.close().await {
            Ok(closed) => {
                let p = closed.path.clone();
                match tokio::task::spawn_blocking(move || sha256_file(&p)).await {
                    Ok(Ok(sum)) => (Some(sum), None),
                    Ok(Err(e)) => (None, Some(e.to_string())),
                    Err(e) => (None, Some(e.to_string())),
                }
            }
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(e) = &error {
            error!(error = %e, "recording was not closed cleanly");
        }
        s.store.send(StoreCmd::RecordingClosed {
            id: call_id.clone(),
            sha256,
            error,
        });
    }
}

/// The agent side of a call: the leg to their phone and its media port.
struct AgentSide {
    /// The agent, or the SIP target of an overflow.
    id: String,
    /// For an overflow to another center: the queue the caller left, to go
    /// back to if the target fails, and when to give up on it.
    external: Option<(String, tokio::time::Instant)>,
    started: tokio::time::Instant,
    leg: AgentLeg,
    /// Taken by the media bridge when the agent answers.
    rtp: Option<RtpSocket>,
    local: LocalAudio,
    law: Law,
    /// What the answer negotiated, once answered.
    codec: Option<Negotiated>,
    version: u64,
    talking: bool,
}

/// The agent or center did not take the call. An agent's failure goes to
/// the ACD (the agent is set not ready, the call offered anew); a center's
/// puts the caller back in the queue.
#[allow(clippy::too_many_arguments)]
async fn not_taken(
    s: &Services,
    call_id: &CallId,
    a: &AgentSide,
    why: OfferFailure,
    route: &crate::config::Route,
    arrived: Instant,
    notices: &mpsc::UnboundedSender<AcdNotice>,
) {
    if a.external.is_some() {
        give_back(s, call_id, a, route, arrived, notices).await;
    } else {
        s.acd.offer_failed(call_id.clone(), a.id.clone(), why);
    }
}

/// An overflow target failed: the caller goes back to the queue it left,
/// keeping its arrival time (so its place), and it is on record.
async fn give_back(
    s: &Services,
    call_id: &CallId,
    a: &AgentSide,
    route: &crate::config::Route,
    arrived: Instant,
    notices: &mpsc::UnboundedSender<AcdNotice>,
) {
    let Some((queue, _)) = a.external.clone() else {
        return;
    };
    s.store.send(StoreCmd::Event {
        id: call_id.clone(),
        at: now_ms(),
        kind: "overflow_failed".into(),
        detail: Some(format!("{} -> {queue}", a.id)),
    });
    let _ = s
        .acd
        .enqueue(
            call_id.clone(),
            queue,
            route.require.clone(),
            arrived,
            notices.clone(),
        )
        .await;
}

/// How long another center may take to answer an overflowed caller before
/// the caller goes back to the queue...
const OVERFLOW_RING_LIMIT: Duration = Duration::from_secs(30);
/// ...once it has shown it is alive (100 or 180); a target that says
/// nothing at all (down, or a closed port) is given up much sooner.
const OVERFLOW_SILENCE_LIMIT: Duration = Duration::from_secs(4);

/// Whom a call rings.
enum RingTarget<'a> {
    /// An agent's registered phone.
    Agent(&'a str),
    /// Another center (overflow), and the queue the caller leaves.
    Center { uri: &'a str, from_queue: &'a str },
}

/// Rings an agent's phone or another center, offering the caller's law
/// first so the bridge needs no transcoding.
fn ring(
    s: &Services,
    target: RingTarget<'_>,
    caller_number: Option<&str>,
    incident: &IncidentId,
    law: Law,
) -> Result<AgentSide, &'static str> {
    let binding = match target {
        RingTarget::Agent(agent) => Some(s.sip.agent_binding(agent).ok_or("not registered")?),
        RingTarget::Center { .. } => None,
    };
    let rtp = s.ports.allocate().map_err(|_| "no RTP port")?;
    let local = LocalAudio::new(s.config.server.sip.public_ip, rtp.port);
    let offer = sdp::offer_preferring(&local, law, sdp::Direction::SendRecv);
    let caller = caller_number.unwrap_or("anonymous").to_string();
    let http = s.config.server.http.listen;
    let call_info = Some(format!(
        "<http://{http}/api/incidents/{incident}>;purpose=info"
    ));
    let started = tokio::time::Instant::now();
    let (id, external, leg) = match (target, binding) {
        (RingTarget::Agent(agent), Some(binding)) => {
            info!(%agent, contact = %binding.contact, "ringing agent");
            let leg = s.sip.call_agent(&binding, &caller, offer, call_info);
            (agent, None, leg)
        }
        (RingTarget::Center { uri, from_queue }, _) => {
            let leg = s.sip.call_uri(uri, &caller, offer, call_info);
            (
                uri,
                Some((from_queue.to_string(), started + OVERFLOW_SILENCE_LIMIT)),
                leg,
            )
        }
        (RingTarget::Agent(_), None) => return Err("not registered"),
    };
    Ok(AgentSide {
        id: id.to_string(),
        external,
        started,
        leg: leg.map_err(|_| "INVITE failed")?,
        rtp: Some(rtp),
        local,
        law,
        codec: None,
        version: 1,
        talking: false,
    })
}

fn prompt_interval(config: &Config, queue: &str) -> Duration {
    config
        .queues
        .get(queue)
        .map(|q| q.prompt_interval)
        .unwrap_or(Duration::from_secs(10))
}

fn codec_name(n: &Negotiated) -> &'static str {
    match n.law {
        crate::media::g711::Law::Alaw => "PCMA",
        crate::media::g711::Law::Ulaw => "PCMU",
    }
}

//! One task per call: answer, greet, queue with position prompts, record,
//! and close the record whatever happened.
//!
//! The call never waits on the database (records go to the store writer)
//! and never drops the caller for load: past a queue's maximum wait it
//! overflows to the next queue and keeps waiting, recorded.

mod callback;
mod feature;
mod leg;
pub mod paths;
mod transfer;

pub use callback::Callbacks;
use leg::Leg;
use transfer::{Consultation, Transfer};
pub use transfer::{Control, Controls};

use crate::acd::runtime::{AcdHandle, AcdNotice};
use crate::acd::OfferFailure;
use crate::config::Config;
use crate::ids::{CallId, IncidentId};
use crate::live::{BridgedCall, Live, LiveEvent};
use crate::media::g711::Law;
use crate::media::ports::PortPool;
use crate::media::ports::RtpSocket;
use crate::media::prompts::{Prompts, Segment};
use crate::media::reactor::MediaControl;
use crate::media::recorder::{sha256_file, Held, RecordError, Recorder, Recording};
use crate::media::sdp::{self, LocalAudio, Negotiated};
use crate::media::session::{CallRecording, MediaCommand, MediaEvent, MediaParams};
use crate::sip::request::{Location, Replaces};
use crate::sip::{
    AgentFailure, AgentLeg, AgentLegEvent, CallKind, IncomingCall, LegEnd, LegEvent, SipHandle,
};
use crate::store::{now_ms, NewCall, NewIncident, RecordingOutcome, StoreCmd, StoreWriter};
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
    /// Requests from the panel to calls in progress (warm transfer).
    pub controls: Controls,
    /// Agents answering in the panel: their calls ring there.
    pub phones: crate::webphone::Phones,
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
            CallKind::Consult { agent, agency } => {
                let span = info_span!("consult", %agent, %agency);
                services.tracker.spawn(
                    transfer::hand_consultation(services.clone(), leg, info.sdp, agent, agency)
                        .instrument(span),
                );
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

    let location = info
        .pidf
        .as_deref()
        .and_then(crate::sip::request::parse_pidf)
        .unwrap_or_default();
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
                    AgentLegEvent::Ended | AgentLegEvent::Lost => {
                        return LegEvent::Ended(LegEnd::RemoteBye)
                    }
                    AgentLegEvent::Failed(_) => {
                        return LegEvent::Ended(LegEnd::Other("dialog_closed".into()))
                    }
                    // A called-back caller does not transfer us anywhere.
                    AgentLegEvent::Refer { responder, .. } => responder.reject(603).await,
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
    // The caller hears the greeting at once; the file is created beside
    // it (on a busy or failing disk that can take up to `OPEN_WITHIN`),
    // and the session holds the call's first frames for it meanwhile.
    let mut opening = Some({
        let recorder = s.recorder.clone();
        let path = path.clone();
        tokio::spawn(async move { recorder.open(&path).await })
    });
    s.store.send(StoreCmd::Answered {
        id: call_id.clone(),
        at: answered_ms,
        codec: codec.to_string(),
        recording_path: Some(path.display().to_string()),
        recording_error: None,
    });

    let (ev_tx, mut media_events) = mpsc::unbounded_channel();
    let (cmd_tx, media) = crate::media::reactor::start(
        rtp,
        MediaParams::new(&negotiated, remote_addr, s.config.server.media.rtp_timeout),
        CallRecording::Pending(Held::default()),
        ev_tx,
    );
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
    // A warm transfer in progress, and how many this call has had.
    let mut transfer: Option<Transfer> = None;
    let mut transfers = 0u32;
    // The transfer whose consultation the media session records now.
    let mut consult_of: Option<String> = None;
    let mut controls = s.controls.register(&call_id);
    // What the panel of the agent who takes the call opens with.
    let bridge_info = |agent: &str| BridgedCall {
        call_id: call_id.to_string(),
        incident_id: incident_id.to_string(),
        agent_id: agent.to_string(),
        caller_number: caller_number.clone(),
        location: location.text.clone(),
        latitude: location.latitude,
        longitude: location.longitude,
        service: route.service.clone(),
        arrived_at: arrived_ms,
        bridged_at: now_ms(),
    };
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
        let transfer_wake = async {
            match transfer.as_mut() {
                Some(Transfer {
                    notices,
                    dispatcher,
                    deadline,
                    consult,
                    ..
                }) => {
                    let talking = dispatcher.as_ref().is_some_and(|d| d.talking);
                    let deadline = *deadline;
                    tokio::select! {
                        n = notices.recv() => TransferWake::Notice(n),
                        ev = async {
                            match consult.as_mut() {
                                Some(c) => c.leg.next_event().await,
                                None => std::future::pending().await,
                            }
                        } => TransferWake::Consult(ev),
                        ev = async {
                            match dispatcher.as_mut() {
                                Some(d) => d.leg.next_event().await,
                                None => std::future::pending().await,
                            }
                        } => TransferWake::Leg(ev),
                        _ = async {
                            if talking {
                                std::future::pending::<()>().await
                            } else {
                                tokio::time::sleep_until(deadline).await
                            }
                        } => TransferWake::Deadline,
                    }
                }
                None => std::future::pending().await,
            }
        };
        let opened = async {
            match opening.as_mut() {
                Some(o) => o.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = opened => {
                opening = None;
                let recording = recording_opened(&s, &call_id, done);
                let _ = cmd_tx.send(MediaCommand::Record(recording));
            }
            ctl = controls.recv() => {
                let Some(ctl) = ctl else { continue };
                match ctl {
                    Control::Transfer { agency, agent: named, by, reply } => {
                        let started = start_transfer(&s, &agency, named.as_deref(), agent.as_ref(), transfer.is_some(), &call_id, transfers + 1, &by).await;
                        match started {
                            Ok(t) => {
                                transfers += 1;
                                info!(%agency, by = %by, transfer = %t.id, "warm transfer: ringing the agency");
                                let _ = cmd_tx.send(MediaCommand::Hold(true));
                                transfer_begun(&s, &t, &call_id, &incident_id, agent.as_ref(), &by, &cmd_tx);
                                transfer_news(&s, &call_id, &incident_id, agent.as_ref(), &t, "ringing");
                                transfer = Some(t);
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Control::Conference { by, reply } => match transfer.as_mut() {
                        Some(t) if t.talking() && agent.is_some() => {
                            t.conference = true;
                            let _ = cmd_tx.send(MediaCommand::Conference);
                            info!(by = %by, "warm transfer: conference");
                            s.store.send(StoreCmd::Event { id: call_id.clone(), at: now_ms(), kind: "conference".into(), detail: Some(format!("{} by {by}", t.agency)) });
                            transfer_news(&s, &call_id, &incident_id, agent.as_ref(), t, "conference");
                            let _ = reply.send(Ok(()));
                        }
                        _ => {
                            let _ = reply.send(Err("no dispatcher is on the line yet".into()));
                        }
                    },
                    Control::Complete { by, reply } => {
                        if !transfer.as_ref().is_some_and(|t| t.talking()) {
                            let _ = reply.send(Err("no dispatcher is on the line yet".into()));
                            continue;
                        }
                        let t = transfer.take().expect("checked");
                        agent = complete_transfer(&s, t, agent.take(), &call_id, &incident_id, &by, &cmd_tx, bridge_info("")).await;
                        let _ = reply.send(Ok(()));
                    }
                    Control::Cancel { by, reply } => match transfer.take() {
                        Some(t) => {
                            give_up_transfer(&s, t, "cancelled", &by, agent.as_ref(), &call_id, &incident_id, &cmd_tx).await;
                            if agent.is_none() {
                                back_to_queue(&s, &call_id, &queue, &route, arrived, &notice_tx).await;
                                next_announcement = Some(tokio::time::Instant::now());
                            }
                            let _ = reply.send(Ok(()));
                        }
                        None => {
                            let _ = reply.send(Err("no transfer is in progress".into()));
                        }
                    },
                    Control::Consult { agent: who, agency, leg: c_leg, offer } => {
                        // The phone of this call's agent dialed an agency:
                        // the first half of an attended transfer.
                        if agent.as_ref().is_none_or(|a| a.id != who) {
                            c_leg.reject(403, "No call to transfer");
                            continue;
                        }
                        let consult = match Consultation::new(&s, *c_leg, offer.as_deref()) {
                            Ok(c) => c,
                            Err((c_leg, code, reason)) => {
                                warn!(code, "the phone's consultation cannot be taken");
                                c_leg.reject(code, reason);
                                continue;
                            }
                        };
                        let busy = transfer.is_some();
                        match start_transfer(&s, &agency, None, agent.as_ref(), busy, &call_id, transfers + 1, &who).await {
                            Ok(mut t) => {
                                transfers += 1;
                                info!(%agency, agent = %who, transfer = %t.id, "attended transfer: the phone consults the agency");
                                consult.leg.ringing();
                                t.consult = Some(consult);
                                let _ = cmd_tx.send(MediaCommand::Hold(true));
                                transfer_begun(&s, &t, &call_id, &incident_id, agent.as_ref(), &who, &cmd_tx);
                                s.store.send(StoreCmd::AssignAgency {
                                    incident_id: incident_id.to_string(),
                                    agency: agency.clone(),
                                    actor: who.clone(),
                                    at: now_ms(),
                                });
                                transfer_news(&s, &call_id, &incident_id, agent.as_ref(), &t, "ringing");
                                transfer = Some(t);
                            }
                            Err(e) => {
                                warn!(error = %e, "the phone's consultation refused");
                                consult.leg.reject(if busy { 486 } else { 403 }, "Transfer Not Possible");
                            }
                        }
                    }
                }
            }
            wake = transfer_wake => {
                let Some(t) = transfer.as_mut() else { continue };
                match wake {
                    TransferWake::Notice(Some(AcdNotice::Offer { agent: id })) => {
                        match ring(&s, RingTarget::Agent(&id), caller_number.as_deref(), &incident_id, negotiated.law) {
                            Ok(side) => {
                                t.dispatcher = Some(AgentSide { queue: t.queue.clone(), ..side });
                                transfer_news(&s, &call_id, &incident_id, agent.as_ref(), t, "ringing");
                            }
                            Err(why) => {
                                warn!(dispatcher = %id, reason = why, "cannot ring the dispatcher");
                                s.acd.offer_failed(t.acd_id.clone(), id, OfferFailure::Unreachable);
                            }
                        }
                    }
                    TransferWake::Notice(Some(AcdNotice::RingTimeout { agent: id })) => {
                        if let Some(d) = t.dispatcher.take_if(|d| d.id == id && !d.talking) {
                            info!(dispatcher = %id, "dispatcher did not answer in time; trying the next");
                            d.leg.end().await;
                        }
                    }
                    TransferWake::Notice(_) => {}
                    TransferWake::Leg(AgentLegEvent::Answered { sdp: body }) => {
                        let Some(d) = t.dispatcher.as_mut() else { continue };
                        let Some(rtp) = d.rtp.take() else { continue };
                        match sdp::parse(&body).and_then(|r| sdp::negotiate(&r).map(|n| (r.addr, n))) {
                            Ok((remote, n)) => {
                                info!(dispatcher = %d.id, "warm transfer: the dispatcher answered");
                                s.acd.answered(t.acd_id.clone(), d.id.clone());
                                d.talking = true;
                                d.codec = Some(n);
                                let params = MediaParams::new(&n, remote, s.config.server.media.rtp_timeout);
                                let (recording, error) = if agent.is_some() {
                                    let path = s
                                        .config
                                        .resolve(&s.config.server.media.recordings_dir)
                                        .join(paths::transfer_recording_path(arrived_ms, &call_id, t.seq));
                                    match s.recorder.open(&path).await {
                                        Ok(r) => (Some(r), None),
                                        Err(e) => {
                                            error!(error = %e, "the consultation could not be recorded; it goes on");
                                            (None, Some(e.to_string()))
                                        }
                                    }
                                } else {
                                    (None, None)
                                };
                                s.store.send(StoreCmd::TransferAnswered {
                                    id: t.id.clone(),
                                    agent: d.id.clone(),
                                    at: now_ms(),
                                    recording_path: recording.as_ref().map(|r| r.path().display().to_string()),
                                    recording_error: error,
                                });
                                if agent.is_some() {
                                    consult_of = recording.as_ref().map(|_| t.id.clone());
                                    // From the phone: its consultation is
                                    // answered now and speaks for the agent.
                                    // (Should the phone have gone meanwhile,
                                    // its end arrives next and cancels.)
                                    let agent_leg = t
                                        .consult
                                        .as_mut()
                                        .and_then(|c| c.answer(s.config.server.media.rtp_timeout));
                                    let _ = cmd_tx.send(MediaCommand::Consult { rtp, params, recording, agent_leg });
                                    transfer_news(&s, &call_id, &incident_id, agent.as_ref(), t, "talking");
                                } else {
                                    // The agent left while it rang: a blind transfer.
                                    let _ = cmd_tx.send(MediaCommand::Bridge { rtp, params });
                                    let t = transfer.take().expect("present");
                                    let by = t.by.clone();
                                    agent = complete_transfer(&s, t, None, &call_id, &incident_id, &by, &cmd_tx, bridge_info("")).await;
                                }
                            }
                            Err(e) => {
                                warn!(dispatcher = %d.id, error = %e, "the dispatcher answered with no usable SDP");
                                d.leg.end().await;
                                s.acd.offer_failed(t.acd_id.clone(), d.id.clone(), OfferFailure::Unreachable);
                                t.dispatcher = None;
                            }
                        }
                    }
                    TransferWake::Leg(AgentLegEvent::Failed(f)) => {
                        if let Some(d) = t.dispatcher.take() {
                            info!(dispatcher = %d.id, failure = ?f, "the dispatcher did not take the transfer");
                            let why = match f {
                                AgentFailure::NoAnswer => OfferFailure::NoAnswer,
                                AgentFailure::Declined => OfferFailure::Declined,
                                AgentFailure::Unreachable => OfferFailure::Unreachable,
                            };
                            s.acd.offer_failed(t.acd_id.clone(), d.id, why);
                        }
                    }
                    TransferWake::Leg(AgentLegEvent::ReOffer { sdp: offer, responder }) => {
                        if let Some(d) = t.dispatcher.as_mut() {
                            responder.ok_with_sdp(reanswer(d, offer.as_deref()).0).await;
                        }
                    }
                    TransferWake::Leg(AgentLegEvent::Ended | AgentLegEvent::Lost) => {
                        info!("the dispatcher hung up; the agent has the caller again");
                        let t = transfer.take().expect("present");
                        give_up_transfer(&s, t, "dispatcher_hung_up", "system", agent.as_ref(), &call_id, &incident_id, &cmd_tx).await;
                        if agent.is_none() {
                            back_to_queue(&s, &call_id, &queue, &route, arrived, &notice_tx).await;
                            next_announcement = Some(tokio::time::Instant::now());
                        }
                    }
                    TransferWake::Leg(AgentLegEvent::Trying | AgentLegEvent::Ringing) => {}
                    TransferWake::Consult(LegEvent::Confirmed { .. }) => {}
                    TransferWake::Consult(LegEvent::ReOffer { sdp: offer, responder }) => {
                        if let Some(c) = t.consult.as_mut() {
                            responder.ok_with_sdp(c.reanswer(offer.as_deref())).await;
                        }
                    }
                    TransferWake::Consult(LegEvent::Ended(why)) => {
                        info!(cause = why.cause(), "the phone ended its consultation: the transfer is cancelled");
                        let mut t = transfer.take().expect("present");
                        t.consult = None;
                        let by = agent.as_ref().map(|a| a.id.clone()).unwrap_or_else(|| "system".into());
                        give_up_transfer(&s, t, "cancelled", &by, agent.as_ref(), &call_id, &incident_id, &cmd_tx).await;
                        if agent.is_none() {
                            back_to_queue(&s, &call_id, &queue, &route, arrived, &notice_tx).await;
                            next_announcement = Some(tokio::time::Instant::now());
                        }
                    }
                    // The dispatcher's phone does not transfer a call it consults on.
                    TransferWake::Leg(AgentLegEvent::Refer { responder, .. }) => responder.reject(603).await,
                    TransferWake::Deadline => {
                        warn!(agency = %t.agency, "no dispatcher answered in time; the agent has the caller again");
                        let t = transfer.take().expect("present");
                        give_up_transfer(&s, t, "no_answer", "system", agent.as_ref(), &call_id, &incident_id, &cmd_tx).await;
                        if agent.is_none() {
                            back_to_queue(&s, &call_id, &queue, &route, arrived, &notice_tx).await;
                            next_announcement = Some(tokio::time::Instant::now());
                        }
                    }
                }
            }
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
                                    s.live.send(LiveEvent::CallBridged(bridge_info(&a.id)));
                                }
                                s.store.send(StoreCmd::AgentAnswered { id: call_id.clone(), agent: a.id.clone(), at: now_ms() });
                                agent_answered = Some(Instant::now());
                                a.talking = true;
                                a.codec = Some(n);
                                next_announcement = None;
                                let _ = cmd_tx.send(MediaCommand::Bridge {
                                    rtp,
                                    params: MediaParams::new(&n, remote, s.config.server.media.rtp_timeout),
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
                        let (answer, dir) = reanswer(a, offer.as_deref());
                        let hold = matches!(dir, sdp::Direction::SendOnly | sdp::Direction::Inactive);
                        a.phone_holds = hold;
                        // During a transfer the caller is on hold already,
                        // and stays so until it ends.
                        if transfer.is_none() {
                            let _ = cmd_tx.send(MediaCommand::Hold(hold));
                        }
                        info!(agent = %a.id, hold, "agent hold changed");
                        responder.ok_with_sdp(answer).await;
                    }
                    AgentLegEvent::Refer { target, replaces: Some(raw), responder } => {
                        // Attended transfer (RFC 5589 §7): Replaces must
                        // name the consultation this phone placed for
                        // this call.
                        let names_ours = Replaces::parse(&raw)
                            .is_some_and(|r| transfer.as_ref().is_some_and(|t| t.replaced_by(&r)));
                        if !names_ours {
                            warn!(%target, "attended transfer refused: Replaces names no consultation of this call");
                            responder.reject(603).await;
                            continue;
                        }
                        responder.accept().await;
                        a.leg.notify_transfer(200, "OK", true).await;
                        let by = a.id.clone();
                        let mut t = transfer.take().expect("checked");
                        let gone = agent.take().expect("present");
                        if t.talking() {
                            info!(agent = %by, "attended transfer: caller and dispatcher joined");
                            agent = complete_transfer(&s, t, Some(gone), &call_id, &incident_id, &by, &cmd_tx, bridge_info("")).await;
                        } else {
                            info!(agent = %by, "attended transfer while the dispatcher rings: the caller waits for them");
                            gone.leg.end().await;
                            agent_left_ringing(&s, &mut t, &gone, &call_id, &incident_id, &cmd_tx).await;
                            transfer = Some(t);
                        }
                    }
                    AgentLegEvent::Refer { target, replaces: None, responder } => {
                        // A blind transfer from the phone (REFER to an
                        // agency's id): accepted, the phone is released
                        // at once, the caller waits on hold for the agency.
                        let Some(agency) = refer_agency(&s.config, &target) else {
                            warn!(%target, "transfer request refused: no agency with a dispatcher queue");
                            responder.reject(404).await;
                            continue;
                        };
                        let by = a.id.clone();
                        match start_transfer(&s, &agency, None, Some(&*a), transfer.is_some(), &call_id, transfers + 1, &by).await {
                            Ok(mut t) => {
                                responder.accept().await;
                                transfers += 1;
                                info!(%agency, agent = %by, "blind transfer from the phone");
                                transfer_begun(&s, &t, &call_id, &incident_id, Some(&*a), &by, &cmd_tx);
                                s.store.send(StoreCmd::AssignAgency {
                                    incident_id: incident_id.to_string(),
                                    agency: agency.clone(),
                                    actor: by.clone(),
                                    at: now_ms(),
                                });
                                a.leg.notify_transfer(200, "OK", true).await;
                                let gone = agent.take().expect("present");
                                gone.leg.end().await;
                                agent_left_ringing(&s, &mut t, &gone, &call_id, &incident_id, &cmd_tx).await;
                                transfer_news(&s, &call_id, &incident_id, None, &t, "ringing");
                                transfer = Some(t);
                            }
                            Err(e) => {
                                warn!(error = %e, "transfer request refused");
                                responder.reject(603).await;
                            }
                        }
                    }
                    AgentLegEvent::Ended | AgentLegEvent::Lost if transfer.is_some() => {
                        let t = transfer.take().expect("checked");
                        let gone = agent.take().expect("present");
                        if t.talking() {
                            info!(agent = %gone.id, "the agent hung up during the consultation: transfer completed");
                            agent = complete_transfer(&s, t, Some(gone), &call_id, &incident_id, "system", &cmd_tx, bridge_info("")).await;
                        } else {
                            info!(agent = %gone.id, "the agent left while the dispatcher rings: blind transfer");
                            let mut t = t;
                            agent_left_ringing(&s, &mut t, &gone, &call_id, &incident_id, &cmd_tx).await;
                            transfer = Some(t);
                        }
                    }
                    AgentLegEvent::Lost => {
                        // Nobody hung up: the agent's browser went away.
                        // The caller is not dropped for it; they wait at
                        // the front of the queue (their arrival time).
                        let gone = agent.take().expect("present");
                        warn!(agent = %gone.id, "the agent's browser is gone mid-call: the caller waits in the queue again");
                        let _ = cmd_tx.send(MediaCommand::Unbridge);
                        s.acd.call_ended(gone.id.clone(), gone.queue.clone());
                        s.store.send(StoreCmd::Event { id: call_id.clone(), at: now_ms(), kind: "agent_lost".into(), detail: Some(gone.id.clone()) });
                        s.live.send(LiveEvent::CallEnded {
                            call_id: call_id.to_string(),
                            incident_id: incident_id.to_string(),
                            agent_id: Some(gone.id.clone()),
                            cause: "agent_lost".into(),
                        });
                        back_to_queue(&s, &call_id, &queue, &route, arrived, &notice_tx).await;
                        next_announcement = Some(tokio::time::Instant::now());
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
                Some(MediaEvent::ConsultClosed(rec)) => {
                    if let (Some(rec), Some(id)) = (rec, consult_of.take()) {
                        close_consult(&s, id, rec);
                    }
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
                        Ok(side) => agent = Some(AgentSide { queue: queue.clone(), ..side }),
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

    s.controls.remove(&call_id);
    if let Some(t) = transfer.take() {
        let outcome = match &why {
            LegEnd::RemoteBye | LegEnd::Cancelled => "caller_hung_up",
            other => other.cause(),
        };
        let outcome = outcome.to_string();
        give_up_transfer(
            &s,
            t,
            &outcome,
            "system",
            agent.as_ref(),
            &call_id,
            &incident_id,
            &cmd_tx,
        )
        .await;
    }
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
            s.acd.call_ended(a.id.clone(), a.queue.clone());
        }
    }
    let _ = cmd_tx.send(MediaCommand::Stop);
    let waited = agent_answered
        .unwrap_or_else(Instant::now)
        .duration_since(arrived);
    end(why.cause(), Some(waited.as_millis() as i64));
    let finished = match media.await {
        Ok(x) => x,
        Err(e) => {
            error!(error = %e, "media session failed");
            return;
        }
    };
    let mut recording = finished.recording;
    // The call ended before its file was made: it gets what the session
    // held, and silence for the rest of the call.
    if let Some(o) = opening.take() {
        recording = recording_opened(&s, &call_id, o.await);
        if let (Some(rec), Some(held)) = (recording.as_mut(), finished.held) {
            held.write_to(rec);
        }
    }
    // A consultation still recording at the end, or whose close was not
    // read before the end.
    while let Ok(ev) = media_events.try_recv() {
        if let (MediaEvent::ConsultClosed(Some(rec)), Some(id)) = (ev, consult_of.clone()) {
            consult_of = None;
            close_consult(&s, id, rec);
        }
    }
    if let (Some(rec), Some(id)) = (finished.consult, consult_of.take()) {
        close_consult(&s, id, rec);
    }
    if let Some(rec) = recording {
        let outcome = finish_recording(rec).await;
        if let Some(e) = &outcome.error {
            error!(error = %e, "recording was not closed cleanly");
        }
        s.store.send(StoreCmd::RecordingClosed {
            id: call_id.clone(),
            outcome,
        });
    }
}

/// The agent side of a call: the leg to their phone and its media port.
pub(crate) struct AgentSide {
    /// The agent, or the SIP target of an overflow.
    id: String,
    /// The ACD queue this agent took the call from (for their wrap-up).
    queue: String,
    /// For an overflow to another center: the queue the caller left, to go
    /// back to if the target fails, and when to give up on it.
    external: Option<(String, tokio::time::Instant)>,
    started: tokio::time::Instant,
    leg: Leg,
    /// Taken by the media bridge when the agent answers.
    rtp: Option<RtpSocket>,
    local: LocalAudio,
    law: Law,
    /// What the answer negotiated, once answered.
    codec: Option<Negotiated>,
    version: u64,
    talking: bool,
    /// The phone holds this leg (its last offer was sendonly/inactive).
    phone_holds: bool,
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
    // An agent with the panel's phone on takes calls there.
    let browser = matches!(target, RingTarget::Agent(a) if s.phones.has(a));
    let binding = match target {
        RingTarget::Agent(agent) if !browser => {
            Some(s.sip.agent_binding(agent).ok_or("not registered")?)
        }
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
    let caller = caller_number.unwrap_or("anonymous").to_string();
    let http = s.config.server.http.listen;
    let call_info = Some(format!(
        "<http://{http}/api/incidents/{incident}>;purpose=info"
    ));
    let started = tokio::time::Instant::now();
    let (id, external, leg) = match (target, binding) {
        (RingTarget::Agent(agent), _) if browser => {
            let socket = s.ports.allocate().map_err(|_| "no RTP port")?;
            let leg = s.phones.ring(
                agent,
                crate::webphone::Ring {
                    offer,
                    call_side: std::net::SocketAddr::new(ip, rtp.port),
                    socket,
                    caller_number: caller,
                    incident_id: incident.to_string(),
                },
            )?;
            (agent, None, Leg::Browser(leg))
        }
        (RingTarget::Agent(agent), Some(binding)) => {
            info!(%agent, contact = %binding.contact, "ringing agent");
            let leg = s.sip.call_agent(&binding, &caller, offer, call_info);
            (agent, None, Leg::Phone(leg.map_err(|_| "INVITE failed")?))
        }
        (RingTarget::Center { uri, from_queue }, _) => {
            let leg = s.sip.call_uri(uri, &caller, offer, call_info);
            (
                uri,
                Some((from_queue.to_string(), started + OVERFLOW_SILENCE_LIMIT)),
                Leg::Phone(leg.map_err(|_| "INVITE failed")?),
            )
        }
        (RingTarget::Agent(_), None) => return Err("not registered"),
    };
    Ok(AgentSide {
        id: id.to_string(),
        queue: String::new(),
        external,
        started,
        leg,
        rtp: Some(rtp),
        local,
        law,
        codec: None,
        version: 1,
        talking: false,
        phone_holds: false,
    })
}

/// The agency a REFER's target names: its user part is an agency's id.
fn refer_agency(config: &Config, target: &str) -> Option<String> {
    let user = target
        .strip_prefix("sip:")
        .or_else(|| target.strip_prefix("sips:"))?
        .split(['@', ';'])
        .next()?;
    crate::sip::routing::transfer_agency(user, &config.agencies)
}

/// What woke the call about its transfer.
enum TransferWake {
    Notice(Option<AcdNotice>),
    /// The dispatcher's leg.
    Leg(AgentLegEvent),
    /// The phone's consultation leg (attended transfer).
    Consult(LegEvent),
    Deadline,
}

/// The agent left (hung up, or transferred) while the dispatcher still
/// rings: the transfer goes on blind, and the caller waits on hold for
/// whoever answers. The agent's leg is already ended.
async fn agent_left_ringing(
    s: &Services,
    t: &mut Transfer,
    gone: &AgentSide,
    call_id: &CallId,
    incident_id: &IncidentId,
    media: &MediaControl,
) {
    transferred_away(s, t, gone, call_id, incident_id).await;
    let _ = media.send(MediaCommand::Unbridge);
}

/// The agent is done with a call they transferred: the phone's
/// consultation (if any) ends, the agent goes to wrap-up, the panel hears.
async fn transferred_away(
    s: &Services,
    t: &mut Transfer,
    gone: &AgentSide,
    call_id: &CallId,
    incident_id: &IncidentId,
) {
    t.end_consult((487, "Request Terminated")).await;
    s.acd.call_ended(gone.id.clone(), gone.queue.clone());
    s.live.send(LiveEvent::CallEnded {
        call_id: call_id.to_string(),
        incident_id: incident_id.to_string(),
        agent_id: Some(gone.id.clone()),
        cause: "transferred".into(),
    });
}

/// Checks a transfer request and puts it in the agency's queue, for any
/// of its dispatchers or the one named.
#[allow(clippy::too_many_arguments)]
async fn start_transfer(
    s: &Services,
    agency: &str,
    named: Option<&str>,
    agent: Option<&AgentSide>,
    busy: bool,
    call_id: &CallId,
    seq: u32,
    by: &str,
) -> Result<Transfer, String> {
    let talking = agent.is_some_and(|a| a.talking && a.external.is_none());
    if !talking {
        return Err("the call is not with an agent".into());
    }
    if busy {
        return Err("a transfer is in progress already".into());
    }
    let config = s
        .config
        .agencies
        .iter()
        .find(|a| a.id == agency)
        .ok_or_else(|| format!("no agency `{agency}`"))?;
    let queue = config
        .queue
        .clone()
        .ok_or_else(|| format!("agency `{agency}` has no dispatcher queue"))?;
    let acd_id = transfer::transfer_place(call_id, seq);
    let (tx, notices) = mpsc::unbounded_channel();
    let queued = match named {
        Some(d) => {
            s.acd
                .enqueue_for(
                    acd_id.clone(),
                    queue.clone(),
                    d.to_string(),
                    Instant::now(),
                    tx,
                )
                .await
        }
        None => {
            s.acd
                .enqueue(
                    acd_id.clone(),
                    queue.clone(),
                    Default::default(),
                    Instant::now(),
                    tx,
                )
                .await
        }
    };
    queued.ok_or_else(|| format!("the queue `{queue}` refused the transfer"))?;
    Ok(Transfer {
        id: uuid::Uuid::new_v4().to_string(),
        seq,
        agency: agency.to_string(),
        queue,
        acd_id,
        notices,
        deadline: tokio::time::Instant::now() + config.transfer_timeout,
        dispatcher: None,
        conference: false,
        by: by.to_string(),
        consult: None,
    })
}

/// The dispatcher takes the caller; the agent (if still there) is freed
/// to wrap up. Returns the new agent side: the dispatcher.
#[allow(clippy::too_many_arguments)]
async fn complete_transfer(
    s: &Services,
    mut t: Transfer,
    agent: Option<AgentSide>,
    call_id: &CallId,
    incident_id: &IncidentId,
    by: &str,
    media: &MediaControl,
    announce: BridgedCall,
) -> Option<AgentSide> {
    let d = t.dispatcher.take()?;
    if let Some(a) = agent {
        let _ = media.send(MediaCommand::Complete);
        a.leg.end().await;
        transferred_away(s, &mut t, &a, call_id, incident_id).await;
    }
    let outcome = if t.conference {
        "conference_completed"
    } else {
        "completed"
    };
    info!(dispatcher = %d.id, outcome, "warm transfer completed");
    s.store.send(StoreCmd::TransferEnded {
        id: t.id.clone(),
        at: now_ms(),
        outcome: outcome.into(),
        actor: by.into(),
    });
    t.dispatcher = Some(d);
    transfer_news(s, call_id, incident_id, None, &t, "completed");
    let d = t.dispatcher.take()?;
    // The dispatcher's screen opens the call as the call-taker's did.
    s.live.send(LiveEvent::CallBridged(BridgedCall {
        agent_id: d.id.clone(),
        ..announce
    }));
    Some(d)
}

/// Ends a transfer that did not complete: the dispatcher's leg (ringing or
/// answered) goes, and the agent has the caller again.
#[allow(clippy::too_many_arguments)]
async fn give_up_transfer(
    s: &Services,
    mut t: Transfer,
    outcome: &str,
    by: &str,
    agent: Option<&AgentSide>,
    call_id: &CallId,
    incident_id: &IncidentId,
    media: &MediaControl,
) {
    let talking = t.talking();
    if let Some(d) = t.dispatcher.take() {
        d.leg.end().await;
        if d.talking {
            s.acd.call_ended(d.id.clone(), t.queue.clone());
        }
    }
    s.acd.leave(t.acd_id.clone());
    if talking {
        let _ = media.send(MediaCommand::EndConsult);
    } else {
        let _ = media.send(MediaCommand::Clear);
        let _ = media.send(MediaCommand::Hold(false));
    }
    // The phone's consultation, when it came from one: nobody answered
    // (480), or it ends with the transfer.
    let unanswered = if outcome == "no_answer" {
        (480, "Temporarily Unavailable")
    } else {
        (487, "Request Terminated")
    };
    t.end_consult(unanswered).await;
    // A phone that holds its leg (it consulted from the phone) resumes
    // it itself; until then the caller hears hold music.
    if agent.is_some_and(|a| a.phone_holds) {
        let _ = media.send(MediaCommand::Hold(true));
    }
    info!(outcome, "warm transfer ended without completing");
    s.store.send(StoreCmd::TransferEnded {
        id: t.id.clone(),
        at: now_ms(),
        outcome: outcome.into(),
        actor: by.into(),
    });
    transfer_news(s, call_id, incident_id, agent, &t, outcome);
}

/// The caller lost their agent during a transfer that then failed: back
/// to the queue, with their place.
async fn back_to_queue(
    s: &Services,
    call_id: &CallId,
    queue: &str,
    route: &crate::config::Route,
    arrived: Instant,
    notices: &mpsc::UnboundedSender<AcdNotice>,
) {
    warn!("the transfer failed and the agent is gone: the caller waits in the queue again");
    let _ = s
        .acd
        .enqueue(
            call_id.clone(),
            queue.to_string(),
            route.require.clone(),
            arrived,
            notices.clone(),
        )
        .await;
}

/// A transfer has begun: on record, and the caller hears the hold prompt.
fn transfer_begun(
    s: &Services,
    t: &Transfer,
    call_id: &CallId,
    incident_id: &IncidentId,
    from: Option<&AgentSide>,
    by: &str,
    media: &MediaControl,
) {
    s.store.send(StoreCmd::TransferStarted(Box::new(
        crate::store::NewTransfer {
            id: t.id.clone(),
            call_id: call_id.to_string(),
            incident_id: incident_id.to_string(),
            from_agent: from.map(|a| a.id.clone()),
            agency: t.agency.clone(),
            requested_by: by.to_string(),
            at: now_ms(),
        },
    )));
    let prompt = s.prompts.get("transfer").into_iter().map(Segment::Audio);
    let _ = media.send(MediaCommand::Play(prompt.collect()));
}

/// Tells the panel where a transfer stands.
fn transfer_news(
    s: &Services,
    call_id: &CallId,
    incident_id: &IncidentId,
    agent: Option<&AgentSide>,
    t: &Transfer,
    state: &str,
) {
    s.live.send(LiveEvent::Transfer {
        call_id: call_id.to_string(),
        incident_id: incident_id.to_string(),
        transfer_id: t.id.clone(),
        agent_id: agent.map(|a| a.id.clone()),
        agency: t.agency.clone(),
        dispatcher: t.dispatcher.as_ref().map(|d| d.id.clone()),
        state: state.to_string(),
    });
}

/// Answers a re-INVITE from an agent-side phone, keeping what was
/// negotiated; also says which direction the phone offered (hold or not).
fn reanswer(a: &mut AgentSide, offer: Option<&[u8]>) -> (String, sdp::Direction) {
    let dir = sdp::offered_direction(offer);
    a.version += 1;
    let again = LocalAudio {
        version: a.version,
        ..a.local
    };
    let direction = sdp::answer_direction(dir);
    let answer = match &a.codec {
        Some(n) => sdp::answer(&again, n, direction),
        None => sdp::offer_preferring(&again, a.law, direction),
    };
    (answer, dir)
}

/// The call's recording once `Recorder::open` is done, or None with the
/// error logged and stored on the call (which goes on unrecorded).
fn recording_opened(
    s: &Services,
    call_id: &CallId,
    done: Result<Result<Recording, RecordError>, tokio::task::JoinError>,
) -> Option<Recording> {
    let error = match done {
        Ok(Ok(rec)) => return Some(rec),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    // Loud, stored on the call, and the call goes on.
    error!(error = %error, "recording could not start; the call continues unrecorded");
    s.store.send(StoreCmd::RecordingFailed {
        id: call_id.clone(),
        error,
    });
    None
}

/// Closes a recording and sums it: (SHA-256, error).
async fn finish_recording(rec: crate::media::recorder::Recording) -> RecordingOutcome {
    let closed = match rec.close().await {
        Ok(closed) => closed,
        Err(e) => {
            // Audio after a failed write is not in the file: say how much.
            let lost_ms = match &e {
                crate::media::recorder::RecordError::Write { unwritten_ms, .. } => {
                    Some(*unwritten_ms as i64)
                }
                _ => None,
            };
            return RecordingOutcome {
                error: Some(e.to_string()),
                lost_ms,
                ..Default::default()
            };
        }
    };
    let lost_ms = (closed.lost_samples > 0).then(|| closed.lost_ms() as i64);
    let p = closed.path.clone();
    let (sha256, error) = match tokio::task::spawn_blocking(move || sha256_file(&p)).await {
        Ok(Ok(sum)) => (Some(sum), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(e) => (None, Some(e.to_string())),
    };
    RecordingOutcome {
        sha256,
        error,
        lost_ms,
    }
}

/// Closes a consultation's recording and stores its checksum, off the call.
fn close_consult(s: &Arc<Services>, transfer: String, rec: crate::media::recorder::Recording) {
    let store = s.store.clone();
    tokio::spawn(async move {
        let outcome = finish_recording(rec).await;
        store.send(StoreCmd::TransferRecording {
            id: transfer,
            outcome,
        });
    });
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

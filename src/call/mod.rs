//! One task per call: answer, greet, queue with position prompts, record,
//! and close the record whatever happened.
//!
//! The call never waits on the database (records go to the store writer)
//! and never drops the caller for load: past a queue's maximum wait it
//! overflows to the next queue and keeps waiting, recorded.

mod callback;
mod driver;
mod feature;
mod leg;
pub mod machine;
pub mod paths;
mod transfer;

pub use callback::Callbacks;
use driver::converse;
use machine::EndCause;
pub use transfer::{Control, Controls};

use crate::acd::runtime::AcdHandle;
use crate::config::Config;
use crate::ids::{CallId, IncidentId, TransferId};
use crate::leg::{AgentLegEvent, LegEnd, LegEvent};
use crate::live::Live;
use crate::media::ports::PortPool;
use crate::media::ports::RtpSocket;
use crate::media::prompts::Prompts;
use crate::media::recorder::{sha256_file, Recorder};
use crate::media::sdp::{self, LocalAudio, Negotiated};
use crate::sip::request::Location;
use crate::sip::{AgentLeg, CallKind, IncomingCall, SipHandle};
use crate::store::{now_ms, NewCall, NewIncident, RecordingOutcome, StoreCmd, StoreWriter};
use std::sync::Arc;
use std::time::Instant;
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
    /// What the configuration says that calls decide on.
    pub rules: Arc<machine::Rules>,
    /// Whether this node leads (only the leader places call-backs).
    pub leadership: crate::cluster::Leadership,
    /// The repeat prank callers, whose calls wait behind every other.
    pub pranks: crate::pranks::Pranks,
}

/// A call whose end is not on record yet. Dropped so (its task panicked
/// or was dropped before the end), it puts the end on record as
/// `internal_error`: a call's record is closed whatever happens.
pub(crate) struct Unended {
    store: StoreWriter,
    id: CallId,
    armed: bool,
}

impl Unended {
    pub fn new(store: &StoreWriter, id: &CallId) -> Unended {
        Unended {
            store: store.clone(),
            id: id.clone(),
            armed: true,
        }
    }

    /// Puts the end on record.
    pub fn end(mut self, cause: EndCause, wait_ms: Option<i64>) {
        record_end(&self.store, &self.id, &cause, wait_ms);
        self.armed = false;
    }

    /// Someone else put the end on record, or will (the driver takes the
    /// call over, with an `Unended` of its own).
    pub fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for Unended {
    fn drop(&mut self) {
        if self.armed {
            error!(call = %self.id, "a call's task ended before its end was on record");
            record_end(&self.store, &self.id, &EndCause::InternalError, None);
        }
    }
}

/// Puts a call's end on record.
pub(crate) fn record_end(
    store: &StoreWriter,
    call: &CallId,
    cause: &EndCause,
    wait_ms: Option<i64>,
) {
    store.send(StoreCmd::Ended {
        id: call.clone(),
        at: now_ms(),
        wait_ms,
        cause: cause.as_str().to_string(),
    });
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
    s.store.send(arrival(
        (&call_id, &incident_id),
        &info,
        &route,
        trunk,
        &location,
        arrived_ms,
        s.config.server.node(),
    ));
    let unended = Unended::new(&s.store, &call_id);

    // The offer, if the INVITE had one (else we offer in the 200 OK).
    let offer = match info.sdp.as_deref().map(sdp::parse) {
        None => None,
        Some(Ok(remote)) => match sdp::negotiate(&remote) {
            Ok(n) => Some((remote, n)),
            Err(e) => {
                warn!(error = %e, "refusing a call whose offer has no G.711");
                leg.reject(488, "Not Acceptable Here");
                return unended.end(EndCause::NoCommonCodec, None);
            }
        },
        Some(Err(e)) => {
            warn!(error = %e, "refusing a call with an unreadable offer");
            leg.reject(488, "Not Acceptable Here");
            return unended.end(EndCause::BadSdp, None);
        }
    };

    let rtp = match s.ports.allocate() {
        Ok(r) => r,
        Err(e) => {
            // Only a full port range gets here; 503 lets the trunk try
            // another center at once rather than ring into nothing.
            error!(error = %e, "no RTP port for an emergency call");
            leg.reject(503, "Service Unavailable");
            return unended.end(EndCause::NoMediaPort, None);
        }
    };

    if !route.answer_delay.is_zero() {
        leg.ringing();
        tokio::select! {
            _ = tokio::time::sleep(route.answer_delay) => {}
            ev = leg.next_event() => {
                if let LegEvent::Ended(why) = ev {
                    info!(cause = why.cause(), "caller left before answer");
                    return unended.end(EndCause::Caller(why), None);
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
        return unended.end(EndCause::Caller(LegEnd::Cancelled), None);
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
                    return unended.end(EndCause::BadSdp, Some(0));
                }
            },
            LegEvent::Ended(why) => {
                return unended.end(EndCause::Caller(why), Some(0));
            }
            _ => {
                warn!("ACK without an answer to our offer; ending the call");
                leg.hangup().await;
                return unended.end(EndCause::BadSdp, Some(0));
            }
        },
    };
    unended.hand_over();
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

/// The records of a call as it arrives: the call, and its incident.
fn arrival(
    (call_id, incident_id): (&CallId, &IncidentId),
    info: &crate::sip::request::InviteInfo,
    route: &crate::config::Route,
    trunk: Option<String>,
    location: &Location,
    arrived_ms: i64,
    node: &str,
) -> StoreCmd {
    StoreCmd::NewCall(Box::new((
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
            node: Some(node.to_string()),
        },
        NewIncident {
            id: incident_id.clone(),
            service: route.service.clone(),
            caller_number: info.caller_number.clone(),
            location_text: location.text.clone(),
            latitude: location.latitude,
            longitude: location.longitude,
            geolocation: info.geolocation.clone(),
            created_at: arrived_ms,
        },
    )))
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
                    AgentLegEvent::Failed(_) => return LegEvent::Ended(LegEnd::Closed),
                    // A called-back caller does not transfer us anywhere
                    // (answered beside, so reading stays cancel-safe).
                    AgentLegEvent::Refer { responder, .. } => {
                        tokio::spawn(responder.reject(603));
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
fn close_consult(s: &Arc<Services>, transfer: TransferId, rec: crate::media::recorder::Recording) {
    let store = s.store.clone();
    tokio::spawn(async move {
        let outcome = finish_recording(rec).await;
        store.send(StoreCmd::TransferRecording {
            id: transfer.to_string(),
            outcome,
        });
    });
}

fn codec_name(n: &Negotiated) -> &'static str {
    match n.law {
        crate::media::g711::Law::Alaw => "PCMA",
        crate::media::g711::Law::Ulaw => "PCMU",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Places, Store};

    /// A bug in a call's task must not leave its call open on record.
    #[tokio::test]
    async fn a_call_task_that_panics_still_puts_its_end_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db?mode=rwc", dir.path().display());
        let store = Store::lazy(&url).unwrap();
        store.migrate().await.unwrap();
        let writer = StoreWriter::spawn(store.clone(), Places::default(), |_| {});
        let id = CallId("c1".into());
        let (c, i) = crate::store::tests::call("c1", "i1", "0812", now_ms());
        writer.send(StoreCmd::NewCall(Box::new((c, i))));
        let (w, call) = (writer.clone(), id.clone());
        let task = tokio::spawn(async move {
            let _unended = Unended::new(&w, &call);
            panic!("a bug in the call's task");
        });
        assert!(task.await.unwrap_err().is_panic());
        // One that ended as it should is not closed twice.
        Unended::new(&writer, &CallId("c2".into())).hand_over();
        writer.flush().await;
        let row = store.get_call("c1").await.unwrap().expect("the call");
        assert_eq!(row.end_cause.as_deref(), Some("internal_error"));
        assert!(row.ended_at.is_some());
        assert!(store.get_call("c2").await.unwrap().is_none());
    }
}

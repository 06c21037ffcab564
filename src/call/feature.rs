//! Feature codes dialed by an agent's softphone (`*11` ready, `*12` not
//! ready, `*13` log out): the state changes, the phone hears two short
//! beeps (done) or one low tone (refused, e.g. phone not registered), and
//! the call ends.

use super::Services;
use crate::acd::Requested;
use crate::leg::LegEvent;
use crate::media::prompts::{tone, Segment};
use crate::media::sdp::{self, LocalAudio};
use crate::media::session::{CallRecording, MediaCommand, MediaEvent, MediaParams};
use crate::sip::request::InviteInfo;
use crate::sip::routing::FeatureCode;
use crate::sip::ServerLeg;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub(super) async fn run(
    s: Arc<Services>,
    mut leg: ServerLeg,
    info: InviteInfo,
    agent: String,
    code: FeatureCode,
) {
    let req = match code {
        FeatureCode::Ready => Requested::Ready,
        FeatureCode::NotReady => Requested::NotReady("break".into()),
        FeatureCode::LoggedOut => Requested::LoggedOut,
    };
    let result = s.acd.set_state(agent.clone(), req).await;
    match &result {
        Ok(()) => info!("agent state changed from the phone"),
        Err(e) => warn!(error = %e, "agent state change refused"),
    }
    let Some(offer) = info.sdp.as_deref().and_then(|b| sdp::parse(b).ok()) else {
        leg.reject(488, "Not Acceptable Here");
        return;
    };
    let Ok(n) = sdp::negotiate(&offer) else {
        leg.reject(488, "Not Acceptable Here");
        return;
    };
    let Ok(rtp) = s.ports.allocate() else {
        leg.reject(503, "Service Unavailable");
        return;
    };
    let local = LocalAudio::new(s.config.server.sip.public_ip, rtp.port);
    if leg
        .answer(sdp::answer(
            &local,
            &n,
            sdp::answer_direction(offer.direction),
        ))
        .is_err()
    {
        return;
    }
    let confirmation = match result {
        Ok(()) => vec![
            Segment::Silence(1600),
            Segment::Audio(tone(880.0, 150)),
            Segment::Silence(800),
            Segment::Audio(tone(880.0, 150)),
            Segment::Silence(800),
        ],
        Err(_) => vec![
            Segment::Silence(1600),
            Segment::Audio(tone(330.0, 800)),
            Segment::Silence(800),
        ],
    };
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let (cmd_tx, media) = crate::media::reactor::start(
        rtp,
        MediaParams::new(&n, offer.addr, Duration::from_secs(10)),
        CallRecording::Off,
        ev_tx,
    );
    let _ = cmd_tx.send(MediaCommand::Play(confirmation));
    let hang_up = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(MediaEvent::Drained) | Some(MediaEvent::RtpTimeout) | None => break true,
                Some(_) => {}
            },
            ev = leg.next_event() => match ev {
                LegEvent::Ended(_) => break false,
                LegEvent::ReOffer { responder, .. } => responder.reject(488).await,
                LegEvent::Confirmed { .. } => {}
            },
            _ = tokio::time::sleep(Duration::from_secs(10)) => break true,
        }
    };
    if hang_up {
        leg.hangup().await;
    }
    let _ = cmd_tx.send(MediaCommand::Stop);
    let _ = media.await;
}

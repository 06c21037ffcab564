//! Calling an abandoned caller back: a supervisor asks from the panel;
//! siaga calls the number through a trunk's `outbound` address, and when
//! the caller answers, treats the call like one that came in: a prompt
//! ("this is a call-back from 112"), the queue it first waited in, ahead
//! of callers who came later, recorded, bridged to an agent, on the same
//! incident.

use super::machine::EndCause;
use super::{converse, CallerLeg, Conversation, Services};
use crate::ids::{CallId, IncidentId};
use crate::leg::{AgentFailure, AgentLegEvent};
use crate::media::sdp::{self, LocalAudio};
use crate::sip::request::Location;
use crate::store::{now_ms, CallRow, Store};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, info_span, warn, Instrument};

/// How long the caller's phone may ring before the call-back gives up.
const RING_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Callbacks {
    services: Arc<Services>,
    store: Store,
    /// Abandoned calls being called back now: one call-back at a time each.
    busy: Arc<Mutex<HashSet<String>>>,
}

/// A number a trunk can dial: digits, an optional leading +.
fn dialable(number: &str) -> Option<&str> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    (digits.len() >= 3 && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(number)
}

impl Callbacks {
    pub fn new(services: Arc<Services>, store: Store) -> Callbacks {
        Callbacks {
            services,
            store,
            busy: Arc::default(),
        }
    }

    /// Places the call-back; returns the new call's id at once (the call
    /// goes on in its own task).
    pub async fn start(&self, of: CallRow, requested_by: &str) -> Result<String, String> {
        if !self.services.leadership.leads() {
            return Err("this node stands by: call-backs are placed by the leader".into());
        }
        if of.direction != "inbound" {
            return Err("only a caller's own call can be called back".into());
        }
        // A caller cut off by a node's failure is called back even if an
        // agent had them: we cut them off.
        let cut_off = of.end_cause.as_deref() == Some("node_failure");
        if of.ended_at.is_none() || (of.agent_answered_at.is_some() && !cut_off) {
            return Err(
                "only an abandoned call (ended before an agent answered) is called back".into(),
            );
        }
        let number = of
            .caller_number
            .as_deref()
            .and_then(dialable)
            .ok_or("the caller's number is unknown or not dialable")?
            .to_string();
        let config = &self.services.config;
        let trunk = config
            .server
            .trunks
            .iter()
            .filter(|t| t.outbound.is_some())
            .find(|t| of.trunk.as_deref() == Some(t.name.as_str()))
            .or_else(|| config.server.trunks.iter().find(|t| t.outbound.is_some()))
            .ok_or("no trunk has an `outbound` address for call-backs (sip-config/siaga.toml)")?;
        let uri = trunk
            .outbound
            .as_deref()
            .unwrap_or_default()
            .replace("{number}", &number);
        let route = config
            .dialplan
            .routes
            .iter()
            .find(|r| r.name == of.route)
            .cloned()
            .ok_or_else(|| format!("the call's route `{}` is no longer configured", of.route))?;
        {
            let mut busy = crate::lock(&self.busy);
            if !busy.insert(of.id.clone()) {
                return Err("this caller is being called back already".into());
            }
        }
        let call_id = CallId::new();
        if let Err(e) = self
            .store
            .insert_callback(
                call_id.as_str(),
                &of,
                &uri,
                requested_by,
                now_ms(),
                self.services.leadership.node(),
            )
            .await
        {
            self.release(&of.id);
            warn!(error = %e, "call-back not recorded; not placed");
            return Err("the database is unavailable; try again".into());
        }
        info!(call = %of.id, callback = %call_id, %number, by = requested_by, "calling back");
        let me = self.clone();
        let span = info_span!("callback", call_id = %call_id, incident_id = %of.incident_id);
        let id = call_id.to_string();
        self.services.tracker.spawn(
            async move {
                me.run(call_id, of.clone(), uri, number, route).await;
                me.release(&of.id);
            }
            .instrument(span),
        );
        Ok(id)
    }

    fn release(&self, of: &str) {
        crate::lock(&self.busy).remove(of);
    }

    async fn run(
        &self,
        call_id: CallId,
        of: CallRow,
        uri: String,
        number: String,
        route: crate::config::Route,
    ) {
        let s = &self.services;
        let unended = super::Unended::new(&s.store, &call_id);
        let started_ms = now_ms();
        let rtp = match s.ports.allocate() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "no RTP port for a call-back");
                return unended.end(EndCause::NoMediaPort, None);
            }
        };
        let local = LocalAudio::new(s.config.server.sip.public_ip, rtp.port);
        let mut leg = match s
            .sip
            .call_uri(&uri, &route.service, sdp::offer(&local), None)
        {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, %uri, "call-back INVITE failed");
                return unended.end(EndCause::CallbackFailed, None);
            }
        };
        let deadline = tokio::time::Instant::now() + RING_LIMIT;
        let answer = loop {
            tokio::select! {
                ev = leg.next_event() => match ev {
                    AgentLegEvent::Trying | AgentLegEvent::Ringing => {}
                    AgentLegEvent::Refer { responder, .. } => responder.reject(603).await,
                    AgentLegEvent::Answered { sdp: body } => break body,
                    AgentLegEvent::Failed(f) => {
                        info!(failure = ?f, "the caller did not take the call-back");
                        return unended.end(EndCause::CallbackNotTaken(f), None);
                    }
                    AgentLegEvent::ReOffer { responder, .. } => responder.reject(491).await,
                    AgentLegEvent::Ended | AgentLegEvent::Lost => {
                        return unended.end(EndCause::CallbackFailed, None);
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    info!("the caller did not answer the call-back");
                    leg.end().await;
                    return unended.end(EndCause::CallbackNotTaken(AgentFailure::NoAnswer), None);
                }
                _ = s.hangup_all.cancelled() => {
                    leg.end().await;
                    return unended.end(EndCause::Shutdown, None);
                }
            }
        };
        let negotiated =
            match sdp::parse(&answer).and_then(|r| sdp::negotiate(&r).map(|n| (r.addr, n))) {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "call-back answered without usable audio; hanging up");
                    leg.end().await;
                    return unended.end(EndCause::BadSdp, None);
                }
            };
        info!("the caller answered the call-back");
        // Served as if waiting since the first call: ahead of later callers.
        let waited = Duration::from_millis(now_ms().saturating_sub(of.arrived_at).max(0) as u64);
        let arrived = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        unended.hand_over();
        converse(
            s.clone(),
            Conversation {
                call_id,
                incident_id: IncidentId(of.incident_id.clone()),
                caller: CallerLeg::Outbound(leg),
                caller_number: Some(number),
                location: Location::default(),
                greeting: "callback".into(),
                route,
                arrived,
                arrived_ms: started_ms,
                answered_ms: now_ms(),
                negotiated: negotiated.1,
                remote_addr: negotiated.0,
                rtp,
                local,
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::dialable;

    #[test]
    fn only_plain_numbers_are_dialled() {
        assert_eq!(dialable("081234567890"), Some("081234567890"));
        assert_eq!(dialable("+6281234567890"), Some("+6281234567890"));
        assert_eq!(dialable("12"), None);
        assert_eq!(dialable("0812@evil"), None);
        assert_eq!(dialable("0812;transport=tcp"), None);
        assert_eq!(dialable(""), None);
    }
}

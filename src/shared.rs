//! What the nodes share besides calls: where each agent's phone is and how
//! each agent's desk stands (ready, not ready and why, logged out). The
//! leader writes both to the database as they change; a node that starts
//! leading (a node alone: at its start) takes them before its first call,
//! so a take-over neither loses the phones nor the agents' states.

use crate::acd::runtime::AcdHandle;
use crate::acd::{AcdError, AgentSnapshot, AgentState, Reach, Requested};
use crate::cluster::Leadership;
use crate::sip::{Binding, SipHandle};
use crate::store::{now_ms, AgentDesk, Registration, Store, StoreCmd, StoreWriter};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The parts `keep_agents` works with.
pub struct Agents {
    pub store: Store,
    pub records: StoreWriter,
    pub sip: SipHandle,
    pub acd: AcdHandle,
    pub leadership: Leadership,
}

/// A binding as the database keeps it, its expiry on the wall clock.
pub fn on_record(agent: &str, b: &Binding) -> Registration {
    let left = b.expires_at.saturating_duration_since(Instant::now());
    Registration {
        agent: agent.to_string(),
        contact: b.contact.clone(),
        source: b.source.to_string(),
        transport: b.transport.to_string(),
        path: b.path.join("\n"),
        expires_at: now_ms() + left.as_millis() as i64,
    }
}

/// A binding on record as the registrar keeps it; None once expired or
/// when its address does not read.
fn in_memory(r: &Registration) -> Option<(String, Binding)> {
    let left = u64::try_from(r.expires_at - now_ms()).ok()?;
    let binding = Binding {
        contact: r.contact.clone(),
        source: r.source.parse().ok()?,
        transport: if r.transport == "tcp" { "tcp" } else { "udp" },
        path: r
            .path
            .lines()
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        expires_at: Instant::now() + Duration::from_millis(left),
    };
    Some((r.agent.clone(), binding))
}

/// An agent's desk, as kept: on a call, ringing or in wrap-up counts as
/// ready (what the agent asked for last).
type Desk = (&'static str, Option<String>);

fn desk_of(state: &AgentState) -> Desk {
    match state {
        AgentState::LoggedOut => ("logged_out", None),
        AgentState::NotReady { reason } => ("not_ready", Some(reason.clone())),
        AgentState::Ready
        | AgentState::Ringing { .. }
        | AgentState::OnCall { .. }
        | AgentState::WrapUp => ("ready", None),
    }
}

fn desks(agents: &[AgentSnapshot]) -> HashMap<String, Desk> {
    agents
        .iter()
        .map(|a| (a.id.clone(), desk_of(&a.state)))
        .collect()
}

/// The desks on record that could not be set yet because their agent had
/// no phone on this node (a browser phone reconnects after the take-over;
/// a phone whose binding had run out registers again): those whose agent
/// is reachable now and still logged out, to set now. An agent whose
/// state someone set meanwhile is no longer waited for.
fn due(
    waiting: &mut HashMap<String, Requested>,
    now: &[AgentSnapshot],
) -> Vec<(String, Requested)> {
    let mut out = Vec::new();
    for a in now {
        if a.state != AgentState::LoggedOut {
            waiting.remove(&a.id);
        } else if a.registered {
            if let Some(asked) = waiting.remove(&a.id) {
                out.push((a.id.clone(), asked));
            }
        }
    }
    out
}

/// How often at most the desk keeper reads the ACD's agents.
const PACE: Duration = Duration::from_millis(100);

/// Each time `led` says this node starts leading, takes the phones and
/// desks on record; while it leads, writes each desk that changes. Desks
/// are written only after they were taken, so a new leader's empty start
/// never overwrites what the old leader left; a desk whose agent has no
/// phone here yet is set when the phone is back.
pub async fn keep_agents(a: Agents, mut led: mpsc::UnboundedReceiver<()>) {
    let mut changes = a.acd.changes();
    let mut written: Option<HashMap<String, Desk>> = None;
    let mut waiting = HashMap::new();
    loop {
        tokio::select! {
            l = led.recv() => {
                if l.is_none() {
                    return;
                }
                waiting = take(&a).await;
                written = Some(desks(&a.acd.agents().await));
            }
            c = changes.changed() => {
                if c.is_err() {
                    return;
                }
                let Some(w) = written.as_mut() else { continue };
                if !a.leadership.leads() {
                    continue;
                }
                let now = a.acd.agents().await;
                for (agent, asked) in due(&mut waiting, &now) {
                    info!(%agent, ?asked, "an agent's desk on record set now that their phone is here");
                    if let Err(e) = a.acd.set_state(agent.clone(), asked).await {
                        info!(%agent, reason = %e, "an agent's desk on record not taken");
                    }
                }
                for (agent, desk) in desks(&now) {
                    if w.get(&agent) != Some(&desk) {
                        a.records.send(StoreCmd::Desk(AgentDesk {
                            agent: agent.clone(),
                            state: desk.0.to_string(),
                            reason: desk.1.clone(),
                            changed_at: now_ms(),
                        }));
                        w.insert(agent, desk);
                    }
                }
                // The ACD changes with every call; its agents are read at
                // most every PACE, the changes between taken together.
                tokio::time::sleep(PACE).await;
            }
        }
    }
}

/// Takes the phones, then the desks, on record. Returns the desks that
/// wait for their agent's phone.
async fn take(a: &Agents) -> HashMap<String, Requested> {
    let mut waiting = HashMap::new();
    match a.store.registrations(now_ms()).await {
        Ok(rows) => {
            let bindings: Vec<_> = rows.iter().filter_map(in_memory).collect();
            info!(bindings = bindings.len(), "phone bindings on record taken");
            // Told to the ACD here, ahead of the desks below, on the same
            // queue of commands (the registration events come later).
            let mut phones: Vec<String> = bindings.iter().map(|(agent, _)| agent.clone()).collect();
            phones.dedup();
            a.sip.restore_bindings(bindings);
            for agent in phones {
                a.acd.reachable(agent, Reach::Phone, true);
            }
        }
        Err(e) => {
            warn!(error = %e, "phone bindings on record not read; phones are reached once they register again")
        }
    }
    match a.store.agent_desks().await {
        Ok(rows) => {
            for d in rows {
                let asked = match d.state.as_str() {
                    "ready" => Requested::Ready,
                    "not_ready" => Requested::NotReady(d.reason.clone().unwrap_or_default()),
                    _ => continue,
                };
                match a.acd.set_state(d.agent.clone(), asked.clone()).await {
                    Err(AcdError::NotRegistered) => {
                        waiting.insert(d.agent, asked);
                    }
                    Err(e) => {
                        info!(agent = %d.agent, state = %d.state, reason = %e, "an agent's desk on record not taken")
                    }
                    Ok(()) => {}
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "agents' desks on record not read; agents set their state again")
        }
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, state: AgentState, registered: bool) -> AgentSnapshot {
        AgentSnapshot {
            id: id.into(),
            agency: "ntpd".into(),
            skills: Default::default(),
            state,
            in_state_ms: 0,
            registered,
            browser: false,
        }
    }

    /// A desk waits until its agent has a phone here, is set once, and is
    /// dropped if someone set the agent's state meanwhile.
    #[test]
    fn a_desk_waits_for_its_agents_phone_and_is_set_once() {
        let mut waiting: HashMap<String, Requested> = [
            ("ct-01".to_string(), Requested::Ready),
            ("ct-02".to_string(), Requested::NotReady("istirahat".into())),
            ("ct-03".to_string(), Requested::Ready),
        ]
        .into();
        let phoneless = [
            agent("ct-01", AgentState::LoggedOut, false),
            agent("ct-02", AgentState::LoggedOut, false),
            agent("ct-03", AgentState::LoggedOut, false),
        ];
        assert!(due(&mut waiting, &phoneless).is_empty());
        assert_eq!(waiting.len(), 3);

        let back = [
            agent("ct-01", AgentState::LoggedOut, true),
            agent("ct-02", AgentState::LoggedOut, false),
            agent("ct-03", AgentState::Ready, true),
        ];
        assert_eq!(
            due(&mut waiting, &back),
            vec![("ct-01".to_string(), Requested::Ready)]
        );
        assert_eq!(
            waiting.keys().collect::<Vec<_>>(),
            ["ct-02"],
            "ct-01 set, ct-03 set by someone"
        );
        assert!(due(&mut waiting, &back).is_empty(), "once");
    }
}

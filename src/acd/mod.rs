//! The ACD: queues of waiting callers, agents with skills, and who gets
//! which call.
//!
//! Pure and deterministic: events and `now` go in, actions come out. It
//! never touches a socket or reads the clock, so tests drive it with a fake
//! clock (`runtime` is the thin task that feeds it real time).
//!
//! Rules, in the order `poll` applies them:
//! 1. wrap-up ends: the agent is ready again;
//! 2. an offer rings past the queue's `ring_timeout`: the agent is set not
//!    ready ("no_answer") and the call is offered anew at once;
//! 3. a caller past `max_wait` moves to the overflow queue (never while
//!    an agent's phone rings for it);
//! 4. waiting calls, silent emergencies (`urgent`: the caller pressed 5
//!    twice) before all others and repeat prank callers (`low`) after
//!    them, then highest queue priority first, then
//!    oldest arrival first (fair across queues; the same instant goes in
//!    queue order, then by queue name), are offered to a ready, registered
//!    agent meeting the call's requirements, chosen by the queue's
//!    strategy.
//!
//! A call's requirements are its queue's `require` plus its route's; after
//! an escalation step's `after`, they are that step's `require` instead.
//! A call queued for a named agent (`enqueue_for`: a transfer to one
//! dispatcher) is offered to that agent alone, who must still meet them.

pub mod runtime;

use crate::config::{parse_overflow, AgentConfig, Overflow, QueueConfig, Strategy};
use crate::ids::CallId;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

pub type Skills = BTreeMap<String, u8>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentState {
    LoggedOut,
    Ready,
    Ringing { call_id: CallId },
    OnCall { call_id: CallId },
    WrapUp,
    NotReady { reason: String },
}

/// What an agent (or the panel for them) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    Ready,
    NotReady(String),
    LoggedOut,
}

/// How an agent can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A SIP phone with an unexpired registration.
    Phone,
    /// The panel's browser softphone, while its tab is connected.
    Browser,
}

#[derive(Debug, Clone)]
struct Agent {
    agency: String,
    skills: Skills,
    state: AgentState,
    since: Instant,
    /// Since when the agent has been free: orders longest-idle-first.
    idle_since: Instant,
    wrap_until: Option<Instant>,
    /// Has an unexpired registration.
    by_phone: bool,
    /// Has a panel tab with the browser phone on.
    by_browser: bool,
}

impl Agent {
    /// Either phone is enough.
    fn reachable(&self) -> bool {
        self.by_phone || self.by_browser
    }

    /// Ready, and a phone to ring: what `assign` counts and offers to.
    fn takes_calls(&self) -> bool {
        self.state == AgentState::Ready && self.reachable()
    }
}

#[derive(Debug, Clone)]
struct Waiting {
    call: CallId,
    /// When the caller first reached us: orders callers across queues.
    arrived: Instant,
    /// When the caller entered this queue: starts max-wait and escalation.
    entered: Instant,
    route_require: Skills,
    /// Offered to this agent alone (a transfer to a named dispatcher).
    only: Option<String>,
    offer: Option<(String, Instant)>,
    standing: Standing,
}

/// Where a caller stands against the others, whatever their queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// A silent emergency (the caller pressed 5 twice): ahead of all.
    Urgent,
    Normal,
    /// A number with repeated prank calls: still answered, behind all.
    Low,
}

impl Waiting {
    /// A queue's order: by standing, then by arrival.
    fn rank(&self) -> (Standing, Instant) {
        (self.standing, self.arrived)
    }
}

#[derive(Debug, Clone)]
struct QueueState {
    cfg: QueueConfig,
    overflow: Option<Overflow>,
    waiting: Vec<Waiting>,
    last_rr: Option<String>,
}

/// What the ACD decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcdAction {
    /// Ring this agent for this call.
    Offer {
        call: CallId,
        agent: String,
        queue: String,
    },
    /// The agent did not answer in time: stop ringing it.
    RingTimeout { call: CallId, agent: String },
    /// The caller waited `max_wait`; the call leaves the queues for this SIP
    /// destination (another center). If that fails, the call task puts it
    /// back with `enqueue`, keeping its arrival time.
    OverflowedToSip {
        call: CallId,
        from: String,
        target: String,
    },
    /// The caller waited `max_wait` and now waits in `to`.
    Overflowed {
        call: CallId,
        from: String,
        to: String,
    },
}

/// Why an offer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferFailure {
    /// Rang out, or the phone said busy/unavailable.
    NoAnswer,
    /// The agent declined.
    Declined,
    /// The phone could not be reached.
    Unreachable,
}

impl OfferFailure {
    fn reason(self) -> &'static str {
        match self {
            OfferFailure::NoAnswer => "no_answer",
            OfferFailure::Declined => "declined",
            OfferFailure::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    pub name: String,
    pub waiting: Vec<WaitingSnapshot>,
    /// Agents able to take this queue's calls, counted by state.
    pub agents: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingSnapshot {
    pub call_id: CallId,
    pub position: u32,
    pub wait_ms: u64,
    pub ringing_agent: Option<String>,
    /// A silent emergency (the caller pressed 5 twice).
    pub urgent: bool,
    /// A repeat prank caller, waiting behind every other.
    pub low: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSnapshot {
    pub id: String,
    pub agency: String,
    pub skills: Skills,
    #[serde(flatten)]
    pub state: AgentState,
    pub in_state_ms: u64,
    /// Reachable at all: a registered phone or a browser phone.
    pub registered: bool,
    /// Takes calls in the panel (the browser softphone).
    pub browser: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcdError {
    #[error("no queue named `{0}`")]
    UnknownQueue(String),
    #[error("no agent named `{0}`")]
    UnknownAgent(String),
    #[error("the agent has no phone: none registered, and no browser phone on")]
    NotRegistered,
    #[error("the agent is on a call; change state after it")]
    Busy,
}

#[derive(Debug, Clone)]
pub struct Acd {
    queues: BTreeMap<String, QueueState>,
    agents: BTreeMap<String, Agent>,
}

/// A queue's place in one `assign` pass.
struct Cursor<'a> {
    name: &'a String,
    q: &'a mut QueueState,
    /// The first caller not yet looked at.
    next: usize,
    /// Requirements no ready agent met in this pass.
    unserved: Vec<Skills>,
}

fn meets(skills: &Skills, require: &Skills) -> bool {
    require
        .iter()
        .all(|(s, min)| skills.get(s).is_some_and(|l| l >= min))
}

fn state_name(s: &AgentState) -> &'static str {
    match s {
        AgentState::LoggedOut => "logged_out",
        AgentState::Ready => "ready",
        AgentState::Ringing { .. } => "ringing",
        AgentState::OnCall { .. } => "on_call",
        AgentState::WrapUp => "wrap_up",
        AgentState::NotReady { .. } => "not_ready",
    }
}

impl QueueState {
    /// The requirements of a waiting call at `now`: borrowed from the
    /// queue's configuration unless the route adds to them (a pass of
    /// `assign` asks this of every waiting caller it reaches).
    fn requirement(&self, w: &Waiting, now: Instant) -> Cow<'_, Skills> {
        let waited = now.saturating_duration_since(w.entered);
        let step = self
            .cfg
            .escalation
            .iter()
            .filter(|e| e.after <= waited)
            .max_by_key(|e| e.after);
        match step {
            Some(e) => Cow::Borrowed(&e.require),
            None if w.route_require.is_empty() => Cow::Borrowed(&self.cfg.require),
            None => {
                let mut r = self.cfg.require.clone();
                for (k, v) in &w.route_require {
                    let e = r.entry(k.clone()).or_insert(*v);
                    *e = (*e).max(*v);
                }
                Cow::Owned(r)
            }
        }
    }
}

impl Acd {
    pub fn new(
        configs: &BTreeMap<String, QueueConfig>,
        agents: &BTreeMap<String, AgentConfig>,
        now: Instant,
    ) -> Acd {
        let queues = configs
            .iter()
            .map(|(name, c)| {
                let overflow = c.overflow.as_deref().and_then(parse_overflow);
                let mut cfg = c.clone();
                cfg.escalation.sort_by_key(|e| e.after);
                (
                    name.clone(),
                    QueueState {
                        cfg,
                        overflow,
                        waiting: Vec::new(),
                        last_rr: None,
                    },
                )
            })
            .collect();
        let agents = agents
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    Agent {
                        agency: a.agency.clone(),
                        skills: a.skills.clone(),
                        state: AgentState::LoggedOut,
                        since: now,
                        idle_since: now,
                        wrap_until: None,
                        by_phone: false,
                        by_browser: false,
                    },
                )
            })
            .collect();
        Acd { queues, agents }
    }

    fn set(agent: &mut Agent, state: AgentState, now: Instant) {
        agent.state = state;
        agent.since = now;
    }

    // ----- callers -----

    /// Puts a caller in a queue, ordered by first arrival (a caller that
    /// overflowed keeps its place ahead of later arrivals).
    pub fn enqueue(
        &mut self,
        call: CallId,
        queue: &str,
        route_require: Skills,
        arrived: Instant,
        now: Instant,
    ) -> Result<u32, AcdError> {
        self.remove(&call, now);
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| AcdError::UnknownQueue(queue.to_string()))?;
        let idx = q
            .waiting
            .partition_point(|w| w.rank() <= (Standing::Normal, arrived));
        q.waiting.insert(
            idx,
            Waiting {
                call,
                arrived,
                entered: now,
                route_require,
                only: None,
                offer: None,
                standing: Standing::Normal,
            },
        );
        Ok(idx as u32 + 1)
    }

    /// A waiting caller who pressed 5 twice (a silent emergency) goes
    /// ahead of every caller who did not, in its queue and across queues,
    /// and stays so if it overflows; a repeat prank caller goes behind
    /// every other. False if it is not waiting.
    pub fn stand(&mut self, call: &CallId, standing: Standing) -> bool {
        for q in self.queues.values_mut() {
            if let Some(i) = q.waiting.iter().position(|w| &w.call == call) {
                let mut w = q.waiting.remove(i);
                // A silent emergency stays one.
                if w.standing != Standing::Urgent {
                    w.standing = standing;
                }
                let idx = q.waiting.partition_point(|x| x.rank() <= w.rank());
                q.waiting.insert(idx, w);
                return true;
            }
        }
        false
    }

    /// Puts a call in a queue for one agent alone (who must still meet
    /// the queue's requirements): a transfer to a named dispatcher.
    pub fn enqueue_for(
        &mut self,
        call: CallId,
        queue: &str,
        agent: &str,
        arrived: Instant,
        now: Instant,
    ) -> Result<u32, AcdError> {
        if !self.agents.contains_key(agent) {
            return Err(AcdError::UnknownAgent(agent.to_string()));
        }
        let pos = self.enqueue(call.clone(), queue, Skills::new(), arrived, now)?;
        if let Some(w) = self
            .queues
            .get_mut(queue)
            .and_then(|q| q.waiting.iter_mut().find(|w| w.call == call))
        {
            w.only = Some(agent.to_string());
        }
        Ok(pos)
    }

    /// Takes a caller out (it hung up). Returns the agent whose phone was
    /// ringing for it, now ready again, so its ringing can be stopped.
    pub fn remove(&mut self, call: &CallId, now: Instant) -> Option<String> {
        for q in self.queues.values_mut() {
            if let Some(i) = q.waiting.iter().position(|w| &w.call == call) {
                let w = q.waiting.remove(i);
                let (agent, _) = w.offer?;
                if let Some(a) = self.agents.get_mut(&agent) {
                    if matches!(&a.state, AgentState::Ringing { call_id } if call_id == call) {
                        let next = if a.reachable() {
                            AgentState::Ready
                        } else {
                            AgentState::LoggedOut
                        };
                        Self::set(a, next, now);
                    }
                }
                return Some(agent);
            }
        }
        None
    }

    /// The caller's queue and 1-based position.
    pub fn position(&self, call: &CallId) -> Option<(&str, u32)> {
        self.queues.iter().find_map(|(name, q)| {
            q.waiting
                .iter()
                .position(|w| &w.call == call)
                .map(|i| (name.as_str(), i as u32 + 1))
        })
    }

    // ----- offers -----

    /// The agent answered: the call leaves the queue, the agent is on it.
    pub fn answered(&mut self, call: &CallId, agent: &str, now: Instant) {
        for q in self.queues.values_mut() {
            q.waiting.retain(|w| &w.call != call);
        }
        if let Some(a) = self.agents.get_mut(agent) {
            Self::set(
                a,
                AgentState::OnCall {
                    call_id: call.clone(),
                },
                now,
            );
        }
    }

    /// The offer failed: the agent is set not ready, the call waits again.
    pub fn offer_failed(&mut self, call: &CallId, agent: &str, why: OfferFailure, now: Instant) {
        for q in self.queues.values_mut() {
            for w in q.waiting.iter_mut().filter(|w| &w.call == call) {
                if w.offer.as_ref().is_some_and(|(a, _)| a == agent) {
                    w.offer = None;
                }
            }
        }
        if let Some(a) = self.agents.get_mut(agent) {
            if matches!(&a.state, AgentState::Ringing { call_id } if call_id == call) {
                Self::set(
                    a,
                    AgentState::NotReady {
                        reason: why.reason().into(),
                    },
                    now,
                );
            }
        }
    }

    /// The agent's call ended: wrap-up, then ready.
    pub fn call_ended(&mut self, agent: &str, queue: &str, now: Instant) {
        let wrap = self
            .queues
            .get(queue)
            .map(|q| q.cfg.wrap_up)
            .unwrap_or_default();
        if let Some(a) = self.agents.get_mut(agent) {
            if !a.reachable() {
                Self::set(a, AgentState::LoggedOut, now);
            } else if wrap.is_zero() {
                Self::set(a, AgentState::Ready, now);
                a.idle_since = now;
            } else {
                Self::set(a, AgentState::WrapUp, now);
                a.wrap_until = Some(now + wrap);
            }
        }
    }

    // ----- agents -----

    /// A phone of the agent's came or went: `Reach::Phone` a SIP
    /// registration, `Reach::Browser` the panel's softphone. The agent is
    /// reachable while either is, and is never left ready without one.
    pub fn set_reachable(&mut self, agent: &str, by: Reach, reachable: bool, now: Instant) {
        if let Some(a) = self.agents.get_mut(agent) {
            match by {
                Reach::Phone => a.by_phone = reachable,
                Reach::Browser => a.by_browser = reachable,
            }
            if !a.reachable()
                && matches!(
                    a.state,
                    AgentState::Ready | AgentState::WrapUp | AgentState::NotReady { .. }
                )
            {
                Self::set(a, AgentState::LoggedOut, now);
            }
        }
    }

    pub fn set_state(&mut self, agent: &str, req: Requested, now: Instant) -> Result<(), AcdError> {
        let a = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| AcdError::UnknownAgent(agent.to_string()))?;
        if matches!(
            a.state,
            AgentState::Ringing { .. } | AgentState::OnCall { .. }
        ) {
            return Err(AcdError::Busy);
        }
        match req {
            Requested::Ready => {
                if !a.reachable() {
                    return Err(AcdError::NotRegistered);
                }
                if a.state != AgentState::Ready {
                    Self::set(a, AgentState::Ready, now);
                    a.idle_since = now;
                    a.wrap_until = None;
                }
            }
            Requested::NotReady(reason) => Self::set(a, AgentState::NotReady { reason }, now),
            Requested::LoggedOut => Self::set(a, AgentState::LoggedOut, now),
        }
        Ok(())
    }

    pub fn agent_state(&self, agent: &str) -> Option<&AgentState> {
        self.agents.get(agent).map(|a| &a.state)
    }

    // ----- time -----

    /// Applies every rule whose time has come (see the module docs).
    pub fn poll(&mut self, now: Instant) -> Vec<AcdAction> {
        let mut actions = Vec::new();

        for a in self.agents.values_mut() {
            if a.state == AgentState::WrapUp && a.wrap_until.is_some_and(|t| t <= now) {
                let until = a.wrap_until.take().unwrap_or(now);
                Self::set(a, AgentState::Ready, until);
                a.idle_since = until;
            }
        }

        for q in self.queues.values_mut() {
            let ring = q.cfg.ring_timeout;
            for w in q.waiting.iter_mut() {
                let rung_out = w
                    .offer
                    .as_ref()
                    .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= ring);
                if !rung_out {
                    continue;
                }
                if let Some((agent, _)) = w.offer.take() {
                    if let Some(a) = self.agents.get_mut(&agent) {
                        Self::set(
                            a,
                            AgentState::NotReady {
                                reason: "no_answer".into(),
                            },
                            now,
                        );
                    }
                    actions.push(AcdAction::RingTimeout {
                        call: w.call.clone(),
                        agent,
                    });
                }
            }
        }

        let mut moves = Vec::new();
        for (name, q) in &mut self.queues {
            let Some(target) = &q.overflow else { continue };
            let max_wait = q.cfg.max_wait;
            let mut i = 0;
            while i < q.waiting.len() {
                let w = &q.waiting[i];
                if w.offer.is_none() && now.saturating_duration_since(w.entered) >= max_wait {
                    moves.push((q.waiting.remove(i), name.clone(), target.clone()));
                } else {
                    i += 1;
                }
            }
        }
        for (w, from, to) in moves {
            let call = w.call.clone();
            let to = match to {
                Overflow::Queue(q) => q,
                Overflow::Sip(target) => {
                    actions.push(AcdAction::OverflowedToSip { call, from, target });
                    continue;
                }
            };
            if self
                .enqueue(w.call.clone(), &to, w.route_require.clone(), w.arrived, now)
                .is_err()
            {
                // Config checking prevents this; the caller is never lost.
                let _ = self.enqueue(w.call, &from, w.route_require, w.arrived, w.entered);
                self.stand(&call, w.standing);
                continue;
            }
            self.stand(&call, w.standing);
            actions.push(AcdAction::Overflowed { call, from, to });
        }

        self.assign(now, &mut actions);
        actions
    }

    fn assign(&mut self, now: Instant, actions: &mut Vec<AcdAction>) {
        // Runs after every command, and in a surge a thousand callers wait
        // with every agent busy: then there is nothing to do, and finding
        // that out must not cost a pass over the callers (it was quadratic
        // in them, and took the runtime that answers SIP).
        let mut ready = self.agents.values().filter(|a| a.takes_calls()).count();
        if ready == 0 {
            return;
        }
        let Acd { queues, agents } = self;
        // Each queue holds its callers in arrival order already, so the
        // queues are merged one caller at a time (highest priority, then
        // oldest arrival, then queue name) and the pass stops when the
        // ready agents are used up. Sorting every waiting caller, with its
        // call id and queue name cloned as the key, cost two allocations
        // per caller per poll: when the runtime fell behind, the backlog
        // made each poll slower still (a fifth of the main runtime at 500
        // calls a second in a slow hour).
        let mut cursors: Vec<Cursor> = queues
            .iter_mut()
            .map(|(name, q)| Cursor {
                name,
                q,
                next: 0,
                unserved: Vec::new(),
            })
            .collect();
        while ready > 0 {
            // The best caller not ringing anyone yet; cursors are in name
            // order and only a better key replaces, so names break ties.
            let mut best: Option<(usize, (Standing, i32, Instant))> = None;
            for (k, c) in cursors.iter_mut().enumerate() {
                while c.q.waiting.get(c.next).is_some_and(|w| w.offer.is_some()) {
                    c.next += 1;
                }
                if let Some(w) = c.q.waiting.get(c.next) {
                    let key = (w.standing, -c.q.cfg.priority, w.arrived);
                    if best.is_none_or(|(_, b)| key < b) {
                        best = Some((k, key));
                    }
                }
            }
            let Some((k, _)) = best else { break };
            let c = &mut cursors[k];
            let i = c.next;
            c.next += 1;
            let w = &c.q.waiting[i];
            let req = c.q.requirement(w, now);
            // No agent met these requirements earlier in this pass, and
            // offers only take agents away: with police agents ready and a
            // thousand fire calls waiting, each poll would otherwise scan
            // every agent for every one of them.
            if c.unserved.contains(&req) {
                continue;
            }
            // One pass over the agents, nothing collected or cloned: with
            // a thousand agents ready, sorting them with their names as
            // keys cost a thousand allocations per offer, on the task every
            // call's offer waits for.
            let eligible = agents.iter().filter(|(id, a)| {
                a.takes_calls()
                    && meets(&a.skills, &req)
                    && w.only.as_ref().is_none_or(|o| o == *id)
            });
            let chosen = match c.q.cfg.strategy {
                Strategy::LongestIdle => eligible.min_by_key(|(id, a)| (a.idle_since, *id)),
                Strategy::SkillLevel => {
                    let score = |a: &Agent| -> u32 {
                        req.keys()
                            .map(|s| u32::from(*a.skills.get(s).unwrap_or(&0)))
                            .sum()
                    };
                    eligible.min_by_key(|(id, a)| (std::cmp::Reverse(score(a)), a.idle_since, *id))
                }
                Strategy::RoundRobin => {
                    // The first after the last one offered, in name order
                    // (the map's order); else the first.
                    let mut first = None;
                    let mut after = None;
                    for (id, a) in eligible {
                        first.get_or_insert((id, a));
                        if c.q.last_rr.as_ref().is_none_or(|l| id > l) {
                            after = Some((id, a));
                            break;
                        }
                    }
                    after.or(first)
                }
            };
            let Some((chosen, _)) = chosen else {
                // A call for one named agent says nothing about the others.
                if w.only.is_none() {
                    c.unserved.push(req.into_owned());
                }
                continue;
            };
            let chosen = chosen.clone();
            c.q.last_rr = Some(chosen.clone());
            let w = &mut c.q.waiting[i];
            w.offer = Some((chosen.clone(), now));
            let call = w.call.clone();
            ready -= 1;
            if let Some(a) = agents.get_mut(&chosen) {
                Self::set(
                    a,
                    AgentState::Ringing {
                        call_id: call.clone(),
                    },
                    now,
                );
            }
            actions.push(AcdAction::Offer {
                call,
                agent: chosen,
                queue: c.name.clone(),
            });
        }
    }

    /// When `poll` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for q in self.queues.values() {
            for w in &q.waiting {
                match &w.offer {
                    Some((_, since)) => at(*since + q.cfg.ring_timeout),
                    None => {
                        if q.overflow.is_some() {
                            at(w.entered + q.cfg.max_wait);
                        }
                        for e in &q.cfg.escalation {
                            at(w.entered + e.after);
                        }
                    }
                }
            }
        }
        for t in self.agents.values().filter_map(|a| a.wrap_until) {
            at(t);
        }
        next
    }

    pub fn snapshot(&self, now: Instant) -> Vec<QueueSnapshot> {
        self.queues
            .iter()
            .map(|(name, q)| {
                let mut agents = BTreeMap::new();
                for a in self
                    .agents
                    .values()
                    .filter(|a| meets(&a.skills, &q.cfg.require))
                {
                    *agents.entry(state_name(&a.state).to_string()).or_insert(0) += 1;
                }
                QueueSnapshot {
                    name: name.clone(),
                    waiting: q
                        .waiting
                        .iter()
                        .enumerate()
                        .map(|(i, w)| WaitingSnapshot {
                            call_id: w.call.clone(),
                            position: i as u32 + 1,
                            wait_ms: now.saturating_duration_since(w.arrived).as_millis() as u64,
                            ringing_agent: w.offer.as_ref().map(|(a, _)| a.clone()),
                            urgent: w.standing == Standing::Urgent,
                            low: w.standing == Standing::Low,
                        })
                        .collect(),
                    agents,
                }
            })
            .collect()
    }

    pub fn agents(&self, now: Instant) -> Vec<AgentSnapshot> {
        self.agents
            .iter()
            .map(|(id, a)| AgentSnapshot {
                id: id.clone(),
                agency: a.agency.clone(),
                skills: a.skills.clone(),
                state: a.state.clone(),
                in_state_ms: now.saturating_duration_since(a.since).as_millis() as u64,
                registered: a.reachable(),
                browser: a.by_browser,
            })
            .collect()
    }
}

/// Shorthand for tests and config: `skills(&[("triage", 2)])`.
pub fn skills(pairs: &[(&str, u8)]) -> Skills {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[cfg(test)]
mod tests;

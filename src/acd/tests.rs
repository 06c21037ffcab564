//! One scenario per rule, on a fake clock (`t0 + seconds`).

use super::*;
use crate::config::{AgentConfig, Escalation, QueueConfig, Strategy};
use std::time::Duration;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn id(x: &str) -> CallId {
    CallId(x.into())
}

fn queue(name: &str, f: impl FnOnce(&mut QueueConfig)) -> (String, QueueConfig) {
    let mut q = QueueConfig::new(name, s(600));
    q.wrap_up = s(0);
    f(&mut q);
    (name.to_string(), q)
}

fn agent(name: &str, sk: &[(&str, u8)]) -> (String, AgentConfig) {
    (
        name.to_string(),
        AgentConfig {
            id: name.into(),
            name: name.into(),
            agency: "ntpd".into(),
            skills: skills(sk),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
        },
    )
}

/// An ACD with every agent registered and made ready at `t0 + ready[i]`.
fn acd(
    queues: Vec<(String, QueueConfig)>,
    agents: Vec<(String, AgentConfig)>,
    t0: Instant,
    ready_at: &[u64],
) -> Acd {
    let names: Vec<String> = agents.iter().map(|(n, _)| n.clone()).collect();
    let mut a = Acd::new(
        &queues.into_iter().collect(),
        &agents.into_iter().collect(),
        t0,
    );
    for (i, n) in names.iter().enumerate() {
        a.set_reachable(n, Reach::Phone, true, t0);
        let at = t0 + s(*ready_at.get(i).unwrap_or(&0));
        a.set_state(n, Requested::Ready, at).unwrap();
    }
    a
}

fn offers(actions: &[AcdAction]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            AcdAction::Offer { call, agent, .. } => Some((call.0.clone(), agent.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn longest_idle_agent_gets_the_call() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |_| {})],
        vec![agent("a1", &[]), agent("a2", &[]), agent("a3", &[])],
        t0,
        &[5, 1, 3],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0 + s(10), t0 + s(10))
        .unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(10))),
        vec![("c1".into(), "a2".into())]
    );
    assert_eq!(
        a.agent_state("a2"),
        Some(&AgentState::Ringing { call_id: id("c1") })
    );
}

#[test]
fn skill_level_strategy_picks_the_most_skilled() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| {
            q.strategy = Strategy::SkillLevel;
            q.require = skills(&[("triage", 1)]);
        })],
        vec![
            agent("a1", &[("triage", 2)]),
            agent("a2", &[("triage", 5)]),
            agent("a3", &[("triage", 3)]),
        ],
        t0,
        &[0, 9, 1],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0 + s(10))
        .unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(10))),
        vec![("c1".into(), "a2".into())]
    );
}

#[test]
fn round_robin_takes_agents_in_turn() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| q.strategy = Strategy::RoundRobin)],
        vec![agent("a1", &[]), agent("a2", &[]), agent("a3", &[])],
        t0,
        &[],
    );
    let mut got = Vec::new();
    for i in 0..4u64 {
        let c = id(&format!("c{i}"));
        a.enqueue(c.clone(), "q", Skills::new(), t0 + s(i), t0 + s(i))
            .unwrap();
        let o = offers(&a.poll(t0 + s(i)));
        got.push(o[0].1.clone());
        a.answered(&c, &o[0].1, t0 + s(i));
        a.call_ended(&o[0].1, "q", t0 + s(i));
    }
    assert_eq!(got, ["a1", "a2", "a3", "a1"]);
}

#[test]
fn required_skills_and_minimum_levels_are_respected() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("health", |q| q.require = skills(&[("health", 2)]))],
        vec![
            agent("triage-only", &[("triage", 5)]),
            agent("junior", &[("health", 1)]),
            agent("medic", &[("health", 3)]),
        ],
        t0,
        &[0, 0, 5],
    );
    a.enqueue(id("c1"), "health", Skills::new(), t0, t0 + s(10))
        .unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(10))),
        vec![("c1".into(), "medic".into())]
    );
    // Nobody else qualifies for the next caller.
    a.enqueue(id("c2"), "health", Skills::new(), t0 + s(11), t0 + s(11))
        .unwrap();
    assert!(offers(&a.poll(t0 + s(11))).is_empty());
}

#[test]
fn route_requirements_add_a_language() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| q.require = skills(&[("triage", 1)]))],
        vec![
            agent("id-only", &[("triage", 3), ("id", 3)]),
            agent("jv", &[("triage", 1), ("jv", 2)]),
        ],
        t0,
        &[0, 5],
    );
    a.enqueue(id("c1"), "q", skills(&[("jv", 1)]), t0, t0 + s(10))
        .unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(10))),
        vec![("c1".into(), "jv".into())]
    );
}

#[test]
fn a_call_for_a_named_agent_waits_for_that_agent() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("dispatch", |q| q.require = skills(&[("damkar", 1)]))],
        vec![
            agent("first", &[("damkar", 3)]),
            agent("named", &[("damkar", 1)]),
        ],
        t0,
        &[0, 5],
    );
    a.enqueue_for(id("t1"), "dispatch", "named", t0 + s(10), t0 + s(10))
        .unwrap();
    // Longest idle would choose "first"; only "named" may take it.
    assert_eq!(
        offers(&a.poll(t0 + s(10))),
        vec![("t1".into(), "named".into())]
    );
    assert_eq!(
        a.enqueue_for(id("t2"), "dispatch", "nobody", t0, t0),
        Err(AcdError::UnknownAgent("nobody".into()))
    );
    // While "named" is busy, the call waits; "first" is not offered it.
    a.enqueue_for(id("t3"), "dispatch", "named", t0 + s(11), t0 + s(11))
        .unwrap();
    assert!(offers(&a.poll(t0 + s(11))).is_empty());
}

#[test]
fn escalation_relaxes_requirements_after_a_wait() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| {
            q.require = skills(&[("triage", 1)]);
            q.escalation = vec![Escalation {
                after: s(30),
                require: Skills::new(),
            }];
        })],
        vec![agent("untrained", &[("en", 1)])],
        t0,
        &[],
    );
    a.enqueue(id("c1"), "q", skills(&[("jv", 1)]), t0, t0)
        .unwrap();
    assert_eq!(a.next_deadline(), Some(t0 + s(30)));
    assert!(offers(&a.poll(t0 + s(29))).is_empty());
    assert_eq!(
        offers(&a.poll(t0 + s(30))),
        vec![("c1".into(), "untrained".into())]
    );
}

#[test]
fn higher_priority_queue_is_served_first() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("low", |_| {}), queue("high", |q| q.priority = 10)],
        vec![agent("a1", &[])],
        t0,
        &[],
    );
    a.set_state("a1", Requested::NotReady("break".into()), t0)
        .unwrap();
    a.enqueue(id("old-low"), "low", Skills::new(), t0, t0)
        .unwrap();
    a.enqueue(
        id("new-high"),
        "high",
        Skills::new(),
        t0 + s(20),
        t0 + s(20),
    )
    .unwrap();
    a.set_state("a1", Requested::Ready, t0 + s(21)).unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(21))),
        vec![("new-high".into(), "a1".into())]
    );
}

#[test]
fn oldest_caller_first_across_queues_of_equal_priority() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q112", |_| {}), queue("q119", |_| {})],
        vec![agent("both", &[])],
        t0,
        &[],
    );
    a.set_state("both", Requested::NotReady("break".into()), t0)
        .unwrap();
    a.enqueue(id("second"), "q112", Skills::new(), t0 + s(5), t0 + s(5))
        .unwrap();
    a.enqueue(id("first"), "q119", Skills::new(), t0 + s(1), t0 + s(1))
        .unwrap();
    a.set_state("both", Requested::Ready, t0 + s(6)).unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(6))),
        vec![("first".into(), "both".into())]
    );
}

/// A caller who pressed 5 twice goes ahead of everyone else waiting, in
/// its queue and in a queue of higher priority, later arrivals too; its
/// place says so; the others keep their order behind it; and it stays
/// ahead when it overflows.
#[test]
fn a_silent_emergency_goes_ahead_of_every_other_caller() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![
            queue("q112", |q| {
                q.max_wait = s(60);
                q.overflow = Some("queue:backup".into());
            }),
            queue("q119", |q| q.priority = 10),
            queue("backup", |_| {}),
        ],
        vec![agent("a1", &[])],
        t0,
        &[],
    );
    a.set_state("a1", Requested::NotReady("break".into()), t0)
        .unwrap();
    for (i, c) in ["first", "second", "silent", "fourth"].iter().enumerate() {
        let at = t0 + s(i as u64);
        a.enqueue(id(c), "q112", Skills::new(), at, at).unwrap();
    }
    a.enqueue(id("high"), "q119", Skills::new(), t0, t0)
        .unwrap();
    assert!(a.stand(&id("silent"), Standing::Urgent));
    assert!(!a.stand(&id("nobody"), Standing::Urgent), "not waiting");
    let order = |a: &Acd, q: &str| -> Vec<(String, bool)> {
        a.snapshot(t0 + s(5))
            .into_iter()
            .find(|x| x.name == q)
            .unwrap()
            .waiting
            .into_iter()
            .map(|w| (w.call_id.0, w.urgent))
            .collect()
    };
    assert_eq!(
        order(&a, "q112"),
        [
            ("silent".into(), true),
            ("first".into(), false),
            ("second".into(), false),
            ("fourth".into(), false)
        ]
    );
    // Past q112's max wait, everyone moves to backup: the silent caller
    // still first there.
    assert!(a
        .poll(t0 + s(70))
        .iter()
        .all(|x| !matches!(x, AcdAction::Offer { .. })));
    assert_eq!(order(&a, "backup")[0], ("silent".into(), true));
    a.enqueue(id("late"), "backup", Skills::new(), t0 + s(71), t0 + s(71))
        .unwrap();
    a.set_state("a1", Requested::Ready, t0 + s(72)).unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(72))),
        vec![("silent".into(), "a1".into())],
        "ahead of a queue of higher priority too"
    );
}

/// A repeat prank caller is still queued and still offered, but behind
/// every other caller, however early it came and whatever its queue's
/// priority; a silent emergency from that number goes ahead all the same.
#[test]
fn a_repeat_prank_caller_waits_behind_every_other() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q112", |q| q.priority = 10), queue("q119", |_| {})],
        vec![agent("a1", &[])],
        t0,
        &[],
    );
    a.set_state("a1", Requested::NotReady("break".into()), t0)
        .unwrap();
    a.enqueue(id("prank"), "q112", Skills::new(), t0, t0)
        .unwrap();
    assert!(a.stand(&id("prank"), Standing::Low));
    a.enqueue(id("later"), "q112", Skills::new(), t0 + s(5), t0 + s(5))
        .unwrap();
    a.enqueue(id("other"), "q119", Skills::new(), t0 + s(6), t0 + s(6))
        .unwrap();
    let order: Vec<(String, bool)> = a.snapshot(t0 + s(7))[0]
        .waiting
        .iter()
        .map(|w| (w.call_id.0.clone(), w.low))
        .collect();
    assert_eq!(order, [("later".into(), false), ("prank".into(), true)]);
    let mut served = Vec::new();
    for (i, at) in [8, 9, 10].into_iter().enumerate() {
        a.set_state("a1", Requested::Ready, t0 + s(at)).unwrap();
        let offered = offers(&a.poll(t0 + s(at)));
        assert_eq!(offered.len(), 1, "round {i}");
        served.push(offered[0].0.clone());
        a.remove(&id(&offered[0].0), t0 + s(at));
    }
    assert_eq!(served, ["later", "other", "prank"], "still served, last");

    // The same number in trouble: 5 twice puts it first.
    a.set_state("a1", Requested::NotReady("break".into()), t0 + s(11))
        .unwrap();
    a.enqueue(id("x"), "q112", Skills::new(), t0 + s(11), t0 + s(11))
        .unwrap();
    a.enqueue(id("prank2"), "q119", Skills::new(), t0 + s(12), t0 + s(12))
        .unwrap();
    a.stand(&id("prank2"), Standing::Low);
    a.stand(&id("prank2"), Standing::Urgent);
    a.stand(&id("prank2"), Standing::Low);
    a.set_state("a1", Requested::Ready, t0 + s(13)).unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(13))),
        vec![("prank2".into(), "a1".into())]
    );
}

#[test]
fn ring_timeout_sets_agent_not_ready_and_tries_the_next_at_once() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| q.ring_timeout = s(15))],
        vec![agent("sleepy", &[]), agent("awake", &[])],
        t0,
        &[0, 1],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0 + s(2), t0 + s(2))
        .unwrap();
    assert_eq!(
        offers(&a.poll(t0 + s(2))),
        vec![("c1".into(), "sleepy".into())]
    );
    assert_eq!(a.next_deadline(), Some(t0 + s(17)));
    assert!(a.poll(t0 + s(16)).is_empty());
    let actions = a.poll(t0 + s(17));
    assert_eq!(
        actions,
        vec![
            AcdAction::RingTimeout {
                call: id("c1"),
                agent: "sleepy".into()
            },
            AcdAction::Offer {
                call: id("c1"),
                agent: "awake".into(),
                queue: "q".into()
            },
        ]
    );
    assert_eq!(
        a.agent_state("sleepy"),
        Some(&AgentState::NotReady {
            reason: "no_answer".into()
        })
    );
}

#[test]
fn a_failed_offer_sets_not_ready_and_the_call_waits_again() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |_| {})],
        vec![agent("a1", &[]), agent("a2", &[])],
        t0,
        &[0, 1],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0 + s(2))
        .unwrap();
    assert_eq!(offers(&a.poll(t0 + s(2)))[0].1, "a1");
    a.offer_failed(&id("c1"), "a1", OfferFailure::Declined, t0 + s(3));
    assert_eq!(
        a.agent_state("a1"),
        Some(&AgentState::NotReady {
            reason: "declined".into()
        })
    );
    assert_eq!(offers(&a.poll(t0 + s(3))), vec![("c1".into(), "a2".into())]);
}

#[test]
fn wrap_up_then_ready_then_next_call() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| q.wrap_up = s(10))],
        vec![agent("a1", &[])],
        t0,
        &[],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0).unwrap();
    a.poll(t0);
    a.answered(&id("c1"), "a1", t0 + s(1));
    assert_eq!(a.position(&id("c1")), None);
    a.enqueue(id("c2"), "q", Skills::new(), t0 + s(5), t0 + s(5))
        .unwrap();
    assert!(offers(&a.poll(t0 + s(5))).is_empty(), "on a call");
    a.call_ended("a1", "q", t0 + s(20));
    assert_eq!(a.agent_state("a1"), Some(&AgentState::WrapUp));
    assert_eq!(a.next_deadline(), Some(t0 + s(30)));
    assert!(offers(&a.poll(t0 + s(29))).is_empty());
    assert_eq!(
        offers(&a.poll(t0 + s(30))),
        vec![("c2".into(), "a1".into())]
    );
}

#[test]
fn an_unregistered_agent_gets_no_calls_and_cannot_be_ready() {
    let t0 = Instant::now();
    let queues: BTreeMap<_, _> = [queue("q", |_| {})].into();
    let agents: BTreeMap<_, _> = [agent("a1", &[])].into();
    let mut a = Acd::new(&queues, &agents, t0);
    assert_eq!(
        a.set_state("a1", Requested::Ready, t0),
        Err(AcdError::NotRegistered)
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0).unwrap();
    assert!(offers(&a.poll(t0)).is_empty());
    a.set_reachable("a1", Reach::Phone, true, t0);
    a.set_state("a1", Requested::Ready, t0).unwrap();
    // Registration lost: never left ready.
    a.set_reachable("a1", Reach::Phone, false, t0 + s(1));
    assert_eq!(a.agent_state("a1"), Some(&AgentState::LoggedOut));
    assert!(offers(&a.poll(t0 + s(1))).is_empty());
    assert_eq!(
        a.set_state("nobody", Requested::Ready, t0),
        Err(AcdError::UnknownAgent("nobody".into()))
    );
}

/// A SIP phone and the browser softphone each make the agent reachable;
/// losing one keeps the agent as they were, losing both logs them out.
#[test]
fn either_phone_keeps_an_agent_reachable() {
    let t0 = Instant::now();
    let queues: BTreeMap<_, _> = [queue("q", |_| {})].into();
    let agents: BTreeMap<_, _> = [agent("a1", &[])].into();
    let mut a = Acd::new(&queues, &agents, t0);
    a.set_reachable("a1", Reach::Browser, true, t0);
    a.set_state("a1", Requested::Ready, t0).unwrap();
    assert!(a.agents(t0)[0].browser);
    a.set_reachable("a1", Reach::Phone, true, t0);
    a.set_reachable("a1", Reach::Browser, false, t0 + s(1));
    assert_eq!(
        a.agent_state("a1"),
        Some(&AgentState::Ready),
        "the desk phone still rings"
    );
    assert!(!a.agents(t0)[0].browser);
    a.set_reachable("a1", Reach::Phone, false, t0 + s(2));
    assert_eq!(a.agent_state("a1"), Some(&AgentState::LoggedOut));
    assert!(!a.agents(t0)[0].registered);
}

#[test]
fn a_caller_leaving_while_ringing_frees_the_agent() {
    let t0 = Instant::now();
    let mut a = acd(vec![queue("q", |_| {})], vec![agent("a1", &[])], t0, &[]);
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0).unwrap();
    a.poll(t0);
    assert_eq!(
        a.set_state("a1", Requested::NotReady("x".into()), t0),
        Err(AcdError::Busy)
    );
    assert_eq!(
        a.remove(&id("c1"), t0 + s(1)),
        Some("a1".into()),
        "its ringing must be stopped"
    );
    assert_eq!(a.agent_state("a1"), Some(&AgentState::Ready));
    assert_eq!(
        a.agents(t0 + s(3))[0].in_state_ms,
        2000,
        "ready since the caller left"
    );
}

#[test]
fn overflow_after_max_wait_keeps_arrival_order_and_never_while_ringing() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![
            queue("a", |q| {
                q.max_wait = s(60);
                q.overflow = Some("queue:backup".into());
                q.require = skills(&[("rare", 1)]);
            }),
            queue("backup", |q| q.require = skills(&[("rare", 1)])),
        ],
        vec![],
        t0,
        &[],
    );
    a.enqueue(id("late"), "backup", Skills::new(), t0 + s(30), t0 + s(30))
        .unwrap();
    a.enqueue(id("early"), "a", Skills::new(), t0, t0).unwrap();
    assert_eq!(a.next_deadline(), Some(t0 + s(60)));
    assert!(a.poll(t0 + s(59)).is_empty());
    assert_eq!(
        a.poll(t0 + s(60)),
        vec![AcdAction::Overflowed {
            call: id("early"),
            from: "a".into(),
            to: "backup".into()
        }]
    );
    assert_eq!(a.position(&id("early")), Some(("backup", 1)));
    assert_eq!(a.position(&id("late")), Some(("backup", 2)));
    assert!(a.poll(t0 + s(100_000)).is_empty(), "backup has no overflow");
}

#[test]
fn snapshots_report_waits_and_agent_states() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |_| {})],
        vec![agent("a1", &[]), agent("a2", &[])],
        t0,
        &[],
    );
    a.set_state("a2", Requested::NotReady("break".into()), t0)
        .unwrap();
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0).unwrap();
    a.poll(t0);
    let q = &a.snapshot(t0 + Duration::from_millis(1500))[0];
    assert_eq!(q.waiting[0].wait_ms, 1500);
    assert_eq!(q.waiting[0].ringing_agent.as_deref(), Some("a1"));
    assert_eq!(q.agents.get("ringing"), Some(&1));
    assert_eq!(q.agents.get("not_ready"), Some(&1));
    let agents = a.agents(t0 + s(2));
    assert_eq!(
        agents[1].state,
        AgentState::NotReady {
            reason: "break".into()
        }
    );
    assert_eq!(agents[1].in_state_ms, 2000);
}

#[test]
fn overflow_to_a_sip_target_takes_the_call_out_of_the_queues() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |q| {
            q.max_wait = s(30);
            q.overflow = Some("sip:112@10.9.8.7:5060".into());
        })],
        vec![],
        t0,
        &[],
    );
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0).unwrap();
    assert_eq!(
        a.poll(t0 + s(30)),
        vec![AcdAction::OverflowedToSip {
            call: id("c1"),
            from: "q".into(),
            target: "sip:112@10.9.8.7:5060".into()
        }]
    );
    assert_eq!(a.position(&id("c1")), None);
    // The other center failed: back in the queue, ahead of later callers.
    a.enqueue(id("c2"), "q", Skills::new(), t0 + s(10), t0 + s(10))
        .unwrap();
    a.enqueue(id("c1"), "q", Skills::new(), t0, t0 + s(31))
        .unwrap();
    assert_eq!(a.position(&id("c1")), Some(("q", 1)));
}

#[test]
fn a_crowd_waits_while_every_agent_is_busy_and_the_oldest_goes_first() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![queue("q", |_| {})],
        vec![agent("a1", &[]), agent("a2", &[])],
        t0,
        &[0],
    );
    // a2 is busy with something else: only a1 is ready.
    a.set_state("a2", Requested::NotReady("rapat".into()), t0)
        .unwrap();
    for n in 1..=500u64 {
        let at = t0 + Duration::from_millis(n);
        a.enqueue(id(&format!("c{n}")), "q", Skills::new(), at, at)
            .unwrap();
    }
    let now = t0 + s(1);
    assert_eq!(offers(&a.poll(now)), vec![("c1".into(), "a1".into())]);
    // Every agent busy: nothing more to offer, however often it is asked.
    for _ in 0..3 {
        assert!(offers(&a.poll(now)).is_empty());
    }
    assert_eq!(a.position(&id("c500")), Some(("q", 500)));
    // The next agent gets the oldest caller not already ringing: c2, behind
    // c1 (which rings a1) in the queue.
    a.set_state("a2", Requested::Ready, now).unwrap();
    assert_eq!(offers(&a.poll(now)), vec![("c2".into(), "a2".into())]);
    // c1 answered and done: a1 is free again and takes c3.
    a.answered(&id("c1"), "a1", now);
    a.call_ended("a1", "q", now + s(1));
    assert_eq!(
        offers(&a.poll(now + s(1))),
        vec![("c3".into(), "a1".into())]
    );
}

#[test]
fn callers_no_ready_agent_can_take_do_not_hold_up_one_who_can() {
    let t0 = Instant::now();
    let mut a = acd(
        vec![
            queue("damkar", |q| {
                q.require = skills(&[("damkar", 1)]);
                q.priority = 5;
            }),
            queue("polisi", |q| q.require = skills(&[("polisi", 1)])),
        ],
        vec![
            agent("d1", &[("damkar", 1)]),
            agent("p1", &[("polisi", 1)]),
            agent("p2", &[("polisi", 1)]),
        ],
        t0,
        &[0],
    );
    a.set_state("d1", Requested::NotReady("rapat".into()), t0)
        .unwrap();
    a.set_state("p2", Requested::NotReady("rapat".into()), t0)
        .unwrap();
    // A flood of fire calls, ahead by priority and arrival, that no ready
    // agent can take; then a transfer for p2 alone, who is busy.
    for n in 1..=200u64 {
        let at = t0 + Duration::from_millis(n);
        a.enqueue(id(&format!("f{n}")), "damkar", Skills::new(), at, at)
            .unwrap();
    }
    let at = t0 + s(1);
    a.enqueue_for(id("t1"), "polisi", "p2", at, at).unwrap();
    // Two police calls arriving at the same instant: the first queued is
    // the first offered (as its position said), whatever their ids.
    let at = t0 + s(2);
    a.enqueue(id("z"), "polisi", Skills::new(), at, at).unwrap();
    a.enqueue(id("b"), "polisi", Skills::new(), at, at).unwrap();
    assert_eq!(a.position(&id("z")), Some(("polisi", 2)));
    assert_eq!(offers(&a.poll(at)), vec![("z".into(), "p1".into())]);
    // p2 back: the transfer waiting for p2 goes to p2, not "b".
    a.set_state("p2", Requested::Ready, at).unwrap();
    assert_eq!(offers(&a.poll(at)), vec![("t1".into(), "p2".into())]);
    // The fire agent back: the oldest fire call, not a police one.
    a.set_state("d1", Requested::Ready, at).unwrap();
    assert_eq!(offers(&a.poll(at)), vec![("f1".into(), "d1".into())]);
}

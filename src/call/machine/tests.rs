//! The call's races on a fake clock: each test drives the machine with
//! the events a real call would see, in the order the race delivers
//! them, and checks what it asks the driver to do.

use super::*;
use crate::config::AgencyConfig;
use crate::media::g711::Law;

const SECOND: Duration = Duration::from_secs(1);

/// A clock that moves only when told.
struct Clock {
    start: Instant,
    ms: u64,
}

impl Clock {
    fn now(&self) -> Now {
        Now {
            at: self.start + Duration::from_millis(self.ms),
            wall_ms: 1_700_000_000_000 + self.ms as i64,
        }
    }

    fn pass(&mut self, d: Duration) -> Now {
        self.ms += d.as_millis() as u64;
        self.now()
    }
}

/// A call and its clock; every step returns what the machine asked for.
struct T {
    call: Call,
    clock: Clock,
    tokens: u64,
}

fn rules() -> Rules {
    let agency = |id: &str, queue: Option<&str>| AgencyConfig {
        id: id.into(),
        name: id.into(),
        queue: queue.map(Into::into),
        transfer_timeout: 30 * SECOND,
    };
    Rules {
        agencies: vec![
            agency("damkar", Some("dispatch-damkar")),
            agency("satpolpp", None),
        ],
        prompt_intervals: [("ntpd-112".to_string(), 10 * SECOND)].into(),
        ghost_within: 5 * SECOND,
        ghost_without_audio: true,
    }
}

fn pcma() -> Negotiated {
    Negotiated {
        law: Law::Alaw,
        pt: 8,
        dtmf_pt: Some(101),
    }
}

/// What a phone answers with.
fn answer_sdp(direction: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
    .into_bytes()
}

fn ok_sdp() -> Vec<u8> {
    answer_sdp("sendrecv")
}

impl T {
    fn new() -> (T, Vec<Action>) {
        T::with_rules(rules())
    }

    fn with_rules(rules: Rules) -> (T, Vec<Action>) {
        let clock = Clock {
            start: Instant::now(),
            ms: 0,
        };
        let (call, first) = Call::new(Start {
            id: CallId("call-1".into()),
            incident: IncidentId("inc-1".into()),
            caller: Caller {
                number: Some("081234567".into()),
                location: None,
                latitude: None,
                longitude: None,
                service: "112".into(),
                arrived: clock.now().at,
                arrived_ms: clock.now().wall_ms,
                pranks: 0,
            },
            queue: QueueId("ntpd-112".into()),
            codec: pcma(),
            rules: Arc::new(rules),
        });
        (
            T {
                call,
                clock,
                tokens: 0,
            },
            first,
        )
    }

    fn on(&mut self, ev: Event) -> Vec<Action> {
        let now = self.clock.now();
        self.call.handle(ev, now)
    }

    fn token(&mut self) -> ReplyToken {
        self.tokens += 1;
        ReplyToken(self.tokens)
    }

    fn after(&mut self, d: Duration) -> Vec<Action> {
        let now = self.clock.pass(d);
        self.call.handle_timeout(now)
    }

    fn offer(&mut self, agent: &str) -> (LegId, Vec<Action>) {
        let out = self.on(Event::Acd(Place::Caller, Notice::Offer(agent.into())));
        (rung(&out), out)
    }

    /// An agent offered and answering: the caller is with them.
    fn talking(&mut self, agent: &str) -> LegId {
        let (leg, _) = self.offer(agent);
        self.on(Event::Placed(leg, Placed::Answered(ok_sdp())));
        leg
    }

    fn request(&mut self, req: Request) -> (ReplyToken, Vec<Action>) {
        let token = self.token();
        (token, self.on(Event::Request(req, token)))
    }

    /// The panel asks for a transfer to Damkar and the ACD takes it.
    fn transfer(&mut self) -> Vec<Action> {
        let (_, out) = self.request(Request::Transfer {
            agency: "damkar".into(),
            named: None,
            by: "siti".into(),
        });
        assert!(has(&out, |a| matches!(
            a,
            Action::Acd(AcdOp::QueueTransfer { seq: 1, .. })
        )));
        self.on(Event::TransferQueued(true))
    }

    /// A dispatcher offered the transfer; their phone rings.
    fn dispatcher_rings(&mut self, who: &str) -> LegId {
        let out = self.on(Event::Acd(Place::Transfer(1), Notice::Offer(who.into())));
        rung(&out)
    }

    fn dispatcher_talks(&mut self, who: &str) -> LegId {
        let leg = self.dispatcher_rings(who);
        let out = self.on(Event::Placed(leg, Placed::Answered(ok_sdp())));
        assert!(has(&out, |a| matches!(
            a,
            Action::Media(MediaOp::Consult { leg: l, .. }) if *l == leg
        )));
        leg
    }

    /// A call with its agent and a transfer to Damkar under way: the
    /// agent's leg.
    fn transferring() -> (T, LegId) {
        let (mut t, _) = T::new();
        let agent = t.talking("ct-01");
        t.transfer();
        (t, agent)
    }

    fn caller_hangs_up(&mut self) -> Vec<Action> {
        self.on(Event::Caller(Called::Ended(LegEnd::RemoteBye)))
    }
}

fn has(actions: &[Action], f: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(f)
}

fn rung(actions: &[Action]) -> LegId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Ring { leg, .. } => Some(*leg),
            _ => None,
        })
        .expect("a leg rung")
}

fn ends(actions: &[Action], leg: LegId) -> bool {
    has(
        actions,
        |a| matches!(a, Action::EndLeg { leg: Some(l), .. } if *l == leg),
    )
}

fn hangs_up_caller(actions: &[Action]) -> bool {
    has(actions, |a| matches!(a, Action::EndLeg { leg: None, .. }))
}

/// The cause of the end record, if the actions write it.
fn ended_with(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Store(cmd) => match cmd.as_ref() {
            StoreCmd::Ended { cause, .. } => Some(cause.clone()),
            _ => None,
        },
        _ => None,
    })
}

/// Whether the actions classify the incident as a ghost call.
fn ghost(actions: &[Action]) -> bool {
    has(actions, |a| match a {
        Action::Store(cmd) => matches!(
            cmd.as_ref(),
            StoreCmd::Classified { incident, category, .. } if incident == "inc-1" && category == "ghost"
        ),
        _ => false,
    })
}

/// A caller gone within the configured time, before any agent answered,
/// is a ghost call; one gone later, or after an agent answered, or ended
/// by anyone else, is not (their line carried sound).
#[test]
fn a_caller_gone_at_once_before_any_answer_is_a_ghost_call() {
    let (mut t, _) = T::new();
    t.on(Event::Sound);
    t.after(2 * SECOND);
    assert!(ghost(&t.caller_hangs_up()), "gone at 2 s");

    let (mut t, _) = T::new();
    t.on(Event::Sound);
    t.after(5 * SECOND);
    assert!(ghost(&t.caller_hangs_up()), "at 5 s, the bound");

    let (mut t, _) = T::new();
    t.on(Event::Sound);
    t.after(6 * SECOND);
    assert!(
        !ghost(&t.caller_hangs_up()),
        "waited, then gave up: abandoned"
    );

    let (mut t, _) = T::new();
    t.on(Event::Sound);
    t.talking("ct-01");
    assert!(!ghost(&t.caller_hangs_up()), "an agent answered");

    let (mut t, _) = T::new();
    let (_, _) = t.offer("ct-01");
    assert!(ghost(&t.caller_hangs_up()), "rung, not answered");

    let (mut t, _) = T::new();
    let out = t.on(Event::Caller(Called::Ended(LegEnd::NoAck)));
    assert!(!ghost(&out), "no ACK came: not the caller's doing");
}

/// A line that carried nothing the whole call (no sound, no key) is a
/// ghost call however long it lasted, answered or not, whoever hung up;
/// one with any sound, or a key pressed, is not; and the rule can be
/// turned off.
#[test]
fn a_line_with_nothing_on_it_is_a_ghost_call() {
    let (mut t, _) = T::new();
    t.after(60 * SECOND);
    assert!(ghost(&t.caller_hangs_up()), "a minute of nothing, waiting");

    let (mut t, _) = T::new();
    let leg = t.talking("ct-01");
    t.after(30 * SECOND);
    let out = t.on(Event::Placed(leg, Placed::Ended));
    assert!(ghost(&out), "the call-taker hung up on an empty line");

    let (mut t, _) = T::new();
    t.after(30 * SECOND);
    assert!(ghost(&t.on(Event::RtpTimeout)), "the line went dead");

    let (mut t, _) = T::new();
    t.talking("ct-01");
    t.on(Event::Sound);
    t.after(30 * SECOND);
    assert!(!ghost(&t.caller_hangs_up()), "something was heard");

    let (mut t, _) = T::new();
    t.on(Event::Key('1'));
    t.after(30 * SECOND);
    assert!(!ghost(&t.caller_hangs_up()), "a key was pressed");

    let (mut t, _) = T::new();
    t.after(30 * SECOND);
    assert!(!ghost(&t.on(Event::Shutdown)), "siaga stopped");

    let mut rules = rules();
    rules.ghost_without_audio = false;
    let (mut t, _) = T::with_rules(rules);
    t.after(30 * SECOND);
    assert!(!ghost(&t.caller_hangs_up()), "the rule is off");
}

fn silent_marked(actions: &[Action]) -> bool {
    has(actions, |a| match a {
        Action::Store(cmd) => matches!(cmd.as_ref(), StoreCmd::SilentEmergency { .. }),
        _ => false,
    })
}

/// 5 twice from a waiting caller: on record, ahead of everyone, the
/// screens told, and the caller hears it was received; once only. Two
/// 5s too far apart, or another key between, are nothing.
#[test]
fn five_twice_marks_a_silent_emergency_once() {
    let (mut t, _) = T::new();
    t.on(Event::Drained);
    assert!(!silent_marked(&t.on(Event::Key('5'))));
    t.after(SECOND);
    let out = t.on(Event::Key('5'));
    assert!(silent_marked(&out), "{out:?}");
    assert!(has(&out, |a| matches!(a, Action::Acd(AcdOp::Urgent))));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Prompt("silent-ack"))
    )));
    assert!(has(&out, |a| matches!(
        a,
        Action::Live(ev) if matches!(ev.as_ref(), LiveEvent::SilentEmergency { agent_id: None, .. })
    )));
    assert!(t.call.is_silent_emergency());
    t.on(Event::Key('5'));
    assert!(t.on(Event::Key('5')).is_empty(), "marked once");
    // Answered, then the call-taker's browser is lost: back in the queue,
    // and still ahead of everyone there.
    let leg = t.talking("ct-01");
    let out = t.on(Event::Placed(leg, Placed::Lost));
    assert!(has(&out, |a| matches!(a, Action::Acd(AcdOp::Enqueue(_)))));
    assert_eq!(t.call.standing(), crate::acd::Standing::Urgent);

    let (mut t, _) = T::new();
    t.on(Event::Key('5'));
    t.after(5 * SECOND);
    assert!(!silent_marked(&t.on(Event::Key('5'))), "too far apart");

    let (mut t, _) = T::new();
    t.on(Event::Key('5'));
    t.on(Event::Key('1'));
    assert!(!silent_marked(&t.on(Event::Key('5'))), "a key between");

    // With a call-taker on the line: their screen is told, the caller
    // hears nothing new over the conversation, no queue to move in.
    let (mut t, _) = T::new();
    t.talking("ct-01");
    t.on(Event::Key('5'));
    let out = t.on(Event::Key('5'));
    assert!(silent_marked(&out));
    assert!(!has(&out, |a| matches!(a, Action::Acd(AcdOp::Urgent))));
    assert!(!has(&out, |a| matches!(a, Action::Media(_))));
    assert!(has(&out, |a| matches!(
        a,
        Action::Live(ev) if matches!(ev.as_ref(), LiveEvent::SilentEmergency { agent_id: Some(a), .. } if a == "ct-01")
    )));
}

/// A caller who says nothing through the greeting is asked to press 5
/// twice in each announcement, until they speak or press it.
#[test]
fn a_caller_silent_through_the_greeting_is_asked_to_press_five_twice() {
    let announced = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Announce { silent } => Some(*silent),
            _ => None,
        })
    };
    let (mut t, _) = T::new();
    t.on(Event::Drained);
    assert_eq!(announced(&t.after(Duration::ZERO)), Some(true));
    t.on(Event::Drained);
    assert_eq!(announced(&t.after(10 * SECOND)), Some(true), "still silent");
    t.on(Event::Voice(true));
    t.on(Event::Voice(false));
    t.on(Event::Drained);
    assert_eq!(announced(&t.after(10 * SECOND)), Some(false), "they spoke");

    let (mut t, _) = T::new();
    t.on(Event::Key('5'));
    t.on(Event::Key('5'));
    t.on(Event::Drained);
    assert_eq!(announced(&t.after(Duration::ZERO)), Some(false), "marked");
}

/// The call-taker's screen learns when the caller starts and stops
/// speaking, only while they talk.
#[test]
fn the_desk_hears_when_the_caller_falls_silent() {
    let voice = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Live(ev) => match ev.as_ref() {
                LiveEvent::CallerVoice {
                    speaking, agent_id, ..
                } => Some((*speaking, agent_id.clone())),
                _ => None,
            },
            _ => None,
        })
    };
    let (mut t, _) = T::new();
    assert_eq!(voice(&t.on(Event::Voice(true))), None, "no one to tell");
    t.talking("ct-01");
    assert_eq!(
        voice(&t.on(Event::Voice(false))),
        Some((false, "ct-01".to_string()))
    );
}

fn transfer_outcome(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Store(cmd) => match cmd.as_ref() {
            StoreCmd::TransferEnded { outcome, .. } => Some(outcome.clone()),
            _ => None,
        },
        _ => None,
    })
}

fn replied(actions: &[Action], token: ReplyToken) -> Option<&ReplyWith> {
    actions.iter().find_map(|a| match a {
        Action::Reply { token: t, with } if *t == token => Some(with),
        _ => None,
    })
}

fn bridged_for(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Live(ev) => match ev.as_ref() {
            LiveEvent::CallBridged(b) => Some(b.agent_id.clone()),
            _ => None,
        },
        _ => None,
    })
}

fn acd_ended(actions: &[Action], agent: &str) -> bool {
    has(
        actions,
        |a| matches!(a, Action::Acd(AcdOp::CallEnded(who, _)) if who.as_str() == agent),
    )
}

#[test]
fn the_caller_is_queued_then_hears_their_place_after_the_greeting_and_every_interval() {
    let (mut t, first) = T::new();
    assert!(matches!(&first[..], [Action::Acd(AcdOp::Enqueue(q))] if q.as_str() == "ntpd-112"));
    assert_eq!(t.call.poll_timeout(), None);
    // The greeting ends: the place is told at once.
    t.on(Event::Drained);
    assert_eq!(t.call.poll_timeout(), Some(t.clock.now().at));
    assert!(has(&t.after(Duration::ZERO), |a| matches!(
        a,
        Action::Announce { .. }
    )));
    // That announcement ends: the next one is an interval away.
    t.on(Event::Drained);
    assert!(t.after(9 * SECOND).is_empty());
    assert!(has(&t.after(SECOND), |a| matches!(
        a,
        Action::Announce { .. }
    )));
}

#[test]
fn an_agent_who_answers_is_bridged_the_acd_and_panel_told_and_announcements_stop() {
    let (mut t, _) = T::new();
    t.on(Event::Drained);
    let (leg, out) = t.offer("ct-01");
    assert!(has(&out, |a| matches!(
        a,
        Action::Ring { target: Target::Agent(a), law: Law::Alaw, .. } if a.as_str() == "ct-01"
    )));
    t.clock.pass(3 * SECOND);
    let out = t.on(Event::Placed(leg, Placed::Answered(ok_sdp())));
    assert!(has(
        &out,
        |a| matches!(a, Action::Media(MediaOp::Bridge { leg: l, .. }) if *l == leg)
    ));
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::Answered(Place::Caller, who)) if who.as_str() == "ct-01"
    )));
    assert_eq!(bridged_for(&out).as_deref(), Some("ct-01"));
    assert_eq!(t.call.poll_timeout(), None, "no announcement while talking");
    assert!(t.on(Event::Drained).is_empty());
    // The agent hangs up: the caller is hung up on, the wait is on record.
    t.clock.pass(20 * SECOND);
    let out = t.on(Event::Placed(leg, Placed::Ended));
    assert!(hangs_up_caller(&out));
    assert!(!ends(&out, leg), "the agent's own BYE ended that leg");
    assert!(acd_ended(&out, "ct-01"));
    assert_eq!(ended_with(&out).as_deref(), Some("agent_bye"));
    assert_eq!(t.call.waited(t.clock.now().at), 3 * SECOND);
}

#[test]
fn an_answer_without_usable_audio_is_hung_up_and_the_offer_failed() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::Placed(leg, Placed::Answered(b"v=0\r\n".to_vec())));
    assert!(ends(&out, leg));
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::OfferFailed(
            Place::Caller,
            _,
            OfferFailure::Unreachable
        ))
    )));
    // The next agent can be offered.
    let (next, _) = t.offer("ct-02");
    assert_ne!(next, leg);
}

#[test]
fn a_declining_agent_is_reported_to_the_acd_as_declined() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::Placed(leg, Placed::Failed(AgentFailure::Declined)));
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::OfferFailed(Place::Caller, _, OfferFailure::Declined))
    )));
}

#[test]
fn a_phone_that_cannot_be_rung_is_reported_unreachable_at_once() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::RingFailed(leg, "not registered"));
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::OfferFailed(Place::Caller, who, OfferFailure::Unreachable)) if who.as_str() == "ct-01"
    )));
}

#[test]
fn the_ring_timeout_arriving_after_the_answer_leaves_the_agent_talking() {
    let (mut t, _) = T::new();
    let leg = t.talking("ct-01");
    let out = t.on(Event::Acd(
        Place::Caller,
        Notice::RingTimeout("ct-01".into()),
    ));
    assert!(out.is_empty(), "{out:?}");
    let out = t.caller_hangs_up();
    assert!(ends(&out, leg));
    assert!(acd_ended(&out, "ct-01"));
}

#[test]
fn an_answer_arriving_after_the_ring_timeout_is_not_bridged() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::Acd(
        Place::Caller,
        Notice::RingTimeout("ct-01".into()),
    ));
    assert!(ends(&out, leg), "the phone stops ringing");
    let out = t.on(Event::Placed(leg, Placed::Answered(ok_sdp())));
    assert!(out.is_empty(), "a leg let go of is not bridged: {out:?}");
    // The caller still waits, and the next agent is rung.
    let (next, _) = t.offer("ct-02");
    let out = t.on(Event::Placed(next, Placed::Answered(ok_sdp())));
    assert_eq!(bridged_for(&out).as_deref(), Some("ct-02"));
}

#[test]
fn the_caller_hanging_up_while_an_agent_rings_cancels_the_ring() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::Caller(Called::Ended(LegEnd::RemoteBye)));
    assert!(ends(&out, leg), "CANCEL to the ringing phone");
    assert!(!acd_ended(&out, "ct-01"), "the agent never had the call");
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::Leave(Place::Caller))
    )));
    assert_eq!(ended_with(&out).as_deref(), Some("caller_bye"));
    assert!(t.call.ended().is_some());
    // Whatever comes after the end changes nothing.
    assert!(t
        .on(Event::Placed(leg, Placed::Answered(ok_sdp())))
        .is_empty());
}

#[test]
fn overflow_to_another_center_while_an_agent_rings_stops_the_ring_and_rings_the_center() {
    let (mut t, _) = T::new();
    let (agent, _) = t.offer("ct-01");
    let out = t.on(Event::Acd(
        Place::Caller,
        Notice::OverflowedToSip {
            from: "ntpd-112".into(),
            target: "sip:112@10.1.2.3".into(),
        },
    ));
    assert!(ends(&out, agent));
    assert!(has(&out, |a| matches!(
        a,
        Action::Ring {
            target: Target::Center(_),
            ..
        }
    )));
    let center = rung(&out);
    // The agent's late answer is not bridged.
    assert!(t
        .on(Event::Placed(agent, Placed::Answered(ok_sdp())))
        .is_empty());
    let out = t.on(Event::Placed(center, Placed::Answered(ok_sdp())));
    assert!(has(
        &out,
        |a| matches!(a, Action::Media(MediaOp::Bridge { leg, .. }) if *leg == center)
    ));
    assert_eq!(
        bridged_for(&out),
        None,
        "no agent's panel opens for a center"
    );
    let out = t.on(Event::Placed(center, Placed::Ended));
    assert_eq!(ended_with(&out).as_deref(), Some("overflow_bye"));
}

#[test]
fn a_silent_overflow_target_is_given_up_soon_and_a_ringing_one_late() {
    let (mut t, _) = T::new();
    let overflow = |t: &mut T| {
        let out = t.on(Event::Acd(
            Place::Caller,
            Notice::OverflowedToSip {
                from: "ntpd-112".into(),
                target: "sip:112@10.1.2.3".into(),
            },
        ));
        rung(&out)
    };
    let silent = overflow(&mut t);
    assert!(t.after(OVERFLOW_SILENCE_LIMIT - SECOND).is_empty());
    let out = t.after(SECOND);
    assert!(ends(&out, silent));
    assert!(has(
        &out,
        |a| matches!(a, Action::Acd(AcdOp::Enqueue(q)) if q.as_str() == "ntpd-112")
    ));
    // A target that rings may take the full limit.
    let ringing = overflow(&mut t);
    t.on(Event::Placed(ringing, Placed::Ringing));
    assert!(!ends(&t.after(OVERFLOW_SILENCE_LIMIT + SECOND), ringing));
    assert!(ends(&t.after(OVERFLOW_RING_LIMIT), ringing));
}

#[test]
fn an_overflow_to_the_next_queue_changes_the_queue_the_caller_returns_to() {
    let (mut t, _) = T::new();
    t.on(Event::Acd(
        Place::Caller,
        Notice::Overflowed {
            from: "ntpd-112".into(),
            to: "overflow".into(),
        },
    ));
    // The agent's browser goes: the caller waits again, in the new queue.
    let leg = t.talking("ct-01");
    let out = t.on(Event::Placed(leg, Placed::Lost));
    assert!(has(
        &out,
        |a| matches!(a, Action::Acd(AcdOp::Enqueue(q)) if q.as_str() == "overflow")
    ));
}

#[test]
fn the_agents_browser_closing_mid_call_puts_the_caller_back_in_the_queue() {
    let (mut t, _) = T::new();
    let leg = t.talking("ct-01");
    let out = t.on(Event::Placed(leg, Placed::Lost));
    assert!(!hangs_up_caller(&out), "the caller is never dropped for it");
    assert!(has(&out, |a| matches!(a, Action::Media(MediaOp::Unbridge))));
    assert!(acd_ended(&out, "ct-01"));
    assert!(has(&out, |a| matches!(a, Action::Acd(AcdOp::Enqueue(_)))));
    assert_eq!(ended_with(&out), None);
    assert_eq!(
        t.call.poll_timeout(),
        Some(t.clock.now().at),
        "told their place at once"
    );
}

#[test]
fn a_recording_that_cannot_be_made_is_on_record_and_the_call_goes_on() {
    let (mut t, _) = T::new();
    let out = t.on(Event::RecordingOpened(Err("disk full".into())));
    assert!(has(
        &out,
        |a| matches!(a, Action::Store(c) if matches!(c.as_ref(), StoreCmd::RecordingFailed { .. }))
    ));
    assert!(t.call.ended().is_none());
    let leg = t.talking("ct-01");
    let out = t.caller_hangs_up();
    assert!(ends(&out, leg));
    assert_eq!(ended_with(&out).as_deref(), Some("caller_bye"));
}

#[test]
fn no_rtp_from_the_caller_hangs_up_and_ends_the_call() {
    let (mut t, _) = T::new();
    let out = t.on(Event::RtpTimeout);
    assert!(hangs_up_caller(&out));
    assert_eq!(ended_with(&out).as_deref(), Some("rtp_timeout"));
}

#[test]
fn a_shutdown_during_ringing_ends_both_legs() {
    let (mut t, _) = T::new();
    let (leg, _) = t.offer("ct-01");
    let out = t.on(Event::Shutdown);
    assert!(hangs_up_caller(&out));
    assert!(ends(&out, leg));
    assert_eq!(ended_with(&out).as_deref(), Some("shutdown"));
}

#[test]
fn a_caller_reoffer_keeps_the_codec_with_a_new_version_and_one_without_g711_gets_488() {
    let (mut t, _) = T::new();
    let token = t.token();
    let out = t.on(Event::Caller(Called::ReOffer(Some(ok_sdp()), token)));
    assert!(matches!(
        replied(&out, token),
        Some(ReplyWith::Sdp(SdpAnswer {
            leg: None,
            version: 2,
            codec: Ok(_),
            direction: Direction::SendRecv
        }))
    ));
    let g722 = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 9\r\n".to_vec();
    let token = t.token();
    let out = t.on(Event::Caller(Called::ReOffer(Some(g722), token)));
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(488)));
}

#[test]
fn the_agents_phone_holding_puts_the_caller_on_hold_and_resuming_takes_them_off() {
    let (mut t, _) = T::new();
    let leg = t.talking("ct-01");
    let token = t.token();
    let out = t.on(Event::Placed(
        leg,
        Placed::ReOffer(Some(answer_sdp("sendonly")), token),
    ));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Hold(true))
    )));
    assert!(matches!(
        replied(&out, token),
        Some(ReplyWith::Sdp(SdpAnswer {
            direction: Direction::RecvOnly,
            version: 2,
            ..
        }))
    ));
    let token = t.token();
    let out = t.on(Event::Placed(leg, Placed::ReOffer(Some(ok_sdp()), token)));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Hold(false))
    )));
}

// Transfers.

#[test]
fn a_transfer_from_the_panel_holds_the_caller_rings_a_dispatcher_and_answers_the_panel() {
    let (mut t, _) = T::new();
    t.talking("ct-01");
    let (token, out) = t.request(Request::Transfer {
        agency: "damkar".into(),
        named: Some("disp-damkar-01".into()),
        by: "siti".into(),
    });
    assert!(
        replied(&out, token).is_none(),
        "answered once the ACD takes it"
    );
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::QueueTransfer { seq: 1, queue, named: Some(d) })
            if queue.as_str() == "dispatch-damkar" && d.as_str() == "disp-damkar-01"
    )));
    let out = t.on(Event::TransferQueued(true));
    assert_eq!(replied(&out, token), Some(&ReplyWith::Done(Ok(()))));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Hold(true))
    )));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Prompt("transfer"))
    )));
    assert_eq!(
        t.call.poll_timeout(),
        Some(t.clock.now().at + 30 * SECOND),
        "the transfer's deadline"
    );
}

#[test]
fn transfers_the_call_cannot_make_are_refused_with_why() {
    let (mut t, _) = T::new();
    let refused = |t: &mut T, agency: &str| {
        let (token, out) = t.request(Request::Transfer {
            agency: agency.into(),
            named: None,
            by: "siti".into(),
        });
        match replied(&out, token) {
            Some(ReplyWith::Done(Err(e))) => e.clone(),
            other => panic!("not refused: {other:?}"),
        }
    };
    assert_eq!(refused(&mut t, "damkar"), "the call is not with an agent");
    t.talking("ct-01");
    assert_eq!(refused(&mut t, "polri"), "no agency `polri`");
    assert_eq!(
        refused(&mut t, "satpolpp"),
        "agency `satpolpp` has no dispatcher queue"
    );
    // The ACD refuses the queue.
    let (token, _) = t.request(Request::Transfer {
        agency: "damkar".into(),
        named: Some("nobody".into()),
        by: "siti".into(),
    });
    let out = t.on(Event::TransferQueued(false));
    assert!(matches!(replied(&out, token), Some(ReplyWith::Done(Err(e))) if e.contains("refused")));
    // The call goes on with its agent, and a transfer can be asked again.
    t.transfer();
}

#[test]
fn a_second_transfer_asked_while_one_is_under_way_is_refused() {
    let (mut t, _) = T::transferring();
    let (token, out) = t.request(Request::Transfer {
        agency: "damkar".into(),
        named: None,
        by: "budi".into(),
    });
    assert_eq!(
        replied(&out, token),
        Some(&ReplyWith::Done(Err(
            "a transfer is in progress already".into()
        )))
    );
    assert!(!has(&out, |a| matches!(a, Action::Acd(_))));
}

#[test]
fn consult_then_conference_then_complete_hands_the_caller_to_the_dispatcher() {
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_talks("disp-damkar-01");
    let (token, out) = t.request(Request::Conference { by: "siti".into() });
    assert_eq!(replied(&out, token), Some(&ReplyWith::Done(Ok(()))));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Conference)
    )));
    let (token, out) = t.request(Request::Complete { by: "siti".into() });
    assert_eq!(replied(&out, token), Some(&ReplyWith::Done(Ok(()))));
    assert!(ends(&out, agent));
    assert!(acd_ended(&out, "ct-01"));
    assert_eq!(
        transfer_outcome(&out).as_deref(),
        Some("conference_completed")
    );
    assert_eq!(bridged_for(&out).as_deref(), Some("disp-damkar-01"));
    // The dispatcher now has the caller, and is freed when they go.
    let out = t.caller_hangs_up();
    assert!(ends(&out, d));
    assert!(acd_ended(&out, "disp-damkar-01"));
}

#[test]
fn conference_and_complete_before_the_dispatcher_answers_are_refused() {
    let (mut t, _) = T::transferring();
    t.dispatcher_rings("disp-damkar-01");
    for req in [
        Request::Conference { by: "siti".into() },
        Request::Complete { by: "siti".into() },
    ] {
        let (token, out) = t.request(req);
        assert_eq!(
            replied(&out, token),
            Some(&ReplyWith::Done(Err(
                "no dispatcher is on the line yet".into()
            )))
        );
    }
}

/// The call-taker ends the call from the panel (a quick disposition on
/// a desk phone): their phone's leg and the caller's end, the call ends
/// as theirs, once; with a transfer under way or no one on the line it
/// is refused, and nothing moves.
#[test]
fn the_call_taker_hangs_up_from_the_panel() {
    let (mut t, _) = T::new();
    let (token, out) = t.request(Request::HangUp { by: "siti".into() });
    assert!(matches!(
        replied(&out, token),
        Some(ReplyWith::Done(Err(_)))
    ));
    assert!(t.call.ended().is_none(), "a waiting caller is not hung up");

    let leg = t.talking("ct-01");
    let (token, out) = t.request(Request::HangUp { by: "siti".into() });
    assert_eq!(replied(&out, token), Some(&ReplyWith::Done(Ok(()))));
    assert!(ends(&out, leg), "the desk phone's leg: {out:?}");
    assert!(has(&out, |a| matches!(a, Action::EndLeg { leg: None, .. })));
    assert!(acd_ended(&out, "ct-01"));
    assert_eq!(t.call.ended(), Some(&EndCause::AgentBye));

    let (mut t, _) = T::transferring();
    t.dispatcher_rings("disp-damkar-01");
    let (token, out) = t.request(Request::HangUp { by: "siti".into() });
    assert!(matches!(
        replied(&out, token),
        Some(ReplyWith::Done(Err(_)))
    ));
    assert!(t.call.ended().is_none());
}

#[test]
fn cancel_gives_the_caller_back_to_the_call_taker() {
    let (mut t, _) = T::transferring();
    let d = t.dispatcher_talks("disp-damkar-01");
    let (token, out) = t.request(Request::Cancel { by: "siti".into() });
    assert_eq!(replied(&out, token), Some(&ReplyWith::Done(Ok(()))));
    assert!(ends(&out, d));
    assert!(acd_ended(&out, "disp-damkar-01"));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::EndConsult)
    )));
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::Leave(Place::Transfer(1)))
    )));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("cancelled"));
    // Nothing left to cancel.
    let (token, out) = t.request(Request::Cancel { by: "siti".into() });
    assert_eq!(
        replied(&out, token),
        Some(&ReplyWith::Done(Err("no transfer is in progress".into())))
    );
}

#[test]
fn an_unanswered_transfer_gives_the_caller_back_at_its_deadline() {
    let (mut t, _) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    assert!(t.after(29 * SECOND).is_empty());
    let out = t.after(SECOND);
    assert!(ends(&out, d));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("no_answer"));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Hold(false))
    )));
    assert_eq!(t.call.poll_timeout(), None);
}

#[test]
fn a_dispatcher_ring_timeout_stops_that_phone_and_waits_for_the_next() {
    let (mut t, _) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Acd(
        Place::Transfer(1),
        Notice::RingTimeout("disp-damkar-01".into()),
    ));
    assert!(ends(&out, d));
    // A notice for an earlier transfer's place is not this one's.
    let out = t.on(Event::Acd(Place::Transfer(7), Notice::Offer("x".into())));
    assert!(out.is_empty());
    t.dispatcher_talks("disp-damkar-02");
}

#[test]
fn the_dispatchers_answer_crossing_the_call_takers_bye_completes_the_transfer() {
    // The call-taker's BYE first: the caller waits on hold for the
    // dispatcher whose 200 OK is on its way.
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Placed(agent, Placed::Ended));
    assert!(
        !hangs_up_caller(&out),
        "the caller stays for the dispatcher"
    );
    assert!(acd_ended(&out, "ct-01"));
    assert!(has(&out, |a| matches!(a, Action::Media(MediaOp::Unbridge))));
    assert_eq!(ended_with(&out), None);
    let out = t.on(Event::Placed(d, Placed::Answered(ok_sdp())));
    assert!(has(
        &out,
        |a| matches!(a, Action::Media(MediaOp::Bridge { leg, .. }) if *leg == d)
    ));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("completed"));
    assert_eq!(bridged_for(&out).as_deref(), Some("disp-damkar-01"));
    let out = t.on(Event::Placed(d, Placed::Ended));
    assert_eq!(ended_with(&out).as_deref(), Some("agent_bye"));

    // The 200 OK first: the call-taker's BYE completes the transfer.
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_talks("disp-damkar-01");
    let out = t.on(Event::Placed(agent, Placed::Ended));
    assert!(!hangs_up_caller(&out));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("completed"));
    assert!(has(&out, |a| matches!(a, Action::Media(MediaOp::Complete))));
    let out = t.caller_hangs_up();
    assert!(ends(&out, d));
}

#[test]
fn the_agents_browser_closing_mid_transfer_leaves_the_caller_to_the_dispatcher() {
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Placed(agent, Placed::Lost));
    assert!(!hangs_up_caller(&out));
    assert!(has(
        &out,
        |a| matches!(a, Action::DropLeg(l) if *l == agent)
    ));
    let out = t.on(Event::Placed(d, Placed::Answered(ok_sdp())));
    assert_eq!(bridged_for(&out).as_deref(), Some("disp-damkar-01"));
}

#[test]
fn the_dispatcher_hanging_up_with_the_agent_gone_puts_the_caller_back_in_the_queue() {
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    t.on(Event::Placed(agent, Placed::Ended));
    // Nobody answers: the caller is not dropped but queued again.
    let out = t.after(30 * SECOND);
    assert!(ends(&out, d));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("no_answer"));
    assert!(has(&out, |a| matches!(a, Action::Acd(AcdOp::Enqueue(_)))));
    assert!(!hangs_up_caller(&out));
}

#[test]
fn the_caller_hanging_up_during_a_consultation_or_conference_ends_the_transfer_as_such() {
    for conference in [false, true] {
        let (mut t, agent) = T::transferring();
        let d = t.dispatcher_talks("disp-damkar-01");
        if conference {
            t.request(Request::Conference { by: "siti".into() });
        }
        let out = t.caller_hangs_up();
        assert_eq!(transfer_outcome(&out).as_deref(), Some("caller_hung_up"));
        assert!(ends(&out, d) && ends(&out, agent));
        assert!(acd_ended(&out, "disp-damkar-01") && acd_ended(&out, "ct-01"));
        assert_eq!(ended_with(&out).as_deref(), Some("caller_bye"));
    }
}

#[test]
fn the_caller_hanging_up_while_the_dispatcher_rings_cancels_that_ring() {
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.caller_hangs_up();
    assert!(ends(&out, d) && ends(&out, agent));
    assert!(
        !acd_ended(&out, "disp-damkar-01"),
        "the dispatcher never had it"
    );
    assert_eq!(transfer_outcome(&out).as_deref(), Some("caller_hung_up"));
}

/// The agent's phone places a consultation to Damkar (attended transfer).
fn consultation(t: &mut T) -> (LegId, LegId) {
    let agent = t.talking("ct-01");
    let leg = t.call.reserve_leg();
    let out = t.on(Event::Consult {
        leg,
        agent: "ct-01".into(),
        agency: "damkar".into(),
        offer: Some(ok_sdp()),
        port_free: true,
    });
    assert!(has(&out, |a| matches!(
        a,
        Action::Acd(AcdOp::QueueTransfer { .. })
    )));
    let out = t.on(Event::TransferQueued(true));
    assert!(has(&out, |a| matches!(a, Action::Ringing(l) if *l == leg)));
    (agent, leg)
}

/// The agent's phone sends REFER to `target`; `replaces` as the driver
/// read it.
fn refer(
    t: &mut T,
    agent: LegId,
    target: &str,
    replaces: Option<Option<LegId>>,
) -> (ReplyToken, Vec<Action>) {
    let token = t.token();
    let refer = Placed::Refer {
        target: target.into(),
        replaces,
        token,
    };
    (token, t.on(Event::Placed(agent, refer)))
}

fn refer_replacing(t: &mut T, agent: LegId, named: Option<LegId>) -> (ReplyToken, Vec<Action>) {
    refer(t, agent, "sip:damkar@siaga", Some(named))
}

#[test]
fn an_attended_transfer_answers_the_consultation_when_the_dispatcher_answers() {
    let (mut t, _) = T::new();
    let (agent, consult) = consultation(&mut t);
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Placed(d, Placed::Answered(ok_sdp())));
    assert!(has(
        &out,
        |a| matches!(a, Action::Answer(SdpAnswer { leg: Some(l), version: 1, .. }) if *l == consult)
    ));
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::Consult { phone: Some((l, _, _)), .. }) if *l == consult
    )));
    assert!(has(&out, |a| matches!(
        a,
        Action::RecordConsult { seq: 1, .. }
    )));
    // The phone's REFER names the consultation: caller and dispatcher meet.
    let (token, out) = refer_replacing(&mut t, agent, Some(consult));
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(202)));
    assert!(has(&out, |a| matches!(
        a,
        Action::EndLeg { leg: Some(l), notify: Some((200, _)) } if *l == agent
    )));
    assert!(
        ends(&out, consult),
        "the answered consultation gets its BYE"
    );
    assert_eq!(transfer_outcome(&out).as_deref(), Some("completed"));
}

#[test]
fn refer_with_replaces_before_the_consultation_is_answered_waits_for_the_dispatcher() {
    let (mut t, _) = T::new();
    let (agent, consult) = consultation(&mut t);
    let d = t.dispatcher_rings("disp-damkar-01");
    let (token, out) = refer_replacing(&mut t, agent, Some(consult));
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(202)));
    assert!(has(&out, |a| matches!(
        a,
        Action::Refuse { leg, code: 487, .. } if *leg == consult
    )));
    assert!(has(&out, |a| matches!(a, Action::Media(MediaOp::Unbridge))));
    let out = t.on(Event::Placed(d, Placed::Answered(ok_sdp())));
    assert_eq!(bridged_for(&out).as_deref(), Some("disp-damkar-01"));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("completed"));
}

#[test]
fn a_refer_whose_replaces_names_no_consultation_of_this_call_is_refused() {
    let (mut t, _) = T::new();
    let (agent, _) = consultation(&mut t);
    let (token, out) = refer_replacing(&mut t, agent, None);
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(603)));
    assert!(!ends(&out, agent));
}

#[test]
fn the_phone_ending_its_consultation_cancels_the_transfer() {
    let (mut t, _) = T::new();
    let (_, consult) = consultation(&mut t);
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Consultation(
        consult,
        Called::Ended(LegEnd::Cancelled),
    ));
    assert!(ends(&out, d));
    assert_eq!(transfer_outcome(&out).as_deref(), Some("cancelled"));
    assert!(t.call.ended().is_none());
}

#[test]
fn an_unanswered_consultation_is_refused_480_at_the_deadline() {
    let (mut t, _) = T::new();
    let (_, consult) = consultation(&mut t);
    let out = t.after(30 * SECOND);
    assert!(has(
        &out,
        |a| matches!(a, Action::Refuse { leg, code: 480, .. } if *leg == consult)
    ));
}

#[test]
fn consultations_the_call_cannot_take_are_refused_with_the_right_code() {
    let (mut t, _) = T::new();
    let consult = |t: &mut T, agent: &str, offer: Option<Vec<u8>>, port_free: bool| {
        let leg = t.call.reserve_leg();
        let out = t.on(Event::Consult {
            leg,
            agent: agent.into(),
            agency: "damkar".into(),
            offer,
            port_free,
        });
        out.iter().find_map(|a| match a {
            Action::Refuse { code, .. } => Some(*code),
            _ => None,
        })
    };
    assert_eq!(
        consult(&mut t, "ct-01", Some(ok_sdp()), true),
        Some(403),
        "no call"
    );
    t.talking("ct-01");
    assert_eq!(
        consult(&mut t, "ct-02", Some(ok_sdp()), true),
        Some(403),
        "not theirs"
    );
    assert_eq!(
        consult(&mut t, "ct-01", None, true),
        Some(488),
        "late offer"
    );
    assert_eq!(consult(&mut t, "ct-01", Some(ok_sdp()), false), Some(503));
    t.transfer();
    assert_eq!(
        consult(&mut t, "ct-01", Some(ok_sdp()), true),
        Some(486),
        "busy"
    );
}

#[test]
fn a_blind_refer_to_an_agency_releases_the_phone_and_the_caller_waits() {
    let (mut t, _) = T::new();
    let agent = t.talking("ct-01");
    let (token, out) = refer(&mut t, agent, "sip:satpolpp@siaga", None);
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(404)));
    let (token, out) = refer(&mut t, agent, "sip:damkar@siaga", None);
    assert!(replied(&out, token).is_none());
    let out = t.on(Event::TransferQueued(true));
    assert_eq!(replied(&out, token), Some(&ReplyWith::Status(202)));
    assert!(has(&out, |a| matches!(
        a,
        Action::EndLeg { leg: Some(l), notify: Some((200, _)) } if *l == agent
    )));
    assert!(acd_ended(&out, "ct-01"));
    let d = t.dispatcher_rings("disp-damkar-01");
    let out = t.on(Event::Placed(d, Placed::Answered(ok_sdp())));
    assert_eq!(bridged_for(&out).as_deref(), Some("disp-damkar-01"));
}

#[test]
fn a_dispatcher_hanging_up_mid_consultation_gives_the_caller_back_to_the_agent() {
    let (mut t, agent) = T::transferring();
    let d = t.dispatcher_talks("disp-damkar-01");
    let out = t.on(Event::Placed(d, Placed::Ended));
    assert_eq!(
        transfer_outcome(&out).as_deref(),
        Some("dispatcher_hung_up")
    );
    assert!(has(&out, |a| matches!(
        a,
        Action::Media(MediaOp::EndConsult)
    )));
    // The agent still has the caller.
    let out = t.caller_hangs_up();
    assert!(ends(&out, agent));
    assert!(acd_ended(&out, "ct-01"));
}

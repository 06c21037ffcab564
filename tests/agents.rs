//! Agents on real softphones (baresip) taking real callers (SIPp): digest
//! registration, skill routing, no-answer, abandoned calls, and both voices
//! in the one recording.

mod common;

use common::audio::{read_stereo, tone_ratio};
use common::baresip::{wait_registered, Baresip, Phone};
use common::rawsip::{header, status_of, RawSip};
use common::{Server, Setup, Sipp};
use std::path::Path;
use std::time::Duration;

const CALLER_TONE: f64 = 1000.0;
const AGENT_TONE: f64 = 600.0;

fn phone(user: &'static str, auto_answer: bool, tone_hz: f64) -> Phone<'static> {
    let password: &'static str = Box::leak(format!("contoh-sandi-{user}").into_boxed_str());
    Phone {
        user,
        password,
        auto_answer,
        tone_hz,
    }
}

fn agents_setup(queues: Option<&str>) -> Setup {
    Setup {
        agents: true,
        queues: queues.map(String::from),
        ..Setup::default()
    }
}

/// A baresip phone for `user`, registered and its agent made ready.
fn ready_phone(server: &Server, user: &'static str, auto_answer: bool, tone_hz: f64) -> Baresip {
    let p = Baresip::start(phone(user, auto_answer, tone_hz), server.sip);
    wait_registered(server, user, &p);
    server.set_ready(user);
    p
}

/// A SIPp caller with the caller tone; returns the call record once done.
fn call(server: &Server, service: &str, ms: u32) -> serde_json::Value {
    let sipp = Sipp::new(CALLER_TONE);
    let d = ms.to_string();
    let before = server
        .get("/api/calls?limit=1000")
        .1
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let r = sipp.run(
        "uac_tone.xml",
        server.sip,
        &["-s", service, "-d", &d],
        Duration::from_secs(40),
    );
    assert_eq!(
        r.code,
        Some(0),
        "caller failed:\n{}\n{}\nserver:\n{}",
        r.output,
        r.errors,
        server.log()
    );
    let (_, calls) = server.get("/api/calls?limit=1000");
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), before + 1);
    let id = calls[0]["sip_call_id"].as_str().unwrap().to_string();
    server.wait_call_done(&id, Duration::from_secs(10))
}

/// The tone is there in every half second from `from` to `to` seconds.
/// On failure the message says, per 100 ms of that half second, how loud
/// it was: a gap (silence where the peer sent nothing, or audio lost on
/// the way) reads apart from a tone drowned by something else.
fn assert_tone(samples: &[i16], hz: f64, from: f64, to: f64, what: &str) {
    let mut t = from;
    while t + 0.5 <= to {
        let w = &samples[(t * 8000.0) as usize..((t + 0.5) * 8000.0) as usize];
        let r = tone_ratio(w, hz);
        let loudness: Vec<u32> = w
            .chunks(800)
            .map(|c| common::audio::rms(c) as u32)
            .collect();
        assert!(
            r > 0.8,
            "{what}: {hz} Hz missing at {t:.1}s (ratio {r:.3}; rms per 100 ms {loudness:?}; {:.2}s recorded)",
            samples.len() as f64 / 8000.0
        );
        t += 0.5;
    }
}

#[test]
fn a_softphone_agent_answers_and_both_voices_are_in_one_recording() {
    let server = Server::start(agents_setup(None));
    let agent = ready_phone(&server, "ct-01", true, AGENT_TONE);

    let c = call(&server, "112", 4000);
    assert_eq!(c["agent_id"], "ct-01", "server log:\n{}", server.log());
    let answered = c["agent_answered_at"].as_i64().expect("agent answer time");
    assert!(answered >= c["arrived_at"].as_i64().unwrap());
    assert!(
        c["wait_ms"].as_i64().unwrap() < 3000,
        "wait {}",
        c["wait_ms"]
    );
    assert_eq!(c["end_cause"], "caller_bye");

    let (left, right) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    let secs = left.len() as f64 / 8000.0;
    assert!(secs >= 3.5, "recording is {secs:.2}s");
    assert_tone(&left, CALLER_TONE, 0.5, secs - 0.5, "caller on the left");
    assert_tone(&right, AGENT_TONE, 1.0, secs - 0.5, "agent on the right");
    assert!(
        tone_ratio(&right[8000..], CALLER_TONE) < 0.1,
        "caller leaked to the right"
    );

    // The caller's voice reached the agent's phone.
    let heard = agent.heard_at_least(8000);
    assert_eq!(heard.len(), 1, "baresip log:\n{}", agent.log());
    let mut r = hound::WavReader::open(&heard[0]).unwrap();
    let got: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    assert_tone(
        &got,
        CALLER_TONE,
        0.5,
        got.len() as f64 / 8000.0 - 0.5,
        "caller at the agent's phone",
    );

    let a = server.agent("ct-01");
    assert!(a["state"] == "wrap_up" || a["state"] == "ready", "{a}");
}

#[test]
fn calls_go_only_to_agents_with_the_right_skills() {
    let mut setup = agents_setup(None);
    // A Javanese-language line: the route adds `jv` to the queue's needs.
    setup.extra_dialplan = Some(
        "[[route]]\nname = \"ntpd-jawa\"\nmatch = [\"1129\"]\nservice = \"112\"\nqueue = \"ntpd-112\"\nemergency = true\nrequire = { jv = 1 }\n".into(),
    );
    let server = Server::start(setup);
    let plain = Baresip::start(phone("ct-02", true, 700.0), server.sip);
    let javanese = Baresip::start(phone("ct-01", true, AGENT_TONE), server.sip);
    let medic = Baresip::start(phone("medic-01", true, 800.0), server.sip);
    for (id, p) in [
        ("ct-02", &plain),
        ("ct-01", &javanese),
        ("medic-01", &medic),
    ] {
        wait_registered(&server, id, p);
    }
    // ct-02 is idle longest, so longest-idle alone would pick it every time.
    server.set_ready("ct-02");
    std::thread::sleep(Duration::from_millis(100));
    server.set_ready("ct-01");
    std::thread::sleep(Duration::from_millis(100));
    server.set_ready("medic-01");

    let c = call(&server, "119", 2500);
    assert_eq!(
        c["agent_id"], "medic-01",
        "119 needs health skill; ct-02 has none"
    );
    let c = call(&server, "1129", 2500);
    assert_eq!(
        c["agent_id"], "ct-01",
        "the Javanese line needs jv; ct-02 has none"
    );
    let (left, right) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    assert_tone(
        &right,
        AGENT_TONE,
        1.0,
        right.len() as f64 / 8000.0 - 0.5,
        "ct-01's voice",
    );
    assert_tone(
        &left,
        CALLER_TONE,
        0.5,
        left.len() as f64 / 8000.0 - 0.5,
        "caller",
    );
    let c = call(&server, "112", 2500);
    assert_eq!(
        c["agent_id"], "ct-02",
        "a plain 112 call: the triage agent idle longest"
    );
}

#[test]
fn an_agent_who_does_not_answer_is_skipped_and_set_not_ready() {
    let queues = std::fs::read_to_string(common::repo().join("sip-config/queues.toml"))
        .unwrap()
        .replace("ring_timeout = \"15s\"", "ring_timeout = \"2s\"");
    let server = Server::start(agents_setup(Some(&queues)));
    let sleepy = Baresip::start(phone("ct-01", false, AGENT_TONE), server.sip);
    let awake = Baresip::start(phone("ct-02", true, 700.0), server.sip);
    wait_registered(&server, "ct-01", &sleepy);
    wait_registered(&server, "ct-02", &awake);
    server.set_ready("ct-01"); // idle longest: offered first
    std::thread::sleep(Duration::from_millis(100));
    server.set_ready("ct-02");

    let c = call(&server, "112", 5000);
    assert_eq!(c["agent_id"], "ct-02", "server log:\n{}", server.log());
    let a = server.agent("ct-01");
    assert_eq!(a["state"], "not_ready", "{a}");
    assert_eq!(a["reason"], "no_answer");
    let wait = c["wait_ms"].as_i64().unwrap();
    assert!(
        (2000..4500).contains(&wait),
        "rang ct-01 for 2 s first, then ct-02: wait {wait}"
    );
    assert!(
        sleepy.log().contains("Incoming call") || sleepy.log().contains("incoming call"),
        "ct-01's phone rang:\n{}",
        sleepy.log()
    );
}

#[test]
fn unregistered_agents_get_no_calls_and_the_caller_is_listed_as_abandoned() {
    let server = Server::start(agents_setup(None));
    let (status, body) = server.post_json("/api/agents/ct-01/state", r#"{"state":"ready"}"#);
    assert_eq!(status, 409, "an unregistered phone cannot be ready: {body}");
    let (status, _) = server.post_json("/api/agents/nobody/state", r#"{"state":"ready"}"#);
    assert_eq!(status, 404);
    let (status, _) = server.post_json("/api/agents/ct-01/state", r#"{"state":"dancing"}"#);
    assert_eq!(status, 400);

    let c = call(&server, "112", 2500);
    assert!(c["agent_id"].is_null());
    let (_, abandoned) = server.get("/api/abandoned");
    let a = abandoned.as_array().unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["id"], c["id"]);
    assert!(a[0]["wait_ms"].as_i64().unwrap() >= 2000);
    assert_eq!(
        a[0]["caller_number"], "081234567",
        "the number to call back"
    );

    let (_, queues) = server.get("/api/queues");
    let q = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "ntpd-112")
        .unwrap()
        .clone();
    assert_eq!(q["waiting"].as_array().unwrap().len(), 0);
    // ct-01, ct-02 and medic-01 all have triage >= 1.
    assert_eq!(q["agents"]["logged_out"], 3, "{q}");

    // The same number calls again and reaches an agent: the list says
    // it got through since.
    assert!(a[0]["got_through_at"].is_null());
    let _ct01 = ready_phone(&server, "ct-01", true, 700.0);
    let again = call(&server, "112", 2500);
    let answered = again["agent_answered_at"].as_i64().expect("answered");
    let (_, abandoned) = server.get("/api/abandoned");
    assert_eq!(abandoned[0]["id"], c["id"], "{abandoned}");
    assert_eq!(abandoned[0]["got_through_at"], answered, "{abandoned}");

    // Classified as a prank: no one to call back.
    let incident = c["incident_id"].as_str().unwrap();
    let (status, _) = server.json_as(
        &server.admin,
        "PATCH",
        &format!("/api/incidents/{incident}"),
        Some(r#"{"category":"prank"}"#),
    );
    assert_eq!(status, 200);
    let (_, abandoned) = server.get("/api/abandoned");
    assert_eq!(abandoned, serde_json::json!([]));
}

/// RFC 3261 §22 with RFC 7616: a REGISTER without credentials is
/// challenged, a wrong password is refused, the right one binds; an
/// emergency call from the same address is taken whatever its REGISTERs did.
#[test]
fn digest_registration_refuses_wrong_passwords_but_never_emergency_calls() {
    let server = Server::start(agents_setup(None));
    let c = RawSip::new(server.sip, "127.0.0.1");
    let l = c.local();
    let register = |cseq: u32, auth: Option<String>| {
        common::rawsip::register(l, server.sip, "ct-01", cseq, auth.as_deref())
    };
    c.send(&register(1, None));
    let (code, resp) = c.final_status(Duration::from_secs(3)).unwrap();
    assert_eq!(code, 401);
    let challenge = header(&resp, "WWW-Authenticate").unwrap().to_string();
    assert!(
        challenge.contains("algorithm=MD5") && challenge.contains("qop=\"auth\""),
        "{challenge}"
    );
    let nonce = common::rawsip::nonce_of(&resp);
    let answer = |password: &str, nc: &str| {
        common::rawsip::register_digest(server.sip, "ct-01", password, &nonce, nc)
    };
    c.send(&register(2, Some(answer("salah-sandi", "00000001"))));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(401),
        "wrong password"
    );
    assert_eq!(server.agent("ct-01")["registered"], false);

    c.send(&register(3, Some(answer("contoh-sandi-ct-01", "00000002"))));
    let (code, ok) = c.final_status(Duration::from_secs(3)).unwrap();
    assert_eq!(code, 200);
    assert!(
        header(&ok, "Contact").unwrap().contains("expires=120"),
        "{ok}"
    );
    // The ACD learns of the binding a moment after the 200 OK.
    let mut registered = false;
    for _ in 0..40 {
        registered = server.agent("ct-01")["registered"] == true;
        if registered {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(registered, "ct-01 shows as registered");

    // A replayed response is refused.
    c.send(&register(4, Some(answer("contoh-sandi-ct-01", "00000002"))));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(401),
        "replayed nc"
    );

    // Several more wrong passwords: the source is slowed (and later
    // blocked) for REGISTER, yet an emergency call from it is answered.
    for i in 0..3 {
        c.send(&register(
            10 + i,
            Some(answer("tebakan", &format!("{:08x}", 10 + i))),
        ));
        let _ = c.final_status(Duration::from_secs(8));
    }
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    c.send(&common::rawsip::invite(
        l,
        server.sip,
        "112",
        "reg-emergency",
        "z9hG4bK-reg-em",
        rtp.local_addr().unwrap().port(),
    ));
    let (code, _) = c
        .final_status(Duration::from_secs(3))
        .expect("emergency call answered");
    assert_eq!(code, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the emergency call was not slowed"
    );
    assert!(status_of(&ok).is_some());
}

/// *11 ready, *12 not ready, *13 log out, dialed from the softphone: the
/// INVITE is digest-authenticated as the agent, the phone hears two beeps.
#[test]
fn feature_codes_from_the_softphone_change_the_agent_state() {
    let server = Server::start(agents_setup(None));
    let agent = Baresip::start(phone("ct-01", true, AGENT_TONE), server.sip);
    wait_registered(&server, "ct-01", &agent);
    assert_eq!(server.agent("ct-01")["state"], "logged_out");

    agent.command("dial", Some(&format!("sip:*11@{}", server.sip)));
    server.wait_agent("ct-01", "ready after *11", |a| a["state"] == "ready");
    std::thread::sleep(Duration::from_millis(2500));
    agent.command("dial", Some(&format!("sip:*12@{}", server.sip)));
    server.wait_agent("ct-01", "not ready after *12", |a| {
        a["state"] == "not_ready" && a["reason"] == "break"
    });
    std::thread::sleep(Duration::from_millis(2500));
    agent.command("dial", Some(&format!("sip:*13@{}", server.sip)));
    server.wait_agent("ct-01", "logged out after *13", |a| {
        a["state"] == "logged_out"
    });
    std::thread::sleep(Duration::from_millis(2500));

    // The confirmation beeps (880 Hz) reached the phone.
    let heard = agent.heard();
    assert!(!heard.is_empty(), "{}", agent.log());
    let mut r = hound::WavReader::open(&heard[0]).unwrap();
    let got: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let beep = (0..got.len().saturating_sub(1200))
        .step_by(400)
        .any(|i| tone_ratio(&got[i..i + 1200], 880.0) > 0.8);
    assert!(beep, "no confirmation beep in what the phone heard");
}

/// The caller hangs up while the agent's phone rings: the ringing stops
/// (CANCEL) and the agent is ready again, not stuck ringing.
#[test]
fn a_caller_leaving_while_the_agent_rings_cancels_the_ringing() {
    let server = Server::start(agents_setup(None));
    let agent = ready_phone(&server, "ct-01", false, AGENT_TONE);
    let c = call(&server, "112", 2000);
    assert!(c["agent_id"].is_null());
    server.wait_agent("ct-01", "ready again", |a| a["state"] == "ready");
    let log = agent.log_when(|log| {
        (log.contains("Incoming call") || log.contains("incoming call"))
            && (log.contains("terminated") || log.contains("closed"))
    });
    assert!(
        log.contains("Incoming call") || log.contains("incoming call"),
        "{log}"
    );
    assert!(
        log.contains("terminated") || log.contains("closed"),
        "the phone stopped ringing:\n{log}"
    );

    // The phone goes away (it unregisters as it quits): never left ready.
    agent.command("quit", None);
    server.wait_agent("ct-01", "logged out once unregistered", |a| {
        a["registered"] == false && a["state"] == "logged_out"
    });
}

/// A caller on raw SIP (so it can take the server's BYE), answered and
/// ACKed: its SIP socket, its RTP socket, the Call-ID and the 200 OK.
struct RawCall {
    c: RawSip,
    rtp: std::net::UdpSocket,
    call_id: String,
    ok: String,
}

fn raw_call(server: &Server, name: &str) -> RawCall {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let call_id = format!("{name}-{rtp_port}");
    c.send(&common::rawsip::invite(
        c.local(),
        server.sip,
        "112",
        &call_id,
        &format!("z9hG4bK-{name}-1"),
        rtp_port,
    ));
    let (code, ok) = c.final_status(Duration::from_secs(3)).unwrap();
    assert_eq!(code, 200);
    let dialog = common::rawsip::Dialog::from_ok(server.sip, c.local(), &call_id, &ok);
    c.send(&dialog.request("ACK", 1, &format!("z9hG4bK-{name}-2"), None));
    RawCall {
        c,
        rtp,
        call_id,
        ok,
    }
}

/// A quick disposition on a desk phone's call: the panel ends the call
/// (`POST /api/calls/{id}/hangup`), and both the caller's leg and the
/// desk phone's end, as the call-taker's hang-up; the phone is free for
/// the next call.
#[test]
fn the_panel_hangs_up_a_desk_phones_call() {
    let server = Server::start(agents_setup(None));
    let agent = ready_phone(&server, "ct-01", true, AGENT_TONE);
    // A raw caller, so it can take the server's BYE.
    let RawCall { c, call_id, .. } = raw_call(&server, "panel-hangup");
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");
    // The call's record follows the call (records never hold calls up).
    let began = std::time::Instant::now();
    let id = loop {
        if let Some(call) = server.calls_with(&call_id).first() {
            break call["id"].as_str().unwrap().to_string();
        }
        assert!(began.elapsed() < Duration::from_secs(10), "no record");
        std::thread::sleep(Duration::from_millis(50));
    };
    let hang_up = || {
        server.json_as(
            &server.admin,
            "POST",
            &format!("/api/calls/{id}/hangup"),
            Some("{}"),
        )
    };
    let (status, body) = hang_up();
    assert_eq!(status, 204, "{body}");
    let msgs = c.collect(Duration::from_secs(3));
    let bye = msgs
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.starts_with("BYE "))
        .expect("BYE to the caller");
    c.send(&common::rawsip::ok_to(bye));
    let done = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(done["end_cause"], "agent_bye", "{done}");
    let log = agent.log_when(|log| log.contains("terminated") || log.contains("closed"));
    assert!(
        log.contains("terminated") || log.contains("closed"),
        "{log}"
    );
    assert_ne!(hang_up().0, 204, "nothing left to hang up");
}

/// On hold (re-INVITE from the agent's phone) the caller hears hold music,
/// not the agent; on resume the agent again. The agent's BYE ends both
/// legs and the caller gets a BYE.
#[test]
fn agent_hold_resume_and_hang_up() {
    let server = Server::start(agents_setup(None));
    let agent = ready_phone(&server, "ct-01", true, AGENT_TONE);

    // A raw caller, so it can take the server's BYE.
    let RawCall {
        c,
        rtp,
        call_id,
        ok,
    } = raw_call(&server, "hold");
    // Send the caller's tone for the whole call from a thread.
    let server_rtp = ok
        .split("m=audio ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let rtp = rtp.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut seq = 0u16;
            let mut ts = 0u32;
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pkt = common::audio::alaw_tone_packet(seq, ts, 0x1234, CALLER_TONE);
                let _ = rtp.send_to(&pkt, ("127.0.0.1", server_rtp));
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
                n += 1;
                let next = start + Duration::from_millis(20 * u64::from(n));
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
        })
    };
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");
    std::thread::sleep(Duration::from_millis(2000));
    agent.command("hold", None);
    std::thread::sleep(Duration::from_millis(2500));
    agent.command("resume", None);
    std::thread::sleep(Duration::from_millis(2500));
    agent.command("hangup", None);

    // The caller is sent a BYE.
    let msgs = c.collect(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let bye = msgs
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.starts_with("BYE "))
        .expect("BYE to the caller");
    c.send(&common::rawsip::ok_to(bye));

    let call = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(call["end_cause"], "agent_bye");
    assert_eq!(call["agent_id"], "ct-01");
    let (left, right) = read_stereo(Path::new(call["recording_path"].as_str().unwrap()));
    let answered = (call["agent_answered_at"].as_i64().unwrap()
        - call["answered_at"].as_i64().unwrap()) as f64
        / 1000.0;
    let at = |t: f64| {
        &right[((answered + t) * 8000.0) as usize..((answered + t + 0.5) * 8000.0) as usize]
    };
    // Talking, then on hold (music, no agent), then talking again.
    assert!(tone_ratio(at(1.0), AGENT_TONE) > 0.8, "agent before hold");
    let held = at(3.2);
    assert!(
        tone_ratio(held, AGENT_TONE) < 0.2,
        "agent still heard on hold"
    );
    assert!(common::audio::rms(held) > 200.0, "hold music, not silence");
    assert!(tone_ratio(at(5.8), AGENT_TONE) > 0.8, "agent after resume");
    assert!(
        tone_ratio(&left[8000..16000], CALLER_TONE) > 0.8,
        "caller on the left"
    );
    let _ = status_of("");
}

fn overflow_queues(target: &str) -> String {
    format!(
        r#"[[queue]]
name = "ntpd-112"
max_wait = "1500ms"
overflow = "{target}"
require = {{ triage = 1 }}
[[queue]]
name = "psc-119"
max_wait = "60s"
[[queue]]
name = "backup"
max_wait = "600s"
"#
    )
}

/// Past max wait with no agent, the caller is handed to another center
/// (a SIP target: here SIPp answering and echoing RTP); the bridge and the
/// recording carry on, and the hand-over is on the call's record.
#[test]
fn a_caller_past_max_wait_is_handed_to_another_center() {
    let uas_port = common::free_udp_port();
    let target = format!("sip:112@127.0.0.1:{uas_port}");
    let server = Server::start(agents_setup(Some(&overflow_queues(&target))));
    common::sipp_echo_uas(uas_port, Duration::from_secs(30));

    let c = call(&server, "112", 5000);
    assert_eq!(
        c["agent_id"].as_str(),
        Some(target.as_str()),
        "{}",
        server.log()
    );
    let (_, detail) = server.get(&format!("/api/calls/{}", c["id"].as_str().unwrap()));
    assert_eq!(detail["events"][0]["kind"], "overflow");
    assert_eq!(
        detail["events"][0]["detail"],
        format!("ntpd-112 -> {target}")
    );
    // The other center echoes what it hears: the caller's tone comes back.
    let (_, right) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    assert_tone(
        &right,
        CALLER_TONE,
        2.5,
        right.len() as f64 / 8000.0 - 0.5,
        "echo from the other center",
    );
    common::stop_sipp_on(uas_port);
}

/// The other center cannot be reached: the caller goes back to the queue
/// (still hearing prompts), never dropped, and the failure is on record.
#[test]
fn an_unreachable_overflow_target_puts_the_caller_back_in_the_queue() {
    // Nobody listens on this port: the INVITE meets ICMP port unreachable.
    let dead = common::free_udp_port();
    let target = format!("sip:112@127.0.0.1:{dead}");
    let server = Server::start(agents_setup(Some(&overflow_queues(&target))));
    // Overflow at 1.5 s, silence for 4 s, back in the queue at about 5.5 s.
    let c = call(&server, "112", 8000);
    assert!(c["agent_id"].is_null());
    assert_eq!(c["end_cause"], "caller_bye");
    let (_, detail) = server.get(&format!("/api/calls/{}", c["id"].as_str().unwrap()));
    let kinds: Vec<_> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.starts_with(&["overflow".to_string(), "overflow_failed".to_string()]),
        "{kinds:?}\n{}",
        server.log()
    );
    let (left, right) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    assert!(
        common::audio::rms(&right[6 * 8000..]) > 200.0,
        "still hearing prompts after the failure"
    );
    assert!(tone_ratio(&left[8000..], CALLER_TONE) > 0.8);
}

/// Registers a raw UDP "phone" as `user` with MD5 digest.
fn register_raw(server: &Server, phone: &RawSip, user: &str, password: &str) {
    use common::rawsip::{nonce_of, register, register_digest};
    phone.send(&register(phone.local(), server.sip, user, 1, None));
    let (_, challenge) = phone.final_status(Duration::from_secs(3)).unwrap();
    let auth = register_digest(
        server.sip,
        user,
        password,
        &nonce_of(&challenge),
        "00000001",
    );
    phone.send(&register(phone.local(), server.sip, user, 2, Some(&auth)));
    assert_eq!(
        phone.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(200)
    );
    server.wait_agent(user, "registered", |a| a["registered"] == true);
}

/// A phone that answers with no codec in common is hung up, its agent set
/// not ready ("unreachable"), never left ringing; the caller carries on.
#[test]
fn a_phone_answering_without_g711_is_hung_up_and_its_agent_set_not_ready() {
    let server = Server::start(agents_setup(None));
    let phone = RawSip::new(server.sip, "127.0.0.1");
    register_raw(&server, &phone, "ct-02", "contoh-sandi-ct-02");
    server.set_ready("ct-02");

    let caller = common::background_call(server.sip, "112", 4000, Duration::from_secs(30));
    // The phone rings: answer with G.729 only.
    let invite = phone
        .wait_for("INVITE ", Duration::from_secs(5))
        .expect("the agent's phone was rung");
    let sdp = "v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "Call-ID", "CSeq"] {
        ok.push_str(&format!("{h}: {}\r\n", header(&invite, h).unwrap()));
    }
    ok.push_str(&format!(
        "To: {};tag=phone1\r\nContact: <sip:ct-02@{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        header(&invite, "To").unwrap(),
        phone.local(),
        sdp.len()
    ));
    phone.send(&ok);
    // ACK, then BYE from siaga: answer the BYE.
    let bye = phone
        .wait_for("BYE ", Duration::from_secs(3))
        .expect("the phone is hung up");
    phone.send(&common::rawsip::ok_to(&bye));
    server.wait_agent("ct-02", "not ready, not stuck ringing", |a| {
        a["state"] == "not_ready" && a["reason"] == "unreachable"
    });
    assert_eq!(caller.join().unwrap(), Some(0), "the caller carried on");
    let (_, calls) = server.get("/api/calls");
    assert!(calls[0]["agent_id"].is_null());
}

//! Warm transfer with three real parties, each speaking its own tone: a
//! SIPp caller (1000 Hz), the call-taker's baresip (600 Hz) and the Damkar
//! dispatcher's baresip (1400 Hz). What each party received is checked:
//! the caller's side in siaga's recording (its right channel is exactly
//! what went to the caller), the phones' in their own recordings.
//!
//! Attended transfer from the phone needs a baresip that has it: Debian
//! 12's 1.0 does not, so there the call-taker is baresip 4 through its
//! Python bindings (`tests/peers/phone.py`).

mod common;

use common::audio::{read_stereo, tone_ratio};
use common::baresip::{wait_registered, Baresip, Phone};
use common::pyphone::PyPhone;
use common::webdriver::Browser;
use common::{background_call, Server, Setup, TEST_PASSWORD};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const CALLER: f64 = 1000.0;
const TAKER: f64 = 600.0;
const DISPATCHER: f64 = 1400.0;
const WAIT: Duration = Duration::from_secs(15);

/// A registered, ready phone answering by itself.
fn phone(server: &Server, user: &'static str, tone_hz: f64) -> Baresip {
    let p = registered_phone(server, user, tone_hz);
    server.set_ready(user);
    p
}

fn wait_until(what: &str, server: &Server, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < WAIT,
            "{what}; server log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A registered phone answering by itself, its agent not ready yet.
fn registered_phone(server: &Server, user: &'static str, tone_hz: f64) -> Baresip {
    let password: &'static str = Box::leak(format!("contoh-sandi-{user}").into_boxed_str());
    let p = Baresip::start(
        Phone {
            user,
            password,
            auto_answer: true,
            tone_hz,
        },
        server.sip,
    );
    wait_registered(server, user, &p);
    p
}

/// The Damkar dispatcher's panel, logged in as `damkar1`.
fn damkar_panel(server: &Server, name: &str) -> Browser {
    let b = Browser::start(name);
    b.login(
        &format!("http://{}", server.http),
        "damkar1",
        TEST_PASSWORD,
        "/dispatcher",
    );
    b
}

/// The call in progress, once it is bridged to ct-01 and on record (the
/// ACD can say "on call" before the store writer has written the call).
fn bridged_call(server: &Server) -> Value {
    wait_until("the call reaches the call-taker", server, || {
        server.agent("ct-01")["state"] == "on_call"
    });
    let mut call = Value::Null;
    wait_until("the call is on record", server, || {
        call = server.get("/api/calls?limit=1").1[0].clone();
        call["id"].is_string()
    });
    call
}

fn steer(server: &Server, who: &str, call: &str, path: &str, body: &str) {
    let (status, resp) = server.json_as(
        who,
        "POST",
        &format!("/api/calls/{call}/transfer{path}"),
        Some(body),
    );
    assert!(
        status < 300,
        "transfer{path}: {status} {resp}\n{}",
        server.log()
    );
}

fn samples(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    r.samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Half-second windows of `s` from `from` to `to` seconds.
fn windows(s: &[i16], from: f64, to: f64) -> Vec<&[i16]> {
    let mut out = Vec::new();
    let mut t = from;
    while t + 0.5 <= to && ((t + 0.5) * 8000.0) as usize <= s.len() {
        out.push(&s[(t * 8000.0) as usize..((t + 0.5) * 8000.0) as usize]);
        t += 0.5;
    }
    out
}

/// In every window from..to: each of `present` is there (alone: > 0.8;
/// mixed with another: > 0.25), none of `absent` is (< 0.1). A peer's
/// own recording may show one dip where the caller's looped tone file
/// restarts (SIPp): one window in eight may fall to half the floor.
fn assert_heard(s: &[i16], from: f64, to: f64, present: &[f64], absent: &[f64], what: &str) {
    let ws = windows(s, from, to);
    assert!(
        ws.len() >= 2,
        "{what}: too little audio ({from:.1}..{to:.1} s of {:.1} s)",
        s.len() as f64 / 8000.0
    );
    let floor = if present.len() > 1 { 0.25 } else { 0.8 };
    let mut dips = 0;
    for (i, w) in ws.iter().enumerate() {
        let t = from + i as f64 * 0.5;
        for hz in present {
            let r = tone_ratio(w, *hz);
            if r <= floor {
                dips += 1;
                assert!(
                    r > floor / 2.0 && dips <= ws.len().div_ceil(8),
                    "{what}: {hz} Hz missing at {t:.1} s (ratio {r:.3})"
                );
            }
        }
        for hz in absent {
            let r = tone_ratio(w, *hz);
            assert!(r < 0.1, "{what}: {hz} Hz heard at {t:.1} s (ratio {r:.3})");
        }
    }
}

/// The first window (from `from`, by 0.1 s) where all `tones` are mixed.
fn first_mix(s: &[i16], tones: &[f64]) -> Option<f64> {
    (0..s.len().saturating_sub(4000))
        .step_by(800)
        .find(|i| {
            tones
                .iter()
                .all(|hz| tone_ratio(&s[*i..*i + 4000], *hz) > 0.25)
        })
        .map(|i| i as f64 / 8000.0)
}

/// After a cancelled transfer, once the caller is done: the call's record
/// and its only transfer (cancelled, asked by `by`), and what the caller
/// heard (the recording's right channel).
fn cancelled_transfer(
    server: &Server,
    call: &Value,
    caller: std::thread::JoinHandle<Option<i32>>,
    by: &str,
) -> (Value, Value, Vec<i16>) {
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    let done = server.wait_call_done(call["sip_call_id"].as_str().unwrap(), WAIT);
    let (_, detail) = server.get(&format!("/api/calls/{}", call["id"].as_str().unwrap()));
    let t = detail["transfers"][0].clone();
    assert_eq!(t["outcome"], "cancelled");
    assert_eq!(t["requested_by"], by);
    let (_, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    (done, t, right)
}

/// Seconds since the call was answered (the recording's start).
fn at(call: &Value, ms: &Value) -> f64 {
    (ms.as_i64().unwrap() - call["answered_at"].as_i64().unwrap()) as f64 / 1000.0
}

/// Consultation, conference, complete: the caller hears only the hold
/// prompt while call-taker and dispatcher talk, then all three hear each
/// other, then caller and dispatcher talk and the call-taker is freed.
/// The incident goes to Damkar at once (the dispatcher's panel shows it
/// while the phone rings) and the transfer is on the record.
#[test]
fn consult_then_conference_then_complete() {
    let server = Server::start(Setup {
        agents: true,
        ..Setup::default()
    });
    server.add_user("siti", "call-taker", &["--agent", "ct-01"]);
    server.add_user(
        "damkar1",
        "dispatcher",
        &["--agency", "damkar", "--agent", "disp-damkar-01"],
    );
    let siti = server.login("siti", TEST_PASSWORD);
    let taker = phone(&server, "ct-01", TAKER);
    let dispatcher_phone = registered_phone(&server, "disp-damkar-01", DISPATCHER);
    // Siti steers the transfer from her screen.
    let ct = Browser::start("transfer_call_taker");
    ct.login(
        &format!("http://{}", server.http),
        "siti",
        TEST_PASSWORD,
        "/calltaker",
    );
    let b = damkar_panel(&server, "transfer");

    let caller = background_call(server.sip, "112", 22000, Duration::from_secs(40));
    let call = bridged_call(&server);
    let id = call["id"].as_str().unwrap().to_string();
    let incident = call["incident_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));

    // Nobody of Damkar is ready yet: the phone cannot ring, but the
    // incident is theirs at once.
    ct.wait_for(
        "the call on Siti's screen",
        "return !document.querySelector('#call-card').hidden",
        WAIT,
    );
    ct.select("#t-agency", "damkar");
    ct.click("#t-start");
    ct.wait_for(
        "transfer ringing",
        "return document.querySelector('#t-state').dataset.state === 'ringing'",
        WAIT,
    );
    b.wait_for(
        "incident on the Damkar panel while it rings",
        &format!("return !!document.querySelector('tr.incident-row[data-id=\"{incident}\"]')"),
        WAIT,
    );
    b.screenshot("dispatcher-sees-transfer");
    std::thread::sleep(Duration::from_millis(1500));
    server.set_ready("disp-damkar-01");
    wait_until("the dispatcher answers", &server, || {
        server.agent("disp-damkar-01")["state"] == "on_call"
    });
    ct.wait_for(
        "dispatcher on the line",
        "return document.querySelector('#t-state').dataset.state === 'talking' && !document.querySelector('#t-conference').hidden",
        WAIT,
    );
    assert_eq!(
        ct.js("return document.querySelector('#f-agency').value", vec![]),
        "damkar",
        "the form shows the agency the transfer assigned"
    );
    ct.screenshot("consultation");
    std::thread::sleep(Duration::from_secs(3));
    ct.click("#t-conference");
    ct.wait_for(
        "conference",
        "return document.querySelector('#t-state').dataset.state === 'conference'",
        WAIT,
    );
    std::thread::sleep(Duration::from_secs(3));
    ct.click("#t-complete");
    ct.wait_for(
        "completed",
        "return document.querySelector('#t-state').dataset.state === 'completed' || document.querySelector('#call-status').textContent.includes('dialihkan')",
        WAIT,
    );
    ct.screenshot("completed");
    wait_until("the call-taker is freed", &server, || {
        server.agent("ct-01")["state"] != "on_call"
    });
    // The call-taker cannot steer a call that is no longer theirs.
    let (status, _) = server.json_as(
        &siti,
        "POST",
        &format!("/api/calls/{id}/transfer/cancel"),
        Some("{}"),
    );
    assert_eq!(status, 403);
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    let done = server.wait_call_done(call["sip_call_id"].as_str().unwrap(), WAIT);

    let (_, detail) = server.get(&format!("/api/calls/{id}"));
    let t = &detail["transfers"][0];
    assert_eq!(t["agency"], "damkar");
    assert_eq!(t["from_agent"], "ct-01");
    assert_eq!(t["to_agent"], "disp-damkar-01");
    assert_eq!(t["requested_by"], "siti");
    assert_eq!(t["outcome"], "conference_completed");
    assert!(t["recording_sha256"].is_string(), "{t}");
    assert!(t["recording_lost_ms"].is_null(), "{t}");
    let conference = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "conference")
        .expect("conference event")["at"]
        .clone();
    let (_, inc) = server.get(&format!("/api/incidents/{incident}"));
    assert_eq!(inc["agency"], "damkar");
    let actions: Vec<&str> = inc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"transfer_started") && actions.contains(&"transfer_ended"),
        "{actions:?}"
    );

    // What the caller heard (siaga's recording, right channel).
    let (left, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    let answered = at(&done, &t["answered_at"]);
    let conf = at(&done, &conference);
    let complete = at(&done, &t["ended_at"]);
    let end = right.len() as f64 / 8000.0;
    assert_heard(&left, 1.0, end - 0.5, &[CALLER], &[], "caller's own voice");
    assert_heard(
        &right,
        answered + 0.3,
        conf - 0.2,
        &[],
        &[TAKER, DISPATCHER],
        "caller during consultation",
    );
    assert_heard(
        &right,
        conf + 0.3,
        complete - 0.2,
        &[TAKER, DISPATCHER],
        &[],
        "caller in conference",
    );
    assert_heard(
        &right,
        complete + 0.3,
        end - 0.5,
        &[DISPATCHER],
        &[TAKER],
        "caller after complete",
    );

    // The consultation's own recording: call-taker left, dispatcher right.
    let (ct, disp) = read_stereo(Path::new(t["recording_path"].as_str().unwrap()));
    assert_heard(
        &ct,
        0.3,
        conf - answered - 0.2,
        &[TAKER],
        &[CALLER],
        "call-taker in consultation",
    );
    assert_heard(
        &disp,
        0.3,
        conf - answered - 0.2,
        &[DISPATCHER],
        &[],
        "dispatcher in consultation",
    );

    // What the dispatcher's phone received: the call-taker alone first,
    // then caller and call-taker mixed, then the caller alone.
    std::thread::sleep(Duration::from_millis(500));
    let heard = samples(&dispatcher_phone.heard()[0]);
    let mix = first_mix(&heard, &[CALLER, TAKER]).expect("the dispatcher heard the conference");
    assert_heard(
        &heard,
        0.5,
        mix - 0.5,
        &[TAKER],
        &[CALLER],
        "dispatcher in consultation",
    );
    assert_heard(
        &heard,
        mix + 0.5,
        mix + 2.0,
        &[CALLER, TAKER],
        &[],
        "dispatcher in conference",
    );
    let len = heard.len() as f64 / 8000.0;
    assert_heard(
        &heard,
        len - 3.0,
        len - 0.5,
        &[CALLER],
        &[TAKER],
        "dispatcher after complete",
    );

    // What the call-taker's phone received: caller, then the dispatcher
    // alone (the caller on hold), then both.
    let heard = samples(&taker.heard()[0]);
    let mix =
        first_mix(&heard, &[CALLER, DISPATCHER]).expect("the call-taker heard the conference");
    assert_heard(
        &heard,
        0.5,
        1.5,
        &[CALLER],
        &[],
        "call-taker before the transfer",
    );
    assert_heard(
        &heard,
        mix - 2.0,
        mix - 0.3,
        &[DISPATCHER],
        &[CALLER],
        "call-taker in consultation",
    );
    assert_heard(
        &heard,
        mix + 0.3,
        mix + 2.0,
        &[CALLER, DISPATCHER],
        &[],
        "call-taker in conference",
    );
}

/// Cancel (of a transfer to a named dispatcher): the dispatcher's leg
/// ends and caller and call-taker talk again.
#[test]
fn cancel_gives_the_caller_back_to_the_call_taker() {
    let server = Server::start(Setup {
        agents: true,
        ..Setup::default()
    });
    let taker = phone(&server, "ct-01", TAKER);
    let _dispatcher = phone(&server, "disp-damkar-01", DISPATCHER);
    let caller = background_call(server.sip, "112", 14000, Duration::from_secs(30));
    let call = bridged_call(&server);
    let id = call["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(1));
    // A named dispatcher this time.
    steer(
        &server,
        &server.admin,
        &id,
        "",
        r#"{"agent":"disp-damkar-01"}"#,
    );
    wait_until("the dispatcher answers", &server, || {
        server.agent("disp-damkar-01")["state"] == "on_call"
    });
    std::thread::sleep(Duration::from_secs(3));
    steer(&server, &server.admin, &id, "/cancel", "{}");
    wait_until("the dispatcher is freed", &server, || {
        server.agent("disp-damkar-01")["state"] != "on_call"
    });
    assert_eq!(server.agent("ct-01")["state"], "on_call");
    let (done, t, right) = cancelled_transfer(&server, &call, caller, "test-admin");
    let answered = at(&done, &t["answered_at"]);
    let cancelled = at(&done, &t["ended_at"]);
    let end = right.len() as f64 / 8000.0;
    assert_heard(
        &right,
        answered + 0.3,
        cancelled - 0.2,
        &[],
        &[TAKER, DISPATCHER],
        "caller during consultation",
    );
    assert_heard(
        &right,
        cancelled + 0.3,
        end - 0.5,
        &[TAKER],
        &[DISPATCHER],
        "caller after cancel",
    );
    // The call-taker hears the caller again at the end.
    std::thread::sleep(Duration::from_millis(500));
    let heard = samples(&taker.heard()[0]);
    let len = heard.len() as f64 / 8000.0;
    assert_heard(
        &heard,
        len - 2.5,
        len - 0.5,
        &[CALLER],
        &[DISPATCHER],
        "call-taker after cancel",
    );
}

/// No dispatcher answers within the agency's timeout: the call-taker gets
/// the caller back, told so, and the call goes on.
#[test]
fn an_unanswered_transfer_returns_the_caller() {
    let server = Server::start(Setup {
        agents: true,
        agencies: Some(
            "[[agency]]\nid = \"ntpd\"\nname = \"NTPD\"\n[[agency]]\nid = \"psc119\"\nname = \"PSC\"\n\
             [[agency]]\nid = \"damkar\"\nname = \"Damkar\"\nqueue = \"dispatch-damkar\"\ntransfer_timeout = \"3s\"\n"
                .into(),
        ),
        ..Setup::default()
    });
    let _taker = phone(&server, "ct-01", TAKER);
    let caller = background_call(server.sip, "112", 10000, Duration::from_secs(30));
    let call = bridged_call(&server);
    let id = call["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(1));
    steer(&server, &server.admin, &id, "", r#"{"agency":"damkar"}"#);
    // Complete needs a dispatcher on the line.
    let (status, body) = server.json_as(
        &server.admin,
        "POST",
        &format!("/api/calls/{id}/transfer/complete"),
        Some("{}"),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    let done = server.wait_call_done(call["sip_call_id"].as_str().unwrap(), WAIT);
    assert_eq!(
        done["end_cause"], "caller_bye",
        "the caller stayed to the end"
    );
    let (_, detail) = server.get(&format!("/api/calls/{id}"));
    let t = &detail["transfers"][0];
    assert_eq!(t["outcome"], "no_answer");
    assert!(t["to_agent"].is_null());
    let waited =
        (t["ended_at"].as_i64().unwrap() - t["started_at"].as_i64().unwrap()) as f64 / 1000.0;
    assert!((2.9..4.5).contains(&waited), "gave up after {waited} s");
    let (_, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    let back = at(&done, &t["ended_at"]);
    let started = at(&done, &t["started_at"]);
    assert_heard(
        &right,
        started + 0.3,
        back - 0.2,
        &[],
        &[TAKER],
        "caller on hold",
    );
    assert_heard(
        &right,
        back + 0.3,
        right.len() as f64 / 8000.0 - 0.5,
        &[TAKER],
        &[],
        "caller back with the call-taker",
    );
}

/// A blind transfer from the softphone (REFER to the agency): the phone is
/// released at once, the caller waits on hold and then talks with the
/// dispatcher; the incident is Damkar's and the transfer on record.
#[test]
fn blind_transfer_from_the_softphone() {
    let server = Server::start(Setup {
        agents: true,
        ..Setup::default()
    });
    let taker = phone(&server, "ct-01", TAKER);
    let _dispatcher = registered_phone(&server, "disp-damkar-01", DISPATCHER);
    let caller = background_call(server.sip, "112", 14000, Duration::from_secs(30));
    let call = bridged_call(&server);
    let id = call["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    taker.command("transfer", Some(&format!("sip:damkar@{}", server.sip)));
    // Released at once, while nobody of Damkar is ready yet.
    wait_until("the phone is released", &server, || {
        server.agent("ct-01")["state"] != "on_call"
    });
    std::thread::sleep(Duration::from_secs(2));
    server.set_ready("disp-damkar-01");
    wait_until("the dispatcher answers", &server, || {
        server.agent("disp-damkar-01")["state"] == "on_call"
    });
    assert_ne!(
        server.agent("ct-01")["state"],
        "on_call",
        "the phone was released"
    );
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    let done = server.wait_call_done(call["sip_call_id"].as_str().unwrap(), WAIT);
    assert_eq!(done["end_cause"], "caller_bye");
    let (_, detail) = server.get(&format!("/api/calls/{id}"));
    let t = &detail["transfers"][0];
    assert_eq!(t["requested_by"], "ct-01");
    assert_eq!(t["to_agent"], "disp-damkar-01");
    assert_eq!(t["outcome"], "completed");
    let (_, inc) = server.get(&format!(
        "/api/incidents/{}",
        call["incident_id"].as_str().unwrap()
    ));
    assert_eq!(inc["agency"], "damkar");
    // The caller heard the call-taker, then the hold prompt, then the
    // dispatcher.
    let (_, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    let started = at(&done, &t["started_at"]);
    let answered = at(&done, &t["answered_at"]);
    let end = right.len() as f64 / 8000.0;
    let bridged = at(&done, &done["agent_answered_at"]);
    assert_heard(
        &right,
        bridged + 0.3,
        started - 0.2,
        &[TAKER],
        &[],
        "caller before the transfer",
    );
    assert_heard(
        &right,
        started + 0.3,
        answered - 0.2,
        &[],
        &[TAKER, DISPATCHER],
        "caller on hold",
    );
    assert_heard(
        &right,
        answered + 0.3,
        end - 0.5,
        &[DISPATCHER],
        &[TAKER],
        "caller with the dispatcher",
    );
}

/// The call-taker's phone holds the call, dials Damkar and talks with the
/// dispatcher, then does an attended transfer (REFER with Replaces, RFC
/// 5589 §7, baresip 4's own): the caller hears only the hold prompt
/// during the consultation and the dispatcher after; the phone's two
/// calls end; the incident is Damkar's, on their panel while it rings.
#[test]
fn attended_transfer_from_the_softphone() {
    let server = Server::start(Setup {
        agents: true,
        ..Setup::default()
    });
    server.add_user(
        "damkar1",
        "dispatcher",
        &["--agency", "damkar", "--agent", "disp-damkar-01"],
    );
    let mut taker = PyPhone::start("ct-01", TAKER, server.sip);
    server.set_ready("ct-01");
    let dispatcher = registered_phone(&server, "disp-damkar-01", DISPATCHER);
    let b = damkar_panel(&server, "attended_transfer");

    let caller = background_call(server.sip, "112", 24000, Duration::from_secs(40));
    let call = bridged_call(&server);
    let id = call["id"].as_str().unwrap().to_string();
    let incident = call["incident_id"].as_str().unwrap().to_string();
    taker.wait_for("ESTABLISHED 1", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    taker.send("hold 1");
    std::thread::sleep(Duration::from_millis(500));
    taker.send(&format!("dial sip:damkar@{}", server.sip));
    // Nobody of Damkar is ready yet: the consultation rings, and the
    // incident is on their panel already.
    b.wait_for(
        "incident on the Damkar panel while the consultation rings",
        &format!("return !!document.querySelector('tr.incident-row[data-id=\"{incident}\"]')"),
        WAIT,
    );
    b.screenshot("attended-transfer-ringing");
    std::thread::sleep(Duration::from_secs(1));
    server.set_ready("disp-damkar-01");
    taker.wait_for("ESTABLISHED 2", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    taker.send("atransfer");
    taker.wait_for("TRANSFERRED", WAIT);
    taker.wait_for("CLOSED 1", WAIT);
    taker.wait_for("CLOSED 2", WAIT);
    wait_until("the call-taker is freed", &server, || {
        server.agent("ct-01")["state"] != "on_call"
    });
    assert_eq!(server.agent("disp-damkar-01")["state"], "on_call");
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    let done = server.wait_call_done(call["sip_call_id"].as_str().unwrap(), WAIT);
    assert_eq!(
        done["end_cause"], "caller_bye",
        "the caller stayed to the end"
    );

    let (_, detail) = server.get(&format!("/api/calls/{id}"));
    let t = &detail["transfers"][0];
    assert_eq!(detail["transfers"].as_array().unwrap().len(), 1);
    assert_eq!(t["agency"], "damkar");
    assert_eq!(t["from_agent"], "ct-01");
    assert_eq!(t["to_agent"], "disp-damkar-01");
    assert_eq!(t["requested_by"], "ct-01");
    assert_eq!(t["outcome"], "completed");
    assert!(t["recording_sha256"].is_string(), "{t}");
    let (_, inc) = server.get(&format!("/api/incidents/{incident}"));
    assert_eq!(inc["agency"], "damkar");

    // What the caller heard: the call-taker, the hold prompt while the
    // phone consulted, then the dispatcher.
    let (_, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    let bridged = at(&done, &done["agent_answered_at"]);
    let started = at(&done, &t["started_at"]);
    let answered = at(&done, &t["answered_at"]);
    let completed = at(&done, &t["ended_at"]);
    let end = right.len() as f64 / 8000.0;
    assert_heard(
        &right,
        bridged + 0.5,
        bridged + 1.8,
        &[TAKER],
        &[],
        "caller before the transfer",
    );
    assert_heard(
        &right,
        started + 0.3,
        completed - 0.2,
        &[],
        &[TAKER, DISPATCHER],
        "caller during the consultation",
    );
    assert_heard(
        &right,
        completed + 0.5,
        end - 0.5,
        &[DISPATCHER],
        &[TAKER],
        "caller with the dispatcher",
    );
    // The consultation's file: the phone's consultation leg left (its
    // first leg was on hold), the dispatcher right.
    let (ct, disp) = read_stereo(Path::new(t["recording_path"].as_str().unwrap()));
    let consulted = completed - answered;
    assert_heard(
        &ct,
        0.3,
        consulted - 0.3,
        &[TAKER],
        &[CALLER],
        "call-taker in consultation",
    );
    assert_heard(
        &disp,
        0.3,
        consulted - 0.3,
        &[DISPATCHER],
        &[CALLER],
        "dispatcher in consultation",
    );

    // The phone's own ears: the caller on its first call, the dispatcher
    // (never the caller) on the consultation.
    let first = samples(&taker.heard(1));
    assert_heard(
        &first,
        0.5,
        1.5,
        &[CALLER],
        &[DISPATCHER],
        "call-taker before hold",
    );
    let second = samples(&taker.heard(2));
    let len = second.len() as f64 / 8000.0;
    assert_heard(
        &second,
        0.5,
        len - 0.5,
        &[DISPATCHER],
        &[CALLER],
        "call-taker in consultation",
    );
    // The dispatcher's: the call-taker first, the caller at the end.
    std::thread::sleep(Duration::from_millis(500));
    let heard = samples(&dispatcher.heard()[0]);
    let len = heard.len() as f64 / 8000.0;
    assert_heard(
        &heard,
        0.5,
        2.0,
        &[TAKER],
        &[CALLER],
        "dispatcher in consultation",
    );
    assert_heard(
        &heard,
        len - 3.0,
        len - 0.5,
        &[CALLER],
        &[TAKER],
        "dispatcher after the transfer",
    );
    taker.quit();
}

/// The phone hangs up its consultation instead of transferring: the
/// transfer is cancelled, the dispatcher freed, and once the phone takes
/// the call off hold the caller and the call-taker talk again.
#[test]
fn attended_consultation_hung_up_gives_the_caller_back() {
    let server = Server::start(Setup {
        agents: true,
        ..Setup::default()
    });
    let mut taker = PyPhone::start("ct-01", TAKER, server.sip);
    server.set_ready("ct-01");
    let _dispatcher = phone(&server, "disp-damkar-01", DISPATCHER);
    let caller = background_call(server.sip, "112", 16000, Duration::from_secs(30));
    let call = bridged_call(&server);
    taker.wait_for("ESTABLISHED 1", WAIT);
    std::thread::sleep(Duration::from_secs(1));
    taker.send("hold 1");
    std::thread::sleep(Duration::from_millis(500));
    taker.send(&format!("dial sip:damkar@{}", server.sip));
    taker.wait_for("ESTABLISHED 2", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    taker.send("hangup 2");
    taker.wait_for("CLOSED 2", WAIT);
    wait_until("the dispatcher is freed", &server, || {
        server.agent("disp-damkar-01")["state"] != "on_call"
    });
    taker.send("resume 1");
    assert_eq!(server.agent("ct-01")["state"], "on_call");
    let (done, t, right) = cancelled_transfer(&server, &call, caller, "ct-01");
    let started = at(&done, &t["started_at"]);
    let cancelled = at(&done, &t["ended_at"]);
    let end = right.len() as f64 / 8000.0;
    assert_heard(
        &right,
        started + 0.3,
        cancelled - 0.2,
        &[],
        &[TAKER, DISPATCHER],
        "caller during the consultation",
    );
    // Resumed about when the dispatcher was seen freed; allow a second.
    assert_heard(
        &right,
        cancelled + 1.5,
        end - 0.5,
        &[TAKER],
        &[DISPATCHER],
        "caller back with the call-taker",
    );
    taker.quit();
}

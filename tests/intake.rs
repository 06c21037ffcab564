//! Call intake against the real binary over real sockets: SIPp as the
//! caller, a raw client for exact RFC checks, the recording checked for the
//! caller's tone. Each test names the behaviour (and RFC section) it pins.

mod common;

use common::audio::{find_exact, prompt_through_alaw, read_stereo, rms, tone_ratio};
use common::gate::Gate;
use common::rawsip::{self, header, status_of, udp_drops, RawSip};
use common::{free_udp_port, sha256_hex, Server, Setup, Sipp};
use std::path::Path;
use std::time::Duration;

const CALLER_TONE: f64 = 1000.0;

/// Runs a SIPp caller with a tone to `service`, returns its SIP Call-ID.
/// A SIPp caller playing CALLER_TONE for `ms` to `service`, which must
/// end well; nothing asked of the database.
fn sipp_tone_call(server: &Server, service: &str, ms: u32, tcp: bool) {
    let sipp = Sipp::new(CALLER_TONE);
    let d = ms.to_string();
    let mut args = vec!["-s", service, "-d", &d];
    let target = if tcp {
        args.extend(["-t", "t1"]);
        server.sip_tcp
    } else {
        server.sip
    };
    let r = sipp.run("uac_tone.xml", target, &args, Duration::from_secs(30));
    assert_eq!(
        r.code,
        Some(0),
        "SIPp call failed:\n{}\n{}\nserver log:\n{}",
        r.output,
        r.errors,
        server.log()
    );
}

fn tone_call(server: &Server, service: &str, ms: u32, tcp: bool) -> String {
    sipp_tone_call(server, service, ms, tcp);
    newest_call(server, service)["sip_call_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The newest call made to `service` on this server, as listed now.
fn newest_call(server: &Server, service: &str) -> serde_json::Value {
    let calls = server.get("/api/calls?limit=1000").1;
    calls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dialed"] == service)
        .cloned()
        .expect("no call")
}

/// Checks the recording of a call: caller's tone on the left in every
/// half second, the greeting (exactly, through A-law) on the right.
fn check_recording(server: &Server, call: &serde_json::Value, greeting: &str, seconds: f64) {
    let path = call["recording_path"].as_str().expect("recording path");
    let (left, right) = read_stereo(Path::new(path));
    let dur = left.len() as f64 / 8000.0;
    assert!(
        dur >= seconds - 0.5,
        "recording is {dur:.2}s, expected about {seconds}s"
    );
    // The caller's tone, in every half second after set-up.
    let mut t = 0.4;
    while t + 0.5 <= seconds - 0.5 {
        let w = &left[(t * 8000.0) as usize..((t + 0.5) * 8000.0) as usize];
        let r = tone_ratio(w, CALLER_TONE);
        assert!(
            r > 0.8,
            "caller tone missing at {t:.1}s on the left (ratio {r:.3})"
        );
        t += 0.5;
    }
    // Channels are kept apart: no caller tone on the right.
    let r = tone_ratio(&right[3200..], CALLER_TONE);
    assert!(
        r < 0.1,
        "caller tone leaked to the right channel (ratio {r:.3})"
    );
    // The greeting starts the right channel, sample-exact.
    let g = prompt_through_alaw(greeting);
    let head = &g[..g.len().min(8000 * 2)];
    assert!(
        find_exact(&right, head, 1600).is_some(),
        "greeting `{greeting}` not found at the start of the right channel"
    );
    // The stored checksum proves the file unchanged.
    let bytes = std::fs::read(path).unwrap();
    let sum = sha256_hex(&bytes);
    assert_eq!(call["recording_sha256"].as_str(), Some(sum.as_str()));
    // Nothing was left out of it.
    assert!(call["recording_lost_ms"].is_null(), "{call}");
    // The API serves it, whole and by range.
    let url = call["recording_url"].as_str().unwrap();
    let (status, headers, body) = server.get_bytes(url, None);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "audio/wav"));
    assert_eq!(body, bytes);
    let (status, headers, body) = server.get_bytes(url, Some("bytes=40-99"));
    assert_eq!(status, 206);
    assert_eq!(body, &bytes[40..100]);
    let cr = format!("bytes 40-99/{}", bytes.len());
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-range" && *v == cr),
        "{headers:?}"
    );
}

#[test]
fn calls_to_112_and_119_are_answered_recorded_and_open_incidents() {
    let server = Server::start(Setup::default());
    // Longer than `dispositions.ghost_hang_up_within` (5 s): a caller who
    // talked, whose incident stays open for a person.
    let id112 = tone_call(&server, "112", 6000, false);
    let c = server.wait_call_done(&id112, Duration::from_secs(10));
    assert_eq!(c["service"], "112");
    assert_eq!(c["queue"], "ntpd-112");
    assert_eq!(
        c["caller_number"], "081234567",
        "number from P-Asserted-Identity"
    );
    assert_eq!(c["end_cause"], "caller_bye");
    assert_eq!(c["codec"], "PCMA");
    assert_eq!(c["trunk"], "test-trunk");
    assert!(c["answered_at"].as_i64().unwrap() >= c["arrived_at"].as_i64().unwrap());
    assert!(c["wait_ms"].as_i64().unwrap() >= 5500);
    check_recording(&server, &c, "greeting-112", 6.0);

    let inc_id = c["incident_id"].as_str().unwrap();
    let (status, inc) = server.get(&format!("/api/incidents/{inc_id}"));
    assert_eq!(status, 200);
    assert_eq!(inc["status"], "new");
    assert_eq!(inc["service"], "112");
    assert_eq!(inc["caller_number"], "081234567");
    assert_eq!(inc["prior_incidents"], 0);
    assert_eq!(inc["calls"][0]["id"], c["id"]);

    let id119 = tone_call(&server, "119", 3000, false);
    let c = server.wait_call_done(&id119, Duration::from_secs(10));
    assert_eq!(c["service"], "119");
    assert_eq!(c["queue"], "psc-119", "119 has its own queue");
    check_recording(&server, &c, "greeting-119", 3.0);
    let (_, inc) = server.get(&format!(
        "/api/incidents/{}",
        c["incident_id"].as_str().unwrap()
    ));
    assert_eq!(inc["service"], "119");
    assert_eq!(
        inc["prior_incidents"], 1,
        "the same caller called 112 before"
    );
    assert_eq!(inc["recent_incidents"], 1);

    let (_, calls) = server.get("/api/calls");
    assert_eq!(calls[0]["sip_call_id"], id119, "newest first");
    let (_, incidents) = server.get("/api/incidents");
    assert_eq!(incidents.as_array().unwrap().len(), 2);
    let (status, _) = server.get("/api/calls/no-such-call");
    assert_eq!(status, 404);
    let (status, health) = server.get("/healthz");
    assert_eq!((status, health["database"].as_str()), (200, Some("ok")));
    // Two calls are nothing for the recorder: it writes as they come.
    assert_eq!(health["recordings"], "ok", "{health}");
    assert!(
        health["recordings_behind_ms"].as_u64().unwrap() < 2000,
        "{health}"
    );
    assert_eq!(health["recordings_lost_ms"], 0, "{health}");
    assert!(
        health["recordings_unsynced_ms"].as_u64().unwrap() < 2000,
        "{health}"
    );
}

#[test]
fn a_call_over_tcp_is_taken_like_udp() {
    let server = Server::start(Setup::default());
    let id = tone_call(&server, "112", 2500, true);
    let c = server.wait_call_done(&id, Duration::from_secs(10));
    assert_eq!(c["transport"], "tcp");
    assert_eq!(c["end_cause"], "caller_bye");
    check_recording(&server, &c, "greeting-112", 2.5);
}

/// The one call made to `service` on this server, once it has ended.
fn the_call(server: &Server, service: &str) -> serde_json::Value {
    let call = newest_call(server, service);
    server.wait_call_done(
        call["sip_call_id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
}

/// Waits (at most `limit`) until the caller waiting in a queue is marked
/// a silent emergency there, and returns its queue entry.
fn wait_urgent(server: &Server, limit: Duration) -> serde_json::Value {
    let began = std::time::Instant::now();
    loop {
        let (_, queues) = server.get("/api/queues");
        let urgent = queues.as_array().into_iter().flatten().find_map(|q| {
            q["waiting"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| w["urgent"] == true)
                .cloned()
        });
        if let Some(w) = urgent {
            return w;
        }
        assert!(
            began.elapsed() < limit,
            "no waiting caller marked urgent: {queues}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where `prompt` (its first second, as it went out through A-law) is in
/// `heard`, in ms.
fn prompt_at(heard: &[i16], prompt: &str) -> Option<usize> {
    let p = prompt_through_alaw(prompt);
    find_exact(heard, &p[..8000], heard.len()).map(|i| i / 8)
}

/// A caller who cannot speak (the UK's Silent Solution): says nothing
/// through the greeting, so the first announcement asks them to press 5
/// twice; they do, as RFC 4733 telephone-events; the call is marked a
/// silent emergency (on record and once on the incident's trail), goes
/// ahead in the queue, and the caller hears that the sign was received.
/// The recording holds both prompts as they went out; a call with keys
/// pressed is not taken for a ghost call.
#[test]
fn a_silent_caller_is_asked_to_press_five_twice_and_marked_when_they_do() {
    let server = Server::start(Setup::default());
    let target = server.sip;
    let caller = std::thread::spawn(move || {
        let sipp = Sipp::new(CALLER_TONE);
        let args = ["-s", "112", "-d", "9000"];
        let r = sipp.run("uac_silent_55.xml", target, &args, Duration::from_secs(60));
        (r.code, r.output, r.errors)
    });
    let waiting = wait_urgent(&server, Duration::from_secs(40));
    let (code, output, errors) = caller.join().unwrap();
    assert_eq!(code, Some(0), "SIPp:\n{output}\n{errors}\n{}", server.log());
    let c = the_call(&server, "112");
    assert_eq!(waiting["call_id"], c["id"], "{waiting} {c}");
    assert!(c["silent_at"].as_i64().is_some(), "not marked: {c}");
    assert_eq!(c["end_cause"], "caller_bye", "{c}");

    let incident = c["incident_id"].as_str().unwrap();
    let (_, inc) = server.get(&format!("/api/incidents/{incident}"));
    let marks: Vec<&serde_json::Value> = inc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "silent")
        .collect();
    assert_eq!(marks.len(), 1, "{inc}");
    assert_eq!(marks[0]["actor"], "system", "{inc}");
    assert_eq!(marks[0]["new_value"], "55", "{inc}");
    // The incident's page says it in words.
    let (_, _, page) = server.get_bytes(&format!("/incidents/{incident}"), None);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("penelepon menekan 55 (darurat diam)"),
        "{page}"
    );
    assert!(
        inc["category"].is_null(),
        "a caller who pressed keys is no ghost: {inc}"
    );

    // What the caller heard: the greeting, the question, and once they
    // pressed, the answer.
    std::fs::copy(
        c["recording_path"].as_str().unwrap(),
        "/tmp/silent-debug.wav",
    )
    .unwrap();
    std::fs::write("/tmp/silent-debug.log", server.log()).unwrap();
    let (_, heard) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    let greeting = prompt_at(&heard, "greeting-112").expect("no greeting");
    let asked = prompt_at(&heard, "silent").expect("the caller was never asked to press 5 twice");
    let answered =
        prompt_at(&heard, "silent-ack").expect("the caller never heard the sign was received");
    assert!(
        greeting < asked && asked < answered,
        "{greeting} {asked} {answered} ms"
    );
    // The presses came 9 s after the answer; the answer followed them.
    assert!(
        answered >= 9_000,
        "answered at {answered} ms, before the presses"
    );
}

/// A number that pranked three times (`prank_repeat`, the example
/// config's) is never refused: its next call is answered, greeted and
/// recorded, but waits behind a caller who came after it; a supervisor
/// clears the number. The pranks count however the number was written.
#[test]
fn a_repeat_prank_caller_is_answered_but_waits_behind_real_callers() {
    let server = Server::start(Setup::default());
    let from = |number: &str| {
        let sipp = Sipp::new(CALLER_TONE);
        std::fs::write(
            sipp.workdir.path().join("callers.csv"),
            format!("SEQUENTIAL\n{number};\n"),
        )
        .unwrap();
        sipp
    };
    let calls = |server: &Server| server.get("/api/calls?limit=1000").1;
    for (i, written) in ["081299990000", "+6281299990000", "6281299990000"]
        .iter()
        .enumerate()
    {
        let r = from(written).run(
            "uac_tone.xml",
            server.sip,
            &["-s", "112", "-d", "1500"],
            Duration::from_secs(30),
        );
        assert_eq!(r.code, Some(0), "SIPp:\n{}\n{}", r.output, r.errors);
        let all = calls(&server);
        let c = &all.as_array().unwrap()[0];
        assert_eq!(all.as_array().unwrap().len(), i + 1);
        let (status, _) = server.json_as(
            &server.admin,
            "PATCH",
            &format!("/api/incidents/{}", c["incident_id"].as_str().unwrap()),
            Some(r#"{"category":"prank","status":"closed"}"#),
        );
        assert_eq!(status, 200);
    }
    let began = std::time::Instant::now();
    while server.get("/api/pranks").1
        != serde_json::json!([{"number": "081299990000", "pranks": 3}])
    {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{}",
            server.get("/api/pranks").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let call_from = |number: &'static str| {
        let sipp = from(number);
        let target = server.sip;
        std::thread::spawn(move || {
            let args = ["-s", "112", "-d", "10000"];
            sipp.run("uac_tone.xml", target, &args, Duration::from_secs(40))
                .code
        })
    };
    let waiting = |server: &Server| -> Vec<serde_json::Value> {
        let (_, queues) = server.get("/api/queues");
        queues
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|q| q["waiting"].as_array().unwrap().clone())
            .collect()
    };
    let wait_for = |n: usize| {
        let began = std::time::Instant::now();
        loop {
            let w = waiting(&server);
            if w.len() == n {
                return w;
            }
            assert!(began.elapsed() < Duration::from_secs(30), "{w:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let prankster = call_from("+62 812-9999-0000");
    let theirs = wait_for(1)[0]["call_id"].clone();
    let caller = call_from("081211112222");
    let w = wait_for(2);
    // The prankster came first, and waits second.
    assert_ne!(w[0]["call_id"], theirs, "{w:?}");
    assert_eq!(
        (w[0]["position"].as_u64(), w[0]["low"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(w[1]["call_id"], theirs, "{w:?}");
    assert_eq!(
        (w[1]["position"].as_u64(), w[1]["low"].as_bool()),
        (Some(2), Some(true))
    );

    // Cleared by a supervisor: the number is nobody's business any more.
    let (status, _) = server.json_as(
        &server.admin,
        "POST",
        "/api/pranks/clear",
        Some(r#"{"number":"0812 9999 0000"}"#),
    );
    assert_eq!(status, 204);
    assert_eq!(server.get("/api/pranks").1, serde_json::json!([]));

    assert_eq!(prankster.join().unwrap(), Some(0));
    assert_eq!(caller.join().unwrap(), Some(0));
    let id = w[1]["call_id"].as_str().unwrap();
    let (_, c) = server.get(&format!("/api/calls/{id}"));
    let c = server.wait_call_done(c["sip_call_id"].as_str().unwrap(), Duration::from_secs(20));
    assert!(
        c["answered_at"].as_i64().is_some() && c["recording_sha256"].is_string(),
        "{c}"
    );
}

/// A phone that sends its keys as tones in the audio (no
/// telephone-events): 5 twice, pressed during the greeting, marks the
/// call all the same; the greeting gives way to the answer at once.
#[test]
fn five_twice_as_tones_in_the_audio_marks_a_silent_emergency() {
    let server = Server::start(Setup::default());
    let sipp = Sipp::new(CALLER_TONE);
    // A quiet line, 5 twice at 3 s (100 ms each, 100 ms apart), quiet.
    let mut samples = common::audio::dtmf_samples("55", 3000, 100, 100);
    samples.extend(std::iter::repeat_n(0, 8000 * 10));
    common::audio::write_alaw(&sipp.workdir.path().join("caller-tone.wav"), &samples);
    let r = sipp.run(
        "uac_tone.xml",
        server.sip,
        &["-s", "112", "-d", "8000"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "SIPp:\n{}\n{}", r.output, r.errors);
    let c = the_call(&server, "112");
    let marked = c["silent_at"].as_i64().expect("not marked") - c["answered_at"].as_i64().unwrap();
    assert!(
        (3_000..6_000).contains(&marked),
        "marked {marked} ms after the answer: {c}"
    );
    let (_, heard) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
    let answered =
        prompt_at(&heard, "silent-ack").expect("the caller never heard the sign was received");
    let greeting = prompt_through_alaw("greeting-112").len() / 8;
    assert!(
        (3_000..greeting).contains(&answered),
        "answered at {answered} ms: not at once, while the greeting ({greeting} ms) played"
    );
}

/// A recordings folder that cannot take files (here a plain file in its
/// place) costs the recording, never the call: the caller is answered and
/// stays for the whole call, and the record has no path and says why.
/// Once the folder is back, the next call is recorded whole.
#[test]
fn a_recording_that_cannot_be_made_leaves_the_call_whole_and_says_why() {
    let server = Server::start(Setup::default());
    let folder = server.root.path().join("recordings");
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();

    let id = tone_call(&server, "112", 3000, false);
    let c = server.wait_call_done(&id, Duration::from_secs(10));
    assert_eq!(c["end_cause"], "caller_bye", "{c}");
    assert!(c["wait_ms"].as_i64().unwrap() >= 2500, "{c}");
    assert!(c["recording_path"].is_null(), "{c}");
    assert!(c["recording_url"].is_null(), "{c}");
    let error = c["recording_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot create recording"), "{c}");
    assert!(
        server.log().contains("recording could not start"),
        "{}",
        server.log()
    );
    // The health probe tells it, not "ok".
    let (_, health) = server.get("/healthz");
    assert_eq!(health["recordings"], "failing", "{health}");

    std::fs::remove_file(&folder).unwrap();
    std::fs::create_dir(&folder).unwrap();
    let id = tone_call(&server, "112", 3000, false);
    let c = server.wait_call_done(&id, Duration::from_secs(10));
    assert!(c["recording_error"].is_null(), "{c}");
    check_recording(&server, &c, "greeting-112", 3.0);
}

/// RFC 3261 §9.2: CANCEL before the final response gets 200, the INVITE
/// 487; the caller is on record as having left before answer.
#[test]
fn cancel_before_answer_gets_487_and_is_recorded() {
    let server = Server::start(Setup {
        extra_dialplan: Some(
            r#"[[route]]
name = "fire-113"
match = ["113"]
service = "113"
queue = "ntpd-112"
emergency = true
answer_delay = "3s"
"#
            .into(),
        ),
        ..Setup::default()
    });
    let sipp = Sipp::new(CALLER_TONE);
    let r = sipp.run(
        "uac_cancel.xml",
        server.sip,
        &["-s", "113"],
        Duration::from_secs(20),
    );
    assert_eq!(
        r.code,
        Some(0),
        "{}\n{}\n{}",
        r.output,
        r.errors,
        server.log()
    );
    let calls = server.get("/api/calls").1;
    let id = calls[0]["sip_call_id"].as_str().unwrap().to_string();
    let c = server.wait_call_done(&id, Duration::from_secs(10));
    assert_eq!(c["end_cause"], "caller_cancel");
    assert!(c["answered_at"].is_null());
    assert!(c["recording_path"].is_null());
    assert_eq!(c["service"], "113");
}

/// RFC 3261 §17.2.1: a retransmitted INVITE is absorbed by its server
/// transaction (the response is resent); one call results, one dialog.
#[test]
fn a_retransmitted_invite_makes_one_call() {
    let server = Server::start(Setup::default());
    let c = RawSip::new(server.sip, "127.0.0.1");
    let call_id = format!("retrans-{}", free_udp_port());
    let invite = rawsip::invite(c.local(), server.sip, "112", &call_id, "z9hG4bK-rt-1", 4002);
    c.send(&invite);
    std::thread::sleep(Duration::from_millis(100));
    c.send(&invite);
    std::thread::sleep(Duration::from_millis(100));
    c.send(&invite);
    let msgs = c.collect(Duration::from_millis(400));
    let tags: std::collections::BTreeSet<_> = msgs
        .iter()
        .filter(|(_, m)| status_of(m) == Some(200))
        .filter_map(|(_, m)| {
            header(m, "To")
                .and_then(|t| t.split(";tag=").nth(1))
                .map(String::from)
        })
        .collect();
    assert_eq!(tags.len(), 1, "one dialog answered: {msgs:?}");
    assert_eq!(
        server.calls_with(&call_id).len(),
        1,
        "one call for one INVITE transaction"
    );
    let ok = msgs
        .iter()
        .find(|(_, m)| status_of(m) == Some(200))
        .map(|(_, m)| m.clone())
        .unwrap();
    let dialog = rawsip::Dialog::from_ok(server.sip, c.local(), &call_id, &ok);
    c.send(&dialog.request("ACK", 1, "z9hG4bK-rt-2", None));
    c.send(&dialog.request("BYE", 2, "z9hG4bK-rt-3", None));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(200)
    );
    let call = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(call["end_cause"], "caller_bye");
}

/// RFC 3261 §13.3.1.4: the 200 OK is retransmitted (T1, doubling) until the
/// ACK arrives, and not after; the call then goes on normally.
#[test]
fn a_lost_ack_gets_the_200_retransmitted_until_it_comes() {
    let server = Server::start(Setup::default());
    let c = RawSip::new(server.sip, "127.0.0.1");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let call_id = format!("lost-ack-{}", free_udp_port());
    c.send(&rawsip::invite(
        c.local(),
        server.sip,
        "112",
        &call_id,
        "z9hG4bK-la-1",
        rtp_port,
    ));
    // Do not ACK: collect what comes for 2.2 s (200s at ~0, 0.5 and 1.5 s).
    let msgs = c.collect(Duration::from_millis(2200));
    let oks: Vec<_> = msgs
        .iter()
        .filter(|(_, m)| status_of(m) == Some(200))
        .collect();
    assert!(
        oks.len() >= 3,
        "expected the 200 OK at least 3 times, got {}: {msgs:?}",
        oks.len()
    );
    let gap1 = oks[1].0 - oks[0].0;
    let gap2 = oks[2].0 - oks[1].0;
    assert!(
        gap1 >= Duration::from_millis(400) && gap1 <= Duration::from_millis(800),
        "first gap {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(850) && gap2 <= Duration::from_millis(1300),
        "second gap {gap2:?}"
    );
    let dialog = rawsip::Dialog::from_ok(server.sip, c.local(), &call_id, &oks[0].1);
    c.send(&dialog.request("ACK", 1, "z9hG4bK-la-2", None));
    let after = c.collect(Duration::from_millis(2500));
    assert!(
        after.iter().all(|(_, m)| status_of(m) != Some(200)),
        "200 OK still retransmitted after the ACK: {after:?}"
    );
    // The call is alive: a BYE ends it normally.
    c.send(&dialog.request("BYE", 2, "z9hG4bK-la-3", None));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(200)
    );
    let call = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(call["end_cause"], "caller_bye");
}

/// Non-emergency targets and untrusted sources are refused; nothing is
/// recorded for them.
#[test]
fn non_emergency_and_untrusted_invites_are_refused() {
    let server = Server::start(Setup::default());
    let trunk = RawSip::new(server.sip, "127.0.0.1");
    trunk.send(&rawsip::invite(
        trunk.local(),
        server.sip,
        "0215551234",
        "ne-1",
        "z9hG4bK-ne-1",
        4000,
    ));
    assert_eq!(
        trunk.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(404),
        "unknown number"
    );

    // 127.0.0.3 is loopback but not a configured trunk source.
    let stranger = RawSip::new(server.sip, "127.0.0.3");
    stranger.send(&rawsip::invite(
        stranger.local(),
        server.sip,
        "112",
        "ne-2",
        "z9hG4bK-ne-2",
        4000,
    ));
    assert_eq!(
        stranger.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(403),
        "untrusted source"
    );
    // A Via that claims to be the trunk does not help (received= wins).
    let liar = RawSip::new(server.sip, "127.0.0.3");
    let msg = rawsip::invite(
        liar.local(),
        server.sip,
        "112",
        "ne-3",
        "z9hG4bK-ne-3",
        4000,
    )
    .replace(
        &format!("SIP/2.0/UDP {}", liar.local()),
        "SIP/2.0/UDP 127.0.0.1:5060",
    );
    liar.send(&msg);
    assert_eq!(
        liar.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(403)
    );
    // Nor does a `received=` of the sender's own making beside its true
    // sent-by (no rport), nor a copy of the header our reader stamps the
    // real source in: each is refused, and the answer comes back here,
    // to the datagram's real source, not to the trunk the request names.
    let shapes = [
        (";rport", ";received=127.0.0.1".to_string()),
        (
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nX-Siaga-Source: 127.0.0.1:5060\r\nx-siaga-source: 127.0.0.1:5060\r\n"
                .to_string(),
        ),
        (
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nP-Asserted-Identity: <sip:0811@127.0.0.1>\r\n".to_string(),
        ),
    ];
    for (i, (from, to)) in shapes.iter().enumerate() {
        let call_id = format!("ne-spoof-{i}");
        let msg = rawsip::invite(
            liar.local(),
            server.sip,
            "112",
            &call_id,
            &format!("z9hG4bK-{call_id}"),
            4000,
        );
        assert!(msg.contains(from));
        liar.send(&msg.replacen(from, to, 1));
        assert_eq!(
            liar.final_status(Duration::from_secs(3)).map(|x| x.0),
            Some(403),
            "spoofing shape {i}: {to}"
        );
    }
    // A REGISTER with a forged `received=` is answered at its real source
    // too: the registrar and its guard see the sender as it is.
    let reg = rawsip::register(liar.local(), server.sip, "ct-01", 1, None).replacen(
        ";rport",
        ";received=127.0.0.1",
        1,
    );
    liar.send(&reg);
    assert_eq!(
        liar.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(401),
        "the REGISTER's challenge reaches its real source"
    );

    let (_, calls) = server.get("/api/calls");
    assert_eq!(calls.as_array().unwrap().len(), 0);
}

/// OPTIONS 200, unknown methods 501, broken requests 400, garbage dropped,
/// stray BYE 481, keep-alives answered — and the server keeps answering.
#[test]
fn odd_requests_get_proper_answers() {
    let server = Server::start(Setup::default());
    let c = RawSip::new(server.sip, "127.0.0.1");
    let l = c.local();
    let hdrs = |method: &str, n: u32| {
        format!(
            "Via: SIP/2.0/UDP {l};branch=z9hG4bK-odd-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@{l}>;tag=odd{n}\r\nTo: <sip:112@{}>\r\nCall-ID: odd-{n}\r\nCSeq: 1 {method}\r\n",
            server.sip
        )
    };
    c.send(&format!(
        "OPTIONS sip:{} SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
        server.sip,
        hdrs("OPTIONS", 1)
    ));
    let (code, resp) = c
        .final_status(Duration::from_secs(3))
        .expect("OPTIONS answered");
    assert_eq!(code, 200);
    assert!(header(&resp, "Allow").unwrap().contains("INVITE"));

    c.send(&format!(
        "FROBNICATE sip:112@{} SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
        server.sip,
        hdrs("FROBNICATE", 2)
    ));
    let (code, resp) = c
        .final_status(Duration::from_secs(3))
        .expect("unknown method answered");
    assert_eq!(code, 501);
    assert_eq!(header(&resp, "Call-ID"), Some("odd-2"));

    c.send(&format!(
        "INVITE sip:112@{} SIP/2.0\r\n{}Max-Forwards: lots\r\nContent-Length: 0\r\n\r\n",
        server.sip,
        hdrs("INVITE", 3)
    ));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(400),
        "malformed INVITE"
    );

    c.send_bytes(b"\x16\x03\x01\x02\x00\x01garbage that is not SIP at all");
    c.send_bytes(&[0u8; 1200]);
    assert!(
        c.final_status(Duration::from_millis(500)).is_none(),
        "garbage is not answered"
    );

    c.send(&format!(
        "BYE sip:112@{} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-odd-5\r\nFrom: <sip:a@{l}>;tag=x\r\nTo: <sip:112@{}>;tag=nope\r\nCall-ID: no-such-dialog\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        server.sip, server.sip
    ));
    assert_eq!(
        c.final_status(Duration::from_secs(3)).map(|x| x.0),
        Some(481)
    );

    c.send(&format!(
        "SUBSCRIBE sip:112@{} SIP/2.0\r\n{}Event: presence\r\nContent-Length: 0\r\n\r\n",
        server.sip,
        hdrs("SUBSCRIBE", 6)
    ));
    let (code, resp) = c.final_status(Duration::from_secs(3)).unwrap();
    assert_eq!(code, 405);
    assert!(header(&resp, "Allow").is_some());

    // RFC 5626 keep-alives: a double CRLF gets one CRLF back, a lone
    // CRLF (the answer's own shape) gets nothing, so two peers never
    // answer each other forever.
    c.send_bytes(b"\r\n\r\n");
    let got = c.collect(Duration::from_millis(500));
    assert_eq!(
        got.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
        ["\r\n"],
        "keep-alive answered once"
    );
    c.send_bytes(b"\r\n");
    assert!(c.collect(Duration::from_millis(500)).is_empty());
}

/// Garbage, malformed SIP and forged in-dialog requests aimed at the
/// server while a call is up leave that call and its recording whole.
#[test]
fn bad_input_during_a_call_harms_nothing_else() {
    let server = Server::start(Setup::default());
    let target = server.sip;
    let caller = std::thread::spawn({
        let sipp = Sipp::new(CALLER_TONE);
        move || {
            let r = sipp.run(
                "uac_tone.xml",
                target,
                &["-s", "112", "-d", "5000"],
                Duration::from_secs(30),
            );
            (r, sipp)
        }
    });
    // Find the live call.
    let mut live = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let (_, calls) = server.get("/api/calls");
        if let Some(c) = calls.as_array().and_then(|a| a.first()).cloned() {
            live = Some(c);
            break;
        }
    }
    let live = live.expect("call came up");
    let call_id = live["sip_call_id"].as_str().unwrap().to_string();

    let attacker = RawSip::new(server.sip, "127.0.0.1");
    let l = attacker.local();
    for i in 0..200u32 {
        match i % 5 {
            0 => attacker.send_bytes(&i.to_le_bytes().repeat(50)),
            1 => attacker.send(&format!("INVITE sip:112@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {l}\r\nCall-ID: {call_id}\r\n\r\n")),
            // A forged BYE for the live Call-ID with the wrong tags: 481.
            2 => attacker.send(&format!(
                "BYE sip:112@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-f{i}\r\nFrom: <sip:x@{l}>;tag=forged\r\nTo: <sip:112@{target}>;tag=forged\r\nCall-ID: {call_id}\r\nCSeq: 9{i} BYE\r\nContent-Length: 0\r\n\r\n"
            )),
            3 => attacker.send(&format!("SIP/2.0 200 OK\r\nCall-ID: {call_id}\r\n\r\n")),
            _ => attacker.send("\r\n\r\n"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let answers = attacker.collect(Duration::from_millis(500));
    assert!(
        answers.iter().any(|(_, m)| status_of(m) == Some(481)),
        "forged BYEs get 481"
    );

    let (r, _sipp) = caller.join().unwrap();
    assert_eq!(
        r.code,
        Some(0),
        "the real call failed:\n{}\n{}\n{}",
        r.output,
        r.errors,
        server.log()
    );
    let c = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(
        c["end_cause"], "caller_bye",
        "only the caller's BYE ended it"
    );
    check_recording(&server, &c, "greeting-112", 5.0);
}

/// kill -9 mid-call: the WAV is playable up to its last sync, and the next
/// start marks the call interrupted with the file's checksum.
#[test]
fn kill_9_leaves_a_playable_recording_and_restart_marks_the_call() {
    let mut server = Server::start(Setup::default());
    let target = server.sip;
    let sipp = Sipp::new(CALLER_TONE);
    let caller = std::thread::spawn(move || {
        let r = sipp.run(
            "uac_tone.xml",
            target,
            &["-s", "112", "-d", "8000"],
            Duration::from_secs(12),
        );
        drop(r);
        sipp
    });
    let mut live = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(c) = server
            .get("/api/calls")
            .1
            .as_array()
            .and_then(|a| a.first())
            .cloned()
        {
            if c["recording_path"].is_string() {
                live = Some(c);
                break;
            }
        }
    }
    let live = live.expect("call answered");
    std::thread::sleep(Duration::from_millis(3500));
    server.kill9();

    let path = live["recording_path"].as_str().unwrap().to_string();
    let (left, _right) = read_stereo(Path::new(&path));
    let secs = left.len() as f64 / 8000.0;
    assert!(secs >= 2.0, "only {secs:.2}s survived the crash");
    let w = &left[left.len() - 4000..];
    assert!(
        tone_ratio(w, CALLER_TONE) > 0.8 && rms(w) > 1000.0,
        "the last synced audio has the caller"
    );

    server.spawn();
    let id = live["id"].as_str().unwrap().to_string();
    let mut row = serde_json::Value::Null;
    for _ in 0..50 {
        row = server.get(&format!("/api/calls/{id}")).1;
        if row["status"] == "interrupted" && !row["recording_sha256"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(row["status"], "interrupted", "{row}");
    assert_eq!(row["end_cause"], "interrupted_by_restart");
    let sum = sha256_hex(&std::fs::read(&path).unwrap());
    assert_eq!(row["recording_sha256"].as_str(), Some(sum.as_str()));
    drop(caller.join());
}

/// `siaga check-config` names the file, the key and what was expected.
#[test]
fn check_config_names_file_and_key() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("sip-config")).unwrap();
    std::fs::create_dir_all(root.path().join("dialplans")).unwrap();
    let good = std::fs::read_to_string(common::repo().join("sip-config/siaga.toml")).unwrap();
    std::fs::write(
        root.path().join("sip-config/siaga.toml"),
        good.replace("rtp_port_min = 20000", "rtp_port_min = \"lots\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_siaga"))
        .args(["check-config", "--config-root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sip-config/siaga.toml: key `media.rtp_port_min`"),
        "{err}"
    );
    assert!(err.contains("expected"), "{err}");

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_siaga"))
        .args(["check-config", "--config-root"])
        .arg(common::repo())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Holds the server's SQLite database's write lock (another writer's
/// exclusive transaction) until the returned connection rolls back.
fn lock_database(server: &Server) -> (tokio::runtime::Runtime, sqlx::AnyConnection) {
    use sqlx::Connection;
    let rt = tokio::runtime::Runtime::new().unwrap();
    sqlx::any::install_default_drivers();
    let mut blocker = rt
        .block_on(sqlx::AnyConnection::connect(&server.database_url()))
        .unwrap();
    rt.block_on(sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker))
        .unwrap();
    (rt, blocker)
}

/// While the database refuses writes (held by another writer), calls are
/// answered and recorded all the same; the records catch up afterwards.
#[test]
fn a_locked_database_does_not_delay_or_drop_calls() {
    let server = Server::start(Setup::default());
    let (rt, mut blocker) = lock_database(&server);

    let started = std::time::Instant::now();
    let sipp = Sipp::new(CALLER_TONE);
    let r = sipp.run(
        "uac_tone.xml",
        server.sip,
        &["-s", "112", "-d", "3000"],
        Duration::from_secs(20),
    );
    assert_eq!(
        r.code,
        Some(0),
        "call failed while the database was locked:\n{}\n{}",
        r.output,
        server.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the call was held up: {:?}",
        started.elapsed()
    );
    let (_, calls) = server.get("/api/calls");
    assert_eq!(
        calls.as_array().map(|a| a.len()),
        Some(0),
        "nothing could be written yet"
    );
    // The health probe says so (it answers without asking the database).
    database_says(&server, "blocked");

    rt.block_on(sqlx::query("ROLLBACK").execute(&mut blocker))
        .unwrap();
    drop(blocker);
    let mut found = None;
    for _ in 0..200 {
        let (_, calls) = server.get("/api/calls");
        if let Some(c) = calls.as_array().and_then(|a| a.first()) {
            if !c["recording_sha256"].is_null() {
                found = Some(c.clone());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = found.expect("records caught up after the database came back");
    assert_eq!(c["end_cause"], "caller_bye");
    database_says(&server, "ok");
    check_recording(&server, &c, "greeting-112", 3.0);
}

/// Nothing acknowledged is lost because the database is away: with the
/// database refusing writes, a call is taken, then the process is killed
/// (-9); restarted with the database still away, another call is taken,
/// then the process is stopped (SIGTERM). Once the database is back and
/// the process starts again, both calls, their incidents and their
/// recordings' checksums are there: the journal held them.
#[test]
fn records_taken_while_the_database_is_away_survive_kill_9_and_sigterm() {
    let mut server = Server::start(Setup::default());
    let (rt, mut blocker) = lock_database(&server);
    journaled_call_then_kill_9_then_sigterm(&mut server);
    let held: i64 = rt
        .block_on(sqlx::query_scalar("SELECT COUNT(*) FROM calls").fetch_one(&mut blocker))
        .unwrap();
    assert_eq!(held, 0, "the database took nothing while it was away");

    rt.block_on(sqlx::query("ROLLBACK").execute(&mut blocker))
        .unwrap();
    drop(blocker);
    server.spawn();
    both_calls_are_on_record(&server);
}

/// The same on PostgreSQL, gone from the network rather than locked: the
/// database is reached through a gate that is shut after the first login
/// (cutting the pool's connections) and opened once the process is down.
/// `/healthz` says `down` meanwhile, and a start while it is away serves.
#[test]
fn records_taken_while_postgresql_is_away_survive_kill_9_and_sigterm() {
    let Some(db) = common::postgres_db("away") else {
        return;
    };
    let gate = Gate::start(Gate::target_of(&db));
    let mut server = Server::start(Setup {
        database_url: Some(gate.url_through(&db)),
        ..Setup::default()
    });
    gate.shut();
    database_says(&server, "down");
    journaled_call_then_kill_9_then_sigterm(&mut server);

    gate.open();
    server.spawn();
    both_calls_are_on_record(&server);
    database_says(&server, "ok");
}

/// What /healthz says of the database once it says `want` (its own
/// state, not a question to the database), or after 10 s.
fn database_says(server: &Server, want: &str) -> serde_json::Value {
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        seen = server.get("/healthz").1["database"].clone();
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, want, "{}", server.log());
    seen
}

/// With the database away: a call, kill -9, a start, another call, SIGTERM.
/// Each call waits until the journal holds its recording's close, which
/// comes last.
fn journaled_call_then_kill_9_then_sigterm(server: &mut Server) {
    let journal = server.root.path().join("data/journal/records.journal");
    let call = |server: &Server, n: usize| {
        sipp_tone_call(server, "112", 1500, false);
        for _ in 0..200 {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            if text.matches("\"RecordingClosed\"").count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{n} calls never reached the journal");
    };
    call(server, 1);
    server.kill9();
    server.spawn();
    call(server, 2);
    server.terminate();
    assert!(
        server.wait_exit(Duration::from_secs(60)).is_some(),
        "no exit after SIGTERM:\n{}",
        server.log()
    );
}

/// Once the database is back: both calls, each with its incident and its
/// recording's true checksum.
fn both_calls_are_on_record(server: &Server) {
    let mut calls = Vec::new();
    for _ in 0..200 {
        let (_, all) = server.get("/api/calls");
        calls = all.as_array().cloned().unwrap_or_default();
        if calls.len() == 2 && calls.iter().all(|c| c["recording_sha256"].is_string()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(calls.len(), 2, "{calls:?}\n{}", server.log());
    for c in &calls {
        assert_eq!(c["end_cause"], "caller_bye", "{c}");
        let path = c["recording_path"].as_str().unwrap();
        let sum = sha256_hex(&std::fs::read(path).unwrap());
        assert_eq!(c["recording_sha256"].as_str(), Some(sum.as_str()), "{c}");
        let (status, incident) = server.get(&format!(
            "/api/incidents/{}",
            c["incident_id"].as_str().unwrap()
        ));
        assert_eq!(status, 200, "{incident}");
    }
}

/// What the server sent on `c` before it closed it (EOF or reset), if it
/// did within `within`; None while it is still open then.
fn closed_within(c: &mut std::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    let end = std::time::Instant::now() + within;
    let (mut got, mut buf) = (Vec::new(), [0u8; 512]);
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

/// Connections held open on the panel take nothing from the calls: past
/// `max_connections` a new one is closed at once, a request whose head
/// never comes is closed after `header_read_timeout`, the process runs
/// with its open-file limit raised as far as allowed, and a 112 call made
/// meanwhile is answered.
#[test]
fn idle_http_connections_do_not_starve_calls() {
    use std::io::Write;
    let server = Server::start(Setup {
        http_extra: Some("max_connections = 40\nheader_read_timeout = \"5s\"\n".into()),
        ..Setup::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(
        files[0], files[1],
        "soft limit raised to the hard one: {limits}"
    );

    let mut held: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..40 {
        let mut c = std::net::TcpStream::connect(server.http).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        held.push(c);
    }
    // Past the cap a whole request is not served: closed at once. (The
    // held ones are within their header timeout, so the cap decides.)
    let mut over = std::net::TcpStream::connect(server.http).unwrap();
    over.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        closed_within(&mut over, Duration::from_secs(10))
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        Some(String::new()),
        "a connection past the cap was served"
    );

    // A call beside the held connections is answered.
    sipp_tone_call(&server, "112", 1000, false);

    // Their heads never came: each is closed by the header timeout.
    for (i, c) in held.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(10)).is_some(),
            "held connection {i} was never closed"
        );
    }
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200, "the panel serves again");
}

/// A SIP/TCP connection that sends nothing is closed after
/// `sip.tcp_idle_timeout`; one that keeps sending CRLF keep-alives is not.
#[test]
fn idle_sip_tcp_connections_are_closed() {
    use std::io::Write;
    let server = Server::start(Setup {
        sip_extra: Some("tcp_idle_timeout = \"2s\"\n".into()),
        ..Setup::default()
    });
    let mut idle = std::net::TcpStream::connect(server.sip_tcp).unwrap();
    let mut alive = std::net::TcpStream::connect(server.sip_tcp).unwrap();
    let beat = alive.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut beat = beat;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if beat.write_all(b"\r\n\r\n").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).is_some(),
        "an idle SIP/TCP connection was kept"
    );
    // The one sending a keep-alive every half second is kept past the
    // timeout twice over.
    assert!(
        closed_within(&mut alive, Duration::from_secs(4)).is_none(),
        "a connection sending keep-alives was closed"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beating.join().unwrap();
}

/// INVITEs that are answered and never ACKed each hold an RTP port for
/// 32 s: one trusted source sending many cannot take the pool from
/// another's callers. Past its bound its new INVITEs get 503 (with
/// Retry-After); another trunk's caller is answered; an ACK gives a place
/// back.
#[test]
fn one_sources_unacked_invites_cannot_take_another_sources_ports() {
    let server = Server::start(Setup {
        trunk_sources: vec!["127.0.0.1".into(), "127.0.0.2".into()],
        sip_extra: Some("unconfirmed_per_source = 5\n".into()),
        ..Setup::default()
    });
    let flood = RawSip::new(server.sip, "127.0.0.1");
    // The final answer to this call's INVITE (past retransmitted 200s of
    // the calls left unACKed).
    let answer = |sip: &RawSip, call_id: &str| -> (u16, String) {
        loop {
            let msg = sip
                .wait_for("SIP/2.0", Duration::from_secs(5))
                .expect("an answer");
            let code = status_of(&msg).unwrap_or(0);
            if header(&msg, "Call-ID") == Some(call_id) && code >= 200 {
                return (code, msg);
            }
        }
    };
    let invite = |sip: &RawSip, call_id: &str, rtp: u16| {
        sip.send(&rawsip::invite(
            sip.local(),
            server.sip,
            "112",
            call_id,
            &format!("z9hG4bK-{call_id}"),
            rtp,
        ));
    };
    let mut oks = Vec::new();
    for i in 0..8 {
        let call_id = format!("noack-{i}");
        invite(&flood, &call_id, 4000);
        let (code, msg) = answer(&flood, &call_id);
        if i < 5 {
            assert_eq!(code, 200, "INVITE {i} within the bound");
            oks.push((call_id, msg));
        } else {
            assert_eq!(code, 503, "INVITE {i} past the bound");
            assert_eq!(header(&msg, "Retry-After"), Some("5"));
        }
    }
    // Another trunk's caller is answered.
    let other = RawSip::new(server.sip, "127.0.0.2");
    invite(&other, "other-trunk", 4002);
    assert_eq!(answer(&other, "other-trunk").0, 200);
    // An ACK confirms one of the five: the source has a place again.
    let (call_id, ok) = &oks[0];
    let dialog = rawsip::Dialog::from_ok(server.sip, flood.local(), call_id, ok);
    flood.send(&dialog.request("ACK", 1, "z9hG4bK-noack-ack", None));
    let mut answered = None;
    for k in 0..50 {
        let call_id = format!("after-ack-{k}");
        invite(&flood, &call_id, 4000);
        match answer(&flood, &call_id).0 {
            200 => {
                answered = Some(k);
                break;
            }
            code => assert_eq!(code, 503),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered.is_some(), "the ACK gave no place back");
}

/// Two callers wait: after the greeting the first hears "... antrean nomor
/// satu", the second "... nomor dua" (positions from the ACD).
#[test]
fn waiting_callers_hear_their_position() {
    let server = Server::start(Setup::default());
    let target = server.sip;
    let first = common::background_call(target, "112", 19000, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(700));
    let second = Sipp::new(CALLER_TONE);
    let r = second.run(
        "uac_tone.xml",
        target,
        &["-s", "112", "-d", "18000"],
        Duration::from_secs(40),
    );
    assert_eq!(r.code, Some(0), "{}", r.output);
    assert_eq!(first.join().unwrap(), Some(0));

    let (_, calls) = server.get("/api/calls");
    let calls = calls.as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let greeting_len = prompt_through_alaw("greeting-112").len();
    let intro = prompt_through_alaw("queue-position");
    // calls[1] arrived first (newest first).
    for (call, word) in [(&calls[1], "num-satu"), (&calls[0], "num-dua")] {
        let c = server.wait_call_done(
            call["sip_call_id"].as_str().unwrap(),
            Duration::from_secs(10),
        );
        let (_, right) = read_stereo(Path::new(c["recording_path"].as_str().unwrap()));
        let at = find_exact(&right[greeting_len..], &intro, 1600)
            .expect("position announcement right after the greeting");
        let number_at = greeting_len + at + intro.len();
        let number = prompt_through_alaw(word);
        assert!(
            right.len() >= number_at + number.len(),
            "recording too short for the number"
        );
        assert_eq!(
            &right[number_at..number_at + number.len()],
            &number[..],
            "expected `{word}` after the position announcement"
        );
    }
}

/// Past a queue's maximum wait the caller moves to its overflow queue and
/// keeps waiting, recorded; the move is on the call's record.
#[test]
fn a_caller_past_max_wait_overflows_and_stays_recorded() {
    let server = Server::start(Setup {
        queues: Some(
            r#"[[queue]]
name = "ntpd-112"
max_wait = "1500ms"
overflow = "queue:backup"
[[queue]]
name = "psc-119"
max_wait = "60s"
[[queue]]
name = "backup"
max_wait = "600s"
"#
            .into(),
        ),
        ..Setup::default()
    });
    let sipp = Sipp::new(CALLER_TONE);
    let r = sipp.run(
        "uac_tone.xml",
        server.sip,
        &["-s", "112", "-d", "3500"],
        Duration::from_secs(20),
    );
    assert_eq!(r.code, Some(0), "{}", r.output);
    let (_, calls) = server.get("/api/calls");
    let id = calls[0]["sip_call_id"].as_str().unwrap().to_string();
    let c = server.wait_call_done(&id, Duration::from_secs(10));
    assert_eq!(c["queue"], "backup");
    assert_eq!(c["end_cause"], "caller_bye");
    let (_, detail) = server.get(&format!("/api/calls/{}", c["id"].as_str().unwrap()));
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "overflow");
    assert_eq!(events[0]["detail"], "ntpd-112 -> backup");
    check_recording(&server, &c, "greeting-112", 3.5);
}

/// An INVITE without SDP gets our offer in the 200 OK and the answer comes
/// in the ACK (RFC 3264 §4, late offer); PIDF-LO and Geolocation reach the
/// incident; the caller then receives RTP paced every 20 ms, sequence +1,
/// timestamp +160, carrying the greeting.
#[test]
fn late_offer_location_and_paced_rtp_at_the_caller() {
    let server = Server::start(Setup::default());
    let c = RawSip::new(server.sip, "127.0.0.1");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let l = c.local();
    let call_id = format!("late-{rtp_port}");
    let pidf = r#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gml="http://www.opengis.net/gml" xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr" entity="pres:c@t"><tuple id="a"><status><geopriv><location-info><gml:Point><gml:pos>-6.2088 106.8456</gml:pos></gml:Point><ca:civicAddress><ca:A2>Depok</ca:A2><ca:RD>Jalan Margonda</ca:RD></ca:civicAddress></location-info></geopriv></status></tuple></presence>"#;
    let body = format!("--loc\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@caller>\r\n\r\n{pidf}\r\n--loc--\r\n");
    c.send(&format!(
        "INVITE urn:service:sos SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-lo-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:081299@{l}>;tag=lo1\r\nTo: <urn:service:sos>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:081299@{l}>\r\nP-Asserted-Identity: <tel:+6281299887766>\r\nGeolocation: <cid:loc@caller>\r\nContent-Type: multipart/mixed; boundary=loc\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let (code, ok) = c.final_status(Duration::from_secs(3)).expect("answered");
    assert_eq!(code, 200);
    assert!(
        ok.contains("m=audio "),
        "the 200 OK carries our offer: {ok}"
    );
    assert!(ok.contains("PCMA/8000") && ok.contains("PCMU/8000"));
    let to = header(&ok, "To").unwrap().to_string();
    // Answer with PCMU (the offer's second codec) in the ACK.
    let sdp = format!("v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n");
    c.send(&format!(
        "ACK sip:112@{} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-lo-2;rport\r\nMax-Forwards: 70\r\nFrom: <sip:081299@{l}>;tag=lo1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        server.sip,
        sdp.len()
    ));

    // What the caller receives.
    rtp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    let mut packets = Vec::new();
    while packets.len() < 100 {
        let (n, _) = rtp.recv_from(&mut buf).expect("RTP from siaga");
        packets.push((std::time::Instant::now(), buf[..n].to_vec()));
    }
    let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
    let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    for w in packets.windows(2) {
        let (a, b) = (&w[0].1, &w[1].1);
        assert_eq!(b[1] & 0x7f, 0, "payload type PCMU as answered");
        assert_eq!(b.len(), 12 + 160, "20 ms of G.711 per packet");
        assert_eq!(seq(b), seq(a).wrapping_add(1));
        assert_eq!(ts(b), ts(a).wrapping_add(160));
    }
    let span = packets[99].0 - packets[0].0;
    assert!(
        span >= Duration::from_millis(1850) && span <= Duration::from_millis(2150),
        "99 intervals took {span:?}, expected about 1.98 s"
    );
    // The audio is the greeting, through µ-law.
    let greeting: Vec<i16> = {
        let mut r =
            hound::WavReader::open(common::repo().join("prompts/greeting-112.wav")).unwrap();
        r.samples::<i16>()
            .map(|s| {
                siaga::media::g711::Law::Ulaw
                    .decode(siaga::media::g711::Law::Ulaw.encode(s.unwrap()))
            })
            .collect()
    };
    let heard: Vec<i16> = packets
        .iter()
        .flat_map(|(_, p)| {
            p[12..]
                .iter()
                .map(|&b| siaga::media::g711::Law::Ulaw.decode(b))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        find_exact(&heard, &greeting[..8000], 1600).is_some(),
        "the caller hears the greeting"
    );

    c.send(&format!(
        "BYE sip:112@{} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-lo-3;rport\r\nMax-Forwards: 70\r\nFrom: <sip:081299@{l}>;tag=lo1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        server.sip
    ));
    let call = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(call["codec"], "PCMU");
    assert_eq!(call["dialed"], "urn:service:sos");
    assert_eq!(call["caller_number"], "+6281299887766");
    let (_, inc) = server.get(&format!(
        "/api/incidents/{}",
        call["incident_id"].as_str().unwrap()
    ));
    assert_eq!(inc["latitude"], -6.2088);
    assert_eq!(inc["longitude"], 106.8456);
    assert_eq!(inc["location_text"], "Depok, Jalan Margonda");
    assert_eq!(inc["geolocation"], "<cid:loc@caller>");
}

/// A raw SIP caller's 112 call, answered and ACKed: the client, the
/// call's SIP Call-ID (`<tag>-<port>`) and its (silent) RTP socket.
fn answered_raw_call(server: &Server, tag: &str) -> (RawSip, String, std::net::UdpSocket) {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rtp.local_addr().unwrap().port();
    let call_id = format!("{tag}-{port}");
    c.send(&rawsip::invite(
        c.local(),
        server.sip,
        "112",
        &call_id,
        &format!("z9hG4bK-{tag}-1"),
        port,
    ));
    let (code, ok) = c.final_status(Duration::from_secs(3)).unwrap();
    assert_eq!(code, 200);
    let dialog = rawsip::Dialog::from_ok(server.sip, c.local(), &call_id, &ok);
    c.send(&dialog.request("ACK", 1, &format!("z9hG4bK-{tag}-2"), None));
    (c, call_id, rtp)
}

/// SIGTERM drains: new INVITEs get 503 with Retry-After (the trunk fails
/// over), the call in progress goes on for the grace period, then gets a
/// BYE; its recording is finished and its record written before exit.
#[test]
fn sigterm_drains_calls_then_ends_them_cleanly() {
    let mut server = Server::start(Setup {
        shutdown_grace: "1500ms",
        ..Setup::default()
    });
    let (c, call_id, _rtp) = answered_raw_call(&server, "drain");
    std::thread::sleep(Duration::from_millis(1000));
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));

    let late = RawSip::new(server.sip, "127.0.0.1");
    late.send(&rawsip::invite(
        late.local(),
        server.sip,
        "112",
        "drain-late",
        "z9hG4bK-dr-9",
        4000,
    ));
    let (code, resp) = late
        .final_status(Duration::from_secs(2))
        .expect("refused while draining");
    assert_eq!(code, 503);
    assert_eq!(header(&resp, "Retry-After"), Some("30"));

    // The call in progress is ended by BYE after the grace period.
    let msgs = c.collect(Duration::from_secs(4));
    let bye = msgs
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.starts_with("BYE "))
        .unwrap_or_else(|| panic!("no BYE after the grace period: {msgs:?}"));
    c.send(&rawsip::ok_to(bye));

    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("exits by itself");
    assert!(status.success(), "exit status {status:?}");
    server.spawn();
    let row = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(row["status"], "ended");
    assert_eq!(row["end_cause"], "shutdown");
    let path = row["recording_path"].as_str().unwrap();
    assert_eq!(
        row["recording_sha256"].as_str(),
        Some(sha256_hex(&std::fs::read(path).unwrap()).as_str())
    );
    let (left, _) = read_stereo(Path::new(path));
    assert!(
        left.len() as f64 / 8000.0 >= 2.0,
        "recorded through the grace period"
    );
    assert_eq!(server.calls_with("drain-late").len(), 0);
}

/// A caller that never answers our BYE (a dead trunk, or one whose own BYE
/// we lost in a flood) does not hold up the end of its call: at shutdown
/// the record is closed as `shutdown`, with the recording's checksum,
/// before exit; not left for the next start to find open.
#[test]
fn a_caller_deaf_to_our_bye_still_gets_its_record_closed_at_shutdown() {
    let mut server = Server::start(Setup {
        shutdown_grace: "1s",
        ..Setup::default()
    });
    let (c, call_id, _rtp) = answered_raw_call(&server, "deaf");
    std::thread::sleep(Duration::from_millis(500));
    let asked = std::time::Instant::now();
    server.terminate();
    // The BYE comes (and again); it is never answered.
    let msgs = c.collect(Duration::from_secs(3));
    assert!(
        msgs.iter().any(|(_, m)| m.starts_with("BYE ")),
        "no BYE: {msgs:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("exits by itself");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the unanswered BYE held the exit for {:?}",
        asked.elapsed()
    );
    server.spawn();
    let row = server.wait_call_done(&call_id, Duration::from_secs(10));
    assert_eq!(row["end_cause"], "shutdown", "{row}");
    let path = row["recording_path"].as_str().unwrap();
    assert_eq!(
        row["recording_sha256"].as_str(),
        Some(sha256_hex(&std::fs::read(path).unwrap()).as_str())
    );
}

/// A burst of requests, as a trunk sends after a network blip or at the
/// start of a disaster, is queued by the kernel until siaga reads it, not
/// dropped: 2,000 OPTIONS of 1 KB each (an INVITE's size), sent as fast as
/// one socket can, all get their 200. With the kernel's default receive
/// buffer (208 KiB here) siaga's SIP socket held about a hundred of them.
#[test]
fn a_burst_of_requests_is_queued_not_dropped() {
    const BURST: usize = 2000;
    let server = Server::start(Setup::default());
    let c = RawSip::new(server.sip, "127.0.0.1");
    // Our side holds every answer while its reader waits for a core (the
    // other tests run beside this one): the drops counted are siaga's.
    c.receive_buffer(4 << 20);
    let l = c.local();
    assert_eq!(
        udp_drops(l.port()),
        Some(0),
        "our socket is in /proc/net/udp"
    );
    let reader = c.sock.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Answers are read as they come, so none is lost on our side.
    let answers = std::thread::spawn(move || {
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 65535];
        while seen.len() < BURST {
            let Ok(n) = reader.recv(&mut buf) else { break };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if status_of(&msg) == Some(200) {
                if let Some(id) = header(&msg, "Call-ID") {
                    seen.insert(id.to_string());
                }
            }
        }
        seen.len()
    });
    let padding = "x".repeat(600);
    for n in 0..BURST {
        c.send(&format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-burst-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:trunk@{l}>;tag=b{n}\r\nTo: <sip:112@{sip}>\r\nCall-ID: burst-{n}\r\nCSeq: 1 OPTIONS\r\nSubject: {padding}\r\nContent-Length: 0\r\n\r\n",
            sip = server.sip
        ));
    }
    let answered = answers.join().unwrap();
    assert_eq!(
        answered,
        BURST,
        "only {answered} of {BURST} requests answered; dropped at siaga's SIP socket: {:?}, at ours: {:?}",
        udp_drops(server.sip.port()),
        udp_drops(l.port()),
    );
}

//! The browser softphone: headless Chromium with a fake microphone (a WAV
//! with a known tone) answers a SIPp caller in the panel over WebRTC; the
//! caller's tone and the browser's cross both ways and are both in the
//! recording. A tab that reloads never leaves a call ringing nor drops the
//! caller; a refused microphone is said plainly.

mod common;

use common::audio::{alaw_tone_packet, read_stereo, tone_ratio};
use common::webdriver::{browser_with_mic, microphone_wav, Browser};
use common::{free_udp_port, Server, Setup, Sipp, TEST_PASSWORD};
use siaga::media::g711::Law;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// The caller's tone, sent by the test as the caller's RTP.
const CALLER_HZ: f64 = 1000.0;
/// The browser's microphone: Chromium plays this WAV as its capture.
const BROWSER_HZ: f64 = 700.0;

fn setup() -> Setup {
    Setup {
        agents: true,
        ..Setup::default()
    }
}

fn base(server: &Server) -> String {
    format!("http://{}", server.http)
}

/// Siti (ct-01) logged in where the microphone plays BROWSER_HZ, phone
/// on, ready. The folder holds the microphone's WAV.
fn siti_ready_in_browser(server: &Server, test: &str) -> (Browser, tempfile::TempDir) {
    server.add_user("siti", "call-taker", &["--agent", "ct-01"]);
    let mic_dir = tempfile::tempdir().unwrap();
    let b = browser_with_mic(test, &microphone_wav(mic_dir.path(), BROWSER_HZ));
    b.login(&base(server), "siti", TEST_PASSWORD, "/calltaker");
    phone_on_and_ready(server, &b, "ct-01");
    (b, mic_dir)
}

fn phone_on_and_ready(server: &Server, b: &Browser, agent: &str) {
    b.click("#phone-on");
    b.wait_for(
        "phone on",
        "return document.querySelector('#phone-card').dataset.on === 'on'",
        WAIT,
    );
    server.wait_agent(agent, "reachable by browser", |a| {
        a["browser"] == true && a["registered"] == true
    });
    b.click("#btn-ready");
    // A caller already waiting rings at once.
    server.wait_agent(agent, "ready", |a| {
        a["state"] == "ready" || a["state"] == "ringing"
    });
}

/// The caller's audio, played by the test: waits for siaga's first packet
/// (the greeting), then sends an A-law tone every 20 ms to where it came
/// from, keeping what comes back (decoded), until `stop` or 60 s.
struct CallerMedia {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Cleared: the caller falls silent (A-law silence instead of the tone).
    speaking: Arc<AtomicBool>,
    /// Keys to press, sent as RFC 4733 telephone-events (payload 101).
    keys: Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>,
    thread: std::thread::JoinHandle<Vec<i16>>,
}

impl CallerMedia {
    fn start(tone_hz: f64) -> CallerMedia {
        let speaking = Arc::new(AtomicBool::new(true));
        let keys: Arc<std::sync::Mutex<std::collections::VecDeque<u8>>> = Arc::default();
        let (talk, pressed) = (speaking.clone(), keys.clone());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut heard = Vec::new();
            let mut peer: Option<SocketAddr> = None;
            let (mut seq, mut ts) = (0u16, 0u32);
            let mut next = Instant::now();
            let limit = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 1500];
            let mut empty = false;
            while !halt.load(Ordering::Relaxed) && Instant::now() < limit {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    empty |= n <= 12;
                    if n > 12 && buf[1] & 0x7f == 8 {
                        peer.get_or_insert(from);
                        heard.extend(buf[12..n].iter().map(|&b| Law::Alaw.decode(b)));
                    }
                }
                let Some(to) = peer else { continue };
                if Instant::now() >= next {
                    let key = pressed.lock().unwrap().pop_front();
                    if let Some(event) = key {
                        // One press: 100 ms of event packets, the end
                        // three times, all with the press's timestamp.
                        for i in 1..=8u16 {
                            let mut pkt = vec![0x80, 101];
                            pkt.extend_from_slice(&seq.to_be_bytes());
                            pkt.extend_from_slice(&ts.to_be_bytes());
                            pkt.extend_from_slice(&0x5151_0001u32.to_be_bytes());
                            let end = if i >= 6 { 0x80 } else { 0 };
                            pkt.extend_from_slice(&[event, end | 10]);
                            pkt.extend_from_slice(&(160 * i.min(5)).to_be_bytes());
                            let _ = sock.send_to(&pkt, to);
                            seq = seq.wrapping_add(1);
                        }
                        ts = ts.wrapping_add(800);
                        next += Duration::from_millis(100);
                        continue;
                    }
                    let mut pkt = alaw_tone_packet(seq, ts, 0x5151_0001, tone_hz);
                    if !talk.load(Ordering::Relaxed) {
                        pkt[12..].fill(0xD5);
                    }
                    let _ = sock.send_to(&pkt, to);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                    next += Duration::from_millis(20);
                }
            }
            assert!(!empty, "an RTP packet without payload reached the caller");
            heard
        });
        CallerMedia {
            port,
            stop,
            speaking,
            keys,
            thread,
        }
    }

    /// What the caller heard, decoded.
    fn finish(self) -> Vec<i16> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A SIPp caller to 112 whose media is `media`'s, talking for `ms`; in a
/// thread, joining to SIPp's exit code.
fn sipp_caller(
    server: &Server,
    media: &CallerMedia,
    call_id: &str,
    ms: u32,
) -> std::thread::JoinHandle<Option<i32>> {
    let target = server.sip;
    let port = media.port.to_string();
    let call_id = call_id.to_string();
    std::thread::spawn(move || {
        let sipp = Sipp::new(CALLER_HZ);
        let d = ms.to_string();
        let r = sipp.run(
            "uac_media.xml",
            target,
            &[
                "-s",
                "112",
                "-d",
                &d,
                "-key",
                "caller_rtp",
                &port,
                "-cid_str",
                &call_id,
            ],
            Duration::from_secs(90),
        );
        if r.code != Some(0) {
            eprintln!("sipp: {}\n{}", r.output, r.errors);
        }
        r.code
    })
}

/// How many 100 ms windows of `samples` hold mostly `freq`.
fn tone_windows(samples: &[i16], freq: f64) -> usize {
    samples
        .chunks_exact(800)
        .filter(|w| tone_ratio(w, freq) > 0.7)
        .count()
}

/// Waits for the phone as `wait_for` does; on failure shows the tab's
/// last signalling and the server's log.
fn wait_phone(server: &Server, b: &Browser, what: &str, script: &str) {
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.wait_for(what, script, WAIT);
    }));
    if waited.is_err() {
        panic!(
            "{what}: the tab's signalling:\n{}\nserver:\n{}",
            b.js("return window.siagaPhoneLog.join('\\n')", vec![]),
            server.log()
        );
    }
}

fn wait_ringing(b: &Browser) {
    b.wait_for(
        "the call rings in the browser",
        "return !document.querySelector('#phone-ringing').hidden",
        WAIT,
    );
}

fn answer_in_browser(b: &Browser) {
    wait_ringing(b);
    assert_eq!(b.text("#phone-caller"), "081234567");
    b.click("#phone-answer");
    b.wait_for(
        "the browser call is connected",
        "return document.querySelector('#phone-card').dataset.call === 'talking'",
        WAIT,
    );
}

/// The whole path: logged in, phone on, ready; a SIPp caller dials 112;
/// the browser answers. The caller hears the browser's tone, the
/// recording has the caller's tone left and the browser's right, and the
/// call is on record as answered by the browser agent.
#[test]
fn the_browser_answers_a_112_call_and_both_tones_cross() {
    let server = Server::start(setup());
    let (b, _mic) = siti_ready_in_browser(&server, "webphone_answer");
    b.screenshot("1-phone-on-ready");

    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("webphone-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 14000);
    answer_in_browser(&b);
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");
    b.screenshot("2-talking");
    // The hold button holds the caller (hold music), and resumes.
    b.click("#phone-hold");
    b.wait_for(
        "held",
        "return document.querySelector('#phone-hold').textContent === 'Lanjutkan'",
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    b.click("#phone-hold");

    assert_eq!(caller.join().unwrap(), Some(0), "SIPp's call went through");
    let heard = media.finish();
    let done = server.wait_call_done(&call_id, WAIT);
    assert_eq!(done["agent_id"], "ct-01");
    assert_eq!(done["end_cause"], "caller_bye");
    assert!(
        !done["recording_sha256"].is_null(),
        "recorded and summed: {done}"
    );
    wait_phone(
        &server,
        &b,
        "the phone is idle again",
        "return document.querySelector('#phone-card').dataset.call === ''",
    );

    // What the caller received: the browser's microphone (≥ 3 s of it);
    // the recording: the caller left, the browser right.
    let (left, right) = read_stereo(Path::new(done["recording_path"].as_str().unwrap()));
    let browser_in_caller = tone_windows(&heard, BROWSER_HZ);
    let caller_left = tone_windows(&left, CALLER_HZ);
    let browser_right = tone_windows(&right, BROWSER_HZ);
    let seen = format!(
        "100 ms windows with the tone: the caller heard the browser in {browser_in_caller} of {}; \
         recording: caller left {caller_left}, browser right {browser_right} of {}",
        heard.len() / 800,
        right.len() / 800
    );
    assert!(browser_in_caller >= 30, "{seen}");
    assert!(caller_left >= 50, "{seen}");
    assert!(browser_right >= 30, "{seen}");
    assert_eq!(
        tone_windows(&left, BROWSER_HZ),
        0,
        "the browser's voice is not in the caller's channel"
    );
    // While held, the caller heard hold music, not the browser: some
    // stretch of the right channel is neither silence nor the tone.
    assert!(
        server.log().contains("agent hold changed"),
        "hold reached the call"
    );
}

/// Nothing on the desk takes a call away (issue 23): during a browser
/// call every link on the page opens in a new tab, leaving the desk's tab
/// where it is and its call up; turning the phone off, logging out and
/// leaving the tab ask first; and "Selesai" right after an edit saves it
/// instead of dropping it.
#[test]
fn nothing_on_the_desk_takes_a_call_away_nor_drops_an_edit() {
    let server = Server::start(setup());
    let (b, _mic) = siti_ready_in_browser(&server, "desk_keeps_the_call");
    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("desk-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 40000);
    answer_in_browser(&b);
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");
    b.wait_for(
        "the incident on the card",
        "return document.querySelector('#incident-link').textContent",
        WAIT,
    );
    let desk = b.url();
    let talking = || {
        b.js(
            "return document.querySelector('#phone-card').dataset.call",
            vec![],
        ) == "talking"
    };
    let hrefs = b.js(
        "return [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href'))",
        vec![],
    );
    let hrefs: Vec<String> = serde_json::from_value(hrefs).unwrap();
    assert!(
        hrefs.iter().any(|h| h == "/incidents")
            && hrefs.iter().any(|h| h.starts_with("/incidents/")),
        "the nav's and the incident's links: {hrefs:?}"
    );
    for (i, href) in hrefs.iter().enumerate() {
        b.click_nth("a[href]", i);
        assert_eq!(b.url(), desk, "after {href}");
        assert!(talking(), "the call is up after {href}");
    }
    assert_eq!(
        b.windows(),
        1 + hrefs.len(),
        "each link in a tab of its own"
    );
    b.click("#logout");
    assert!(b.text("#logout").contains("Panggilan akan terputus"));
    b.click("#phone-off");
    assert_eq!(
        b.js(
            "return document.querySelector('#phone-off-confirm').hidden",
            vec![]
        ),
        false
    );
    b.screenshot("desk-phone-off-asks");
    b.click("#phone-off-no");
    assert_eq!(b.url(), desk);
    assert!(talking(), "still up after the logout and phone-off asked");
    assert_eq!(server.agent("ct-01")["state"], "on_call");
    assert!(server.calls_with(&call_id)[0]["ended_at"].is_null());

    // An edit, then "Selesai" at once: saved before the card closes.
    let incident = b.text("#incident-link");
    b.select("#f-category", "fire");
    b.type_into("#f-notes", "asap dari lantai dua");
    b.click("#close-card");
    b.wait_for(
        "the card closed",
        "return document.querySelector('#call-card').hidden",
        WAIT,
    );
    let id = server.calls_with(&call_id)[0]["incident_id"]
        .as_str()
        .expect("the call's incident")
        .to_string();
    assert!(id.starts_with(&incident), "{id} {incident}");
    let (_, inc) = server.get(&format!("/api/incidents/{id}"));
    assert_eq!(inc["category"], "fire", "{inc}");
    assert_eq!(inc["notes"], "asap dari lantai dua", "{inc}");

    // Closing or reloading the tab during the call asks first (WebDriver's
    // own navigation skips the question, so the event is fired here).
    let leaving_asks = || {
        b.js(
            "const e = new Event('beforeunload', { cancelable: true }); \
             window.dispatchEvent(e); return e.defaultPrevented",
            vec![],
        ) == true
    };
    assert!(leaving_asks(), "during the call");
    b.click("#phone-hangup");
    b.wait_for(
        "the phone idle",
        "return document.querySelector('#phone-card').dataset.call === ''",
        WAIT,
    );
    assert!(!leaving_asks(), "once the call is over");
    let _ = caller.join();
    drop(media.finish());
}

/// A prank in one key (issue 23): during the call, "3" (Iseng, shown on
/// its button) saves the category, closes the incident, hangs up and
/// clears the card; the closing is on the incident's audit trail.
#[test]
fn a_prank_is_disposed_of_in_one_key() {
    let server = Server::start(setup());
    let (b, _mic) = siti_ready_in_browser(&server, "desk_prank_key");
    b.resize(1366, 768);
    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("desk-prank-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 30000);
    answer_in_browser(&b);
    b.wait_for(
        "the incident on the card",
        "return document.querySelector('#incident-link').textContent",
        WAIT,
    );
    assert!(
        b.text("#dispositions").contains("3 Iseng"),
        "the key is on the button: {}",
        b.text("#dispositions")
    );
    assert_eq!(
        b.js(
            "return getComputedStyle(document.querySelector('#ring-banner')).display",
            vec![]
        ),
        "none",
        "the banner goes once answered"
    );
    b.screenshot("call-card-1366x768");
    b.press("3");
    b.wait_for(
        "the card cleared",
        "return document.querySelector('#call-card').hidden \
         && document.querySelector('#phone-card').dataset.call === ''",
        WAIT,
    );
    let done = server.wait_call_done(&call_id, WAIT);
    assert_eq!(done["end_cause"], "agent_bye", "hung up by the key: {done}");
    let id = done["incident_id"].as_str().unwrap();
    let (_, inc) = server.get(&format!("/api/incidents/{id}"));
    assert_eq!(inc["category"], "prank", "{inc}");
    assert_eq!(inc["status"], "closed", "{inc}");
    let by_siti = |field: &str, value: &str| {
        inc["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["actor"] == "siti" && a["field"] == field && a["new_value"] == value)
    };
    assert!(
        by_siti("category", "prank") && by_siti("status", "closed"),
        "on the audit trail: {}",
        inc["audit"]
    );
    let _ = caller.join();
    drop(media.finish());
}

/// A caller who falls silent on the call-taker's line: the card counts
/// it ("penelepon diam N dtk") and drops the count when they speak again;
/// 5 twice (telephone-events) puts "DARURAT DIAM" on the card at once.
#[test]
fn the_desk_counts_a_callers_silence_and_shows_five_twice() {
    let server = Server::start(setup());
    let (b, _mic) = siti_ready_in_browser(&server, "desk_silent_caller");
    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("desk-silent-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 40000);
    answer_in_browser(&b);
    let badge =
        "const q = document.querySelector('#caller-quiet'); return q.hidden ? null : q.textContent";
    assert_eq!(
        b.js(badge, vec![]),
        serde_json::Value::Null,
        "the caller speaks"
    );
    media.speaking.store(false, Ordering::Relaxed);
    let shown = b.wait_for(
        "the caller's silence counted",
        "const q = document.querySelector('#caller-quiet'); return !q.hidden && /^penelepon diam [3-9] dtk$/.test(q.textContent) && q.textContent",
        WAIT,
    );
    assert!(
        shown.as_str().unwrap().starts_with("penelepon diam"),
        "{shown}"
    );
    b.screenshot("call-card-caller-silent");
    media.speaking.store(true, Ordering::Relaxed);
    b.wait_for(
        "speaking again: no count",
        "return document.querySelector('#caller-quiet').hidden",
        WAIT,
    );
    assert!(
        b.js(
            "return document.querySelector('#call-silent').hidden",
            vec![]
        ) == true
    );
    media.keys.lock().unwrap().extend([5, 5]);
    b.wait_for(
        "DARURAT DIAM on the card",
        "return !document.querySelector('#call-silent').hidden",
        WAIT,
    );
    b.screenshot("call-card-silent-emergency");
    b.click("#phone-hangup");
    let done = server.wait_call_done(&call_id, WAIT);
    assert!(done["silent_at"].as_i64().is_some(), "{done}");
    let _ = caller.join();
    drop(media.finish());
}

/// A reloaded tab: while the call rings there, the agent is set not
/// ready at once (never left ringing) and the caller waits on; once the
/// phone is on again the call rings and is answered. A reload in the
/// middle of the call puts the caller back in the queue, not off the line.
#[test]
fn a_reloaded_tab_never_leaves_a_call_ringing_nor_drops_the_caller() {
    let server = Server::start(setup());
    let (b, _mic) = siti_ready_in_browser(&server, "webphone_reload");

    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("webphone-reload-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 30000);
    wait_ringing(&b);
    assert_eq!(server.agent("ct-01")["state"], "ringing");
    b.goto(&format!("{}/calltaker", base(&server)));
    server.wait_agent("ct-01", "not ringing once the tab is gone", |a| {
        a["state"] != "ringing" && a["registered"] == false
    });
    assert!(
        server.calls_with(&call_id)[0]["ended_at"].is_null(),
        "the caller still waits"
    );

    // Back on: the waiting call rings again and is answered.
    phone_on_and_ready(&server, &b, "ct-01");
    answer_in_browser(&b);
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");

    // Reloaded mid-call: the caller waits in the queue again.
    b.goto(&format!("{}/calltaker", base(&server)));
    server.wait_agent("ct-01", "logged out once the tab is gone", |a| {
        a["state"] == "logged_out"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.calls_with(&call_id)[0]["ended_at"].is_null(),
        "the caller was not dropped"
    );
    assert!(
        server.log().contains("the caller waits in the queue again"),
        "{}",
        server.log()
    );
    // And is answered again by the same agent once back.
    phone_on_and_ready(&server, &b, "ct-01");
    answer_in_browser(&b);

    assert_eq!(caller.join().unwrap(), Some(0));
    drop(media.finish());
    let done = server.wait_call_done(&call_id, WAIT);
    assert_eq!(done["end_cause"], "caller_bye");
    assert_eq!(done["agent_id"], "ct-01");
}

/// A browser that refuses the microphone says so in plain words, and the
/// agent does not become reachable by it.
#[test]
fn a_refused_microphone_is_reported_and_takes_no_calls() {
    let server = Server::start(setup());
    server.add_user("siti", "call-taker", &["--agent", "ct-01"]);
    let b = Browser::start_with(
        "webphone_mic_refused",
        &["--deny-permission-prompts".into()],
    );
    b.login(&base(&server), "siti", TEST_PASSWORD, "/calltaker");
    b.click("#phone-on");
    let said = b.wait_for(
        "the refusal is reported",
        "return document.querySelector('#phone-error').textContent",
        WAIT,
    );
    b.screenshot("mic-refused");
    let said = said.as_str().unwrap().to_string();
    assert!(
        said.contains("mikrofon") || said.contains("Mikrofon"),
        "{said}"
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#phone-card').dataset.on",
            vec![]
        ),
        "off"
    );
    let a = server.agent("ct-01");
    assert_eq!(a["browser"], false, "{a}");
    assert_eq!(a["registered"], false, "{a}");
    // Ready is refused with a reason the agent can act on.
    b.click("#btn-ready");
    b.wait_for(
        "ready refused",
        "return document.querySelector('#agent-state').textContent.includes('belum ada telepon')",
        WAIT,
    );
}

/// The panel's warm transfer, both ends in the browser: the call-taker
/// transfers to Damkar with one touch on its button, whose dispatcher
/// answers in the dispatcher panel
/// (its microphone at 1400 Hz); the consultation is recorded (call-taker
/// left, dispatcher right), *Serahkan* hands the caller over and the
/// call-taker's browser call ends; the caller then hears the dispatcher.
#[test]
fn a_browser_call_taker_hands_the_caller_to_a_browser_dispatcher() {
    const DISPATCHER_HZ: f64 = 1400.0;
    let server = Server::start(setup());
    server.add_user(
        "damkar1",
        "dispatcher",
        &["--agency", "damkar", "--agent", "disp-damkar-01"],
    );
    let mics = tempfile::tempdir().unwrap();
    let d = browser_with_mic(
        "webphone_transfer_dispatcher",
        &microphone_wav(mics.path(), DISPATCHER_HZ),
    );
    d.login(&base(&server), "damkar1", TEST_PASSWORD, "/dispatcher");
    phone_on_and_ready(&server, &d, "disp-damkar-01");
    let (b, _mic) = siti_ready_in_browser(&server, "webphone_transfer");

    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("webphone-transfer-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 16000);
    answer_in_browser(&b);
    std::thread::sleep(Duration::from_secs(2));
    // One touch on the agency's button starts the warm transfer.
    b.click("#agency-now button[data-agency=\"damkar\"]");
    answer_in_browser(&d);
    b.wait_for(
        "the dispatcher talks with the call-taker",
        "return document.querySelector('#t-state').dataset.state === 'talking'",
        WAIT,
    );
    std::thread::sleep(Duration::from_secs(3));
    b.screenshot("consulting");
    b.click("#t-complete");
    wait_phone(
        &server,
        &b,
        "the browser's call ends with the hand-over",
        "return document.querySelector('#phone-card').dataset.call === ''",
    );
    server.wait_agent("ct-01", "free after the hand-over", |a| {
        a["state"] != "on_call"
    });
    d.screenshot("dispatcher-has-the-caller");

    assert_eq!(caller.join().unwrap(), Some(0));
    let heard = media.finish();
    let done = server.wait_call_done(&call_id, WAIT);
    wait_phone(
        &server,
        &d,
        "the dispatcher's phone is idle after the caller left",
        "return document.querySelector('#phone-card').dataset.call === ''",
    );
    let (_, detail) = server.get(&format!("/api/calls/{}", done["id"].as_str().unwrap()));
    let t = &detail["transfers"][0];
    assert_eq!(t["from_agent"], "ct-01", "{t}");
    assert_eq!(t["to_agent"], "disp-damkar-01", "{t}");
    assert_eq!(t["outcome"], "completed", "{t}");
    assert!(t["recording_sha256"].is_string(), "{t}");
    let (_, inc) = server.get(&format!(
        "/api/incidents/{}",
        done["incident_id"].as_str().unwrap()
    ));
    assert_eq!(
        inc["agency"], "damkar",
        "the one touch named the agency: {inc}"
    );
    let (ct, disp) = read_stereo(Path::new(t["recording_path"].as_str().unwrap()));
    let browser_left = tone_windows(&ct, BROWSER_HZ);
    let dispatcher_right = tone_windows(&disp, DISPATCHER_HZ);
    assert!(
        browser_left >= 15 && dispatcher_right >= 15,
        "consultation: browser {browser_left}, dispatcher {dispatcher_right} of {}",
        ct.len() / 800
    );
    // The caller heard the browser first, then the dispatcher.
    assert!(tone_windows(&heard, BROWSER_HZ) >= 10);
    assert!(tone_windows(&heard, DISPATCHER_HZ) >= 20);
}

/// Ringing, ring timeout and hang-up, in the browser: a ringing call puts
/// a banner across the page (service, number, time waited), plays a
/// ringtone through the page's running audio context and flashes the
/// tab's title; a call the browser lets ring past the queue's
/// `ring_timeout` sets the agent not ready (no_answer) and the tab says
/// why in plain words; once ready again the call rings anew, Space
/// answers it, and *Tutup telepon* ends it (the caller gets our BYE).
#[test]
fn the_browser_lets_a_call_ring_out_then_answers_and_hangs_up() {
    let queues = std::fs::read_to_string(common::repo().join("sip-config/queues.toml"))
        .unwrap()
        .replacen("ring_timeout = \"15s\"", "ring_timeout = \"3s\"", 1);
    let server = Server::start(Setup {
        queues: Some(queues),
        ..setup()
    });
    let (b, _mic) = siti_ready_in_browser(&server, "webphone_ring_out");
    b.resize(1366, 768);
    let media = CallerMedia::start(CALLER_HZ);
    let call_id = format!("webphone-ringout-{}", free_udp_port());
    let caller = sipp_caller(&server, &media, &call_id, 30000);
    wait_ringing(&b);
    let ring = b.js(
        "const r = window.siagaRingtone, banner = document.querySelector('#ring-banner'); \
         return { banner: getComputedStyle(banner).display !== 'none', text: banner.textContent, playing: r.playing, \
                  bursts: r.bursts, audio: r.context() && r.context().state, \
                  top: banner.getBoundingClientRect().top, width: banner.getBoundingClientRect().width };",
        vec![],
    );
    b.screenshot("ringing-banner-1366x768");
    assert_eq!(ring["banner"], true, "{ring}");
    let text = ring["text"].as_str().unwrap();
    assert!(
        text.contains("112") && text.contains("081234567") && text.contains("menunggu"),
        "{text}"
    );
    assert_eq!(ring["playing"], true, "{ring}");
    assert!(ring["bursts"].as_u64() >= Some(1), "{ring}");
    assert_eq!(ring["audio"], "running", "the ringtone is heard: {ring}");
    assert_eq!(ring["top"], 0, "at the top: {ring}");
    assert!(
        ring["width"].as_f64() >= Some(1300.0),
        "across the page: {ring}"
    );
    b.wait_for(
        "the tab's title flashes",
        "return document.title.includes('PANGGILAN MASUK')",
        WAIT,
    );
    server.wait_agent("ct-01", "not ready after ringing out", |a| {
        a["state"] == "not_ready" && a["reason"] == "no_answer"
    });
    wait_phone(
        &server,
        &b,
        "the tab says the call went elsewhere",
        "return document.querySelector('#phone-card').dataset.call === '' \
         && document.querySelector('#phone-state').textContent.includes('tidak dijawab')",
    );
    wait_phone(
        &server,
        &b,
        "the tab says plainly why the agent is on a break",
        "return !document.querySelector('#agent-note').hidden \
         && document.querySelector('#agent-note').textContent.includes('tidak menjawab') \
         && document.querySelector('#agent-state').textContent === 'Istirahat (tidak menjawab)'",
    );
    assert_eq!(
        b.js(
            "return [getComputedStyle(document.querySelector('#ring-banner')).display === 'none', \
                     window.siagaRingtone.playing, \
                     document.title.includes('PANGGILAN MASUK')]",
            vec![]
        ),
        serde_json::json!([true, false, false]),
        "the ringing stops with the ring"
    );
    b.click("#btn-ready");
    wait_ringing(&b);
    b.press(" ");
    b.wait_for(
        "Space answered",
        "return document.querySelector('#phone-card').dataset.call === 'talking'",
        WAIT,
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#agent-note').hidden",
            vec![]
        ),
        true
    );
    server.wait_agent("ct-01", "on the call", |a| a["state"] == "on_call");
    std::thread::sleep(Duration::from_secs(1));
    b.click("#phone-hangup");
    let done = server.wait_call_done(&call_id, WAIT);
    assert_eq!(done["end_cause"], "agent_bye", "{done}");
    assert_eq!(done["agent_id"], "ct-01");
    assert!(done["recording_sha256"].is_string(), "{done}");
    // SIPp meant to hang up itself later; the BYE came first.
    let _ = caller.join();
    drop(media.finish());
}

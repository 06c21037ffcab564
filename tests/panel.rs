//! The panel in a real browser (Debian's headless Chromium through
//! chromedriver) against the real server, with real callers (SIPp) and a
//! real softphone (baresip); and the login rules on every route.
//! Screenshots land in target/tmp/panel-artifacts/.

mod common;

use common::baresip::{self, wait_registered, Baresip};
use common::webdriver::Browser;
use common::{background_call, Server, Setup, TEST_PASSWORD};
use serde_json::Value;
use std::time::Duration;

// A deadline for a condition the page must reach; only a failure waits it out.
const WAIT: Duration = Duration::from_secs(30);

/// Script that sets `id` to the incident the call card shows, or null
/// while its link still holds the page's placeholder (`#`): a wait on it
/// ends only once the incident is loaded.
const SHOWN_INCIDENT: &str = "const h = document.querySelector('#incident-link').getAttribute('href') || ''; const id = h.startsWith('/incidents/') ? h.slice('/incidents/'.length) : null;";

fn setup() -> Setup {
    Setup {
        agents: true,
        ..Setup::default()
    }
}

/// Siti's desk phone: baresip as ct-01, answering by itself with 600 Hz.
fn ct01_phone(server: &Server) -> Baresip {
    let phone = baresip::ct01(server.sip);
    wait_registered(server, "ct-01", &phone);
    phone
}

fn base(server: &Server) -> String {
    format!("http://{}", server.http)
}

/// The call-taker's screen opens the incident by itself when a call is
/// bridged to their phone, with the caller's number and a running timer;
/// the form saves with an audit trail and the incident is in the list;
/// the dispatcher of the chosen agency sees it live and moves its status,
/// another agency's dispatcher never sees it.
#[test]
fn call_taker_incident_pops_up_and_reaches_the_agency() {
    let server = Server::start(setup());
    server.add_user("siti", "call-taker", &["--agent", "ct-01"]);
    server.add_user("damkar1", "dispatcher", &["--agency", "damkar"]);
    server.add_user("polisi1", "dispatcher", &["--agency", "polri"]);
    let phone = ct01_phone(&server);

    let b = Browser::start("call_taker");
    // A `next=` that a browser reads as another host (`/\evil.example/`)
    // is no place to go after the login: the user's home is.
    b.login_at(
        &base(&server),
        "/login?next=/%5Cevil.example/",
        "siti",
        TEST_PASSWORD,
        "/calltaker",
    );
    // Ready from the panel.
    b.click("#btn-ready");
    b.wait_for(
        "agent ready",
        "return document.querySelector('#agent-state').textContent === 'Siap'",
        WAIT,
    );
    assert_eq!(server.agent("ct-01")["state"], "ready");
    // A mark that a reload would wipe.
    b.js("window.__noReload = 42;", vec![]);
    b.screenshot("1-call-taker-waiting");

    let caller = background_call(server.sip, "112", 12000, Duration::from_secs(40));
    b.wait_for(
        "incident pop-up",
        "return !document.querySelector('#call-card').hidden && document.querySelector('#call-caller').textContent",
        WAIT,
    );
    assert_eq!(b.text("#call-caller"), "081234567");
    assert_eq!(
        b.js("return window.__noReload", vec![]),
        42,
        "popped up without a reload"
    );
    let incident_id = b
        .wait_for(
            "incident loaded",
            &format!("{SHOWN_INCIDENT} return id"),
            WAIT,
        )
        .as_str()
        .unwrap()
        .to_string();
    assert!(incident_id.len() > 10, "{incident_id}");
    // The timer runs.
    b.wait_for(
        "call timer",
        "return document.querySelector('#call-timer').textContent >= '0:02'",
        WAIT,
    );

    b.select("#f-category", "fire");
    b.select("#f-priority", "1");
    b.type_into("#f-address", "Jl. Margonda Raya No. 100, Depok");
    b.type_into("#f-notes", "Asap tebal dari ruko lantai dua.");
    b.select("#f-agency", "damkar");
    b.click("#save");
    b.wait_for(
        "saved",
        "return document.querySelector('#saved-msg').textContent.startsWith('Tersimpan')",
        WAIT,
    );
    let saved = b.text("#saved-msg");
    assert!(
        is_time_in_wib(saved.trim_start_matches("Tersimpan ")),
        "one time format, in the center's zone: {saved}"
    );
    b.screenshot("2-call-taker-incident-saved");

    let (status, inc) = server.get(&format!("/api/incidents/{incident_id}"));
    assert_eq!(status, 200);
    assert_eq!(inc["category"], "fire");
    assert_eq!(inc["priority"], 1);
    assert_eq!(inc["agency"], "damkar");
    assert_eq!(inc["address"], "Jl. Margonda Raya No. 100, Depok");
    assert_eq!(inc["calls"][0]["agent_id"], "ct-01");
    let audit = inc["audit"].as_array().unwrap();
    // Edits save themselves as they are made, so a field typed slowly
    // may have a draft on the trail before its final value; each of the
    // five fields is there, ending with what was typed.
    for (field, last) in [
        ("category", "fire"),
        ("priority", "1"),
        ("address", "Jl. Margonda Raya No. 100, Depok"),
        ("notes", "Asap tebal dari ruko lantai dua."),
        ("agency", "damkar"),
    ] {
        let rows: Vec<_> = audit.iter().filter(|a| a["field"] == field).collect();
        assert_eq!(
            rows.last().map(|a| &a["new_value"]),
            Some(&Value::from(last)),
            "{field}: {audit:?}"
        );
    }
    assert!(audit.iter().all(|a| a["actor"] == "siti"));
    assert!(audit
        .iter()
        .any(|a| a["field"] == "agency" && a["new_value"] == "damkar"));

    // In the list, filtered by category.
    b.goto(&format!("{}/incidents?category=fire", base(&server)));
    b.wait_for(
        "incident in the list",
        &format!("return !!document.querySelector('tr.incident-row[data-id=\"{incident_id}\"]')"),
        WAIT,
    );
    b.goto(&format!("{}/incidents?category=medical", base(&server)));
    assert_eq!(
        b.js(
            "return document.querySelectorAll('tr.incident-row').length",
            vec![]
        ),
        0
    );
    b.goto(&format!("{}/incidents/{incident_id}", base(&server)));
    assert!(b.text("#d-address").contains("Margonda"));
    // Codes are shown by their names: the agency, and on the trail the
    // field, the action and the category.
    assert_eq!(
        b.text("#d-agency"),
        "Pemadam Kebakaran dan Penyelamatan (Damkar)"
    );
    let trail = b.text("#audit");
    assert!(
        trail.contains("Kategori") && trail.contains("Kebakaran") && trail.contains("diubah"),
        "{trail}"
    );
    assert!(
        !trail.contains("category") && !trail.contains("update") && !trail.contains("fire"),
        "{trail}"
    );
    b.screenshot("3-incident-detail");
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
    // Its recording plays in the browser (once the call has ended).
    b.goto(&format!("{}/incidents/{incident_id}", base(&server)));
    b.js(
        "window.__rec = null; fetch(document.querySelector('#calls audio').src, {headers: {Range: 'bytes=0-43'}}) \
         .then(r => r.arrayBuffer().then(a => window.__rec = r.status + ' ' + r.headers.get('content-type') + ' ' + a.byteLength));",
        vec![],
    );
    let rec = b.wait_for("recording fetched", "return window.__rec", WAIT);
    assert_eq!(rec, "206 audio/wav 44", "the WAV header, by range");

    // The same number calls again about the same fire: the earlier
    // incident is on screen, and the call-taker joins the call to it.
    b.goto(&format!("{}/calltaker", base(&server)));
    b.wait_for(
        "agent ready again",
        "return document.querySelector('#agent-state').textContent === 'Siap'",
        Duration::from_secs(30),
    );
    let caller = background_call(server.sip, "112", 8000, Duration::from_secs(30));
    b.wait_for(
        "second pop-up",
        "return !document.querySelector('#call-card').hidden",
        WAIT,
    );
    b.wait_for(
        "earlier incident listed",
        &format!(
            "return !!document.querySelector('#history a[href=\"/incidents/{incident_id}\"]')"
        ),
        WAIT,
    );
    let second = b
        .wait_for(
            "second incident",
            // The form's list of open incidents to link to comes a moment
            // after the incident itself.
            &format!("{SHOWN_INCIDENT} return id !== '{incident_id}' && !!document.querySelector('#f-link option[value=\"{incident_id}\"]') && id"),
            WAIT,
        )
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        b.js("return document.querySelector('#f-link').value", vec![]),
        "",
        "nothing chosen to merge into until the call-taker chooses"
    );
    b.select("#f-link", &incident_id);
    b.click("#link");
    b.wait_for(
        "asked before merging",
        "return !document.querySelector('#link-confirm').hidden",
        WAIT,
    );
    assert!(
        b.text("#link-question").contains("Kebakaran"),
        "the incident named with its category's label: {}",
        b.text("#link-question")
    );
    let (_, second_now) = server.get(&format!("/api/incidents/{second}"));
    assert_ne!(second_now["status"], "merged", "not before the answer");
    b.click("#link-yes");
    b.wait_for(
        "linked",
        &format!("return document.querySelector('#incident-link').getAttribute('href') === '/incidents/{incident_id}'"),
        WAIT,
    );
    assert_eq!(
        b.text("#f-address"),
        "",
        "the form shows the joined incident"
    );
    assert_eq!(
        b.js("return document.querySelector('#f-address').value", vec![]),
        "Jl. Margonda Raya No. 100, Depok"
    );
    b.screenshot("3b-second-caller-linked");
    let (_, joined) = server.get(&format!("/api/incidents/{incident_id}"));
    assert_eq!(joined["calls"].as_array().unwrap().len(), 2);
    let (_, merged) = server.get(&format!("/api/incidents/{second}"));
    assert_eq!(merged["status"], "merged");
    assert_eq!(merged["merged_into"], incident_id.as_str());
    assert!(joined["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "call_linked" && a["actor"] == "siti"));
    assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());

    // The Damkar dispatcher sees it, newest first, and moves its status.
    let d = Browser::start("dispatcher");
    d.login(&base(&server), "damkar1", TEST_PASSWORD, "/dispatcher");
    let row = format!("tr.incident-row[data-id=\"{incident_id}\"]");
    d.wait_for(
        "incident on the dispatcher's screen",
        &format!("return !!document.querySelector('{row}')"),
        WAIT,
    );
    d.click(&format!("{row} button[data-status=\"unit_sent\"]"));
    d.wait_for(
        "status unit sent",
        &format!("return document.querySelector('{row} .status').textContent === 'Unit dikirim'"),
        WAIT,
    );
    d.screenshot("4-dispatcher-damkar");
    let (_, inc) = server.get(&format!("/api/incidents/{incident_id}"));
    assert_eq!(inc["status"], "unit_sent");
    assert!(inc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["actor"] == "damkar1" && a["new_value"] == "unit_sent"));

    // The police dispatcher does not see it, on screen or through the API.
    let p = Browser::start("dispatcher_polri");
    p.login(&base(&server), "polisi1", TEST_PASSWORD, "/dispatcher");
    p.wait_for(
        "empty list",
        "return document.querySelector('#dispatch-list tbody').textContent.includes('Belum ada')",
        WAIT,
    );
    p.goto(&format!("{}/incidents", base(&server)));
    assert_eq!(
        p.js(
            "return document.querySelectorAll('tr.incident-row').length",
            vec![]
        ),
        0
    );
    let polri = server.login("polisi1", TEST_PASSWORD);
    let (status, list) = server.json_as(&polri, "GET", "/api/incidents?agency=damkar", None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let (status, _) = server.json_as(
        &polri,
        "GET",
        &format!("/api/incidents/{incident_id}"),
        None,
    );
    assert_eq!(status, 404);
    drop(phone);
}

/// The supervisor sees a waiting caller appear (position, wait) and the
/// day's figures change, pushed, and calls an abandoned caller back: the
/// call goes out through the trunk and lands, on the same incident, with
/// the agent who gets ready.
#[test]
fn supervisor_sees_queue_and_figures_live_and_calls_back() {
    let uas_port = common::free_udp_port();
    let server = Server::start(Setup {
        trunk_outbound: Some(format!("sip:{{number}}@127.0.0.1:{uas_port}")),
        ..setup()
    });
    server.add_user("sup", "supervisor", &[]);
    let b = Browser::start("supervisor");
    // Nor one that is another host once the URL parser drops its tab.
    b.login_at(
        &base(&server),
        "/login?next=/%09/evil.example/",
        "sup",
        TEST_PASSWORD,
        "/supervisor",
    );
    b.wait_for(
        "figures",
        "return document.querySelector('#fig-calls').textContent === '0'",
        WAIT,
    );
    b.js("window.__noReload = 7;", vec![]);

    // Nobody is ready: the caller waits, then hangs up (abandoned).
    let caller = background_call(server.sip, "112", 6000, Duration::from_secs(30));
    b.wait_for(
        "waiting caller",
        "const r = document.querySelector('tr.waiting-row'); return r && r.querySelector('.position').textContent === '1'",
        WAIT,
    );
    b.wait_for(
        "figures count the call",
        "return document.querySelector('#fig-calls').textContent === '1'",
        WAIT,
    );
    b.screenshot("1-supervisor-waiting-caller");
    assert_eq!(caller.join().unwrap(), Some(0));
    b.wait_for(
        "queue empty",
        "return !document.querySelector('tr.waiting-row')",
        WAIT,
    );
    b.wait_for(
        "abandon rate",
        "return document.querySelector('#fig-abandon').textContent === '100.0 %'",
        WAIT,
    );
    let call_id = b
        .wait_for(
            "abandoned call listed",
            "const r = document.querySelector('tr.abandoned-row .callback-btn'); return r && r.dataset.call",
            WAIT,
        )
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(b.js("return window.__noReload", vec![]), 7, "all pushed");
    b.screenshot("2-supervisor-abandoned");

    // The caller's phone: SIPp answering and echoing what it hears.
    common::sipp_echo_uas(uas_port, Duration::from_secs(40));
    let phone = ct01_phone(&server);

    b.click(&format!(".callback-btn[data-call=\"{call_id}\"]"));
    b.wait_for(
        "call-back placed",
        "return document.querySelector('#callback-msg').textContent.includes('sedang')",
        WAIT,
    );
    // The called-back caller waits in the queue until an agent is ready.
    b.wait_for(
        "called-back caller waiting",
        "return !!document.querySelector('tr.waiting-row')",
        WAIT,
    );
    server.set_ready("ct-01");
    let original = server.get(&format!("/api/calls/{call_id}")).1;
    let incident = original["incident_id"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    let callback = loop {
        let (_, inc) = server.get(&format!("/api/incidents/{incident}"));
        let cb = inc["calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["direction"] == "callback")
            .cloned();
        if let Some(cb) = cb.filter(|c| c["agent_id"] == "ct-01") {
            break cb;
        }
        assert!(
            start.elapsed() < WAIT,
            "call-back not bridged: {inc}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(callback["callback_of"], call_id.as_str());
    assert_eq!(callback["requested_by"], "sup");
    assert_eq!(callback["caller_number"], "081234567");
    let (_, inc) = server.get(&format!("/api/incidents/{incident}"));
    assert!(inc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "callback" && a["actor"] == "sup"));
    // Served now: off the call-back list.
    b.wait_for(
        "call-back list empty",
        "return !document.querySelector('tr.abandoned-row')",
        WAIT,
    );
    b.screenshot("3-supervisor-after-callback");
    phone.command("hangup", None);
    let cb_id = callback["id"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    while server.get(&format!("/api/calls/{cb_id}")).1["ended_at"].is_null() {
        assert!(start.elapsed() < WAIT, "call-back did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
    common::stop_sipp_on(uas_port);
}

/// Every route but /healthz and the login refuses a request without a
/// session; roles are held to their routes; the cookie is HttpOnly and
/// SameSite; sessions end at logout and when a user is disabled.
#[test]
fn logins_and_roles_guard_every_route() {
    let server = Server::start(setup());
    server.add_user("siti", "call_taker", &["--agent", "ct-01"]);
    server.add_user("damkar1", "dispatcher", &["--agency", "damkar"]);
    server.add_user("sup", "supervisor", &[]);

    // The session cookie.
    let body = format!(r#"{{"username":"siti","password":"{TEST_PASSWORD}"}}"#);
    let (status, headers, _) = server.request("", "POST", "/api/login", Some(&body));
    assert_eq!(status, 200);
    let cookie = &headers.iter().find(|(k, _)| k == "set-cookie").unwrap().1;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }

    // Every documented route, without a session.
    let (_, doc) = server.get("/api/openapi.json");
    let public = ["/healthz", "/api/login", "/api/logout"];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "x").replace("{call_id}", "x");
            let body = (method != "get").then_some("{}");
            let (status, _, _) = server.request("", &method.to_uppercase(), &concrete, body);
            if public.contains(&path.as_str()) {
                assert!(status != 401, "{method} {path} is public, got {status}");
            } else {
                assert_eq!(status, 401, "{method} {path} without a session");
                checked += 1;
            }
        }
    }
    assert!(checked >= 23, "only {checked} routes checked");
    for page in [
        "/",
        "/calltaker",
        "/supervisor",
        "/dispatcher",
        "/incidents",
        "/incidents/x",
        "/admin",
    ] {
        let (status, headers, _) = server.request("", "GET", page, None);
        assert_eq!(status, 303, "{page}");
        let to = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
        assert!(to.starts_with("/login?next="), "{page} -> {to}");
    }
    // A forged cookie is no session.
    let (status, _) = server.json_as("siaga_session=00ff", "GET", "/api/me", None);
    assert_eq!(status, 401);

    let ct = server.login("siti", TEST_PASSWORD);
    let disp = server.login("damkar1", TEST_PASSWORD);
    let sup = server.login("sup", TEST_PASSWORD);
    let refused: &[(&str, &str, &str, Option<&str>)] = &[
        (&ct, "GET", "/api/abandoned", None),
        (&ct, "GET", "/api/stats/today", None),
        (&ct, "GET", "/api/users", None),
        (
            &ct,
            "POST",
            "/api/users",
            Some(r#"{"username":"x","role":"admin","password":"0123456789ab"}"#),
        ),
        (&ct, "POST", "/api/calls/x/callback", Some("{}")),
        (
            &ct,
            "POST",
            "/api/agents/ct-02/state",
            Some(r#"{"state":"ready"}"#),
        ),
        (&ct, "GET", "/supervisor", None),
        (&ct, "GET", "/admin", None),
        (&ct, "GET", "/dispatcher", None),
        (&disp, "GET", "/api/calls", None),
        (&disp, "GET", "/api/incidents/open", None),
        (
            &disp,
            "PATCH",
            "/api/incidents/x",
            Some(r#"{"category":"fire"}"#),
        ),
        (
            &disp,
            "POST",
            "/api/calls/x/incident",
            Some(r#"{"incident_id":"y"}"#),
        ),
        (&disp, "GET", "/calltaker", None),
        (&disp, "GET", "/api/abandoned", None),
        (&sup, "GET", "/api/users", None),
        (&sup, "PATCH", "/api/users/x", Some(r#"{"disabled":true}"#)),
        (&sup, "GET", "/admin", None),
    ];
    for (cookie, method, path, body) in refused {
        let (status, _, _) = server.request(cookie, method, path, *body);
        assert_eq!(status, 403, "{method} {path} as {cookie}");
    }
    // Each refusal carries a code the panel translates, beside the
    // English reason for API clients.
    let (status, body) = server.json_as(&disp, "GET", "/api/abandoned", None);
    assert_eq!(
        (status, &body["code"]),
        (403, &Value::from("forbidden")),
        "{body}"
    );
    let (status, body) = server.json_as(
        &ct,
        "PATCH",
        "/api/incidents/none",
        Some(r#"{"category":"no-such-category"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "unknown_category", "{body}");
    assert!(body["error"].as_str().unwrap().contains("no-such-category"));
    // ...and what they may do.
    assert_eq!(
        server.json_as(&ct, "GET", "/api/me", None).1["role"],
        "call_taker"
    );
    assert_eq!(server.json_as(&ct, "GET", "/api/calls", None).0, 200);
    assert_eq!(server.json_as(&sup, "GET", "/api/stats/today", None).0, 200);
    assert_eq!(server.json_as(&disp, "GET", "/api/incidents", None).0, 200);
    assert_eq!(server.request(&ct, "GET", "/calltaker", None).0, 200);

    // Cross-site requests that change something are refused.
    let callback = ("POST", "/api/calls/none/callback");
    let (status, _, _) = http_with_origin(&server, &sup, "http://evil.example", callback);
    assert_eq!(status, 403);
    // The live socket too: another port of this host is "same-site".
    let live = ("GET", "/api/live");
    let (status, _, _) = http_with_origin(&server, &sup, "http://127.0.0.1:9", live);
    assert_eq!(status, 403);
    let own = format!("http://{}", server.http);
    let (status, _, _) = http_with_origin(&server, &sup, &own, live);
    assert_ne!(
        status, 403,
        "own origin passes (to the WebSocket handshake)"
    );
    let (status, _, _) = http_with_origin(&server, &sup, &own, callback);
    assert_eq!(
        status, 404,
        "same origin passes to the handler (no such call)"
    );

    // Logout ends the session.
    let (status, _) = server.json_as(&ct, "POST", "/api/logout", Some("{}"));
    assert_eq!(status, 200);
    assert_eq!(server.json_as(&ct, "GET", "/api/me", None).0, 401);
    // Disabling a user ends their sessions and refuses their logins.
    let (_, users) = server.get("/api/users");
    let id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "damkar1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = server.json_as(
        &server.admin,
        "PATCH",
        &format!("/api/users/{id}"),
        Some(r#"{"disabled":true}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(server.json_as(&disp, "GET", "/api/me", None).0, 401);
    let body = format!(r#"{{"username":"damkar1","password":"{TEST_PASSWORD}"}}"#);
    assert_eq!(server.request("", "POST", "/api/login", Some(&body)).0, 401);

    // Guessing is slowed: five wrong passwords lock the name for a while.
    let wrong = r#"{"username":"sup","password":"salah-salah-salah"}"#;
    for _ in 0..5 {
        assert_eq!(server.request("", "POST", "/api/login", Some(wrong)).0, 401);
    }
    let right = format!(r#"{{"username":"sup","password":"{TEST_PASSWORD}"}}"#);
    assert_eq!(
        server.request("", "POST", "/api/login", Some(&right)).0,
        429
    );
    // The health probe needs nothing.
    let (status, health) = server.json_as("", "GET", "/healthz", None);
    assert_eq!((status, health["status"].clone()), (200, Value::from("ok")));

    // DNS rebinding: a page of another site whose name points here reaches
    // nothing, the login included; our own names do.
    let login = format!(r#"{{"username":"siti","password":"{TEST_PASSWORD}"}}"#);
    let port = server.http.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        assert_eq!(
            status_for_host(&server, &host, "/api/login", &login),
            421,
            "{host}"
        );
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(
            status_for_host(&server, &host, "/api/login", &login),
            200,
            "{host}"
        );
    }
}

/// The status of a POST of `json` to `path` with `Host: host`.
fn status_for_host(server: &Server, host: &str, path: &str, json: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(common::HTTP_HANG)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn http_with_origin(
    server: &Server,
    cookie: &str,
    origin: &str,
    (method, path): (&str, &str),
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    common::http_request(
        server.http,
        method,
        path,
        &format!("Cookie: {cookie}\r\nOrigin: {origin}\r\n"),
        (method != "GET").then_some("{}"),
    )
}

/// A caller who hangs up at once, before any agent answered, is a ghost
/// call (issue 23): the incident is closed as `ghost` by siaga, on the
/// audit trail as "system"; a caller who waited longer is left for a
/// person (and the call-back list).
#[test]
fn a_caller_gone_at_once_is_a_ghost_call_and_closed() {
    let server = Server::start(Setup::default());
    let incident_of = |ms: u32| {
        let before = server
            .get("/api/calls?limit=100")
            .1
            .as_array()
            .unwrap()
            .len();
        let caller = background_call(server.sip, "112", ms, Duration::from_secs(60));
        assert_eq!(caller.join().unwrap(), Some(0), "{}", server.log());
        let mut call = Value::Null;
        let start = std::time::Instant::now();
        while call["ended_at"].is_null() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
            let calls = server.get("/api/calls?limit=100").1;
            let calls = calls.as_array().unwrap();
            if calls.len() > before {
                call = calls[0].clone();
            }
        }
        let id = call["incident_id"].as_str().unwrap().to_string();
        server.get(&format!("/api/incidents/{id}")).1
    };
    // One who waited 7 s, then one gone 1.5 s after the answer: the
    // records are written in order, so once the second is closed the
    // first would be too, were it taken for a ghost.
    let waited = incident_of(7_000);
    let mut inc = incident_of(1_500);
    let start = std::time::Instant::now();
    while inc["status"] != "closed" {
        assert!(start.elapsed() < Duration::from_secs(30), "{inc}");
        std::thread::sleep(Duration::from_millis(100));
        inc = server
            .get(&format!("/api/incidents/{}", inc["id"].as_str().unwrap()))
            .1;
    }
    assert_eq!(inc["category"], "ghost", "{inc}");
    let audit = inc["audit"].as_array().unwrap();
    let by_siaga = |field: &str, value: &str| {
        audit
            .iter()
            .any(|a| a["actor"] == "system" && a["field"] == field && a["new_value"] == value)
    };
    assert!(
        by_siaga("category", "ghost") && by_siaga("status", "closed"),
        "{inc}"
    );
    let waited = server
        .get(&format!(
            "/api/incidents/{}",
            waited["id"].as_str().unwrap()
        ))
        .1;
    assert_eq!(waited["status"], "new", "left for a person: {waited}");
    assert!(waited["category"].is_null(), "{waited}");
}

/// `20:14:18 WIB`: the panel's one time format, in the center's zone (the
/// test servers' default, UTC+7).
fn is_time_in_wib(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 12
        && s.ends_with(" WIB")
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && b[2] == b':'
        && b[5] == b':'
}

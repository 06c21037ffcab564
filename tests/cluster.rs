//! Two siaga nodes on one PostgreSQL (issue 22): one leads and takes the
//! calls; the other stands by, answering 503, until the leader dies; then
//! it takes the lease over, closes the dead node's calls and takes calls.
//! The old leader comes back as standby and touches nothing.

mod common;

use common::rawsip::{self, RawSip};
use common::{background_call, Server, Setup};
use std::process::Command;
use std::time::{Duration, Instant};

/// A database of its own on the PostgreSQL `scripts/test` starts.
fn postgres_db() -> Option<String> {
    let Ok(admin) = std::env::var("SIAGA_TEST_POSTGRES") else {
        assert!(
            std::env::var("SIAGA_REQUIRE_POSTGRES").is_err(),
            "SIAGA_REQUIRE_POSTGRES is set but SIAGA_TEST_POSTGRES is not"
        );
        eprintln!("skipped: set SIAGA_TEST_POSTGRES to run against PostgreSQL");
        return None;
    };
    let name = format!("siaga_cluster_{}", std::process::id());
    let out = Command::new("psql")
        .arg(&admin)
        .args([
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
    Some(format!("{base}/{name}"))
}

fn node(db: &str, name: &str, admin_exists: bool) -> Server {
    Server::start(Setup {
        database_url: Some(db.to_string()),
        cluster: Some(format!("node = \"{name}\"\nlease = \"3s\"\nrenew = \"1s\"")),
        admin_exists,
        ..Setup::default()
    })
}

fn role(server: &Server) -> String {
    let (status, _, body) = common::http_request(server.http, "GET", "/healthz", "", None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["role"].as_str().unwrap_or_default().to_string()
}

/// Waits until `ok`; the deadline only guards against a hang.
fn wait_until(what: &str, server: &Server, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The calls on record still open, as `server`'s API lists them.
fn open_calls(server: &Server) -> Vec<serde_json::Value> {
    let (_, calls) = server.get("/api/calls?limit=100");
    calls
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["ended_at"].is_null())
        .collect()
}

/// What a node answers to the front's OPTIONS probe.
fn probe(server: &Server) -> u16 {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let l = c.local();
    c.send(&format!(
        "OPTIONS sip:{0} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-probe;rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{l}>;tag=p1\r\nTo: <sip:{0}>\r\nCall-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        server.sip
    ));
    c.final_status(Duration::from_secs(5))
        .expect("OPTIONS answered")
        .0
}

/// What a node answers to a 112 INVITE sent straight to it (a standby:
/// it must never answer 200; the INVITE is never ACKed).
fn invite_answer(server: &Server) -> u16 {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let call_id = format!("standby-{}", std::process::id());
    c.send(&rawsip::invite(
        c.local(),
        server.sip,
        "112",
        &call_id,
        "z9hG4bK-standby",
        common::free_media_pair(),
    ));
    c.final_status(Duration::from_secs(5))
        .expect("INVITE answered")
        .0
}

#[test]
fn the_standby_takes_over_when_the_leader_dies_and_the_old_leader_touches_nothing() {
    let Some(db) = postgres_db() else { return };
    let mut a = node(&db, "a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    let b = node(&db, "b", true);
    assert_eq!(role(&b), "standby");
    // A standby never takes a call, nor the front's probe.
    assert_eq!((probe(&b), invite_answer(&b)), (503, 503));
    assert!(
        open_calls(&b).is_empty(),
        "the refused INVITE left no record"
    );

    // A caller on the leader, cut off by its death.
    let cut = background_call(a.sip, "112", 60_000, Duration::from_secs(90));
    wait_until("a's call is on record", &a, || open_calls(&a).len() == 1);
    let cut_id = open_calls(&a)[0]["id"].as_str().unwrap().to_string();
    let killed = Instant::now();
    a.kill9();
    wait_until("b takes over", &b, || role(&b) == "leader");
    let took = killed.elapsed();
    eprintln!("take-over: {} ms from kill -9 to leader", took.as_millis());
    wait_until("the dead node's call is closed", &b, || {
        let (_, call) = b.get(&format!("/api/calls/{cut_id}"));
        call["status"] == "interrupted"
    });
    let (_, call) = b.get(&format!("/api/calls/{cut_id}"));
    assert!(call["ended_at"].is_i64(), "{call}");
    assert_eq!(call["end_cause"], "node_failure", "{call}");
    // Cut off by us: first on the call-back list.
    let (_, list) = b.get("/api/abandoned");
    assert_eq!(list[0]["id"], cut_id.as_str(), "{list}");
    let _ = cut.join();

    // The new leader takes calls.
    assert_eq!(probe(&b), 200);
    let served = background_call(b.sip, "112", 2_000, Duration::from_secs(30));
    assert_eq!(served.join().unwrap(), Some(0), "log:\n{}", b.log());

    // The old leader comes back as standby and closes nothing of b's.
    let long = background_call(b.sip, "112", 12_000, Duration::from_secs(40));
    wait_until("b's call is on record", &b, || open_calls(&b).len() == 1);
    let open_id = open_calls(&b)[0]["id"].as_str().unwrap().to_string();
    a.spawn();
    assert_eq!(role(&a), "standby");
    assert_eq!((probe(&a), invite_answer(&a)), (503, 503));
    assert_eq!(long.join().unwrap(), Some(0));
    wait_until("b's call ends as its caller ended it", &b, || {
        let (_, call) = b.get(&format!("/api/calls/{open_id}"));
        !call["ended_at"].is_null()
    });
    let (_, call) = b.get(&format!("/api/calls/{open_id}"));
    assert_eq!(call["end_cause"], "caller_bye", "{call}");
    assert_ne!(call["status"], "interrupted", "{call}");
}

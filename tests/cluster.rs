//! Two siaga nodes on one PostgreSQL (issue 22): one leads and takes the
//! calls; the other stands by, answering 503, until the leader dies; then
//! it takes the lease over, closes the dead node's calls and takes calls.
//! The old leader comes back as standby and touches nothing.

mod common;

use common::audio::{read_stereo, tone_ratio};
use common::baresip::{self, wait_registered, Baresip, Phone};
use common::gate::Gate;
use common::haproxy::{self, Haproxy};
use common::kamailio::{self, Kamailio};
use common::rawsip::{self, RawSip};
use common::webdriver::{browser_with_mic, microphone_wav};
use common::{background_call, Server, Setup, Sipp};
use std::process::Command;
use std::time::{Duration, Instant};

const LEASE: &str = "lease = \"3s\"\nrenew = \"1s\"";
/// The browser call-taker's microphone tone.
const BROWSER_HZ: f64 = 700.0;

fn node(db: &str, name: &str, admin_exists: bool) -> Server {
    Server::start(Setup {
        database_url: Some(db.to_string()),
        cluster: Some(format!("node = \"{name}\"\n{LEASE}")),
        admin_exists,
        ..Setup::default()
    })
}

/// Nodes a (leading) and b (standing by) behind a real Kamailio, with the
/// example agents or not.
fn pair_behind_kamailio(db: &str, agents: bool) -> (Server, Server, Kamailio) {
    pair_behind_kamailio_leasing(db, agents, LEASE)
}

/// `pair_behind_kamailio` with the given lease settings.
fn pair_behind_kamailio_leasing(db: &str, agents: bool, lease: &str) -> (Server, Server, Kamailio) {
    let port = common::free_udp_port();
    let behind = |name: &str, admin_exists: bool| {
        Server::start(Setup {
            database_url: Some(db.to_string()),
            cluster: Some(format!("node = \"{name}\"\n{lease}")),
            sip_extra: Some(format!("fronts = [\"127.0.0.1:{port}\"]")),
            agents,
            admin_exists,
            ..Setup::default()
        })
    };
    let a = behind("a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    let b = behind("b", true);
    let front = Kamailio::start(port, &[a.sip, b.sip]);
    (a, b, front)
}

/// Nodes a (leading) and b (standing by) on `db`, with the example
/// agents, reached straight (no front).
fn pair_with_agents(db: &str) -> (Server, Server) {
    let on = |name: &str, admin_exists: bool| {
        Server::start(Setup {
            database_url: Some(db.to_string()),
            cluster: Some(format!("node = \"{name}\"\n{LEASE}")),
            agents: true,
            admin_exists,
            ..Setup::default()
        })
    };
    let a = on("a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    (a, on("b", true))
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

/// A number no other request of this test process has used: each probe
/// or INVITE is a transaction of its own, never a retransmission that a
/// node answers from its transaction's memory.
fn unique() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// What a node answers to the front's OPTIONS probe.
fn probe(server: &Server) -> u16 {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let (l, n) = (c.local(), unique());
    c.send(&format!(
        "OPTIONS sip:{0} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-probe-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{l}>;tag=p{n}\r\nTo: <sip:{0}>\r\nCall-ID: probe-{n}-{1}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        server.sip,
        std::process::id()
    ));
    c.final_status(Duration::from_secs(5))
        .expect("OPTIONS answered")
        .0
}

/// What a node answers to a REGISTER sent straight to it (not through
/// the front).
fn register_answer(server: &Server) -> u16 {
    let c = RawSip::new(server.sip, "127.0.0.1");
    c.send(&rawsip::register(
        c.local(),
        server.sip,
        "ct-01",
        1 + unique(),
        None,
    ));
    c.final_status(Duration::from_secs(5))
        .expect("REGISTER answered")
        .0
}

/// What a node answers to a 112 INVITE sent straight to it (a standby:
/// it must never answer 200; the INVITE is never ACKed).
fn invite_answer(server: &Server) -> u16 {
    let c = RawSip::new(server.sip, "127.0.0.1");
    let n = unique();
    let call_id = format!("standby-{n}-{}", std::process::id());
    c.send(&rawsip::invite(
        c.local(),
        server.sip,
        "112",
        &call_id,
        &format!("z9hG4bK-standby-{n}"),
        common::free_media_pair(),
    ));
    c.final_status(Duration::from_secs(5))
        .expect("INVITE answered")
        .0
}

#[test]
fn the_standby_takes_over_when_the_leader_dies_and_the_old_leader_touches_nothing() {
    let Some(db) = common::postgres_db("cluster") else {
        return;
    };
    let mut a = node(&db, "a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    let b = node(&db, "b", true);
    assert_eq!(role(&b), "standby");
    // A standby never takes a call, a registration, nor the front's probe.
    assert_eq!(
        (probe(&b), invite_answer(&b), register_answer(&b)),
        (503, 503, 503)
    );
    assert!(
        open_calls(&b).is_empty(),
        "the refused INVITE left no record"
    );

    // A caller on the leader, cut off by its death.
    let cut = background_call(a.sip, "112", 60_000, Duration::from_secs(90));
    wait_until("a's call is on record", &a, || open_calls(&a).len() == 1);
    let cut_id = open_calls(&a)[0]["id"].as_str().unwrap().to_string();
    let recording = a.get(&format!("/api/calls/{cut_id}")).1["recording_path"]
        .as_str()
        .expect("the cut call is recorded")
        .to_string();
    wait_until("a second of the cut call on disk", &a, || {
        hound::WavReader::open(&recording).map_or(0, |r| r.duration()) >= 8_000
    });
    let killed = Instant::now();
    a.kill9();
    // a's recordings on a disk b cannot reach (each node its own storage).
    let disk = a.root.path().join("recordings");
    let unmounted = a.root.path().join("recordings-unmounted");
    std::fs::rename(&disk, &unmounted).unwrap();
    wait_until("b takes over", &b, || role(&b) == "leader");
    let took = killed.elapsed();
    eprintln!("take-over: {} ms from kill -9 to leader", took.as_millis());
    wait_until("the dead node's call is closed", &b, || {
        let (_, call) = b.get(&format!("/api/calls/{cut_id}"));
        call["status"] == "interrupted"
    });
    wait_until("b leaves the recording it cannot reach to a", &b, || {
        b.log().contains("left for that node's next start")
    });
    let (_, call) = b.get(&format!("/api/calls/{cut_id}"));
    assert!(call["ended_at"].is_i64(), "{call}");
    assert_eq!(call["end_cause"], "node_failure", "{call}");
    assert!(
        call["recording_sha256"].is_null() && call["recording_error"].is_null(),
        "neither a checksum nor a loss claimed for a file b cannot see: {call}"
    );
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
    std::fs::rename(&unmounted, &disk).unwrap();
    a.spawn();
    assert_eq!(role(&a), "standby");
    assert_eq!(register_answer(&a), 503);
    // Its disk back, a finishes its own recording of the cut call.
    wait_until("a finishes its recording of the cut call", &a, || {
        !b.get(&format!("/api/calls/{cut_id}")).1["recording_sha256"].is_null()
    });
    let (_, call) = b.get(&format!("/api/calls/{cut_id}"));
    assert_eq!(
        call["recording_sha256"].as_str(),
        Some(common::sha256_hex(&std::fs::read(&recording).unwrap()).as_str()),
        "{call}"
    );
    assert!(
        hound::WavReader::open(&recording).unwrap().duration() >= 8_000,
        "the cut call's recording still plays its second"
    );
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

/// What PostgreSQL answers to `sql`, asked directly (not through a node).
fn on_record(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(db)
        .args(["-tAc", sql])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lease as PostgreSQL holds it, asked directly (not through a node):
/// (holder, term, whether it has run out on the database's clock).
fn lease(db: &str) -> (String, i64, bool) {
    let out = Command::new("psql")
        .arg(db)
        .args([
            "-tAc",
            "SELECT node, term, expires_at < (extract(epoch from clock_timestamp()) * 1000)::bigint FROM leadership",
        ])
        .output()
        .expect("psql");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.trim().split('|').collect();
    assert_eq!(f.len(), 3, "{text}{}", String::from_utf8_lossy(&out.stderr));
    (f[0].to_string(), f[1].parse().unwrap(), f[2] == "t")
}

/// PostgreSQL gone for both nodes (restarting, or away a minute): the
/// leader keeps the call it has, takes no new one once its lease can no
/// longer be proven, and the standby stays one; back, the same leader
/// renews under the same term and takes calls again, and the call that
/// went on meanwhile reaches the record as its caller ended it. Then the
/// leader alone cut off from PostgreSQL: it stops taking calls before the
/// standby takes the lease over, and at no moment do both lead.
#[test]
fn without_postgresql_there_is_never_a_second_leader() {
    let Some(db) = common::postgres_db("away") else {
        return;
    };
    let gate_a = Gate::start(Gate::target_of(&db));
    let gate_b = Gate::start(Gate::target_of(&db));
    let a = node(&gate_a.url_through(&db), "a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    let b = node(&gate_b.url_through(&db), "b", true);
    assert_eq!(role(&b), "standby");
    let going_on = background_call(a.sip, "112", 15_000, Duration::from_secs(60));
    wait_until("a's call is on record", &a, || open_calls(&a).len() == 1);

    // Gone for both.
    gate_a.shut();
    gate_b.shut();
    wait_until("a's lease runs out on PostgreSQL's clock", &a, || {
        lease(&db).2
    });
    assert_eq!(role(&a), "standby", "a cannot prove its lease");
    assert_eq!((probe(&a), invite_answer(&a)), (503, 503));
    assert_eq!((role(&b).as_str(), probe(&b)), ("standby", 503));
    assert_eq!(
        going_on.join().unwrap(),
        Some(0),
        "the call in progress went on to its end; log:\n{}",
        a.log()
    );

    // Back: the same leader, the same term, nothing closed by anyone.
    gate_a.open();
    gate_b.open();
    wait_until("a renews its lease", &a, || !lease(&db).2);
    assert_eq!(lease(&db), ("a".to_string(), 1, false));
    wait_until("a takes calls again", &a, || probe(&a) == 200);
    wait_until("the call reaches the record as it ended", &a, || {
        let (_, calls) = a.get("/api/calls");
        calls[0]["end_cause"] == "caller_bye"
    });
    assert_eq!(role(&b), "standby");

    // The leader alone cut off: it stops before b takes over.
    gate_a.shut();
    let start = Instant::now();
    loop {
        let (ra, rb) = (role(&a), role(&b));
        assert!(
            !(ra == "leader" && rb == "leader"),
            "two leaders; a:\n{}\nb:\n{}",
            a.log(),
            b.log()
        );
        if rb == "leader" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "b never led");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lease(&db).0, "b");
    assert_eq!(lease(&db).1, 2);
    assert_eq!((probe(&a), invite_answer(&a)), (503, 503));
    let served = background_call(b.sip, "112", 1_500, Duration::from_secs(30));
    assert_eq!(served.join().unwrap(), Some(0), "log:\n{}", b.log());
    gate_a.open();
    wait_until("a hears that b leads", &a, || {
        a.log().contains("another node holds the lease")
    });
    assert_eq!((role(&a).as_str(), probe(&a)), ("standby", 503));
    // Every call on record, and the node that answered it.
    let nodes: Vec<String> = calls_on_record(&db).into_iter().map(|c| c.0).collect();
    assert_eq!(nodes, ["b", "a"], "newest first");
}

/// The front's config and node list as shipped pass `kamailio -c`.
#[test]
fn the_shipped_kamailio_config_is_valid() {
    let (ok, out) = kamailio::check();
    assert!(ok, "{out}");
}

/// The calls on record, newest first, as PostgreSQL holds them: (node
/// that took it, source, trunk).
fn calls_on_record(db: &str) -> Vec<(String, String, String)> {
    let out = Command::new("psql")
        .arg(db)
        .args([
            "-tAc",
            "SELECT node, source, coalesce(trunk, '') FROM calls ORDER BY arrived_at DESC",
        ])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 3).then(|| (f[0].into(), f[1].into(), f[2].into()))
        })
        .collect()
}

/// A caller through the front (a real Kamailio with the shipped config,
/// dispatching to both nodes): each call is answered by the node that
/// leads, and is on record with the caller's own address, which is what
/// trunk trust is decided on; a stranger's word on its source is taken
/// off by the front and refused. When the leader dies, the next call
/// through the same front is the new leader's.
#[test]
fn through_kamailio_each_call_reaches_the_leader_and_the_callers_source_is_trusted() {
    let Some(db) = common::postgres_db("front") else {
        return;
    };
    let (mut a, b, front) = pair_behind_kamailio(&db, false);
    let call = |to: &Server| {
        let r = Sipp::new(1000.0).run(
            "uac_tone_routed.xml",
            front.addr,
            &["-s", "112", "-d", "1500"],
            Duration::from_secs(30),
        );
        assert_eq!(
            r.code,
            Some(0),
            "{}\n{}\nnode log:\n{}\nfront log:\n{}",
            r.output,
            r.errors,
            to.log(),
            front.log()
        );
    };

    call(&a);
    let first = calls_on_record(&db);
    assert_eq!(first.len(), 1, "{first:?}");
    let (node, source, trunk) = &first[0];
    assert_eq!(node, "a");
    assert_eq!(trunk, "test-trunk", "the caller's address is the trunk's");
    assert!(
        source.starts_with("127.0.0.1:") && *source != front.addr.to_string(),
        "the caller's own address, not the front's: {source}"
    );

    // 127.0.0.3 is no trunk, and its header naming the trunk's address is
    // taken off by the front before the node sees it.
    let stranger = RawSip::new(front.addr, "127.0.0.3");
    let forged = rawsip::invite(
        stranger.local(),
        front.addr,
        "112",
        &format!("front-stranger-{}", std::process::id()),
        "z9hG4bK-front-stranger",
        common::free_media_pair(),
    )
    .replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nX-Front-Source: sip:127.0.0.1:5060;transport=udp\r\n",
    );
    stranger.send(&forged);
    assert_eq!(
        stranger.final_status(Duration::from_secs(10)).map(|s| s.0),
        Some(403),
        "front log:\n{}",
        front.log()
    );

    a.kill9();
    wait_until("b takes over", &b, || role(&b) == "leader");
    call(&b);
    let all = calls_on_record(&db);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].0, "b", "the call after the take-over: {all:?}");
}

/// A caller who dials in the seconds between the leader's death and the
/// take-over is answered, not turned away: the front finds the dead
/// leader silent and the standby not leading yet, and the standby, which
/// sees the leader late with its renewal, holds the INVITE (100 Trying)
/// and takes the call the moment it leads. A 6 s lease puts the caller,
/// who reaches the standby once the front's 2 s wait on the dead node has
/// passed, seconds inside the gap.
#[test]
fn a_caller_in_the_gap_before_a_take_over_is_answered_by_the_new_leader() {
    let Some(db) = common::postgres_db("gap") else {
        return;
    };
    let (mut a, b, front) =
        pair_behind_kamailio_leasing(&db, false, "lease = \"6s\"\nrenew = \"1s\"");
    wait_until("b stands by", &b, || role(&b) == "standby");
    a.kill9();
    let r = Sipp::new(1000.0).run(
        "uac_tone_routed.xml",
        front.addr,
        &["-s", "112", "-d", "1500"],
        Duration::from_secs(60),
    );
    assert_eq!(
        r.code,
        Some(0),
        "the caller answered\n{}\n{}\nb:\n{}\nfront:\n{}",
        r.output,
        r.errors,
        b.log(),
        front.log()
    );
    assert!(
        b.log()
            .contains("INVITE held while this node took the lease over: taken"),
        "the call reached b before it led; b:\n{}",
        b.log()
    );
    let all = calls_on_record(&db);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].0, "b", "{all:?}");
}

/// A call-taker's phone registered through the front: the node keeps the
/// Path the front added, and rings the phone through the front with it as
/// the INVITE's route; the phone answers, the caller is bridged to it, and
/// the caller's hang-up reaches the phone along the dialog's route. One
/// node alone on SQLite: this is the front's and the registrar's business.
#[test]
fn a_phone_registered_through_kamailio_is_rung_through_it() {
    let port = common::free_udp_port();
    let server = Server::start(Setup {
        agents: true,
        sip_extra: Some(format!("fronts = [\"127.0.0.1:{port}\"]")),
        ..Setup::default()
    });
    let front = Kamailio::start(port, &[server.sip]);
    let phone = baresip::ct01(front.addr);
    wait_registered(&server, "ct-01", &phone);
    server.set_ready("ct-01");

    let r = Sipp::new(1000.0).run(
        "uac_tone_routed.xml",
        front.addr,
        &["-s", "112", "-d", "4000"],
        Duration::from_secs(30),
    );
    assert_eq!(
        r.code,
        Some(0),
        "{}\nnode:\n{}\nfront:\n{}",
        r.output,
        server.log(),
        front.log()
    );
    let (_, calls) = server.get("/api/calls");
    let call = &calls[0];
    assert_eq!(call["agent_id"], "ct-01", "{call}");
    assert!(call["agent_answered_at"].is_i64(), "{call}");
    wait_until("the phone hears the hang-up", &server, || {
        phone.log().contains("closed")
    });
    // The front logs what it relays (`xlog`): the node's INVITE to the
    // phone, and the ACK and BYE of that dialog, each from the node.
    let log = front.log();
    let node = server.sip.to_string();
    for (kind, method) in [
        ("from siaga", "INVITE"),
        ("in dialog from", "ACK"),
        ("in dialog from", "BYE"),
    ] {
        let seen = log
            .lines()
            .any(|l| l.contains(&format!("{kind} {node}: {method} to sip:ct-01")));
        assert!(
            seen,
            "the node's {method} to the phone did not pass the front:\n{log}"
        );
    }
}

/// A phone registered through the front with the leader is the new
/// leader's at once when the leader dies, and every agent keeps their
/// desk: the binding (with its Path) and the desks are on record in
/// PostgreSQL, the new leader takes them on taking the lease, and rings
/// the ready agent's phone through the front before the phone has
/// registered again, with nobody setting anyone ready.
#[test]
fn a_new_leader_rings_phones_registered_with_the_old_one() {
    let Some(db) = common::postgres_db("phones") else {
        return;
    };
    let (mut a, b, front) = pair_behind_kamailio(&db, true);
    let phone = baresip::ct01(front.addr);
    wait_registered(&a, "ct-01", &phone);
    a.set_ready("ct-01");
    let (status, body) = a.post_json(
        "/api/agents/ct-02/state",
        r#"{"state":"not_ready","reason":"istirahat"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let on_record = |sql: &str| on_record(&db, sql);
    wait_until("the binding and the desks are on record", &a, || {
        on_record("SELECT count(*) FROM registrations WHERE path <> ''") == "1"
            && on_record("SELECT string_agg(agent || ':' || state || ':' || coalesce(reason, ''), ',' ORDER BY agent) FROM agent_desks")
                == "ct-01:ready:,ct-02:not_ready:istirahat"
    });
    // The front's own log counts the phone's REGISTERs it relayed.
    let registers = || {
        front
            .log()
            .lines()
            .filter(|l| l.contains(": REGISTER from"))
            .count()
    };
    let before = registers();
    assert!(before >= 1, "{}", front.log());

    a.kill9();
    wait_until("b takes over", &b, || role(&b) == "leader");
    wait_until("b has the phone, ready", &b, || {
        let ct01 = b.agent("ct-01");
        ct01["registered"] == true && ct01["state"] == "ready"
    });
    assert_eq!(
        registers(),
        before,
        "the phone registered again, so this proves nothing:\n{}",
        front.log()
    );
    let ct02 = b.agent("ct-02");
    assert_eq!(
        (&ct02["state"], &ct02["reason"]),
        (&"not_ready".into(), &"istirahat".into()),
        "{ct02}"
    );
    let r = Sipp::new(1000.0).run(
        "uac_tone_routed.xml",
        front.addr,
        &["-s", "112", "-d", "3000"],
        Duration::from_secs(30),
    );
    assert_eq!(
        r.code,
        Some(0),
        "{}\nb:\n{}\nfront:\n{}",
        r.output,
        b.log(),
        front.log()
    );
    let (_, calls) = b.get("/api/calls");
    assert_eq!(calls[0]["agent_id"], "ct-01", "{}", calls[0]);
    assert!(calls[0]["agent_answered_at"].is_i64(), "{}", calls[0]);
}

/// The panel's front config as shipped passes `haproxy -c`.
#[test]
fn the_shipped_haproxy_config_is_valid() {
    let (ok, out) = haproxy::check();
    assert!(ok, "{out}");
}

/// Which node answers through the panel's front, as its /healthz says
/// (empty while none that leads does).
fn front_leader(front: &Haproxy) -> String {
    if std::net::TcpStream::connect(front.addr).is_err() {
        return String::new();
    }
    let (status, _, body) = common::http_request(front.addr, "GET", "/healthz", "", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match (status, v["role"].as_str()) {
        (200, Some("leader")) => v["node"].as_str().unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// Through the panel's front (a real HAProxy with the shipped config),
/// browsers reach the node that leads, and a logged-in user stays logged
/// in when it dies: the front's health check follows the lease to the new
/// leader, and the session is in the shared PostgreSQL.
#[test]
fn through_haproxy_the_panel_follows_the_leader_and_the_session_holds() {
    let Some(db) = common::postgres_db("panel") else {
        return;
    };
    let mut a = node(&db, "a", false);
    wait_until("a leads", &a, || role(&a) == "leader");
    let b = node(&db, "b", true);
    let front = Haproxy::start(a.http, b.http);
    let cookie = format!("Cookie: {}\r\n", a.admin);
    let answering = || front_leader(&front);
    let calls_status = || common::http_request(front.addr, "GET", "/api/calls", &cookie, None).0;

    wait_until("the front sends to a", &a, || answering() == "a");
    assert_eq!(calls_status(), 200, "front log:\n{}", front.log());

    a.kill9();
    wait_until("the front sends to b", &b, || answering() == "b");
    assert_eq!(
        calls_status(),
        200,
        "the session made on a holds on b; front log:\n{}",
        front.log()
    );
    // Each answer through the front now comes from b.
    for _ in 0..5 {
        assert_eq!(answering(), "b");
    }
}

/// The leader killed with ten callers waiting and two bridged to agents:
/// the new leader closes all twelve (`interrupted`, node failure), puts
/// them first on the call-back list, and each recording is on disk,
/// playable, with the checksum its record names.
#[test]
fn a_leader_killed_mid_calls_leaves_every_call_closed_and_first_to_call_back() {
    let Some(db) = common::postgres_db("cut") else {
        return;
    };
    let (mut a, b) = pair_with_agents(&db);
    let ct01 = baresip::ct01(a.sip);
    let ct02 = Baresip::start(
        Phone {
            user: "ct-02",
            password: "contoh-sandi-ct-02",
            auto_answer: true,
            tone_hz: 700.0,
        },
        a.sip,
    );
    for (agent, phone) in [("ct-01", &ct01), ("ct-02", &ct02)] {
        wait_registered(&a, agent, phone);
        a.set_ready(agent);
    }
    let _callers: Vec<_> = (0..12)
        .map(|_| background_call(a.sip, "112", 60_000, Duration::from_secs(90)))
        .collect();
    // Frames a recording's header says are on disk (0: none readable yet).
    let frames = |c: &serde_json::Value| {
        c["recording_path"]
            .as_str()
            .and_then(|p| hound::WavReader::open(p).ok())
            .map_or(0, |r| r.duration())
    };
    wait_until(
        "12 calls on record, 2 bridged, a second of each on disk",
        &a,
        || {
            let open = open_calls(&a);
            open.len() == 12
                && open
                    .iter()
                    .filter(|c| c["agent_answered_at"].is_i64())
                    .count()
                    == 2
                && open.iter().all(|c| frames(c) >= 8_000)
        },
    );
    let cut: std::collections::BTreeSet<String> = open_calls(&a)
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();

    a.kill9();
    wait_until("b takes over", &b, || role(&b) == "leader");
    wait_until("all twelve closed, their recordings finished", &b, || {
        cut.iter().all(|id| {
            let (_, call) = b.get(&format!("/api/calls/{id}"));
            call["status"] == "interrupted" && !call["recording_sha256"].is_null()
        })
    });
    let (_, list) = b.get("/api/abandoned");
    let first: std::collections::BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .take(12)
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        first, cut,
        "the cut calls first on the call-back list: {list}"
    );
    for id in &cut {
        let (_, call) = b.get(&format!("/api/calls/{id}"));
        assert_eq!(call["end_cause"], "node_failure", "{call}");
        let path = call["recording_path"].as_str().expect("a recording");
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            call["recording_sha256"].as_str(),
            Some(common::sha256_hex(&bytes).as_str()),
            "{call}"
        );
        assert!(
            frames(&call) >= 8_000,
            "the second on disk still plays: {call}"
        );
    }
}

/// A call-taker on the browser phone, reaching the panel through HAProxy,
/// keeps working when the leader dies, without touching the tab: its
/// live socket reconnects through the front to the new leader, the phone
/// comes back on there by itself, the agent is still ready, and the next
/// 112 call rings in the same tab, is answered there, and the browser's
/// voice is in the recording's agent channel.
#[test]
fn the_browser_phone_follows_the_leader_through_haproxy() {
    let Some(db) = common::postgres_db("browser") else {
        return;
    };
    let (mut a, b) = pair_with_agents(&db);
    let front = Haproxy::start(a.http, b.http);
    wait_until("the front sends to a", &a, || front_leader(&front) == "a");
    a.add_user("siti", "call-taker", &["--agent", "ct-01"]);
    let mic = tempfile::tempdir().unwrap();
    let tab = browser_with_mic("cluster_browser", &microphone_wav(mic.path(), BROWSER_HZ));
    tab.login(
        &format!("http://{}", front.addr),
        "siti",
        common::TEST_PASSWORD,
        "/calltaker",
    );
    tab.click("#phone-on");
    tab.wait_for(
        "phone on",
        "return document.querySelector('#phone-card').dataset.on === 'on'",
        Duration::from_secs(20),
    );
    a.wait_agent("ct-01", "reachable by browser on a", |x| {
        x["browser"] == true && x["registered"] == true
    });
    tab.click("#btn-ready");
    a.wait_agent("ct-01", "ready on a", |x| x["state"] == "ready");
    wait_until("siti's desk on record", &a, || {
        on_record(&db, "SELECT state FROM agent_desks WHERE agent = 'ct-01'") == "ready"
    });

    a.kill9();
    wait_until("b leads", &b, || role(&b) == "leader");
    wait_until(
        "the tab's phone on b, siti still ready, no click in the tab",
        &b,
        || {
            let x = b.agent("ct-01");
            x["browser"] == true && x["registered"] == true && x["state"] == "ready"
        },
    );
    tab.screenshot("1-phone-back-on-the-new-leader");

    let caller = background_call(b.sip, "112", 10_000, Duration::from_secs(60));
    tab.wait_for(
        "the call rings in the same tab",
        "return !document.querySelector('#phone-ringing').hidden",
        Duration::from_secs(30),
    );
    tab.click("#phone-answer");
    tab.wait_for(
        "the browser call is connected",
        "return document.querySelector('#phone-card').dataset.call === 'talking'",
        Duration::from_secs(20),
    );
    let open = open_calls(&b);
    assert_eq!(open.len(), 1, "{open:?}");
    let id = open[0]["id"].as_str().unwrap().to_string();
    assert_eq!(caller.join().unwrap(), Some(0), "SIPp's call went through");
    let mut call = serde_json::Value::Null;
    wait_until("the call closed and its recording summed", &b, || {
        call = b.get(&format!("/api/calls/{id}")).1;
        !call["recording_sha256"].is_null()
    });
    assert_eq!(call["agent_id"], "ct-01", "{call}");
    assert_eq!(call["end_cause"], "caller_bye", "{call}");
    let (left, right) = read_stereo(std::path::Path::new(
        call["recording_path"].as_str().unwrap(),
    ));
    let windows = |s: &[i16], hz: f64| {
        s.chunks_exact(800)
            .filter(|w| tone_ratio(w, hz) > 0.7)
            .count()
    };
    let seen = format!(
        "100 ms windows: caller's 1 kHz left {}, browser's {BROWSER_HZ} Hz right {} of {}",
        windows(&left, 1000.0),
        windows(&right, BROWSER_HZ),
        right.len() / 800
    );
    assert!(windows(&left, 1000.0) >= 30, "{seen}");
    assert!(windows(&right, BROWSER_HZ) >= 20, "{seen}");
}

//! A quick run of every benchmark scenario (`scripts/bench/bench.py
//! smoke`: five calls each, a few seconds) against the binary under test,
//! so the benchmarks keep working. Numbers are not judged here (that is
//! what the benchmarks are for); what must hold at any speed is: every
//! call answered, reached an agent where there are agents, recorded and
//! verified, RTP relayed both ways without loss, prompts streamed to every
//! waiting caller. A stall of the whole machine (this VM's neighbours, a
//! writeback burst) can delay one moment's packets whatever siaga does;
//! CI saw one such moment once (two callers' packets, one 100 ms window,
//! a debug build in a slow hour), so one window of gaps is allowed and a
//! second is a failure: prompts that stop, or a pacer that drifts, gap in
//! many windows.

use serde_json::Value;
use std::process::Command;

#[test]
fn every_benchmark_scenario_runs_and_loses_nothing() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{repo}/scripts/bench/bench.py"))
        .arg("smoke")
        .env("SIAGA_BIN", env!("CARGO_BIN_EXE_siaga"))
        .output()
        .expect("run scripts/bench/bench.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench.py smoke failed:\n{stdout}\n{stderr}"
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(results.len(), 4, "{stdout}");

    let rate = &results[0]["rates"][0];
    assert_eq!(rate["calls"], 10, "{rate}");
    assert_eq!(rate["sipp_ok"], 10, "{rate}");
    assert_eq!(rate["reached_agent"], 10, "{rate}");
    assert_eq!(rate["recordings_verified"], 10, "{rate}");
    assert_eq!(rate["failed_pct"], 0.0, "{rate}");
    assert!(rate["trying_ms_p99"].as_f64().unwrap() >= 0.0, "{rate}");

    let conc = &results[1];
    assert_eq!(conc["reached_agent"], 5, "{conc}");
    assert_eq!(conc["recordings_verified"], 5, "{conc}");
    assert_eq!(conc["rtp"]["calls_measured"], 5, "{conc}");
    assert!(
        conc["rtp"]["packets_returned"].as_u64().unwrap() > 5 * 50,
        "{conc}"
    );
    assert_eq!(conc["rtp"]["packets_lost"], 0, "{conc}");

    let surge = &results[2];
    // Five short calls flood in while they wait: each answered, recorded
    // and gone again before the end.
    assert_eq!(surge["waiting_at_end"], 5, "{surge}");
    assert_eq!(
        (&surge["flood"]["sipp_ok"], &surge["flood"]["sipp_failed"]),
        (&5.into(), &0.into()),
        "{surge}"
    );
    assert_eq!(surge["records"], 10, "{surge}");
    assert_eq!(surge["recordings_verified"], 10, "{surge}");
    assert!(
        // Five callers, three seconds each at least, 50 packets a second.
        surge["prompts"]["packets"].as_u64().unwrap() >= 5 * 3 * 50,
        "{surge}"
    );
    assert!(
        surge["prompts"]["gap_windows_100ms"].as_u64().unwrap() <= 1,
        "{surge}"
    );

    // /healthz answered while each ran and reported how far behind the
    // recorder wrote and how long since its last sync, and nothing was
    // left out. How long those were is the benchmark's to report, not a
    // test's to bound: a sync of the recordings' filesystem also flushes
    // whatever else writes there (a build beside the suite made one take
    // 2.8 s).
    for r in [rate, conc, surge] {
        assert!(r["recorder_behind_ms_max"].as_u64().is_some(), "{r}");
        assert!(r["recorder_unsynced_ms_max"].as_u64().is_some(), "{r}");
        assert_eq!(r["recordings_lost_ms"], 0, "{r}");
    }

    // The floor (no siaga): five calls' packets through a do-nothing
    // relay, each one forwarded twice and back at the probe.
    let floor = &results[3]["runs"][0];
    assert_eq!(floor["calls"], 5, "{floor}");
    let sent = floor["probe_sent"].as_u64().unwrap();
    assert!(sent >= 5 * 50, "{floor}");
    assert_eq!(floor["relay_forwarded"].as_u64(), Some(2 * sent), "{floor}");
    assert_eq!(floor["echoed"].as_u64(), Some(sent), "{floor}");
    assert_eq!(floor["lost"], 0, "{floor}");

    // Every run says what state the machine was in before it.
    for m in [
        &rate["machine"],
        &conc["machine"],
        &surge["machine"],
        &floor["machine"],
    ] {
        assert!(m["spin_ms"].as_f64().unwrap() > 0.0, "{m}");
        assert!(m["fdatasync_ms_p50"].as_f64().unwrap() >= 0.0, "{m}");
        let storage = m["storage"].as_str().unwrap_or_default();
        assert!(
            [
                "loop, direct I/O",
                "loop, buffered",
                "loop",
                "tmpfs",
                "folder"
            ]
            .contains(&storage),
            "{m}"
        );
    }
}

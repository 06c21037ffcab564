//! The callers' side of RTP for siaga's concurrency benchmark.
//!
//! Binds `count` UDP ports on loopback (`base`, `base + 2`, ...), one per
//! call; SIPp's callers put these ports in their SDP. A port learns where
//! to send from the SDP answer (SIPp logs `<our port> <answer's port>` to
//! the file `--remotes` names; the first packet from siaga does too; a
//! remote port 0 there means the call ended), then sends 50 packets a
//! second there: RTP, PCMA, with a magic, a sequence number and
//! the send time in the payload. siaga relays them to the agent (SIPp,
//! `-rtp_echo`), which sends them back, and siaga relays them back here:
//! each packet that returns gives one round trip through the relay, twice.
//! With `--target A,B,..`, port i sends to target i % n from the start
//! instead (the baseline: straight to the echoes, no siaga). Ports send in
//! turn across each 20 ms (port i at i % 20 ms), as independent phones
//! would, not all in one burst.
//!
//! Counted per port from its first returned packet to `tail` before the
//! end: sent, returned, round-trip times. The other packets (siaga's
//! prompts, while a caller waits) are timed too: how far each arrives from
//! 20 ms after the one before (jitter) and how many gaps of more than
//! 60 ms there are. Printed as one JSON object.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const MAGIC: &[u8; 8] = b"SIAGAPRB";
const PAYLOAD: usize = 160;
const TAIL: Duration = Duration::from_millis(500);

struct Port {
    socket: UdpSocket,
    remote: Mutex<Option<SocketAddr>>,
    /// Next sequence number to send.
    next_seq: AtomicU32,
    /// Its call ended: send no more.
    ended: AtomicBool,
    stats: Mutex<PortStats>,
}

#[derive(Default)]
struct PortStats {
    first_returned: Option<u32>,
    returned: Vec<bool>,
    rtt_us: Vec<u32>,
    other: u64,
    /// Sequence numbers sent before `tail` ended the counting.
    counted_until: u32,
    last_other_ns: Option<u64>,
    /// |arrival gap - 20 ms| of consecutive prompt packets, in µs.
    jitter_us: Vec<u32>,
    gaps: u64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base: u16 = arg(&args, "--base").expect("--base PORT").parse().unwrap();
    let count: u16 = arg(&args, "--count").expect("--count N").parse().unwrap();
    let seconds: f64 = arg(&args, "--seconds")
        .expect("--seconds S")
        .parse()
        .unwrap();
    let targets: Vec<SocketAddr> = arg(&args, "--target")
        .map(|t| t.split(',').map(|a| a.parse().unwrap()).collect())
        .unwrap_or_default();
    let remotes = arg(&args, "--remotes");
    let start = Instant::now();
    let mut ports = Vec::new();
    for i in 0..count {
        let socket = UdpSocket::bind(("127.0.0.1", base + 2 * i))
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e}", base + 2 * i));
        ports.push(Arc::new(Port {
            socket,
            remote: Mutex::new(targets.get(usize::from(i) % targets.len().max(1)).copied()),
            next_seq: AtomicU32::new(0),
            ended: AtomicBool::new(false),
            stats: Mutex::new(PortStats::default()),
        }));
    }
    println!("READY");
    if let Some(path) = remotes {
        let ports = ports.clone();
        tokio::spawn(async move { follow_answers(path, base, ports).await });
    }
    for p in &ports {
        let p = p.clone();
        tokio::spawn(async move { receive(p, start).await });
    }
    let end = start + Duration::from_secs_f64(seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut buf = [0u8; 12 + PAYLOAD];
    let mut slot = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let counting = Instant::now() + TAIL < end;
        slot = (slot + 1) % 20;
        for (i, p) in ports.iter().enumerate().skip(slot).step_by(20) {
            let Some(to) = *p.remote.lock().unwrap() else {
                continue;
            };
            let seq = p.next_seq.fetch_add(1, Ordering::Relaxed);
            packet(&mut buf, i as u32, seq, start.elapsed().as_nanos() as u64);
            let _ = p.socket.try_send_to(&buf, to);
            if counting {
                p.stats.lock().unwrap().counted_until = seq + 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    report(&ports, start.elapsed());
}

/// Reads `<our port> <remote port>` lines as SIPp appends them.
async fn follow_answers(path: String, base: u16, ports: Vec<Arc<Port>>) {
    let mut seen = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(new) = text.get(seen..) else {
            continue;
        };
        let complete = new.rfind('\n').map_or(0, |i| i + 1);
        for line in new[..complete].lines() {
            let mut words = line.split_whitespace();
            let (Some(Ok(ours)), Some(Ok(theirs))) = (
                words.next().map(str::parse::<u16>),
                words.next().map(str::parse::<u16>),
            ) else {
                continue;
            };
            let Some(p) = ours
                .checked_sub(base)
                .and_then(|d| ports.get(usize::from(d / 2)))
            else {
                continue;
            };
            let mut remote = p.remote.lock().unwrap();
            if theirs == 0 {
                // Ended: what was sent in the last half second may have met
                // the BYE, so it is not counted.
                *remote = None;
                p.ended.store(true, Ordering::Relaxed);
                let mut st = p.stats.lock().unwrap();
                let sent = p.next_seq.load(Ordering::Relaxed);
                st.counted_until = st.counted_until.min(sent.saturating_sub(25));
            } else if remote.is_none() && !p.ended.load(Ordering::Relaxed) {
                *remote = Some(SocketAddr::from(([127, 0, 0, 1], theirs)));
            }
        }
        seen += complete;
    }
}

fn packet(buf: &mut [u8; 12 + PAYLOAD], ssrc: u32, seq: u32, sent_ns: u64) {
    buf[0] = 0x80;
    buf[1] = 8; // PCMA
    buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&(seq.wrapping_mul(160)).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let p = &mut buf[12..];
    p.fill(0xD5);
    p[..8].copy_from_slice(MAGIC);
    p[8..12].copy_from_slice(&seq.to_be_bytes());
    p[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

async fn receive(p: Arc<Port>, start: Instant) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = p.socket.recv_from(&mut buf).await else {
            continue;
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        let payload = buf.get(12..n).unwrap_or_default();
        let mut st = p.stats.lock().unwrap();
        if payload.len() >= 20 && &payload[..8] == MAGIC {
            let seq = u32::from_be_bytes(payload[8..12].try_into().unwrap());
            let sent = u64::from_be_bytes(payload[12..20].try_into().unwrap());
            let first = *st.first_returned.get_or_insert(seq);
            if seq >= first {
                let i = (seq - first) as usize;
                if st.returned.len() <= i {
                    st.returned.resize(i + 1, false);
                }
                if !st.returned[i] {
                    st.returned[i] = true;
                    st.rtt_us.push((now_ns.saturating_sub(sent) / 1000) as u32);
                }
            }
        } else {
            st.other += 1;
            if let Some(last) = st.last_other_ns {
                let gap = now_ns.saturating_sub(last);
                st.jitter_us.push((gap.abs_diff(20_000_000) / 1000) as u32);
                if gap > 60_000_000 {
                    st.gaps += 1;
                }
            }
            st.last_other_ns = Some(now_ns);
            drop(st);
            let mut remote = p.remote.lock().unwrap();
            if remote.is_none() && !p.ended.load(Ordering::Relaxed) {
                *remote = Some(from);
            }
        }
    }
}

fn report(ports: &[Arc<Port>], elapsed: Duration) {
    let (mut measured, mut expected, mut returned, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut lossy = 0u64;
    let mut rtt: Vec<u32> = Vec::new();
    let (mut jitter, mut gaps): (Vec<u32>, u64) = (Vec::new(), 0);
    for p in ports {
        let st = p.stats.lock().unwrap();
        other += st.other;
        jitter.extend_from_slice(&st.jitter_us);
        gaps += st.gaps;
        let Some(first) = st.first_returned else {
            continue;
        };
        measured += 1;
        let want = st.counted_until.saturating_sub(first) as usize;
        let got = st.returned.iter().take(want).filter(|r| **r).count();
        expected += want as u64;
        returned += got as u64;
        if got < want {
            lossy += 1;
        }
        rtt.extend_from_slice(&st.rtt_us);
    }
    rtt.sort_unstable();
    jitter.sort_unstable();
    let q = |v: &[u32], f: f64| -> u32 {
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * f) as usize]
        }
    };
    println!(
        "{{\"ports\":{},\"calls_measured\":{measured},\"calls_with_loss\":{lossy},\"packets_expected\":{expected},\"packets_returned\":{returned},\"packets_lost\":{},\"rtt_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"prompts\":{{\"packets\":{other},\"jitter_us_p50\":{},\"jitter_us_p99\":{},\"jitter_us_max\":{},\"gaps_over_60ms\":{gaps}}},\"seconds\":{:.1}}}",
        ports.len(),
        expected.saturating_sub(returned),
        q(&rtt, 0.5),
        q(&rtt, 0.99),
        q(&rtt, 0.999),
        rtt.last().copied().unwrap_or(0),
        q(&jitter, 0.5),
        q(&jitter, 0.99),
        jitter.last().copied().unwrap_or(0),
        elapsed.as_secs_f64()
    );
}

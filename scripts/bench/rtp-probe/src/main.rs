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
//! With `--until-measured`, `--seconds` is a least: the probe goes on
//! (to `--seconds` plus a minute at most) until every port has had a
//! packet back and a second's measuring, so a call set up late on a busy
//! machine is measured like the others instead of missed by a probe that
//! stopped on the clock.
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
//!
//! Arrivals are the kernel's receive timestamps (`SO_TIMESTAMPNS`), taken
//! when a packet reaches the port's queue; on loopback that is inside
//! siaga's `sendto`. So the probe's own scheduling (it shares the two
//! cores with siaga and SIPp) does not count as siaga's jitter or
//! latency. One thread: with two, the probe cost the machine about twice
//! the CPU (wake-ups across threads), all of it taken from siaga. And
//! since the stamps say when a packet came, the probe need not wake when
//! it comes: each port's queue is drained in the port's own 1 ms slot,
//! just before it sends, with no readiness events and no task per port.
//! A task woken per packet made the probe itself the bottleneck at 2,000
//! calls: 563,000 to 1.32 million packets dropped at its own sockets in
//! three 30 s surge runs, which it then counted as siaga's gaps.

use std::net::SocketAddr;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"SIAGAPRB";
const PAYLOAD: usize = 160;
const TAIL: Duration = Duration::from_millis(500);
/// With `--until-measured`: how long the last port to have a packet back
/// is measured at least, and how far past `--seconds` the probe may go.
const LEAST_MEASURED: Duration = Duration::from_secs(1);
const AT_MOST_MORE: Duration = Duration::from_secs(60);
/// Most datagrams one slot reads from a port; the rest wait 20 ms.
const MAX_READ: usize = 64;

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
    /// The 100 ms windows (of the arrival clock) in which gaps ended.
    gap_windows: Vec<u64>,
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
    let start_ns = wall_ns();
    let mut ports = Vec::new();
    for i in 0..count {
        let socket = UdpSocket::bind(("127.0.0.1", base + 2 * i))
            .unwrap_or_else(|e| panic!("bind {}: {e}", base + 2 * i));
        socket.set_nonblocking(true).expect("non-blocking socket");
        stamp_arrivals(socket.as_raw_fd()).expect("SO_TIMESTAMPNS");
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
    let until_measured = args.iter().any(|a| a == "--until-measured");
    let mut end = start + Duration::from_secs_f64(seconds);
    let bound = end + AT_MOST_MORE;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut buf = [0u8; 12 + PAYLOAD];
    let mut inbound = [0u8; 2048];
    let mut slot = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let now = Instant::now();
        if until_measured
            && now + LEAST_MEASURED + TAIL > end
            && ports
                .iter()
                .any(|p| p.stats.lock().unwrap().first_returned.is_none())
        {
            end = (now + LEAST_MEASURED + TAIL).min(bound);
        }
        let counting = now + TAIL < end;
        slot = (slot + 1) % 20;
        for (i, p) in ports.iter().enumerate().skip(slot).step_by(20) {
            drain(p, &mut inbound);
            let Some(to) = *p.remote.lock().unwrap() else {
                continue;
            };
            let seq = p.next_seq.fetch_add(1, Ordering::Relaxed);
            packet(&mut buf, i as u32, seq, wall_ns());
            let _ = p.socket.send_to(&buf, to);
            if counting {
                p.stats.lock().unwrap().counted_until = seq + 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for p in &ports {
        drain(p, &mut inbound);
    }
    report(&ports, start.elapsed(), start_ns);
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

/// Now, in the clock of the kernel's receive timestamps.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Asks the kernel to stamp each datagram's arrival (`SO_TIMESTAMPNS`).
fn stamp_arrivals(fd: RawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One datagram, its IPv4 source, and when the kernel queued it (ns since
/// the epoch; now, if it gave no stamp).
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    // SAFETY: every pointer handed to recvmsg points into a live local of
    // the length given; the control messages are read only within
    // `msg_controllen` through the CMSG macros.
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut at = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let addr = SocketAddr::from((
            u32::from_be(from.sin_addr.s_addr).to_be_bytes(),
            u16::from_be(from.sin_port),
        ));
        Ok((n as usize, addr, at.unwrap_or_else(wall_ns)))
    }
}

/// Reads what queued on a port since its last slot.
fn drain(p: &Port, buf: &mut [u8]) {
    let fd = p.socket.as_raw_fd();
    for _ in 0..MAX_READ {
        match recv_stamped(fd, buf) {
            Ok((n, from, at_ns)) => take(p, &buf[..n], from, at_ns),
            Err(_) => return,
        }
    }
}

/// One datagram that reached a port at `now_ns`: a returned probe packet
/// (a round trip) or one of siaga's own (prompts: pacing).
fn take(p: &Port, datagram: &[u8], from: SocketAddr, now_ns: u64) {
    let payload = datagram.get(12..).unwrap_or_default();
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
                st.gap_windows.push(now_ns / 100_000_000);
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

fn report(ports: &[Arc<Port>], elapsed: Duration, start_ns: u64) {
    let (mut measured, mut expected, mut returned, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut lossy = 0u64;
    let mut rtt: Vec<u32> = Vec::new();
    let (mut jitter, mut gaps): (Vec<u32>, u64) = (Vec::new(), 0);
    // Gaps in many calls in the same moments are a stall of the sender as a
    // whole; spread out, each call's own.
    let mut windows: std::collections::HashMap<u64, u64> = Default::default();
    for p in ports {
        let st = p.stats.lock().unwrap();
        other += st.other;
        jitter.extend_from_slice(&st.jitter_us);
        gaps += st.gaps;
        for w in &st.gap_windows {
            *windows.entry(*w).or_default() += 1;
        }
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
    // When the gaps fell, in seconds since the probe started, and how many
    // in each 100 ms window: to set beside the run's phases.
    let mut when: Vec<(u64, u64)> = windows.iter().map(|(w, n)| (*w, *n)).collect();
    when.sort_unstable();
    let when = when
        .iter()
        .map(|(w, n)| {
            let at = (w * 100_000_000).saturating_sub(start_ns) as f64 / 1e9;
            format!("[{at:.1},{n}]")
        })
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"ports\":{},\"calls_measured\":{measured},\"calls_with_loss\":{lossy},\"packets_expected\":{expected},\"packets_returned\":{returned},\"packets_lost\":{},\"rtt_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"prompts\":{{\"packets\":{other},\"jitter_us_p50\":{},\"jitter_us_p99\":{},\"jitter_us_max\":{},\"gaps_over_60ms\":{gaps},\"gap_windows_100ms\":{},\"gaps_in_worst_window\":{},\"gap_windows_at\":[{when}]}},\"seconds\":{:.1}}}",
        ports.len(),
        expected.saturating_sub(returned),
        q(&rtt, 0.5),
        q(&rtt, 0.99),
        q(&rtt, 0.999),
        rtt.last().copied().unwrap_or(0),
        q(&jitter, 0.5),
        q(&jitter, 0.99),
        jitter.last().copied().unwrap_or(0),
        windows.len(),
        windows.values().max().copied().unwrap_or(0),
        elapsed.as_secs_f64()
    );
}

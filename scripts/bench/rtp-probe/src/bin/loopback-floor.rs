//! What N bridged calls' packets cost this machine's kernel when nothing
//! but the packets is done: the floor under `bench.py concurrency`.
//!
//! One process, three threads, the same packet pattern as the bench: a
//! "probe" sends one 172-byte packet per call every 20 ms to a "relay",
//! which forwards it from the call's first socket out of its second to an
//! "echo", which sends it back, and the relay forwards that back to the
//! probe. Four loopback deliveries per packet, as with siaga between the
//! rtp-probe and SIPp's echo. No parsing, no recording, no allocation; each
//! socket connected, so each send is the cheapest the kernel has. With
//! `--nap-us`, a thread that found work sleeps that long before it looks
//! again, so one wake-up serves many sockets (as siaga's relay does).
//!
//! It prints one JSON line: each thread's CPU (user and system, from
//! `RUSAGE_THREAD`), and the packets the probe sent and got back. (The
//! machine's busy share from /proc/stat was tried too: on this VM it was
//! at times half the threads' own sum, so it is not reported.)
//!
//! Usage: loopback-floor --calls N [--seconds S] [--nap-us U]

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const PACKET: usize = 172;
const TICK: Duration = Duration::from_millis(20);

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

/// 127.0.0.1:`port`, as the socket calls take it.
fn loopback(port: u16) -> libc::sockaddr_in {
    let mut a: libc::sockaddr_in = unsafe { mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    a.sin_port = port.to_be();
    a
}

const ADDR_LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// A non-blocking UDP socket on 127.0.0.1, an ephemeral port.
fn udp() -> io::Result<(RawFd, u16)> {
    unsafe {
        let fd = check(
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            ),
            "socket",
        )?;
        let mut a = loopback(0);
        check(
            libc::bind(fd, &a as *const _ as *const libc::sockaddr, ADDR_LEN),
            "bind",
        )?;
        let mut len = ADDR_LEN;
        check(
            libc::getsockname(fd, &mut a as *mut _ as *mut libc::sockaddr, &mut len),
            "getsockname",
        )?;
        Ok((fd, u16::from_be(a.sin_port)))
    }
}

fn connect(fd: RawFd, port: u16) -> io::Result<()> {
    let a = loopback(port);
    unsafe {
        check(
            libc::connect(fd, &a as *const _ as *const libc::sockaddr, ADDR_LEN),
            "connect",
        )?;
    }
    Ok(())
}

/// An epoll set over `fds`, each registered with its index as the token.
fn epoll(fds: &[RawFd]) -> io::Result<RawFd> {
    unsafe {
        let ep = check(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1")?;
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            check(
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
                "epoll_ctl",
            )?;
        }
        Ok(ep)
    }
}

/// A thread's own CPU so far: (user, system) in seconds.
fn thread_cpu() -> (f64, f64) {
    unsafe {
        let mut u: libc::rusage = mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (s(u.ru_utime), s(u.ru_stime))
    }
}

struct Counts {
    cpu: (f64, f64),
    sent: u64,
    received: u64,
}

/// Reads whatever is ready on the sockets `ep` reports, `forward`ing each
/// packet (index of the socket it came on, length) until `stop`.
fn serve(
    ep: RawFd,
    fds: &[RawFd],
    nap: Duration,
    stop: &AtomicBool,
    mut forward: impl FnMut(usize, &[u8]) -> bool,
) -> Counts {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 2048];
    let (mut sent, mut received) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if n <= 0 {
            continue;
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            loop {
                let got = unsafe {
                    libc::recv(fds[i], buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
                };
                if got <= 0 {
                    break;
                }
                received += 1;
                if forward(i, &buf[..got as usize]) {
                    sent += 1;
                }
            }
        }
        if !nap.is_zero() {
            thread::sleep(nap);
        }
    }
    Counts {
        cpu: thread_cpu(),
        sent,
        received,
    }
}

fn send(fd: RawFd, packet: &[u8]) -> bool {
    unsafe {
        libc::send(fd, packet.as_ptr() as *const libc::c_void, packet.len(), 0)
            == packet.len() as isize
    }
}

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let calls = arg(&args, "--calls", 1000.0) as usize;
    let seconds = arg(&args, "--seconds", 20.0);
    let nap = Duration::from_micros(arg(&args, "--nap-us", 0.0) as u64);

    // Per call: probe <-> relay leg a, relay leg b <-> echo.
    let (mut probe, mut leg_a, mut leg_b, mut echo) = (vec![], vec![], vec![], vec![]);
    for _ in 0..calls {
        let (p, pp) = udp()?;
        let (a, ap) = udp()?;
        let (b, bp) = udp()?;
        let (e, ep) = udp()?;
        connect(p, ap)?;
        connect(a, pp)?;
        connect(b, ep)?;
        connect(e, bp)?;
        probe.push(p);
        leg_a.push(a);
        leg_b.push(b);
        echo.push(e);
    }
    let stop = Arc::new(AtomicBool::new(false));

    let relay = {
        let stop = stop.clone();
        let fds: Vec<RawFd> = leg_a.iter().chain(leg_b.iter()).copied().collect();
        thread::Builder::new().name("relay".into()).spawn(move || {
            let ep = epoll(&fds).expect("epoll");
            let n = fds.len() / 2;
            serve(ep, &fds, nap, &stop, |i, p| send(fds[(i + n) % (2 * n)], p))
        })?
    };
    let echoer = {
        let stop = stop.clone();
        let fds = echo.clone();
        thread::Builder::new().name("echo".into()).spawn(move || {
            let ep = epoll(&fds).expect("epoll");
            serve(ep, &fds, nap, &stop, |i, p| send(fds[i], p))
        })?
    };
    // The probe's sends are paced from a thread of their own; its
    // receiving thread counts what comes back.
    let receiver = {
        let stop = stop.clone();
        let fds = probe.clone();
        thread::Builder::new()
            .name("probe-rx".into())
            .spawn(move || {
                let ep = epoll(&fds).expect("epoll");
                serve(ep, &fds, nap, &stop, |_, _| false)
            })?
    };

    thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    let packet = [0x80u8; PACKET];
    let mut probe_sent = 0u64;
    let mut next = began;
    // Each tick's sends are spread over the tick in 20 slices, as a
    // thousand phones' 20 ms clocks would be.
    let slices = 20usize;
    let per_slice = calls.div_ceil(slices);
    while began.elapsed().as_secs_f64() < seconds {
        for s in 0..slices {
            for &fd in probe.iter().skip(s * per_slice).take(per_slice) {
                if send(fd, &packet) {
                    probe_sent += 1;
                }
            }
            next += TICK / slices as u32;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            }
        }
    }
    let span = began.elapsed().as_secs_f64();
    let probe_tx = thread_cpu();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let relay = relay.join().expect("relay");
    let echoer = echoer.join().expect("echo");
    let receiver = receiver.join().expect("probe-rx");

    let pct = |(u, s): (f64, f64)| {
        format!(
            "{{\"user_pct\": {:.1}, \"sys_pct\": {:.1}}}",
            100.0 * u / span,
            100.0 * s / span
        )
    };
    println!(
        "{{\"calls\": {calls}, \"seconds\": {span:.1}, \"nap_us\": {}, \"relay_packets_s\": {:.0}, \
         \"relay\": {}, \"echo\": {}, \"probe_tx\": {}, \"probe_rx\": {}, \
         \"probe_sent\": {probe_sent}, \"relay_forwarded\": {}, \
         \"echoed\": {}, \"probe_got_back\": {}, \"lost\": {}}}",
        nap.as_micros(),
        relay.sent as f64 / span,
        pct(relay.cpu),
        pct(echoer.cpu),
        pct(probe_tx),
        pct(receiver.cpu),
        relay.sent,
        echoer.sent,
        receiver.received,
        probe_sent.saturating_sub(receiver.received),
    );
    Ok(())
}

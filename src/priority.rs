//! Thread priorities. Work with a deadline and no queue to catch up from
//! runs favoured (a lower nice value), so it runs when it wakes instead of
//! waiting behind work that does have a queue (the recorder, the store,
//! the panel). A favoured thread still takes only what it needs; the rest
//! keeps the remainder. Only work whose amount the calls bound is
//! favoured: the media threads'. SIP's is not (see below).
//!
//! Raising a priority needs root or `CAP_SYS_NICE`. Without it siaga says
//! so once and runs every thread at the normal priority.

use tracing::warn;

/// The media threads: a prompt packet is due every 20 ms for each caller,
/// and a late one is a gap the caller hears.
pub const MEDIA: libc::c_int = -10;

// SIP's threads are not favoured. At nice -10 they gave 100 Trying p99
// of 2.7–3.4 ms at 500 calls/s (31.7–69.4 ms at the normal priority, on
// the same evening). But SIP's work has no bound: a flood of 700 short
// calls a second onto 2,000 waiting callers, with SIP at nice -10, left
// the recorder 6.7 s behind in one of three runs (3,436 s of audio left
// out of recordings at its bound), made gaps for the waiting callers
// (131 and 2,282 in two runs) and slowed answers (200 OK p50 up to
// 1.2 s), while at the normal priority three runs lost no audio, had 0,
// 35 and 0 gaps and answered at p50 28–264 ms. A late 100 Trying costs
// a retransmission after 500 ms; lost audio and prompt gaps cost more.
// See BENCHMARKS.md, "A flood onto a surge".

/// Gives the calling thread the nice value `nice`.
pub fn favour_this_thread(nice: libc::c_int) {
    static TOLD: std::sync::Once = std::sync::Once::new();
    // SAFETY: gettid and setpriority take and return plain integers; on
    // Linux, PRIO_PROCESS with a thread id names that thread alone.
    let failed =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) != 0 };
    if failed {
        let e = std::io::Error::last_os_error();
        TOLD.call_once(|| {
            warn!(error = %e, "media threads run at normal priority; grant CAP_SYS_NICE for steadier prompts under load")
        });
    }
}

/// The nice value of each of this process's threads whose name starts
/// with `prefix`.
#[cfg(test)]
pub fn nices_of(prefix: &str) -> Vec<i32> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis; nice is the
        // 19th field of the line, the 17th of these.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        nices.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
    }
    nices
}

/// What `nice` comes to here: itself where the test runs as root; where
/// it may not raise a priority, what its threads inherit (`own_nice`).
#[cfg(test)]
pub fn expected(nice: libc::c_int) -> i32 {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        nice
    } else {
        own_nice()
    }
}

/// The calling thread's nice value: what threads it starts inherit, and
/// not 0 when the tests run under `nice`.
#[cfg(test)]
pub fn own_nice() -> i32 {
    // SAFETY: gettid and getpriority take and return plain integers.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

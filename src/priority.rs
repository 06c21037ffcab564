//! Thread priorities. Work with a deadline and no queue to catch up from
//! runs favoured (a lower nice value), so it runs when it wakes instead of
//! waiting behind work that does have a queue (the recorder, the store,
//! the panel). A favoured thread still takes only what it needs; the rest
//! keeps the remainder.
//!
//! Raising a priority needs root or `CAP_SYS_NICE`. Without it siaga says
//! so once and runs every thread at the normal priority.

use tracing::warn;

/// The media threads: a prompt packet is due every 20 ms for each caller,
/// and a late one is a gap the caller hears.
pub const MEDIA: libc::c_int = -10;

/// SIP's reader and runtime threads: a caller's phone (and the trunk)
/// waits for 100 Trying, and retransmits the INVITE when it comes late,
/// which adds load just when there is most of it. The same as the media
/// threads: neither can wait for the other, and every INVITE is an
/// emergency call that will need its media too, so under a flood the two
/// share the cores evenly while the recorder, the store and the panel
/// wait. (At nice -5, 100 Trying p99 at 500 calls/s was 2.9–14.3 ms; at
/// -10, 2.7–3.4 ms; prompts for 2,000 waiting callers had no gap with
/// either, even with INVITEs arriving at 200/s; see BENCHMARKS.md.)
pub const SIP: libc::c_int = -10;

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
            warn!(error = %e, "media and SIP threads run at normal priority; grant CAP_SYS_NICE for steadier prompts and quicker answers under load")
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

/// What `nice` comes to here: itself where the test runs as root, the
/// normal priority elsewhere.
#[cfg(test)]
pub fn expected(nice: libc::c_int) -> i32 {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        nice
    } else {
        0
    }
}

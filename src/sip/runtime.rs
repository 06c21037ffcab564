//! The SIP runtime: the endpoint's timers, the task feeding it what the
//! reader threads parsed, the dispatcher of new transactions and the
//! server transactions' tasks (which send 100 Trying) run on a thread of
//! their own, apart from the call tasks, at the normal priority (see
//! `priority` for why not favoured).
//!
//! On the main runtime, an INVITE's hops (reader to endpoint, endpoint to
//! dispatcher, dispatcher to the task sending 100 Trying) each waited in
//! a worker's queue behind call tasks: at 500 calls a second, 39 ms and
//! 56 ms at p99 for the last two, 84 ms to 100 Trying in all. Call tasks
//! still drive their own dialogs (agent legs, BYE) from the main runtime;
//! the two meet through rsipstack's channels.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

static SIP: OnceLock<Runtime> = OnceLock::new();

/// Runs a SIP task on the SIP runtime (started on first use, kept for the
/// process). Tasks it spawns stay there.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    SIP.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("siaga-sip")
            .enable_all()
            .build()
            .expect("cannot start the SIP runtime's thread")
    })
    .spawn(task)
}

#[cfg(test)]
mod tests {
    use crate::priority::{nices_of, own_nice};

    /// SIP's threads run at the normal priority, not favoured like the
    /// media threads: a flood's SIP work has no bound, and favoured it
    /// starved the recorder and the waiting callers' prompts (see
    /// `priority`).
    #[tokio::test]
    async fn sip_threads_are_not_favoured() {
        super::spawn(async {}).await.unwrap();
        let nices = nices_of("siaga-sip");
        assert!(!nices.is_empty(), "no SIP thread found");
        assert!(nices.iter().all(|&n| n == own_nice()), "{nices:?}");
    }
}

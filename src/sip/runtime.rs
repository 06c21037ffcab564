//! The SIP runtime: the endpoint's timers, the task feeding it what the
//! reader threads parsed, the dispatcher of new transactions and the
//! server transactions' tasks (which send 100 Trying) run on a thread of
//! their own, apart from the call tasks, favoured (`priority::SIP`).
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
            .on_thread_start(|| crate::priority::favour_this_thread(crate::priority::SIP))
            .enable_all()
            .build()
            .expect("cannot start the SIP runtime's thread")
    })
    .spawn(task)
}

#[cfg(test)]
mod tests {
    use crate::priority::{expected, nices_of, SIP};

    /// SIP's threads run at `priority::SIP` where the process may raise a
    /// thread's priority (root here), at the normal one elsewhere.
    #[tokio::test]
    async fn sip_threads_are_favoured_where_allowed() {
        super::spawn(async {}).await.unwrap();
        let nices = nices_of("siaga-sip");
        assert!(!nices.is_empty(), "no SIP thread found");
        assert!(nices.iter().all(|&n| n == expected(SIP)), "{nices:?}");
    }
}

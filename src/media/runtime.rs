//! The media runtime: every call's RTP session runs here, on threads of
//! its own, apart from the runtime that answers SIP and runs the calls.
//!
//! With a thousand calls there are always a thousand media tasks ready
//! to run (each wakes fifty times a second, and on every packet); on one
//! shared runtime a new INVITE's tasks waited behind them, and its 100
//! Trying went out 25-50 ms late (p99) at 500 calls a second. Two
//! runtimes let the operating system share the cores between signalling
//! and media instead. RTP sockets are made here too (`ports`), so their
//! readiness is this runtime's business alone.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

static MEDIA: OnceLock<Runtime> = OnceLock::new();

/// The media runtime, started on first use and kept for the process.
pub fn handle() -> &'static Handle {
    MEDIA
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
                .thread_name("siaga-media")
                .enable_all()
                .build()
                .expect("cannot start the media runtime's threads")
        })
        .handle()
}

/// Runs a media session on the media runtime.
pub fn spawn<F>(session: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(session)
}

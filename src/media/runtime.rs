//! The media runtime: the browser gateways (`webphone::gateway`: WebRTC,
//! DTLS-SRTP and their relay tasks) run here, apart from the runtime that
//! answers SIP and runs the calls. Calls' RTP sessions are not tasks at
//! all: they run on the media reactor's threads (`reactor`).
//!
//! Media work on the shared runtime once made a new INVITE's tasks wait
//! behind it (100 Trying 25-50 ms late at p99, 500 calls a second); on
//! threads of their own the operating system shares the cores between
//! signalling and media instead.

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

/// Runs a browser gateway's task on the media runtime.
pub fn spawn<F>(session: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(session)
}

//! The panel's HTTP server: our own accept loop around hyper, so that no
//! client can take from the calls what they need. Every connection holds a
//! file descriptor, and so does every RTP port: 1,100 half-sent requests
//! once left no descriptor for a 112 call's media (`EMFILE`, answered 503).
//! So connections are capped (`http.max_connections`; one over the cap is
//! closed at once), a request's head must arrive within
//! `http.header_read_timeout` (which also ends a keep-alive connection
//! idle that long), a request must be answered within
//! `http.request_timeout` (a body trickled in slowly ends there), and the
//! process's own descriptor limit is raised at start with a reserve kept
//! for SIP and media (`raise_fd_limit`).
//!
//! HTTP/1.1 only: the panel needs nothing of HTTP/2, and it is a second
//! protocol to bound. Each request carries its peer's address
//! (`ConnectInfo`), which the login's per-address limit reads.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What bounds the panel's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "HTTP connection not accepted");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warn!(%peer, max = limits.max_connections, "HTTP connections at their cap; closing new ones");
                last_refusal_logged = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Raises the process's open-file limit as far as it may (soft to hard),
/// and returns how many HTTP connections fit beside what SIP and media
/// need (`reserve`: the RTP ports and a margin), at most `wanted`. A limit
/// that leaves less than `wanted` is logged: then HTTP gets less, never
/// the calls.
pub fn raise_fd_limit(wanted: usize, reserve: u64) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a plain struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!("cannot read the open-file limit; HTTP connections stay at their cap");
        return wanted;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            info!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "open-file limit raised"
            );
            lim = raised;
        }
    }
    let room = lim.rlim_cur.saturating_sub(reserve);
    let fits = usize::try_from(room).unwrap_or(usize::MAX).min(wanted);
    if fits < wanted {
        warn!(
            limit = lim.rlim_cur,
            reserve,
            http = fits,
            "the open-file limit leaves room for fewer HTTP connections than configured; raise it (LimitNOFILE)"
        );
    }
    fits.max(16)
}

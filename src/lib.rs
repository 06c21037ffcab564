//! siaga: a telephony-first emergency call center for NTPD 112 and 119.
//!
//! See ARCHITECTURE.md for the parts and their borders.

pub mod acd;
pub mod call;
pub mod cluster;
pub mod config;
pub mod ids;
pub mod leg;
pub mod live;
pub mod media;
pub mod pranks;
pub(crate) mod priority;
pub mod server;
pub mod shared;
pub mod sip;
pub mod store;
pub mod web;
pub mod webphone;

/// Locks a mutex whose holder may have panicked: the data behind these
/// locks (bindings, tabs) stays usable, and a call must not fail for it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The log filter unless `SIAGA_LOG` says otherwise. rsipstack logs whole
/// messages at info (digest responses, caller data): it stays at warn. The
/// WebRTC crates log every state change of every connection at info and
/// harmless races (a browser's check before its answer is in) at warn:
/// the sans-I/O core (`rtc*`) only says errors; `webphone` logs what a
/// call's leg did.
pub const DEFAULT_LOG: &str =
    "info,rsipstack=warn,sqlx=warn,webrtc=warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,rtc_sctp=error,rtc_interceptor=error,rtc_mdns=error";

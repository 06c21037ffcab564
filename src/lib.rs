//! siaga: a telephony-first emergency call center for NTPD 112 and 119.
//!
//! See ARCHITECTURE.md for the parts and their borders.

pub mod acd;
pub mod call;
pub mod config;
pub mod ids;
pub mod live;
pub mod media;
pub mod server;
pub mod sip;
pub mod store;
pub mod web;
pub mod webphone;

/// The log filter unless `SIAGA_LOG` says otherwise. rsipstack logs whole
/// messages at info (digest responses, caller data), the WebRTC crates
/// every state change of every connection: both stay at warn.
pub const DEFAULT_LOG: &str =
    "info,rsipstack=warn,sqlx=warn,webrtc=warn,rtc=warn,rtc_ice=warn,rtc_dtls=warn,rtc_srtp=warn,rtc_sctp=warn,rtc_interceptor=warn,rtc_mdns=warn";

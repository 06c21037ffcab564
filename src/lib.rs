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

//! Media: RTP sockets and their port pool, G.711, SDP, prompt playback and
//! recording. Per-packet work allocates nothing and never waits on the
//! database; disk writes happen on the recorder thread; sessions run on
//! the media reactor's threads (`reactor`), the browser gateways on a
//! runtime of their own (`runtime`).

pub mod g711;
pub mod listen;
pub mod ports;
pub mod prompts;
pub mod reactor;
pub mod recorder;
pub mod runtime;
pub mod sdp;
pub mod session;
pub mod unfinished;

//! An SDP offer or answer (RFC 4566, RFC 3264), then the codec choice.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(remote) = siaga::media::sdp::parse(data) {
        let _ = siaga::media::sdp::negotiate(&remote);
    }
    let _ = siaga::media::sdp::offered_direction(Some(data));
});

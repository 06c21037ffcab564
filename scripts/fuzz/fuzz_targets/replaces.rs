//! A Replaces header (RFC 3891) alone, and inside a Refer-To's URI
//! (RFC 3515), percent-encoded, as attended transfers send it.
#![no_main]
use siaga::sip::request::{refer_target, Replaces};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Replaces::parse(text);
    if let (_, Some(r)) = refer_target(text) {
        let _ = Replaces::parse(&r);
    }
});

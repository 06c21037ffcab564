//! What rsipstack's parser refuses, answered (400/501) from the bytes
//! alone: any answer must itself be a SIP response.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(reply) = siaga::sip::salvage::reply_for_unparsable(data) {
        assert!(reply.starts_with(b"SIP/2.0 "));
    }
});

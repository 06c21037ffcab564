//! One UDP datagram from a stranger, through everything siaga reads of it
//! (`siaga::sip::fuzz::datagram`): rsipstack's parser, the salvage of what
//! it refuses, the source stamp, and every header and body reading.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    siaga::sip::fuzz::datagram(data);
});

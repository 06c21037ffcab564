//! An Authorization header's value (RFC 7616), parsed and then checked as
//! the registrar checks it.
#![no_main]
use siaga::sip::digest::{ha1, parse_authorization, Authenticator};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(creds) = parse_authorization(text) {
        let mut auth = Authenticator::new("siaga", [7; 32], 300);
        let _ = auth.verify(&creds, "REGISTER", 1_000, |_, alg| {
            Some(ha1(alg, "u", "siaga", "p"))
        });
    }
});

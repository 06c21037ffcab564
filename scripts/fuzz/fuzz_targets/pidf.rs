//! A PIDF-LO body (RFC 4119, RFC 5491) as a trunk might send it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(l) = siaga::sip::request::parse_pidf(text) {
            assert!(l.latitude.is_none_or(|v| (-90.0..=90.0).contains(&v)));
            assert!(l.longitude.is_none_or(|v| (-180.0..=180.0).contains(&v)));
        }
    }
    // And as the part of a multipart body it usually is.
    let _ = siaga::sip::request::split_body(Some("multipart/mixed; boundary=b"), data);
});

//! What the fuzz targets (`scripts/fuzz`) drive: everything siaga does
//! with one datagram's bytes before any socket or clock is involved.
//! Not used by the server itself.

use super::request::{self, header_value, Replaces};
use super::stack::{take_datagram, Datagram};
use super::{accounts, digest};
use rsipstack::sip::SipMessage;
use std::net::SocketAddr;

/// One UDP datagram from a stranger, as the reader takes it, then every
/// reading of a request's parts that intake, the registrar and transfers
/// make: the dialed target, numbers, digest credentials (checked against
/// an authenticator), Replaces and Refer-To, contacts, the body's SDP and
/// PIDF-LO.
pub fn datagram(raw: &[u8]) {
    let source = SocketAddr::from(([127, 0, 0, 9], 5060));
    let Datagram::Message(SipMessage::Request(req)) = take_datagram(raw, source) else {
        return;
    };
    let _ = request::check_invite(&req);
    assert_eq!(request::udp_source(&req), Some(source));
    let _ = request::dialed_target(&req.uri);
    for name in ["From", "To", "P-Asserted-Identity"] {
        if let Some(v) = header_value(&req, name) {
            let _ = request::number_from_address(&v);
        }
    }
    if let Some(contacts) = header_value(&req, "Contact") {
        for c in accounts::split_contacts(&contacts) {
            let _ = accounts::split_contact(&c);
        }
    }
    if let Some(creds) =
        header_value(&req, "Authorization").and_then(|a| digest::parse_authorization(&a))
    {
        let mut auth = digest::Authenticator::new("siaga", [7; 32], 300);
        let _ = auth.verify(&creds, req.method.to_string().as_str(), 1_000, |_, alg| {
            Some(digest::ha1(alg, "u", "siaga", "p"))
        });
    }
    if let Some(r) = header_value(&req, "Replaces") {
        let _ = Replaces::parse(&r);
    }
    if let Some(r) = header_value(&req, "Refer-To") {
        if let (_, Some(rep)) = request::refer_target(&r) {
            let _ = Replaces::parse(&rep);
        }
    }
    let (sdp, pidf) = request::split_body(header_value(&req, "Content-Type").as_deref(), &req.body);
    if let Some(remote) = sdp.and_then(|b| crate::media::sdp::parse(&b).ok()) {
        let _ = crate::media::sdp::negotiate(&remote);
    }
    if let Some(p) = pidf {
        let _ = request::parse_pidf(&p);
    }
}

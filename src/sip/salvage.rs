//! Answers for requests the parser refuses: an extension method it does not
//! know gets 501, a request it cannot read gets 400 (RFC 3261 §21.5.2,
//! §21.4.1) — when enough of it survives to address a response. Anything
//! less is dropped. Pure byte work.

/// Methods the parser knows; an unknown token means "not implemented".
const KNOWN: &[&str] = &[
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Builds the response to send back for an unparsable request, if one
/// can be addressed (a request line, a Via, From, To, Call-ID and CSeq).
pub fn reply_for_unparsable(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?;
    let _uri = parts.next()?;
    if parts.next()? != "SIP/2.0" || !is_token(method) || method == "ACK" {
        return None; // not a request, or one that must never be answered
    }
    let (code, reason) = if KNOWN.contains(&method) {
        (400, "Bad Request")
    } else {
        (501, "Not Implemented")
    };
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => vias.push(value),
            "from" | "f" => from = Some(value),
            "to" | "t" => to = Some(value),
            "call-id" | "i" => call_id = Some(value),
            "cseq" => cseq = Some(value),
            _ => {}
        }
    }
    let (from, to, call_id, cseq) = (from?, to?, call_id?, cseq?);
    if vias.is_empty() {
        return None;
    }
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in vias {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    out.push_str(&format!("From: {from}\r\n"));
    // A final response from a UAS carries a To tag.
    if to.contains(";tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!(
            "To: {to};tag=siaga-{:08x}\r\n",
            rand::random::<u32>()
        ));
    }
    out.push_str(&format!("Call-ID: {call_id}\r\nCSeq: {cseq}\r\n"));
    if code == 501 {
        out.push_str(&format!("Allow: {}\r\n", super::routing::ALLOW));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDRS: &str = "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:112@h>\r\nCall-ID: abc\r\nCSeq: 1 FOO\r\n";

    #[test]
    fn unknown_method_gets_501_with_allow() {
        let raw = format!("FOO sip:112@h SIP/2.0\r\n{HDRS}Content-Length: 0\r\n\r\n");
        let r = String::from_utf8(reply_for_unparsable(raw.as_bytes()).unwrap()).unwrap();
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n"));
        assert!(r.contains("Call-ID: abc\r\n"));
        assert!(r.contains("To: <sip:112@h>;tag=siaga-"));
        assert!(r.contains("Allow: INVITE"));
    }

    #[test]
    fn known_but_broken_gets_400() {
        let raw = format!("INVITE sip:112@h SIP/2.0\r\n{HDRS}Max-Forwards: many\r\n\r\n");
        let r = String::from_utf8(reply_for_unparsable(raw.as_bytes()).unwrap()).unwrap();
        assert!(r.starts_with("SIP/2.0 400 Bad Request\r\n"), "{r}");
    }

    #[test]
    fn unaddressable_or_ack_is_dropped() {
        assert!(reply_for_unparsable(b"\x00\xff garbage").is_none());
        assert!(reply_for_unparsable(b"FOO sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n").is_none());
        let ack = format!("ACK sip:112@h SIP/2.0\r\n{HDRS}\r\n");
        assert!(reply_for_unparsable(ack.as_bytes()).is_none());
        assert!(reply_for_unparsable(b"SIP/2.0 200 OK\r\n\r\n").is_none());
        assert!(reply_for_unparsable(b"F(O sip:x SIP/2.0\r\n\r\n").is_none());
    }
}

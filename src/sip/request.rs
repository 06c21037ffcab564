//! Turns an rsipstack request into plain data the rest of siaga uses:
//! who called, what they dialed, where they are, and the SDP offer.

use crate::config::dialplan::DialedTarget;
use rsipstack::sip::{Request, Scheme, Uri};
use std::net::{IpAddr, SocketAddr};

/// Where the caller is, from PIDF-LO (RFC 4119, RFC 5491).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Location {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// Civic address, comma-separated, as the network sent it.
    pub text: Option<String>,
}

/// Everything intake needs from a new INVITE.
#[derive(Debug, Clone)]
pub struct InviteInfo {
    pub sip_call_id: String,
    pub request_uri: String,
    pub from_uri: String,
    pub to_uri: String,
    pub dialed: Option<DialedTarget>,
    /// From P-Asserted-Identity when the source is trusted, else From.
    pub caller_number: Option<String>,
    /// The Geolocation header (RFC 6442) as received.
    pub geolocation: Option<String>,
    pub location: Option<Location>,
    pub sdp: Option<Vec<u8>>,
    pub source: SocketAddr,
    pub transport: &'static str,
}

/// Checks what a dialog is built from (RFC 3261 §8.1.1, §20): a numeric
/// Max-Forwards, a CSeq whose method matches, a From tag, and a Contact on
/// an INVITE. A request failing this gets 400 with the reason.
pub fn check_invite(req: &Request) -> Result<(), &'static str> {
    if let Some(mf) = header_value(req, "Max-Forwards") {
        if mf.parse::<u32>().is_err() {
            return Err("Invalid Max-Forwards");
        }
    }
    let cseq = header_value(req, "CSeq").ok_or("Missing CSeq")?;
    let mut parts = cseq.split_whitespace();
    let seq_ok = parts.next().is_some_and(|n| n.parse::<u32>().is_ok());
    if !seq_ok || parts.next() != Some("INVITE") {
        return Err("Invalid CSeq");
    }
    let from = header_value(req, "From").ok_or("Missing From")?;
    if !from.contains(";tag=") {
        return Err("Missing From tag");
    }
    if header_value(req, "Contact").is_none() {
        return Err("Missing Contact");
    }
    Ok(())
}

/// The values of every header called `name` (case-insensitive), in order.
pub fn header_values<'a>(req: &'a Request, name: &'a str) -> impl Iterator<Item = String> + 'a {
    req.headers.iter().filter_map(move |h| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The value of the first header called `name` (case-insensitive).
pub fn header_value(req: &Request, name: &str) -> Option<String> {
    header_values(req, name).next()
}

/// A Refer-To value's URI (without the angle brackets and the embedded
/// headers) and its `Replaces` header, if any (attended transfer),
/// percent-decoded (RFC 3261 §19.1.1: headers embedded in a URI are
/// escaped).
pub fn refer_target(refer_to: &str) -> (String, Option<String>) {
    let v = refer_to.trim();
    let inner = v
        .strip_prefix('<')
        .and_then(|r| r.split_once('>').map(|(u, _)| u))
        .unwrap_or(v);
    match inner.split_once('?') {
        Some((uri, headers)) => {
            let replaces = headers
                .split('&')
                .filter_map(|h| h.split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("Replaces"))
                .map(|(_, v)| percent_decode(v));
            (uri.to_string(), replaces)
        }
        None => (inner.to_string(), None),
    }
}

/// `%XX` escapes decoded (either case); a broken escape stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The dialog a Replaces header names (RFC 3891 §6.1): its Call-ID and
/// the two tags, as the sender of the REFER sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
}

impl Replaces {
    /// `callid;to-tag=a;from-tag=b[;early-only]`; `None` without both tags.
    pub fn parse(value: &str) -> Option<Replaces> {
        let mut parts = value.split(';').map(str::trim);
        let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
        let (mut to_tag, mut from_tag) = (None, None);
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("to-tag") => {
                    to_tag = Some(v.trim().to_string())
                }
                Some((k, v)) if k.trim().eq_ignore_ascii_case("from-tag") => {
                    from_tag = Some(v.trim().to_string())
                }
                _ => {}
            }
        }
        Some(Replaces {
            call_id,
            to_tag: to_tag?,
            from_tag: from_tag?,
        })
    }

    /// Whether this names the dialog with these ids. The tags are taken
    /// in either order: which is "to" depends on who sent the REFER.
    pub fn names(&self, call_id: &str, local_tag: &str, remote_tag: &str) -> bool {
        self.call_id == call_id
            && ((self.to_tag == local_tag && self.from_tag == remote_tag)
                || (self.to_tag == remote_tag && self.from_tag == local_tag))
    }
}

/// What was dialed, from the Request-URI.
pub fn dialed_target(uri: &Uri) -> Option<DialedTarget> {
    match &uri.scheme {
        Some(Scheme::Sip) | Some(Scheme::Sips) | None => {
            uri.auth.as_ref().map(|a| DialedTarget::number(&a.user))
        }
        Some(Scheme::Other(s)) if s.eq_ignore_ascii_case("tel") => {
            Some(DialedTarget::number(&uri.host_with_port.host.to_string()))
        }
        Some(Scheme::Other(s)) if s.eq_ignore_ascii_case("urn") => Some(DialedTarget::urn(
            &format!("urn:{}", uri.host_with_port.host),
        )),
        _ => None,
    }
}

/// The number in a name-addr or URI text (`"X" <sip:0812@h>;tag=1`,
/// `<tel:+62-812>`, `sip:112@h`). `None` for anonymous callers.
pub fn number_from_address(text: &str) -> Option<String> {
    let uri = match (text.find('<'), text.find('>')) {
        (Some(a), Some(b)) if a < b => &text[a + 1..b],
        _ => text.split(';').next().unwrap_or(text).trim(),
    };
    let (scheme, rest) = uri.split_once(':')?;
    let number = match scheme.to_ascii_lowercase().as_str() {
        "tel" => rest.split(';').next()?,
        "sip" | "sips" => rest.split_once('@')?.0.split(';').next()?,
        _ => return None,
    };
    let number: String = number
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect();
    // Only something a call-taker can dial back counts as a number
    // ("anonymous", "sipp", "restricted" do not).
    let dialable = !number.is_empty()
        && number
            .char_indices()
            .all(|(i, c)| c.is_ascii_digit() || c == '*' || c == '#' || (i == 0 && c == '+'))
        && number.bytes().any(|b| b.is_ascii_digit());
    dialable.then_some(number)
}

/// Splits a body into its SDP and PIDF-LO parts (plain or multipart/mixed).
pub fn split_body(content_type: Option<&str>, body: &[u8]) -> (Option<Vec<u8>>, Option<String>) {
    if body.is_empty() {
        return (None, None);
    }
    let ct = content_type
        .unwrap_or("application/sdp")
        .to_ascii_lowercase();
    if ct.starts_with("application/sdp") {
        return (Some(body.to_vec()), None);
    }
    if ct.starts_with("application/pidf+xml") {
        return (None, String::from_utf8(body.to_vec()).ok());
    }
    if !ct.starts_with("multipart/") {
        return (None, None);
    }
    let Some(boundary) = content_type.and_then(boundary_of) else {
        return (None, None);
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return (None, None);
    };
    let delimiter = format!("--{boundary}");
    let (mut sdp, mut pidf) = (None, None);
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.trim_start_matches("\r\n").trim_start_matches('\n');
        let (headers, content) = match part.split_once("\r\n\r\n") {
            Some(x) => x,
            None => match part.split_once("\n\n") {
                Some(x) => x,
                None => continue,
            },
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        let part_type = headers
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_ascii_lowercase())
            })
            .unwrap_or_default();
        if part_type.starts_with("application/sdp") && sdp.is_none() {
            sdp = Some(content.as_bytes().to_vec());
        } else if part_type.starts_with("application/pidf+xml") && pidf.is_none() {
            pidf = Some(content.to_string());
        }
    }
    (sdp, pidf)
}

fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Inner text of every element whose local name is `local` (any prefix).
fn elements<'a>(xml: &'a str, local: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let Some(end) = rest.find('>') else { break };
        let tag = &rest[..end];
        if tag.starts_with('/')
            || tag.starts_with('?')
            || tag.starts_with('!')
            || tag.ends_with('/')
        {
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or("");
        let name_local = name.rsplit(':').next().unwrap_or(name);
        if name_local == local {
            let body = &rest[end + 1..];
            let close = format!("</{name}>");
            if let Some(c) = body.find(&close) {
                out.push(&body[..c]);
            }
        }
    }
    out
}

/// Reads a PIDF-LO document: a geodetic point or circle centre
/// (`gml:pos`, "lat lon") and/or a civic address.
pub fn parse_pidf(xml: &str) -> Option<Location> {
    let mut loc = Location::default();
    if let Some(pos) = elements(xml, "pos").first() {
        let mut it = pos.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
        if let (Some(lat), Some(lon)) = (it.next(), it.next()) {
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
                loc.latitude = Some(lat);
                loc.longitude = Some(lon);
            }
        }
    }
    if let Some(civic) = elements(xml, "civicAddress").first() {
        // The leaf values in document order (A1..A6, RD, HNO, PC, LOC...).
        let mut parts = Vec::new();
        let mut rest = *civic;
        while let Some(gt) = rest.find('>') {
            rest = &rest[gt + 1..];
            let text = rest.split('<').next().unwrap_or("").trim();
            if !text.is_empty() {
                parts.push(text.to_string());
            }
        }
        if !parts.is_empty() {
            loc.text = Some(parts.join(", "));
        }
    }
    (loc != Location::default()).then_some(loc)
}

/// The source of a request, from the top Via as the transport stamped it
/// with `received`/`rport` (RFC 3261 §18.2.1, RFC 3581).
pub fn source_from_via(via_value: &str) -> Option<SocketAddr> {
    let first = via_value.split(',').next()?.trim();
    let (_proto, rest) = first.split_once(char::is_whitespace)?;
    let mut params = rest.split(';');
    let sent_by = params.next()?.trim();
    let (mut host, mut port) = match sent_by.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || sent_by.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(5060),
        ),
        _ => (sent_by.trim_matches(['[', ']']).to_string(), 5060),
    };
    for p in params {
        match p.trim().split_once('=') {
            Some(("received", v)) => host = v.to_string(),
            Some(("rport", v)) => port = v.parse().unwrap_or(port),
            _ => {}
        }
    }
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod refer_tests {
    use super::{refer_target, Replaces};

    #[test]
    fn refer_to_values() {
        assert_eq!(
            refer_target("<sip:damkar@10.0.0.1:5060>"),
            ("sip:damkar@10.0.0.1:5060".to_string(), None)
        );
        assert_eq!(
            refer_target("sip:damkar@10.0.0.1"),
            ("sip:damkar@10.0.0.1".to_string(), None)
        );
        let (uri, replaces) =
            refer_target("<sip:disp@10.0.0.1?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>;x=y");
        assert_eq!(uri, "sip:disp@10.0.0.1");
        assert_eq!(replaces.as_deref(), Some("abc@host;to-tag=1;from-tag=2"));
        // Lower-case escapes, and characters beyond the three above.
        let (_, replaces) =
            refer_target("<sip:damkar@h?Replaces=a%2bb%40h%3bto-tag%3d7%3Bfrom-tag%3D8>");
        assert_eq!(replaces.as_deref(), Some("a+b@h;to-tag=7;from-tag=8"));
        // A broken escape is kept, not dropped.
        let (_, replaces) = refer_target("<sip:x@h?Replaces=a%4%zz>");
        assert_eq!(replaces.as_deref(), Some("a%4%zz"));
    }

    #[test]
    fn replaces_names_one_dialog() {
        let r = Replaces::parse("abc@h;to-tag=t1;from-tag=f1;early-only").unwrap();
        assert_eq!(r.call_id, "abc@h");
        assert!(r.names("abc@h", "t1", "f1"));
        assert!(r.names("abc@h", "f1", "t1"), "tags in either order");
        assert!(!r.names("abc@h", "t1", "other"));
        assert!(!r.names("xyz@h", "t1", "f1"));
        assert_eq!(
            Replaces::parse("abc@h;to-tag=t1"),
            None,
            "both tags are required"
        );
        assert_eq!(Replaces::parse(";to-tag=1;from-tag=2"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsipstack::sip::SipMessage;

    fn req(raw: &str) -> Request {
        match SipMessage::try_from(raw.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            _ => panic!(),
        }
    }

    fn invite(ruri: &str) -> Request {
        req(&format!("INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5070;branch=z9hG4bK1;rport\r\nFrom: \"Budi\" <sip:081234@10.9.9.9>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"))
    }

    #[test]
    fn dialed_targets_from_request_uri() {
        assert_eq!(
            dialed_target(&invite("sip:112@127.0.0.1").uri),
            Some(DialedTarget::number("112"))
        );
        assert_eq!(
            dialed_target(&invite("tel:112").uri),
            Some(DialedTarget::number("112"))
        );
        assert_eq!(
            dialed_target(&invite("urn:service:sos").uri),
            Some(DialedTarget::urn("urn:service:sos"))
        );
        assert_eq!(
            dialed_target(&invite("urn:service:sos.fire").uri),
            Some(DialedTarget::urn("urn:service:sos.fire"))
        );
        assert_eq!(dialed_target(&invite("sip:127.0.0.1").uri), None);
    }

    #[test]
    fn invite_checks() {
        let good = "INVITE sip:112@h SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:112@h>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:a@1.2.3.4>\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check_invite(&req(good)), Ok(()));
        let bad = |from: &str, to: &str| check_invite(&req(&good.replace(from, to)));
        assert_eq!(
            bad("Max-Forwards: 70", "Max-Forwards: lots"),
            Err("Invalid Max-Forwards")
        );
        assert_eq!(bad(";tag=1", ""), Err("Missing From tag"));
        assert_eq!(
            bad("Contact: <sip:a@1.2.3.4>\r\n", ""),
            Err("Missing Contact")
        );
    }

    #[test]
    fn caller_numbers() {
        assert_eq!(
            number_from_address("\"Budi\" <sip:081234@h>;tag=1").as_deref(),
            Some("081234")
        );
        assert_eq!(
            number_from_address("<tel:+62-812-3456;phone-context=x>").as_deref(),
            Some("+628123456")
        );
        assert_eq!(
            number_from_address("sip:+62812@h;user=phone").as_deref(),
            Some("+62812")
        );
        assert_eq!(
            number_from_address("\"Anonymous\" <sip:anonymous@anonymous.invalid>"),
            None
        );
        assert_eq!(number_from_address("garbage"), None);
        assert_eq!(number_from_address("<sip:sipp@127.0.0.1>"), None);
        let r = invite("sip:112@h");
        assert_eq!(
            header_value(&r, "from")
                .as_deref()
                .and_then(number_from_address)
                .as_deref(),
            Some("081234")
        );
    }

    /// The transport stamps the real source into the top Via; trunk checks
    /// rely on it, so a Via that lies about its host must not fool us.
    #[test]
    fn source_is_the_received_address() {
        let r = invite("sip:112@h");
        let stamped = rsipstack::transport::SipConnection::update_msg_received(
            r.into(),
            "127.0.0.1:40000".parse().unwrap(),
            rsipstack::sip::Transport::Udp,
        )
        .unwrap();
        let SipMessage::Request(r) = stamped else {
            panic!()
        };
        let via = header_value(&r, "via").unwrap();
        assert_eq!(
            source_from_via(&via),
            Some("127.0.0.1:40000".parse().unwrap())
        );
        assert_eq!(
            source_from_via("SIP/2.0/UDP 10.0.0.1:5080;branch=z9"),
            Some("10.0.0.1:5080".parse().unwrap())
        );
        assert_eq!(
            source_from_via("SIP/2.0/TCP [::1]:5080;branch=z9"),
            Some("[::1]:5080".parse().unwrap())
        );
    }

    const PIDF: &str = r#"<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" xmlns:gml="http://www.opengis.net/gml" xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr" entity="pres:caller@telco">
 <tuple id="t1"><status><gp:geopriv><gp:location-info>
  <gml:Point srsName="urn:ogc:def:crs:EPSG::4326"><gml:pos>-6.4025 106.7942</gml:pos></gml:Point>
  <ca:civicAddress><ca:country>ID</ca:country><ca:A1>Jawa Barat</ca:A1><ca:A2>Depok</ca:A2><ca:RD>Jalan Margonda Raya</ca:RD><ca:HNO>12</ca:HNO></ca:civicAddress>
 </gp:location-info></gp:geopriv></status></tuple></presence>"#;

    #[test]
    fn pidf_lo_point_and_civic() {
        let l = parse_pidf(PIDF).unwrap();
        assert_eq!(l.latitude, Some(-6.4025));
        assert_eq!(l.longitude, Some(106.7942));
        assert_eq!(
            l.text.as_deref(),
            Some("ID, Jawa Barat, Depok, Jalan Margonda Raya, 12")
        );
        assert_eq!(parse_pidf("<presence/>"), None);
        assert_eq!(parse_pidf("<gml:pos>999 999</gml:pos>"), None);
    }

    #[test]
    fn multipart_sdp_and_pidf() {
        let body = format!("--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 1 RTP/AVP 8\r\n\r\n--b1\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@x>\r\n\r\n{PIDF}\r\n--b1--\r\n");
        let (sdp, pidf) = split_body(Some("multipart/mixed; boundary=\"b1\""), body.as_bytes());
        assert_eq!(sdp.unwrap(), b"v=0\r\nm=audio 1 RTP/AVP 8\r\n");
        assert!(parse_pidf(&pidf.unwrap()).is_some());
        let (sdp, pidf) = split_body(Some("application/sdp"), b"v=0\r\n");
        assert!(sdp.is_some() && pidf.is_none());
        assert_eq!(split_body(None, b""), (None, None));
    }
}

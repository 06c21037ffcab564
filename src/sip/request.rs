//! Turns an rsipstack request into plain data the rest of siaga uses:
//! who called, what they dialed, where they are, and the SDP offer.

use crate::config::dialplan::DialedTarget;
use rsipstack::sip::{Request, Scheme, Uri};
use std::net::SocketAddr;

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
    /// The PIDF-LO body part, unread: the call task reads it
    /// (`parse_pidf`), not the dispatcher every request passes through.
    pub pidf: Option<String>,
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

/// The largest PIDF-LO siaga reads. A location object is a few hundred
/// bytes to a few KB (RFC 5491's examples, a telco's AML relay); past this
/// the body is not read at all.
pub const PIDF_MAX_BYTES: usize = 16 * 1024;
/// How deep the elements of a PIDF-LO may nest (RFC 5491's deepest shapes
/// are under ten).
const PIDF_MAX_DEPTH: usize = 32;

/// Reads a PIDF-LO document: a geodetic point or circle centre (the first
/// `pos`, "lat lon") and/or a civic address (the leaf values of the first
/// `civicAddress`, in document order), whatever the prefixes. One pass of
/// `quick-xml`'s reader over at most `PIDF_MAX_BYTES`: linear in the
/// body, no entity expansion; a malformed document gives what was read
/// before the fault.
pub fn parse_pidf(xml: &str) -> Option<Location> {
    use quick_xml::escape::resolve_predefined_entity;
    use quick_xml::events::Event;
    if xml.len() > PIDF_MAX_BYTES {
        return None;
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    // Character data since the last tag, kept only inside what we read.
    let mut text = String::new();
    let (mut pos, mut pos_at) = (None::<String>, None::<usize>);
    let (mut civic, mut civic_at, mut civic_done) = (Vec::<String>::new(), None::<usize>, false);
    while let Ok(event) = reader.read_event() {
        if matches!(event, Event::Start(_) | Event::End(_) | Event::Empty(_)) {
            let leaf = std::mem::take(&mut text);
            if matches!(event, Event::End(_)) && pos_at == Some(depth) {
                pos = Some(leaf);
                pos_at = None;
            } else if civic_at.is_some() && !leaf.trim().is_empty() {
                civic.push(leaf.trim().to_string());
            }
        }
        let reading = pos_at.is_some() || civic_at.is_some();
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth > PIDF_MAX_DEPTH {
                    break;
                }
                match e.local_name().as_ref() {
                    "pos" if pos.is_none() && pos_at.is_none() => pos_at = Some(depth),
                    "civicAddress" if !civic_done && civic_at.is_none() => civic_at = Some(depth),
                    _ => {}
                }
            }
            Event::End(_) => {
                if civic_at == Some(depth) {
                    civic_at = None;
                    civic_done = true;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) if reading => text.push_str(&t.xml10_content()),
            Event::CData(t) if reading => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if reading => match r.resolve_char_ref() {
                Ok(Some(c)) => text.push(c),
                _ => text.push_str(resolve_predefined_entity(&r.xml10_content()).unwrap_or("")),
            },
            Event::Eof => break,
            _ => {}
        }
    }
    let mut loc = Location::default();
    if let Some(pos) = pos {
        let mut it = pos.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
        if let (Some(lat), Some(lon)) = (it.next(), it.next()) {
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
                loc.latitude = Some(lat);
                loc.longitude = Some(lon);
            }
        }
    }
    if !civic.is_empty() {
        loc.text = Some(civic.join(", "));
    }
    (loc != Location::default()).then_some(loc)
}

/// The header our UDP reader writes on each request it hands the
/// endpoint: the datagram's real source address. Only `stamp_udp_source`
/// writes it, after taking off any header of that name the sender put
/// there, so its value is never a claim from the network.
const SOURCE_HEADER: &str = "X-Siaga-Source";

/// Readies a request that arrived over UDP from `source` for the endpoint.
/// The sender's own `received` is taken off the top Via first: only the
/// receiving server writes it (RFC 3261 §18.2.1), and rsipstack keeps one
/// that was already there when the Via's sent-by matches the packet, so a
/// forged one would both name a trunk and send our responses to whoever it
/// names. Then the Via gets its `received`/`rport` as the RFCs say (for
/// routing responses), and the real source goes into `SOURCE_HEADER`,
/// which is what trunk matching, P-Asserted-Identity, the guard and the
/// records trust (`udp_source`).
pub fn stamp_udp_source(
    msg: rsipstack::sip::SipMessage,
    source: SocketAddr,
) -> Result<rsipstack::sip::SipMessage, String> {
    use rsipstack::sip::{prelude::HeadersExt, prelude::ToTypedHeader, Header, Param, SipMessage};
    use rsipstack::transport::SipConnection;
    let SipMessage::Request(mut req) = msg else {
        return Ok(msg);
    };
    let text = |e: rsipstack::sip::Error| e.to_string();
    req.via_header_mut()
        .map_err(text)?
        .update_first_value(|via| {
            let mut typed = via.typed()?;
            typed.params.retain(|p| !matches!(p, Param::Received(_)));
            Ok(typed.into())
        })
        .map_err(text)?;
    let SipMessage::Request(mut req) =
        SipConnection::update_msg_received(req.into(), source, rsipstack::sip::Transport::Udp)
            .map_err(|e| e.to_string())?
    else {
        unreachable!("update_msg_received keeps a request a request")
    };
    req.headers
        .retain(|h| !h.name().eq_ignore_ascii_case(SOURCE_HEADER));
    req.headers
        .push(Header::Other(SOURCE_HEADER.into(), source.to_string()));
    Ok(req.into())
}

/// The header a SIP front (`sip-config/kamailio/`) adds to each request
/// it relays: where the request really came from, as
/// `sip:IP:PORT;transport=PROTO`. The front removes any the sender put
/// there; siaga believes it only of a request from a configured front.
const FRONT_SOURCE_HEADER: &str = "X-Front-Source";

/// Where a front says `req` came from, and over what. The caller has
/// checked that `req` came from a front.
pub fn front_source(req: &Request) -> Option<(SocketAddr, &'static str)> {
    parse_front_source(&header_value(req, FRONT_SOURCE_HEADER)?)
}

fn parse_front_source(value: &str) -> Option<(SocketAddr, &'static str)> {
    let rest = value.trim().strip_prefix("sip:")?;
    let (addr, params) = rest.split_once(';').unwrap_or((rest, ""));
    let addr: SocketAddr = addr.parse().ok()?;
    let transport = params
        .split(';')
        .find_map(|p| p.trim().strip_prefix("transport="))?;
    let transport = match transport.to_ascii_lowercase().as_str() {
        "udp" => "udp",
        "tcp" => "tcp",
        "tls" => "tls",
        "ws" => "ws",
        "wss" => "wss",
        _ => return None,
    };
    Some((addr, transport))
}

/// A REGISTER's Path (RFC 3327): each value, first hop first, checked to
/// be a route siaga can send through. Empty when it has none.
pub fn path(req: &Request) -> Result<Vec<String>, &'static str> {
    let values: Vec<String> = header_values(req, "Path")
        .flat_map(|v| crate::sip::accounts::split_contacts(&v))
        .collect();
    if values.len() > 8 {
        return Err("more than 8 Path entries");
    }
    for v in &values {
        let route =
            rsipstack::sip::typed::Route::parse(v).map_err(|_| "a Path that is no route")?;
        if !route.has_lr() {
            return Err("a Path entry without lr");
        }
    }
    Ok(values)
}

/// Whether `req` lists `option` in a Supported header.
pub fn supports(req: &Request, option: &str) -> bool {
    header_values(req, "Supported")
        .any(|v| v.split(',').any(|o| o.trim().eq_ignore_ascii_case(option)))
}

/// The real source of a request that came over UDP, as our reader stamped
/// it (`stamp_udp_source`). None for a request that did not pass it.
pub fn udp_source(req: &Request) -> Option<SocketAddr> {
    header_value(req, SOURCE_HEADER)?.parse().ok()
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

    fn register_with(extra: &str) -> Request {
        req(&format!("REGISTER sip:10.0.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bK2\r\nFrom: <sip:ct-01@10.0.0.10>;tag=1\r\nTo: <sip:ct-01@10.0.0.10>\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"))
    }

    /// A Path as Kamailio writes it is kept whole (its `received` holds a
    /// colon), entries in order; one that is no loose route is refused.
    #[test]
    fn a_path_is_kept_in_order_and_must_be_loose_routes() {
        let two = register_with(
            "Path: <sip:10.0.0.10;lr;received=sip:192.168.1.5:5062>\r\nPath: <sip:10.0.0.9;lr>\r\nSupported: outbound, path\r\n",
        );
        assert_eq!(
            path(&two),
            Ok(vec![
                "<sip:10.0.0.10;lr;received=sip:192.168.1.5:5062>".to_string(),
                "<sip:10.0.0.9;lr>".to_string()
            ])
        );
        assert!(supports(&two, "path") && !supports(&two, "replaces"));
        let joined = register_with("Path: <sip:10.0.0.10;lr>, <sip:10.0.0.9;lr>\r\n");
        assert_eq!(path(&joined).map(|p| p.len()), Ok(2));
        assert_eq!(path(&register_with("")), Ok(Vec::new()));
        assert!(path(&register_with("Path: <sip:10.0.0.10>\r\n")).is_err());
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

    fn stamped(raw: &str, source: &str) -> Request {
        let msg = SipMessage::try_from(raw.replace('\n', "\r\n").as_str()).unwrap();
        let SipMessage::Request(r) = stamp_udp_source(msg, source.parse().unwrap()).unwrap() else {
            panic!("a request")
        };
        r
    }

    const SPOOF: &str = "INVITE sip:112@h SIP/2.0
Via: SIP/2.0/UDP 127.0.0.9:5060;received=10.0.0.1;branch=z9hG4bK1
X-Siaga-Source: 10.0.0.1:5060
x-siaga-source: 10.0.0.1:5061
From: <sip:a@h>;tag=1
To: <sip:112@h>
Call-ID: c1
CSeq: 1 INVITE
Contact: <sip:a@127.0.0.9>
Max-Forwards: 70
Content-Length: 0

";

    /// What a front says of a source reads as Kamailio writes it, for
    /// IPv4 and IPv6; anything else is no source at all.
    #[test]
    fn a_fronts_word_on_the_source() {
        use super::parse_front_source;
        assert_eq!(
            parse_front_source("sip:10.1.2.3:5062;transport=udp"),
            Some(("10.1.2.3:5062".parse().unwrap(), "udp"))
        );
        assert_eq!(
            parse_front_source(" sip:[2001:db8::1]:5060;transport=TCP "),
            Some(("[2001:db8::1]:5060".parse().unwrap(), "tcp"))
        );
        for bad in [
            "10.1.2.3:5062;transport=udp",
            "sip:10.1.2.3;transport=udp",
            "sip:10.1.2.3:5062",
            "sip:10.1.2.3:5062;transport=sctp",
            "sip:host.example:5060;transport=udp",
            "",
        ] {
            assert_eq!(parse_front_source(bad), None, "{bad}");
        }
    }

    /// Trust comes from the datagram's source, whatever the request says:
    /// a `received=` of the sender's own making (with sent-by equal to the
    /// packet's source, which rsipstack leaves alone) and a copy of our own
    /// stamp are both ignored, and the Via routes responses to the sender.
    #[test]
    fn the_source_is_the_datagrams_never_the_requests_claim() {
        let r = stamped(SPOOF, "127.0.0.9:5060");
        assert_eq!(udp_source(&r), Some("127.0.0.9:5060".parse().unwrap()));
        assert_eq!(header_values(&r, SOURCE_HEADER).count(), 1);
        let via = header_value(&r, "Via").unwrap();
        assert!(!via.contains("received"), "{via}");

        // A sent-by that differs: the Via gets the real received/rport.
        let r = stamped(
            &SPOOF.replace("127.0.0.9:5060;received=10.0.0.1", "10.0.0.1:5060;rport"),
            "127.0.0.9:40000",
        );
        assert_eq!(udp_source(&r), Some("127.0.0.9:40000".parse().unwrap()));
        let via = header_value(&r, "Via").unwrap();
        assert!(via.contains("received=127.0.0.9"), "{via}");
        assert!(via.contains("rport=40000"), "{via}");

        // A request that did not pass the reader has no source at all.
        assert_eq!(udp_source(&invite("sip:112@h")), None);
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

    /// Hostile PIDF-LO: thousands of unclosed `<gml:pos>` (the old scan
    /// searched for a close tag once per open tag), a body past the size
    /// bound, nesting past the depth bound, and a close tag that does not
    /// match: none reads a location, none panics. What comes before a
    /// fault is kept; references are resolved, not expanded.
    #[test]
    fn pidf_lo_from_a_hostile_sender() {
        let open_tags = "<gml:pos>".repeat(7_000);
        assert!(open_tags.len() > PIDF_MAX_BYTES);
        assert_eq!(parse_pidf(&open_tags), None);
        let under = "<gml:pos>".repeat(PIDF_MAX_BYTES / 9 - 1);
        assert!(under.len() <= PIDF_MAX_BYTES);
        assert_eq!(parse_pidf(&under), None);
        let deep = format!(
            "{}<gml:pos>1 2</gml:pos>{}",
            "<a>".repeat(PIDF_MAX_DEPTH),
            "</a>".repeat(PIDF_MAX_DEPTH)
        );
        assert_eq!(parse_pidf(&deep), None);
        let shallow = deep.replacen("<a>", "", 1).replacen("</a>", "", 1);
        assert_eq!(parse_pidf(&shallow).and_then(|l| l.latitude), Some(1.0));
        // A fault after the point: the point stays.
        let broken = "<p><gml:pos>-6.4 106.8</gml:pos><ca:civicAddress><ca:RD>X</ca:A1>";
        let l = parse_pidf(broken).unwrap();
        assert_eq!(
            (l.latitude, l.longitude, l.text),
            (Some(-6.4), Some(106.8), None)
        );
        // Character and predefined references, CDATA; an unknown entity
        // (no DTD is read) adds nothing.
        let civic = "<civicAddress><RD>Jl. A &amp; B &#x26; C</RD><HNO><![CDATA[12<b>]]></HNO><LOC>&bomb;</LOC></civicAddress>";
        assert_eq!(
            parse_pidf(civic).and_then(|l| l.text).as_deref(),
            Some("Jl. A & B & C, 12<b>")
        );
        for junk in [
            "",
            "<",
            "</x>",
            "<?xml",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>",
            "\u{0}<pos>",
        ] {
            assert_eq!(parse_pidf(junk), None, "{junk:?}");
        }
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

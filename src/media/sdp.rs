//! SDP offer/answer (RFC 3264) for one audio stream: G.711 (PCMA, PCMU) and
//! telephone-event (RFC 4733). No transcoding: we answer with the first
//! G.711 codec the offer lists.

use super::g711::Law;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("no audio stream in the SDP")]
    NoAudio,
    #[error("no connection address for the audio stream")]
    NoConnection,
    #[error("bad line in SDP: {0}")]
    BadLine(String),
    #[error("none of the offered codecs is PCMA or PCMU")]
    NoCommonCodec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What we learned from the remote description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAudio {
    /// Where to send RTP (`None` when the port is 0: stream rejected/held).
    pub addr: Option<SocketAddr>,
    /// Offered payload types, in the order of preference the offer gives.
    pub payloads: Vec<Payload>,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub pt: u8,
    /// Upper-case encoding name (`PCMA`, `TELEPHONE-EVENT`...).
    pub encoding: String,
    pub clock: u32,
}

/// The codec both sides use, chosen from an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub law: Law,
    pub pt: u8,
    /// telephone-event payload type, if the offer has one at 8 kHz.
    pub dtmf_pt: Option<u8>,
}

fn static_payload(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        8 => Some(("PCMA", 8000)),
        _ => None,
    }
}

/// Parses the first audio stream of a session description.
pub fn parse(body: &[u8]) -> Result<RemoteAudio, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut session_conn: Option<IpAddr> = None;
    let mut session_dir = Direction::SendRecv;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut media_conn: Option<IpAddr> = None;
    let mut media_dir: Option<Direction> = None;
    let mut rtpmaps: Vec<(u8, String, u32)> = Vec::new();
    let mut in_audio = false;
    let mut seen_audio = false;

    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (kind, value) = line
            .split_once('=')
            .ok_or_else(|| SdpError::BadLine(line.chars().take(60).collect()))?;
        match kind {
            "m" => {
                in_audio = false;
                if seen_audio {
                    continue; // only the first audio stream is ours
                }
                let mut parts = value.split_ascii_whitespace();
                let media = parts.next().unwrap_or("");
                if media != "audio" {
                    continue;
                }
                let port = parts
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| SdpError::BadLine(line.chars().take(60).collect()))?;
                let _proto = parts.next();
                let pts: Vec<u8> = parts.filter_map(|p| p.parse().ok()).collect();
                audio = Some((port, pts));
                in_audio = true;
                seen_audio = true;
            }
            "c" => {
                let addr = parse_connection(value)
                    .ok_or_else(|| SdpError::BadLine(line.chars().take(60).collect()))?;
                if in_audio {
                    media_conn = Some(addr);
                } else if !seen_audio {
                    session_conn = Some(addr);
                }
            }
            "a" => {
                let dir = match value {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                if let Some(d) = dir {
                    if in_audio {
                        media_dir = Some(d);
                    } else if !seen_audio {
                        session_dir = d;
                    }
                    continue;
                }
                if !in_audio {
                    continue;
                }
                if let Some(map) = value.strip_prefix("rtpmap:") {
                    if let Some(m) = parse_rtpmap(map) {
                        rtpmaps.push(m);
                    }
                }
            }
            _ => {}
        }
    }

    let (port, pts) = audio.ok_or(SdpError::NoAudio)?;
    let payloads = pts
        .iter()
        .filter_map(|&pt| {
            if let Some((_, enc, clock)) = rtpmaps.iter().find(|(p, _, _)| *p == pt) {
                return Some(Payload {
                    pt,
                    encoding: enc.clone(),
                    clock: *clock,
                });
            }
            static_payload(pt).map(|(enc, clock)| Payload {
                pt,
                encoding: enc.to_string(),
                clock,
            })
        })
        .collect();
    let addr = if port == 0 {
        None
    } else {
        let ip = media_conn.or(session_conn).ok_or(SdpError::NoConnection)?;
        Some(SocketAddr::new(ip, port))
    };
    Ok(RemoteAudio {
        addr,
        payloads,
        direction: media_dir.unwrap_or(session_dir),
    })
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_ascii_whitespace();
    if parts.next()? != "IN" {
        return None;
    }
    let _family = parts.next()?;
    // Multicast addresses may carry /ttl: keep the address.
    parts.next()?.split('/').next()?.parse().ok()
}

fn parse_rtpmap(s: &str) -> Option<(u8, String, u32)> {
    let (pt, rest) = s.split_once(' ')?;
    let pt = pt.trim().parse().ok()?;
    let mut enc = rest.trim().split('/');
    let name = enc.next()?.to_ascii_uppercase();
    let clock = enc.next()?.parse().ok()?;
    Some((pt, name, clock))
}

/// Picks the first G.711 payload of the offer (the offerer's preference).
pub fn negotiate(remote: &RemoteAudio) -> Result<Negotiated, SdpError> {
    let (law, pt) = remote
        .payloads
        .iter()
        .filter(|p| p.clock == 8000)
        .find_map(|p| match p.encoding.as_str() {
            "PCMA" => Some((Law::Alaw, p.pt)),
            "PCMU" => Some((Law::Ulaw, p.pt)),
            _ => None,
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = remote
        .payloads
        .iter()
        .find(|p| p.encoding == "TELEPHONE-EVENT" && p.clock == 8000)
        .map(|p| p.pt);
    Ok(Negotiated { law, pt, dtmf_pt })
}

/// Our side of the session: where we receive RTP and the session version.
#[derive(Debug, Clone, Copy)]
pub struct LocalAudio {
    pub ip: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub version: u64,
}

impl LocalAudio {
    /// A new session on `ip:port`, version 1.
    pub fn new(ip: IpAddr, port: u16) -> LocalAudio {
        LocalAudio {
            ip,
            port,
            session_id: u64::from(rand::random::<u32>()),
            version: 1,
        }
    }
}

fn origin_and_connection(local: &LocalAudio, out: &mut String) {
    let family = if local.ip.is_ipv4() { "IP4" } else { "IP6" };
    out.push_str(&format!(
        "v=0\r\no=siaga {} {} IN {family} {}\r\ns=siaga\r\nc=IN {family} {}\r\nt=0 0\r\n",
        local.session_id, local.version, local.ip, local.ip
    ));
}

/// An answer carrying exactly the negotiated codec (and telephone-event).
pub fn answer(local: &LocalAudio, n: &Negotiated, direction: Direction) -> String {
    let mut s = String::with_capacity(256);
    origin_and_connection(local, &mut s);
    let name = match n.law {
        Law::Alaw => "PCMA",
        Law::Ulaw => "PCMU",
    };
    match n.dtmf_pt {
        Some(te) => s.push_str(&format!(
            "m=audio {} RTP/AVP {} {te}\r\na=rtpmap:{} {name}/8000\r\na=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n",
            local.port, n.pt, n.pt
        )),
        None => s.push_str(&format!(
            "m=audio {} RTP/AVP {}\r\na=rtpmap:{} {name}/8000\r\n",
            local.port, n.pt, n.pt
        )),
    }
    s.push_str("a=ptime:20\r\n");
    s.push_str(direction_line(direction));
    s
}

/// Our offer, for an INVITE that came without one (the answer comes in ACK).
pub fn offer(local: &LocalAudio) -> String {
    offer_preferring(local, Law::Alaw, Direction::SendRecv)
}

/// An offer of both G.711 laws, `first` preferred: to an agent's phone we
/// offer the caller's law first, so the bridge relays without transcoding.
pub fn offer_preferring(local: &LocalAudio, first: Law, direction: Direction) -> String {
    let mut s = String::with_capacity(256);
    origin_and_connection(local, &mut s);
    let (a, b) = match first {
        Law::Alaw => ((8, "PCMA"), (0, "PCMU")),
        Law::Ulaw => ((0, "PCMU"), (8, "PCMA")),
    };
    s.push_str(&format!(
        "m=audio {} RTP/AVP {} {} 101\r\na=rtpmap:{} {}/8000\r\na=rtpmap:{} {}/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n",
        local.port, a.0, b.0, a.0, a.1, b.0, b.1
    ));
    s.push_str(direction_line(direction));
    s
}

fn direction_line(d: Direction) -> &'static str {
    match d {
        Direction::SendRecv => "a=sendrecv\r\n",
        Direction::SendOnly => "a=sendonly\r\n",
        Direction::RecvOnly => "a=recvonly\r\n",
        Direction::Inactive => "a=inactive\r\n",
    }
}

/// The direction we answer with, mirroring the offer (RFC 3264 §6.1).
/// The direction a re-offer asks for; none (or an unreadable one) is
/// sendrecv.
pub fn offered_direction(offer: Option<&[u8]>) -> Direction {
    offer
        .and_then(|b| parse(b).ok())
        .map(|r| r.direction)
        .unwrap_or(Direction::SendRecv)
}

pub fn answer_direction(offered: Direction) -> Direction {
    match offered {
        Direction::SendRecv => Direction::SendRecv,
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        Direction::Inactive => Direction::Inactive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n";

    #[test]
    fn parses_sipp_offer() {
        let r = parse(SIPP_OFFER.as_bytes()).unwrap();
        assert_eq!(r.addr, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(r.direction, Direction::SendRecv);
        let n = negotiate(&r).unwrap();
        assert_eq!(
            n,
            Negotiated {
                law: Law::Alaw,
                pt: 8,
                dtmf_pt: Some(101)
            }
        );
    }

    #[test]
    fn static_payloads_without_rtpmap_and_preference_order() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 18 0 8\r\n";
        let n = negotiate(&parse(sdp.as_bytes()).unwrap()).unwrap();
        assert_eq!(n.law, Law::Ulaw);
        assert_eq!(n.pt, 0);
        assert_eq!(n.dtmf_pt, None);
    }

    #[test]
    fn media_level_connection_and_direction_win() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\na=sendrecv\nm=video 5000 RTP/AVP 96\nm=audio 4000 RTP/AVP 8\nc=IN IP4 10.0.0.2\na=sendonly\n";
        let r = parse(sdp.as_bytes()).unwrap();
        assert_eq!(r.addr, Some("10.0.0.2:4000".parse().unwrap()));
        assert_eq!(r.direction, Direction::SendOnly);
        assert_eq!(answer_direction(r.direction), Direction::RecvOnly);
    }

    #[test]
    fn rejections() {
        assert_eq!(
            parse(b"v=0\r\nm=video 1 RTP/AVP 96\r\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            parse(b"v=0\r\nm=audio 1 RTP/AVP 8\r\n"),
            Err(SdpError::NoConnection)
        );
        assert!(matches!(parse(b"garbage"), Err(SdpError::BadLine(_))));
        assert_eq!(parse(&[0xff, 0xfe]), Err(SdpError::NotText));
        let g729 = parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 18\r\n").unwrap();
        assert_eq!(negotiate(&g729), Err(SdpError::NoCommonCodec));
        let held = parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 8\r\n").unwrap();
        assert_eq!(held.addr, None);
    }

    #[test]
    fn answer_has_one_codec_and_round_trips() {
        let local = LocalAudio {
            ip: "127.0.0.1".parse().unwrap(),
            port: 20000,
            session_id: 7,
            version: 1,
        };
        let n = Negotiated {
            law: Law::Alaw,
            pt: 8,
            dtmf_pt: Some(101),
        };
        let a = answer(&local, &n, Direction::SendRecv);
        assert!(a.contains("m=audio 20000 RTP/AVP 8 101\r\n"), "{a}");
        let back = parse(a.as_bytes()).unwrap();
        assert_eq!(negotiate(&back).unwrap(), n);
        let o = parse(offer(&local).as_bytes()).unwrap();
        assert_eq!(negotiate(&o).unwrap().law, Law::Alaw);
        let u = parse(offer_preferring(&local, Law::Ulaw, Direction::SendRecv).as_bytes()).unwrap();
        assert_eq!(negotiate(&u).unwrap().law, Law::Ulaw);
        assert_eq!(u.payloads.len(), 3);
    }
}

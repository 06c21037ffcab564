//! A raw SIP-over-UDP client for exact protocol checks (retransmission
//! timing, status codes for odd input) where a scripted tool would hide
//! the details.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub struct RawSip {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl RawSip {
    pub fn new(server: SocketAddr, bind_ip: &str) -> RawSip {
        let sock = UdpSocket::bind((bind_ip, 0)).unwrap();
        RawSip { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Asks for a receive buffer of `bytes` (as root, past
    /// `net.core.rmem_max`): a client reading a burst of answers on a
    /// busy machine must not be the one that drops them.
    pub fn receive_buffer(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        let want = bytes as libc::c_int;
        // SAFETY: a valid socket and an int-sized option read from a local.
        let set = |opt| unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&want as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set(libc::SO_RCVBUFFORCE) != 0 {
            set(libc::SO_RCVBUF);
        }
    }

    pub fn send(&self, msg: &str) {
        self.sock.send_to(msg.as_bytes(), self.server).unwrap();
    }

    pub fn send_bytes(&self, b: &[u8]) {
        self.sock.send_to(b, self.server).unwrap();
    }

    /// Every message received within `window`.
    pub fn collect(&self, window: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 65535];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => out.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).to_string(),
                )),
                Err(_) => return out,
            }
        }
    }

    /// The first message starting with `prefix` within `window`.
    pub fn wait_for(&self, prefix: &str, window: Duration) -> Option<String> {
        let end = Instant::now() + window;
        let mut buf = [0u8; 65535];
        while Instant::now() < end {
            let left = end
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left)).unwrap();
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                return None;
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text.starts_with(prefix) {
                return Some(text);
            }
        }
        None
    }

    /// The first final (non-1xx) response within `window`, as its status.
    pub fn final_status(&self, window: Duration) -> Option<(u16, String)> {
        let end = Instant::now() + window;
        let mut buf = [0u8; 65535];
        while Instant::now() < end {
            self.sock
                .set_read_timeout(Some(
                    end.saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                return None;
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(code) = status_of(&text) {
                if code >= 200 {
                    return Some((code, text));
                }
            }
        }
        None
    }
}

pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An INVITE from `local` for `user` with an A-law offer on `rtp_port`.
pub fn invite(
    local: SocketAddr,
    server: SocketAddr,
    user: &str,
    call_id: &str,
    branch: &str,
    rtp_port: u16,
) -> String {
    let sdp = format!(
        "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    format!(
        "INVITE sip:{user}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:0811111@{local}>;tag=ft-{call_id}\r\nTo: <sip:{user}@{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:0811111@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The dialog a raw client set up with `invite`: enough to send ACK/BYE.
pub struct Dialog {
    pub server: SocketAddr,
    pub local: SocketAddr,
    pub call_id: String,
    /// The To header of the 200 OK (with the server's tag).
    pub to: String,
}

impl Dialog {
    pub fn from_ok(server: SocketAddr, local: SocketAddr, call_id: &str, ok: &str) -> Dialog {
        Dialog {
            server,
            local,
            call_id: call_id.to_string(),
            to: header(ok, "To").expect("To in 200 OK").to_string(),
        }
    }

    /// An in-dialog request (ACK, BYE...) from the caller `invite` made.
    pub fn request(&self, method: &str, cseq: u32, branch: &str, body: Option<&str>) -> String {
        let (l, server, call_id, to) = (self.local, self.server, &self.call_id, &self.to);
        let (ct, body) = match body {
            Some(b) => ("Content-Type: application/sdp\r\n", b),
            None => ("", ""),
        };
        format!(
            "{method} sip:112@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:0811111@{l}>;tag=ft-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// A 200 OK answering `request` (for a BYE the server sends us).
pub fn ok_to(request: &str) -> String {
    let mut reply = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        reply.push_str(&format!(
            "{h}: {}\r\n",
            header(request, h).expect("header in request")
        ));
    }
    reply.push_str("Content-Length: 0\r\n\r\n");
    reply
}

/// A REGISTER for `user` from `local`, with an optional Authorization.
pub fn register(
    local: SocketAddr,
    server: SocketAddr,
    user: &str,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-reg-{user}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag=reg-{user}\r\nTo: <sip:{user}@{server}>\r\nCall-ID: reg-{user}-{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: 120\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// The nonce of a 401's first WWW-Authenticate.
pub fn nonce_of(challenge: &str) -> String {
    header(challenge, "WWW-Authenticate")
        .and_then(|c| c.split("nonce=\"").nth(1))
        .and_then(|c| c.split('"').next())
        .expect("a nonce in the challenge")
        .to_string()
}

/// An MD5 `Authorization` value (qop=auth) for a REGISTER to `server`,
/// computed with the library's digest functions, in realm "siaga".
pub fn register_digest(
    server: SocketAddr,
    user: &str,
    password: &str,
    nonce: &str,
    nc: &str,
) -> String {
    use siaga::sip::digest::{ha1, Algorithm};
    let uri = format!("sip:{server}");
    let h1 = ha1(Algorithm::Md5, user, "siaga", password);
    let h2 = Algorithm::Md5.hash(&format!("REGISTER:{uri}"));
    let resp = Algorithm::Md5.hash(&format!("{h1}:{nonce}:{nc}:c0ffee:auth:{h2}"));
    format!("Digest username=\"{user}\", realm=\"siaga\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\"")
}

/// Datagrams the kernel dropped at the UDP socket bound to `port` on
/// 127.0.0.1 (its receive buffer full), from `/proc/net/udp`.
pub fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        (w.get(1) == Some(&local.as_str()))
            .then(|| w.last()?.parse().ok())
            .flatten()
    })
}

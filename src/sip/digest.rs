//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//! MD5 and SHA-256, `qop=auth`, stateless nonces that expire, and `nc`
//! replay protection. Pure: time comes in as seconds.
//!
//! Accounts store HA1 = H(user:realm:password) per algorithm, never the
//! password; nothing here logs a response or an HA1.

use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn hash(self, input: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(input.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(input.as_bytes())),
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }
}

/// HA1 for an account: what `siaga agent-secret` prints and the config keeps.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash(&format!("{user}:{realm}:{password}"))
}

/// The fields of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// Parses `Digest username="..", realm="..", ...`.
pub fn parse_authorization(value: &str) -> Option<Credentials> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = Credentials::default();
    for (k, v) in split_params(params) {
        match k.to_ascii_lowercase().as_str() {
            "username" => c.username = v,
            "realm" => c.realm = v,
            "nonce" => c.nonce = v,
            "uri" => c.uri = v,
            "response" => c.response = v.to_ascii_lowercase(),
            "algorithm" => c.algorithm = Some(v),
            "qop" => c.qop = Some(v),
            "nc" => c.nc = Some(v),
            "cnonce" => c.cnonce = Some(v),
            _ => {}
        }
    }
    (!c.username.is_empty() && !c.nonce.is_empty() && !c.response.is_empty()).then_some(c)
}

/// Splits `a="x, y", b=z` respecting quotes.
fn split_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => {
                        value.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The outcome of checking credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated as this user.
    Ok(String),
    /// Right password, expired nonce: challenge again with `stale=true`.
    Stale,
    /// Wrong password, unknown user, replay, or malformed.
    Failed(&'static str),
}

/// Issues nonces and checks responses.
pub struct Authenticator {
    realm: String,
    /// Challenges offered, most preferred first.
    order: Vec<Algorithm>,
    secret: [u8; 32],
    lifetime_secs: u64,
    /// Highest `nc` seen per nonce, against replays (RFC 7616 §3.4).
    seen_nc: HashMap<String, (u64, u32)>,
}

impl Authenticator {
    pub fn new(realm: &str, secret: [u8; 32], lifetime_secs: u64) -> Authenticator {
        Authenticator {
            realm: realm.to_string(),
            order: vec![Algorithm::Sha256, Algorithm::Md5],
            secret,
            lifetime_secs,
            seen_nc: HashMap::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The challenges to offer, in order. Clients should take the topmost
    /// they support (RFC 7616 §3.7); some refuse a set holding one they do
    /// not know, hence a list rather than a fixed pair.
    pub fn with_algorithms(mut self, order: Vec<Algorithm>) -> Self {
        if !order.is_empty() {
            self.order = order;
        }
        self
    }

    fn mac(&self, issued: u64, salt: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(issued.to_be_bytes());
        h.update(salt.to_be_bytes());
        h.update(self.realm.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// A fresh nonce that proves when we issued it; no server state needed.
    /// Never the same twice: some clients take a repeated nonce as a
    /// refusal of the password they just sent.
    pub fn nonce(&self, now_secs: u64) -> String {
        let salt: u64 = rand::random();
        format!("{now_secs:x}.{salt:x}.{}", self.mac(now_secs, salt))
    }

    /// `WWW-Authenticate` values, one per algorithm, in preference order
    /// (RFC 8760 §2.4).
    pub fn challenges(&self, now_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_secs);
        let stale = if stale { ", stale=true" } else { "" };
        self.order
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                    self.realm,
                    a.name()
                )
            })
            .collect()
    }

    /// Checks `creds` for `method`; `ha1` finds the stored HA1 of a user.
    pub fn verify(
        &mut self,
        creds: &Credentials,
        method: &str,
        now_secs: u64,
        ha1: impl Fn(&str, Algorithm) -> Option<String>,
    ) -> AuthOutcome {
        if creds.realm != self.realm {
            return AuthOutcome::Failed("wrong realm");
        }
        let alg = match creds.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::parse(a) {
                Some(a) => a,
                None => return AuthOutcome::Failed("unsupported algorithm"),
            },
        };
        if !self.order.contains(&alg) {
            return AuthOutcome::Failed("algorithm not offered");
        }
        let mut parts = creds.nonce.splitn(3, '.');
        let (Some(issued_hex), Some(salt_hex), Some(mac)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return AuthOutcome::Failed("foreign nonce");
        };
        let (Ok(issued), Ok(salt)) = (
            u64::from_str_radix(issued_hex, 16),
            u64::from_str_radix(salt_hex, 16),
        ) else {
            return AuthOutcome::Failed("foreign nonce");
        };
        if !constant_time_eq(mac.as_bytes(), self.mac(issued, salt).as_bytes())
            || issued > now_secs + 5
        {
            return AuthOutcome::Failed("foreign nonce");
        }
        let Some(ha1) = ha1(&creds.username, alg) else {
            return AuthOutcome::Failed("unknown user");
        };
        let ha2 = alg.hash(&format!("{method}:{}", creds.uri));
        let expected = match creds.qop.as_deref() {
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (&creds.nc, &creds.cnonce) else {
                    return AuthOutcome::Failed("qop without nc/cnonce");
                };
                alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", creds.nonce))
            }
            Some(_) => return AuthOutcome::Failed("unsupported qop"),
            None => alg.hash(&format!("{ha1}:{}:{ha2}", creds.nonce)),
        };
        if !constant_time_eq(expected.as_bytes(), creds.response.as_bytes()) {
            return AuthOutcome::Failed("wrong response");
        }
        if now_secs.saturating_sub(issued) > self.lifetime_secs {
            return AuthOutcome::Stale;
        }
        if let Some(nc) = &creds.nc {
            let Ok(nc) = u32::from_str_radix(nc, 16) else {
                return AuthOutcome::Failed("bad nc");
            };
            let entry = self
                .seen_nc
                .entry(creds.nonce.clone())
                .or_insert((issued, 0));
            if nc <= entry.1 {
                return AuthOutcome::Failed("replayed nc");
            }
            entry.1 = nc;
        }
        let lifetime = self.lifetime_secs;
        self.seen_nc
            .retain(|_, (t, _)| now_secs.saturating_sub(*t) <= lifetime + 60);
        AuthOutcome::Ok(creds.username.clone())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new("siaga", [7u8; 32], 300)
    }

    fn respond(alg: Algorithm, nonce: &str, password: &str, nc: &str) -> Credentials {
        let ha1 = ha1(alg, "ct-01", "siaga", password);
        let ha2 = alg.hash("REGISTER:sip:127.0.0.1");
        Credentials {
            username: "ct-01".into(),
            realm: "siaga".into(),
            nonce: nonce.into(),
            uri: "sip:127.0.0.1".into(),
            response: alg.hash(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}")),
            algorithm: Some(alg.name().into()),
            qop: Some("auth".into()),
            nc: Some(nc.into()),
            cnonce: Some("abc".into()),
        }
    }

    fn store(user: &str, alg: Algorithm) -> Option<String> {
        (user == "ct-01").then(|| ha1(alg, "ct-01", "siaga", "rahasia"))
    }

    /// RFC 2617 §3.5's worked example still holds for our MD5.
    #[test]
    fn rfc2617_example() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let ha2 = Algorithm::Md5.hash("GET:/dir/index.html");
        let r = Algorithm::Md5.hash(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn both_algorithms_authenticate() {
        let mut a = auth();
        for (t, alg) in [(1000, Algorithm::Md5), (1010, Algorithm::Sha256)] {
            let n = a.nonce(t);
            let c = respond(alg, &n, "rahasia", "00000001");
            assert_eq!(
                a.verify(&c, "REGISTER", t + 1, store),
                AuthOutcome::Ok("ct-01".into())
            );
        }
    }

    #[test]
    fn wrong_password_unknown_user_and_replay_fail() {
        let mut a = auth();
        let n = a.nonce(1000);
        let bad = respond(Algorithm::Md5, &n, "salah", "00000001");
        assert_eq!(
            a.verify(&bad, "REGISTER", 1001, store),
            AuthOutcome::Failed("wrong response")
        );
        let good = respond(Algorithm::Md5, &n, "rahasia", "00000001");
        assert!(matches!(
            a.verify(&good, "REGISTER", 1001, store),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(
            a.verify(&good, "REGISTER", 1002, store),
            AuthOutcome::Failed("replayed nc")
        );
        let next = respond(Algorithm::Md5, &n, "rahasia", "00000002");
        assert!(matches!(
            a.verify(&next, "REGISTER", 1002, store),
            AuthOutcome::Ok(_)
        ));
        let mut stranger = respond(Algorithm::Md5, &n, "rahasia", "00000003");
        stranger.username = "nobody".into();
        assert_eq!(
            a.verify(&stranger, "REGISTER", 1002, store),
            AuthOutcome::Failed("unknown user")
        );
    }

    #[test]
    fn expired_nonce_is_stale_and_forged_nonce_fails() {
        let mut a = auth();
        let n = a.nonce(1000);
        let c = respond(Algorithm::Sha256, &n, "rahasia", "00000001");
        assert_eq!(
            a.verify(&c, "REGISTER", 1000 + 301, store),
            AuthOutcome::Stale
        );
        let forged = format!("{:x}.{:x}.{}", 5000u64, 7u64, "0".repeat(32));
        let c = respond(Algorithm::Sha256, &forged, "rahasia", "00000001");
        assert_eq!(
            a.verify(&c, "REGISTER", 5001, store),
            AuthOutcome::Failed("foreign nonce")
        );
    }

    #[test]
    fn nonces_are_never_repeated() {
        let a = auth();
        assert_ne!(a.nonce(1000), a.nonce(1000));
    }

    #[test]
    fn parses_authorization_header() {
        let v = r#"Digest username="ct-01", realm="siaga", nonce="5f.ab", uri="sip:127.0.0.1:5060", response="ABCDEF", algorithm=SHA-256, cnonce="x,y", qop=auth, nc=00000001"#;
        let c = parse_authorization(v).unwrap();
        assert_eq!(c.username, "ct-01");
        assert_eq!(c.uri, "sip:127.0.0.1:5060");
        assert_eq!(c.response, "abcdef");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc.as_deref(), Some("00000001"));
        assert!(parse_authorization("Basic Zm9v").is_none());
        assert!(parse_authorization("Digest realm=\"x\"").is_none());
    }

    #[test]
    fn challenges_in_preference_order() {
        let c = auth().challenges(1000, true);
        assert!(c[0].contains("algorithm=SHA-256") && c[0].contains("stale=true"));
        assert!(c[1].contains("algorithm=MD5") && c[1].contains("qop=\"auth\""));
        let c = auth()
            .with_algorithms(vec![Algorithm::Md5])
            .challenges(1000, false);
        assert_eq!(c.len(), 1);
        assert!(c[0].contains("algorithm=MD5") && !c[0].contains("stale"));
    }
}

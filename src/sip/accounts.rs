//! Agent accounts on the SIP side: REGISTER with digest authentication,
//! the guard against password guessing, and the registrar. Emergency
//! calls never come through here.

use super::digest::{parse_authorization, Algorithm, AuthOutcome, Authenticator};
use super::guard::{AuthGuard, GuardPolicy, Verdict};
use super::registrar::{Binding, Reach, RegisterError, Registrar};
use crate::config::Config;
use crate::lock;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An agent's phone became reachable, or stopped being so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEvent {
    pub agent: String,
    /// Whether the agent's phone can be rung now.
    pub reachable: bool,
    /// Whether `reachable` is news.
    pub changed: bool,
    /// After a REGISTER: the agent's bindings now, for the other nodes to
    /// learn (the database). None for an expiry or a restore.
    pub bindings: Option<Vec<Binding>>,
}

/// The outcome of checking an agent's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    Agent(String),
    /// 401 with these WWW-Authenticate values.
    Challenge(Vec<String>),
    /// The source is blocked for guessing.
    Forbidden,
}

/// What to answer a REGISTER with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterReply {
    /// 401 with these WWW-Authenticate values.
    Challenge(Vec<String>),
    /// 200 with these Contact values (`<uri>;expires=N`).
    Ok(Vec<String>),
    /// 423 with Min-Expires.
    TooBrief(u32),
    Forbidden,
    BadRequest,
}

pub struct Accounts {
    config: Arc<Config>,
    auth: Mutex<Authenticator>,
    guard: Mutex<AuthGuard>,
    registrar: Mutex<Registrar>,
    events: mpsc::UnboundedSender<RegistrationEvent>,
    started: Instant,
    epoch: u64,
}

impl Accounts {
    pub fn new(config: Arc<Config>, events: mpsc::UnboundedSender<RegistrationEvent>) -> Accounts {
        let secret: [u8; 32] = rand::random();
        let realm = config.server.sip.realm.clone();
        let offered: Vec<Algorithm> = config
            .server
            .sip
            .digest_algorithms
            .iter()
            .filter_map(|a| Algorithm::parse(a))
            .collect();
        Accounts {
            config,
            auth: Mutex::new(Authenticator::new(&realm, secret, 300).with_algorithms(offered)),
            guard: Mutex::new(AuthGuard::new(GuardPolicy::default())),
            registrar: Mutex::new(Registrar::new(60, 3600)),
            events,
            started: Instant::now(),
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    fn secs(&self, now: Instant) -> u64 {
        self.epoch + now.saturating_duration_since(self.started).as_secs()
    }

    /// How long to hold the answer to a request from `ip` (or refuse it).
    pub fn guard(&self, ip: std::net::IpAddr, now: Instant) -> Verdict {
        lock(&self.guard).check(ip, now)
    }

    /// Checks an agent's credentials on any request (digest, RFC 3261 §22).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        method: &str,
        source: SocketAddr,
        now: Instant,
    ) -> Authenticated {
        let now_secs = self.secs(now);
        let Some(creds) = authorization.and_then(parse_authorization) else {
            return Authenticated::Challenge(lock(&self.auth).challenges(now_secs, false));
        };
        let agents = &self.config.agents;
        let outcome = lock(&self.auth).verify(&creds, method, now_secs, |u, alg| {
            agents.get(u).map(|a| match alg {
                Algorithm::Md5 => a.ha1_md5.to_ascii_lowercase(),
                Algorithm::Sha256 => a.ha1_sha256.to_ascii_lowercase(),
            })
        });
        match outcome {
            AuthOutcome::Ok(u) => {
                lock(&self.guard).succeeded(source.ip());
                Authenticated::Agent(u)
            }
            AuthOutcome::Stale => {
                Authenticated::Challenge(lock(&self.auth).challenges(now_secs, true))
            }
            AuthOutcome::Failed(reason) => {
                // The reason and user are logged; never the response.
                tracing::warn!(%source, user = %creds.username, method, reason, "authentication failed");
                lock(&self.guard).failed(source.ip(), now);
                if lock(&self.guard).check(source.ip(), now) == Verdict::Blocked {
                    return Authenticated::Forbidden;
                }
                Authenticated::Challenge(lock(&self.auth).challenges(now_secs, false))
            }
        }
    }

    /// Decides a REGISTER. `user` is the To URI's user part.
    pub fn register(
        &self,
        user: &str,
        authorization: Option<&str>,
        contacts: &[String],
        expires_header: Option<u32>,
        reach: &Reach,
        now: Instant,
    ) -> RegisterReply {
        let authed = match self.authenticate(authorization, "REGISTER", reach.source, now) {
            Authenticated::Agent(u) => u,
            Authenticated::Challenge(c) => return RegisterReply::Challenge(c),
            Authenticated::Forbidden => return RegisterReply::Forbidden,
        };
        if authed != user {
            return RegisterReply::Forbidden;
        }
        let mut reg = lock(&self.registrar);
        let before = reg.lookup(user, now).is_some();
        if contacts.len() == 1 && contacts[0].trim() == "*" {
            if expires_header != Some(0) {
                return RegisterReply::BadRequest;
            }
            reg.unregister_all(user);
        } else {
            for c in contacts {
                let (uri, params) = split_contact(c);
                let expires = params
                    .iter()
                    .find_map(|p| p.strip_prefix("expires=").and_then(|v| v.parse().ok()))
                    .or(expires_header)
                    .unwrap_or(3600);
                if let Err(RegisterError::TooBrief(min)) =
                    reg.register(user, &uri, expires, reach, now)
                {
                    return RegisterReply::TooBrief(min);
                }
            }
        }
        let after = reg.lookup(user, now).is_some();
        let bindings = reg
            .bindings(user, now)
            .into_iter()
            .map(|(uri, left)| format!("<{uri}>;expires={left}"))
            .collect();
        let shared = reg.all(user, now);
        drop(reg);
        let _ = self.events.send(RegistrationEvent {
            agent: user.to_string(),
            reachable: after,
            changed: before != after,
            bindings: Some(shared),
        });
        RegisterReply::Ok(bindings)
    }

    pub fn lookup(&self, agent: &str) -> Option<Binding> {
        lock(&self.registrar).lookup(agent, Instant::now()).cloned()
    }

    /// Expires bindings; run every second or so.
    pub fn expire(&self, now: Instant) {
        for agent in lock(&self.registrar).expire(now) {
            let _ = self.events.send(RegistrationEvent {
                agent,
                reachable: false,
                changed: true,
                bindings: None,
            });
        }
    }

    /// Takes the bindings other nodes made (a node that starts leading);
    /// an agent of theirs not reachable here before is reachable now.
    pub fn restore(&self, bindings: Vec<(String, Binding)>) {
        let now = Instant::now();
        let mut reg = lock(&self.registrar);
        let mut news = Vec::new();
        for (agent, binding) in bindings {
            if binding.expires_at <= now || !self.config.agents.contains_key(&agent) {
                continue;
            }
            let before = reg.lookup(&agent, now).is_some();
            reg.restore(&agent, binding);
            if !before && !news.contains(&agent) {
                news.push(agent);
            }
        }
        drop(reg);
        for agent in news {
            let _ = self.events.send(RegistrationEvent {
                agent,
                reachable: true,
                changed: true,
                bindings: None,
            });
        }
    }
}

/// `<sip:a@b;transport=udp>;expires=60` -> (`sip:a@b;transport=udp`, [`expires=60`]).
pub fn split_contact(c: &str) -> (String, Vec<String>) {
    let c = c.trim();
    let (uri, rest) = match (c.find('<'), c.find('>')) {
        (Some(a), Some(b)) if a < b => (c[a + 1..b].to_string(), &c[b + 1..]),
        _ => match c.split_once(';') {
            Some((u, r)) => (u.to_string(), r),
            None => (c.to_string(), ""),
        },
    };
    let params = rest
        .split(';')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    (uri, params)
}

/// Splits a Contact header value into its contacts (commas outside <>).
pub fn split_contacts(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut quoted = false;
    let mut cur = String::new();
    for ch in v.chars() {
        match ch {
            '"' if depth == 0 => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Spawns the task that expires registrations.
pub fn spawn_expiry(accounts: Arc<Accounts>, cancel: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => accounts.expire(Instant::now()),
                _ = cancel.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts() {
        assert_eq!(
            split_contacts("<sip:a@1.2.3.4;transport=udp>;expires=60, \"B, C\" <sip:b@h>"),
            vec![
                "<sip:a@1.2.3.4;transport=udp>;expires=60".to_string(),
                "\"B, C\" <sip:b@h>".to_string()
            ]
        );
        assert_eq!(
            split_contact("<sip:a@1.2.3.4;transport=udp>;Expires=60;+sip.instance=\"x\""),
            (
                "sip:a@1.2.3.4;transport=udp".to_string(),
                vec!["expires=60".to_string(), "+sip.instance=\"x\"".to_string()]
            )
        );
        assert_eq!(
            split_contact("sip:a@h;expires=0"),
            ("sip:a@h".to_string(), vec!["expires=0".to_string()])
        );
    }
}

//! The registrar (RFC 3261 §10): where each agent's phone can be reached.
//! Pure: time comes in as an argument. One binding per contact URI; an
//! agent is reachable while at least one binding is unexpired.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where to send an INVITE for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub contact: String,
    /// The address the REGISTER came from (NAT-safe target).
    pub source: SocketAddr,
    pub transport: &'static str,
    /// The REGISTER's Path (RFC 3327), as received: the proxies (our SIP
    /// front) a request to this contact goes through, first hop first. Kept
    /// only from a front; empty for a phone that registered straight here.
    pub path: Vec<String>,
    pub expires_at: Instant,
}

/// Where a REGISTER came from: what its bindings are reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub source: SocketAddr,
    pub transport: &'static str,
    pub path: Vec<String>,
}

/// Most contacts one agent may have bound at once (a desk phone, a
/// softphone, a spare). A new one past this takes the place of the one
/// that expires soonest: an agent binding thousands (once, 9,000, after
/// which the real phone's REGISTER got no 200: the answer lists every
/// binding) only pushes out its own.
pub const MAX_BINDINGS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// 423 Interval Too Brief, with our minimum.
    TooBrief(u32),
}

#[derive(Debug)]
pub struct Registrar {
    bindings: HashMap<String, Vec<Binding>>,
    min_expires: u32,
    max_expires: u32,
}

impl Registrar {
    pub fn new(min_expires: u32, max_expires: u32) -> Registrar {
        Registrar {
            bindings: HashMap::new(),
            min_expires,
            max_expires,
        }
    }

    /// Adds or refreshes a binding, or removes it when `expires` is 0.
    /// Returns the granted expiry in seconds.
    pub fn register(
        &mut self,
        agent: &str,
        contact: &str,
        expires: u32,
        reach: &Reach,
        now: Instant,
    ) -> Result<u32, RegisterError> {
        let list = self.bindings.entry(agent.to_string()).or_default();
        list.retain(|b| b.contact != contact && b.expires_at > now);
        if expires == 0 {
            if list.is_empty() {
                self.bindings.remove(agent);
            }
            return Ok(0);
        }
        if expires < self.min_expires {
            return Err(RegisterError::TooBrief(self.min_expires));
        }
        let granted = expires.min(self.max_expires);
        if list.len() >= MAX_BINDINGS {
            if let Some(soonest) = (0..list.len()).min_by_key(|&i| list[i].expires_at) {
                list.swap_remove(soonest);
            }
        }
        list.push(Binding {
            contact: contact.to_string(),
            source: reach.source,
            transport: reach.transport,
            path: reach.path.clone(),
            expires_at: now + Duration::from_secs(u64::from(granted)),
        });
        Ok(granted)
    }

    /// Every unexpired binding of an agent.
    pub fn all(&self, agent: &str, now: Instant) -> Vec<Binding> {
        self.bindings
            .get(agent)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a binding another node made (kept in the database): it
    /// replaces one of the same contact only if it lasts longer.
    pub fn restore(&mut self, agent: &str, binding: Binding) {
        let list = self.bindings.entry(agent.to_string()).or_default();
        match list.iter().position(|b| b.contact == binding.contact) {
            Some(i) if list[i].expires_at < binding.expires_at => list[i] = binding,
            Some(_) => {}
            None if list.len() < MAX_BINDINGS => list.push(binding),
            None => {}
        }
    }

    /// `Contact: *` with `Expires: 0`.
    pub fn unregister_all(&mut self, agent: &str) {
        self.bindings.remove(agent);
    }

    /// The freshest binding of an agent, if any is unexpired.
    pub fn lookup(&self, agent: &str, now: Instant) -> Option<&Binding> {
        self.bindings
            .get(agent)?
            .iter()
            .filter(|b| b.expires_at > now)
            .max_by_key(|b| b.expires_at)
    }

    /// Current bindings of an agent with their remaining seconds.
    pub fn bindings(&self, agent: &str, now: Instant) -> Vec<(String, u64)> {
        self.bindings
            .get(agent)
            .map(|l| {
                l.iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| {
                        (
                            b.contact.clone(),
                            b.expires_at.duration_since(now).as_secs(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops expired bindings; returns agents left with none.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.bindings.retain(|agent, list| {
            list.retain(|b| b.expires_at > now);
            if list.is_empty() {
                gone.push(agent.clone());
                false
            } else {
                true
            }
        });
        gone.sort();
        gone
    }

    /// When `expire` next has work.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.bindings.values().flatten().map(|b| b.expires_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Reach {
        via("udp")
    }

    fn via(transport: &'static str) -> Reach {
        Reach {
            source: "127.0.0.1:5080".parse().unwrap(),
            transport,
            path: Vec::new(),
        }
    }

    /// Nine thousand contacts from one agent keep at most MAX_BINDINGS;
    /// the phone that registers next is bound (the soonest to expire made
    /// way) and is the one calls go to.
    /// A binding from the database takes its place unless this node
    /// holds a fresher one of the same contact.
    #[test]
    fn a_restored_binding_never_replaces_a_fresher_one() {
        let t0 = Instant::now();
        let mut r = Registrar::new(60, 3600);
        let theirs = |contact: &str, secs: u64| Binding {
            contact: contact.into(),
            source: "10.0.0.7:5060".parse().unwrap(),
            transport: "udp",
            path: vec!["<sip:10.0.0.10;lr>".into()],
            expires_at: t0 + Duration::from_secs(secs),
        };
        r.restore("ct-01", theirs("sip:ct-01@10.0.0.7", 600));
        assert_eq!(
            r.lookup("ct-01", t0),
            Some(&theirs("sip:ct-01@10.0.0.7", 600))
        );
        r.register("ct-01", "sip:ct-01@10.0.0.7", 3600, &addr(), t0)
            .unwrap();
        r.restore("ct-01", theirs("sip:ct-01@10.0.0.7", 600));
        let now = r.all("ct-01", t0);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].expires_at, t0 + Duration::from_secs(3600));
        assert!(now[0].path.is_empty(), "this node's own binding stays");
        r.restore("ct-01", theirs("sip:ct-01@10.0.0.7", 7200));
        assert_eq!(r.all("ct-01", t0)[0].path.len(), 1, "a longer one wins");
        assert!(r.all("ct-01", t0 + Duration::from_secs(7200)).is_empty());
    }

    #[test]
    fn an_agent_cannot_bind_without_bound() {
        let t0 = Instant::now();
        let mut r = Registrar::new(60, 3600);
        for i in 0..9_000u32 {
            let contact = format!("sip:junk{i}@10.9.9.9");
            r.register("ct-01", &contact, 3600, &addr(), t0).unwrap();
        }
        assert_eq!(r.bindings("ct-01", t0).len(), MAX_BINDINGS);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            r.register("ct-01", "sip:ct-01@1.2.3.4", 3600, &addr(), later),
            Ok(3600)
        );
        let now = r.bindings("ct-01", later);
        assert_eq!(now.len(), MAX_BINDINGS);
        assert!(now.iter().any(|(c, _)| c == "sip:ct-01@1.2.3.4"));
        assert_eq!(
            r.lookup("ct-01", later).map(|b| b.contact.as_str()),
            Some("sip:ct-01@1.2.3.4")
        );
    }

    #[test]
    fn register_refresh_expire() {
        let t0 = Instant::now();
        let mut r = Registrar::new(60, 3600);
        assert_eq!(
            r.register("ct-01", "sip:ct-01@1.2.3.4", 7200, &addr(), t0),
            Ok(3600)
        );
        assert_eq!(
            r.register("ct-01", "sip:ct-01@1.2.3.4", 30, &addr(), t0),
            Err(RegisterError::TooBrief(60))
        );
        assert_eq!(
            r.register("ct-01", "sip:ct-01@1.2.3.4", 120, &addr(), t0),
            Ok(120)
        );
        assert_eq!(
            r.bindings("ct-01", t0).len(),
            1,
            "a refresh replaces, not adds"
        );
        assert!(r.lookup("ct-01", t0 + Duration::from_secs(119)).is_some());
        assert!(r.lookup("ct-01", t0 + Duration::from_secs(120)).is_none());
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(120)));
        assert_eq!(
            r.expire(t0 + Duration::from_secs(121)),
            vec!["ct-01".to_string()]
        );
        assert!(r.expire(t0 + Duration::from_secs(122)).is_empty());
    }

    #[test]
    fn zero_expires_and_wildcard_remove() {
        let t0 = Instant::now();
        let mut r = Registrar::new(60, 3600);
        r.register("a", "sip:a@x", 300, &addr(), t0).unwrap();
        r.register("a", "sip:a@y", 600, &via("tcp"), t0).unwrap();
        assert_eq!(
            r.lookup("a", t0).unwrap().contact,
            "sip:a@y",
            "freshest binding first"
        );
        assert_eq!(r.register("a", "sip:a@y", 0, &via("tcp"), t0), Ok(0));
        assert_eq!(r.lookup("a", t0).unwrap().contact, "sip:a@x");
        r.unregister_all("a");
        assert!(r.lookup("a", t0).is_none());
    }
}

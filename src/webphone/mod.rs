//! The browser softphone: agents without a desk phone take calls in the
//! panel.
//!
//! A panel tab turns its phone on over the live WebSocket (`phone_on`);
//! from then on the agent is reachable (`acd::Reach::Browser`) until the
//! tab goes away, and the ACD offers them calls like any agent. A call
//! that rings a browser agent gets a [`BrowserLeg`] instead of a SIP leg:
//! a gateway (see `gateway.rs`) that speaks WebRTC to the browser (ICE,
//! DTLS-SRTP, offered by us with the caller's G.711 law only) and plain
//! RTP on loopback to the call's media session, so the session relays,
//! records, holds and transfers exactly as for a SIP phone. Payloads pass
//! untouched; only payload types and the SSRC are rewritten.
//!
//! Signalling, all JSON on the tab's socket:
//!
//! - tab → us: `phone_on`, `phone_off`, `answer {leg, sdp}`,
//!   `decline {leg, reason}`, `hangup {leg}`, `hold {leg, on}`;
//! - us → tab: `phone {on, reason}`, `incoming {leg, sdp, ...}` (our offer,
//!   ICE candidates gathered in it), `ended {leg, reason}`.
//!
//! A tab that closes or reloads takes its phone with it: a call ringing
//! there goes to the next agent (and this agent is set not ready), a call
//! in progress goes back to the front of its queue: a dead browser never
//! holds a ringing state, nor drops a caller.

mod gateway;

pub use gateway::BrowserLeg;

use crate::acd::runtime::AcdHandle;
use crate::acd::Reach;
use crate::lock;
use crate::media::ports::RtpSocket;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;

/// What a tab says about one of its calls.
#[derive(Debug)]
pub(crate) enum FromTab {
    /// The browser's SDP answer to our offer.
    Answer(String),
    /// Not taken, and why (the agent's button, or a microphone refused).
    Decline(String),
    Hangup,
    Hold(bool),
    /// The tab closed, reloaded or handed its phone to another tab.
    Gone,
}

/// How browsers reach our media.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ice_ip: IpAddr,
    pub ice_servers: Vec<String>,
    pub connect_timeout: Duration,
}

struct Tab {
    id: u64,
    to_tab: mpsc::UnboundedSender<Value>,
    legs: HashMap<u64, mpsc::UnboundedSender<FromTab>>,
}

impl Tab {
    /// The tab is gone: each of its calls hears it.
    fn lose_calls(&self) {
        for leg in self.legs.values() {
            let _ = leg.send(FromTab::Gone);
        }
    }
}

struct Inner {
    tabs: Mutex<HashMap<String, Tab>>,
    next: AtomicU64,
    acd: AcdHandle,
    settings: Settings,
}

/// The browser phones of the agents whose panel has one on.
#[derive(Clone)]
pub struct Phones(Arc<Inner>);

/// What the tab shows while a call rings there.
pub struct Ring {
    /// The SDP offer the call made for this agent (plain RTP).
    pub offer: String,
    /// Where the call's media session receives this agent's RTP.
    pub call_side: SocketAddr,
    /// The gateway's plain RTP socket (pooled like every RTP port).
    pub socket: RtpSocket,
    pub caller_number: String,
    pub incident_id: String,
    /// What the tab's ringing banner says: the number dialled's service
    /// (112, 119), where the caller is as far as known, and how long they
    /// have waited (the tab counts on from there on its own clock).
    pub service: String,
    pub location: Option<String>,
    pub waited_ms: u64,
    /// The caller pressed 5 twice.
    pub silent_emergency: bool,
    /// Prank calls from the number lately, if a repeat prank caller.
    pub pranks: u32,
}

/// Where a socket bound to `ip` is reached from this host: itself, or
/// loopback for a wildcard (`0.0.0.0`, `::`), which no packet comes from.
pub fn reachable_here(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

impl Phones {
    pub fn new(acd: AcdHandle, settings: Settings) -> Phones {
        Phones(Arc::new(Inner {
            tabs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            acd,
            settings,
        }))
    }

    fn next_id(&self) -> u64 {
        self.0.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The tab becomes `agent`'s phone; what it must be told comes out of
    /// the receiver. A tab that had the phone before loses it (and its
    /// calls, as if closed): one agent, one browser phone.
    pub fn attach(&self, agent: &str) -> (u64, mpsc::UnboundedReceiver<Value>) {
        let (to_tab, rx) = mpsc::unbounded_channel();
        let id = self.next_id();
        let _ = to_tab.send(json!({ "type": "phone", "on": true }));
        let old = lock(&self.0.tabs).insert(
            agent.to_string(),
            Tab {
                id,
                to_tab,
                legs: HashMap::new(),
            },
        );
        match old {
            Some(old) => {
                info!(%agent, "browser phone moved to another tab");
                let _ = old.to_tab.send(json!({
                    "type": "phone", "on": false,
                    "reason": "Telepon browser dipindah ke tab lain",
                }));
                old.lose_calls();
            }
            None => {
                info!(%agent, "browser phone on");
                self.0
                    .acd
                    .reachable(agent.to_string(), Reach::Browser, true);
            }
        }
        (id, rx)
    }

    /// The tab's phone is off (or the tab is gone). Its calls learn it; the
    /// agent is no longer reachable by browser.
    pub fn detach(&self, agent: &str, tab: u64) {
        let gone = {
            let mut tabs = lock(&self.0.tabs);
            match tabs.get(agent) {
                Some(t) if t.id == tab => tabs.remove(agent),
                _ => None,
            }
        };
        if let Some(t) = gone {
            info!(%agent, calls = t.legs.len(), "browser phone off");
            t.lose_calls();
            self.0
                .acd
                .reachable(agent.to_string(), Reach::Browser, false);
        }
    }

    /// Whether `agent` has a browser phone on: calls ring it there.
    pub fn has(&self, agent: &str) -> bool {
        lock(&self.0.tabs).contains_key(agent)
    }

    /// A message from the tab about one of its calls. An error is for the
    /// tab (a stale or unknown leg, a malformed message).
    pub fn from_tab(&self, agent: &str, tab: u64, msg: &Value) -> Result<(), String> {
        let leg = msg["leg"]
            .as_u64()
            .ok_or_else(|| "message without `leg`".to_string())?;
        let what = match msg["type"].as_str().unwrap_or_default() {
            "answer" => FromTab::Answer(
                msg["sdp"]
                    .as_str()
                    .ok_or_else(|| "answer without `sdp`".to_string())?
                    .to_string(),
            ),
            "decline" => FromTab::Decline(msg["reason"].as_str().unwrap_or("declined").to_string()),
            "hangup" => FromTab::Hangup,
            "hold" => FromTab::Hold(msg["on"].as_bool().unwrap_or(false)),
            other => return Err(format!("unknown phone message `{other}`")),
        };
        let tabs = lock(&self.0.tabs);
        let sender = tabs
            .get(agent)
            .filter(|t| t.id == tab)
            .and_then(|t| t.legs.get(&leg))
            .ok_or_else(|| format!("no call {leg} on this phone"))?;
        let _ = sender.send(what);
        Ok(())
    }

    /// Rings `agent`'s browser: the gateway makes its offer, sends it to
    /// the tab, and reports like a SIP leg from then on.
    pub fn ring(&self, agent: &str, ring: Ring) -> Result<BrowserLeg, &'static str> {
        let offer = crate::media::sdp::parse(ring.offer.as_bytes())
            .and_then(|r| crate::media::sdp::negotiate(&r))
            .map_err(|_| "the call's offer has no G.711")?;
        let leg = self.next_id();
        let (tab_tx, tab_rx) = mpsc::unbounded_channel();
        let to_tab = {
            let mut tabs = lock(&self.0.tabs);
            let t = tabs.get_mut(agent).ok_or("no browser phone")?;
            t.legs.insert(leg, tab_tx);
            t.to_tab.clone()
        };
        info!(%agent, leg, "ringing the agent's browser");
        Ok(gateway::start(gateway::Gateway {
            phones: self.clone(),
            agent: agent.to_string(),
            leg,
            settings: self.0.settings.clone(),
            to_tab,
            from_tab: tab_rx,
            offer,
            ring,
        }))
    }

    /// A call's leg is over: the tab's messages about it have nowhere to go.
    fn forget(&self, agent: &str, leg: u64) {
        if let Some(t) = lock(&self.0.tabs).get_mut(agent) {
            t.legs.remove(&leg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acd::Acd;
    use crate::config::AgentConfig;
    use std::collections::BTreeMap;

    fn phones() -> Phones {
        let agents: BTreeMap<String, AgentConfig> = [(
            "ct-01".to_string(),
            AgentConfig {
                id: "ct-01".into(),
                name: "Siti".into(),
                agency: "ntpd".into(),
                skills: Default::default(),
                ha1_md5: String::new(),
                ha1_sha256: String::new(),
            },
        )]
        .into();
        let acd = AcdHandle::spawn(Acd::new(
            &BTreeMap::new(),
            &agents,
            std::time::Instant::now(),
        ));
        Phones::new(
            acd,
            Settings {
                ice_ip: "127.0.0.1".parse().unwrap(),
                ice_servers: vec![],
                connect_timeout: Duration::from_secs(1),
            },
        )
    }

    async fn browser_reachable(p: &Phones) -> bool {
        p.0.acd.agents().await[0].browser
    }

    #[test]
    fn a_wildcard_rtp_address_is_reached_on_loopback() {
        let here = |s: &str| reachable_here(s.parse().unwrap()).to_string();
        assert_eq!(here("0.0.0.0"), "127.0.0.1");
        assert_eq!(here("::"), "::1");
        assert_eq!(here("10.0.0.5"), "10.0.0.5");
    }

    #[tokio::test]
    async fn a_tab_makes_the_agent_reachable_until_it_goes() {
        let p = phones();
        assert!(!p.has("ct-01"));
        let (tab, mut rx) = p.attach("ct-01");
        assert_eq!(rx.recv().await.unwrap()["on"], true);
        assert!(p.has("ct-01"));
        assert!(browser_reachable(&p).await);
        p.detach("ct-01", tab + 100);
        assert!(p.has("ct-01"), "another tab's id changes nothing");
        p.detach("ct-01", tab);
        assert!(!p.has("ct-01"));
        assert!(!browser_reachable(&p).await);
    }

    #[tokio::test]
    async fn a_second_tab_takes_the_phone_and_the_first_is_told_why() {
        let p = phones();
        let (first, mut rx1) = p.attach("ct-01");
        let (_second, mut rx2) = p.attach("ct-01");
        assert_eq!(rx1.recv().await.unwrap()["on"], true);
        let off = rx1.recv().await.unwrap();
        assert_eq!(off["on"], false);
        assert!(off["reason"].as_str().unwrap().contains("tab lain"));
        assert!(rx1.recv().await.is_none(), "the first tab has no phone now");
        assert_eq!(rx2.recv().await.unwrap()["on"], true);
        // The first tab closing later does not take the second's phone.
        p.detach("ct-01", first);
        assert!(p.has("ct-01"));
        assert!(browser_reachable(&p).await);
    }

    #[tokio::test]
    async fn messages_for_no_call_or_of_no_kind_are_refused() {
        let p = phones();
        let (tab, _rx) = p.attach("ct-01");
        let e = p
            .from_tab("ct-01", tab, &json!({ "type": "hangup", "leg": 7 }))
            .unwrap_err();
        assert!(e.contains("no call 7"), "{e}");
        let e = p
            .from_tab("ct-01", tab, &json!({ "type": "dance", "leg": 7 }))
            .unwrap_err();
        assert!(e.contains("unknown"), "{e}");
        let e = p
            .from_tab("ct-01", tab, &json!({ "type": "answer", "leg": 7 }))
            .unwrap_err();
        assert!(e.contains("sdp"), "{e}");
        assert!(p
            .from_tab("ct-01", tab, &json!({ "type": "hangup" }))
            .is_err());
    }
}

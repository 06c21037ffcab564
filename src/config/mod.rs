//! Reads and checks `sip-config/` and `dialplans/`.
//!
//! Every error names the file, the key and what was expected, because the
//! person reading it is an operator at 3 a.m., not the author.

mod cidr;
pub mod dialplan;

pub use cidr::Cidr;
pub use dialplan::{Dialplan, DialplanMatch, Route};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: which file, which key, what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: TOML syntax error{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Syntax {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    fn invalid(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `sip-config/siaga.toml`: the server itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub sip: SipSection,
    pub media: MediaSection,
    /// The panel's browser softphone (WebRTC); defaults work on a LAN.
    #[serde(default)]
    pub webphone: WebphoneSection,
    /// What siaga decides about a call's kind by itself.
    #[serde(default)]
    pub dispositions: DispositionsSection,
    pub http: HttpSection,
    pub database: DatabaseSection,
    /// This node among the nodes sharing one PostgreSQL (leader/standby).
    /// Absent: one node, which always leads.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    #[serde(default, rename = "trunk")]
    pub trunks: Vec<Trunk>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSection {
    /// UDP listen addresses.
    #[serde(default)]
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
    /// The address peers should use to reach us (Contact, SDP `c=`).
    pub public_ip: IpAddr,
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Digest realm for agent accounts (their HA1s depend on it).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Digest algorithms offered to agent phones, most preferred first:
    /// "SHA-256", "MD5" (RFC 8760 order by default).
    #[serde(default = "default_digest_algorithms")]
    pub digest_algorithms: Vec<String>,
    /// On SIGTERM, how long calls in progress may go on before they are
    /// ended; new calls are refused with 503 meanwhile, so trunks fail over.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most calls one source may have answered and not yet confirmed by
    /// an ACK (each holds an RTP port until then); past it, its new
    /// INVITEs get 503 (`sip::unconfirmed`). Unset: half the RTP port
    /// pool, so no one source can take all of it from the others, while a
    /// proxy in front (all calls from one address) still has room for
    /// every call it sets up at once. See `SipSection::unconfirmed_bound`.
    #[serde(default)]
    pub unconfirmed_per_source: Option<usize>,
    /// A SIP/TCP connection that sends nothing for this long is closed.
    /// Phones on TCP keep theirs open with CRLF keep-alives (RFC 5626) or
    /// their REGISTER refreshes; keep this above both.
    #[serde(default = "default_tcp_idle_timeout", with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// The SIP fronts (Kamailio, `sip-config/kamailio/`) that relay
    /// requests to this node, each as the address it sends from. Only a
    /// request from one of them is believed when it says where it really
    /// came from (`X-Front-Source`); trunks, the guard and the records then
    /// use that source. Over TCP a front connects from a port of its
    /// choosing, so there its address is matched without the port.
    #[serde(default)]
    pub fronts: Vec<SocketAddr>,
}

impl SipSection {
    /// Whether a request that arrived from `from` over `transport` came
    /// from one of `fronts`.
    pub fn is_front(&self, from: SocketAddr, transport: &str) -> bool {
        self.fronts
            .iter()
            .any(|f| f.ip() == from.ip() && (transport == "tcp" || f.port() == from.port()))
    }
}

fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_digest_algorithms() -> Vec<String> {
    vec!["SHA-256".into(), "MD5".into()]
}

fn default_realm() -> String {
    "siaga".into()
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_user_agent() -> String {
    format!("siaga/{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    /// Local address RTP sockets bind to.
    pub rtp_ip: IpAddr,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Folder of 8 kHz mono 16-bit WAV prompts (see `scripts/make-prompts`).
    pub prompts_dir: PathBuf,
    pub recordings_dir: PathBuf,
    /// Hang up a call whose caller sent no RTP for this long after answer
    /// (a dead trunk leg must not hold a queue place forever).
    #[serde(default = "default_rtp_timeout", with = "humantime_serde")]
    pub rtp_timeout: Duration,
    /// At most this many MiB of recorded audio wait in memory for the
    /// disk; past that, audio is left out of recordings (silence stands
    /// in, each call's record says how much) rather than memory growing
    /// until the process is killed with every call. 512 MiB is 16 s of a
    /// hung disk at 1,000 calls.
    #[serde(default = "default_recording_queue_mib")]
    pub recording_queue_mib: usize,
}

/// `[dispositions]`: the kinds of call siaga classifies by itself, which a
/// call-taker can change (every change audited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionsSection {
    /// A caller who hangs up within this of arriving, before any agent
    /// answered, is a ghost call: its incident is closed as `ghost` (if
    /// no one has classified it yet). "0s": never.
    #[serde(default = "default_ghost_within", with = "humantime_serde")]
    pub ghost_hang_up_within: Duration,
    /// A call whose line carried nothing at all, the whole call (no sound
    /// above about -55 dBFS, no key), is a ghost call too, answered or
    /// not: an open line with no one on it. A caller who breathes, or a
    /// room that can be heard, is not (that may be a silent caller).
    #[serde(default = "default_true")]
    pub ghost_without_audio: bool,
    /// A number with at least this many calls classified as pranks in the
    /// last `prank_window` is a repeat prank caller: still answered,
    /// greeted and recorded, but waiting behind every other caller, with
    /// a badge on the call-taker's screen. 0: never.
    #[serde(default = "default_prank_repeat")]
    pub prank_repeat: u32,
    #[serde(default = "default_prank_window", with = "humantime_serde")]
    pub prank_window: Duration,
}

impl Default for DispositionsSection {
    fn default() -> Self {
        DispositionsSection {
            ghost_hang_up_within: default_ghost_within(),
            ghost_without_audio: true,
            prank_repeat: default_prank_repeat(),
            prank_window: default_prank_window(),
        }
    }
}

fn default_prank_repeat() -> u32 {
    3
}

fn default_prank_window() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_ghost_within() -> Duration {
    Duration::from_secs(5)
}

/// `[webphone]`: how browsers reach our media (ICE over UDP, DTLS-SRTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebphoneSection {
    /// The address our ICE candidates carry: one the agents' browsers can
    /// reach. Default: `media.rtp_ip`.
    #[serde(default)]
    pub ice_ip: Option<IpAddr>,
    /// STUN/TURN servers (`stun:host:port`, `turn:host:port`) for browsers
    /// outside the command room's network; none by default.
    #[serde(default)]
    pub ice_servers: Vec<String>,
    /// After the agent answers, how long ICE and DTLS may take before the
    /// call is given to the next agent.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for WebphoneSection {
    fn default() -> Self {
        WebphoneSection {
            ice_ip: None,
            ice_servers: Vec::new(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_rtp_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_recording_queue_mib() -> usize {
    512
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
    /// How long a panel login lasts (one shift and some).
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (sent over HTTPS only; browsers
    /// also send it to http://localhost and http://127.0.0.1). Turn off
    /// only for a plain-HTTP panel on a closed network.
    #[serde(default = "default_true")]
    pub secure_cookies: bool,
    /// The center's time zone, for "today" in the figures: WIB is 7,
    /// WITA 8, WIT 9.
    #[serde(default = "default_utc_offset")]
    pub utc_offset_hours: i8,
    /// The host names the panel answers to (the `Host` a browser sends,
    /// without its port). A name not listed gets 421: a page from another
    /// site whose name was made to point here (DNS rebinding) reaches
    /// nothing. Empty (the default): the listen address and `localhost`;
    /// with an unspecified listen address (0.0.0.0), any IP address too.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Most panel connections open at once (browsers, API clients); one
    /// past this is closed at once. Lowered at start when the open-file
    /// limit leaves less room beside SIP and media (`web::serve`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request's head must arrive within this; a keep-alive connection
    /// idle this long is closed too.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request must be answered within this.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_max_connections() -> usize {
    512
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ServerFile {
    /// This node's name (`cluster.node`; `siaga-1` for a node alone).
    pub fn node(&self) -> &str {
        self.cluster.as_ref().map_or(LONE_NODE, |c| c.node.as_str())
    }

    /// `sip.unconfirmed_per_source`, or half the RTP port pool.
    pub fn unconfirmed_bound(&self) -> usize {
        self.sip.unconfirmed_per_source.unwrap_or_else(|| {
            let ports =
                (usize::from(self.media.rtp_port_max) - usize::from(self.media.rtp_port_min)) / 2
                    + 1;
            (ports / 2).max(1)
        })
    }
}

impl HttpSection {
    /// Whether a request's `Host` (with or without a port) is one the
    /// panel answers to (`allowed_hosts`).
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            }),
        };
        if name.is_empty() {
            return false;
        }
        if !self.allowed_hosts.is_empty() {
            return self
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name));
        }
        let listen = self.listen.ip();
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == listen || listen.is_unspecified(),
            Err(_) => name.eq_ignore_ascii_case("localhost"),
        }
    }
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(14 * 3600)
}

fn default_true() -> bool {
    true
}

fn default_utc_offset() -> i8 {
    7
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://path?mode=rwc` (embedded default) or `postgres://...`.
    pub url: String,
    /// Where call records wait, durable, until the database has them
    /// (`store::journal`): on this node's own disk, never shared.
    #[serde(default = "default_journal_dir")]
    pub journal_dir: PathBuf,
}

/// Leadership among the nodes that share one PostgreSQL: one of them (the
/// leader) takes calls; the others stand by, ready, and answer 503 until
/// the leader's lease runs out. Without the section there is one node,
/// always leading (SQLite, or PostgreSQL with no standby).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's name, unique among the nodes: its calls are on record
    /// under it, and only it (or the node that takes its lease over)
    /// closes them.
    #[serde(default = "default_node")]
    pub node: String,
    /// How long a lease lasts on the database's clock; a leader that has
    /// not renewed it for that long stops taking calls, and another node
    /// may take it.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How often the lease is renewed (or, standing by, tried).
    #[serde(default = "default_renew", with = "humantime_serde")]
    pub renew: Duration,
}

/// The name of a node without a `[cluster]` section.
const LONE_NODE: &str = "siaga-1";

fn default_node() -> String {
    LONE_NODE.into()
}

fn default_lease() -> Duration {
    Duration::from_secs(3)
}

fn default_renew() -> Duration {
    Duration::from_secs(1)
}

fn default_journal_dir() -> PathBuf {
    PathBuf::from("data/journal")
}

/// A telco gateway (or a trusted network) allowed to deliver emergency calls
/// without authentication (RFC 6881 practice).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    pub name: String,
    pub sources: Vec<Cidr>,
    /// Where calls out through this trunk go (call-backs), with `{number}`
    /// standing for the number to call: `sip:{number}@10.1.2.3:5060`.
    pub outbound: Option<String>,
}

/// `sip-config/agencies.toml`: the agencies incidents are handed to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgenciesFile {
    #[serde(default, rename = "agency")]
    pub agencies: Vec<AgencyConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyConfig {
    /// polri, damkar, psc119... (what agents' `agency` names).
    pub id: String,
    /// As the panel shows it.
    pub name: String,
    /// The queue of its dispatchers: warm transfers to this agency ring
    /// there. Without one, incidents can be assigned to the agency but
    /// calls cannot be transferred to it.
    #[serde(default)]
    pub queue: Option<String>,
    /// How long a transfer may ring its dispatchers before the call-taker
    /// is told and gets the caller back.
    #[serde(default = "default_transfer_timeout", with = "humantime_serde")]
    pub transfer_timeout: Duration,
}

/// The agency whose id is `user`, when it has a dispatcher queue to take
/// transfers: the user part of a REFER target or of a consultation INVITE.
pub fn transfer_agency(user: &str, agencies: &[AgencyConfig]) -> Option<String> {
    agencies
        .iter()
        .find(|a| a.id == user && a.queue.is_some())
        .map(|a| a.id.clone())
}

fn default_transfer_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `sip-config/queues.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesFile {
    #[serde(rename = "queue")]
    pub queues: Vec<QueueConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: String,
    /// Shown in the panel and the API.
    #[serde(default)]
    pub description: String,
    /// How long a caller waits here before overflowing.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Where callers go after `max_wait`: `queue:NAME`.
    pub overflow: Option<String>,
    /// How often a waiting caller hears "you are number N".
    #[serde(default = "default_prompt_interval", with = "humantime_serde")]
    pub prompt_interval: Duration,
    /// Which ready agent gets the next caller.
    #[serde(default)]
    pub strategy: Strategy,
    /// Skills (with minimum levels) an agent needs to take these calls.
    #[serde(default)]
    pub require: BTreeMap<String, u8>,
    /// Higher is served first when one agent serves several queues.
    #[serde(default)]
    pub priority: i32,
    /// How long an agent's phone rings before the next agent is tried.
    #[serde(default = "default_ring_timeout", with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// After-call work time before the agent is offered the next call.
    #[serde(default = "default_wrap_up", with = "humantime_serde")]
    pub wrap_up: Duration,
    /// Requirements that relax as a caller waits, in order of `after`.
    #[serde(default)]
    pub escalation: Vec<Escalation>,
}

/// After `after` in the queue, the call's requirements become `require`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    pub require: BTreeMap<String, u8>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The agent idle longest (the fair default).
    #[default]
    LongestIdle,
    /// The most skilled agent (sum of levels in the required skills).
    SkillLevel,
    /// Agents in turn.
    RoundRobin,
}

fn default_ring_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_wrap_up() -> Duration {
    Duration::from_secs(10)
}

/// `sip-config/agents.toml`: call-takers and dispatchers.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentsFile {
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// SIP user name and API id.
    pub id: String,
    pub name: String,
    /// ntpd, polri, damkar, psc119, satpolpp, dishub...
    pub agency: String,
    /// Skill -> level (1..=5): triage, health, police, damkar, id, jv, su, en...
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// HA1 = MD5(id:realm:password), from `siaga agent-secret`.
    pub ha1_md5: String,
    /// HA1 = SHA-256(id:realm:password).
    pub ha1_sha256: String,
}

fn default_prompt_interval() -> Duration {
    Duration::from_secs(10)
}

impl QueueConfig {
    /// A queue with defaults, for code and tests that build one by hand.
    pub fn new(name: &str, max_wait: Duration) -> QueueConfig {
        QueueConfig {
            name: name.into(),
            description: String::new(),
            max_wait,
            overflow: None,
            prompt_interval: default_prompt_interval(),
            strategy: Strategy::default(),
            require: BTreeMap::new(),
            priority: 0,
            ring_timeout: default_ring_timeout(),
            wrap_up: default_wrap_up(),
            escalation: Vec::new(),
        }
    }
}

/// Where a queue's callers go after its maximum wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overflow {
    Queue(String),
    /// Another center (or any SIP destination): `sip:112@10.1.2.3:5060`.
    Sip(String),
}

/// Everything `serve` needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerFile,
    pub queues: BTreeMap<String, QueueConfig>,
    pub dialplan: Dialplan,
    pub agents: BTreeMap<String, AgentConfig>,
    /// In the file's order.
    pub agencies: Vec<AgencyConfig>,
    /// The folder the config was read from, for resolving relative paths.
    pub root: PathBuf,
}

impl Config {
    /// Reads `ROOT/sip-config/siaga.toml`, `ROOT/sip-config/queues.toml` and
    /// every `ROOT/dialplans/*.toml`, and checks them against each other.
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        // Absolute, so stored recording paths stay valid whatever the cwd.
        let root = &std::path::absolute(root).map_err(|source| ConfigError::Read {
            file: root.to_path_buf(),
            source,
        })?;
        let server_path = root.join("sip-config/siaga.toml");
        let server: ServerFile = parse_file(&server_path)?;
        check_server(&server_path, &server)?;

        let queues_path = root.join("sip-config/queues.toml");
        let queues_file: QueuesFile = parse_file(&queues_path)?;
        let mut queues = BTreeMap::new();
        for (i, q) in queues_file.queues.iter().enumerate() {
            if q.name.is_empty() {
                return Err(ConfigError::invalid(
                    &queues_path,
                    format!("queue[{i}].name"),
                    "expected a non-empty queue name",
                ));
            }
            if queues.insert(q.name.clone(), q.clone()).is_some() {
                return Err(ConfigError::invalid(
                    &queues_path,
                    format!("queue[{i}].name"),
                    format!("queue `{}` is defined twice", q.name),
                ));
            }
            if q.prompt_interval < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    &queues_path,
                    format!("queue[{i}].prompt_interval"),
                    "expected at least 1s",
                ));
            }
        }
        for (i, q) in queues_file.queues.iter().enumerate() {
            if let Some(target) = &q.overflow {
                let key = format!("queue[{i}].overflow");
                match parse_overflow(target) {
                    Some(Overflow::Queue(name)) if !queues.contains_key(&name) => {
                        return Err(ConfigError::invalid(
                            &queues_path,
                            key,
                            format!("expected a defined queue, found unknown queue `{name}`"),
                        ));
                    }
                    Some(Overflow::Queue(name)) if name == q.name => {
                        return Err(ConfigError::invalid(
                            &queues_path,
                            key,
                            "a queue cannot overflow into itself",
                        ));
                    }
                    Some(_) => {}
                    None => {
                        return Err(ConfigError::invalid(
                            &queues_path,
                            key,
                            format!(
                                "expected `queue:NAME` or `sip:USER@HOST[:PORT]`, found `{target}`"
                            ),
                        ))
                    }
                }
            }
        }
        check_overflow_cycles(&queues_path, &queues)?;

        let dialplan = Dialplan::load_dir(&root.join("dialplans"), &queues)?;
        let agents = load_agents(&root.join("sip-config/agents.toml"))?;
        let agencies = load_agencies(&root.join("sip-config/agencies.toml"), &agents, &queues)?;
        Ok(Config {
            server,
            queues,
            dialplan,
            agents,
            agencies,
            root: root.to_path_buf(),
        })
    }

    /// A path from the config, taken relative to the config root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// Whether `ip` belongs to a trunk allowed to send emergency calls.
    pub fn trunk_for(&self, ip: IpAddr) -> Option<&Trunk> {
        self.server
            .trunks
            .iter()
            .find(|t| t.sources.iter().any(|c| c.contains(ip)))
    }
}

/// The agencies file; without one, the agencies the agents name.
fn load_agencies(
    path: &Path,
    agents: &BTreeMap<String, AgentConfig>,
    queues: &BTreeMap<String, QueueConfig>,
) -> Result<Vec<AgencyConfig>, ConfigError> {
    if !path.exists() {
        let ids: std::collections::BTreeSet<_> = agents.values().map(|a| &a.agency).collect();
        return Ok(ids
            .into_iter()
            .map(|id| AgencyConfig {
                id: id.clone(),
                name: id.clone(),
                queue: None,
                transfer_timeout: default_transfer_timeout(),
            })
            .collect());
    }
    let file: AgenciesFile = parse_file(path)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in file.agencies.iter().enumerate() {
        let ok = !a.id.is_empty()
            && a.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !ok {
            return Err(ConfigError::invalid(
                path,
                format!("agency[{i}].id"),
                "expected letters, digits, - _ only",
            ));
        }
        if !seen.insert(a.id.clone()) {
            return Err(ConfigError::invalid(
                path,
                format!("agency[{i}].id"),
                format!("agency `{}` is defined twice", a.id),
            ));
        }
        if let Some(q) = a.queue.as_ref().filter(|q| !queues.contains_key(*q)) {
            return Err(ConfigError::invalid(
                path,
                format!("agency[{i}].queue"),
                format!("expected a queue of sip-config/queues.toml, found `{q}`"),
            ));
        }
    }
    for a in agents.values() {
        if !seen.contains(&a.agency) {
            return Err(ConfigError::invalid(
                path,
                "agency",
                format!(
                    "agent `{}` works for agency `{}`, which is not defined here",
                    a.id, a.agency
                ),
            ));
        }
    }
    Ok(file.agencies)
}

fn load_agents(path: &Path) -> Result<BTreeMap<String, AgentConfig>, ConfigError> {
    // No agents file: a center that only takes calls into queues.
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let file: AgentsFile = parse_file(path)?;
    let mut agents = BTreeMap::new();
    for (i, a) in file.agents.into_iter().enumerate() {
        let key = |k: &str| format!("agent[{i}].{k}");
        let id_ok = !a.id.is_empty()
            && a.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(ConfigError::invalid(
                path,
                key("id"),
                "expected letters, digits, - _ . only",
            ));
        }
        for (field, value, len) in [
            ("ha1_md5", &a.ha1_md5, 32),
            ("ha1_sha256", &a.ha1_sha256, 64),
        ] {
            if value.len() != len || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    path,
                    key(field),
                    format!(
                        "expected {len} hex digits (run `siaga agent-secret {}`)",
                        a.id
                    ),
                ));
            }
        }
        for (skill, level) in &a.skills {
            if !(1..=5).contains(level) {
                return Err(ConfigError::invalid(
                    path,
                    format!("agent[{i}].skills.{skill}"),
                    format!("expected a level from 1 to 5, found {level}"),
                ));
            }
        }
        if agents.insert(a.id.clone(), a.clone()).is_some() {
            return Err(ConfigError::invalid(
                path,
                key("id"),
                format!("agent `{}` is defined twice", a.id),
            ));
        }
    }
    Ok(agents)
}

/// `queue:NAME` → `Overflow::Queue`; `sip:user@host[:port]` → `Overflow::Sip`.
pub fn parse_overflow(s: &str) -> Option<Overflow> {
    if let Some(name) = s.strip_prefix("queue:") {
        return (!name.is_empty()).then(|| Overflow::Queue(name.to_string()));
    }
    let rest = s.strip_prefix("sip:")?;
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let valid = !host.is_empty() && !s.contains(char::is_whitespace);
    valid.then(|| Overflow::Sip(s.to_string()))
}

fn check_overflow_cycles(
    file: &Path,
    queues: &BTreeMap<String, QueueConfig>,
) -> Result<(), ConfigError> {
    for start in queues.keys() {
        let mut seen = vec![start.as_str()];
        let mut cur = start.as_str();
        while let Some(Overflow::Queue(next)) =
            queues[cur].overflow.as_deref().and_then(parse_overflow)
        {
            let next = queues.get_key_value(&next).map(|(k, _)| k.as_str());
            let Some(next) = next else { break };
            if seen.contains(&next) {
                seen.push(next);
                return Err(ConfigError::invalid(
                    file,
                    format!("queue `{start}`.overflow"),
                    format!(
                        "overflow targets form a loop ({}); a caller would never leave it",
                        seen.join(" -> ")
                    ),
                ));
            }
            seen.push(next);
            cur = next;
        }
    }
    Ok(())
}

fn check_server(file: &Path, s: &ServerFile) -> Result<(), ConfigError> {
    let algs = &s.sip.digest_algorithms;
    let known = algs.iter().all(|a| a == "MD5" || a == "SHA-256");
    let unique = algs.len() == algs.iter().collect::<std::collections::BTreeSet<_>>().len();
    if algs.is_empty() || !known || !unique {
        return Err(ConfigError::invalid(
            file,
            "sip.digest_algorithms",
            format!("expected a list of \"SHA-256\" and/or \"MD5\", each once, found {algs:?}"),
        ));
    }
    if !(-12..=14).contains(&s.http.utc_offset_hours) {
        return Err(ConfigError::invalid(
            file,
            "http.utc_offset_hours",
            "expected -12..=14",
        ));
    }
    for (i, t) in s.trunks.iter().enumerate() {
        if let Some(o) = &t.outbound {
            if !o.starts_with("sip:") || !o.contains("{number}") {
                return Err(ConfigError::invalid(
                    file,
                    format!("trunk[{i}].outbound"),
                    format!("expected `sip:...` with `{{number}}` in it, found `{o}`"),
                ));
            }
        }
    }
    if s.sip.udp.is_empty() && s.sip.tcp.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "sip.udp",
            "expected at least one UDP or TCP listen address",
        ));
    }
    let m = &s.media;
    if m.rtp_port_min == 0 || m.rtp_port_min > m.rtp_port_max {
        return Err(ConfigError::invalid(
            file,
            "media.rtp_port_min",
            format!(
                "expected 1 <= rtp_port_min <= rtp_port_max, found {}..{}",
                m.rtp_port_min, m.rtp_port_max
            ),
        ));
    }
    if u32::from(m.rtp_port_max) - u32::from(m.rtp_port_min) < 1 {
        return Err(ConfigError::invalid(
            file,
            "media.rtp_port_max",
            "expected a range of at least 2 ports",
        ));
    }
    if !(16..=1 << 20).contains(&m.recording_queue_mib) {
        return Err(ConfigError::invalid(
            file,
            "media.recording_queue_mib",
            format!(
                "expected 16 to 1048576 (MiB of audio waiting for the disk), found {}",
                m.recording_queue_mib
            ),
        ));
    }
    for (i, url) in s.webphone.ice_servers.iter().enumerate() {
        if !["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(ConfigError::invalid(
                file,
                format!("webphone.ice_servers[{i}]"),
                format!("expected a `stun:` or `turn:` URL, found `{url}`"),
            ));
        }
    }
    if !(s.database.url.starts_with("sqlite:")
        || s.database.url.starts_with("postgres:")
        || s.database.url.starts_with("postgresql:"))
    {
        return Err(ConfigError::invalid(
            file,
            "database.url",
            "expected a `sqlite:` or `postgres:` URL",
        ));
    }
    let Some(c) = &s.cluster else {
        return check_trunks(file, s);
    };
    if !s.database.url.starts_with("postgres") {
        return Err(ConfigError::invalid(
            file,
            "cluster",
            "a leader and standby share one PostgreSQL: expected a `postgres:` `database.url`",
        ));
    }
    if c.node.is_empty()
        || c.node.len() > 64
        || !c
            .node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::invalid(
            file,
            "cluster.node",
            "expected 1 to 64 letters, digits, `-`, `_` or `.`",
        ));
    }
    if c.renew.is_zero() || c.renew * 2 > c.lease {
        return Err(ConfigError::invalid(
            file,
            "cluster.renew",
            "expected more than zero and at most half of `cluster.lease`",
        ));
    }
    check_trunks(file, s)
}

fn check_trunks(file: &Path, s: &ServerFile) -> Result<(), ConfigError> {
    for (i, t) in s.trunks.iter().enumerate() {
        if t.sources.is_empty() {
            return Err(ConfigError::invalid(
                file,
                format!("trunk[{i}].sources"),
                "expected at least one address or network",
            ));
        }
    }
    Ok(())
}

/// Parses one TOML file into `T`, naming the key path on a type error.
pub(crate) fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_str(path, &text)
}

pub(crate) fn parse_str<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        file: path.to_path_buf(),
        line: line_of(e.span()),
        message: e.message().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = line_of(inner.span());
        ConfigError::Invalid {
            file: path.to_path_buf(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: match line {
                Some(l) => format!("{} (line {l})", inner.message()),
                None => inner.message().to_string(),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// The example config in the repository must always load.
    /// DNS rebinding: only the names the panel is reached by pass.
    #[test]
    fn the_panel_answers_only_to_its_own_host_names() {
        let mut h: HttpSection = toml::from_str("listen = \"127.0.0.1:8112\"").unwrap();
        for ok in ["127.0.0.1:8112", "127.0.0.1", "localhost:8112", "LOCALHOST"] {
            assert!(h.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8112",
            "10.0.0.1:8112",
            "",
            ":8112",
            "[::1]:8112",
        ] {
            assert!(!h.host_allowed(bad), "{bad}");
        }
        h.listen = "0.0.0.0:8112".parse().unwrap();
        assert!(h.host_allowed("10.0.0.1:8112") && h.host_allowed("[::1]:8112"));
        assert!(!h.host_allowed("evil.example"));
        h.allowed_hosts = vec!["panel.112.depok.go.id".into()];
        assert!(h.host_allowed("Panel.112.depok.go.id:443"));
        assert!(!h.host_allowed("10.0.0.1") && !h.host_allowed("localhost"));
    }

    #[test]
    fn example_config_loads() {
        let c = Config::load(&root()).expect("example config");
        assert!(c.queues.contains_key("ntpd-112"));
        assert!(c.queues.contains_key("psc-119"));
        assert!(!c.dialplan.routes.is_empty());
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = r#"
[sip]
public_ip = "127.0.0.1"
udp = ["127.0.0.1:5060"]
colour = "red"
"#;
        let err = parse_str::<ServerFile>(Path::new("sip-config/siaga.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("sip-config/siaga.toml: key `sip"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn wrong_type_names_nested_key() {
        let text = r#"
[sip]
public_ip = "127.0.0.1"
[media]
rtp_ip = "127.0.0.1"
rtp_port_min = "twenty"
rtp_port_max = 30000
prompts_dir = "p"
recordings_dir = "r"
[http]
listen = "127.0.0.1:1"
[database]
url = "sqlite::memory:"
"#;
        let err = parse_str::<ServerFile>(Path::new("f.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("key `media.rtp_port_min`"), "{msg}");
        assert!(msg.contains("line 6"), "{msg}");
    }

    /// A small `siaga.toml`: `media` keys added to the section, the
    /// database URL, and whatever follows.
    fn server_toml(media: &str, url: &str, rest: &str) -> String {
        format!(
            r#"
[sip]
public_ip = "127.0.0.1"
udp = ["127.0.0.1:5060"]
[media]
rtp_ip = "127.0.0.1"
rtp_port_min = 20000
rtp_port_max = 30000
prompts_dir = "p"
recordings_dir = "r"
{media}
[http]
listen = "127.0.0.1:1"
[database]
url = "{url}"
{rest}
"#
        )
    }

    /// A bound that would leave audio out of recordings under ordinary
    /// load is refused, naming the key.
    #[test]
    fn recording_queue_bound_is_checked() {
        let text = |mib: usize| {
            server_toml(
                &format!("recording_queue_mib = {mib}"),
                "sqlite::memory:",
                "",
            )
        };
        let file = Path::new("f.toml");
        let small = parse_str::<ServerFile>(file, &text(4)).unwrap();
        let msg = check_server(file, &small).unwrap_err().to_string();
        assert!(msg.contains("media.recording_queue_mib"), "{msg}");
        let fine = parse_str::<ServerFile>(file, &text(64)).unwrap();
        check_server(file, &fine).unwrap();
        assert_eq!(fine.media.recording_queue_mib, 64);
    }

    /// A `[cluster]` needs the shared PostgreSQL; without one the node is
    /// alone and named `siaga-1`.
    #[test]
    fn a_cluster_needs_postgresql() {
        let text = |url: &str, cluster: &str| server_toml("", url, cluster);
        let file = Path::new("f.toml");
        let alone = parse_str::<ServerFile>(file, &text("sqlite::memory:", "")).unwrap();
        check_server(file, &alone).unwrap();
        assert_eq!(alone.node(), "siaga-1");
        let cluster = "[cluster]\nnode = \"b\"";
        let sqlite = parse_str::<ServerFile>(file, &text("sqlite::memory:", cluster)).unwrap();
        let msg = check_server(file, &sqlite).unwrap_err().to_string();
        assert!(
            msg.contains("cluster") && msg.contains("PostgreSQL"),
            "{msg}"
        );
        let pg = parse_str::<ServerFile>(file, &text("postgres://h/d", cluster)).unwrap();
        check_server(file, &pg).unwrap();
        assert_eq!(pg.node(), "b");
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_str::<ServerFile>(Path::new("f.toml"), "[sip\nx=1").unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: Some(1), .. }),
            "{err}"
        );
    }

    #[test]
    fn overflow_syntax() {
        assert_eq!(parse_overflow("queue:a"), Some(Overflow::Queue("a".into())));
        assert_eq!(parse_overflow("queue:"), None);
        assert_eq!(
            parse_overflow("sip:112@10.0.0.5:5060"),
            Some(Overflow::Sip("sip:112@10.0.0.5:5060".into()))
        );
        assert_eq!(parse_overflow("sip:"), None);
        assert_eq!(parse_overflow("tel:112"), None);
    }

    #[test]
    fn overflow_loop_is_refused() {
        let mk = |name: &str, of: &str| QueueConfig {
            overflow: Some(of.into()),
            ..QueueConfig::new(name, Duration::from_secs(1))
        };
        let mut q = BTreeMap::new();
        q.insert("a".to_string(), mk("a", "queue:b"));
        q.insert("b".to_string(), mk("b", "queue:a"));
        let err = check_overflow_cycles(Path::new("q.toml"), &q).unwrap_err();
        assert!(err.to_string().contains("a -> b -> a"), "{err}");
    }
}

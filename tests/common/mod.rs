//! Test harness: the real `siaga` binary on ephemeral loopback ports, real
//! peers (SIPp) and a raw SIP client for exact RFC checks.

#![allow(dead_code)]

pub mod audio;
pub mod baresip;
pub mod gate;
pub mod haproxy;
pub mod kamailio;
pub mod pyphone;
pub mod rawsip;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free UDP port on loopback (bound, read, released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An even port on loopback that is free, and the one two above it too
/// (SIPp's audio and video media ports).
pub fn free_media_pair() -> u16 {
    loop {
        let port = free_udp_port() & !1;
        if !(1024..=65533).contains(&port) {
            continue;
        }
        let audio = UdpSocket::bind(("127.0.0.1", port));
        let video = UdpSocket::bind(("127.0.0.1", port + 2));
        if audio.is_ok() && video.is_ok() {
            return port;
        }
    }
}

/// Options for one test server.
pub struct Setup {
    /// Extra dialplan file contents (added as dialplans/zz-test.toml).
    pub extra_dialplan: Option<String>,
    /// Trunk sources; loopback by default.
    pub trunk_sources: Vec<String>,
    pub rtp_timeout: &'static str,
    /// Replaces sip-config/queues.toml.
    pub queues: Option<String>,
    pub shutdown_grace: &'static str,
    /// Copy the example agent accounts (passwords "contoh-sandi-<id>").
    pub agents: bool,
    /// The trunk's `outbound` address for call-backs.
    pub trunk_outbound: Option<String>,
    /// Replaces sip-config/agencies.toml.
    pub agencies: Option<String>,
    /// More keys for the `[http]` section.
    pub http_extra: Option<String>,
    /// More keys for the `[sip]` section.
    pub sip_extra: Option<String>,
    /// The database (a shared PostgreSQL); an SQLite file of its own if None.
    pub database_url: Option<String>,
    /// The `[cluster]` section's keys (None: no section, one node).
    pub cluster: Option<String>,
    /// The test admin is in the (shared) database already.
    pub admin_exists: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            extra_dialplan: None,
            trunk_sources: vec!["127.0.0.1".into()],
            rtp_timeout: "60s",
            queues: None,
            shutdown_grace: "30s",
            agents: false,
            trunk_outbound: None,
            agencies: None,
            http_extra: None,
            sip_extra: None,
            database_url: None,
            cluster: None,
            admin_exists: false,
        }
    }
}

pub struct Server {
    pub root: tempfile::TempDir,
    pub sip: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub http: SocketAddr,
    child: Option<Child>,
    /// The session cookie of the test admin, sent by `get`, `post_json`...
    pub admin: String,
}

/// Password of every user the tests add.
pub const TEST_PASSWORD: &str = "kata-sandi-uji-123";

impl Server {
    pub fn start(setup: Setup) -> Server {
        let root = tempfile::tempdir().unwrap();
        Self::write_config(root.path(), &setup);
        let mut s = Server {
            root,
            sip: "0.0.0.0:0".parse().unwrap(),
            sip_tcp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            child: None,
            admin: String::new(),
        };
        if !setup.admin_exists {
            s.add_user("test-admin", "admin", &[]);
        }
        s.spawn();
        s.admin = s.login("test-admin", TEST_PASSWORD);
        s
    }

    /// `siaga user add NAME --role ROLE ARGS...`, password TEST_PASSWORD.
    pub fn add_user(&self, name: &str, role: &str, args: &[&str]) {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_siaga"))
            .args(["user", "add", name, "--role", role])
            .args(args)
            .arg("--config-root")
            .arg(self.root.path())
            .env("SIAGA_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{TEST_PASSWORD}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Logs in; returns the session cookie (`siaga_session=...`).
    pub fn login(&self, name: &str, password: &str) -> String {
        let body = serde_json::json!({ "username": name, "password": password }).to_string();
        let (status, headers, resp) = self.request("", "POST", "/api/login", Some(&body));
        assert_eq!(
            status,
            200,
            "login {name}: {}",
            String::from_utf8_lossy(&resp)
        );
        let cookie = headers
            .iter()
            .find(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.split(';').next().unwrap().to_string())
            .expect("a session cookie");
        cookie
    }

    /// One HTTP request with a cookie ("" for none) and an optional JSON body.
    pub fn request(
        &self,
        cookie: &str,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut head = String::new();
        if !cookie.is_empty() {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        http_request(self.http, method, path, &head, json)
    }

    /// A JSON request as the given session; the body parsed (Null if not JSON).
    pub fn json_as(
        &self,
        cookie: &str,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request(cookie, method, path, json);
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn write_config(root: &Path, setup: &Setup) {
        std::fs::create_dir_all(root.join("sip-config")).unwrap();
        std::fs::create_dir_all(root.join("dialplans")).unwrap();
        let sources = setup
            .trunk_sources
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let rtp_base = 30000 + (std::process::id() % 500) as u16 * 40;
        std::fs::write(
            root.join("sip-config/siaga.toml"),
            format!(
                r#"[sip]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
public_ip = "127.0.0.1"
shutdown_grace = "{}"
digest_algorithms = ["MD5"]
{}

[media]
rtp_ip = "127.0.0.1"
rtp_port_min = {rtp_base}
rtp_port_max = {}
prompts_dir = "{}"
recordings_dir = "recordings"
rtp_timeout = "{}"

[http]
listen = "127.0.0.1:0"
{}
[database]
url = "{}"
{}

[[trunk]]
name = "test-trunk"
sources = [{sources}]
{}"#,
                setup.shutdown_grace,
                setup.sip_extra.as_deref().unwrap_or_default(),
                rtp_base + 3000,
                repo().join("prompts").display(),
                setup.rtp_timeout,
                setup.http_extra.as_deref().unwrap_or_default(),
                setup
                    .database_url
                    .clone()
                    .unwrap_or_else(|| format!("sqlite://{}/db/siaga.db?mode=rwc", root.display())),
                setup
                    .cluster
                    .as_ref()
                    .map(|c| format!("\n[cluster]\n{c}\n"))
                    .unwrap_or_default(),
                setup
                    .trunk_outbound
                    .as_ref()
                    .map(|o| format!("outbound = \"{o}\"\n"))
                    .unwrap_or_default()
            ),
        )
        .unwrap();
        match &setup.queues {
            Some(q) => std::fs::write(root.join("sip-config/queues.toml"), q).unwrap(),
            None => {
                std::fs::copy(
                    repo().join("sip-config/queues.toml"),
                    root.join("sip-config/queues.toml"),
                )
                .unwrap();
            }
        }
        std::fs::copy(
            repo().join("dialplans/emergency.toml"),
            root.join("dialplans/emergency.toml"),
        )
        .unwrap();
        // The example agencies name the example queues; a test with its own
        // queues gets the agencies its agents name.
        if let Some(a) = &setup.agencies {
            std::fs::write(root.join("sip-config/agencies.toml"), a).unwrap();
        } else if setup.queues.is_none() {
            std::fs::copy(
                repo().join("sip-config/agencies.toml"),
                root.join("sip-config/agencies.toml"),
            )
            .unwrap();
        }
        if setup.agents {
            std::fs::copy(
                repo().join("sip-config/agents.toml"),
                root.join("sip-config/agents.toml"),
            )
            .unwrap();
        }
        if let Some(extra) = &setup.extra_dialplan {
            std::fs::write(root.join("dialplans/zz-test.toml"), extra).unwrap();
        }
    }

    /// (Re)starts the process on the same config and database.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("siaga.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_siaga"))
            .arg("serve")
            .arg("--config-root")
            .arg(self.root.path())
            .env(
                "SIAGA_LOG",
                std::env::var("SIAGA_TEST_LOG").unwrap_or_else(|_| siaga::DEFAULT_LOG.into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start siaga");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("READY ") => break l,
                Some(Ok(_)) => continue,
                _ => panic!("siaga did not start; log:\n{}", self.log()),
            }
        };
        // Keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        for part in ready.split_whitespace().skip(1) {
            let (k, v) = part.split_once('=').unwrap();
            let first: SocketAddr = v.split(',').next().unwrap().parse().unwrap();
            match k {
                "sip-udp" => self.sip = first,
                "sip-tcp" => self.sip_tcp = first,
                "http" => self.http = first,
                _ => {}
            }
        }
        self.child = Some(child);
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd sends on stop.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn post_json(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.json_as(&self.admin, "POST", path, Some(body))
    }

    /// An agent's entry in GET /api/agents.
    pub fn agent(&self, id: &str) -> serde_json::Value {
        let (_, agents) = self.get("/api/agents");
        agents
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits (up to 20 s) until `check` holds for the agent's entry, or
    /// fails saying `what`, with the entry and the server's log.
    pub fn wait_agent(&self, id: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if check(&self.agent(id)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{id}: {what}; now {}\nserver:\n{}",
            self.agent(id),
            self.log()
        );
    }

    pub fn set_ready(&self, id: &str) {
        let (status, body) =
            self.post_json(&format!("/api/agents/{id}/state"), r#"{"state":"ready"}"#);
        assert_eq!(status, 200, "{id} could not be made ready: {body}");
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}/db/siaga.db", self.root.path().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("siaga.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.json_as(&self.admin, "GET", path, None)
    }

    pub fn get_bytes(
        &self,
        path: &str,
        range: Option<&str>,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut head = format!("Cookie: {}\r\n", self.admin);
        if let Some(r) = range {
            head.push_str(&format!("Range: {r}\r\n"));
        }
        http_request(self.http, "GET", path, &head, None)
    }

    /// Waits until the call with this SIP Call-ID has ended (and its
    /// recording checksum is stored, if it was recorded).
    pub fn wait_call_done(&self, sip_call_id: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let (_, calls) = self.get("/api/calls?limit=1000");
            if let Some(c) = calls
                .as_array()
                .and_then(|a| a.iter().find(|c| c["sip_call_id"] == sip_call_id).cloned())
            {
                let ended = !c["ended_at"].is_null();
                let recorded = c["recording_path"].is_null()
                    || !c["recording_sha256"].is_null()
                    || !c["recording_error"].is_null();
                if ended && recorded {
                    return c;
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "call {sip_call_id} not done in {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn calls_with(&self, sip_call_id: &str) -> Vec<serde_json::Value> {
        let (_, calls) = self.get("/api/calls?limit=1000");
        calls
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["sip_call_id"] == sip_call_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How long a test's HTTP client waits for an answer before it calls the
/// peer hung. A guard against a hang, not a measure of speed: a WebDriver
/// session start launches Chromium, which on two busy cores took over
/// 10 s in CI.
pub const HTTP_HANG: Duration = Duration::from_secs(120);

/// A minimal HTTP/1.1 client over std (no extra client in the test
/// build): `head` is extra header lines, each ending in CRLF.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    head: &str,
    json: Option<&str>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HTTP_HANG)).unwrap();
    let body = json.unwrap_or("");
    let content = if json.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{head}{content}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    // Read the head, then the body by Content-Length when there is one
    // (a server may keep the connection open), else to the end.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let split = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf[split + 4..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed before the body's end");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body).unwrap();
        }
    }
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        b = &b[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Makes sure the SIPp binary exists (the test script installs it).
pub fn sipp_bin() -> &'static str {
    assert!(
        Command::new("sipp").arg("-v").output().is_ok(),
        "SIPp is not installed: run scripts/test, which installs sip-tester"
    );
    "sipp"
}

/// One SIPp run.
pub struct Sipp {
    pub workdir: tempfile::TempDir,
}

pub struct SippResult {
    pub code: Option<i32>,
    pub output: String,
    pub errors: String,
}

/// A SIPp caller with the 1 kHz test tone to `service`, lasting `ms`, in
/// a thread; joins to SIPp's exit code.
pub fn background_call(
    target: SocketAddr,
    service: &'static str,
    ms: u32,
    limit: Duration,
) -> std::thread::JoinHandle<Option<i32>> {
    std::thread::spawn(move || {
        let sipp = Sipp::new(1000.0);
        let d = ms.to_string();
        sipp.run("uac_tone.xml", target, &["-s", service, "-d", &d], limit)
            .code
    })
}

/// SIPp as a phone (or another center) on `port`: answers one call and
/// echoes the RTP it hears; runs in the background until the call ends or
/// `limit` passes. Stop it early with `stop_sipp_on(port)`.
pub fn sipp_echo_uas(port: u16, limit: Duration) {
    let media = free_media_pair().to_string();
    let port = port.to_string();
    let timeout = format!("{}s", limit.as_secs());
    Command::new(sipp_bin())
        .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port])
        .args(["-mi", "127.0.0.1", "-mp", &media])
        .args([
            "-rtp_echo",
            "-m",
            "1",
            "-timeout",
            &timeout,
            "-nostdin",
            "-bg",
        ])
        .output()
        .expect("start sipp");
    std::thread::sleep(Duration::from_millis(300));
}

pub fn stop_sipp_on(port: u16) {
    // `--`: a pattern starting with `-p` is otherwise pkill's own option,
    // and nothing was ever stopped (pkill printed its usage instead).
    let _ = Command::new("pkill")
        .args(["-f", "--", &format!("-p {port}")])
        .status();
}

impl Sipp {
    /// A working folder holding the caller's tone as `caller-tone.wav`.
    pub fn new(tone_hz: f64) -> Sipp {
        let workdir = tempfile::tempdir().unwrap();
        audio::write_alaw_tone(&workdir.path().join("caller-tone.wav"), tone_hz, 10.0);
        std::fs::write(
            workdir.path().join("callers.csv"),
            "SEQUENTIAL\n081234567;\n",
        )
        .unwrap();
        Sipp { workdir }
    }

    /// Runs a scenario from tests/sipp against `target`; bounded by `limit`.
    pub fn run(
        &self,
        scenario: &str,
        target: SocketAddr,
        args: &[&str],
        limit: Duration,
    ) -> SippResult {
        let scenario = repo().join("tests/sipp").join(scenario);
        // SIPp binds its media port and the one two above (video). Another
        // test can take either between our check and SIPp's bind; SIPp then
        // stops before sending anything, so it is run again on other ports.
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            let port = free_udp_port().to_string();
            let media = free_media_pair().to_string();
            let mut cmd = Command::new(sipp_bin());
            cmd.current_dir(self.workdir.path())
                .arg(target.to_string())
                .arg("-sf")
                .arg(&scenario)
                .args(["-inf", "callers.csv", "-m", "1", "-l", "1"])
                .args([
                    "-i",
                    "127.0.0.1",
                    "-mi",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-mp",
                    &media,
                ])
                .args([
                    "-timeout",
                    &format!("{}s", limit.as_secs()),
                    "-timeout_error",
                ])
                .args(["-trace_err", "-nostdin"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let out = cmd.output().expect("run sipp");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let unbound = text.contains("Unable to bind") && text.contains("errno = 98");
            if !unbound || attempt == 3 {
                break out;
            }
        };
        let mut errors = String::new();
        for e in std::fs::read_dir(self.workdir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with("_errors.log") {
                errors.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                let _ = std::fs::remove_file(e.path());
            }
        }
        SippResult {
            code: out.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            errors,
        }
    }
}

/// A database of its own (`siaga_{purpose}_{pid}`, made afresh) on the
/// PostgreSQL `scripts/test` starts; None, and the test skips, when
/// SIAGA_TEST_POSTGRES is not set (an error under SIAGA_REQUIRE_POSTGRES).
pub fn postgres_db(purpose: &str) -> Option<String> {
    let Ok(admin) = std::env::var("SIAGA_TEST_POSTGRES") else {
        assert!(
            std::env::var("SIAGA_REQUIRE_POSTGRES").is_err(),
            "SIAGA_REQUIRE_POSTGRES is set but SIAGA_TEST_POSTGRES is not"
        );
        eprintln!("skipped: set SIAGA_TEST_POSTGRES to run against PostgreSQL");
        return None;
    };
    let name = format!("siaga_{purpose}_{}", std::process::id());
    let out = Command::new("psql")
        .arg(&admin)
        .args([
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
    Some(format!("{base}/{name}"))
}

/// A file's SHA-256, as call records keep it.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

//! baresip as a call-taker's softphone: registers with digest, answers by
//! itself (or not), speaks a tone, and dumps what it heard.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Baresip {
    pub dir: tempfile::TempDir,
    child: Child,
    ctrl: u16,
}

pub struct Phone<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub auto_answer: bool,
    pub tone_hz: f64,
}

/// A loopback port free for SIP over UDP and TCP, and TCP on the next
/// port (baresip binds all three).
pub fn free_sip_port() -> u16 {
    loop {
        let port = super::free_udp_port();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let next = port
            .checked_add(1)
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)));
        if tcp.is_ok() && matches!(next, Some(Ok(_))) {
            return port;
        }
    }
}

impl Baresip {
    /// Starts baresip registering `phone.user` at `registrar`.
    pub fn start(phone: Phone<'_>, registrar: std::net::SocketAddr) -> Baresip {
        assert!(
            Command::new("baresip").arg("-h").output().is_ok(),
            "baresip is not installed: run scripts/test, which installs baresip-core"
        );
        let dir = tempfile::tempdir().unwrap();
        let tone = dir.path().join("voice.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&tone, spec).unwrap();
        for i in 0..8000 * 60 {
            let v = (2.0 * std::f64::consts::PI * phone.tone_hz * f64::from(i) / 8000.0).sin()
                * 12000.0;
            w.write_sample(v as i16).unwrap();
        }
        w.finalize().unwrap();
        // Ports are chosen free but may be taken before baresip binds them
        // (tests run in parallel): a phone that fails to start gets new ones.
        for attempt in 1.. {
            let port = free_sip_port();
            let ctrl = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            std::fs::write(
                dir.path().join("config"),
                format!(
                    "poll_method\tepoll\nsip_listen\t127.0.0.1:{port}\naudio_source\taufile,{}\naudio_player\taufile,/dev/null\naudio_alert\taufile,/dev/null\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\taufile.so\nmodule\tsndfile.so\nsnd_path\t{}\nmodule_app\taccount.so\nmodule_app\tmenu.so\nmodule_app\tctrl_tcp.so\nctrl_tcp_listen\t127.0.0.1:{ctrl}\n",
                    tone.display(),
                    dir.path().display()
                ),
            )
            .unwrap();
            let mode = if phone.auto_answer { "auto" } else { "manual" };
            std::fs::write(
                dir.path().join("accounts"),
                format!(
                    "<sip:{}@{registrar};transport=udp>;auth_pass={};answermode={mode};regint=60;audio_codecs=PCMA,PCMU\n",
                    phone.user, phone.password
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("baresip.log")).unwrap();
            let child = Command::new("baresip")
                .arg("-f")
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start baresip");
            std::thread::sleep(Duration::from_millis(300));
            let mut child = child;
            match child.try_wait() {
                Ok(Some(_)) if attempt < 5 => continue,
                Ok(Some(status)) => panic!(
                    "baresip exited ({status}):\n{}",
                    std::fs::read_to_string(dir.path().join("baresip.log")).unwrap_or_default()
                ),
                _ => return Baresip { dir, child, ctrl },
            }
        }
        unreachable!()
    }

    /// Runs a baresip command (ctrl_tcp, netstring JSON): `dial`, `hangup`,
    /// `hold`, `resume`...
    pub fn command(&self, command: &str, params: Option<&str>) {
        use std::io::Write;
        let body = match params {
            Some(p) => serde_json::json!({ "command": command, "params": p, "token": "t" }),
            None => serde_json::json!({ "command": command, "token": "t" }),
        }
        .to_string();
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", self.ctrl)) {
                Ok(mut s) => {
                    use std::io::Read;
                    write!(s, "{}:{},", body.len(), body).unwrap();
                    // Keep the connection until baresip answers the command.
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while Instant::now() < end
                        && !String::from_utf8_lossy(&got).contains("\"response\"")
                    {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(_) => {}
                        }
                    }
                    return;
                }
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("baresip control port: {e}"),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Its log once `done` holds for it (baresip writes it as it goes);
    /// the log as it is after 10 s otherwise, for the caller to assert on.
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() >= end {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `heard` gives once one file holds at least `samples` samples
    /// (baresip finishes the file's header when the call ends); what
    /// there is after 10 s otherwise.
    pub fn heard_at_least(&self, samples: u32) -> Vec<PathBuf> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let heard = self.heard();
            let long_enough = heard
                .iter()
                .any(|p| hound::WavReader::open(p).is_ok_and(|r| r.duration() >= samples));
            if long_enough || Instant::now() >= end {
                return heard;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The decoded audio it received in its calls (sndfile's `*-dec.wav`).
    pub fn heard(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Siti's desk phone: baresip as ct-01 registering at `registrar` (the
/// node, or a front), answering by itself with 600 Hz.
pub fn ct01(registrar: std::net::SocketAddr) -> Baresip {
    Baresip::start(
        Phone {
            user: "ct-01",
            password: "contoh-sandi-ct-01",
            auto_answer: true,
            tone_hz: 600.0,
        },
        registrar,
    )
}

/// Waits until the server shows `agent` as registered.
pub fn wait_registered(server: &super::Server, agent: &str, phone: &Baresip) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if server.agent(agent)["registered"] == true {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{agent} did not register; baresip:\n{}\nserver:\n{}",
        phone.log(),
        server.log()
    );
}

//! Kamailio with the shipped front config (`sip-config/kamailio/`), on a
//! loopback port, dispatching to the given siaga nodes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kamailio {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// The shipped config.
pub fn config() -> std::path::PathBuf {
    super::repo().join("sip-config/kamailio/kamailio.cfg")
}

/// `kamailio -c` on the shipped config and node list: its output, and
/// whether it found them good.
pub fn check() -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let list = super::repo().join("sip-config/kamailio/siaga-nodes.list");
    let out = base(dir.path(), super::free_udp_port(), &list)
        .arg("-c")
        .output()
        .expect("kamailio (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("config file ok"),
        text,
    )
}

/// Kamailio on the shipped config, listening on `port`, with a node list
/// for `nodes` written as siaga-nodes.list says.
fn command(dir: &std::path::Path, port: u16, nodes: &[SocketAddr]) -> Command {
    let list = dir.join("siaga-nodes.list");
    // Set 1 probed, set 2 the fallback; the first node first (priority).
    let lines: String = [(1, 8), (2, 0)]
        .iter()
        .flat_map(|(set, flags)| {
            nodes
                .iter()
                .enumerate()
                .map(move |(i, n)| format!("{set} sip:{n} {flags} {}\n", 100 - i))
        })
        .collect();
    std::fs::write(&list, lines).unwrap();
    base(dir, port, &list)
}

fn base(dir: &std::path::Path, port: u16, list: &std::path::Path) -> Command {
    let mut cmd = Command::new("kamailio");
    cmd.current_dir(dir)
        .arg("-f")
        .arg(config())
        .args(["-A", &format!("SIP_LISTEN=udp:127.0.0.1:{port}")])
        .args(["-A", &format!("SIAGA_NODES=\"{}\"", list.display())])
        .args(["-m", "64", "-M", "8"])
        .arg("-Y")
        .arg(dir)
        .arg("-P")
        .arg(dir.join("kamailio.pid"));
    cmd
}

impl Kamailio {
    /// Starts it in the foreground on `port`, and waits until it answers
    /// an OPTIONS of its own.
    pub fn start(port: u16, nodes: &[SocketAddr]) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        // Its own process group: Kamailio forks workers even in the
        // foreground, and all of them go when the test ends.
        use std::os::unix::process::CommandExt;
        let child = command(dir.path(), port, nodes)
            .args(["-DD", "-E"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kamailio (scripts/test installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let k = Kamailio { addr, child, dir };
        let start = Instant::now();
        loop {
            let c = super::rawsip::RawSip::new(addr, "127.0.0.1");
            let l = c.local();
            c.send(&format!(
                "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-k{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=k\r\nTo: <sip:{addr}>\r\nCall-ID: k-{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                l.port(),
                l.port()
            ));
            if c.final_status(Duration::from_millis(500)).map(|s| s.0) == Some(200) {
                return k;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "kamailio did not answer; log:\n{}",
                k.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

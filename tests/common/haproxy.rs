//! HAProxy with the shipped panel front config (`sip-config/haproxy/`),
//! on a loopback port, in front of the given nodes' HTTP addresses.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

fn config() -> std::path::PathBuf {
    super::repo().join("sip-config/haproxy/haproxy.cfg")
}

fn command(addr: SocketAddr, a: SocketAddr, b: SocketAddr) -> Command {
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f")
        .arg(config())
        .env("PANEL_LISTEN", addr.to_string())
        .env("SIAGA_A", a.to_string())
        .env("SIAGA_B", b.to_string());
    cmd
}

/// `haproxy -c` on the shipped config: whether it is valid, and what it
/// said.
pub fn check() -> (bool, String) {
    let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let out = command(any, any, any)
        .arg("-c")
        .output()
        .expect("haproxy (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("valid"), text)
}

impl Haproxy {
    /// Starts it in the foreground (`-db`) on a free loopback port.
    pub fn start(a: SocketAddr, b: SocketAddr) -> Haproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = command(addr, a, b)
            .arg("-db")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start haproxy (scripts/test installs it)");
        Haproxy { addr, child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

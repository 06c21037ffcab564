//! baresip 4 as a softphone that can do attended transfer
//! (`tests/peers/phone.py`, on the baresip-python bindings that
//! `scripts/test` installs from PyPI): started per test, driven by lines on
//! its stdin, its events read from its stdout.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct PyPhone {
    pub dir: tempfile::TempDir,
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PyPhone {
    /// Starts the phone registering `user` (password `contoh-sandi-<user>`,
    /// the example accounts') at `registrar`, speaking `tone_hz`; returns
    /// once it is registered.
    pub fn start(user: &str, tone_hz: f64, registrar: std::net::SocketAddr) -> PyPhone {
        let ok = Command::new("python3")
            .args(["-c", "import baresip"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "baresip-python is not installed: run scripts/test, which installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(super::repo().join("tests/peers/phone.py"))
            .args(["--user", user])
            .args(["--password", &format!("contoh-sandi-{user}")])
            .args(["--server", &registrar.to_string()])
            .args(["--port", &super::baresip::free_sip_port().to_string()])
            .args(["--tone", &tone_hz.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start tests/peers/phone.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let phone = PyPhone {
            dir,
            child,
            stdin,
            lines,
        };
        phone.wait_for("REGISTERED", Duration::from_secs(10));
        phone
    }

    /// Sends one command line (`dial URI`, `atransfer`, `hangup N`, ...).
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for an event line starting with `prefix`; a `FAILED` line or
    /// the time running out fails the test with what the phone said.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(l) = lines.iter().find(|l| l.starts_with(prefix)) {
                    return l.clone();
                }
                if let Some(f) = lines.iter().find(|l| l.starts_with("FAILED")) {
                    panic!("the phone says {f}; it said:\n{}", self.said(&lines));
                }
            }
            assert!(
                Instant::now() < end,
                "the phone did not say {prefix}; it said:\n{}",
                self.said(&self.lines.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn said(&self, lines: &[String]) -> String {
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{}\n--- stderr ---\n{stderr}", lines.join("\n"))
    }

    /// What the phone received in its call `n` (1-based), once it closed
    /// (or the phone quit).
    pub fn heard(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("call-{n}.wav"))
    }

    /// Ends the phone, writing what its open calls received.
    pub fn quit(&mut self) {
        self.send("quit");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PyPhone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A small W3C WebDriver client for Debian's headless Chromium through
//! chromedriver (both installed by scripts/test), over the harness's own
//! HTTP client. Enough to log in, click, type, read the page and take
//! screenshots.

use super::http_request;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
    /// Where screenshots go (test artifacts).
    pub artifacts: PathBuf,
}

/// Folder of this test run's screenshots: target/tmp/panel-artifacts/.
pub fn artifacts_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("panel-artifacts")
        .join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    pub fn start(test: &str) -> Browser {
        Self::start_with(test, &[])
    }

    /// With extra Chromium switches (fake media devices, say).
    pub fn start_with(test: &str, extra: &[String]) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is not installed: run scripts/test, which installs chromium-driver",
            );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra.iter().cloned());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
            artifacts: artifacts_dir(test),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, resp) = http_request(self.addr, method, path, "", body.as_deref());
        let v: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
        assert!(
            status < 300,
            "WebDriver {method} {path}: {status} {}",
            String::from_utf8_lossy(&resp)
        );
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}; page: {}", self.text("html")))
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    /// Clicks the `n`-th element (from 0) that `css` matches.
    pub fn click_nth(&self, css: &str, n: usize) {
        let all = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        let id = all[n][ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {n} of {css}: {all}"))
            .to_string();
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    /// Presses and releases `key` (a character, or a WebDriver key code)
    /// on whatever has the keyboard, as a user would.
    pub fn press(&self, key: &str) {
        self.call(
            "POST",
            &self.s("/actions"),
            Some(json!({ "actions": [{
                "type": "key",
                "id": "keyboard",
                "actions": [
                    { "type": "keyDown", "value": key },
                    { "type": "keyUp", "value": key },
                ],
            }]})),
        );
    }

    /// Sets the window's outer size, as a screen of that size would.
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.s("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// How many windows (tabs) the session has open.
    pub fn windows(&self) -> usize {
        self.call("GET", &self.s("/window/handles"), None)
            .as_array()
            .map_or(0, |a| a.len())
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/clear")),
            Some(json!({})),
        );
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            Some(json!({ "text": text })),
        );
    }

    /// Chooses an option of a <select> by its value, as a user would.
    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"));
    }

    pub fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until `script` returns something truthy; returns it.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, vec![]);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > timeout {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                panic!(
                    "waited {timeout:?} for {what}; page text:\n{}",
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the page as a test artifact.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(b64.as_str().unwrap_or_default());
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Logs in through the login page; waits for the role's home page.
    pub fn login(&self, base: &str, user: &str, password: &str, home: &str) {
        self.login_at(base, "/login", user, password, home);
    }

    /// Logs in on the login page at `login` (a `next=` of its own, say),
    /// and waits until the browser is at `home` on `base`.
    pub fn login_at(&self, base: &str, login: &str, user: &str, password: &str, home: &str) {
        self.goto(&format!("{base}{login}"));
        self.type_into("#username", user);
        self.type_into("#password", password);
        self.click("#login");
        let want = format!("{base}{home}");
        let start = Instant::now();
        while self.url() != want {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{user} did not reach {want}: at {} ({})",
                self.url(),
                self.text("#login-error")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http_request(self.addr, "DELETE", &self.s(""), "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// 48 kHz mono 16-bit: a sine at `freq`, as Chromium's fake capture.
pub fn microphone_wav(dir: &Path, freq: f64) -> PathBuf {
    let path = dir.join(format!("mic-{freq}.wav"));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..48000 * 4 {
        let v = (2.0 * std::f64::consts::PI * freq * i as f64 / 48000.0).sin() * 12000.0;
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
    path
}

/// Chromium whose microphone is `mic` and whose permission prompts are
/// granted, reaching us on loopback with plain host candidates.
pub fn browser_with_mic(test: &str, mic: &Path) -> Browser {
    Browser::start_with(
        test,
        &[
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            format!("--use-file-for-fake-audio-capture={}", mic.display()),
            "--allow-loopback-in-peer-connection".into(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
        ],
    )
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

//! A real headless Chromium, driven over the WebDriver protocol: Debian's
//! `chromium` and `chromium-driver` (`.ci/deps` installs them), plain
//! HTTP to `chromedriver`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::http::request;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: run `bash .ci/deps` (Debian packages chromium and chromium-driver)"
            );
        }
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(port, "GET", "/status", None, None).map_or(true, |r| r.status != 200) {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars",
            ]},
        }}});
        let made = browser.raw("POST", "/session", Some(caps));
        browser.session = made["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {made}"))
            .to_owned();
        browser
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let reply = request(self.port, method, path, None, bytes.as_deref())
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let v = reply.json();
        assert!(
            reply.status == 200,
            "chromedriver {method} {path}: {} {}",
            reply.status,
            reply.body.chars().take(2000).collect::<String>()
        );
        v["value"].clone()
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs JavaScript in the page; its return value.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs JavaScript that calls its last argument with the result.
    pub fn exec_async(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Grants the page a permission (the WebDriver permissions extension).
    pub fn grant(&self, name: &str) {
        self.cmd(
            "POST",
            "/permissions",
            Some(json!({"descriptor": {"name": name}, "state": "granted"})),
        );
    }

    /// Waits until `css` matches a displayed element; its id.
    pub fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let found = self.exec(
                "const e = document.querySelector(arguments[0]); return !!(e && e.getClientRects().length);",
                json!([css]),
            );
            if found == json!(true) {
                let e = self.cmd(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                );
                return e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("no element id in {e}"))
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{css} did not appear within {within:?}; the page shows:\n{}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until the JavaScript expression is true.
    pub fn wait_until(&self, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.exec(&format!("return !!({expr});"), json!([])) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "{expr} was not true within {within:?}; the page shows:\n{}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the element `css` matches (a real click: WebDriver's).
    pub fn click(&self, css: &str) {
        let id = self.wait_for(css, Duration::from_secs(15));
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types into the element `css` matches.
    pub fn type_in(&self, css: &str, text: &str) {
        let id = self.wait_for(css, Duration::from_secs(15));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    /// The text of the first element `css` matches ("" when none).
    pub fn text(&self, css: &str) -> String {
        self.exec(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("screenshot decodes");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

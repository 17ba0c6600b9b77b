//! Headless Chromium driven over the DevTools protocol, for the console's tests and its
//! benchmark: it loads pages, evaluates JavaScript in them, waits for what a person would see and
//! writes screenshots under `target/console-screenshots/`. The end-to-end tests include this file
//! as their `browser` module.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: Ws,
    session: String,
    next: u64,
    /// What the page logged: exceptions, console messages and browser log entries.
    pub log: Vec<String>,
}

/// Where screenshots go: `target/console-screenshots/` of the workspace (both crates that use
/// this file sit one level below it).
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

impl Browser {
    /// Starts Chromium (Debian's `chromium`, which `test.sh` installs) with a new profile and
    /// opens a blank page of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium must be installed (test.sh installs Debian's chromium)");
        // Chromium writes its port and the browser's WebSocket path once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connect to chromium");
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            session: String::new(),
            next: 0,
            log: Vec::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Runtime.enable", json!({})).await;
        b.call("Log.enable", json!({})).await;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// Sends a command (to the page once attached) and waits for its answer; events are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("chromium closed")
                .unwrap();
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            match v["method"].as_str() {
                Some("Runtime.exceptionThrown") => self
                    .log
                    .push(format!("exception: {}", v["params"]["exceptionDetails"])),
                Some("Runtime.consoleAPICalled") => self.log.push(format!(
                    "console.{}: {}",
                    v["params"]["type"].as_str().unwrap_or_default(),
                    v["params"]["args"]
                )),
                Some("Log.entryAdded") => self.log.push(format!(
                    "log: {} {}",
                    v["params"]["entry"]["text"].as_str().unwrap_or_default(),
                    v["params"]["entry"]["url"].as_str().unwrap_or_default()
                )),
                _ => {}
            }
        }
    }

    /// Loads `url` and waits until the console's page is mounted (`tocsinConsole.ready`) or the
    /// sign-in form shows.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait(
            "the console to load",
            "window.tocsinConsole && (window.tocsinConsole.ready || window.tocsinConsole.page === 'signin')",
        )
        .await;
    }

    /// Evaluates `expr` (awaiting a promise) and answers its value; a thrown error fails the test.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits up to 30 s until `expr` is truthy; answers its value.
    pub async fn wait(&mut self, what: &str, expr: &str) -> Value {
        self.wait_for(30, what, expr).await
    }

    /// Waits up to `secs` until `expr` is truthy; answers its value.
    pub async fn wait_for(&mut self, secs: u64, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "timed out waiting for {what}; the page shows:\n{text}\nand logged:\n{}",
                    self.log.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets a text field's value as typing would, and tells the page it changed.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.value = {text}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            sel = json!(selector),
            text = json!(text)
        );
        self.eval(&expr).await;
    }

    /// Clicks the first element `selector` finds.
    pub async fn click(&mut self, selector: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) throw new Error('nothing matches ' + {sel}); e.click(); return true; }})()",
            sel = json!(selector)
        );
        self.eval(&expr).await;
    }

    /// The page's performance metrics (`JSHeapUsedSize`, `Nodes`, `TaskDuration`, ...).
    pub async fn metrics(&mut self) -> std::collections::HashMap<String, f64> {
        self.call("Performance.enable", json!({})).await;
        let m = self.call("Performance.getMetrics", json!({})).await;
        m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    /// The process id of the browser.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a PNG of the whole page to `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

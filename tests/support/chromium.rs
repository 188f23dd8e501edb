//! A small Chrome DevTools Protocol (CDP) client for browser tests.
//!
//! It starts a headless Chromium with a fresh profile, opens one page (tab)
//! and drives it over the DevTools WebSocket: navigate, evaluate JavaScript,
//! wait for a condition, type, take screenshots, change the viewport. The
//! browser is killed and its profile removed when the [`Chromium`] is dropped.
//!
//! Include it from a test file with
//! `#[path = "support/chromium.rs"] mod chromium;`.
//!
//! How CDP works, in short: JSON messages over one WebSocket. We send
//! `{"id", "method", "params", "sessionId"}` and get back `{"id", "result"}`
//! or `{"id", "error"}`; in between, the browser sends events
//! `{"method", "params", "sessionId"}` that have no id. `sessionId` says which
//! page a message is for (a "flat" session, see `Target.attachToTarget`).

#![allow(dead_code)] // not every test file uses every method

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fmt, fs, thread};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long Chromium may take to start and print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any one CDP call may take (a call that waits in the page gets its
/// own wait time on top of this).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// JavaScript for the page's text in error messages: the entries of `#log`,
/// one a line, or else the whole page's text.
const PAGE_LOG_JS: &str = r"(() => {
    const log = document.getElementById('log');
    if (!log) return (document.body || document.documentElement).innerText;
    return [...log.children].map((e) => e.innerText.replace(/\s*\n\s*/g, ' ')).join('\n');
})()";
/// Chromium's stderr lines kept for error messages.
const STDERR_LINES_KEPT: usize = 20;

pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, as a message meant for a person reading a failed test.
pub struct Error(String);

/// The message as it is, so that `.unwrap()` shows it readably, not quoted.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// One page of a [`Chromium`] (its flat session's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tab(String);

/// A headless Chromium with one page open, and more on demand.
pub struct Chromium {
    child: Child,
    profile_dir: PathBuf,
    ws: WebSocket<TcpStream>,
    /// The page's flat session id; every page command is sent with it.
    session: String,
    next_id: u64,
    /// Events received while waiting for something else.
    events: VecDeque<Value>,
    /// Console messages and uncaught exceptions of the page, for error messages.
    console: Vec<String>,
    /// The last lines Chromium wrote on stderr, for error messages.
    stderr: mpsc::Receiver<String>,
    stderr_tail: VecDeque<String>,
}

impl Chromium {
    /// Finds a browser, starts it and opens a blank page.
    pub fn launch() -> Result<Chromium> {
        Chromium::launch_with(&[])
    }

    /// [`Chromium::launch`], with more command-line switches for the browser, such as
    /// `--ignore-certificate-errors-spki-list=...`.
    pub fn launch_with(switches: &[String]) -> Result<Chromium> {
        let browser = find_browser()?;
        let profile_dir = new_profile_dir()?;
        let mut child = Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .args(switches)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error(format!("cannot start {}: {e}", browser.display())))?;

        // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        // on stderr once it accepts connections: that line is the readiness signal.
        // A thread forwards every stderr line (and so keeps the pipe from filling up).
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut stderr_tail = VecDeque::new();
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let browser_url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        break url.trim().to_string();
                    }
                    push_line(&mut stderr_tail, line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = fs::remove_dir_all(&profile_dir);
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            "did not print its DevTools address in time"
                        }
                        mpsc::RecvTimeoutError::Disconnected => "exited before it was ready",
                    };
                    return err(format!(
                        "{} {why}; its stderr:\n{}",
                        browser.display(),
                        Vec::from(stderr_tail).join("\n")
                    ));
                }
            }
        };

        let ws = match connect(&browser_url) {
            Ok(ws) => ws,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_dir_all(&profile_dir);
                return Err(e);
            }
        };
        // From here on, Drop cleans up if anything fails.
        let mut chromium = Chromium {
            child,
            profile_dir,
            ws,
            session: String::new(),
            next_id: 1,
            events: VecDeque::new(),
            console: Vec::new(),
            stderr: rx,
            stderr_tail,
        };

        chromium.new_tab()?;
        Ok(chromium)
    }

    /// Opens another page (a tab) and sends every later command to it, until
    /// [`Chromium::switch_to`] picks another. Returns it.
    pub fn new_tab(&mut self) -> Result<Tab> {
        // Open a page of our own and attach to it with a flat session, so its
        // commands and events travel over the same socket, tagged with the session id.
        let target = self.browser_call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].clone();
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        self.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| Error(format!("no sessionId in {attached}")))?
            .to_string();

        self.call("Page.enable", json!({}))?;
        self.call("Page.setLifecycleEventsEnabled", json!({ "enabled": true }))?;
        self.call("Runtime.enable", json!({}))?;
        // Overlay-style scrollbars, as on a phone: the page gets the whole
        // viewport width, and full-page screenshots are not cut at the side.
        self.call("Emulation.setScrollbarsHidden", json!({ "hidden": true }))?;
        Ok(self.tab())
    }

    /// The page commands go to now.
    pub fn tab(&self) -> Tab {
        Tab(self.session.clone())
    }

    /// Sends every later command to `tab`.
    pub fn switch_to(&mut self, tab: &Tab) {
        self.session = tab.0.clone();
    }

    /// Loads `url` in the page and waits for its `load` event.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        self.events.clear();
        let nav = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = nav["errorText"].as_str() {
            return err(format!("cannot load {url}: {error}"));
        }
        // A new document has its own loader id; wait for the "load" of that one.
        // A same-document navigation (only the #fragment changes) has none.
        let Some(loader) = nav.get("loaderId").cloned() else {
            return Ok(());
        };
        self.wait_event(&format!("load event of {url}"), CALL_TIMEOUT, |event| {
            event["method"] == "Page.lifecycleEvent"
                && event["params"]["name"] == "load"
                && event["params"]["loaderId"] == loader
        })?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page and returns its value as
    /// JSON. A returned Promise is awaited. A thrown exception is an error.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        self.eval_within(js, Duration::ZERO)
    }

    /// Waits until the JavaScript expression `condition` is truthy in the page.
    ///
    /// The waiting happens in the page: a Promise checks the condition on every
    /// animation frame (or after 100 ms, should frames be throttled), so the
    /// test itself never sleeps. On timeout, the error shows the condition and
    /// the text of the page's `#log` (or of its whole body).
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<()> {
        let js = format!(
            r#"new Promise((resolve) => {{
                const deadline = performance.now() + {ms};
                const check = () => {{
                    let ok;
                    try {{ ok = ({condition}); }}
                    catch (e) {{ return resolve({{ threw: String(e) }}); }}
                    if (ok) return resolve(true);
                    if (performance.now() > deadline) return resolve(false);
                    // Next frame, or a timer if frames are throttled: whichever comes first.
                    let scheduled = true;
                    const again = () => {{ if (scheduled) {{ scheduled = false; check(); }} }};
                    requestAnimationFrame(again);
                    setTimeout(again, 100);
                }};
                check();
            }})"#,
            ms = timeout.as_millis(),
        );
        let outcome = self.eval_within(&js, timeout)?;
        if outcome == Value::Bool(true) {
            return Ok(());
        }
        if let Some(threw) = outcome["threw"].as_str() {
            return err(format!("`{condition}` threw {threw}"));
        }
        let page = self
            .eval(PAGE_LOG_JS)
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|e| format!("(could not read the page: {e})"));
        let console = if self.console.is_empty() {
            "(nothing)".to_string()
        } else {
            self.console.join("\n")
        };
        err(format!(
            "timed out after {timeout:?} waiting for `{condition}`\n\
             --- page log ---\n{page}\n--- console ---\n{console}"
        ))
    }

    /// Types `text` into the focused element, as if from a keyboard (IME-style
    /// insertion, so any Unicode text works).
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Presses and releases the Enter key in the focused element.
    pub fn press_enter(&mut self) -> Result<()> {
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({
                "type": kind,
                "key": "Enter",
                "code": "Enter",
                "windowsVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                key["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", key)?;
        }
        Ok(())
    }

    /// Sets the page's viewport to `width`×`height` CSS pixels.
    pub fn set_viewport(&mut self, width: u32, height: u32) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(())
    }

    /// Emulates a CSS media feature, e.g. `("prefers-color-scheme", "dark")`.
    pub fn emulate_media(&mut self, feature: &str, value: &str) -> Result<()> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": feature, "value": value }] }),
        )?;
        Ok(())
    }

    /// Saves a PNG screenshot of the whole page (not only the viewport) to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let metrics = self.call("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (size["width"].as_f64(), size["height"].as_f64());
        let (Some(width), Some(height)) = (width, height) else {
            return err(format!("no page size in {metrics}"));
        };
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
            }),
        )?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| Error(format!("screenshot is not base64: {e}")))?;
        fs::write(path, png).map_err(|e| Error(format!("cannot write {}: {e}", path.display())))
    }

    /// The page's console messages and uncaught exceptions so far.
    pub fn console(&self) -> &[String] {
        &self.console
    }

    // ---- CDP plumbing ----------------------------------------------------------

    fn eval_within(&mut self, js: &str, extra: Duration) -> Result<Value> {
        let reply = self.call_within(
            "Runtime.evaluate",
            json!({
                "expression": js,
                "awaitPromise": true,
                "returnByValue": true,
                "userGesture": true,
            }),
            Some(self.session.clone()),
            CALL_TIMEOUT + extra,
        )?;
        if let Some(details) = reply.get("exceptionDetails") {
            let what = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("unknown exception");
            return err(format!("JavaScript exception: {what}\nin: {js}"));
        }
        // `undefined` has no value; it comes back as null.
        Ok(reply["result"]["value"].clone())
    }

    /// Sends a command to the page.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = Some(self.session.clone());
        self.call_within(method, params, session, CALL_TIMEOUT)
    }

    /// Sends a command to the browser itself (no session).
    fn browser_call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.call_within(method, params, None, CALL_TIMEOUT)
    }

    fn call_within(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(request.to_string()))
            .map_err(|e| self.broken(&format!("cannot send {method}"), e))?;

        let deadline = Instant::now() + timeout;
        loop {
            let message = self.next_message(method, deadline)?;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    return err(format!("{method} failed: {error}"));
                }
                return Ok(message["result"].clone());
            }
            self.event(message);
        }
    }

    /// Waits for an event that matches `wanted`, looking first at those
    /// already received.
    fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(i) = self.events.iter().position(&wanted) {
            return Ok(self.events.remove(i).expect("index is in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let message = self.next_message(what, deadline)?;
            if message.get("id").is_none() && wanted(&message) {
                return Ok(message);
            }
            self.event(message);
        }
    }

    /// Files an event (a message without id) for later.
    fn event(&mut self, message: Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("").to_string(),
                        v => v.to_string(),
                    })
                    .collect();
                self.console.push(format!(
                    "console.{}: {}",
                    params["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str());
                self.console
                    .push(format!("uncaught: {}", text.unwrap_or("exception")));
            }
            Some(_) if message.get("id").is_none() => {
                // Keep the queue bounded: only the recent events matter.
                if self.events.len() >= 1000 {
                    self.events.pop_front();
                }
                self.events.push_back(message);
            }
            _ => {} // a late reply to a call that gave up
        }
    }

    /// Reads the next CDP message, giving up at `deadline`. The socket's read
    /// timeout is set to the time left, so a hung browser cannot hang the test.
    fn next_message(&mut self, what: &str, deadline: Instant) -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return err(format!(
                    "timed out waiting for {what} from Chromium{}",
                    self.stderr_text()
                ));
            }
            // (set_read_timeout refuses a zero duration; `left` is never zero here.)
            self.ws
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Error(format!("cannot set the read timeout: {e}")))?;
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(text.as_str())
                        .map_err(|e| Error(format!("bad CDP message ({e}): {text}")));
                }
                Ok(_) => continue, // pings and the like; tungstenite answers them
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue; // the loop checks the deadline
                }
                Err(e) => {
                    return Err(self.broken(&format!("connection lost waiting for {what}"), e));
                }
            }
        }
    }

    fn broken(&mut self, what: &str, e: tungstenite::Error) -> Error {
        Error(format!("{what}: {e}{}", self.stderr_text()))
    }

    /// Chromium's recent stderr, as a suffix for error messages.
    fn stderr_text(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            push_line(&mut self.stderr_tail, line);
        }
        if self.stderr_tail.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = self.stderr_tail.iter().map(String::as_str).collect();
        format!(
            "\n--- Chromium stderr (last lines) ---\n{}",
            lines.join("\n")
        )
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ask politely first, so that Chromium stops its helper processes and
        // lets go of the profile; then make sure.
        let _ = self.ws.send(Message::text(
            json!({ "id": 0, "method": "Browser.close" }).to_string(),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile_dir);
    }
}

/// The browser to run: `$CHROMIUM`, else the first of a few usual names.
fn find_browser() -> Result<PathBuf> {
    if let Some(path) = env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        return match which(&path) {
            Some(found) => Ok(found),
            None => err(format!("CHROMIUM={} is not an executable", path.display())),
        };
    }
    let candidates = [
        "/usr/bin/chromium",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let found = candidates.iter().find_map(|name| which(Path::new(name)));
    found.ok_or_else(|| {
        Error(format!(
            "no Chromium found (tried $CHROMIUM, {}).\n\
             Install one with `scripts/install-chromium.sh` (Debian's `chromium` package), \
             or point $CHROMIUM at a Chromium or Chrome binary.",
            candidates.join(", ")
        ))
    })
}

/// `name` itself if it is a path, else the first match on `$PATH`.
fn which(name: &Path) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return is_executable(name).then(|| name.to_path_buf());
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A new, empty directory for the browser profile.
fn new_profile_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = env::temp_dir().join(format!(
        "chromium-test-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Opens the DevTools WebSocket at `url` (`ws://127.0.0.1:PORT/devtools/browser/ID`).
fn connect(url: &str) -> Result<WebSocket<TcpStream>> {
    let address = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| Error(format!("unexpected DevTools address {url}")))?;
    let stream = TcpStream::connect(address)
        .map_err(|e| Error(format!("cannot connect to {address}: {e}")))?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CALL_TIMEOUT)))
        .map_err(|e| Error(format!("cannot set socket timeouts: {e}")))?;
    // Screenshots come back as one large base64 message; allow up to 256 MiB.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let (ws, _response) = tungstenite::client::client_with_config(url, stream, Some(config))
        .map_err(|e| Error(format!("DevTools handshake with {url} failed: {e}")))?;
    Ok(ws)
}

/// Keeps `line` among the last stderr lines, unless it is noise: headless
/// Chromium complains at length that there is no D-Bus.
fn push_line(tail: &mut VecDeque<String>, line: String) {
    if line.trim().is_empty() || line.contains("dbus") {
        return;
    }
    if tail.len() == STDERR_LINES_KEPT {
        tail.pop_front();
    }
    tail.push_back(line);
}

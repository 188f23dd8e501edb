//! End-to-end test of the demo page in a real (headless) Chromium.
//!
//! Starts the wsecho binary on a free port, loads its page at `/` and uses it
//! like a person would: send text and binary messages, receive the echoes and
//! the greeting, clear the log, close the connection, reconnect. Screenshots
//! of the page go to `<target dir>/screenshots/`: `demo-page.png` (1200×900),
//! `demo-page-phone.png` (375×740) and `demo-page-dark.png` (closed, dark).
//!
//! A second run serves the page over `https://` with a certificate made for the
//! test: the page must pick `wss://` by itself. Chromium trusts exactly that
//! certificate, by the hash of its public key, and nothing on the machine changes.
//!
//! Needs Chromium: run `scripts/install-chromium.sh`, or set `$CHROMIUM`.

#[path = "support/chromium.rs"]
mod chromium;
#[cfg(feature = "tls")]
#[path = "support/pki.rs"]
mod pki;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use chromium::Chromium;
#[cfg(feature = "tls")]
use pki::Pki;
use serde_json::Value;

/// An upper bound for anything to happen; the test never waits for a set time.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Non-ASCII on purpose: accents, a symbol and CJK, two to four UTF-8 bytes each.
const TEXT: &str = "héllo wörld ✓ 你好";

/// The wsecho server, running until dropped.
struct Server {
    child: Child,
    /// The URL it printed, e.g. `ws://127.0.0.1:41234` (`wss://` with TLS).
    ws_url: String,
}

impl Server {
    /// Starts `wsecho --host 127.0.0.1 --port 0 ARGS`.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsecho"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start wsecho");

        // Its log goes through eprintln!, which the test harness captures:
        // shown when the test fails, quiet when it passes.
        let stderr = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("wsecho: {line}");
            }
        });

        // Once it listens, the server prints exactly one line: its URL. A thread
        // reads it (and anything after it), so a silent server fails the test
        // after TIMEOUT instead of hanging it.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            ws_url: String::new(),
        };
        server.ws_url = match rx.recv_timeout(TIMEOUT) {
            Ok(line) => line.trim().to_string(),
            Err(e) => panic!("wsecho printed no URL line ({e})"),
        };
        assert!(
            server.ws_url.starts_with("ws://127.0.0.1:")
                || server.ws_url.starts_with("wss://127.0.0.1:"),
            "unexpected first line from wsecho: {:?}",
            server.ws_url
        );
        server
    }

    /// The WebSocket address the page should use: `ws://127.0.0.1:41234/`
    /// (`wss://...` with TLS).
    fn page_ws_url(&self) -> String {
        format!("{}/", self.ws_url.trim_end_matches('/'))
    }

    /// Stops the server now, so that the page's next requests fail.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The page's address: `ws://127.0.0.1:41234` gives `http://127.0.0.1:41234/`,
    /// `wss://127.0.0.1:41234` gives `https://127.0.0.1:41234/`.
    fn http_url(&self) -> String {
        let (scheme, rest) = match self.ws_url.strip_prefix("wss://") {
            Some(rest) => ("https", rest),
            None => ("http", self.ws_url.trim_start_matches("ws://")),
        };
        format!("{scheme}://{}/", rest.trim_end_matches('/'))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `<target dir>/screenshots`, created if needed. The target dir is
/// `$CARGO_TARGET_DIR` if set, else found from this test binary's path,
/// `<target dir>/<profile>/deps/browser-<hash>`.
fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            exe.ancestors()
                .nth(3)
                .expect("<target>/<profile>/deps/<exe>")
                .to_path_buf()
        }
    };
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A JavaScript string literal for `s`.
fn js_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// JavaScript: is there a log entry of class `kind` whose text contains `text`?
fn log_has(kind: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log > li.{kind}')]\
         .some(li => li.textContent.includes({}))",
        js_str(text)
    )
}

/// JavaScript: the status element is in `state` and its text contains `text`.
fn status_is(state: &str, text: &str) -> String {
    format!(
        "document.getElementById('status').dataset.state === {} && \
         document.getElementById('status').textContent.includes({})",
        js_str(state),
        js_str(text)
    )
}

// Shorthands for the test's steps; a failure points at the step that called them.

/// Evaluates `js` in the page.
#[track_caller]
fn js(browser: &mut Chromium, js: &str) -> Value {
    browser.eval(js).unwrap()
}

/// Waits (at most TIMEOUT) until the JavaScript `condition` holds in the page.
#[track_caller]
fn wait(browser: &mut Chromium, condition: &str) {
    browser.wait_for(condition, TIMEOUT).unwrap();
}

/// Clicks the element with id `id`, like a user would.
#[track_caller]
fn click(browser: &mut Chromium, id: &str) {
    let expr = format!("document.getElementById({}).click()", js_str(id));
    js(browser, &expr);
}

/// Types `text` into the element with id `id`, as from a keyboard.
#[track_caller]
fn type_into(browser: &mut Chromium, id: &str, text: &str) {
    let expr = format!("document.getElementById({}).focus()", js_str(id));
    js(browser, &expr);
    browser.type_text(text).unwrap();
}

/// JavaScript: the text of the element with id `id` is exactly `text`.
fn text_is(id: &str, text: &str) -> String {
    format!(
        "document.getElementById({}).textContent === {}",
        js_str(id),
        js_str(text)
    )
}

/// Sets the number box with id `id` to `value`, as if typed over its content.
#[track_caller]
fn set_number(browser: &mut Chromium, id: &str, value: &str) {
    let expr = format!("document.getElementById({}).select()", js_str(id));
    js(browser, &expr);
    browser.type_text(value).unwrap();
}

/// The number of entries in the log.
#[track_caller]
fn log_len(browser: &mut Chromium) -> u64 {
    let len = js(browser, "document.querySelectorAll('#log > li').length");
    len.as_u64().expect("a count")
}

/// The number of messages the log shows as sent. (The server's greeting may add an entry at
/// any moment, so "nothing was sent" counts these, not every entry.)
#[track_caller]
fn sent_len(browser: &mut Chromium) -> u64 {
    let len = js(browser, "document.querySelectorAll('#log > li.out').length");
    len.as_u64().expect("a count")
}

/// JavaScript: the whole page fits in the window's height (no vertical scrolling).
const PAGE_FITS: &str = "document.documentElement.scrollHeight <= innerHeight";

/// Is the button with id `id` disabled?
#[track_caller]
fn disabled(browser: &mut Chromium, id: &str) -> bool {
    let expr = format!("document.getElementById({}).disabled", js_str(id));
    js(browser, &expr) == Value::Bool(true)
}

#[test]
fn demo_page_talks_to_the_server() {
    let server = Server::start(&["--greeting-delay", "1s"]);
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;
    let shots = screenshot_dir();

    // Load the page; it connects by itself.
    b.set_viewport(1200, 900).unwrap();
    b.navigate(&server.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    assert!(!disabled(b, "send-text"), "Send is enabled when open");
    assert!(disabled(b, "reconnect"), "Reconnect is disabled when open");

    // It asked /healthz what the server does, and says so.
    wait(b, &text_is("server", "echo mode · greeting after 1 s"));

    // The page fits the window: the log scrolls inside itself, not the page.
    assert_eq!(
        js(b, PAGE_FITS),
        true,
        "no vertical scrolling at 1200×900 on load"
    );

    // The console snippet uses this server's address, ws: for an http: page...
    let snippet = js(b, "document.getElementById('snippet').textContent");
    let expected = format!("new WebSocket('{}')", server.page_ws_url());
    assert!(
        snippet.as_str().unwrap().contains(&expected),
        "the snippet has {expected}: {snippet}"
    );
    // ... and wss: for an https: one (the same code, given another scheme).
    let secure = js(b, "snippet(socketUrl('https:', 'example.com:8443'))");
    assert!(
        secure
            .as_str()
            .unwrap()
            .contains("new WebSocket('wss://example.com:8443/')"),
        "the snippet on https: {secure}"
    );

    // Answers /healthz might give: only what it says is shown, nothing guessed.
    let quiet = js(
        b,
        "describeServer({ mode: 'broadcast', greeting_delay_ms: null })",
    );
    assert_eq!(quiet, "broadcast mode · no greeting");
    let old = js(b, "describeServer({ status: 'ok' })");
    assert_eq!(
        old, "mode unknown · greeting unknown",
        "a server without the fields"
    );

    // Type non-ASCII text and click Send: it goes out and comes back intact.
    type_into(b, "text", TEXT);
    click(b, "send-text");
    wait(b, &log_has("out", TEXT));
    wait(b, &log_has("in", TEXT));
    let left = js(b, "document.getElementById('text').value");
    assert_eq!(left, "", "the text box is emptied after sending");

    // Enter in the text box sends too.
    type_into(b, "text", "sent with Enter");
    b.press_enter().unwrap();
    wait(b, &log_has("in", "sent with Enter"));

    // Text is shown as text, never parsed as HTML.
    let markup = r#"<b id="injected">bold?</b>"#;
    type_into(b, "text", markup);
    click(b, "send-text");
    wait(b, &log_has("in", markup));
    let no_html = js(b, "document.getElementById('injected') === null");
    assert_eq!(no_html, true, "message text must not become HTML");

    // Send binary at the default size: 8 bytes out, the same 8 bytes back.
    let binary = "binary 8 bytes: 01 02 03 04 05 06 07 08";
    click(b, "send-binary");
    wait(b, &log_has("out", binary));
    wait(b, &log_has("in", binary));

    // A size out of range is refused with a message, and nothing is sent.
    let sent = sent_len(b);
    for bad in ["0", "1048577", "2.5"] {
        set_number(b, "binary-size", bad);
        click(b, "send-binary");
        let error = js(b, "document.getElementById('binary-error').textContent");
        assert!(
            error.as_str().unwrap().contains("from 1 to 1048576"),
            "size {bad} is refused with a message, got {error}"
        );
        assert_eq!(sent_len(b), sent, "nothing is sent for size {bad}");
    }

    // A chosen size: 100 bytes, 01 02 03..., out and back. The message goes away.
    set_number(b, "binary-size", "100");
    let hidden = js(b, "document.getElementById('binary-error').hidden");
    assert_eq!(hidden, true, "the size message goes away on typing");
    click(b, "send-binary");
    let binary = "binary 100 bytes: 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 …";
    wait(b, &log_has("out", binary));
    wait(b, &log_has("in", binary));

    // The server's greeting, sent a second after connecting.
    wait(b, &log_has("in", "hello client !!!"));

    // Screenshots with a full log: laptop, then phone width.
    assert_eq!(
        js(b, PAGE_FITS),
        true,
        "no vertical scrolling with a full log"
    );
    b.screenshot(&shots.join("demo-page.png")).unwrap();
    b.set_viewport(375, 740).unwrap();
    let fits = js(b, "document.documentElement.scrollWidth <= innerWidth");
    assert_eq!(fits, true, "no horizontal scrolling at phone width");
    b.screenshot(&shots.join("demo-page-phone.png")).unwrap();
    b.set_viewport(1200, 900).unwrap();

    // Many more messages: the log scrolls inside itself, following the newest
    // entry, and the page still fits the window.
    js(
        b,
        "for (let i = 1; i <= 40; i++) { \
             document.getElementById('text').value = `message ${i}`; \
             document.getElementById('composer').requestSubmit(); \
         }",
    );
    wait(b, &log_has("in", "message 40"));
    let log_scrolls = js(
        b,
        "(l => l.scrollHeight > l.clientHeight)(document.getElementById('log'))",
    );
    assert_eq!(log_scrolls, true, "the log scrolls inside itself");
    wait(
        b,
        "(l => l.scrollTop + l.clientHeight >= l.scrollHeight - 2)(document.getElementById('log'))",
    );
    assert_eq!(js(b, PAGE_FITS), true, "the page still fits the window");

    // Clear log empties it; the next entry shows up as usual.
    click(b, "clear-log");
    assert_eq!(log_len(b), 0, "Clear log empties the log");
    type_into(b, "text", "after clearing");
    click(b, "send-text");
    wait(b, &log_has("in", "after clearing"));

    // Close: code 1000, and only Reconnect stays enabled.
    click(b, "close");
    wait(b, &status_is("closed", "1000"));
    wait(b, &log_has("event", "code 1000"));
    assert!(disabled(b, "send-text"), "Send is disabled");
    assert!(disabled(b, "send-binary"), "Send binary is disabled");
    assert!(disabled(b, "close"), "Close is disabled");
    assert!(!disabled(b, "reconnect"), "Reconnect is enabled");
    b.emulate_media("prefers-color-scheme", "dark").unwrap();
    b.screenshot(&shots.join("demo-page-dark.png")).unwrap();
    b.emulate_media("prefers-color-scheme", "light").unwrap();

    // Reconnect: a new connection that echoes again, and /healthz asked again.
    js(b, "document.getElementById('server').textContent = ''");
    click(b, "reconnect");
    wait(b, &status_is("open", "open"));
    wait(b, &text_is("server", "echo mode · greeting after 1 s"));
    type_into(b, "text", "after reconnect");
    click(b, "send-text");
    wait(b, &log_has("in", "after reconnect"));

    // Nothing went wrong in the page along the way.
    let errors: Vec<&String> = b
        .console()
        .iter()
        .filter(|line| line.starts_with("uncaught") || line.starts_with("console.error"))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:?}");
    let error_entries = js(b, "document.querySelectorAll('#log > li.error').length");
    assert_eq!(error_entries, 0, "no error entries in the log");
}

#[test]
fn demo_page_shows_broadcast_mode_and_the_greeting_delay() {
    let mut server = Server::start(&["--broadcast", "--greeting-delay", "1500ms"]);
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;

    b.set_viewport(1200, 900).unwrap();
    b.navigate(&server.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    wait(
        b,
        &text_is("server", "broadcast mode · greeting after 1.5 s"),
    );

    // In broadcast mode the sender gets its own message too.
    type_into(b, "text", "to everyone");
    click(b, "send-text");
    wait(b, &log_has("in", "to everyone"));

    // With the server gone, /healthz cannot answer: the page does not guess.
    server.stop();
    wait(b, "document.getElementById('reconnect').disabled === false");
    click(b, "reconnect");
    wait(b, &text_is("server", "mode unknown"));
}

/// Two tabs in two rooms: each hears its own room only; a room joined from the page's room
/// field is the URL's path, and the page says which room it is in.
#[test]
fn demo_page_joins_two_rooms_in_two_tabs() {
    let server = Server::start(&["--broadcast", "--greeting-delay", "off"]);
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;
    let first = b.tab();
    b.navigate(&format!("{}?room=chat/rust", server.http_url()))
        .unwrap();
    wait(b, &status_is("open", "open"));
    wait(b, &text_is("room-now", "in room chat/rust"));
    assert_eq!(
        js(b, "ws.url"),
        format!("{}/chat/rust", server.ws_url).as_str()
    );

    // The second tab starts in the lobby and joins "café au lait" with the room field.
    let second = b.new_tab().unwrap();
    b.navigate(&server.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    wait(b, &text_is("room-now", "in the lobby"));
    type_into(b, "room", "café au lait");
    click(b, "join");
    wait(b, &text_is("room-now", "in room café au lait"));
    wait(b, &status_is("open", "open"));
    assert_eq!(
        js(b, "ws.url"),
        format!("{}/caf%C3%A9%20au%20lait", server.ws_url).as_str()
    );
    assert_eq!(
        js(b, "new URLSearchParams(location.search).get('room')"),
        "café au lait"
    );

    type_into(b, "text", "in the café");
    click(b, "send-text");
    wait(b, &log_has("in", "in the café"));

    b.switch_to(&first);
    type_into(b, "text", "in rust");
    click(b, "send-text");
    wait(b, &log_has("in", "in rust"));
    let heard = js(
        b,
        "[...document.querySelectorAll('#log > li.in')].map(li => li.textContent).join('|')",
    );
    assert!(!heard.as_str().unwrap().contains("in the café"), "{heard}");

    b.switch_to(&second);
    let heard = js(
        b,
        "[...document.querySelectorAll('#log > li.in')].map(li => li.textContent).join('|')",
    );
    assert!(!heard.as_str().unwrap().contains("in rust"), "{heard}");
}

#[test]
#[cfg(feature = "tls")]
fn demo_page_talks_to_the_server_over_https() {
    let pki = Pki::new("browser");
    let tls = pki.tls_args();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["--greeting-delay", "1s"]);
    let server = Server::start(&args);
    let page = server.http_url();
    assert!(page.starts_with("https://127.0.0.1:"), "{page}");

    // A browser that does not know the certificate refuses the page: the pin below is what
    // makes the rest work, not a machine that trusts anything.
    {
        let mut stranger = Chromium::launch().expect("start Chromium");
        let refused = stranger
            .navigate(&page)
            .expect_err("an unknown CA is refused");
        assert!(refused.to_string().contains("ERR_CERT"), "{refused}");
    }

    // Trust exactly our certificate: the SHA-256 of its public key.
    let pin = format!("--ignore-certificate-errors-spki-list={}", pki.spki_sha256);
    let mut browser = Chromium::launch_with(&[pin]).expect("start Chromium");
    let b = &mut browser;
    b.set_viewport(1200, 900).unwrap();
    b.navigate(&page).unwrap();
    wait(b, &status_is("open", "open"));
    assert_eq!(js(b, "location.protocol"), "https:");

    // The page chose wss:// from its own scheme, and shows it.
    let wss = server.page_ws_url();
    assert!(wss.starts_with("wss://127.0.0.1:"), "{wss}");
    assert_eq!(js(b, "url"), wss.as_str(), "the page's own URL");
    assert_eq!(js(b, "ws.url"), wss.as_str(), "the socket it opened");
    wait(b, &text_is("url", &wss));
    wait(b, &log_has("event", &wss));

    // /healthz over https, as the page asks it.
    wait(b, &text_is("server", "echo mode · greeting after 1 s"));

    // The console snippet gives the wss:// address.
    let snippet = js(b, "document.getElementById('snippet').textContent");
    let expected = format!("new WebSocket('{wss}')");
    assert!(
        snippet.as_str().unwrap().contains(&expected),
        "the snippet has {expected}: {snippet}"
    );

    // Text and binary echo over TLS.
    type_into(b, "text", TEXT);
    click(b, "send-text");
    wait(b, &log_has("out", TEXT));
    wait(b, &log_has("in", TEXT));
    set_number(b, "binary-size", "100");
    click(b, "send-binary");
    let binary = "binary 100 bytes: 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 …";
    wait(b, &log_has("out", binary));
    wait(b, &log_has("in", binary));

    // The greeting, a second after connecting.
    wait(b, &log_has("in", "hello client !!!"));

    // Close and reconnect, again over wss://.
    click(b, "close");
    wait(b, &status_is("closed", "1000"));
    click(b, "reconnect");
    wait(b, &status_is("open", "open"));
    type_into(b, "text", "after reconnect");
    click(b, "send-text");
    wait(b, &log_has("in", "after reconnect"));

    let errors: Vec<&String> = b
        .console()
        .iter()
        .filter(|line| line.starts_with("uncaught") || line.starts_with("console.error"))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:?}");
    let error_entries = js(b, "document.querySelectorAll('#log > li.error').length");
    assert_eq!(error_entries, 0, "no error entries in the log");
}

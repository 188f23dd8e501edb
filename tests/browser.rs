//! End-to-end test of the demo page in a real (headless) Chromium.
//!
//! Starts the wsecho binary on a free port, loads its page at `/` and uses it
//! like a person would: send text and binary messages, receive the echoes and
//! the greeting, clear the log, close the connection, reconnect. Screenshots
//! of the page go to `<target dir>/screenshots/`: `demo-page.png` (1200×900),
//! `demo-page-phone.png` (375×740), `demo-page-dark.png` (closed, dark) and
//! `demo-page-controls.png` (the test controls open).
//!
//! A second run serves the page over `https://` with a certificate made for the
//! test: the page must pick `wss://` by itself. Chromium trusts exactly that
//! certificate, by the hash of its public key, and nothing on the machine changes.
//!
//! Another run puts a TCP relay between the page and a broadcast server with history, and cuts
//! it: the page must reconnect by itself, resume where it was and get every message once.
//!
//! Needs Chromium: run `scripts/install-chromium.sh`, or set `$CHROMIUM`.

#[path = "support/chromium.rs"]
mod chromium;
#[cfg(feature = "tls")]
#[path = "support/pki.rs"]
mod pki;

use std::io::{self, BufRead, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
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

    /// The address it listens on (plain `ws://` only).
    fn address(&self) -> SocketAddr {
        let rest = self.ws_url.strip_prefix("ws://").expect("a ws:// server");
        rest.trim_end_matches('/').parse().expect("IP:PORT")
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

/// A TCP relay between the browser and the server: the test's network, which it can cut.
///
/// This is how the test drops the page's connection without the page asking. Chromium's
/// offline emulation (`Network.emulateNetworkConditions`) fails new requests but leaves open
/// WebSockets alone (crbug.com/423246), and a page cannot be made to stop reading; cutting
/// the TCP connections in between is a real drop, as a flaky network or a restarted proxy
/// gives: the page sees code 1006, and its own reconnecting is what brings it back.
struct Relay {
    address: SocketAddr,
    shared: Arc<Mutex<Relayed>>,
}

struct Relayed {
    /// Where connections go.
    upstream: SocketAddr,
    /// While false, a new connection is closed as soon as it is accepted: a network that is down.
    up: bool,
    /// Both ends of every connection relayed so far, for [`Relay::cut`].
    streams: Vec<TcpStream>,
}

impl Relay {
    /// Relays every connection to 127.0.0.1:PORT (a free port) to `upstream`. The thread that
    /// accepts lives as long as the test binary; what it relays ends when the relay is dropped.
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let address = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Mutex::new(Relayed {
            upstream,
            up: true,
            streams: Vec::new(),
        }));
        let relayed = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut relayed = relayed.lock().unwrap();
                if !relayed.up {
                    continue; // dropped here: closed at once
                }
                let Ok(server) = TcpStream::connect(relayed.upstream) else {
                    continue;
                };
                let ends = (client.try_clone(), server.try_clone());
                let (Ok(client_end), Ok(server_end)) = ends else {
                    continue;
                };
                pipe(
                    client_end.try_clone().unwrap(),
                    server_end.try_clone().unwrap(),
                );
                pipe(server_end, client_end);
                relayed.streams.extend([client, server]);
            }
        });
        Relay { address, shared }
    }

    /// The page's address through the relay.
    fn http_url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// The WebSocket address through the relay, `ws://127.0.0.1:PORT`.
    fn ws_url(&self) -> String {
        format!("ws://{}", self.address)
    }

    /// Cuts every connection, and refuses new ones until [`Relay::restore`].
    fn cut(&self) {
        let mut relayed = self.shared.lock().unwrap();
        relayed.up = false;
        for stream in relayed.streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    fn restore(&self) {
        self.shared.lock().unwrap().up = true;
    }

    /// Relays new connections to `upstream` from now on.
    fn redirect(&self, upstream: SocketAddr) {
        self.shared.lock().unwrap().upstream = upstream;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` on a thread of its own, until `from` ends or breaks; then `to` gets
/// the end of the stream too, so that a close on one side is a close on the other.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A WebSocket client of the test's own, in the lobby, straight to the server: it sends the
/// room's messages, and learns the room's epoch from its own resume header.
struct Peer {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    epoch: String,
}

impl Peer {
    fn join(server: &Server) -> Peer {
        let (mut ws, _) =
            tungstenite::connect(format!("{}/?resume", server.ws_url)).expect("connect a peer");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        }
        let header = ws.read().expect("the resume header");
        let header: Value = serde_json::from_str(header.to_text().unwrap()).unwrap();
        let epoch = header["epoch"].as_str().expect("an epoch").to_string();
        Peer { ws, epoch }
    }

    /// Sends `text` to the room and reads it back: once it is back, the server has numbered it.
    #[track_caller]
    fn say(&mut self, text: &str) {
        self.ws.send(tungstenite::Message::text(text)).unwrap();
        let back = self.ws.read().expect("its own message back");
        assert_eq!(
            back.to_text().unwrap(),
            text,
            "the peer hears its own message"
        );
    }
}

/// What the page's log shows as received, in order: each message's text and offset.
#[track_caller]
fn received(browser: &mut Chromium) -> Vec<(String, Option<u64>)> {
    let list = js(
        browser,
        "[...document.querySelectorAll('#log > li.in')].map(li => \
             [li.querySelector('.body').textContent, li.dataset.offset ?? null])",
    );
    let list = list.as_array().expect("a list").iter();
    list.map(|pair| {
        let text = pair[0].as_str().expect("the text").to_string();
        let offset = pair[1].as_str().map(|o| o.parse().expect("a number"));
        (text, offset)
    })
    .collect()
}

/// JavaScript: the log shows `n` received messages.
fn received_len_is(n: usize) -> String {
    format!("document.querySelectorAll('#log > li.in').length === {n}")
}

/// The page's connection breaks without the page asking: it reconnects by itself after its
/// backoff, resumes where it was and gets what was sent meanwhile, each message once and in
/// order, and says how many it recovered. After a server restart it says it could not.
#[test]
fn demo_page_resumes_after_a_dropped_connection() {
    let args = ["--broadcast", "--history", "100", "--greeting-delay", "off"];
    let mut server = Server::start(&args);
    let relay = Relay::start(server.address());
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;
    b.set_viewport(1200, 900).unwrap();
    b.navigate(&relay.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    wait(
        b,
        &log_has("event", "joined the lobby as a newcomer at offset 0"),
    );
    assert_eq!(
        js(b, "ws.url"),
        format!("{}/?resume", relay.ws_url()).as_str()
    );

    // Three messages: offsets 1 to 3, and the page shows where it is.
    let mut peer = Peer::join(&server);
    let epoch = peer.epoch.clone();
    for text in ["m1", "m2", "m3"] {
        peer.say(text);
    }
    wait(b, &received_len_is(3));
    wait(
        b,
        &text_is("position", &format!("epoch {epoch} · last offset 3")),
    );

    // The network goes: the page's connection breaks, and its first try to come back fails.
    // What is said meanwhile, it misses.
    relay.cut();
    for text in ["m4", "m5", "m6"] {
        peer.say(text);
    }
    wait(b, &log_has("event", "code 1006"));
    wait(b, &log_has("event", "reconnecting in"));
    wait(b, &log_has("event", "(try 2,"));
    assert_eq!(received(b).len(), 3, "nothing arrives while cut off");

    // The network is back: the page resumes after offset 3, and gets 4 to 6.
    relay.restore();
    wait(
        b,
        &log_has("event", &format!("resumed after {epoch}:3: nothing lost")),
    );
    assert_eq!(
        js(b, "ws.url"),
        format!("{}/?resume={epoch}:3", relay.ws_url()).as_str()
    );
    wait(b, &log_has("event", "recovered 3 messages, offsets 4 to 6"));
    wait(b, &status_is("open", "open"));

    // And it hears what is said next, live.
    for text in ["m7", "m8"] {
        peer.say(text);
    }
    wait(b, &received_len_is(8));
    let expected: Vec<(String, Option<u64>)> =
        (1..=8).map(|i| (format!("m{i}"), Some(i))).collect();
    assert_eq!(received(b), expected, "every message once, in order");
    wait(
        b,
        &text_is("position", &format!("epoch {epoch} · last offset 8")),
    );

    // A restart: the new server numbers the room anew, in another epoch, and has none of
    // the old messages. The page says it could not recover, and counts from the new start.
    let restarted = Server::start(&args);
    relay.redirect(restarted.address());
    server.stop();
    wait(
        b,
        &log_has("warn", &format!("could not recover after {epoch}:8")),
    );
    let mut peer = Peer::join(&restarted);
    assert_ne!(peer.epoch, epoch, "a new epoch after a restart");
    peer.say("n1");
    wait(b, &received_len_is(9));
    assert_eq!(received(b)[8], ("n1".to_string(), Some(1)));
    wait(
        b,
        &text_is("position", &format!("epoch {} · last offset 1", peer.epoch)),
    );

    // The network goes again, and the user clicks Close while the page waits to reconnect:
    // the page stops trying. (The check and the click run in one go in the page, so that a
    // try cannot start in between.)
    relay.cut();
    let clicked = js(
        b,
        "new Promise((resolve) => { \
             const check = () => { \
                 if (document.getElementById('status').dataset.state !== 'waiting') \
                     return setTimeout(check, 5); \
                 document.getElementById('close').click(); \
                 resolve(true); \
             }; \
             check(); \
         })",
    );
    assert_eq!(clicked, true);
    wait(b, &status_is("closed", "closed"));
    wait(b, &log_has("event", "stopped reconnecting"));
    assert!(disabled(b, "close"), "Close is disabled");
    assert!(!disabled(b, "reconnect"), "Reconnect is enabled");

    // Reconnect connects at once, and resumes where the page was.
    relay.restore();
    click(b, "reconnect");
    wait(b, &status_is("open", "open"));
    let resumed = format!("resumed after {}:1: nothing lost", peer.epoch);
    wait(b, &log_has("event", &resumed));

    let uncaught: Vec<&String> = b
        .console()
        .iter()
        .filter(|line| line.starts_with("uncaught"))
        .collect();
    assert!(uncaught.is_empty(), "exceptions in the page: {uncaught:?}");
}

/// The test controls (docs/testing-clients.md) from a browser, as that document's recipes use
/// them: a Close with a code and a reason, a reset, fragments, a burst, slow echoes, whoami.
#[test]
fn test_controls_from_a_browser() {
    let server = Server::start(&["--greeting-delay", "off"]);
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;
    b.navigate(&server.http_url()).unwrap();
    let base = server.page_ws_url();
    js(
        b,
        &format!(
            "window.got = {{}};
             const open = (name, query, onopen) => {{
               const ws = new WebSocket({base} + query);
               const seen = got[name] = {{ messages: [], start: performance.now() }};
               ws.onopen = () => onopen && onopen(ws);
               ws.onmessage = (e) => seen.messages.push(
                 [e.data, Math.round(performance.now() - seen.start)]);
               ws.onclose = (e) => {{ seen.close = [e.code, e.reason, e.wasClean]; }};
             }};
             open('close', '?close=4001&reason=go%20away&after=1', (ws) => ws.send('hi'));
             open('reset', '?reset=2', (ws) => {{ ws.send('a'); ws.send('b'); }});
             open('fragment', '?fragment=1', (ws) => ws.send('in pieces'));
             open('send', '?send=50&size=20', null);
             open('delay', '?delay=300ms', (ws) => ws.send('late'));
             open('whoami', '?whoami', null);
             open('bad', '?close=999', null);",
            base = js_str(&base)
        ),
    );
    wait(b, "got.close.close !== undefined");
    assert_eq!(
        js(
            b,
            "JSON.stringify([got.close.messages.map(m => m[0]), got.close.close])"
        ),
        r#"[["hi"],[4001,"go away",true]]"#
    );
    wait(b, "got.reset.close !== undefined");
    assert_eq!(
        js(
            b,
            "JSON.stringify([got.reset.messages.map(m => m[0]), got.reset.close])"
        ),
        r#"[["a","b"],[1006,"",false]]"#
    );
    wait(b, "got.fragment.messages.length === 1");
    assert_eq!(js(b, "got.fragment.messages[0][0]"), "in pieces");
    wait(b, "got.send.messages.length === 50");
    assert_eq!(js(b, "got.send.messages[49][0]"), "50..................");
    wait(b, "got.delay.messages.length === 1");
    let late = js(b, "got.delay.messages[0][1]").as_u64().unwrap();
    assert!(late >= 300, "the delayed echo came after {late} ms");
    wait(b, "got.whoami.messages.length === 1");
    let whoami: Value =
        serde_json::from_str(js(b, "got.whoami.messages[0][0]").as_str().unwrap()).unwrap();
    assert_eq!(whoami["query"], "whoami");
    let origin = server.http_url();
    let origin = origin.trim_end_matches('/');
    assert!(
        whoami["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "Origin" && h[1] == origin),
        "{whoami}"
    );
    // A 400 at the handshake: the browser only sees the connection fail.
    wait(b, "got.bad.close !== undefined");
    assert_eq!(js(b, "got.bad.close[0]"), 1006);
}

/// The page's "Test controls": their values go in the next connection's query (shown in
/// the page's URL), the close they ask for ends the connection without a reconnect, whoami's
/// first message shows as the request's description, and a value the server refuses is
/// reported. In broadcast mode the echo-only ones (delay, send) are disabled.
#[test]
fn demo_page_connects_with_test_controls() {
    let server = Server::start(&["--greeting-delay", "off"]);
    let mut browser = Chromium::launch().expect("start Chromium");
    let b = &mut browser;
    b.set_viewport(1200, 900).unwrap();
    b.navigate(&server.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    assert!(
        !disabled(b, "tc-delay") && !disabled(b, "tc-send"),
        "echo mode takes them"
    );

    js(b, "document.getElementById('controls').open = true");
    wait(b, PAGE_FITS);
    type_into(b, "tc-close", "4001");
    type_into(b, "tc-reason", "smoke test");
    type_into(b, "tc-after", "1");
    let with_close = format!(
        "{}?close=4001&reason=smoke%20test&after=1",
        server.page_ws_url()
    );
    wait(b, &text_is("url", &with_close));
    assert_eq!(
        js(b, PAGE_FITS),
        true,
        "the page fits with the controls open and set"
    );
    b.screenshot(&screenshot_dir().join("demo-page-controls.png"))
        .unwrap();
    click(b, "tc-apply");
    wait(b, &log_has("event", &with_close));
    wait(b, &status_is("open", "open"));
    type_into(b, "text", "the one echo");
    click(b, "send-text");
    wait(b, &log_has("in", "the one echo"));
    wait(
        b,
        &log_has("event", "code 4001, reason \"smoke test\", clean"),
    );
    wait(b, &status_is("closed", "4001 smoke test"));
    wait(
        b,
        &log_has("event", "the connection ended as its test controls asked"),
    );
    assert!(!disabled(b, "reconnect"), "Reconnect connects again");

    // whoami instead: the first message is the request's description.
    js(
        b,
        "for (const id of ['tc-close', 'tc-reason', 'tc-after']) \
           document.getElementById(id).value = '';
         document.getElementById('tc-whoami').click();",
    );
    click(b, "tc-apply");
    wait(
        b,
        &log_has("event", "the server sees this client as 127.0.0.1:"),
    );
    wait(b, &log_has("event", "GET /?whoami"));
    assert_eq!(
        js(b, "document.querySelectorAll('#log > li.in').length"),
        1,
        "whoami's message is not shown as a received one"
    );

    // A value the server refuses: a 400 at the handshake, reported, no retrying.
    js(b, "document.getElementById('tc-whoami').click()");
    type_into(b, "tc-fragment", "0");
    click(b, "tc-apply");
    wait(
        b,
        &log_has(
            "error",
            "the server refused the connection with ?fragment=0",
        ),
    );
    wait(b, &status_is("error", "refused"));
    assert!(!disabled(b, "reconnect"));

    // Broadcast mode: delay and send are for echoes only.
    let broadcast = Server::start(&["--broadcast", "--greeting-delay", "off"]);
    b.navigate(&broadcast.http_url()).unwrap();
    wait(b, &status_is("open", "open"));
    assert!(disabled(b, "tc-delay") && disabled(b, "tc-send"));
    assert!(!disabled(b, "tc-close") && !disabled(b, "tc-fragment"));
}

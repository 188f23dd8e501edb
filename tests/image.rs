//! The container image: `scripts/image.sh` builds it (deploy/Containerfile), and podman runs
//! it as a user would, with wsecho's options after the image's name.
//!
//! These tests build a release binary and an image and need podman, so they are `#[ignore]`d:
//! `cargo test` leaves them out, and `scripts/test.sh` installs podman and runs them with
//! `cargo test --test image -- --ignored`. The image is built once, by the first test that
//! needs it. Linux only, like the image.
//!
//! Every container runs with [`RUN_FLAGS`] and is removed when its test ends, passed or
//! failed. Readiness is the URL line on the container's standard output, as for the server
//! outside a container: nothing sleeps to wait for it.

#![cfg(target_os = "linux")]

#[path = "support/pki.rs"]
mod pki;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use pki::Pki;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use support::{PATIENCE, connect, expect_close, http_exchange, next_data};
use tungstenite::Message;

/// The name `scripts/image.sh` gives the image.
const IMAGE: &str = "localhost/wsecho:latest";

/// The largest image we accept, in bytes: 40 MB. The image is about 8 MB (the stripped
/// binary, about 5.5 MB, and glibc's loader, libc and libgcc_s).
const MAX_IMAGE_BYTES: u64 = 40_000_000;

/// The user the image runs as, by number (deploy/Containerfile's `USER`).
const USER_ID: &str = "65532";

/// What `podman run` gets before the image's name, and why:
///
/// - `--network host`: the container uses the host's network, so `--port 0` picks a free port
///   that the ready line names and the test reaches on 127.0.0.1. Publishing a fixed port
///   (`-p 3000:3000`, as the docs show) could collide with another server on the machine.
/// - `--ulimit nofile=...` and `--ulimit nproc=...`, both: podman running as root gives the
///   container its own open-file and process limits (1048576 open files; 32768 processes, or
///   1048576 when only the open-file limit is given), above the hard limits of many hosts.
///   Raising a hard limit takes CAP_SYS_RESOURCE, and where root lacks it (in some sandboxes
///   and CI machines) runc refuses to start the container ("error setting rlimit type 7:
///   operation not permitted", type 6 for processes). Limits below the host's hard limits
///   work everywhere; 4096 is plenty for a test.
const RUN_FLAGS: &[&str] = &[
    "--network",
    "host",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// Builds the image once, with the script users run, and returns its name.
fn image() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
        let mut command = Command::new(&script);
        // cargo gives this test the package's variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
        // ...); build scripts that watch them (ring's) would see them change, and the
        // script's release build would then rebuild those crates, and the next plain
        // `cargo build --release` again. The script's cargo gets the environment a user's has.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
                || name == "OUT_DIR"
            {
                command.env_remove(name.as_ref());
            }
        }
        let output = command
            .env("CONTAINER_ENGINE", "podman")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(output.status.success(), "scripts/image.sh failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let name = stdout.lines().last().unwrap_or_default().to_string();
        assert_eq!(
            name, IMAGE,
            "scripts/image.sh names the image it built last"
        );
        name
    })
}

/// Runs `podman ARGS`, panicking with its standard error when it fails.
fn podman(args: &[&str]) -> String {
    let output = podman_output(args);
    assert!(
        output.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn podman_output(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect(
            "podman is not installed: scripts/test.sh installs it (scripts/need.sh podman podman)",
        )
}

/// A container of the image, run attached (`podman run` without `-d`) so that its standard
/// output and error are this test's to read; removed (`podman rm -f`) on drop.
struct Container {
    name: String,
    /// `podman run`: it exits with the container's exit status.
    run: Child,
    /// `ws://127.0.0.1:PORT` (or `wss://`), from the ready line.
    url: String,
    addr: SocketAddr,
    log: support::Log,
}

impl Container {
    /// `podman run RUN_FLAGS PODMAN_ARGS IMAGE --port 0 --log-level debug WSECHO_ARGS`, and
    /// waits for wsecho's ready line.
    fn run(podman_args: &[&str], wsecho_args: &[&str]) -> Container {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let image = image();
        let name = format!(
            "wsecho-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut run = Command::new("podman")
            .args(["run", "--name", &name])
            .args(RUN_FLAGS)
            .args(podman_args)
            .arg(image)
            .args(["--port", "0", "--log-level", "debug"])
            .args(wsecho_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman is not installed: scripts/test.sh installs it");

        let log = support::Log::follow(run.stderr.take().unwrap());
        let (ready, ready_line) = mpsc::channel();
        let stdout = run.stdout.take().unwrap();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready.send(lines.next().and_then(Result::ok).unwrap_or_default());
            lines.for_each(drop); // nothing else is expected; keep the pipe drained
        });

        // The container is created once podman runs, even if the ready line never comes, so
        // the guard exists before we wait for it.
        let mut container = Container {
            name,
            run,
            url: String::new(),
            addr: ([127, 0, 0, 1], 0).into(),
            log,
        };
        // A container starts in well under a second; the first one may wait for the image.
        let line = ready_line
            .recv_timeout(PATIENCE * 3)
            .unwrap_or_default()
            .trim()
            .to_string();
        // --host 0.0.0.0 (the image's ENTRYPOINT): every interface, the host's loopback too.
        let (scheme, port) = line
            .strip_prefix("ws://0.0.0.0:")
            .map(|port| ("ws", port))
            .or_else(|| {
                line.strip_prefix("wss://0.0.0.0:")
                    .map(|port| ("wss", port))
            })
            .unwrap_or_else(|| {
                panic!(
                    "ready line {line:?}, podman's and wsecho's standard error:\n{}",
                    container.log()
                )
            });
        let port: u16 = port.parse().unwrap();
        container.addr = ([127, 0, 0, 1], port).into();
        container.url = format!("{scheme}://127.0.0.1:{port}");
        container
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    fn wait_for_log(&self, needles: &[&str]) -> String {
        self.log.wait_for(needles)
    }

    fn log(&self) -> String {
        self.log.text()
    }

    /// `podman inspect --format FORMAT` of the container.
    fn inspect(&self, format: &str) -> String {
        podman(&["container", "inspect", "--format", format, &self.name])
    }

    /// The container's process as the host sees it: its `/proc/PID/status`.
    fn proc_status(&self) -> String {
        let pid = self.inspect("{{.State.Pid}}");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
    }

    /// Waits for `podman run` to exit, as it does when the container has; the container's
    /// exit status is its own.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.run.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not exit; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman_output(&["rm", "--force", &self.name]);
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// One line of a `/proc/PID/status` text, its fields after the name.
fn status_field<'a>(status: &'a str, field: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
        .split_whitespace()
        .collect()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

/// The JSON body of an HTTP response.
fn json_body(response: &str) -> serde_json::Value {
    let body = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {response:?}"))
        .1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn the_image_is_scratch_with_wsecho_its_libraries_and_a_user_and_at_most_40_mb() {
    let image = image();
    let inspected: serde_json::Value =
        serde_json::from_str(&podman(&["image", "inspect", image])).unwrap();
    let inspected = &inspected[0];
    let size = inspected["Size"].as_u64().unwrap();
    println!("{image}: {size} bytes");
    assert!(size <= MAX_IMAGE_BYTES, "{image} is {size} bytes");

    let config = &inspected["Config"];
    assert_eq!(config["User"], format!("{USER_ID}:{USER_ID}"));
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/wsecho", "--host", "0.0.0.0"])
    );
    assert!(
        config["Cmd"].as_array().is_none_or(Vec::is_empty),
        "{config}"
    );
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert!(config["ExposedPorts"].get("3000/tcp").is_some(), "{config}");

    // One layer, from scratch: its files are wsecho, the libraries it loads, and the user.
    let root = podman(&["image", "mount", image]);
    let mut files = Vec::new();
    let mut folders = vec![std::path::PathBuf::from(&root)];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                folders.push(path);
            } else {
                let inside = path.strip_prefix(&root).unwrap().display().to_string();
                files.push(inside);
            }
        }
    }
    let passwd = std::fs::read_to_string(Path::new(&root).join("etc/passwd")).unwrap();
    podman(&["image", "unmount", image]);
    files.sort();
    for file in &files {
        let library =
            (file.starts_with("lib/") || file.starts_with("lib64/")) && file.contains(".so");
        assert!(
            library || ["wsecho", "etc/passwd", "etc/group"].contains(&file.as_str()),
            "unexpected file /{file} in the image: {files:?}"
        );
    }
    for needed in ["wsecho", "etc/passwd", "etc/group"] {
        assert!(files.iter().any(|f| f == needed), "no /{needed}: {files:?}");
    }
    assert!(
        files.iter().any(|f| f.contains("libc.so")),
        "no libc: {files:?}"
    );
    assert_eq!(
        passwd.trim(),
        format!("wsecho:x:{USER_ID}:{USER_ID}:wsecho:/nonexistent:/sbin/nologin")
    );
}

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn the_container_echoes_greets_and_answers_healthz_as_an_unprivileged_user() {
    let container = Container::run(&[], &["--greeting-delay", "300ms"]);

    let mut ws = connect(&container.url);
    ws.send(Message::text("hello from the host ✓")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("hello from the host ✓"));
    ws.send(Message::binary(vec![0u8, 1, 2, 254, 255])).unwrap();
    assert_eq!(
        next_data(&mut ws),
        Message::binary(vec![0u8, 1, 2, 254, 255])
    );
    let Message::Text(greeting) = next_data(&mut ws) else {
        panic!("the greeting is text")
    };
    assert!(greeting.ends_with(" hello client !!!"), "{greeting}");

    // The options after the image's name reached wsecho: the greeting delay is ours.
    let health = json_body(&http_exchange(container.addr, get("/healthz").as_bytes()));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "echo");
    assert_eq!(health["greeting_delay_ms"], 300);
    assert_eq!(health["connections"], 1);

    // Not root: the user of the image, real, effective, saved and file-system ids alike,
    // and no capabilities at all.
    let status = container.proc_status();
    assert_eq!(status_field(&status, "Uid"), [USER_ID; 4], "{status}");
    assert_eq!(status_field(&status, "Gid"), [USER_ID; 4], "{status}");
    assert_eq!(
        status_field(&status, "CapEff"),
        ["0000000000000000"],
        "{status}"
    );
    assert_eq!(
        podman(&["top", &container.name, "user"]).lines().nth(1),
        Some("wsecho")
    );
}

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn podman_stop_closes_every_client_with_1001_and_the_container_exits_0() {
    let mut container = Container::run(&[], &["--greeting-delay", "off"]);
    let mut clients: Vec<_> = (0..2).map(|_| connect(&container.url)).collect();
    for ws in &mut clients {
        ws.send(Message::text("here")).unwrap();
        assert_eq!(next_data(ws), Message::text("here"));
    }

    // wsecho is the container's PID 1 (the last NSpid is its pid in its own namespace). PID 1
    // gets no signal its handlers do not ask for; wsecho installs one for SIGTERM.
    let status = container.proc_status();
    assert_eq!(
        status_field(&status, "NSpid").last(),
        Some(&"1"),
        "{status}"
    );
    let caught = u64::from_str_radix(status_field(&status, "SigCgt")[0], 16).unwrap();
    assert_ne!(caught & (1 << (15 - 1)), 0, "SIGTERM is caught: {status}");

    // podman stop sends the image's STOPSIGNAL, SIGTERM, and SIGKILL 10 s later.
    let started = Instant::now();
    podman(&["stop", &container.name]);
    for ws in &mut clients {
        assert_eq!(expect_close(ws), (1001, "server shutting down".to_string()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the stop waited for SIGKILL"
    );
    let status = container.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", container.log());
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0");
    container.wait_for_log(&["shutting down: closing 2 connections"]);
    container.wait_for_log(&[
        "stopped: served 2 connections",
        "closed 2 connections open at shutdown, 0 still closing",
    ]);
}

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn options_after_the_image_name_reach_wsecho_broadcast() {
    let container = Container::run(&[], &["--broadcast", "--greeting-delay", "off"]);
    let mut alice = connect(&container.url);
    let mut bob = connect(&container.url);
    bob.send(Message::text("bob joined")).unwrap();
    assert_eq!(next_data(&mut bob), Message::text("bob joined"));
    assert_eq!(next_data(&mut alice), Message::text("bob joined"));
    alice.send(Message::text("to everyone")).unwrap();
    assert_eq!(next_data(&mut bob), Message::text("to everyone"));
    assert_eq!(next_data(&mut alice), Message::text("to everyone"));
    let health = json_body(&http_exchange(container.addr, get("/healthz").as_bytes()));
    assert_eq!(health["mode"], "broadcast");
}

/// `GET path` over TLS to `addr` as `localhost`, trusting only `ca_pem`: the whole response,
/// or the TLS handshake's error.
fn https_get(addr: SocketAddr, ca_pem: &str, path: &str) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(pki::trusting(ca_pem), name).unwrap();
    let mut tls = StreamOwned::new(session, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    tls.write_all(get(path).as_bytes())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Makes a folder and its files readable by the container's user, whatever the umask.
fn readable_by_everyone(folder: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set(folder, 0o755);
    for entry in std::fs::read_dir(folder).unwrap() {
        set(&entry.unwrap().path(), 0o644);
    }
}

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn tls_from_a_read_only_mount_and_sighup_reloads_it() {
    // As docs/deploying.md shows: the certificate's folder mounted read-only at /certs. The
    // files must be readable by the image's user; these test files are (mode 644).
    let mut pki = Pki::new("image");
    readable_by_everyone(&pki.dir);
    let mount = format!("{}:/certs:ro", pki.dir.display());
    let container = Container::run(
        &["--volume", &mount],
        &[
            "--tls-cert",
            "/certs/cert.pem",
            "--tls-key",
            "/certs/key.pem",
        ],
    );
    assert!(container.url.starts_with("wss://"), "{}", container.url);
    let first_ca = pki.ca.clone();
    let health = https_get(container.addr, &first_ca, "/healthz").expect("TLS handshake");
    assert_eq!(json_body(&health)["status"], "ok");

    // A renewed certificate, from another authority, written over the old files on the host;
    // `podman kill --signal HUP` makes wsecho read them again.
    pki.issue("next-cert.pem", "next-key.pem");
    std::fs::copy(pki.dir.join("next-cert.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("next-key.pem"), pki.dir.join("key.pem")).unwrap();
    readable_by_everyone(&pki.dir);
    podman(&["kill", "--signal", "HUP", &container.name]);
    container.wait_for_log(&["SIGHUP: reloaded the TLS certificate from /certs/cert.pem"]);
    let health = https_get(container.addr, &pki.ca, "/healthz").expect("TLS handshake");
    assert_eq!(json_body(&health)["status"], "ok");
    assert!(
        https_get(container.addr, &first_ca, "/healthz").is_err(),
        "new connections get the new certificate"
    );
}

/// The idle connections the memory check holds in the container: enough that the process's
/// own fixed costs (its spare threads, the allocator's arenas) are small beside them.
const IDLE_CLIENTS: usize = 1000;

/// What an idle connection may cost the server's heap and stacks in the image, in bytes,
/// with glibc's per-thread cache off as the image sets it: docs/performance.md's idle row is
/// 11.1 to 11.3 KiB; with the cache on it is 13.6. 12.5 KiB leaves room for the process's
/// fixed costs, spread over the clients, and none for the cache.
const IDLE_BYTES_PER_CLIENT: u64 = 12_800;

#[test]
#[ignore = "builds a container image and needs podman: scripts/test.sh runs it"]
fn the_image_runs_with_glibcs_per_thread_cache_off_and_an_idle_connection_costs_the_memory_row() {
    let container = Container::run(&[], &["--greeting-delay", "off"]);
    let pid = container.inspect("{{.State.Pid}}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert!(
        environ
            .lines()
            .any(|line| line == "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "{environ}"
    );
    container
        .log
        .wait_for(&["glibc's per-thread allocation cache: off"]);
    let rss = || -> u64 {
        let status = container.proc_status();
        let kib = status_field(&status, "RssAnon");
        kib[0].parse::<u64>().unwrap()
    };
    let before = rss();
    let clients: Vec<TcpStream> = (0..IDLE_CLIENTS)
        .map(|_| support::raw_websocket(container.addr))
        .collect();
    // Idle connections settle (give back what their handshake grew) one to two seconds after.
    let deadline = Instant::now() + Duration::from_secs(15);
    let per_client = || (rss().saturating_sub(before)) * 1024 / IDLE_CLIENTS as u64;
    while per_client() > IDLE_BYTES_PER_CLIENT && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let cost = per_client();
    assert!(
        cost <= IDLE_BYTES_PER_CLIENT,
        "an idle connection costs {cost} bytes in the image, over {IDLE_BYTES_PER_CLIENT}"
    );
    drop(clients);
}

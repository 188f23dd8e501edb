//! The `wsecho` command: parse the arguments, set up logging and signals, run the server.

mod allocator;
mod cli;
mod log_output;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use clap::error::ErrorKind;
use cli::Args;
use log::info;
use wsecho::Server;

/// Exit status for a second Ctrl-C: the shell's usual 128 + SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// Signals that arrive within this long after the first one was acknowledged are the same
/// request: `timeout`, a service manager or a shell may send SIGTERM to the process and to its
/// group at once, and a person's second Ctrl-C takes far longer than this.
const SIGNALS_TOGETHER: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(one_line(&e)),
    };
    let config = match args.config() {
        Ok(config) => config,
        Err(why) => return fail(format!("error: {why}")),
    };
    match run(&args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("error: {e}")),
    }
}

fn run(args: &Args, config: wsecho::Config) -> Result<(), String> {
    log_output::init(args.log_level, args.log_file.as_deref())?;
    let server = Server::bind(config).map_err(|e| e.to_string())?;
    if let Some(line) = allocator::describe() {
        info!("{line}");
    }

    // The handlers go in before the ready line: a script that waits for the line and then
    // sends SIGTERM must get a graceful shutdown, never the default "killed by a signal".
    let stop = Arc::new(StopRequests {
        server: server.shutdown_handle(),
        acknowledged: OnceLock::new(),
    });
    let on_ctrl_c = Arc::clone(&stop);
    ctrlc::set_handler(move || on_ctrl_c.request())
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    #[cfg(unix)]
    on_unix_signals(stop, &server)?;

    // The one line on standard output: scripts wait for it to know the server is ready.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", server.url()).and_then(|()| stdout.flush());
    drop(stdout);

    server.run().map_err(|e| e.to_string())?;
    Ok(())
}

/// Requests to stop (Ctrl-C, SIGTERM): the first starts a graceful shutdown, a second one
/// after the first was acknowledged exits at once.
struct StopRequests {
    server: wsecho::ShutdownHandle,
    /// When the first request was acknowledged.
    acknowledged: OnceLock<Instant>,
}

impl StopRequests {
    fn request(&self) {
        if self.acknowledged.set(Instant::now()).is_ok() {
            info!("shutdown requested; press Ctrl-C again to exit at once");
            self.server.shutdown();
        } else if self
            .acknowledged
            .get()
            .is_some_and(|at| at.elapsed() >= SIGNALS_TOGETHER)
        {
            eprintln!("wsecho: exiting at once");
            std::process::exit(EXIT_INTERRUPTED);
        }
        // Otherwise it is the same request, sent twice.
    }
}

/// SIGTERM stops the server like Ctrl-C; SIGHUP reloads the TLS certificate. Both are read by
/// a thread of their own.
#[cfg(unix)]
fn on_unix_signals(stop: Arc<StopRequests>, server: &Server) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    #[cfg(feature = "tls")]
    let tls = server.tls_reloader();
    #[cfg(not(feature = "tls"))]
    let (tls, _) = (None::<NoTls>, server);
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP])
        .map_err(|e| format!("installing the SIGTERM and SIGHUP handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match (signal, &tls) {
                    (SIGTERM, _) => stop.request(),
                    (_, Some(tls)) => match tls.reload() {
                        Ok(()) => info!(
                            "SIGHUP: reloaded the TLS certificate from {}; new connections use it",
                            tls.files().cert.display()
                        ),
                        Err(e) => log::error!("SIGHUP: {e}; the certificate in use stays"),
                    },
                    (_, None) => info!("SIGHUP: nothing to reload (no TLS); ignored"),
                }
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(())
}

/// In a build without TLS, the reloader SIGHUP never has.
#[cfg(all(unix, not(feature = "tls")))]
enum NoTls {}

#[cfg(all(unix, not(feature = "tls")))]
impl NoTls {
    fn reload(&self) -> Result<(), wsecho::TlsError> {
        match *self {}
    }

    fn files(&self) -> &wsecho::TlsFiles {
        match *self {}
    }
}

/// Prints a one-line error and returns the failing exit status.
fn fail(message: impl AsRef<str>) -> ExitCode {
    eprintln!("wsecho: {}", message.as_ref());
    ExitCode::FAILURE
}

/// clap's error on one line, keeping what it says would be accepted: its first line, the
/// possible values, its tip, and where to read more.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut text = lines.next().unwrap_or("error: bad arguments").to_string();
    for line in lines {
        if line.starts_with("--") || line.starts_with('<') {
            // The arguments a "required arguments were not provided" error names.
            text.push(' ');
            text.push_str(line);
        } else if line.starts_with("[possible values") {
            text.push(' ');
            text.push_str(line);
        } else if let Some(tip) = line.strip_prefix("tip: ") {
            text.push_str("; ");
            text.push_str(tip);
        }
    }
    text.push_str("; see --help");
    text
}

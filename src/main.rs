//! The `wsecho` command: parse the arguments, set up logging and signals, run the server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use clap::error::ErrorKind;
use log::info;
use wsecho::cli::Args;
use wsecho::{Error, Server};

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

fn run(args: &Args, config: wsecho::Config) -> Result<(), Error> {
    wsecho::logging::init(args.log_level, args.log_file.as_deref())?;
    let server = Server::bind(config)?;

    // The handlers go in before the ready line: a script that waits for the line and then
    // sends SIGTERM must get a graceful shutdown, never the default "killed by a signal".
    let stop = Arc::new(StopRequests {
        server: server.shutdown_handle(),
        acknowledged: Mutex::new(None),
    });
    let on_ctrl_c = Arc::clone(&stop);
    ctrlc::set_handler(move || on_ctrl_c.request()).map_err(Error::Signal)?;
    #[cfg(unix)]
    on_unix_signals(stop, server.tls_reloader())?;

    // The one line on standard output: scripts wait for it to know the server is ready.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", server.url()).and_then(|()| stdout.flush());
    drop(stdout);

    server.run()?;
    Ok(())
}

/// Requests to stop (Ctrl-C, SIGTERM): the first starts a graceful shutdown, a second one
/// after the first was acknowledged exits at once.
struct StopRequests {
    server: wsecho::ShutdownHandle,
    acknowledged: Mutex<Option<Instant>>,
}

impl StopRequests {
    fn request(&self) {
        let mut acknowledged = self
            .acknowledged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *acknowledged {
            None => {
                info!("shutdown requested; press Ctrl-C again to exit at once");
                self.server.shutdown();
                *acknowledged = Some(Instant::now());
            }
            Some(at) if at.elapsed() < SIGNALS_TOGETHER => {} // the same request
            Some(_) => {
                eprintln!("wsecho: exiting at once");
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    }
}

/// SIGTERM stops the server like Ctrl-C; SIGHUP reloads the TLS certificate. Both are read by
/// a thread of their own.
#[cfg(unix)]
fn on_unix_signals(
    stop: Arc<StopRequests>,
    tls: Option<wsecho::server::TlsReloader>,
) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP])
        .map_err(|e| Error::Io("installing the SIGTERM and SIGHUP handlers", e))?;
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
        .map_err(|e| Error::Io("starting the signal thread", e))?;
    Ok(())
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

//! The `wsecho` command: parse the arguments, set up logging and signals, run the server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
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

    // The handler goes in before the ready line: a script that waits for the line and then
    // sends SIGTERM must get a graceful shutdown, never the default "killed by a signal".
    let handle = server.shutdown_handle();
    let acknowledged: Mutex<Option<Instant>> = Mutex::new(None);
    ctrlc::set_handler(move || {
        let mut acknowledged = acknowledged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *acknowledged {
            None => {
                info!("shutdown requested; press Ctrl-C again to exit at once");
                handle.shutdown();
                *acknowledged = Some(Instant::now());
            }
            Some(at) if at.elapsed() < SIGNALS_TOGETHER => {} // the same request
            Some(_) => {
                eprintln!("wsecho: exiting at once");
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    })
    .map_err(Error::Signal)?;

    // The one line on standard output: scripts wait for it to know the server is ready.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", server.url()).and_then(|()| stdout.flush());
    drop(stdout);

    server.run()?;
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
        if line.starts_with("[possible values") {
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

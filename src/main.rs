//! The `wsecho` command: parse the arguments, set up logging and signals, run the server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use clap::error::ErrorKind;
use log::info;
use wsecho::cli::Args;
use wsecho::{Error, Server};

/// Exit status for a second Ctrl-C: the shell's usual 128 + SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(first_line(&e.render().to_string())),
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

    // The one line on standard output: scripts wait for it to know the server is ready.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", server.url()).and_then(|()| stdout.flush());
    drop(stdout);

    let handle = server.shutdown_handle();
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            info!("shutdown requested; press Ctrl-C again to exit at once");
            handle.shutdown();
        } else {
            eprintln!("wsecho: exiting at once");
            std::process::exit(EXIT_INTERRUPTED);
        }
    })
    .map_err(Error::Signal)?;

    server.run()?;
    Ok(())
}

/// Prints a one-line error and returns the failing exit status.
fn fail(message: impl AsRef<str>) -> ExitCode {
    eprintln!("wsecho: {}", message.as_ref());
    ExitCode::FAILURE
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim_end()
}

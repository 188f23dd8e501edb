//! Log output: the terminal (standard error), and a file if asked, through `simplelog`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, LevelPadding, SharedLogger, TermLogger,
    TerminalMode, WriteLogger,
};

use crate::error::Error;

/// Sets up logging at `level` to standard error and, if given, appended to `file`.
///
/// Call it before starting threads: finding the local UTC offset for timestamps is only
/// reliable while the process has one thread.
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_rfc3339()
        .set_level_padding(LevelPadding::Right)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        // Our lines only: tungstenite's own debug lines would repeat ours in its words.
        .add_filter_allow_str("wsecho");
    // Without a known offset simplelog logs UTC, which is still a correct time.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();

    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![TermLogger::new(
        level,
        config.clone(),
        TerminalMode::Stderr,
        // Colours on a terminal only, never escape codes in a file or a pipe.
        if std::io::stderr().is_terminal() {
            ColorChoice::Auto
        } else {
            ColorChoice::Never
        },
    )];
    if let Some(path) = file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::LogFile {
                path: path.to_path_buf(),
                source,
            })?;
        loggers.push(WriteLogger::new(level, config, file));
    }
    CombinedLogger::init(loggers).map_err(Error::Logger)
}

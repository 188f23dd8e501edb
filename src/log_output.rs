//! Where the `wsecho` command's log goes: the terminal (standard error), and a file if asked,
//! through `simplelog`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, LevelPadding, SharedLogger, TermLogger,
    TerminalMode, WriteLogger,
};

/// Time stamps like `2026-11-24T22:34:19.648642+00:00`: RFC 3339 with exactly six digits of
/// fraction, so that the columns of a log line up (the RFC 3339 default drops trailing zeros).
const TIME_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6][offset_hour sign:mandatory]:[offset_minute]"
);

/// Sets up logging at `level` to standard error and, if given, appended to `file`.
///
/// Call it before starting threads: finding the local UTC offset for timestamps is only
/// reliable while the process has one thread.
pub(crate) fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), String> {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_custom(TIME_FORMAT)
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
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        loggers.push(WriteLogger::new(level, config, file));
    }
    CombinedLogger::init(loggers).map_err(|e| format!("cannot set up logging: {e}"))
}

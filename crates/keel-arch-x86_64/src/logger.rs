//! The `log` facade's backend: every record goes to the serial console with a
//! timestamp from the monotonic clock (seconds since the PVH entry, to the microsecond).

use crate::{serial, time};
use core::fmt::Write;
use log::{LevelFilter, Log, Metadata, Record};

struct SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = time::now().as_nanos() / 1_000;
        serial::with_console(|port| {
            let _ = writeln!(
                port,
                "[{:>5}.{:06}] {:<5} {}",
                micros / 1_000_000,
                micros % 1_000_000,
                record.level(),
                record.args()
            );
        });
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// Installs the serial logger at `level`. Calling it twice keeps the first logger.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Parses a level name as given on the kernel command line (`log=debug`).
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    match name {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_levels() {
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("Debug"), None);
        assert_eq!(parse_level(""), None);
    }
}

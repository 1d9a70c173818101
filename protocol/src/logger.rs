//! The log sink of runv-vmm and runv-agent: one line per record on stderr,
//! `<program>: <message>` for info and `<program>: <level>: <message>` for the
//! other levels, written with one `write(2)` so that lines of concurrent
//! threads never interleave and a seccomp-confined thread needs nothing more.
//!
//! Whatever a guest can trigger again and again is logged through
//! [`log_limited!`](crate::log_limited), which lets a few lines per second
//! through from each call site and counts the rest.

use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines one rate-limited call site may write per second.
pub const LIMITED_LINES_PER_SECOND: u32 = 10;

/// The sink: the program's name and nothing else.
struct StderrLogger {
    program: &'static str,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(self.program, record.level(), record.args());
        // One write of the whole line; a failed write has nowhere to go.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Formats one record as its line, newline included.
fn format_line(program: &str, level: log::Level, args: &std::fmt::Arguments) -> String {
    match level {
        log::Level::Info => format!("{program}: {args}\n"),
        log::Level::Warn => format!("{program}: warning: {args}\n"),
        other => format!("{program}: {}: {args}\n", other.as_str().to_lowercase()),
    }
}

/// Installs the sink for `program`, letting records up to `level` through.
///
/// A second call keeps the first sink and only changes the level.
pub fn init(program: &'static str, level: log::LevelFilter) {
    static LOGGER: OnceLock<StderrLogger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger { program });
    // Only fails when a logger is already installed, which is then kept.
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// One call site's allowance: [`LIMITED_LINES_PER_SECOND`] lines in each
/// second since the process started, the rest counted and reported with the
/// next line let through.
pub struct RateLimit {
    second: AtomicU64,
    written: AtomicU32,
    suppressed: AtomicU32,
}

impl RateLimit {
    /// A call site's allowance, unused.
    pub const fn new() -> Self {
        RateLimit {
            second: AtomicU64::new(0),
            written: AtomicU32::new(0),
            suppressed: AtomicU32::new(0),
        }
    }

    /// Whether a line may be written now; `Some(n)` when it may, with `n`
    /// the lines suppressed since the last one written.
    pub fn admit(&self) -> Option<u32> {
        self.admit_at(seconds_since_start())
    }

    fn admit_at(&self, now: u64) -> Option<u32> {
        // Races between threads can let a line or two more through in a
        // second; the bound still holds within a small factor.
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < LIMITED_LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Whole seconds since the first call (the clock is read through the vDSO).
fn seconds_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Logs at `level` from a call site the guest or a tenant can drive, at most
/// [`LIMITED_LINES_PER_SECOND`](crate::logger::LIMITED_LINES_PER_SECOND)
/// lines a second from this call site.
///
/// ```
/// protocol::log_limited!(log::Level::Warn, "virtio-net: a bad frame of {} bytes", 3);
/// ```
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logger::RateLimit = $crate::logger::RateLimit::new();
        if log::log_enabled!($level) {
            match LIMIT.admit() {
                Some(0) => log::log!($level, $($arg)+),
                Some(suppressed) => log::log!(
                    $level,
                    "{} ({suppressed} similar lines suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_carry_no_level_and_others_do() {
        let line = |level| format_line("runv-vmm", level, &format_args!("x={}", 1));
        assert_eq!(line(log::Level::Info), "runv-vmm: x=1\n");
        assert_eq!(line(log::Level::Warn), "runv-vmm: warning: x=1\n");
        assert_eq!(line(log::Level::Error), "runv-vmm: error: x=1\n");
        assert_eq!(line(log::Level::Debug), "runv-vmm: debug: x=1\n");
    }

    #[test]
    fn a_call_site_writes_a_few_lines_a_second_and_counts_the_rest() {
        let limit = RateLimit::new();
        for _ in 0..LIMITED_LINES_PER_SECOND {
            assert_eq!(limit.admit_at(7), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.admit_at(7), None);
        }
        assert_eq!(limit.admit_at(8), Some(5), "the next second reports them");
        assert_eq!(limit.admit_at(8), Some(0));
    }
}

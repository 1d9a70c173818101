//! What `/proc/<pid>` says of a VMM process: CPU time, threads, open fds.

use crate::{files, ps};
use std::io;
use std::path::Path;

/// Entries of `/proc/<pid>/fd` counted at most.
const MAX_FDS: usize = 1 << 20;

/// Why a process could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `/proc/<pid>/stat` could not be read.
    #[error("read /proc/{pid}/stat: {source}")]
    Stat { pid: i32, source: io::Error },
    /// Its fields are not as expected.
    #[error("/proc/{0}/stat: unexpected fields")]
    StatFields(i32),
    /// The clock tick rate is unknown.
    #[error("no clock tick rate")]
    ClockTicks,
    /// `/proc/<pid>/fd` could not be listed.
    #[error("list /proc/{pid}/fd: {source}")]
    Fds { pid: i32, source: io::Error },
}

/// One process's figures.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User and system CPU time (seconds).
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (counted up to a bound).
    pub open_fds: u64,
}

/// Samples process `pid`.
pub fn sample(pid: i32) -> Result<ProcessSample, ProcessError> {
    let stat = files::read_bounded(Path::new(&format!("/proc/{pid}/stat")), ps::MAX_PROC_FILE)
        .map_err(|source| ProcessError::Stat { pid, source })?;
    let ticks = ps::clock_ticks().ok_or(ProcessError::ClockTicks)?;
    let (cpu_seconds, threads) = parse_stat(&stat, ticks).ok_or(ProcessError::StatFields(pid))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|source| ProcessError::Fds { pid, source })?;
    Ok(ProcessSample {
        cpu_seconds,
        threads,
        open_fds: fds.take(MAX_FDS).count() as u64,
    })
}

/// CPU seconds (utime + stime, fields 14 and 15) and threads (field 20) of
/// a `/proc/<pid>/stat` line, counted after the command name, which may
/// hold spaces and parentheses.
fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<(f64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().take(18).collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)?.saturating_add(field(15)?);
    Some((ticks as f64 / ticks_per_sec as f64, field(20)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_threads_past_an_odd_command_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 \
                    1234 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat, 100), Some((3.0, 7)));
        assert_eq!(parse_stat("42 (a) S 1 2", 100), None);
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id() as i32).unwrap();
        assert!(me.threads >= 1 && me.open_fds >= 3, "{me:?}");
    }
}

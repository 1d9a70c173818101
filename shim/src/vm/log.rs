//! The VMM's stderr, kept in `vmm.log` up to a limit, and what the shim
//! quotes from it when the VMM ends.

use nix::sys::signal::Signal;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Most bytes of the VMM's stderr kept in `vmm.log`: the guest can make the VMM
/// log, and the file is on the host's `/run`.
pub(super) const MAX_VMM_LOG_BYTES: u64 = 4 << 20;
/// Lines of `vmm.log` quoted in the shim's log and errors.
const LOG_TAIL_LINES: usize = 5;
/// Bytes at the end of `vmm.log` those lines are taken from: a guest can make
/// one line as long as the whole log.
const LOG_TAIL_BYTES: u64 = 4096;

/// Copies `stderr` into `log` until EOF, keeping at most `limit` bytes (then one
/// line saying the rest was dropped); never stops reading, so the VMM never
/// blocks on a full pipe.
pub(super) fn copy_capped(mut stderr: impl Read, mut log: impl Write, limit: u64) {
    let mut left = limit;
    let mut noted = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let take = usize::try_from(left).map_or(n, |left| left.min(n));
        let written = if take < n && !noted {
            noted = true;
            log.write_all(&buf[..take])
                .and_then(|()| log.write_all(b"\n[vmm.log: over its limit, the rest dropped]\n"))
        } else {
            log.write_all(&buf[..take])
        };
        left -= take as u64;
        if written.is_err() {
            left = 0;
        }
    }
}

/// How the VMM ended, from the status the shim's reaper reports (128 plus
/// the signal's number for a signal).
pub fn exit_cause(status: i32) -> String {
    let signal = status
        .checked_sub(128)
        .filter(|n| *n > 0)
        .and_then(|n| Signal::try_from(n).ok());
    match signal {
        Some(Signal::SIGSYS) => "was killed by SIGSYS: one of its threads made a syscall \
             its seccomp filter forbids (the host kernel's audit log names it)"
            .into(),
        Some(signal) => format!("was killed by {signal}"),
        None => format!("exited with {status}"),
    }
}

/// The last lines of the VMM's log at `path`, joined with " | " ("(empty)"
/// when there are none).
pub fn log_tail(path: &Path) -> String {
    let mut end = Vec::new();
    if let Ok(mut log) = File::open(path) {
        let len = log.metadata().map_or(0, |meta| meta.len());
        let _ = log.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let _ = log.take(LOG_TAIL_BYTES).read_to_end(&mut end);
    }
    let text = String::from_utf8_lossy(&end);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_vmm_log_keeps_its_limit_and_reads_to_the_end() {
        let noisy = vec![b'x'; 100_000];
        let mut from = &noisy[..];
        let mut log = Vec::new();
        copy_capped(&mut from, &mut log, 1000);
        assert!(from.is_empty(), "stopped reading");
        assert!(log.starts_with(&[b'x'; 1000]));
        assert!(log.ends_with(b"[vmm.log: over its limit, the rest dropped]\n"));
        assert!(log.len() < 1100, "{} bytes", log.len());
    }

    #[test]
    fn a_seccomp_kill_is_named_and_other_ends_told_apart() {
        assert!(exit_cause(128 + libc::SIGSYS).contains("seccomp"));
        assert_eq!(exit_cause(137), "was killed by SIGKILL");
        assert_eq!(exit_cause(1), "exited with 1");
        assert_eq!(exit_cause(128), "exited with 128");
    }

    #[test]
    fn the_log_tail_is_the_last_lines_or_says_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        assert_eq!(log_tail(&path), "(empty)", "no file yet");
        fs::write(
            &path,
            "1\n2\n3\n4\n5\n6\nrunv-vmm: error: the guest triple-faulted\n",
        )
        .unwrap();
        assert_eq!(
            log_tail(&path),
            "3 | 4 | 5 | 6 | runv-vmm: error: the guest triple-faulted"
        );
    }

    #[test]
    fn the_log_tail_of_one_endless_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        fs::write(&path, vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(log_tail(&path).len(), LOG_TAIL_BYTES as usize);
    }
}

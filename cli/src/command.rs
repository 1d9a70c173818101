//! Asking another program for its version: run it with a deadline and keep
//! a bounded part of its output.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a `--version` may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of its output kept.
const MAX_OUTPUT: u64 = 4096;

/// A program that could not tell its version.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait { program: PathBuf, source: io::Error },
    /// It did not end in time (it was killed).
    #[error("{program} did not answer within {0:?}", VERSION_TIMEOUT)]
    Timeout { program: PathBuf },
    /// It ended with a failure.
    #[error("{program} exited with {status}")]
    Failed { program: PathBuf, status: String },
}

/// Runs `program args`, stdin and stderr closed, and returns its stdout
/// (at most 4 KiB, trimmed) once it exits 0 within `timeout`.
pub fn output_of(program: &Path, args: &[&str], timeout: Duration) -> Result<String, CommandError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.into(),
            source,
        })?;
    let reader = child.stdout.take().map(|stdout| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            // A program that writes more than the bound gets EPIPE once
            // the pipe is closed; what was read is kept.
            let _ = stdout.take(MAX_OUTPUT).read_to_end(&mut text);
            text
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // It is our child: kill and reap it.
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Timeout {
                    program: program.into(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(CommandError::Wait {
                    program: program.into(),
                    source,
                })
            }
        }
    };
    let text = reader
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(CommandError::Failed {
            program: program.into(),
            status: status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&text).trim().to_string())
}

/// The first file named `name` in the directories of `$PATH` that is
/// executable.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in_dirs(name, std::env::split_paths(&path))
}

/// The first of `dirs` holding an executable file `name`.
fn find_in_dirs(name: &str, dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.into_iter()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_programs_output_and_bounds_its_time() {
        let sh = Path::new("/bin/sh");
        assert_eq!(
            output_of(sh, &["-c", "echo 'tool 1.2'"], VERSION_TIMEOUT).unwrap(),
            "tool 1.2"
        );
        assert!(matches!(
            output_of(sh, &["-c", "exit 3"], VERSION_TIMEOUT),
            Err(CommandError::Failed { .. })
        ));
        assert!(matches!(
            output_of(sh, &["-c", "sleep 5"], Duration::from_millis(100)),
            Err(CommandError::Timeout { .. })
        ));
        assert!(matches!(
            output_of(Path::new("/nonexistent/tool"), &[], VERSION_TIMEOUT),
            Err(CommandError::Spawn { .. })
        ));
    }

    #[test]
    fn finds_executables_in_absolute_dirs_only() {
        assert_eq!(
            find_in_dirs("sh", ["bin".into(), "/bin".into()]),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_in_dirs("no-such-tool-here", ["/bin".into()]), None);
    }
}

//! Where a process's output goes on the host: FIFOs, `file://` URIs, or a
//! logging binary started for both streams (`binary://`).

use super::copy::Sink;
use super::{ProcessName, StdioError, StdioUris, LOGGER_READY_TIMEOUT};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio as ChildStdio};

/// The sinks of stdout and stderr from containerd's URIs: a FIFO path,
/// `file:///path`, or `binary:///path?args` (a logging binary started once for
/// both, containerd's protocol: fds 3 and 4 carry stdout and stderr, fd 5 is
/// closed by the binary once it is ready).
pub(super) fn output_sinks(
    name: &ProcessName,
    uris: &StdioUris,
) -> Result<(Option<Sink>, Option<Sink>), StdioError> {
    if let Some(binary) = uris.stdout.strip_prefix("binary://") {
        let (stdout, stderr) = start_logging_binary(binary, name)?;
        return Ok((Some(Sink::Open(stdout)), Some(Sink::Open(stderr))));
    }
    let sink = |uri: &str| -> Result<Option<Sink>, StdioError> {
        if uri.is_empty() {
            return Ok(None);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if let Some(parent) = Path::new(path).parent() {
                std::fs::create_dir_all(parent).map_err(|source| StdioError::File {
                    path: path.to_string(),
                    source,
                })?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| StdioError::File {
                    path: path.to_string(),
                    source,
                })?;
            return Ok(Some(Sink::Open(file)));
        }
        if uri.contains("://") && !uri.starts_with("fifo://") {
            return Err(StdioError::Scheme {
                uri: uri.to_string(),
            });
        }
        Ok(Some(Sink::Fifo(uri.trim_start_matches("fifo://").into())))
    };
    Ok((
        sink(&uris.stdout)?,
        sink(if uris.terminal { "" } else { &uris.stderr })?,
    ))
}

pub(super) fn start_logging_binary(
    uri: &str,
    name: &ProcessName,
) -> Result<(File, File), StdioError> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let pipe = || -> Result<(OwnedFd, OwnedFd), StdioError> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| StdioError::Pipe {
            what: "logging binary",
            source,
        })
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let (ready_read, ready_write) = pipe()?;
    let mut command = Command::new(path);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        command.arg(format!("--{key}"));
        if !value.is_empty() {
            command.arg(value);
        }
    }
    command
        .env("CONTAINER_ID", name.container_id)
        .env("CONTAINER_NAMESPACE", name.namespace)
        .stdin(ChildStdio::null())
        .stdout(ChildStdio::null())
        .stderr(ChildStdio::null());
    let fds = [
        out_read.as_raw_fd(),
        err_read.as_raw_fd(),
        ready_write.as_raw_fd(),
    ];
    // SAFETY: between fork and exec the closure only calls fcntl(2) and dup2(2),
    // both async-signal-safe, on fds that stay open in the parent until spawn
    // returns. Each fd is first moved above the targets so that no dup2 overwrites
    // a source still to be moved.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| StdioError::LoggerSpawn {
        path: path.to_string(),
        source,
    })?;
    drop((out_read, err_read, ready_write));
    // The binary closes (or writes to) fd 5 once it reads its pipes.
    let mut poll = libc::pollfd {
        fd: ready_read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = i32::try_from(LOGGER_READY_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `poll` points to one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    if ready <= 0 {
        return Err(StdioError::LoggerNotReady {
            path: path.to_string(),
        });
    }
    let _ = File::from(ready_read).read(&mut [0u8; 1]);
    Ok((File::from(out_write), File::from(err_write)))
}

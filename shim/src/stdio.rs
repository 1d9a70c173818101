//! A process's stdio: containerd's side (FIFOs, `file://` or `binary://` log
//! URIs) copied to and from the agent's stdio streams (one vsock connection per
//! stream, see protocol/README.md).

mod copy;
mod sinks;

use copy::{spawn_output, spawn_stdin};
use protocol::agent::Stdio;
use protocol::hybrid_vsock::DeadlineStream;
use protocol::stdio::{HeaderError, StreamHeader, StreamKind, AGENT_STDIO_VSOCK_PORT};
use std::fs::OpenOptions;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one stream's setup may take, the VMM's answer to `CONNECT` and the
/// agent's answer to the stream's header together: a guest that accepts a stream
/// and never answers fails the create or exec after this long.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a logging binary may take to signal that it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long CloseIO waits for the client's last stdin bytes to be forwarded.
const STDIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed step of setting up a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A stream to the agent could not be connected or bound.
    #[error("{kind} stream of {container}/{exec}: {step}: {why}")]
    Stream {
        kind: StreamKind,
        container: String,
        exec: String,
        step: &'static str,
        why: StreamFailure,
    },
    /// A stream could not be cloned for a second copy.
    #[error("clone the {what} stream: {source}")]
    Clone {
        what: &'static str,
        source: io::Error,
    },
    /// A pipe could not be made.
    #[error("{what} pipe: {source}")]
    Pipe {
        what: &'static str,
        source: nix::errno::Errno,
    },
    /// A copy thread could not be started.
    #[error("cannot start the {what} copy: {source}")]
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// A `file://` sink could not be made or opened.
    #[error("{path}: {source}")]
    File { path: String, source: io::Error },
    /// A URI of a scheme runv does not take.
    #[error("stdio URI {uri:?}: runv takes FIFO paths, file:// and binary://")]
    Scheme { uri: String },
    /// A logging binary could not be started.
    #[error("logging binary {path}: {source}")]
    LoggerSpawn { path: String, source: io::Error },
    /// A logging binary did not say it was ready.
    #[error("logging binary {path} did not signal readiness on fd 5")]
    LoggerNotReady { path: String },
}

/// Why a stream's setup failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamFailure {
    /// The peer did not answer within the stream's timeout.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// Any other error.
    #[error("{0}")]
    Io(io::Error),
}

/// containerd's stdio for one process, as given to Create or Exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioUris {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioUris {
    /// Which streams the agent must expect.
    pub fn agent_stdio(&self) -> Stdio {
        Stdio {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty() && !self.terminal,
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
            ..Default::default()
        }
    }
}

/// Who the process is, for the streams' headers and for logging binaries.
#[derive(Debug, Clone)]
pub struct ProcessName<'a> {
    pub namespace: &'a str,
    pub container_id: &'a str,
    pub exec_id: &'a str,
}

/// The copies of one process's stdio.
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<StdinCopy>,
}

/// The copy of containerd's stdin into the process's stdin stream.
pub struct StdinCopy {
    thread: JoinHandle<()>,
    /// The stream, to end the copy by force.
    stream: UnixStream,
    /// The FIFO, to free a copy still waiting in open(2) for a writer.
    fifo: PathBuf,
    /// Write end of the copy's stop pipe: closing it wakes a copy blocked on a
    /// FIFO whose writer (the client) keeps it open, as `ctr run -t` does.
    stop: OwnedFd,
}

/// Connects the process's streams to the agent through the hybrid vsock socket
/// `uds` and starts the copies. Call after CreateContainer/ExecProcess named the
/// streams and before the process starts, so no byte goes missing.
pub fn attach(uds: &Path, name: &ProcessName, uris: &StdioUris) -> Result<ProcessIo, StdioError> {
    let connect = |kind| connect_stream(uds, name, kind, STREAM_TIMEOUT);
    let (stdout_sink, stderr_sink) = sinks::output_sinks(name, uris)?;
    let mut outputs = Vec::new();
    let mut stdin = None;
    if uris.terminal {
        let tty = connect(StreamKind::Tty)?;
        if let Some(sink) = stdout_sink {
            let reader = tty.try_clone().map_err(|source| StdioError::Clone {
                what: "tty",
                source,
            })?;
            outputs.push(spawn_output("tty-out", reader, sink)?);
        }
        if !uris.stdin.is_empty() {
            stdin = Some(spawn_stdin(&uris.stdin, tty)?);
        }
        return Ok(ProcessIo { outputs, stdin });
    }
    if !uris.stdin.is_empty() {
        stdin = Some(spawn_stdin(&uris.stdin, connect(StreamKind::Stdin)?)?);
    }
    if let Some(sink) = stdout_sink {
        outputs.push(spawn_output("stdout", connect(StreamKind::Stdout)?, sink)?);
    }
    if let Some(sink) = stderr_sink {
        outputs.push(spawn_output("stderr", connect(StreamKind::Stderr)?, sink)?);
    }
    Ok(ProcessIo { outputs, stdin })
}

impl ProcessIo {
    /// Waits until every output stream reached EOF and was copied out.
    pub fn drain_outputs(&mut self) {
        for thread in self.outputs.drain(..) {
            let _ = thread.join();
        }
    }

    /// Takes the stdin copy out (to close it without holding the process).
    pub fn take_stdin(&mut self) -> Option<StdinCopy> {
        self.stdin.take()
    }

    /// Ends every copy (the process is gone).
    pub fn stop(mut self) {
        if let Some(copy) = self.stdin.take() {
            copy.stop();
        }
        self.drain_outputs();
    }
}

impl StdinCopy {
    /// The client closed its stdin: let the copy forward what is left (bounded
    /// wait), then make sure the agent sees EOF.
    pub fn close(self) {
        let deadline = std::time::Instant::now() + STDIN_DRAIN_TIMEOUT;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.stream.shutdown(Shutdown::Write);
        if !self.thread.is_finished() {
            // A copy still in open(2) waits for a writer: be that writer, briefly.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo);
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        let _ = self.thread.join();
    }
}

/// Connects stream `kind` of process `name` through the hybrid vsock socket
/// `uds` and binds it with its header, all within `timeout`; the stream comes
/// back without timeouts, for the copies.
fn connect_stream(
    uds: &Path,
    name: &ProcessName,
    kind: StreamKind,
    timeout: Duration,
) -> Result<UnixStream, StdioError> {
    let deadline = Instant::now() + timeout;
    let failed = |step: &'static str, err: io::Error| {
        let why = match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StreamFailure::NoAnswer(timeout),
            _ => StreamFailure::Io(err),
        };
        StdioError::Stream {
            kind,
            container: name.container_id.to_string(),
            exec: name.exec_id.to_string(),
            step,
            why,
        }
    };
    let stream = protocol::hybrid_vsock::connect(uds, AGENT_STDIO_VSOCK_PORT, timeout)
        .map_err(|e| failed("vsock connect", e))?;
    let header = StreamHeader::new(name.container_id, name.exec_id, kind);
    match header.bind(&mut DeadlineStream {
        stream: &stream,
        deadline,
    }) {
        Ok(()) => {}
        Err(HeaderError::Io(err)) => return Err(failed("stream header", err)),
        Err(err) => return Err(failed("stream header", io::Error::other(err))),
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| failed("clear timeouts", e))?;
    Ok(stream)
}

#[cfg(test)]
mod tests;

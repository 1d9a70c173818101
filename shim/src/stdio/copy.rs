//! The copy threads of a process's stdio: containerd's stdin FIFO into the
//! agent's stream, the agent's output streams into their sinks.

use super::{StdinCopy, StdioError};
use log::{debug, warn};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;

/// Where an output stream's bytes go on the host.
pub(super) enum Sink {
    /// A FIFO containerd reads, opened by the copy thread (open blocks until
    /// there is a reader).
    Fifo(PathBuf),
    /// An open file or pipe.
    Open(File),
}

impl Sink {
    pub(super) fn open(self) -> io::Result<File> {
        match self {
            Self::Fifo(path) => OpenOptions::new().write(true).open(path),
            Self::Open(file) => Ok(file),
        }
    }
}

/// Starts the copy of FIFO `fifo` into `stream`.
pub(super) fn spawn_stdin(fifo: &str, stream: UnixStream) -> Result<StdinCopy, StdioError> {
    let mut writer = stream.try_clone().map_err(|source| StdioError::Clone {
        what: "stdin",
        source,
    })?;
    let path = PathBuf::from(fifo);
    let opened = path.clone();
    let (stop_read, stop) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| StdioError::Pipe {
            what: "stdin stop",
            source,
        })?;
    let thread = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            match File::open(&opened) {
                Ok(mut fifo) => {
                    if let Err(err) = copy_until_stopped(&mut fifo, &mut writer, &stop_read) {
                        debug!("stdin copy ended: {err}");
                    }
                }
                Err(err) => warn!("open stdin {}: {err}", opened.display()),
            }
            let _ = writer.shutdown(Shutdown::Write);
        })
        .map_err(|source| StdioError::Thread {
            what: "stdin",
            source,
        })?;
    Ok(StdinCopy {
        thread,
        stream,
        fifo: path,
        stop,
    })
}

/// Copies `from` to `to` until `from` reaches EOF or `stop` becomes readable
/// (its write end was closed).
pub(super) fn copy_until_stopped(
    from: &mut File,
    to: &mut impl Write,
    stop: &OwnedFd,
) -> io::Result<()> {
    protocol::stdio::copy_plain(&mut StoppableRead { from, stop }, to).map(drop)
}

/// A reader that reads EOF once `stop` becomes readable.
struct StoppableRead<'a> {
    from: &'a mut File,
    stop: &'a OwnedFd,
}

impl Read for StoppableRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.from.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is an array of two valid pollfds that outlives the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                return Err(io::Error::last_os_error());
            }
            if fds[1].revents != 0 {
                return Ok(0);
            }
            if fds[0].revents != 0 {
                return self.from.read(buf);
            }
        }
    }
}

/// Starts the copy of output stream `from` into `sink`.
pub(super) fn spawn_output(
    what: &'static str,
    mut from: UnixStream,
    sink: Sink,
) -> Result<JoinHandle<()>, StdioError> {
    std::thread::Builder::new()
        .name(what.into())
        .spawn(move || match sink.open() {
            Ok(mut to) => {
                if let Err(err) = protocol::stdio::copy_plain(&mut from, &mut to) {
                    debug!("output copy ended: {err}");
                    // Keep draining so the process never blocks on a full stream.
                    let _ = io::copy(&mut from, &mut io::sink());
                }
            }
            Err(err) => {
                warn!("open output: {err}");
                let _ = io::copy(&mut from, &mut io::sink());
            }
        })
        .map_err(|source| StdioError::Thread { what, source })
}

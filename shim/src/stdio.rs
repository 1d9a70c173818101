//! A process's stdio: containerd's side (FIFOs, `file://` or `binary://` log
//! URIs) copied to and from the agent's stdio streams (one vsock connection per
//! stream, see protocol/README.md).

use log::{debug, warn};
use protocol::agent::Stdio;
use protocol::hybrid_vsock::DeadlineStream;
use protocol::stdio::{HeaderError, StreamHeader, StreamKind, AGENT_STDIO_VSOCK_PORT};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ChildStdio};
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

/// Where an output stream's bytes go on the host.
enum Sink {
    /// A FIFO containerd reads, opened by the copy thread (open blocks until
    /// there is a reader).
    Fifo(PathBuf),
    /// An open file or pipe.
    Open(File),
}

impl Sink {
    fn open(self) -> io::Result<File> {
        match self {
            Self::Fifo(path) => OpenOptions::new().write(true).open(path),
            Self::Open(file) => Ok(file),
        }
    }
}

/// Connects the process's streams to the agent through the hybrid vsock socket
/// `uds` and starts the copies. Call after CreateContainer/ExecProcess named the
/// streams and before the process starts, so no byte goes missing.
pub fn attach(uds: &Path, name: &ProcessName, uris: &StdioUris) -> Result<ProcessIo, String> {
    let connect = |kind| connect_stream(uds, name, kind, STREAM_TIMEOUT);
    let (stdout_sink, stderr_sink) = output_sinks(name, uris)?;
    let mut outputs = Vec::new();
    let mut stdin = None;
    if uris.terminal {
        let tty = connect(StreamKind::Tty)?;
        if let Some(sink) = stdout_sink {
            let reader = tty
                .try_clone()
                .map_err(|e| format!("clone the tty stream: {e}"))?;
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
) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    let failed = |step: &str, err: &io::Error| {
        let why = match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no answer within {timeout:?}")
            }
            _ => err.to_string(),
        };
        format!(
            "{kind} stream of {}/{}: {step}: {why}",
            name.container_id, name.exec_id
        )
    };
    let stream = protocol::hybrid_vsock::connect(uds, AGENT_STDIO_VSOCK_PORT, timeout)
        .map_err(|e| failed("vsock connect", &e))?;
    let header = StreamHeader::new(name.container_id, name.exec_id, kind);
    match header.bind(&mut DeadlineStream {
        stream: &stream,
        deadline,
    }) {
        Ok(()) => {}
        Err(HeaderError::Io(err)) => return Err(failed("stream header", &err)),
        Err(err) => return Err(failed("stream header", &io::Error::other(err))),
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| failed("clear timeouts", &e))?;
    Ok(stream)
}

fn spawn_stdin(fifo: &str, stream: UnixStream) -> Result<StdinCopy, String> {
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("clone the stdin stream: {e}"))?;
    let path = PathBuf::from(fifo);
    let opened = path.clone();
    let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("stdin stop pipe: {e}"))?;
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
        .map_err(|e| format!("cannot start the stdin copy: {e}"))?;
    Ok(StdinCopy {
        thread,
        stream,
        fifo: path,
        stop,
    })
}

/// Copies `from` to `to` until `from` reaches EOF or `stop` becomes readable
/// (its write end was closed).
fn copy_until_stopped(from: &mut File, to: &mut impl Write, stop: &OwnedFd) -> io::Result<()> {
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

fn spawn_output(what: &str, mut from: UnixStream, sink: Sink) -> Result<JoinHandle<()>, String> {
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
        .map_err(|e| format!("cannot start the {what} copy: {e}"))
}

/// The sinks of stdout and stderr from containerd's URIs: a FIFO path,
/// `file:///path`, or `binary:///path?args` (a logging binary started once for
/// both, containerd's protocol: fds 3 and 4 carry stdout and stderr, fd 5 is
/// closed by the binary once it is ready).
fn output_sinks(
    name: &ProcessName,
    uris: &StdioUris,
) -> Result<(Option<Sink>, Option<Sink>), String> {
    if let Some(binary) = uris.stdout.strip_prefix("binary://") {
        let (stdout, stderr) = start_logging_binary(binary, name)?;
        return Ok((Some(Sink::Open(stdout)), Some(Sink::Open(stderr))));
    }
    let sink = |uri: &str| -> Result<Option<Sink>, String> {
        if uri.is_empty() {
            return Ok(None);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if let Some(parent) = Path::new(path).parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{path}: {e}"))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{path}: {e}"))?;
            return Ok(Some(Sink::Open(file)));
        }
        if uri.contains("://") && !uri.starts_with("fifo://") {
            return Err(format!(
                "stdio URI {uri:?}: runv takes FIFO paths, file:// and binary://"
            ));
        }
        Ok(Some(Sink::Fifo(uri.trim_start_matches("fifo://").into())))
    };
    Ok((
        sink(&uris.stdout)?,
        sink(if uris.terminal { "" } else { &uris.stderr })?,
    ))
}

fn start_logging_binary(uri: &str, name: &ProcessName) -> Result<(File, File), String> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let pipe = || -> Result<(OwnedFd, OwnedFd), String> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("logging binary pipe: {e}"))
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
    command
        .spawn()
        .map_err(|e| format!("logging binary {path}: {e}"))?;
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
        return Err(format!(
            "logging binary {path} did not signal readiness on fd 5"
        ));
    }
    let _ = File::from(ready_read).read(&mut [0u8; 1]);
    Ok((File::from(out_write), File::from(err_write)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdio peer that accepts one connection, answers `CONNECT` with
    /// `connect_answer` (nothing if empty), then sends `header_answer` one byte
    /// every 20 ms and never ends its line; it holds the connection until the
    /// client closes it.
    fn silent_peer(
        connect_answer: &'static str,
        header_answer: &'static str,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(connect_answer.as_bytes()).unwrap();
            for byte in header_answer.bytes() {
                std::thread::sleep(Duration::from_millis(20));
                if conn.write_all(&[byte]).is_err() {
                    return;
                }
            }
            // Read (and ignore) until the client gives up and closes.
            let _ = io::copy(&mut conn, &mut io::sink());
        });
        (dir, path)
    }

    fn connect_within(path: &Path, timeout: Duration) -> (Result<UnixStream, String>, Duration) {
        let name = ProcessName {
            namespace: "default",
            container_id: "c1",
            exec_id: "",
        };
        let started = Instant::now();
        let result = connect_stream(path, &name, StreamKind::Stdout, timeout);
        (result, started.elapsed())
    }

    #[test]
    fn a_peer_that_never_answers_fails_the_stream_in_time() {
        let timeout = Duration::from_millis(300);
        let cases = [
            ("", "", "vsock connect"),
            ("OK 1073741824\n", "", "stream header"),
            // One byte every 20 ms: without a deadline over the whole line, the
            // header's 512 bytes would take 10 s.
            (
                "OK 1073741824\n",
                "okokokokokokokokokokokokokokokokokokokokokok",
                "stream header",
            ),
        ];
        for (connect_answer, header_answer, step) in cases {
            let (_dir, path) = silent_peer(connect_answer, header_answer);
            let (result, took) = connect_within(&path, timeout);
            let err = result.expect_err("the stream connected");
            assert!(
                err.contains(step) && err.contains("no answer within 300ms"),
                "{err}"
            );
            assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
            assert!(took < timeout + Duration::from_secs(2), "{took:?}");
        }
    }

    #[test]
    fn an_answered_stream_comes_back_without_timeouts() {
        let (_dir, path) = silent_peer("OK 1073741824\n", "ok\n");
        let (result, _) = connect_within(&path, Duration::from_secs(10));
        let stream = result.unwrap();
        assert_eq!(stream.read_timeout().unwrap(), None);
        assert_eq!(stream.write_timeout().unwrap(), None);
    }

    #[test]
    fn agent_streams_follow_the_uris() {
        let uris = StdioUris {
            stdin: "/f/in".into(),
            stdout: "/f/out".into(),
            stderr: String::new(),
            terminal: false,
        };
        let stdio = uris.agent_stdio();
        assert!(stdio.stdin && stdio.stdout && !stdio.stderr && !stdio.terminal);
        let tty = StdioUris {
            terminal: true,
            stderr: "/f/err".into(),
            ..uris
        };
        let stdio = tty.agent_stdio();
        assert!(stdio.terminal && stdio.stdin && !stdio.stdout && !stdio.stderr);
    }

    #[test]
    fn a_stdin_copy_stops_while_its_writer_keeps_the_fifo_open() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut writer = File::from(write);
        writer.write_all(b"typed").unwrap();
        let copy = std::thread::spawn(move || {
            let mut copied = Vec::new();
            copy_until_stopped(&mut File::from(read), &mut copied, &stop_read).map(|()| copied)
        });
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        while std::time::Instant::now() < deadline {
            assert!(!copy.is_finished(), "the copy ended with its writer open");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(stop);
        assert_eq!(copy.join().unwrap().unwrap(), b"typed");
        drop(writer);
    }

    #[test]
    fn file_uris_append_and_unknown_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/out.log");
        let name = ProcessName {
            namespace: "default",
            container_id: "c1",
            exec_id: "",
        };
        let uris = StdioUris {
            stdout: format!("file://{}", log.display()),
            ..Default::default()
        };
        let (stdout, stderr) = output_sinks(&name, &uris).unwrap();
        assert!(stderr.is_none());
        stdout.unwrap().open().unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"x");
        let bad = StdioUris {
            stdout: "tcp://1.2.3.4:5".into(),
            ..Default::default()
        };
        assert!(output_sinks(&name, &bad).is_err());
    }

    #[test]
    fn a_logging_binary_gets_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("log");
        let script = dir.path().join("logger.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\ncat <&3 >{0}.out & cat <&4 >{0}.err; wait\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let name = ProcessName {
            namespace: "default",
            container_id: "c1",
            exec_id: "",
        };
        let (mut stdout, mut stderr) =
            start_logging_binary(&script.display().to_string(), &name).unwrap();
        stdout.write_all(b"to out").unwrap();
        stderr.write_all(b"to err").unwrap();
        drop((stdout, stderr));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let read = |suffix: &str| {
            std::fs::read_to_string(format!("{}.{suffix}", out.display())).unwrap_or_default()
        };
        while (read("out") != "to out" || read("err") != "to err")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            (read("out").as_str(), read("err").as_str()),
            ("to out", "to err")
        );
    }
}

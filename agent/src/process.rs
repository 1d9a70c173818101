//! One process of a container (init or exec): its exit status and its stdio
//! pipes, which the stdio streams drain and feed.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::pipe2;
use protocol::agent::Stdio;
use protocol::stdio::{copy_plain, StreamKind};

use crate::error::{AgentError, Result};

/// Why a stream connection cannot be bound to its process (the reason the
/// client is sent).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The process was created without this stream.
    #[error("{0} was not asked for when the process was created")]
    NotAsked(StreamKind),
    /// Another connection already carries this stream.
    #[error("{0} is already bound")]
    AlreadyBound(StreamKind),
    /// The process exited and nobody connected to this output in time.
    #[error(
        "{0} was not connected within {UNBOUND_OUTPUT_GRACE:?} of the process's exit: \
         its output was dropped"
    )]
    Dropped(StreamKind),
    /// Writing the `ok` reply failed: the client is gone.
    #[error(transparent)]
    Reply(io::Error),
    /// The thread that copies the stream cannot start.
    #[error("cannot start the copy thread: {0}")]
    CopyThread(io::Error),
}

/// How long after the process's exit an output stream asked for may still be
/// connected; one still unbound then counts as drained and its pipe is dropped,
/// so that WaitProcess does not wait for ever on a client that never connects.
pub const UNBOUND_OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// When the agent reaped it.
    pub at: SystemTime,
}

impl ExitStatus {
    /// A normal exit with `code`.
    pub fn code(code: i32) -> Self {
        Self {
            status: code,
            at: SystemTime::now(),
        }
    }

    /// Death by `signal`: 128 + its number, as a shell reports it.
    pub fn signal(signal: Signal) -> Self {
        Self::code(128 + signal as i32)
    }
}

/// The ends of the stdio pipes that the new process gets.
pub struct ChildStdio {
    /// The process's stdin.
    pub stdin: OwnedFd,
    /// The process's stdout.
    pub stdout: OwnedFd,
    /// The process's stderr.
    pub stderr: OwnedFd,
}

impl ChildStdio {
    /// /dev/null on all three.
    pub fn null() -> Result<Self> {
        Ok(Self {
            stdin: dev_null(false)?,
            stdout: dev_null(true)?,
            stderr: dev_null(true)?,
        })
    }
}

/// One stdio stream of a process, seen from the agent.
enum Slot<T> {
    /// The request did not ask for this stream.
    NotAsked,
    /// The pipe end waits for its stream connection.
    Waiting(T),
    /// A stream connection took it.
    Taken,
    /// An output nobody connected within [`UNBOUND_OUTPUT_GRACE`] of the exit:
    /// its pipe was dropped.
    Dropped,
}

struct StdioEnds {
    stdin: Slot<File>,
    stdout: Slot<File>,
    stderr: Slot<File>,
    /// The pty master for the `tty` stream.
    tty: Slot<File>,
    /// The pty master, kept for resizing.
    master: Option<File>,
}

struct Lifecycle {
    exit: Option<ExitStatus>,
    /// When the exit was recorded, for [`UNBOUND_OUTPUT_GRACE`].
    exited_at: Option<Instant>,
    /// Output streams asked for whose pipe is not yet drained to EOF.
    outputs_open: usize,
}

/// A container process and what waits on it.
pub struct Process {
    /// Exec id; empty for the init process.
    pub exec_id: String,
    pid: AtomicI32,
    lifecycle: Mutex<Lifecycle>,
    changed: Condvar,
    ends: Mutex<StdioEnds>,
}

impl Process {
    /// A process with the stdio streams `stdio` asks for; returns the ends that
    /// the process itself must get.
    pub fn new(exec_id: &str, stdio: &Stdio) -> Result<(Arc<Self>, ChildStdio)> {
        if stdio.terminal {
            // The process's stdio is the pty slave; the agent gets the master later.
            let process = Self::build(exec_id, 1, Slot::NotAsked, Slot::NotAsked, Slot::NotAsked);
            let child = ChildStdio {
                stdin: dev_null(false)?,
                stdout: dev_null(true)?,
                stderr: dev_null(true)?,
            };
            return Ok((process, child));
        }
        let (stdin, child_stdin) = if stdio.stdin {
            let (read, write) = pipe()?;
            (Slot::Waiting(File::from(write)), read)
        } else {
            (Slot::NotAsked, dev_null(false)?)
        };
        let (stdout, child_stdout) = output(stdio.stdout)?;
        let (stderr, child_stderr) = output(stdio.stderr)?;
        let outputs_open = usize::from(stdio.stdout) + usize::from(stdio.stderr);
        let process = Self::build(exec_id, outputs_open, stdin, stdout, stderr);
        let child = ChildStdio {
            stdin: child_stdin,
            stdout: child_stdout,
            stderr: child_stderr,
        };
        Ok((process, child))
    }

    fn build(
        exec_id: &str,
        outputs_open: usize,
        stdin: Slot<File>,
        stdout: Slot<File>,
        stderr: Slot<File>,
    ) -> Arc<Self> {
        Arc::new(Self {
            exec_id: exec_id.to_string(),
            pid: AtomicI32::new(0),
            lifecycle: Mutex::new(Lifecycle {
                exit: None,
                exited_at: None,
                outputs_open,
            }),
            changed: Condvar::new(),
            ends: Mutex::new(StdioEnds {
                stdin,
                stdout,
                stderr,
                tty: Slot::NotAsked,
                master: None,
            }),
        })
    }

    /// Hands over the pty master of a process created with a terminal.
    pub fn set_console(&self, master: File) -> Result<()> {
        let copy = master
            .try_clone()
            .map_err(AgentError::io("duplicate the pty master"))?;
        let mut ends = self.lock_ends();
        ends.tty = Slot::Waiting(copy);
        ends.master = Some(master);
        Ok(())
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<()> {
        let ends = self.lock_ends();
        let master = ends.master.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("process {:?} has no terminal", self.exec_id))
        })?;
        crate::console::resize(master, rows, columns).map_err(AgentError::io("set the window size"))
    }

    /// Records the pid once the process exists.
    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::Release);
    }

    /// The pid (in the agent's pid namespace); 0 before it exists.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire).unsigned_abs()
    }

    /// Records the exit (called by the reaper).
    pub fn set_exited(&self, status: ExitStatus) {
        let mut lifecycle = self.lock_lifecycle();
        lifecycle.exit = Some(status);
        lifecycle.exited_at = Some(Instant::now());
        drop(lifecycle);
        self.changed.notify_all();
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock_lifecycle().exit
    }

    /// Blocks until the process exited and its output streams were drained;
    /// an output still unbound [`UNBOUND_OUTPUT_GRACE`] after the exit is
    /// dropped instead.
    pub fn wait(&self) -> ExitStatus {
        let mut lifecycle = self.lock_lifecycle();
        let mut unbound_dropped = false;
        loop {
            if let (Some(exit), 0) = (lifecycle.exit, lifecycle.outputs_open) {
                return exit;
            }
            let grace_left = lifecycle
                .exited_at
                .map(|at| UNBOUND_OUTPUT_GRACE.saturating_sub(at.elapsed()));
            lifecycle = match grace_left {
                Some(left) if left.is_zero() && !unbound_dropped => {
                    // Lock order: ends, then lifecycle.
                    drop(lifecycle);
                    self.drop_unbound_outputs(&mut self.lock_ends());
                    unbound_dropped = true;
                    self.lock_lifecycle()
                }
                Some(left) if !left.is_zero() => {
                    self.changed
                        .wait_timeout(lifecycle, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                // Running, or only bound streams left to drain.
                _ => self
                    .changed
                    .wait(lifecycle)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Blocks until the process exited, at most `timeout`; true if it did.
    pub fn wait_exit_timeout(&self, timeout: Duration) -> bool {
        let lifecycle = self.lock_lifecycle();
        let (lifecycle, _) = self
            .changed
            .wait_timeout_while(lifecycle, timeout, |l| l.exit.is_none())
            .unwrap_or_else(|e| e.into_inner());
        lifecycle.exit.is_some()
    }

    /// Binds a stream connection to the stream `kind` and starts copying.
    /// Fails (with a reason for the client) when that stream was not asked
    /// for or is already bound.
    pub fn bind(
        self: &Arc<Self>,
        kind: StreamKind,
        conn: UnixStream,
    ) -> std::result::Result<(), BindError> {
        let mut ends = self.lock_ends();
        self.drop_unbound_outputs(&mut ends);
        let slot = match kind {
            StreamKind::Stdin => &mut ends.stdin,
            StreamKind::Stdout => &mut ends.stdout,
            StreamKind::Stderr => &mut ends.stderr,
            StreamKind::Tty => &mut ends.tty,
        };
        let pipe = match std::mem::replace(slot, Slot::Taken) {
            Slot::Waiting(pipe) => pipe,
            Slot::NotAsked => {
                *slot = Slot::NotAsked;
                return Err(BindError::NotAsked(kind));
            }
            Slot::Taken => return Err(BindError::AlreadyBound(kind)),
            Slot::Dropped => {
                *slot = Slot::Dropped;
                return Err(BindError::Dropped(kind));
            }
        };
        drop(ends);
        if let Err(reply) = protocol::stdio::write_ok(&mut &conn) {
            // The client is gone; an output pipe still has to count as drained.
            if kind != StreamKind::Stdin {
                self.output_done();
            }
            return Err(BindError::Reply(reply));
        }
        let process = Arc::clone(self);
        let copier = move || match kind {
            StreamKind::Stdin => copy_stdin(conn, pipe),
            StreamKind::Tty => {
                copy_tty(pipe, conn);
                process.output_done();
            }
            _ => {
                copy_output(pipe, conn);
                process.output_done();
            }
        };
        std::thread::Builder::new()
            .name(format!("stdio-{kind}"))
            .spawn(copier)
            .map(drop)
            .map_err(BindError::CopyThread)
    }

    /// Once the process has been gone for [`UNBOUND_OUTPUT_GRACE`], drops the
    /// pipes of output streams still unbound; they count as drained.
    fn drop_unbound_outputs(&self, ends: &mut StdioEnds) {
        let expired = self
            .lock_lifecycle()
            .exited_at
            .is_some_and(|at| at.elapsed() >= UNBOUND_OUTPUT_GRACE);
        if !expired {
            return;
        }
        let mut dropped = 0;
        for slot in [&mut ends.stdout, &mut ends.stderr, &mut ends.tty] {
            if let Slot::Waiting(_) = slot {
                *slot = Slot::Dropped;
                dropped += 1;
            }
        }
        if dropped > 0 {
            let mut lifecycle = self.lock_lifecycle();
            lifecycle.outputs_open = lifecycle.outputs_open.saturating_sub(dropped);
            drop(lifecycle);
            self.changed.notify_all();
        }
    }

    fn output_done(&self) {
        let mut lifecycle = self.lock_lifecycle();
        lifecycle.outputs_open = lifecycle.outputs_open.saturating_sub(1);
        drop(lifecycle);
        self.changed.notify_all();
    }

    fn lock_lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ends(&self) -> MutexGuard<'_, StdioEnds> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// stdin: stream → pipe until the client half-closes; then the process reads EOF.
fn copy_stdin(mut conn: UnixStream, mut pipe: File) {
    let _ = copy_plain(&mut conn, &mut pipe);
}

/// stdout/stderr: pipe → stream until every writer is gone; then the client reads
/// EOF. A client that went away is drained into nothing, so the process never
/// blocks on a full pipe.
fn copy_output(mut pipe: File, mut conn: UnixStream) {
    if copy_plain(&mut pipe, &mut conn).is_err() {
        let _ = io::copy(&mut pipe, &mut io::sink());
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// tty: both directions between the stream and the pty master. Output ends when
/// the terminal's last user is gone (the master reads EIO); input ends with the
/// client's half-close.
fn copy_tty(master: File, conn: UnixStream) {
    if let (Ok(mut master_in), Ok(mut conn_in)) = (master.try_clone(), conn.try_clone()) {
        std::thread::spawn(move || {
            let _ = copy_plain(&mut conn_in, &mut master_in);
        });
    }
    let (mut master, mut conn) = (master, conn);
    let _ = copy_plain(&mut master, &mut conn);
    let _ = conn.shutdown(Shutdown::Write);
}

fn output(asked: bool) -> Result<(Slot<File>, OwnedFd)> {
    if asked {
        let (read, write) = pipe()?;
        Ok((Slot::Waiting(File::from(read)), write))
    } else {
        Ok((Slot::NotAsked, dev_null(true)?))
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::io("create a stdio pipe")(e.into()))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(AgentError::io("open /dev/null"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn outputs() -> Stdio {
        Stdio {
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    /// Binds `kind` on one end of a socket pair; the client's end, past `ok`.
    fn connect(
        process: &Arc<Process>,
        kind: StreamKind,
    ) -> std::result::Result<UnixStream, BindError> {
        let (client, agent) = UnixStream::pair().unwrap();
        process.bind(kind, agent)?;
        let mut ok = [0u8; 3];
        (&client).read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok\n");
        Ok(client)
    }

    fn read_to_end(mut stream: UnixStream) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// As if the process had exited [`UNBOUND_OUTPUT_GRACE`] ago.
    fn backdate_exit(process: &Process) {
        let past = Instant::now()
            .checked_sub(UNBOUND_OUTPUT_GRACE)
            .expect("the monotonic clock is past the grace");
        process.lock_lifecycle().exited_at = Some(past);
    }

    #[test]
    fn an_output_connected_after_the_exit_still_gets_everything() {
        let (process, child) = Process::new("", &outputs()).unwrap();
        File::from(child.stdout).write_all(b"out\n").unwrap();
        drop(child.stderr);
        process.set_exited(ExitStatus::code(3));
        let stdout = connect(&process, StreamKind::Stdout).unwrap();
        let stderr = connect(&process, StreamKind::Stderr).unwrap();
        assert_eq!(process.wait().status, 3);
        assert_eq!(read_to_end(stdout), "out\n");
        assert_eq!(read_to_end(stderr), "");
    }

    #[test]
    fn an_output_unbound_past_the_grace_counts_as_drained() {
        let (process, child) = Process::new("", &outputs()).unwrap();
        let stderr = connect(&process, StreamKind::Stderr).unwrap();
        File::from(child.stderr).write_all(b"err\n").unwrap();
        drop(child.stdout);
        process.set_exited(ExitStatus::code(3));
        backdate_exit(&process);
        assert_eq!(process.wait().status, 3);
        assert_eq!(read_to_end(stderr), "err\n");
        let late = connect(&process, StreamKind::Stdout).unwrap_err();
        let late = late.to_string();
        assert!(late.contains("not connected within 10s"), "{late}");
        assert_eq!(process.wait().status, 3, "a second wait");
    }

    #[test]
    fn a_late_connect_is_refused_even_without_a_wait() {
        let (process, _child) = Process::new("", &outputs()).unwrap();
        process.set_exited(ExitStatus::code(0));
        backdate_exit(&process);
        assert!(connect(&process, StreamKind::Stderr).is_err());
        assert!(connect(&process, StreamKind::Stdout).is_err());
        assert_eq!(process.wait().status, 0);
    }
}

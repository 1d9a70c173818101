//! One process of a container (init or exec): its exit status and its stdio
//! pipes, which the stdio streams drain and feed.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::pipe2;
use protocol::agent::Stdio;
use protocol::stdio::{copy_plain, StreamKind};

use crate::error::{AgentError, Result};

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

/// One stdio stream of a process, seen from the agent.
enum Slot<T> {
    /// The request did not ask for this stream.
    NotAsked,
    /// The pipe end waits for its stream connection.
    Waiting(T),
    /// A stream connection took it (or stdin was closed).
    Taken,
}

struct StdioEnds {
    stdin: Slot<File>,
    stdout: Slot<File>,
    stderr: Slot<File>,
    /// The pty master for the `tty` stream.
    tty: Slot<File>,
    /// The pty master, kept for resizing.
    master: Option<File>,
    /// The bound stdin connection, kept to end it on CloseStdin.
    stdin_conn: Option<UnixStream>,
}

struct Lifecycle {
    exit: Option<ExitStatus>,
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
                outputs_open,
            }),
            changed: Condvar::new(),
            ends: Mutex::new(StdioEnds {
                stdin,
                stdout,
                stderr,
                tty: Slot::NotAsked,
                master: None,
                stdin_conn: None,
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
        self.lock_lifecycle().exit = Some(status);
        self.changed.notify_all();
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock_lifecycle().exit
    }

    /// Blocks until the process exited and its output streams were drained.
    pub fn wait(&self) -> ExitStatus {
        let mut lifecycle = self.lock_lifecycle();
        loop {
            if let (Some(exit), 0) = (lifecycle.exit, lifecycle.outputs_open) {
                return exit;
            }
            lifecycle = self
                .changed
                .wait(lifecycle)
                .unwrap_or_else(|e| e.into_inner());
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
    ) -> std::result::Result<(), String> {
        let mut ends = self.lock_ends();
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
                return Err(format!(
                    "{kind} was not asked for when the process was created"
                ));
            }
            Slot::Taken => return Err(format!("{kind} is already bound")),
        };
        if kind == StreamKind::Stdin {
            ends.stdin_conn = conn.try_clone().ok();
        }
        drop(ends);
        if let Err(reply) = protocol::stdio::write_ok(&mut &conn) {
            // The client is gone; an output pipe still has to count as drained.
            if kind != StreamKind::Stdin {
                self.output_done();
            }
            return Err(reply.to_string());
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
            .map_err(|e| format!("cannot start the copy thread: {e}"))
    }

    /// Gives the process EOF on stdin, bound or not.
    pub fn close_stdin(&self) {
        let mut ends = self.lock_ends();
        if let Slot::Waiting(_) = ends.stdin {
            ends.stdin = Slot::Taken;
        }
        if let Some(conn) = ends.stdin_conn.take() {
            // Ends the copy thread's read, which then drops the pipe.
            let _ = conn.shutdown(Shutdown::Read);
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

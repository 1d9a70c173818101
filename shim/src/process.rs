//! One process of a task as the shim tracks it: its stdio, state and exit.

use crate::exit::{Exit, ExitCell};
use crate::stdio::{ProcessIo, StdioUris};
use containerd_shim::protos::api::Status;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A task's init process (empty exec id) or an exec'd process.
pub struct Process {
    /// The container it runs in.
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    /// containerd's stdio for it.
    pub uris: StdioUris,
    /// OCI `process` JSON of an exec'd process.
    pub exec_spec: Option<String>,
    state: Mutex<ProcessState>,
    exit: ExitCell,
    /// Whether a SIGKILL of it is already being watched for its exit.
    kill_watched: AtomicBool,
}

struct ProcessState {
    status: Status,
    io: Option<ProcessIo>,
}

impl Process {
    /// A created, not yet started process.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        uris: StdioUris,
        exec_spec: Option<String>,
    ) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            uris,
            exec_spec,
            state: Mutex::new(ProcessState {
                status: Status::CREATED,
                io: None,
            }),
            exit: ExitCell::default(),
            kill_watched: AtomicBool::new(false),
        }
    }

    /// The id containerd's events name it by: the exec id, or the container id.
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its state as containerd names it: STOPPED as soon as its exit is
    /// recorded, so a client woken by [`Process::wait`] never reads it running.
    pub fn status(&self) -> Status {
        if self.exit.get().is_some() {
            return Status::STOPPED;
        }
        self.lock().status
    }

    /// Records a state change (not to STOPPED: see [`Process::record_exit`]).
    pub fn set_status(&self, status: Status) {
        let mut state = self.lock();
        if state.status != Status::STOPPED {
            state.status = status;
        }
    }

    /// Keeps the process's stdio copies.
    pub fn set_io(&self, io: ProcessIo) {
        self.lock().io = Some(io);
    }

    /// The client closed stdin: forward what is left, then EOF.
    pub fn close_stdin(&self) {
        // Take the copy out so the wait for stdin's drain holds no lock.
        let stdin = self.lock().io.as_mut().and_then(ProcessIo::take_stdin);
        if let Some(stdin) = stdin {
            stdin.close();
        }
    }

    /// Waits until the output copies finished and stops stdin (the process ended).
    pub fn finish_io(&self) {
        let io = self.lock().io.take();
        if let Some(io) = io {
            io.stop();
        }
    }

    /// Records the exit; true if this call recorded it (the caller then
    /// publishes it, once).
    pub fn record_exit(&self, exit: Exit) -> bool {
        let first = self.exit.set(exit);
        if first {
            self.lock().status = Status::STOPPED;
        }
        first
    }

    /// The exit, if the process ended.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.get()
    }

    /// Blocks until the process ended.
    pub fn wait(&self) -> Exit {
        self.exit.wait()
    }

    /// Waits at most `timeout` for the process to end.
    pub fn wait_for(&self, timeout: Duration) -> Option<Exit> {
        self.exit.wait_for(timeout)
    }

    /// True the first time only: whoever gets true watches a SIGKILL of it.
    pub fn start_kill_watch(&self) -> bool {
        !self.kill_watched.swap(true, Ordering::SeqCst)
    }

    /// Whether it was started and has not ended.
    pub fn is_live(&self) -> bool {
        matches!(
            self.status(),
            Status::RUNNING | Status::PAUSED | Status::PAUSING
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_woken_waiter_reads_the_process_stopped() {
        for _ in 0..200 {
            let process = Arc::new(Process::new("c", "", StdioUris::default(), None));
            process.set_status(Status::RUNNING);
            let waiter = {
                let process = Arc::clone(&process);
                std::thread::spawn(move || {
                    let exit = process.wait();
                    (exit.status, process.status())
                })
            };
            assert!(process.record_exit(Exit::now(137)));
            assert!(!process.record_exit(Exit::now(1)), "recorded once");
            let seen = waiter.join().expect("waiter");
            assert_eq!(seen, (137, Status::STOPPED));
            process.set_status(Status::RUNNING);
            assert_eq!(process.status(), Status::STOPPED, "an exit is final");
        }
    }
}

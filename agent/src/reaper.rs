//! Reaps every child of the agent and hands exit statuses to the processes that
//! wait for them.
//!
//! libcontainer forks an intermediate process and `waitpid`s it itself, so a blind
//! `waitpid(-1)` could steal that status. Calls into libcontainer therefore hold a
//! [`SpawnGuard`] (a read lock); the reaper learns that a child exited with
//! `waitid(WNOWAIT)`, which leaves the zombie in place, and reaps only under the
//! write lock, when no libcontainer call is waiting for its own child.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::process::{ExitStatus, Process};

/// Held around every libcontainer call that forks or waits: the reaper does not
/// reap while one is held.
pub type SpawnGuard<'a> = RwLockReadGuard<'a, ()>;

/// The agent's child reaper.
#[derive(Default)]
pub struct Reaper {
    spawn_lock: RwLock<()>,
    state: Mutex<ReaperState>,
    children: Condvar,
}

#[derive(Default)]
struct ReaperState {
    /// Processes waiting for their exit, by pid.
    watched: HashMap<i32, Arc<Process>>,
    /// Exits of pids nobody watched yet (a process that died before it was
    /// registered), claimed by [`Reaper::watch`].
    unclaimed: HashMap<i32, ExitStatus>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let worker = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || worker.run())?;
        Ok(reaper)
    }

    /// Blocks reaping until the guard is dropped. Never take it twice in one
    /// thread: a waiting reaper blocks new readers.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        // A poisoned lock guards no data; go on.
        self.spawn_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the exit of `pid` to `process`, at once if it already happened.
    pub fn watch(&self, pid: i32, process: Arc<Process>) {
        let mut state = self.lock_state();
        match state.unclaimed.remove(&pid) {
            Some(status) => process.set_exited(status),
            None => {
                state.watched.insert(pid, process);
            }
        }
        self.children.notify_all();
    }

    /// Wakes the reaper after a fork, in case it sleeps for lack of children.
    pub fn child_spawned(&self) {
        self.children.notify_all();
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => self.reap_all(),
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // ECHILD: no children yet. Sleep until a fork is announced
                    // (the timeout covers a fork nobody announced).
                    let state = self.lock_state();
                    let _ = self
                        .children
                        .wait_timeout(state, Duration::from_millis(200));
                }
            }
        }
    }

    fn reap_all(&self) {
        let _exclusive = self.spawn_lock.write().unwrap_or_else(|e| e.into_inner());
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::signal(signal)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let mut state = self.lock_state();
            match state.watched.remove(&pid.as_raw()) {
                Some(process) => process.set_exited(status),
                None => {
                    // An orphan re-parented to us, or a process not yet watched.
                    // Keep a bounded record for the latter.
                    if state.unclaimed.len() > 4096 {
                        state.unclaimed.clear();
                    }
                    state.unclaimed.insert(pid.as_raw(), status);
                }
            }
        }
    }
}

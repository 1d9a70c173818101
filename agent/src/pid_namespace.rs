//! The pod's shared PID namespace (Kubernetes' `shareProcessNamespace`).
//!
//! With runc, the pod's containers join the pause container's PID namespace,
//! whose init is `/pause`. A runv guest runs no pause container, so the agent
//! starts a holder the same way: a spawn helper unshares a PID namespace and
//! forks its init, which execs the agent binary as `/pause --pod-pid-holder`.
//! The holder reaps what is orphaned in the namespace and lives as long as its
//! lifeline, a pipe whose only write end the agent keeps: it ends when the
//! agent lets it go (DestroySandbox) or dies, and the kernel then ends every
//! process left in the namespace.
//!
//! Every container in the namespace sees the holder as its PID 1, and one
//! allowed to ptrace it would see its root and mount namespace through
//! `/proc/1/`: the holder first gives itself an empty, read-only root in a
//! mount namespace of its own, then drops to `nobody` with no capabilities,
//! no new privileges and no core dumps.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    chdir, chroot, fork, pipe2, setgid, setgroups, setuid, ForkResult, Gid, Pid, Uid,
};

use crate::error::{AgentError, Result};
use crate::process::ChildStdio;
use crate::reaper::Reaper;
use crate::spawn::{dup_above, spawn_with_lifeline, SpawnRequest};

/// The argument that makes the agent binary a holder (checked before anything
/// else: the holder is PID 1 of its namespace, like the agent in the guest).
pub const HOLDER_ARG: &str = "--pod-pid-holder";

/// The holder's name, as `ps` in the pod's containers shows its PID 1.
const HOLDER_ARGV0: &str = "/pause";

/// What starting the namespace is called in errors.
pub const STEP: &str = "start the pod's shared PID namespace";

/// The holder's fd for the read end of its lifeline.
pub const LIFELINE_FD: RawFd = 4;

/// The holder's uid and gid once confined (`nobody`, `nogroup`).
const HOLDER_ID: u32 = 65534;

/// Where, in its own mount namespace, the holder mounts its empty root: a
/// directory every guest and host has.
const HOLDER_ROOT_MOUNT: &str = "/proc";

/// The pod's shared PID namespace and its holder.
#[derive(Debug)]
pub struct PodPidNamespace {
    /// The holder's pid in the agent's namespace.
    pid: i32,
    /// The holder's start time (clock ticks after boot), which tells it from a
    /// later process that got its pid.
    started: u64,
    /// The namespace, open: specs name it through the agent's fd, so a pid
    /// reused after the holder died cannot stand in for it.
    namespace: File,
    /// The write end of the holder's lifeline.
    _lifeline: OwnedFd,
}

impl PodPidNamespace {
    /// Starts a holder through a spawn helper.
    pub fn start(reaper: &Reaper) -> Result<Self> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::io(STEP)(e.into()))?;
        // Above the helper's fixed fds (3, 4), so that its dup2s cannot clobber it.
        let read = dup_above(read.as_raw_fd(), 10, STEP)?;
        let pid = {
            let _guard = reaper.spawn_guard();
            let spawned = spawn_with_lifeline(
                &SpawnRequest::PodPidNamespace,
                ChildStdio::null()?,
                Some(read.as_fd()),
            );
            reaper.child_spawned();
            spawned?
        };
        let ended = || {
            AgentError::FailedPrecondition(format!(
                "the pod's PID namespace holder (pid {pid}) ended at once"
            ))
        };
        let started = start_time(pid).ok_or_else(ended)?;
        let namespace = File::open(format!("/proc/{pid}/ns/pid"))
            .map_err(AgentError::io(format!("{STEP}: open its namespace")))?;
        if start_time(pid) != Some(started) {
            return Err(ended());
        }
        Ok(Self {
            pid,
            started,
            namespace,
            _lifeline: write,
        })
    }

    /// The namespace's path, for a spec's pid namespace entry.
    pub fn path(&self) -> Result<PathBuf> {
        if !self.holder_lives() {
            return Err(AgentError::FailedPrecondition(format!(
                "the pod's shared PID namespace is gone: its holder (pid {}) ended",
                self.pid
            )));
        }
        Ok(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.namespace.as_raw_fd()
        )))
    }

    fn holder_lives(&self) -> bool {
        start_time(self.pid) == Some(self.started)
    }
}

impl Drop for PodPidNamespace {
    fn drop(&mut self) {
        // Closing the lifeline ends the holder too; the kill does not wait for
        // it to notice.
        if self.holder_lives() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// The start time of process `pid` (field 22 of its stat), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let mut stat = String::new();
    File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read_to_string(&mut stat)
        .ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// In the (single-threaded) spawn helper: unshares a PID namespace and forks
/// its init, which execs the holder; the init's pid, in the agent's namespace.
pub fn start_in_helper() -> Result<i32> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| AgentError::io(STEP)(e.into()))?;
    // SAFETY: the spawn helper is single-threaded, so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(ForkResult::Child) => {
            let err = Command::new("/proc/self/exe")
                .arg0(HOLDER_ARGV0)
                .arg(HOLDER_ARG)
                .exec();
            log::error!("cannot start the pod's PID namespace holder: {err}");
            std::process::exit(127);
        }
        Err(err) => Err(AgentError::io(STEP)(err.into())),
    }
}

/// The holder's main: PID 1 of the pod's namespace. Reaps every orphan and
/// ends when its lifeline closes; all signals are blocked (only SIGKILL, from
/// outside the namespace, ends it otherwise).
pub fn holder_main() -> ExitCode {
    // Not started by the agent (no lifeline): nothing to hold.
    if fcntl(LIFELINE_FD, FcntlArg::F_GETFD).is_err() {
        log::error!("{HOLDER_ARG} is the agent's own: no lifeline on fd {LIFELINE_FD}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = confine() {
        log::error!("the pod's PID namespace holder cannot confine itself: {err}");
        return ExitCode::FAILURE;
    }
    if SigSet::all().thread_block().is_err() {
        return ExitCode::FAILURE;
    }
    let Ok(children) = SignalFd::with_flags(
        &SigSet::from(Signal::SIGCHLD),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    ) else {
        return ExitCode::FAILURE;
    };
    // SAFETY: the agent passed the lifeline's read end as this fd, and nothing
    // else in this process uses the number.
    let lifeline = unsafe { OwnedFd::from_raw_fd(LIFELINE_FD) };
    loop {
        let mut fds = [
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return ExitCode::FAILURE,
        }
        if fds[0].any().unwrap_or(true) {
            // EOF or an error: the agent let go of the namespace, or died.
            return ExitCode::SUCCESS;
        }
        while let Ok(Some(_)) = children.read_signal() {}
        reap_orphans();
    }
}

/// Gives the holder an empty, read-only root in a mount namespace of its own,
/// then makes it `nobody` with no capabilities, no new privileges and no core
/// dumps.
fn confine() -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let empty = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        HOLDER_ROOT_MOUNT,
        Some("tmpfs"),
        empty,
        Some("size=4k"),
    )?;
    chdir(HOLDER_ROOT_MOUNT)?;
    chroot(".")?;
    chdir("/")?;
    for capability in 0..=libc::c_ulong::from(u8::MAX) {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no
        // memory; numbers past the kernel's last capability fail with EINVAL.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } != 0 {
            break;
        }
    }
    setgroups(&[])?;
    setgid(Gid::from_raw(HOLDER_ID))?;
    // Leaving uid 0 clears every capability set.
    setuid(Uid::from_raw(HOLDER_ID))?;
    prctl::set_no_new_privs()?;
    prctl::set_dumpable(false)
}

/// Reaps every child that has exited, without waiting.
fn reap_orphans() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_past_the_command_name() {
        let own = start_time(std::process::id() as i32);
        assert!(own.is_some_and(|ticks| ticks > 0), "{own:?}");
        assert_eq!(start_time(i32::MAX), None);
    }
}

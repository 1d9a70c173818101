//! The pod's VMM process: started with the VM's whole configuration on its
//! command line, watched until it exits, killed when the pod goes.

use crate::config::RunvConfig;
use crate::exit::ExitCell;
use crate::jail::{self, Jail};
use crate::paths::{SandboxDir, GUEST_CID};
use crate::privileges::VmmPrivileges;
use crate::spec::VmSize;
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use log::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::{SHARED_FS_TAG, SHARE_MAX_FDS};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of the VMM's stderr kept in `vmm.log`: the guest can make the VMM
/// log, and the file is on the host's `/run`.
const MAX_VMM_LOG_BYTES: u64 = 4 << 20;
/// Lines of `vmm.log` quoted in the shim's log and errors.
const LOG_TAIL_LINES: usize = 5;
/// Bytes at the end of `vmm.log` those lines are taken from: a guest can make
/// one line as long as the whole log.
const LOG_TAIL_BYTES: u64 = 4096;
/// How long the exit watcher waits for the VMM's last words in `vmm.log`
/// before it reports the exit.
const LOG_COPY_WAIT: Duration = Duration::from_secs(1);

/// A virtio-net card of the VM: a tap the shim opened, inherited by the VMM.
#[derive(Debug, Clone, Copy)]
pub struct NetCard<'a> {
    /// The tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    pub tap: BorrowedFd<'a>,
    /// The MAC address the guest's interface gets.
    pub mac: &'a str,
}

/// Where the VMM process goes on the host.
#[derive(Debug, Clone, Copy)]
pub struct VmmPlacement<'a> {
    /// Its `oom_score_adj`, none to keep the shim's.
    pub oom_score_adj: Option<i32>,
    /// The pod cgroup's `cgroup.procs` files, one per hierarchy, to join.
    pub cgroup_procs: &'a [File],
}

/// A running (or exited) VMM.
pub struct Vm {
    pid: i32,
    exit: Arc<ExitCell>,
    spawn_time: Duration,
    jailed: bool,
}

impl Vm {
    /// Starts `config.vmm` for sandbox `dir` with `size` and the network cards
    /// `nets`; `on_exit` runs once, on a thread, when the VMM exits.
    ///
    /// The VMM gets an empty environment, no new privileges (nothing it execs
    /// could gain any), virtio-fs's capabilities and its resource limits
    /// (`privileges`), the pod's `oom_score_adj`, if the spec has one, and
    /// joins the pod's cgroup before its exec, so that all it uses is charged
    /// there. With `vmm_jail` it starts in its jail (`jail`).
    ///
    /// The shim's reaper (containerd-shim's SIGCHLD handler) reaps every child, so
    /// the VMM's exit is learnt from its monitor, subscribed before the spawn.
    pub fn launch(
        config: &RunvConfig,
        dir: &SandboxDir,
        size: VmSize,
        nets: &[NetCard<'_>],
        placement: VmmPlacement<'_>,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Result<Self, String> {
        let subscription = monitor_subscribe(Topic::Pid)
            .map_err(|err| format!("cannot watch the VMM's exit: {err}"))?;
        let log = File::create(dir.vmm_log())
            .map_err(|err| format!("{}: {err}", dir.vmm_log().display()))?;
        // Closed once the VMM's stderr is in `vmm.log`: the exit is reported
        // after that (or LOG_COPY_WAIT), so whoever sees it can quote the log.
        let (copied, log_copied) = mpsc::channel::<()>();
        let log_path = dir.vmm_log();
        let console = if config.debug_console {
            dir.console_log().display().to_string()
        } else {
            "off".to_string()
        };
        dir.create_vmm_dirs().map_err(|err| err.to_string())?;
        let jail = if config.vmm_jail {
            let plan = Jail::plan(dir, &config.vmm, &[&config.kernel, &config.initrd])
                .map_err(|err| err.to_string())?;
            Some(Arc::new(plan))
        } else {
            None
        };
        let mut command = Command::new(&config.vmm);
        command
            .arg("--kernel")
            .arg(&config.kernel)
            .arg("--initrd")
            .arg(&config.initrd)
            .arg("--cpus")
            .arg(size.vcpus.to_string())
            .arg("--memory-mib")
            .arg(size.memory_mib.to_string())
            .arg("--console")
            .arg(console)
            .arg("--api-sock")
            .arg(dir.api_sock())
            .arg("--vsock")
            .arg(format!(
                "cid={GUEST_CID},uds={}",
                dir.vsock_sock().display()
            ))
            .arg("--fs")
            .arg(format!(
                "tag={SHARED_FS_TAG},path={},max-fds={SHARE_MAX_FDS}",
                dir.shared().display()
            ))
            .arg("--rng")
            .arg("--seccomp")
            .arg(config.vmm_seccomp.flag());
        for net in nets {
            command
                .arg("--net")
                .arg(format!("fd={},mac={}", net.tap.as_raw_fd(), net.mac));
        }
        let inherited: Vec<RawFd> = nets.iter().map(|net| net.tap.as_raw_fd()).collect();
        let oom_score_adj = placement
            .oom_score_adj
            .map(|adj| format!("{adj}\n").into_bytes());
        let cgroup_procs: Vec<RawFd> = placement
            .cgroup_procs
            .iter()
            .map(AsRawFd::as_raw_fd)
            .collect();
        command.env_clear();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let jailed = jail.is_some();
        // SAFETY: the closure makes only async-signal-safe system calls (fcntl
        // on fds the parent holds open for the whole spawn, borrowed in
        // `nets`; writes to the cgroup files `placement` borrows; open, write
        // and close on a path and bytes made before the fork); it allocates
        // nothing.
        let spawned = unsafe {
            jail::spawn_confined(&mut command, jail, VmmPrivileges::new(), move || {
                inherit_fds(&inherited)?;
                for fd in &cgroup_procs {
                    join_cgroup(*fd)?;
                }
                if let Some(adj) = &oom_score_adj {
                    write_own_oom_score_adj(adj)?;
                }
                Ok(())
            })
        };
        let (mut child, spawn_time) = spawned
            .map_err(|why| format!("cannot start the VMM {}: {why}", config.vmm.display()))?;
        if let Some(stderr) = child.stderr.take() {
            let spawned = std::thread::Builder::new()
                .name("vmm-log".into())
                .spawn(move || {
                    copy_capped(stderr, log, MAX_VMM_LOG_BYTES);
                    drop(copied);
                });
            if let Err(err) = spawned {
                warn!("cannot copy the VMM's log: {err}");
            }
        }
        let pid = i32::try_from(child.id()).map_err(|_| "VMM pid out of range".to_string())?;
        // The reaper owns the child's exit status; dropping `child` does not wait.
        drop(child);
        fs::write(dir.vmm_pid_file(), pid.to_string())
            .map_err(|err| format!("{}: {err}", dir.vmm_pid_file().display()))?;
        info!(
            "VMM {pid} started: {} vCPUs, {} MiB",
            size.vcpus, size.memory_mib
        );
        let exit = Arc::new(ExitCell::default());
        let watched = Arc::clone(&exit);
        std::thread::Builder::new()
            .name("vmm-exit".into())
            .spawn(move || {
                for event in subscription.rx.iter() {
                    if matches!(event.subject, Subject::Pid(exited) if exited == pid) {
                        let _ = log_copied.recv_timeout(LOG_COPY_WAIT);
                        if event.exit_code == 0 {
                            info!("VMM {pid} exited with 0");
                        } else {
                            // Why, for the operator: its last lines.
                            warn!(
                                "VMM {pid} {}: {}",
                                exit_cause(event.exit_code),
                                log_tail(&log_path)
                            );
                        }
                        let status = u32::try_from(event.exit_code).unwrap_or(255);
                        watched.set(crate::exit::Exit::now(status));
                        on_exit(event.exit_code);
                        return;
                    }
                }
            })
            .map_err(|err| format!("cannot start the VMM watcher: {err}"))?;
        Ok(Self {
            pid,
            exit,
            spawn_time,
            jailed,
        })
    }

    /// How long its spawn took, fork to exec (with the jail's making), and
    /// whether it is jailed.
    pub fn spawn_time(&self) -> (Duration, bool) {
        (self.spawn_time, self.jailed)
    }

    /// The VMM's host pid.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Whether the VMM has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.get().is_some()
    }

    /// Waits at most `timeout` for the VMM to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        self.exit.wait_for(timeout).is_some()
    }

    /// Kills the VMM and waits for its exit.
    pub fn kill(&self) {
        if self.has_exited() {
            return;
        }
        if let Err(err) = kill(Pid::from_raw(self.pid), Signal::SIGKILL) {
            warn!("kill VMM {}: {err}", self.pid);
        }
        if !self.wait_exit(Duration::from_secs(10)) {
            warn!("VMM {} did not exit 10 s after SIGKILL", self.pid);
        }
    }
}

/// Moves this process into the cgroup whose `cgroup.procs` is open as `fd`.
fn join_cgroup(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: a two-byte literal; `fd` is held open by the parent's `File`.
    if unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `adj` (a number and a newline) to this process's `oom_score_adj`.
/// Async-signal-safe: for a child between fork and exec.
fn write_own_oom_score_adj(adj: &[u8]) -> std::io::Result<()> {
    // SAFETY: the path is a NUL-terminated literal; open(2) reads only it.
    let fd = unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `adj` is a live slice of `adj.len()` bytes; `fd` was just opened.
    let written = unsafe { libc::write(fd, adj.as_ptr().cast(), adj.len()) };
    let result = if written < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// Clears close-on-exec on `fds`, so that the exec'd VMM has them under the
/// numbers its command line names.
fn inherit_fds(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: F_GETFD/F_SETFD on an fd number change only that fd's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Copies `stderr` into `log` until EOF, keeping at most `limit` bytes (then one
/// line saying the rest was dropped); never stops reading, so the VMM never
/// blocks on a full pipe.
fn copy_capped(mut stderr: impl Read, mut log: impl Write, limit: u64) {
    let mut left = limit;
    let mut noted = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let take = usize::try_from(left).map_or(n, |left| left.min(n));
        let written = if take < n && !noted {
            noted = true;
            log.write_all(&buf[..take])
                .and_then(|()| log.write_all(b"\n[vmm.log: over its limit, the rest dropped]\n"))
        } else {
            log.write_all(&buf[..take])
        };
        left -= take as u64;
        if written.is_err() {
            left = 0;
        }
    }
}

/// Kills the VMM a dead shim left in `dir` (pid file), if that pid is still a
/// VMM of this sandbox.
pub fn kill_orphan(dir: &SandboxDir) {
    let Ok(text) = fs::read_to_string(dir.vmm_pid_file()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if !is_vmm_of(pid, dir.path()) {
        return;
    }
    info!("killing VMM {pid} left by a dead shim");
    if let Err(err) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
        warn!("kill VMM {pid}: {err}");
        return;
    }
    // Not our child: wait for it to go by polling /proc.
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    warn!("VMM {pid} still exists 5 s after SIGKILL");
}

/// Whether `pid`'s command line names `sandbox_dir` (so a recycled pid is spared).
fn is_vmm_of(pid: i32, sandbox_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = sandbox_dir.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// How the VMM ended, from the status the shim's reaper reports (128 plus
/// the signal's number for a signal).
pub fn exit_cause(status: i32) -> String {
    let signal = status
        .checked_sub(128)
        .filter(|n| *n > 0)
        .and_then(|n| Signal::try_from(n).ok());
    match signal {
        Some(Signal::SIGSYS) => "was killed by SIGSYS: one of its threads made a syscall \
             its seccomp filter forbids (the host kernel's audit log names it)"
            .into(),
        Some(signal) => format!("was killed by {signal}"),
        None => format!("exited with {status}"),
    }
}

/// The last lines of the VMM's log at `path`, joined with " | " ("(empty)"
/// when there are none).
pub fn log_tail(path: &Path) -> String {
    let mut end = Vec::new();
    if let Ok(mut log) = File::open(path) {
        let len = log.metadata().map_or(0, |meta| meta.len());
        let _ = log.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let _ = log.take(LOG_TAIL_BYTES).read_to_end(&mut end);
    }
    let text = String::from_utf8_lossy(&end);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_log_keeps_its_limit_and_reads_to_the_end() {
        let noisy = vec![b'x'; 100_000];
        let mut from = &noisy[..];
        let mut log = Vec::new();
        copy_capped(&mut from, &mut log, 1000);
        assert!(from.is_empty(), "stopped reading");
        assert!(log.starts_with(&[b'x'; 1000]));
        assert!(log.ends_with(b"[vmm.log: over its limit, the rest dropped]\n"));
        assert!(log.len() < 1100, "{} bytes", log.len());
    }

    #[test]
    fn a_seccomp_kill_is_named_and_other_ends_told_apart() {
        assert!(exit_cause(128 + libc::SIGSYS).contains("seccomp"));
        assert_eq!(exit_cause(137), "was killed by SIGKILL");
        assert_eq!(exit_cause(1), "exited with 1");
        assert_eq!(exit_cause(128), "exited with 128");
    }

    #[test]
    fn the_log_tail_is_the_last_lines_or_says_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        assert_eq!(log_tail(&path), "(empty)", "no file yet");
        fs::write(
            &path,
            "1\n2\n3\n4\n5\n6\nrunv-vmm: error: the guest triple-faulted\n",
        )
        .unwrap();
        assert_eq!(
            log_tail(&path),
            "3 | 4 | 5 | 6 | runv-vmm: error: the guest triple-faulted"
        );
    }

    #[test]
    fn the_log_tail_of_one_endless_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        fs::write(&path, vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(log_tail(&path).len(), LOG_TAIL_BYTES as usize);
    }
}

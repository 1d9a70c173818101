//! The pod's VMM process: started with the VM's whole configuration on its
//! command line (`--config JSON`), watched until it exits, killed when the
//! pod goes.

mod child;
mod log;
mod orphan;
mod vmm_config;

pub use self::log::{exit_cause, log_tail};
pub use orphan::kill_orphan;

use crate::config::RunvConfig;
use crate::exit::ExitCell;
use crate::jail::{self, Jail, JailError};
use crate::paths::SandboxDir;
use crate::privileges::VmmPrivileges;
use crate::spec::VmSize;
use ::log::{info, warn};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::vm_config::VmConfigError;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How long the exit watcher waits for the VMM's last words in `vmm.log`
/// before it reports the exit.
const LOG_COPY_WAIT: Duration = Duration::from_secs(1);

/// Why the VMM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Its exit could not be subscribed to.
    #[error("cannot watch the VMM's exit: {0}")]
    Subscribe(containerd_shim::Error),
    /// `vmm.log` could not be made.
    #[error("{path}: {source}")]
    CreateLog {
        /// `vmm.log`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its directories could not be made.
    #[error("cannot make the VMM's directories: {0}")]
    VmmDirs(std::io::Error),
    /// Its jail could not be planned.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// More vCPUs than a VM may have.
    #[error("{0} vCPUs is more than a VM may have")]
    Vcpus(u32),
    /// The VM's configuration is out of range.
    #[error("the VMM's configuration: {0}")]
    Config(#[from] VmConfigError),
    /// The configuration could not be encoded.
    #[error("cannot encode the VMM's configuration: {0}")]
    Encode(serde_json::Error),
    /// The process could not be spawned.
    #[error("cannot start the VMM {vmm}: {why}")]
    Spawn {
        /// The VMM binary.
        vmm: PathBuf,
        /// Why (as the jail's spawn reports it).
        #[source]
        why: crate::jail::JailError,
    },
    /// The child's pid does not fit a pid.
    #[error("VMM pid {0} out of range")]
    Pid(u32),
    /// The pid file could not be written.
    #[error("{path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exit watcher thread could not be started.
    #[error("cannot start the VMM watcher: {0}")]
    Watcher(std::io::Error),
}

/// A virtio-net card of the VM: a tap the shim opened, inherited by the VMM.
#[derive(Debug, Clone, Copy)]
pub struct NetCard<'a> {
    /// The tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    pub tap: BorrowedFd<'a>,
    /// The MAC address the guest's interface gets.
    pub mac: &'a str,
}

/// How the VM starts.
#[derive(Debug, Clone, Copy)]
pub enum VmStart<'a> {
    /// A cold boot of the kernel and initrd.
    Boot,
    /// A cold boot whose VMM may write a snapshot into `snapshot` (in its
    /// `vm/`): a VM template in the making, with `cards` detached network
    /// cards (each VM restored from it puts its own tap behind them).
    MakeTemplate {
        /// Where the snapshot goes.
        snapshot: &'a std::path::Path,
        /// How many network cards.
        cards: usize,
    },
    /// From the snapshot in this directory (a VM template), its files bound
    /// read-only into the jail.
    Restore(&'a std::path::Path),
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
    /// `nets`, as `start` says; `on_exit` runs once, on a thread, when the VMM
    /// exits.
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
        (size, start): (VmSize, VmStart<'_>),
        nets: &[NetCard<'_>],
        placement: VmmPlacement<'_>,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Result<Self, VmError> {
        let vm_config = vmm_config::vmm_config(config, dir, size, nets, start)?;
        let subscription = monitor_subscribe(Topic::Pid).map_err(VmError::Subscribe)?;
        let log_path = dir.vmm_log();
        let log = File::create(&log_path).map_err(|source| VmError::CreateLog {
            path: log_path.clone(),
            source,
        })?;
        // Closed once the VMM's stderr is in `vmm.log`: the exit is reported
        // after that (or LOG_COPY_WAIT), so whoever sees it can quote the log.
        let (copied, log_copied) = mpsc::channel::<()>();
        dir.create_vmm_dirs().map_err(VmError::VmmDirs)?;
        let jail = if config.vmm_jail {
            let snapshot_files = match start {
                VmStart::Restore(template) => protocol::vm_config::snapshot_files(template),
                VmStart::Boot | VmStart::MakeTemplate { .. } => Vec::new(),
            };
            let mut data = vec![config.kernel.as_path(), config.initrd.as_path()];
            data.extend(snapshot_files.iter().map(PathBuf::as_path));
            let plan = Jail::plan(dir, &config.vmm, &data)?;
            Some(Arc::new(plan))
        } else {
            None
        };
        let mut command = Command::new(&config.vmm);
        command
            .arg("--config")
            .arg(serde_json::to_string(&vm_config).map_err(VmError::Encode)?);
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
                child::inherit_fds(&inherited)?;
                for fd in &cgroup_procs {
                    child::join_cgroup(*fd)?;
                }
                if let Some(adj) = &oom_score_adj {
                    child::write_own_oom_score_adj(adj)?;
                }
                Ok(())
            })
        };
        let (mut child, spawn_time) = spawned.map_err(|why| VmError::Spawn {
            vmm: config.vmm.clone(),
            why,
        })?;
        if let Some(stderr) = child.stderr.take() {
            let spawned = std::thread::Builder::new()
                .name("vmm-log".into())
                .spawn(move || {
                    log::copy_capped(stderr, log, log::MAX_VMM_LOG_BYTES);
                    drop(copied);
                });
            if let Err(err) = spawned {
                warn!("cannot copy the VMM's log: {err}");
            }
        }
        let pid = i32::try_from(child.id()).map_err(|_| VmError::Pid(child.id()))?;
        // The reaper owns the child's exit status; dropping `child` does not wait.
        drop(child);
        let pid_file = dir.vmm_pid_file();
        fs::write(&pid_file, pid.to_string()).map_err(|source| VmError::PidFile {
            path: pid_file,
            source,
        })?;
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
            .map_err(VmError::Watcher)?;
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

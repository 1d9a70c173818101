//! One pod's VM: its directory, its VMM and the agent connection, from boot to
//! teardown; and the cleanup of what a dead shim left.

use crate::config::RunvConfig;
use crate::mounts;
use crate::paths::SandboxDir;
use crate::pod_files::PodFiles;
use crate::share::{self, PodShare};
use crate::spec::VmSize;
use crate::vm::{self, Vm};
use log::{info, warn};
use protocol::agent::{AgentClient, CheckRequest, CreateSandboxRequest, DestroySandboxRequest};
use protocol::{AGENT_VSOCK_PORT, GUEST_SHARED_DIR};
use std::fs;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

/// Bound of an ordinary agent call (the emulated test host is slow).
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to power off after DestroySandbox.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// Lines of the VMM's log quoted in a boot error.
const LOG_TAIL_LINES: usize = 5;

/// Context for an ordinary agent call.
pub fn agent_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(AGENT_CALL_TIMEOUT)
}

/// A booted pod VM with its agent.
pub struct Sandbox {
    /// The pod's sandbox id.
    pub id: String,
    /// `/run/runv/<id>/`.
    pub dir: SandboxDir,
    /// The host side of the guest's share.
    pub share: PodShare,
    /// The VMM process.
    pub vm: Vm,
    /// The guest agent.
    pub agent: AgentClient,
}

impl Sandbox {
    /// Boots the VM of pod `id` and prepares its sandbox in the guest (hostname,
    /// hosts and resolv.conf from `files`). On any
    /// failure nothing is left: no VMM, no directory. `on_vm_exit` runs when the
    /// VMM exits (also after a failed boot).
    pub fn boot(
        id: &str,
        config: RunvConfig,
        size: VmSize,
        files: &PodFiles,
        on_vm_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Result<Self, String> {
        config.check_files()?;
        let dir = SandboxDir::new(id);
        if dir.path().exists() {
            warn!(
                "{} exists: cleaning what an earlier pod left",
                dir.path().display()
            );
            cleanup(&dir);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.path())
            .map_err(|err| format!("{}: {err}", dir.path().display()))?;
        let share = match PodShare::create(&dir) {
            Ok(share) => share,
            Err(err) => {
                cleanup(&dir);
                return Err(err.to_string());
            }
        };
        let vm = match Vm::launch(&config, &dir, size, on_vm_exit) {
            Ok(vm) => vm,
            Err(err) => {
                cleanup(&dir);
                return Err(err);
            }
        };
        let agent = match connect_agent(&dir, &vm, &config).and_then(|agent| {
            prepare_guest(&agent, id, files)?;
            Ok(agent)
        }) {
            Ok(agent) => agent,
            Err(err) => {
                vm.kill();
                cleanup(&dir);
                return Err(err);
            }
        };
        info!("pod {id}: the guest agent answers");
        Ok(Self {
            id: id.to_string(),
            dir,
            share,
            vm,
            agent,
        })
    }

    /// Powers the guest off (killing the VMM if it does not go), then removes
    /// the pod's mounts and directory.
    pub fn destroy(&self) {
        if !self.vm.has_exited() {
            let ctx = ttrpc::context::with_duration(POWER_OFF_GRACE);
            if let Err(err) = self
                .agent
                .destroy_sandbox(ctx, &DestroySandboxRequest::default())
            {
                warn!("pod {}: DestroySandbox: {err}", self.id);
            }
            if !self.vm.wait_exit(POWER_OFF_GRACE) {
                warn!(
                    "pod {}: the guest did not power off; killing the VMM",
                    self.id
                );
                self.vm.kill();
            }
        }
        cleanup(&self.dir);
        info!("pod {}: torn down", self.id);
    }
}

/// Dials the agent through the VMM's hybrid vsock socket until it answers, the
/// VMM exits or the boot timeout passes.
fn connect_agent(dir: &SandboxDir, vm: &Vm, config: &RunvConfig) -> Result<AgentClient, String> {
    let timeout = Duration::from_secs(config.boot_timeout_secs);
    let gone = || {
        vm.has_exited()
            .then(|| io::Error::other("the VMM exited during boot"))
    };
    let stream = protocol::hybrid_vsock::connect_within(
        &dir.vsock_sock(),
        AGENT_VSOCK_PORT,
        timeout,
        Duration::from_millis(20),
        gone,
    )
    .map_err(|err| {
        let reason = if vm.has_exited() {
            vm.wait_log_copied(Duration::from_secs(1));
            err.to_string()
        } else {
            format!(
                "the guest agent did not answer within boot_timeout_secs = {} ({err})",
                config.boot_timeout_secs
            )
        };
        format!(
            "{reason}; VMM log {}: {}",
            dir.vmm_log().display(),
            log_tail(dir)
        )
    })?;
    let client = ttrpc::Client::new(stream.into_raw_fd())
        .map_err(|err| format!("ttrpc client on the agent connection: {err}"))?;
    let agent = AgentClient::new(client);
    agent
        .check(agent_ctx(), &CheckRequest::default())
        .map_err(|err| format!("the guest agent's health check: {err}"))?;
    Ok(agent)
}

fn prepare_guest(agent: &AgentClient, id: &str, files: &PodFiles) -> Result<(), String> {
    let req = CreateSandboxRequest {
        sandbox_id: id.to_string(),
        hostname: files.hostname.clone(),
        hosts: files.hosts.clone(),
        dns: files.dns.clone(),
        shared_dir: GUEST_SHARED_DIR.to_string(),
        ..Default::default()
    };
    agent
        .create_sandbox(agent_ctx(), &req)
        .map(drop)
        .map_err(|err| {
            format!(
                "CreateSandbox: {}",
                crate::error::bounded_text(&err.to_string(), crate::error::MAX_GUEST_TEXT)
            )
        })
}

fn log_tail(dir: &SandboxDir) -> String {
    let text = fs::read_to_string(dir.vmm_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// Kills a VMM left in `dir`, detaches the pod's share and removes the
/// directory; a directory with anything still mounted below it is left whole
/// (a removal must never reach into a volume).
pub fn cleanup(dir: &SandboxDir) {
    vm::kill_orphan(dir);
    if let Err(err) = share::teardown(dir) {
        warn!("cleanup of {}: {err}", dir.path().display());
    }
    match mounts::anything_mounted_under(dir.path()) {
        Ok(false) => {}
        Ok(true) => {
            warn!(
                "cleanup of {}: something is still mounted below it; left in place",
                dir.path().display()
            );
            return;
        }
        Err(err) => {
            warn!("cleanup of {}: {err}; left in place", dir.path().display());
            return;
        }
    }
    match fs::remove_dir_all(dir.path()) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => warn!("cleanup of {}: {err}", dir.path().display()),
    }
}

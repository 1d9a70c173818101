//! One pod's VM: its directory, its VMM and the agent connection, from boot to
//! teardown; and the cleanup of what a dead shim left.

mod agent;
mod teardown;
pub mod template;

pub use teardown::cleanup;

use crate::config::{ConfigError, RunvConfig};
use crate::network::{NetworkError, PodNetwork};
use crate::paths::SandboxDir;
use crate::pod_cgroup::{PodCgroup, PodCgroupError};
use crate::pod_files::PodFiles;
use crate::share::{PodShare, ShareError};
use crate::spec::{HostPlacement, PodNetworkRequest, VmSize};
use crate::start_phases::StartPhases;
use crate::vm::{NetCard, Vm, VmmPlacement};
use agent::GuestNetwork;
use log::{info, warn};
use protocol::agent::{AgentClient, DestroySandboxRequest};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bound of an ordinary agent call (the emulated test host is slow).
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to power off after DestroySandbox.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// Context for an ordinary agent call.
pub fn agent_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(AGENT_CALL_TIMEOUT)
}

/// A failed step of a pod's boot.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration names a missing VMM, kernel or initrd.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sandbox directory could not be made.
    #[error("{path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    /// The pod's share could not be set up.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The record of the pod's network namespace could not be written.
    #[error("{path}: {source}")]
    NetnsRecord { path: PathBuf, source: io::Error },
    /// The pod's network namespace could not be wired to taps.
    #[error("network namespace {netns}: {source}")]
    Network {
        netns: PathBuf,
        source: NetworkError,
    },
    /// The pod's cgroup could not be made or opened.
    #[error(transparent)]
    Cgroup(#[from] PodCgroupError),
    /// The VMM could not be started.
    #[error("{0}")]
    Launch(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The VMM exited before the agent answered.
    #[error("{source}; VMM log {log}: {tail}")]
    VmmExited {
        source: io::Error,
        log: PathBuf,
        tail: String,
    },
    /// The agent did not answer within the boot timeout.
    #[error(
        "the guest agent did not answer within boot_timeout_secs = {secs} ({source}); \
         VMM log {log}: {tail}"
    )]
    AgentTimeout {
        secs: u64,
        source: io::Error,
        log: PathBuf,
        tail: String,
    },
    /// The agent's connection could not be made a ttrpc client.
    #[error("ttrpc client on the agent connection: {0}")]
    AgentClient(#[source] ttrpc::Error),
    /// The agent did not pass its health check.
    #[error("the guest agent's health check: {0}")]
    HealthCheck(#[source] ttrpc::Error),
    /// The agent refused the sandbox (its text bounded).
    #[error("CreateSandbox: {message}")]
    CreateSandbox { message: String },
    /// The agent refused an interface (its text bounded).
    #[error("UpdateInterface {name}: {message}")]
    UpdateInterface { name: String, message: String },
    /// The agent refused the routes (its text bounded).
    #[error("UpdateRoutes: {message}")]
    UpdateRoutes { message: String },
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
    /// Boots the VM of pod `id` with the pod's `network` and prepares its
    /// sandbox in the guest (hostname, hosts and resolv.conf from `files`, the
    /// interfaces and routes of the pod's network namespace). On any failure
    /// nothing is left: no VMM, no tap or tc filter, no directory. `on_vm_exit`
    /// runs when the VMM exits (also after a failed boot).
    pub fn boot(
        id: &str,
        config: RunvConfig,
        size: VmSize,
        files: &PodFiles,
        network: &PodNetworkRequest,
        placement: &HostPlacement,
        on_vm_exit: impl FnOnce(i32) + Send + 'static,
    ) -> Result<Self, SandboxError> {
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
            .map_err(|source| SandboxError::Dir {
                path: dir.path().to_path_buf(),
                source,
            })?;
        let share = match PodShare::create(&dir) {
            Ok(share) => share,
            Err(err) => {
                cleanup(&dir);
                return Err(err.into());
            }
        };
        let (taps, guest_network) = match attach_network(&dir, network) {
            Ok(attached) => attached,
            Err(err) => {
                cleanup(&dir);
                return Err(err);
            }
        };
        let cards: Vec<NetCard<'_>> = taps
            .iter()
            .map(|(tap, mac)| NetCard {
                tap: tap.as_fd(),
                mac,
            })
            .collect();
        let cgroup = match &placement.cgroups_path {
            Some(path) => match PodCgroup::create(&dir, path).and_then(|c| c.procs_files()) {
                Ok(procs) => procs,
                Err(err) => {
                    cleanup(&dir);
                    return Err(err.into());
                }
            },
            None => Vec::new(),
        };
        let launch_start = Instant::now();
        let shape = template::VmShape {
            size,
            cards: cards.len(),
        };
        let template = template::find_or_make(&config, shape);
        let started = template::start_vm(
            &config,
            &dir,
            (size, template.as_ref()),
            &cards,
            VmmPlacement {
                oom_score_adj: placement.oom_score_adj,
                cgroup_procs: &cgroup,
            },
            on_vm_exit,
        );
        drop(cgroup);
        // The VMM holds the taps now: with the shim's copies closed, they go
        // when it does, however it ends.
        drop(cards);
        drop(taps);
        let (vm, agent) = match started {
            Ok(started) => started,
            Err(err) => {
                cleanup(&dir);
                return Err(err);
            }
        };
        let prepared = agent::prepare_guest(&agent, id, files)
            .and_then(|()| agent::configure_guest_network(&agent, &guest_network));
        if let Err(err) = prepared {
            vm.kill();
            cleanup(&dir);
            return Err(err);
        }
        info!("pod {id}: the guest agent answers");
        log_start_phases(id, &dir, &vm, launch_start.elapsed());
        Ok(Self {
            id: id.to_string(),
            dir,
            share,
            vm,
            agent,
        })
    }

    /// Powers the guest off (killing the VMM if it does not go), then removes
    /// the pod's mounts and directory. Once the agent has answered
    /// DestroySandbox (its containers gone, its filesystems synced), nothing in
    /// the guest is left to keep: the VMM stops the VM at once rather than
    /// wait for the guest to reboot itself.
    pub fn destroy(&self) {
        if !self.vm.has_exited() {
            let api = crate::vmm_api::VmmApi::new(&self.dir.api_sock());
            teardown::resume_for_power_off(&self.id, &api);
            let ctx = ttrpc::context::with_duration(POWER_OFF_GRACE);
            let grace = match self
                .agent
                .destroy_sandbox(ctx, &DestroySandboxRequest::default())
            {
                Ok(_) => Duration::ZERO,
                Err(err) => {
                    warn!("pod {}: DestroySandbox: {err}", self.id);
                    POWER_OFF_GRACE
                }
            };
            teardown::shut_down_vmm(&self.id, &self.vm, &api, grace);
        }
        cleanup(&self.dir);
        info!("pod {}: torn down", self.id);
    }
}

/// Logs how long the VM's start took, phase by phase: the VMM's spawn (fork
/// to exec, with its jail), its setup (exec to the first KVM_RUN) and the
/// guest's boot to its agent (bench/start-latency reads this line); and
/// records them, with the rest of `total` (the agent's readiness), in the
/// sandbox directory for `runv metrics`.
fn log_start_phases(id: &str, dir: &SandboxDir, vm: &Vm, total: Duration) {
    let (spawn, jailed) = vm.spawn_time();
    let ms = |us: u64| us as f64 / 1000.0;
    let info = match crate::vmm_api::VmmApi::new(&dir.api_sock()).describe() {
        Ok(info) => info,
        Err(err) => {
            warn!("pod {id}: the VMM's Describe: {err}");
            return;
        }
    };
    info!(
        "pod {id}: VMM spawn {:.2} ms ({}), VMM setup {:.2} ms, guest boot {:.2} ms",
        spawn.as_secs_f64() * 1000.0,
        if jailed { "in its jail" } else { "no jail" },
        ms(info.vmm_setup_us),
        ms(info.boot_time_us)
    );
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let vmm_spawn_us = micros(spawn);
    let phases = StartPhases {
        vmm_spawn_us,
        vmm_setup_us: info.vmm_setup_us,
        guest_boot_us: info.boot_time_us,
        agent_ready_us: micros(total)
            .saturating_sub(vmm_spawn_us)
            .saturating_sub(info.vmm_setup_us)
            .saturating_sub(info.boot_time_us),
    };
    if let Err(err) = phases.write_atomic(&dir.start_phases_file()) {
        warn!("pod {id}: recording the start phases: {err}");
    }
}

/// The taps (with the MACs their guest interfaces get) and what the guest
/// is to be told of its network, from the pod's network namespace; records
/// the namespace first, so that a cleanup finds what was added there.
fn attach_network(
    dir: &SandboxDir,
    network: &PodNetworkRequest,
) -> Result<(Vec<(OwnedFd, String)>, GuestNetwork), SandboxError> {
    let PodNetworkRequest::Namespace(netns) = network else {
        return Ok((Vec::new(), GuestNetwork::default()));
    };
    fs::write(dir.netns_record(), netns.as_os_str().as_encoded_bytes()).map_err(|source| {
        SandboxError::NetnsRecord {
            path: dir.netns_record(),
            source,
        }
    })?;
    let pod = PodNetwork::setup(netns).map_err(|source| SandboxError::Network {
        netns: netns.clone(),
        source,
    })?;
    let mut taps = Vec::with_capacity(pod.interfaces.len());
    let mut guest = GuestNetwork {
        routes: pod.routes,
        ..GuestNetwork::default()
    };
    for card in pod.interfaces {
        info!(
            "pod network: {} ⇄ {} as guest {} ({})",
            card.veth, card.tap_name, card.interface.name, card.mac
        );
        taps.push((card.tap, card.mac));
        guest.interfaces.push(card.interface);
    }
    Ok((taps, guest))
}

#[cfg(test)]
mod tests;

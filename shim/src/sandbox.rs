//! One pod's VM: its directory, its VMM and the agent connection, from boot to
//! teardown; and the cleanup of what a dead shim left.

use crate::config::RunvConfig;
use crate::mounts;
use crate::network::{self, PodNetwork};
use crate::paths::SandboxDir;
use crate::pod_cgroup::{self, PodCgroup};
use crate::pod_files::PodFiles;
use crate::share::{self, PodShare};
use crate::spec::{HostPlacement, PodNetworkRequest, VmSize};
use crate::vm::{self, NetCard, Vm, VmmPlacement};
use log::{info, warn};
use protocol::agent::{
    AgentClient, CheckRequest, CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest,
    Interface, Route, Routes, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocol::{AGENT_VSOCK_PORT, GUEST_SHARED_DIR};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

/// Bound of an ordinary agent call (the emulated test host is slow).
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to power off after DestroySandbox.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
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
                    return Err(err);
                }
            },
            None => Vec::new(),
        };
        let launched = Vm::launch(
            &config,
            &dir,
            size,
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
        let vm = match launched {
            Ok(vm) => vm,
            Err(err) => {
                cleanup(&dir);
                return Err(err.to_string());
            }
        };
        let agent = match connect_agent(&dir, &vm, &config).and_then(|agent| {
            prepare_guest(&agent, id, files)?;
            configure_guest_network(&agent, &guest_network)?;
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
        log_start_phases(id, &dir, &vm);
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
            let api = crate::vmm_api::VmmApi::new(&self.dir.api_sock());
            resume_for_power_off(&self.id, &api);
            let ctx = ttrpc::context::with_duration(POWER_OFF_GRACE);
            if let Err(err) = self
                .agent
                .destroy_sandbox(ctx, &DestroySandboxRequest::default())
            {
                warn!("pod {}: DestroySandbox: {err}", self.id);
            }
            shut_down_vmm(&self.id, &self.vm, &api);
        }
        cleanup(&self.dir);
        info!("pod {}: torn down", self.id);
    }
}

/// Logs how long the VM's start took, phase by phase: the VMM's spawn (fork
/// to exec, with its jail), its setup (exec to the first KVM_RUN) and the
/// guest's boot to its agent (bench/start-latency reads this line).
fn log_start_phases(id: &str, dir: &SandboxDir, vm: &Vm) {
    let (spawn, jailed) = vm.spawn_time();
    let ms = |us: u64| us as f64 / 1000.0;
    match crate::vmm_api::VmmApi::new(&dir.api_sock()).describe() {
        Ok(info) => info!(
            "pod {id}: VMM spawn {:.2} ms ({}), VMM setup {:.2} ms, guest boot {:.2} ms",
            spawn.as_secs_f64() * 1000.0,
            if jailed { "in its jail" } else { "no jail" },
            ms(info.vmm_setup_us),
            ms(info.boot_time_us)
        ),
        Err(err) => warn!("pod {id}: the VMM's Describe: {err}"),
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
            vm::log_tail(&dir.vmm_log())
        )
    })?;
    let client = ttrpc::Client::new(stream.into_raw_fd())
        .map_err(|err| format!("ttrpc client on the agent connection: {err}"))?;
    let agent = AgentClient::new(client);
    agent
        .check(agent_ctx(), &CheckRequest::default())
        .map_err(|err| format!("the guest agent's health check: {err}"))?;
    log_guest_details(&agent);
    Ok(agent)
}

/// Logs the agent's version and the guest kernel's release (for a bug report
/// on a pod, the guest's side of it); a failure is only logged.
fn log_guest_details(agent: &AgentClient) {
    let bounded = |text: &str| crate::error::bounded_text(text, 128);
    match agent.guest_details(agent_ctx(), &GuestDetailsRequest::default()) {
        Ok(details) => info!(
            "guest: runv-agent {}, kernel {}",
            bounded(&details.agent_version),
            bounded(&details.kernel_release)
        ),
        Err(err) => warn!(
            "GuestDetails: {}",
            crate::error::bounded_text(&err.to_string(), crate::error::MAX_GUEST_TEXT)
        ),
    }
}

fn prepare_guest(agent: &AgentClient, id: &str, files: &PodFiles) -> Result<(), String> {
    let req = CreateSandboxRequest {
        sandbox_id: id.to_string(),
        hostname: files.hostname.clone(),
        hosts: files.hosts.clone(),
        dns: files.dns.clone(),
        sysctls: files.sysctls.clone(),
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

/// The taps (with the MACs their guest interfaces get) and what the guest
/// is to be told of its network, from the pod's network namespace; records
/// the namespace first, so that a cleanup finds what was added there.
fn attach_network(
    dir: &SandboxDir,
    network: &PodNetworkRequest,
) -> Result<(Vec<(OwnedFd, String)>, GuestNetwork), String> {
    let PodNetworkRequest::Namespace(netns) = network else {
        return Ok((Vec::new(), GuestNetwork::default()));
    };
    fs::write(dir.netns_record(), netns.as_os_str().as_encoded_bytes())
        .map_err(|err| format!("{}: {err}", dir.netns_record().display()))?;
    let pod = PodNetwork::setup(netns)
        .map_err(|err| format!("network namespace {}: {err}", netns.display()))?;
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

/// What the agent is told of the guest's network once it answers.
#[derive(Debug, Default)]
struct GuestNetwork {
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
}

/// Gives the guest's interfaces their addresses, MTU and MAC, then the routes.
fn configure_guest_network(agent: &AgentClient, network: &GuestNetwork) -> Result<(), String> {
    let guest_text = |err: ttrpc::Error| {
        crate::error::bounded_text(&err.to_string(), crate::error::MAX_GUEST_TEXT)
    };
    for interface in &network.interfaces {
        let req = UpdateInterfaceRequest {
            interface: Some(interface.clone()).into(),
            ..Default::default()
        };
        agent
            .update_interface(agent_ctx(), &req)
            .map_err(|err| format!("UpdateInterface {}: {}", interface.name, guest_text(err)))?;
    }
    if network.routes.is_empty() {
        return Ok(());
    }
    let req = UpdateRoutesRequest {
        routes: Some(Routes {
            routes: network.routes.clone(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent
        .update_routes(agent_ctx(), &req)
        .map(drop)
        .map_err(|err| format!("UpdateRoutes: {}", guest_text(err)))
}

/// Removes the tc filters (and any tap left) from the network namespace the
/// pod's record names, then the record.
fn detach_network(dir: &SandboxDir) {
    let record = dir.netns_record();
    let netns = match fs::read(&record) {
        Ok(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            warn!("cleanup: {}: {err}", record.display());
            return;
        }
    };
    match network::teardown(&netns) {
        Ok(()) => {
            let _ = fs::remove_file(&record);
        }
        Err(err) => warn!("cleanup: network namespace {}: {err}", netns.display()),
    }
}

/// Kills a VMM left in `dir`, detaches the pod's share, takes what the shim
/// added out of the pod's network namespace and removes the directory; a
/// directory with anything still mounted below it is left whole (a removal
/// must never reach into a volume).
pub fn cleanup(dir: &SandboxDir) {
    vm::kill_orphan(dir);
    pod_cgroup::remove_recorded(dir);
    if let Err(err) = share::teardown(dir) {
        warn!("cleanup of {}: {err}", dir.path().display());
    }
    detach_network(dir);
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

/// How long after the shutdown deadline the VMM may take to exit before it is
/// killed.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Resumes a paused VM (the sandbox task's Pause): a paused guest cannot
/// answer DestroySandbox nor power off.
fn resume_for_power_off(id: &str, api: &crate::vmm_api::VmmApi) {
    match api.state() {
        Ok(protocol::vmm::VmState::PAUSED) => {
            info!("pod {id}: resuming the paused VM to power it off");
            if let Err(err) = api.resume() {
                warn!("pod {id}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => warn!("pod {id}: {err}"),
    }
}

/// Asks the VMM to shut the VM down (the guest gets [`POWER_OFF_GRACE`] to
/// power off, as DestroySandbox told it to, then the VMM stops it); kills the
/// VMM if it has not exited a little after that.
fn shut_down_vmm(id: &str, vm: &Vm, api: &crate::vmm_api::VmmApi) {
    if vm.has_exited() {
        return;
    }
    let asked = api.shutdown(POWER_OFF_GRACE);
    if asked.is_ok() {
        info!(
            "pod {id}: VMM API Shutdown sent ({} s for the guest to power off)",
            POWER_OFF_GRACE.as_secs()
        );
    }
    let exited = vm.wait_exit(POWER_OFF_GRACE + SHUTDOWN_MARGIN);
    match asked {
        // The guest powered off first (its VMM was on its way out).
        Err(err) if exited => {
            info!("pod {id}: the guest powered off before the API's Shutdown ({err})")
        }
        Err(err) => warn!("pod {id}: {err}"),
        Ok(()) => {}
    }
    if !exited {
        warn!("pod {id}: the VMM did not stop the VM; killing it");
        vm.kill();
    }
}

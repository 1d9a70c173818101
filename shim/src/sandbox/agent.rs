//! The pod's guest agent: dialled through the VMM's hybrid vsock once the VM
//! boots, then told of its sandbox and its network.

use super::{agent_ctx, SandboxError};
use crate::config::RunvConfig;
use crate::paths::SandboxDir;
use crate::pod_files::PodFiles;
use crate::vm::{self, Vm};
use log::{info, warn};
use protocol::agent::{
    AgentClient, CheckRequest, CreateSandboxRequest, GuestDetailsRequest, Interface, Route, Routes,
    UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocol::{AGENT_VSOCK_PORT, GUEST_SHARED_DIR};
use std::io;
use std::os::fd::IntoRawFd;
use std::time::Duration;

/// Dials the agent through the VMM's hybrid vsock socket until it answers, the
/// VMM exits or the boot timeout passes.
pub(super) fn connect_agent(
    dir: &SandboxDir,
    vm: &Vm,
    config: &RunvConfig,
) -> Result<AgentClient, SandboxError> {
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
    .map_err(|source| {
        let log = dir.vmm_log();
        let tail = vm::log_tail(&log);
        if vm.has_exited() {
            SandboxError::VmmExited { source, log, tail }
        } else {
            SandboxError::AgentTimeout {
                secs: config.boot_timeout_secs,
                source,
                log,
                tail,
            }
        }
    })?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(SandboxError::AgentClient)?;
    let agent = AgentClient::new(client);
    agent
        .check(agent_ctx(), &CheckRequest::default())
        .map_err(SandboxError::HealthCheck)?;
    log_guest_details(&agent);
    Ok(agent)
}

/// Logs the agent's version and the guest kernel's release (for a bug report
/// on a pod, the guest's side of it); a failure is only logged.
fn log_guest_details(agent: &AgentClient) {
    let bounded = |text: &str| crate::text::bounded_text(text, 128);
    match agent.guest_details(agent_ctx(), &GuestDetailsRequest::default()) {
        Ok(details) => info!(
            "guest: runv-agent {}, kernel {}",
            bounded(&details.agent_version),
            bounded(&details.kernel_release)
        ),
        Err(err) => warn!(
            "GuestDetails: {}",
            crate::text::bounded_text(&err.to_string(), crate::text::MAX_GUEST_TEXT)
        ),
    }
}

/// Host randomness the guest reseeds its generator from.
const GUEST_ENTROPY_BYTES: usize = 64;

/// [`GUEST_ENTROPY_BYTES`] from the host's generator; none (logged) if it
/// fails, as the guest also has virtio-rng.
fn host_entropy() -> Vec<u8> {
    let mut seed = vec![0u8; GUEST_ENTROPY_BYTES];
    if let Err(err) = protocol::random::fill(&mut seed) {
        warn!("no host entropy for the guest: {err}");
        seed.clear();
    }
    seed
}

/// Hands the guest its sandbox: hostname, hosts, resolv.conf and sysctls,
/// and refreshes its random generator and clock.
pub(super) fn prepare_guest(
    agent: &AgentClient,
    id: &str,
    files: &PodFiles,
) -> Result<(), SandboxError> {
    let req = CreateSandboxRequest {
        sandbox_id: id.to_string(),
        hostname: files.hostname.clone(),
        hosts: files.hosts.clone(),
        dns: files.dns.clone(),
        sysctls: files.sysctls.clone(),
        shared_dir: GUEST_SHARED_DIR.to_string(),
        entropy: host_entropy(),
        realtime_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(0)),
        ..Default::default()
    };
    agent
        .create_sandbox(agent_ctx(), &req)
        .map(drop)
        .map_err(|err| SandboxError::CreateSandbox {
            message: guest_text(err),
        })
}

/// What the agent is told of the guest's network once it answers.
#[derive(Debug, Default)]
pub(super) struct GuestNetwork {
    pub(super) interfaces: Vec<Interface>,
    pub(super) routes: Vec<Route>,
}

/// Gives the guest's interfaces their addresses, MTU and MAC, then the routes.
pub(super) fn configure_guest_network(
    agent: &AgentClient,
    network: &GuestNetwork,
) -> Result<(), SandboxError> {
    for interface in &network.interfaces {
        let req = UpdateInterfaceRequest {
            interface: Some(interface.clone()).into(),
            ..Default::default()
        };
        agent
            .update_interface(agent_ctx(), &req)
            .map_err(|err| SandboxError::UpdateInterface {
                name: interface.name.clone(),
                message: guest_text(err),
            })?;
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
        .map_err(|err| SandboxError::UpdateRoutes {
            message: guest_text(err),
        })
}

/// An agent's error as text, bounded to [`crate::text::MAX_GUEST_TEXT`].
fn guest_text(err: ttrpc::Error) -> String {
    crate::text::bounded_text(&err.to_string(), crate::text::MAX_GUEST_TEXT)
}

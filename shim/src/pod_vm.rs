//! The pod's VM as the task RPCs drive it: booted by the create of the pod's
//! first task, paused and resumed for the sandbox task that stands for it, its
//! run state and its metrics asked of the VMM's API.

use crate::config::{RunvConfig, DEFAULT_CONFIG_PATH};
use crate::error::{Result, TaskError};
use crate::metrics;
use crate::options;
use crate::pod_files::PodFiles;
use crate::process::Process;
use crate::sandbox::Sandbox;
use crate::spec::{self, PodRole, VmSize};
use crate::vmm_api::{VmmApi, VmmApiError};
use containerd_shim::protos::api::{CreateTaskRequest, Status};
use log::debug;
use protobuf::well_known_types::any::Any;
use protocol::id::check_id;
use protocol::vmm::VmState;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// Boots the VM of the pod `req` starts (its task has `role`, its bundle
/// `spec` and `annotations`); `on_vm_exit` runs when the VMM exits.
pub fn boot(
    req: &CreateTaskRequest,
    spec: &Value,
    annotations: &HashMap<String, String>,
    role: &PodRole,
    on_vm_exit: impl FnOnce(i32) + Send + 'static,
) -> Result<Sandbox> {
    let sandbox_id = spec::sandbox_id(&req.id, annotations);
    check_id("sandbox id", &sandbox_id)?;
    let config = load_config(req, annotations)?;
    // A CRI sandbox says nothing of its containers' needs; a pod of one does.
    let resources = (*role == PodRole::Standalone)
        .then(|| spec.pointer("/linux/resources"))
        .flatten();
    let size = VmSize::for_pod(&config, resources);
    let files = PodFiles::of(spec)?;
    spec::refuse_host_namespaces(spec)?;
    let network = spec::pod_network(spec)?;
    let placement = spec::host_placement(spec)?;
    Sandbox::boot(
        &sandbox_id,
        config,
        size,
        &files,
        &network,
        &placement,
        on_vm_exit,
    )
    .map_err(|err| TaskError::BootVm {
        pod: sandbox_id,
        source: err.into(),
    })
}

/// runv's config, from the file the create's options name (or else the
/// one `start`'s options named, or the default one) with the pod's
/// annotations applied; sets the log level it asks for.
fn load_config(
    req: &CreateTaskRequest,
    annotations: &HashMap<String, String>,
) -> Result<RunvConfig> {
    let config_path = options::config_path(req.options.as_ref())?
        .or_else(options::start_config_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config =
        RunvConfig::load(&config_path).and_then(|config| config.with_annotations(annotations))?;
    if let Ok(level) = config.log_level.parse() {
        log::set_max_level(level);
    }
    Ok(config)
}

/// Stops the vCPUs of the pod's VM, for the sandbox task `process` that
/// stands for it: as runc does for a container, only a running task pauses.
/// Every container of the pod is frozen with the VM (State reports them
/// PAUSED meanwhile).
pub fn pause(sandbox: &Sandbox, process: &Process) -> Result<()> {
    require(process, Status::RUNNING, "pause")?;
    api(sandbox).pause().map_err(vmm_failed(sandbox))
}

/// Runs the vCPUs of the pod's VM again, for the sandbox task `process`
/// that stands for it: only a paused task resumes.
pub fn resume(sandbox: &Sandbox, process: &Process) -> Result<()> {
    require(process, Status::PAUSED, "resume")?;
    api(sandbox).resume().map_err(vmm_failed(sandbox))
}

/// Fails unless the sandbox task `process` is `wanted` for `call`.
fn require(process: &Process, wanted: Status, call: &str) -> Result<()> {
    let status = process.status();
    if status != wanted {
        return Err(TaskError::FailedPrecondition(format!(
            "cannot {call} sandbox task {}: it is {status:?}",
            process.container_id
        )));
    }
    Ok(())
}

/// The run state of the pod's VM for State of task `id`; None when the VMM
/// cannot tell (it exited, or its API failed: logged).
pub fn state(sandbox: &Sandbox, id: &str) -> Option<VmState> {
    if sandbox.vm.has_exited() {
        return None;
    }
    api(sandbox)
        .state()
        .map_err(|err| debug!("state of {id}: {err}"))
        .ok()
}

/// The VM's memory as the sandbox task's metrics (its exits by reason only in
/// the debug log).
pub fn stats(sandbox: &Sandbox) -> Result<Any> {
    let vm = api(sandbox).metrics().map_err(vmm_failed(sandbox))?;
    debug!(
        "pod {}: VM exits by reason: {}",
        sandbox.id,
        metrics::exits_summary(&vm)
    );
    metrics::vm_to_any(&vm).map_err(TaskError::EncodeMetrics)
}

/// The status a started process reports while its VM is in state `vm`: all
/// of a paused VM is paused (as Kata reports a paused sandbox's containers);
/// the sandbox task, which stands for the VM (`is_vm`), follows it both ways.
pub fn status_in_vm(tracked: Status, vm: VmState, is_vm: bool) -> Status {
    match (tracked, vm) {
        (Status::RUNNING, VmState::PAUSED) => Status::PAUSED,
        (Status::PAUSED, VmState::RUNNING) if is_vm => Status::RUNNING,
        _ => tracked,
    }
}

fn api(sandbox: &Sandbox) -> VmmApi {
    VmmApi::new(&sandbox.dir.api_sock())
}

fn vmm_failed(sandbox: &Sandbox) -> impl FnOnce(VmmApiError) -> TaskError + '_ {
    move |source| TaskError::VmmApi {
        pod: sandbox.id.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_vm_pauses_everything_in_it() {
        use Status::{CREATED, PAUSED, RUNNING, STOPPED};
        // (tracked, VM, is the sandbox task) → reported
        let cases = [
            (RUNNING, VmState::PAUSED, false, PAUSED),
            (RUNNING, VmState::PAUSED, true, PAUSED),
            (RUNNING, VmState::RUNNING, false, RUNNING),
            // A container the guest froze stays paused in a running VM...
            (PAUSED, VmState::RUNNING, false, PAUSED),
            // ...the sandbox task is the VM.
            (PAUSED, VmState::RUNNING, true, RUNNING),
            (RUNNING, VmState::SHUTTING_DOWN, true, RUNNING),
            (CREATED, VmState::PAUSED, false, CREATED),
            (STOPPED, VmState::PAUSED, true, STOPPED),
        ];
        for (tracked, vm, is_vm, reported) in cases {
            assert_eq!(
                status_in_vm(tracked, vm, is_vm),
                reported,
                "{tracked:?} in a {vm:?} VM (sandbox task: {is_vm})"
            );
        }
    }
}

//! The pod's containers in the guest, as the task RPCs drive them: each
//! function is one call of the agent (with the share and stdio plumbing it
//! needs), undone on failure.

use crate::error::{Result, TaskError};
use crate::metrics;
use crate::paths::SharedPath;
use crate::process::Process;
use crate::sandbox::{agent_ctx, Sandbox};
use crate::spec::{self, GuestSpec};
use crate::stdio::{self, ProcessName};
use containerd_shim::protos::api::CreateTaskRequest;
use log::warn;
use protobuf::well_known_types::any::Any;
use protocol::agent::{self as agent_api, AgentClient};
use protocol::GUEST_SHARED_DIR;
use serde_json::Value;
use std::path::Path;

/// Mounts the container `req` creates (its rootfs and volumes) into the share
/// and creates it in the guest with `process` as its init; on failure undoes
/// both.
pub fn create(
    sandbox: &Sandbox,
    req: &CreateTaskRequest,
    spec: &Value,
    process: &Process,
    name: &ProcessName,
) -> Result<()> {
    let result = create_in_share(sandbox, req, spec, process, name);
    if result.is_err() {
        if let Err(err) = sandbox.share.remove_container(&req.id) {
            warn!("cleanup of container {}'s share: {err}", req.id);
        }
    }
    result
}

fn create_in_share(
    sandbox: &Sandbox,
    req: &CreateTaskRequest,
    spec: &Value,
    process: &Process,
    name: &ProcessName,
) -> Result<()> {
    let cid = &req.id;
    let rootfs = SharedPath::new(cid, "rootfs");
    let guest = spec::guest_spec(spec, cid, &rootfs)?;
    let root_path = spec.pointer("/root/path").and_then(Value::as_str);
    let bundle_rootfs = Path::new(&req.bundle).join(root_path.unwrap_or("rootfs"));
    sandbox
        .share
        .mount_rootfs(&rootfs, &req.rootfs, &bundle_rootfs)
        .map_err(TaskError::MountRootfs)?;
    for bind in &guest.binds {
        sandbox.share.bind(bind).map_err(TaskError::BindVolume)?;
    }
    create_in_guest(sandbox, cid, &guest, &rootfs, process)?;
    let io = stdio::attach(&sandbox.dir.vsock_sock(), name, &process.uris).map_err(|err| {
        remove(&sandbox.agent, cid);
        TaskError::AttachStdio(err)
    })?;
    process.set_io(io);
    Ok(())
}

/// Creates container `cid` in the guest from its `guest` spec, on `rootfs`
/// in the share, with `process` as its init.
fn create_in_guest(
    sandbox: &Sandbox,
    cid: &str,
    guest: &GuestSpec,
    rootfs: &SharedPath,
    process: &Process,
) -> Result<()> {
    let create = agent_api::CreateContainerRequest {
        container_id: cid.to_string(),
        bundle: format!("{GUEST_SHARED_DIR}/{cid}"),
        oci_spec: guest.spec.to_string(),
        rootfs: rootfs.guest.clone(),
        stdio: Some(process.uris.agent_stdio()).into(),
        sandbox_pidns: guest.sandbox_pidns,
        ..Default::default()
    };
    sandbox
        .agent
        .create_container(agent_ctx(), &create)
        .map_err(TaskError::agent(format!("CreateContainer {cid}")))?;
    Ok(())
}

/// Starts container `id`'s init process in the guest.
pub fn start(sandbox: &Sandbox, id: &str) -> Result<()> {
    let start = agent_api::StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    sandbox
        .agent
        .start_container(agent_ctx(), &start)
        .map_err(TaskError::agent(format!("StartContainer {id}")))?;
    Ok(())
}

/// Starts exec'd process `process` in the guest and connects its stdio; on
/// failure kills it.
pub fn exec(sandbox: &Sandbox, process: &Process, name: &ProcessName) -> Result<()> {
    let (id, exec_id) = (&process.container_id, &process.exec_id);
    let exec = agent_api::ExecProcessRequest {
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        process: process.exec_spec.clone().unwrap_or_default(),
        stdio: Some(process.uris.agent_stdio()).into(),
        ..Default::default()
    };
    sandbox
        .agent
        .exec_process(agent_ctx(), &exec)
        .map_err(TaskError::agent(format!("ExecProcess {id}/{exec_id}")))?;
    let io = stdio::attach(&sandbox.dir.vsock_sock(), name, &process.uris).map_err(|err| {
        let _ = signal(sandbox, id, exec_id, libc::SIGKILL.unsigned_abs(), false);
        TaskError::AttachStdio(err)
    })?;
    process.set_io(io);
    Ok(())
}

/// Sends `signal` to process `exec_id` of container `id` (to all of its
/// processes if `all`).
pub fn signal(sandbox: &Sandbox, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
    let req = agent_api::SignalProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        signal,
        all,
        ..Default::default()
    };
    sandbox
        .agent
        .signal_process(agent_ctx(), &req)
        .map_err(TaskError::agent(format!("SignalProcess {id}/{exec_id}")))?;
    Ok(())
}

/// Removes container `cid` in the guest, killing what still runs in it.
pub fn remove(agent: &AgentClient, cid: &str) {
    let req = agent_api::RemoveContainerRequest {
        container_id: cid.to_string(),
        force: true,
        ..Default::default()
    };
    if let Err(err) = agent.remove_container(agent_ctx(), &req) {
        warn!(
            "{}",
            TaskError::agent(format!("RemoveContainer {cid}"))(err)
        );
    }
}

/// Freezes container `id` in the guest.
pub fn pause(sandbox: &Sandbox, id: &str) -> Result<()> {
    let req = agent_api::PauseContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    sandbox
        .agent
        .pause_container(agent_ctx(), &req)
        .map_err(TaskError::agent(format!("PauseContainer {id}")))?;
    Ok(())
}

/// Thaws container `id` in the guest.
pub fn resume(sandbox: &Sandbox, id: &str) -> Result<()> {
    let req = agent_api::ResumeContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    sandbox
        .agent
        .resume_container(agent_ctx(), &req)
        .map_err(TaskError::agent(format!("ResumeContainer {id}")))?;
    Ok(())
}

/// The pids of container `id`'s processes in the guest.
pub fn pids(sandbox: &Sandbox, id: &str) -> Result<Vec<u32>> {
    let list = agent_api::ListProcessesRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let reply = sandbox
        .agent
        .list_processes(agent_ctx(), &list)
        .map_err(TaskError::agent(format!("ListProcesses {id}")))?;
    Ok(reply.pids)
}

/// Resizes the terminal of process `exec_id` of container `id`.
pub fn resize_pty(sandbox: &Sandbox, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
    let resize = agent_api::TtyWinResizeRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        rows,
        columns: cols,
        ..Default::default()
    };
    sandbox
        .agent
        .tty_win_resize(agent_ctx(), &resize)
        .map_err(TaskError::agent(format!("TtyWinResize {id}/{exec_id}")))?;
    Ok(())
}

/// Applies `resources` (OCI LinuxResources JSON) to container `id`.
pub fn update(sandbox: &Sandbox, id: &str, resources: String) -> Result<()> {
    let update = agent_api::UpdateContainerRequest {
        container_id: id.to_string(),
        resources,
        ..Default::default()
    };
    sandbox
        .agent
        .update_container(agent_ctx(), &update)
        .map_err(TaskError::agent(format!("UpdateContainer {id}")))?;
    Ok(())
}

/// Container `id`'s cgroup figures from the agent, as containerd's metrics.
pub fn stats(sandbox: &Sandbox, id: &str) -> Result<Any> {
    let stats = agent_api::StatsContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let reply = sandbox
        .agent
        .stats_container(agent_ctx(), &stats)
        .map_err(TaskError::agent(format!("StatsContainer {id}")))?;
    metrics::to_any(&reply).map_err(TaskError::EncodeMetrics)
}

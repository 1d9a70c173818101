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
use log::{debug, warn};
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
    debug!("container {cid}: rootfs and volumes in the share");
    create_in_guest(sandbox, cid, &guest, &rootfs, process)?;
    debug!("container {cid}: created in the guest");
    let io = stdio::attach(&sandbox.dir.vsock_sock(), name, &process.uris).map_err(|err| {
        remove(&sandbox.agent, cid);
        TaskError::AttachStdio(err)
    })?;
    process.set_io(io);
    debug!("container {cid}: stdio attached");
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
    let what = format!("CreateContainer {cid}");
    call(&sandbox.agent, AgentClient::create_container, &create, what).map(drop)
}

/// Starts container `id`'s init process in the guest.
pub fn start(sandbox: &Sandbox, id: &str) -> Result<()> {
    let start = agent_api::StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let what = format!("StartContainer {id}");
    call(&sandbox.agent, AgentClient::start_container, &start, what).map(drop)
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
    let what = format!("ExecProcess {id}/{exec_id}");
    call(&sandbox.agent, AgentClient::exec_process, &exec, what)?;
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
    let what = format!("SignalProcess {id}/{exec_id}");
    call(&sandbox.agent, AgentClient::signal_process, &req, what).map(drop)
}

/// Removes container `cid` in the guest, killing what still runs in it.
pub fn remove(agent: &AgentClient, cid: &str) {
    let req = agent_api::RemoveContainerRequest {
        container_id: cid.to_string(),
        force: true,
        ..Default::default()
    };
    let what = format!("RemoveContainer {cid}");
    if let Err(err) = call(agent, AgentClient::remove_container, &req, what) {
        warn!("{err}");
    }
}

/// Freezes container `id` in the guest.
pub fn pause(sandbox: &Sandbox, id: &str) -> Result<()> {
    let req = agent_api::PauseContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let what = format!("PauseContainer {id}");
    call(&sandbox.agent, AgentClient::pause_container, &req, what).map(drop)
}

/// Thaws container `id` in the guest.
pub fn resume(sandbox: &Sandbox, id: &str) -> Result<()> {
    let req = agent_api::ResumeContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let what = format!("ResumeContainer {id}");
    call(&sandbox.agent, AgentClient::resume_container, &req, what).map(drop)
}

/// The pids of container `id`'s processes in the guest.
pub fn pids(sandbox: &Sandbox, id: &str) -> Result<Vec<u32>> {
    let list = agent_api::ListProcessesRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let what = format!("ListProcesses {id}");
    let reply = call(&sandbox.agent, AgentClient::list_processes, &list, what)?;
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
    let what = format!("TtyWinResize {id}/{exec_id}");
    call(&sandbox.agent, AgentClient::tty_win_resize, &resize, what).map(drop)
}

/// Applies `resources` (OCI LinuxResources JSON) to container `id`.
pub fn update(sandbox: &Sandbox, id: &str, resources: String) -> Result<()> {
    let update = agent_api::UpdateContainerRequest {
        container_id: id.to_string(),
        resources,
        ..Default::default()
    };
    let what = format!("UpdateContainer {id}");
    call(&sandbox.agent, AgentClient::update_container, &update, what).map(drop)
}

/// Container `id`'s cgroup figures from the agent, as containerd's metrics.
pub fn stats(sandbox: &Sandbox, id: &str) -> Result<Any> {
    let stats = agent_api::StatsContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let what = format!("StatsContainer {id}");
    let reply = call(&sandbox.agent, AgentClient::stats_container, &stats, what)?;
    metrics::to_any(&reply).map_err(TaskError::EncodeMetrics)
}

/// Calls `method` of the agent with `req` within the agent's call timeout; a
/// failure is named `what` (the call and the ids it was about).
fn call<Req, Reply>(
    agent: &AgentClient,
    method: fn(&AgentClient, ttrpc::context::Context, &Req) -> ttrpc::Result<Reply>,
    req: &Req,
    what: String,
) -> Result<Reply> {
    method(agent, agent_ctx(), req).map_err(TaskError::agent(what))
}

//! What the task RPCs read from containerd's requests, and how State answers.

use crate::error::TaskError;
use crate::pod_vm;
use crate::process::Process;
use crate::spec::{self, PodRole};
use crate::stdio::StdioUris;
use containerd_shim::protos::api::{self as api, Status};
use protobuf::well_known_types::any::Any;
use protocol::id::check_id;
use protocol::vmm::VmState;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The bundle's spec, its annotations and the role of the task `req` creates.
pub(super) fn read_bundle(
    req: &api::CreateTaskRequest,
) -> Result<(Value, HashMap<String, String>, PodRole), TaskError> {
    check_id("container id", &req.id)?;
    if !req.checkpoint.is_empty() {
        return Err(TaskError::Unimplemented("runv cannot restore a checkpoint"));
    }
    let spec = spec::read_spec(Path::new(&req.bundle))?;
    let annotations = spec::annotations(&spec);
    let role = PodRole::of(&annotations)?;
    Ok((spec, annotations, role))
}

/// The stdio containerd asks of a process.
pub(super) fn stdio_uris(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioUris {
    StdioUris {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

/// The JSON text in `any`, if any.
pub(super) fn json_of(any: Option<&Any>) -> Option<String> {
    any.map(|any| String::from_utf8_lossy(&any.value).into_owned())
        .filter(|json| !json.is_empty())
}

/// Fails if `process` was already started.
pub(super) fn not_started(process: &Process) -> Result<(), TaskError> {
    if process.status() == Status::CREATED {
        return Ok(());
    }
    Err(TaskError::FailedPrecondition(format!(
        "process {} of {} was already started",
        process.event_id(),
        process.container_id
    )))
}

/// State's answer for task `req.id`'s process, in a VM of VMM `pid` whose
/// run state is `vm` if asked (with whether the task stands for the VM).
pub(super) fn state_of(
    req: &api::StateRequest,
    bundle: String,
    pid: u32,
    process: &Process,
    vm: Option<(VmState, bool)>,
) -> api::StateResponse {
    let tracked = process.status();
    let status = vm.map_or(tracked, |(vm, is_vm)| {
        pod_vm::status_in_vm(tracked, vm, is_vm)
    });
    let exit = process.exit();
    api::StateResponse {
        id: req.id.clone(),
        bundle,
        pid,
        status: status.into(),
        stdin: process.uris.stdin.clone(),
        stdout: process.uris.stdout.clone(),
        stderr: process.uris.stderr.clone(),
        terminal: process.uris.terminal,
        exit_status: exit.map_or(0, |e| e.status),
        exited_at: exit.map(|e| e.timestamp()).into(),
        exec_id: req.exec_id.clone(),
        ..Default::default()
    }
}

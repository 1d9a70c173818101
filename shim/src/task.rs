//! The task service containerd calls: one function per task API v2 RPC, each
//! looking up the task in the pod, calling its container in the guest or the
//! pod's VM, and publishing the event.

use crate::container;
use crate::error::TaskError;
use crate::events::EventQueue;
use crate::exit::Exit;
use crate::pod::{PodTable, Snapshot, Task};
use crate::pod_vm;
use crate::process::Process;
use crate::publish;
use crate::sandbox::Sandbox;
use crate::spec::PodRole;
use crate::stdio::ProcessName;
use crate::watchers;
use containerd_shim::protos::api::{self as api, Status};
use containerd_shim::{ExitSignal, TtrpcContext};
use log::{debug, info};
use protocol::id::check_id;
use request::{json_of, not_started, read_bundle, state_of, stdio_uris};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

mod request;

/// The shim's task service: one per shim, so one per pod.
pub struct TaskService {
    namespace: String,
    events: EventQueue,
    exit_signal: Arc<ExitSignal>,
    pods: Arc<PodTable>,
}

impl TaskService {
    /// A service for containerd namespace `namespace`, publishing on `events`,
    /// signalling `exit_signal` when it is shut down.
    pub fn new(namespace: &str, events: EventQueue, exit_signal: Arc<ExitSignal>) -> Self {
        Self {
            namespace: namespace.to_string(),
            events,
            exit_signal,
            pods: Arc::default(),
        }
    }

    fn name<'a>(&'a self, process: &'a Process) -> ProcessName<'a> {
        ProcessName {
            namespace: &self.namespace,
            container_id: &process.container_id,
            exec_id: &process.exec_id,
        }
    }

    /// Boots the VM of the pod `req` starts.
    fn boot(
        &self,
        req: &api::CreateTaskRequest,
        spec: &Value,
        annotations: &HashMap<String, String>,
        role: &PodRole,
    ) -> Result<Arc<Sandbox>, TaskError> {
        let on_exit = watchers::on_vm_exit(&self.pods, &self.events);
        let sandbox = pod_vm::boot(req, spec, annotations, role, on_exit)?;
        Ok(Arc::new(sandbox))
    }

    /// Creates the container of a task of `role` in the pod's VM; on failure
    /// a pod of one loses the VM it just booted.
    fn create_container(
        &self,
        sandbox: &Sandbox,
        req: &api::CreateTaskRequest,
        spec: &Value,
        role: &PodRole,
        process: &Process,
    ) -> Result<(), TaskError> {
        let created = container::create(sandbox, req, spec, process, &self.name(process));
        if created.is_err() && *role == PodRole::Standalone {
            sandbox.destroy();
        }
        created
    }

    /// The sandbox task stands for the VM: any signal but 0 ends it; the VM
    /// goes at Shutdown, once every task is deleted.
    fn kill_sandbox_task(&self, sandbox: &Sandbox, process: &Process, signal: u32) {
        if signal == 0 {
            return;
        }
        let exit = Exit::now(128 + signal);
        if process.status() == Status::CREATED {
            process.record_exit(exit);
        } else {
            publish::exited(&self.events, process, exit, sandbox.vm.pid());
        }
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        info!("create {} (bundle {})", req.id, req.bundle);
        let (spec, annotations, role) = read_bundle(&req)?;
        // The pod lock is held only to reserve the id (and the VM): the boot, the
        // agent and the stdio run without it, so the pod's other RPCs answer.
        let (reservation, running) = self.pods.reserve(&req.id, &req.bundle, &role)?;
        let sandbox = match running {
            Some(sandbox) => sandbox,
            None => self.boot(&req, &spec, &annotations, &role)?,
        };
        let uris = stdio_uris(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let process = Arc::new(Process::new(&req.id, "", uris, None));
        if role != PodRole::Sandbox {
            self.create_container(&sandbox, &req, &spec, &role, &process)?;
        }
        if reservation.commit(Task::new(&req.bundle, role, process), &sandbox) {
            watchers::watch_oom(&self.pods, &self.events, &sandbox);
        }
        let pid = sandbox.vm.pid();
        publish::created(&self.events, &req, pid);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        info!("start {} {}", req.id, req.exec_id);
        let found = self.pods.lookup(&req.id, &req.exec_id)?;
        let (sandbox, process) = (&found.sandbox, &found.process);
        not_started(process)?;
        if found.in_guest && req.exec_id.is_empty() {
            container::start(sandbox, &req.id)?;
        } else if found.in_guest {
            container::exec(sandbox, process, &self.name(process))?;
        }
        process.set_status(Status::RUNNING);
        let pid = sandbox.vm.pid();
        publish::started(&self.events, process, pid);
        if found.in_guest {
            watchers::watch_exit(&self.events, sandbox, process);
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        info!("delete {} {}", req.id, req.exec_id);
        let removed = self.pods.remove(&req.id, &req.exec_id)?;
        if let Some(sandbox) = &removed.container_in {
            if !sandbox.vm.has_exited() {
                container::remove(&sandbox.agent, &req.id);
            }
            let share = sandbox.share.remove_container(&req.id);
            share.map_err(TaskError::RemoveShare)?;
        }
        let (pid, exit) = (removed.pid, removed.exit);
        if req.exec_id.is_empty() {
            publish::deleted(&self.events, &req.id, pid, exit);
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<api::Empty> {
        info!("exec {} {}", req.id, req.exec_id);
        check_id("exec id", &req.exec_id).map_err(TaskError::from)?;
        let spec = json_of(req.spec.as_ref())
            .ok_or_else(|| TaskError::InvalidArgument("exec without a process spec".into()))?;
        let uris = stdio_uris(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let process = Process::new(&req.id, &req.exec_id, uris, Some(spec));
        self.pods.add_exec(process)?;
        publish::exec_added(&self.events, &req.id, &req.exec_id);
        Ok(api::Empty::default())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        info!(
            "kill {} {} signal {} all {}",
            req.id, req.exec_id, req.signal, req.all
        );
        let found = self.pods.lookup(&req.id, &req.exec_id)?;
        let (sandbox, process) = (&found.sandbox, &found.process);
        if process.exit().is_some() {
            let id = format!("{} of {} (it already finished)", process.event_id(), req.id);
            let kind = "running process";
            return Err(TaskError::NotFound { kind, id }.into());
        }
        if !found.in_guest {
            self.kill_sandbox_task(sandbox, process, req.signal);
            return Ok(api::Empty::default());
        }
        if req.signal == libc::SIGKILL.unsigned_abs() {
            watchers::watch_kill(sandbox, process);
        }
        container::signal(sandbox, &req.id, &req.exec_id, req.signal, req.all)?;
        Ok(api::Empty::default())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let vm = (self.pods.vm_to_ask(&req.id, &req.exec_id))
            .and_then(|sandbox| pod_vm::state(&sandbox, &req.id));
        let reply = match self.pods.snapshot(&req.id, &req.exec_id)? {
            Snapshot::Creating { bundle } => api::StateResponse {
                id: req.id.clone(),
                bundle,
                status: Status::UNKNOWN.into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
            Snapshot::Task {
                bundle,
                pid,
                process,
                in_guest,
            } => state_of(&req, bundle, pid, &process, vm.map(|vm| (vm, !in_guest))),
        };
        Ok(reply)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let found = self.pods.lookup(&req.id, "")?;
        let pids = if found.in_guest {
            container::pids(&found.sandbox, &req.id)?
        } else {
            vec![found.sandbox.vm.pid()]
        };
        let processes = (pids.into_iter())
            .map(|pid| api::ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Pauses a container by the guest's cgroup freezer, the sandbox task (the
    /// VM) by the VMM's vCPUs.
    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<api::Empty> {
        info!("pause {}", req.id);
        let found = self.pods.lookup(&req.id, "")?;
        if found.in_guest {
            container::pause(&found.sandbox, &req.id)?;
        } else {
            pod_vm::pause(&found.sandbox, &found.process)?;
        }
        found.process.set_status(Status::PAUSED);
        publish::paused(&self.events, &req.id);
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<api::Empty> {
        info!("resume {}", req.id);
        let found = self.pods.lookup(&req.id, "")?;
        if found.in_guest {
            container::resume(&found.sandbox, &req.id)?;
        } else {
            pod_vm::resume(&found.sandbox, &found.process)?;
        }
        found.process.set_status(Status::RUNNING);
        publish::resumed(&self.events, &req.id);
        Ok(api::Empty::default())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(TaskError::Unimplemented("runv does not checkpoint VMs (yet)").into())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let found = self.pods.lookup(&req.id, &req.exec_id)?;
        if !found.in_guest {
            let err = TaskError::FailedPrecondition("a pod sandbox has no terminal".into());
            return Err(err.into());
        }
        let (rows, cols) = (req.height, req.width);
        container::resize_pty(&found.sandbox, &req.id, &req.exec_id, rows, cols)?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<api::Empty> {
        let found = self.pods.lookup(&req.id, &req.exec_id)?;
        if req.stdin {
            found.process.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        info!("update {}", req.id);
        let found = self.pods.lookup(&req.id, "")?;
        if !found.in_guest {
            let err = "a pod sandbox has no resources of its own to update";
            return Err(TaskError::FailedPrecondition(err.into()).into());
        }
        // containerd sends the OCI LinuxResources as JSON in the Any.
        let resources = json_of(req.resources.as_ref())
            .ok_or_else(|| TaskError::InvalidArgument("update without resources".into()))?;
        container::update(&found.sandbox, &req.id, resources)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let found = self.pods.lookup(&req.id, &req.exec_id)?;
        let exit = found.process.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    /// A container's cgroup figures from the agent; for the sandbox task, the
    /// VM's memory from the VMM.
    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let found = self.pods.lookup(&req.id, "")?;
        let any = if found.in_guest {
            container::stats(&found.sandbox, &req.id)?
        } else {
            pod_vm::stats(&found.sandbox)?
        };
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pods.vmm_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    /// Destroys the pod's VM and ends the shim once no task is left.
    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        info!("shutdown");
        match self.pods.take_if_idle() {
            Err(left) => debug!("shutdown asked with {left} tasks left or being created: staying"),
            Ok(sandbox) => {
                if let Some(sandbox) = sandbox {
                    sandbox.destroy();
                }
                self.exit_signal.signal();
            }
        }
        Ok(api::Empty::default())
    }
}

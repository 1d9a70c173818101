//! The task service containerd calls: every task API v2 RPC, mapped onto the
//! pod's VM and its agent.

use crate::config::{RunvConfig, DEFAULT_CONFIG_PATH};
use crate::error::{bounded_text, Result, TaskError, MAX_GUEST_TEXT};
use crate::events::EventQueue;
use crate::exit::{Exit, VM_GONE_STATUS};
use crate::metrics;
use crate::oom::{OomGate, Verdict, OOM_INTERVAL};
use crate::options;
use crate::paths::SharedPath;
use crate::pod_files::PodFiles;
use crate::process::Process;
use crate::sandbox::{agent_ctx, Sandbox};
use crate::spec::{self, PodRole, VmSize};
use crate::stdio::{self, ProcessName, StdioUris};
use crate::vmm_api::{self, VmmApi};
use containerd_shim::protos::api::{self as api, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::topics;
use containerd_shim::{ExitSignal, TtrpcContext};
use log::{debug, info, warn};
use protocol::agent::{self as agent_api, AgentClient};
use protocol::id::check_id;
use protocol::vmm::VmState;
use protocol::GUEST_SHARED_DIR;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How long the guest may take to report a process's exit after SIGKILL
/// before the shim stops trusting it and kills the VM (generous: the exit is
/// recorded once the process's output is drained, in an emulated test host).
const KILL_GRACE: Duration = Duration::from_secs(60);
/// How long one OOM long poll may wait in the agent.
const OOM_POLL: Duration = Duration::from_secs(30);
/// Pause after an OOM report was dropped: a flood costs at most 100 polls a
/// second, and a report that passes is never delayed.
const OOM_DROP_PAUSE: Duration = Duration::from_millis(10);
/// Most bytes of a guest-provided id quoted in a log line.
const MAX_QUOTED_ID: usize = 128;

/// A task: a container, or the stand-in for a CRI pod's sandbox.
struct Task {
    bundle: String,
    role: PodRole,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
}

impl Task {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::not_found("exec", exec_id))
    }

    /// Whether a container runs in the guest for it (not for a pod sandbox).
    fn in_guest(&self) -> bool {
        self.role != PodRole::Sandbox
    }
}

#[derive(Default)]
struct Pod {
    sandbox: Option<Arc<Sandbox>>,
    /// A create is booting the pod's VM (without the pod lock).
    booting: bool,
    /// Bundles of the tasks being created (without the pod lock), by id.
    creating: HashMap<String, String>,
    tasks: HashMap<String, Task>,
}

/// A create in flight: its task id, and the pod's VM if it boots it, reserved
/// in the pod while the slow work runs without the pod lock; released when
/// dropped.
struct Reservation<'a> {
    inner: &'a Inner,
    id: String,
    boots: bool,
}

impl Reservation<'_> {
    /// Adds the created task, and the VM this create booted, to the pod.
    fn commit(self, task: Task, sandbox: &Arc<Sandbox>) {
        let mut pod = self.inner.lock();
        if self.boots {
            pod.sandbox = Some(Arc::clone(sandbox));
        }
        // A VMM that exited before the task was in the pod: vm_exited missed it.
        if sandbox.vm.has_exited() {
            task.init.record_exit(Exit::now(VM_GONE_STATUS));
        }
        pod.tasks.insert(self.id.clone(), task);
        drop(pod);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut pod = self.inner.lock();
        pod.creating.remove(&self.id);
        if self.boots {
            pod.booting = false;
        }
    }
}

struct Inner {
    namespace: String,
    events: EventQueue,
    exit_signal: Arc<ExitSignal>,
    pod: Mutex<Pod>,
}

/// The shim's task service: one per shim, so one per pod.
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// A service for containerd namespace `namespace`, publishing on `events`,
    /// signalling `exit_signal` when it is shut down.
    pub fn new(namespace: &str, events: EventQueue, exit_signal: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                events,
                exit_signal,
                pod: Mutex::new(Pod::default()),
            }),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pod> {
        self.pod.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod's VM, the task's process and whether it runs in the guest.
    fn lookup(&self, id: &str, exec_id: &str) -> Result<(Arc<Sandbox>, Arc<Process>, bool)> {
        let pod = self.lock();
        let task = pod
            .tasks
            .get(id)
            .ok_or_else(|| TaskError::not_found("task", id))?;
        let process = task.process(exec_id)?;
        let sandbox = pod
            .sandbox
            .clone()
            .ok_or_else(|| TaskError::FailedPrecondition("the pod's VM is gone".into()))?;
        Ok((sandbox, process, task.in_guest()))
    }

    fn vmm_pid(&self) -> u32 {
        self.lock().sandbox.as_ref().map_or(0, |s| s.vm.pid())
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        check_id("container id", &req.id)?;
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unimplemented("runv cannot restore a checkpoint"));
        }
        let bundle = Path::new(&req.bundle);
        let spec = spec::read_spec(bundle).map_err(TaskError::InvalidArgument)?;
        let annotations = spec::annotations(&spec);
        let role = PodRole::of(&annotations).map_err(TaskError::InvalidArgument)?;
        let uris = StdioUris {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // The pod lock is held only to reserve the id (and the VM): the boot, the
        // agent and the stdio streams run without it, so the pod's other RPCs
        // answer meanwhile, whatever the guest does.
        let (reservation, running) = self.reserve(&req.id, &req.bundle, &role)?;
        let boots = running.is_none();
        let sandbox = match running {
            Some(sandbox) => sandbox,
            None => Arc::new(self.boot(req, &spec, &annotations, &role)?),
        };
        let process = Arc::new(Process::new(&req.id, "", uris.clone(), None));
        if role != PodRole::Sandbox {
            if let Err(err) = self.create_container(&sandbox, req, &spec, &process) {
                if role == PodRole::Standalone {
                    sandbox.destroy();
                }
                return Err(err);
            }
        }
        let task = Task {
            bundle: req.bundle.clone(),
            role,
            init: process,
            execs: HashMap::new(),
        };
        reservation.commit(task, &sandbox);
        if boots {
            self.watch_oom(&sandbox);
        }
        let pid = sandbox.vm.pid();
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: uris.stdin,
                    stdout: uris.stdout,
                    stderr: uris.stderr,
                    terminal: uris.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            },
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Reserves task id `id` (with its `bundle`) for a create in flight, and the
    /// pod's VM if this create boots it; the pod's running VM for a container
    /// that joins it, none for a create that boots one.
    fn reserve(
        &self,
        id: &str,
        bundle: &str,
        role: &PodRole,
    ) -> Result<(Reservation<'_>, Option<Arc<Sandbox>>)> {
        let mut pod = self.lock();
        if pod.tasks.contains_key(id) || pod.creating.contains_key(id) {
            return Err(TaskError::AlreadyExists(format!("task {id} exists")));
        }
        let running = match role {
            PodRole::Container { sandbox_id } => match &pod.sandbox {
                Some(sandbox) if &sandbox.id == sandbox_id => Some(Arc::clone(sandbox)),
                _ if pod.booting => {
                    return Err(TaskError::FailedPrecondition(format!(
                        "pod {sandbox_id}: this shim is still booting its VM"
                    )))
                }
                _ => {
                    return Err(TaskError::FailedPrecondition(format!(
                        "pod {sandbox_id} has no VM in this shim"
                    )))
                }
            },
            PodRole::Sandbox | PodRole::Standalone => {
                if let Some(existing) = &pod.sandbox {
                    return Err(TaskError::FailedPrecondition(format!(
                        "this shim already runs pod {}",
                        existing.id
                    )));
                }
                if pod.booting {
                    return Err(TaskError::FailedPrecondition(
                        "this shim is already booting its pod's VM".into(),
                    ));
                }
                pod.booting = true;
                None
            }
        };
        pod.creating.insert(id.to_string(), bundle.to_string());
        let reservation = Reservation {
            inner: self,
            id: id.to_string(),
            boots: running.is_none(),
        };
        Ok((reservation, running))
    }

    /// Boots the VM of the pod `req` starts.
    fn boot(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        spec: &Value,
        annotations: &HashMap<String, String>,
        role: &PodRole,
    ) -> Result<Sandbox> {
        let sandbox_id = spec::sandbox_id(&req.id, annotations);
        check_id("sandbox id", &sandbox_id)?;
        let config_path = options::config_path(req.options.as_ref())
            .map_err(TaskError::InvalidArgument)?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let config = RunvConfig::load(&config_path)
            .and_then(|config| config.with_annotations(annotations))
            .map_err(|err| TaskError::InvalidArgument(err.to_string()))?;
        if let Ok(level) = config.log_level.parse() {
            log::set_max_level(level);
        }
        // A CRI sandbox says nothing of its containers' needs; a pod of one does.
        let resources = (*role == PodRole::Standalone)
            .then(|| spec.pointer("/linux/resources"))
            .flatten();
        let size = VmSize::for_pod(&config, resources);
        let files = PodFiles::of(spec).map_err(TaskError::InvalidArgument)?;
        spec::refuse_host_namespaces(spec).map_err(TaskError::InvalidArgument)?;
        let network = spec::pod_network(spec).map_err(TaskError::InvalidArgument)?;
        let placement = spec::host_placement(spec).map_err(TaskError::InvalidArgument)?;
        let weak = Arc::downgrade(self);
        let on_vm_exit = move |status| {
            if let Some(inner) = Weak::upgrade(&weak) {
                inner.vm_exited(status);
            }
        };
        let sandbox = Sandbox::boot(
            &sandbox_id,
            config,
            size,
            &files,
            &network,
            &placement,
            on_vm_exit,
        )
        .map_err(|err| TaskError::Internal(format!("pod {sandbox_id}: {err}")))?;
        Ok(sandbox)
    }

    /// Mounts the container's rootfs and volumes into the share and creates it in
    /// the guest; on failure undoes both.
    fn create_container(
        &self,
        sandbox: &Sandbox,
        req: &api::CreateTaskRequest,
        spec: &Value,
        process: &Process,
    ) -> Result<()> {
        let cid = &req.id;
        let rootfs = SharedPath::new(cid, "rootfs");
        let guest = spec::guest_spec(spec, cid, &rootfs).map_err(TaskError::InvalidArgument)?;
        let bundle_rootfs = Path::new(&req.bundle).join(
            spec.pointer("/root/path")
                .and_then(Value::as_str)
                .unwrap_or("rootfs"),
        );
        let result = (|| {
            sandbox
                .share
                .mount_rootfs(&rootfs, &req.rootfs, &bundle_rootfs)
                .map_err(|err| TaskError::Internal(err.to_string()))?;
            for bind in &guest.binds {
                sandbox
                    .share
                    .bind(bind)
                    .map_err(|err| TaskError::InvalidArgument(err.to_string()))?;
            }
            let create = agent_api::CreateContainerRequest {
                container_id: cid.clone(),
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
            let io = stdio::attach(
                &sandbox.dir.vsock_sock(),
                &self.name(process),
                &process.uris,
            );
            match io {
                Ok(io) => {
                    process.set_io(io);
                    Ok(())
                }
                Err(err) => {
                    remove_in_guest(&sandbox.agent, cid);
                    Err(TaskError::Internal(err))
                }
            }
        })();
        if result.is_err() {
            if let Err(err) = sandbox.share.remove_container(cid) {
                warn!("cleanup of container {cid}'s share: {err}");
            }
        }
        result
    }

    fn name<'a>(&'a self, process: &'a Process) -> ProcessName<'a> {
        ProcessName {
            namespace: &self.namespace,
            container_id: &process.container_id,
            exec_id: &process.exec_id,
        }
    }

    fn start(self: &Arc<Self>, req: &api::StartRequest) -> Result<api::StartResponse> {
        let (sandbox, process, in_guest) = self.lookup(&req.id, &req.exec_id)?;
        if process.status() != Status::CREATED {
            return Err(TaskError::FailedPrecondition(format!(
                "process {} of {} was already started",
                process.event_id(),
                req.id
            )));
        }
        let pid = sandbox.vm.pid();
        if !in_guest {
            process.set_status(Status::RUNNING);
            self.publish_start(&process, pid);
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        if req.exec_id.is_empty() {
            let start = agent_api::StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            sandbox
                .agent
                .start_container(agent_ctx(), &start)
                .map_err(TaskError::agent(format!("StartContainer {}", req.id)))?;
        } else {
            let exec = agent_api::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: process.exec_spec.clone().unwrap_or_default(),
                stdio: Some(process.uris.agent_stdio()).into(),
                ..Default::default()
            };
            sandbox
                .agent
                .exec_process(agent_ctx(), &exec)
                .map_err(TaskError::agent(format!(
                    "ExecProcess {}/{}",
                    req.id, req.exec_id
                )))?;
            match stdio::attach(
                &sandbox.dir.vsock_sock(),
                &self.name(&process),
                &process.uris,
            ) {
                Ok(io) => process.set_io(io),
                Err(err) => {
                    let kill = agent_api::SignalProcessRequest {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        signal: libc::SIGKILL.unsigned_abs(),
                        ..Default::default()
                    };
                    let _ = sandbox.agent.signal_process(agent_ctx(), &kill);
                    return Err(TaskError::Internal(err));
                }
            }
        }
        process.set_status(Status::RUNNING);
        self.publish_start(&process, pid);
        self.watch_exit(&sandbox, &process);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn publish_start(&self, process: &Process, pid: u32) {
        if process.exec_id.is_empty() {
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: process.container_id.clone(),
                    pid,
                    ..Default::default()
                },
            );
        } else {
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: process.container_id.clone(),
                    exec_id: process.exec_id.clone(),
                    pid,
                    ..Default::default()
                },
            );
        }
    }

    /// Waits in the agent for the process's exit, then drains its output and
    /// publishes the exit (after its start: this runs only once started).
    fn watch_exit(self: &Arc<Self>, sandbox: &Arc<Sandbox>, process: &Arc<Process>) {
        let (inner, sandbox, process) =
            (Arc::clone(self), Arc::clone(sandbox), Arc::clone(process));
        let name = format!("wait-{}", process.event_id());
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let req = agent_api::WaitProcessRequest {
                    container_id: process.container_id.clone(),
                    exec_id: process.exec_id.clone(),
                    ..Default::default()
                };
                // No deadline: a process may run for as long as it likes.
                let exit = match sandbox
                    .agent
                    .wait_process(ttrpc::context::Context::default(), &req)
                {
                    Ok(reply) => {
                        Exit::at_unix_nanos(reply.exit_status.unsigned_abs(), reply.exited_at_ns)
                    }
                    Err(err) => {
                        if !sandbox.vm.has_exited() {
                            warn!(
                                "WaitProcess {}/{}: {}",
                                process.container_id,
                                process.exec_id,
                                bounded_text(&err.to_string(), MAX_GUEST_TEXT)
                            );
                        }
                        Exit::now(VM_GONE_STATUS)
                    }
                };
                process.finish_io();
                inner.publish_exit(&process, exit, sandbox.vm.pid());
            });
        if let Err(err) = spawned {
            warn!("cannot start {name}: {err}");
        }
    }

    fn publish_exit(&self, process: &Process, exit: Exit, pid: u32) {
        if !process.record_exit(exit) {
            return;
        }
        info!(
            "process {}/{} exited with {}",
            process.container_id, process.exec_id, exit.status
        );
        self.events.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: process.container_id.clone(),
                id: process.event_id().to_string(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            },
        );
    }

    /// The VMM exited: every process still running exits with 255.
    fn vm_exited(&self, status: i32) {
        let (processes, pid) = {
            let pod = self.lock();
            let processes: Vec<Arc<Process>> = pod
                .tasks
                .values()
                .flat_map(|task| std::iter::once(&task.init).chain(task.execs.values()))
                .cloned()
                .collect();
            (processes, pod.sandbox.as_ref().map_or(0, |s| s.vm.pid()))
        };
        if processes.iter().any(|p| p.exit().is_none()) {
            warn!("the VMM exited ({status}) under running processes");
        }
        for process in processes {
            if process.status() == Status::CREATED {
                process.record_exit(Exit::now(VM_GONE_STATUS));
            } else {
                process.finish_io();
                self.publish_exit(&process, Exit::now(VM_GONE_STATUS), pid);
            }
        }
    }

    /// Forwards the guest's OOM kills as TaskOOM events, while the VM runs:
    /// only of the pod's containers in the guest, each at most once per
    /// [`OOM_INTERVAL`].
    fn watch_oom(self: &Arc<Self>, sandbox: &Sandbox) {
        let weak = Arc::downgrade(self);
        let agent = sandbox.agent.clone();
        let mut gate = OomGate::new(OOM_INTERVAL);
        let spawned = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || loop {
                let reply = agent.get_oom_event(
                    ttrpc::context::with_duration(OOM_POLL),
                    &agent_api::GetOOMEventRequest::default(),
                );
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let vm_gone = inner
                    .lock()
                    .sandbox
                    .as_ref()
                    .map_or(true, |s| s.vm.has_exited());
                match reply {
                    Ok(event) => {
                        if !inner.forward_oom(&mut gate, event.container_id) {
                            // A guest flooding reports gets one poll per pause.
                            drop(inner);
                            std::thread::sleep(OOM_DROP_PAUSE);
                        }
                    }
                    Err(_) if vm_gone => return,
                    Err(ttrpc::Error::RpcStatus(status))
                        if status.code() == ttrpc::Code::DEADLINE_EXCEEDED => {}
                    Err(err) => {
                        let err = bounded_text(&err.to_string(), MAX_GUEST_TEXT);
                        debug!("GetOOMEvent: {err}");
                        drop(inner);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if let Err(err) = spawned {
            warn!("cannot watch OOM events: {err}");
        }
    }

    /// Publishes the guest's OOM kill of `container_id` if `gate` lets it
    /// through; false if it was dropped.
    fn forward_oom(&self, gate: &mut OomGate, container_id: String) -> bool {
        let known = self
            .lock()
            .tasks
            .get(&container_id)
            .is_some_and(Task::in_guest);
        match gate.admit(&container_id, known, Instant::now()) {
            Verdict::Publish => {
                // Dropped on a full queue: it must never hold up lifecycle events.
                let event = TaskOOM {
                    container_id,
                    ..Default::default()
                };
                self.events.offer(topics::TASK_OOM_EVENT_TOPIC, event);
                true
            }
            Verdict::Limited => false,
            Verdict::Unknown { warn } => {
                if let Some(count) = warn {
                    warn!(
                        "dropped the guest's OOM reports of {count} ids that are no container \
                         of this pod in the guest (last {:?})",
                        bounded_text(&container_id, MAX_QUOTED_ID)
                    );
                }
                false
            }
        }
    }

    fn delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        let mut pod = self.lock();
        let pid = pod.sandbox.as_ref().map_or(0, |s| s.vm.pid());
        if !pod.tasks.contains_key(&req.id) && pod.creating.contains_key(&req.id) {
            return Err(TaskError::FailedPrecondition(format!(
                "task {} is still being created",
                req.id
            )));
        }
        let task = pod
            .tasks
            .get_mut(&req.id)
            .ok_or_else(|| TaskError::not_found("task", &req.id))?;
        let process = task.process(&req.exec_id)?;
        if process.is_live() {
            return Err(TaskError::FailedPrecondition(format!(
                "process {} of {} is still running",
                process.event_id(),
                req.id
            )));
        }
        let exit = process.exit().unwrap_or_else(|| Exit::now(0));
        let reply = api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            task.execs.remove(&req.exec_id);
            return Ok(reply);
        }
        let in_guest = task.in_guest();
        pod.tasks.remove(&req.id);
        if let (true, Some(sandbox)) = (in_guest, pod.sandbox.clone()) {
            drop(pod);
            if !sandbox.vm.has_exited() {
                remove_in_guest(&sandbox.agent, &req.id);
            }
            sandbox
                .share
                .remove_container(&req.id)
                .map_err(|err| TaskError::Internal(err.to_string()))?;
        } else {
            drop(pod);
        }
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(reply)
    }

    fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        check_id("exec id", &req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|any| String::from_utf8_lossy(&any.value).into_owned())
            .filter(|json| !json.is_empty())
            .ok_or_else(|| TaskError::InvalidArgument("exec without a process spec".into()))?;
        let mut pod = self.lock();
        let task = pod
            .tasks
            .get_mut(&req.id)
            .ok_or_else(|| TaskError::not_found("task", &req.id))?;
        if !task.in_guest() {
            return Err(TaskError::FailedPrecondition(
                "a pod sandbox runs no container to exec into".into(),
            ));
        }
        if !task.init.is_live() {
            return Err(TaskError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        if task.execs.contains_key(&req.exec_id) {
            return Err(TaskError::AlreadyExists(format!(
                "exec {} exists in {}",
                req.exec_id, req.id
            )));
        }
        let uris = StdioUris {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let process = Process::new(&req.id, &req.exec_id, uris, Some(spec));
        task.execs.insert(req.exec_id.clone(), Arc::new(process));
        drop(pod);
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    fn kill(&self, req: &api::KillRequest) -> Result<()> {
        let (sandbox, process, in_guest) = self.lookup(&req.id, &req.exec_id)?;
        if process.exit().is_some() {
            return Err(TaskError::NotFound {
                kind: "running process",
                id: format!("{} of {} (it already finished)", process.event_id(), req.id),
            });
        }
        if !in_guest {
            // The sandbox's task stands for the VM: any signal but 0 ends it; the
            // VM goes at Shutdown, once every task is deleted.
            if req.signal != 0 {
                let exit = Exit::now(128 + req.signal);
                if process.status() == Status::CREATED {
                    process.record_exit(exit);
                } else {
                    self.publish_exit(&process, exit, sandbox.vm.pid());
                }
            }
            return Ok(());
        }
        let signal = agent_api::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        if req.signal == libc::SIGKILL.unsigned_abs() {
            watch_kill(&sandbox, &process);
        }
        sandbox
            .agent
            .signal_process(agent_ctx(), &signal)
            .map_err(TaskError::agent(format!(
                "SignalProcess {}/{}",
                req.id, req.exec_id
            )))?;
        Ok(())
    }

    fn state(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        let vm = self.vm_state_for(&req.id, &req.exec_id);
        let pod = self.lock();
        if let (None, Some(bundle)) = (pod.tasks.get(&req.id), pod.creating.get(&req.id)) {
            // Still being created: neither CREATED nor failed yet.
            return Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: bundle.clone(),
                status: Status::UNKNOWN.into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            });
        }
        let task = pod
            .tasks
            .get(&req.id)
            .ok_or_else(|| TaskError::not_found("task", &req.id))?;
        let process = task.process(&req.exec_id)?;
        let exit = process.exit();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: task.bundle.clone(),
            pid: pod.sandbox.as_ref().map_or(0, |s| s.vm.pid()),
            status: vm
                .map_or(process.status(), |vm| {
                    status_in_vm(process.status(), vm, !task.in_guest())
                })
                .into(),
            stdin: process.uris.stdin.clone(),
            stdout: process.uris.stdout.clone(),
            stderr: process.uris.stderr.clone(),
            terminal: process.uris.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    /// The run state of the VM of task `id`'s process `exec_id`, asked of the
    /// VMM only where it can change what State reports: for a running process,
    /// and for the sandbox task (the VM itself) once paused. None when the VMM
    /// cannot tell (it exited, or its API failed: logged).
    fn vm_state_for(&self, id: &str, exec_id: &str) -> Option<VmState> {
        let sandbox = {
            let pod = self.lock();
            let task = pod.tasks.get(id)?;
            let status = task.process(exec_id).ok()?.status();
            let asks = status == Status::RUNNING || (!task.in_guest() && status == Status::PAUSED);
            pod.sandbox.clone().filter(|_| asks)?
        };
        if sandbox.vm.has_exited() {
            return None;
        }
        VmmApi::new(&sandbox.dir.api_sock())
            .state()
            .map_err(|err| debug!("state of {id}: {err}"))
            .ok()
    }

    fn pids(&self, req: &api::PidsRequest) -> Result<api::PidsResponse> {
        let (sandbox, _, in_guest) = self.lookup(&req.id, "")?;
        let pids = if in_guest {
            let list = agent_api::ListProcessesRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            sandbox
                .agent
                .list_processes(agent_ctx(), &list)
                .map_err(TaskError::agent(format!("ListProcesses {}", req.id)))?
                .pids
        } else {
            vec![sandbox.vm.pid()]
        };
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Pauses or resumes task `id`: a container by the guest's cgroup freezer,
    /// the sandbox task (the VM) by the VMM's vCPUs.
    fn pause_or_resume(&self, id: &str, pause: bool) -> Result<()> {
        let (sandbox, process, in_guest) = self.lookup(id, "")?;
        if in_guest {
            freeze_container(&sandbox.agent, id, pause)?;
        } else {
            pause_vm(&sandbox, &process, pause)?;
        }
        if pause {
            process.set_status(Status::PAUSED);
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            process.set_status(Status::RUNNING);
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    fn resize_pty(&self, req: &api::ResizePtyRequest) -> Result<()> {
        let (sandbox, _, in_guest) = self.lookup(&req.id, &req.exec_id)?;
        if !in_guest {
            return Err(TaskError::FailedPrecondition(
                "a pod sandbox has no terminal".into(),
            ));
        }
        let resize = agent_api::TtyWinResizeRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            rows: req.height,
            columns: req.width,
            ..Default::default()
        };
        sandbox
            .agent
            .tty_win_resize(agent_ctx(), &resize)
            .map_err(TaskError::agent(format!(
                "TtyWinResize {}/{}",
                req.id, req.exec_id
            )))?;
        Ok(())
    }

    fn close_io(&self, req: &api::CloseIORequest) -> Result<()> {
        let (_, process, _) = self.lookup(&req.id, &req.exec_id)?;
        if req.stdin {
            process.close_stdin();
        }
        Ok(())
    }

    fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        let (sandbox, _, in_guest) = self.lookup(&req.id, "")?;
        if !in_guest {
            return Err(TaskError::FailedPrecondition(
                "a pod sandbox has no resources of its own to update".into(),
            ));
        }
        // containerd sends the OCI LinuxResources as JSON in the Any.
        let resources = req
            .resources
            .as_ref()
            .map(|any| String::from_utf8_lossy(&any.value).into_owned())
            .filter(|json| !json.is_empty())
            .ok_or_else(|| TaskError::InvalidArgument("update without resources".into()))?;
        let update = agent_api::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources,
            ..Default::default()
        };
        sandbox
            .agent
            .update_container(agent_ctx(), &update)
            .map_err(TaskError::agent(format!("UpdateContainer {}", req.id)))?;
        Ok(())
    }

    fn wait(&self, req: &api::WaitRequest) -> Result<api::WaitResponse> {
        let (_, process, _) = self.lookup(&req.id, &req.exec_id)?;
        let exit = process.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    /// A container's cgroup figures from the agent; for the sandbox task, the
    /// VM's memory from the VMM.
    fn stats(&self, req: &api::StatsRequest) -> Result<api::StatsResponse> {
        let (sandbox, _, in_guest) = self.lookup(&req.id, "")?;
        let any = if in_guest {
            let stats = agent_api::StatsContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            let reply = sandbox
                .agent
                .stats_container(agent_ctx(), &stats)
                .map_err(TaskError::agent(format!("StatsContainer {}", req.id)))?;
            metrics::to_any(&reply).map_err(TaskError::Internal)?
        } else {
            vm_stats(&sandbox)?
        };
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self) {
        let sandbox = {
            let mut pod = self.lock();
            if !pod.tasks.is_empty() || !pod.creating.is_empty() {
                debug!(
                    "shutdown asked with {} tasks left or being created: staying",
                    pod.tasks.len() + pod.creating.len()
                );
                return;
            }
            pod.sandbox.take()
        };
        if let Some(sandbox) = sandbox {
            sandbox.destroy();
        }
        self.exit_signal.signal();
    }
}

/// A SIGKILL always ends a process, whatever the guest does: if the guest has
/// not reported its exit [`KILL_GRACE`] after the signal, it is not doing its
/// job, and the VMM is killed (every process of the pod then exits with 255).
fn watch_kill(sandbox: &Arc<Sandbox>, process: &Arc<Process>) {
    if !process.start_kill_watch() {
        return;
    }
    let (sandbox, process) = (Arc::clone(sandbox), Arc::clone(process));
    let name = format!("kill-{}", process.event_id());
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        if process.wait_for(KILL_GRACE).is_none() && !sandbox.vm.has_exited() {
            warn!(
                "process {}/{} did not exit {KILL_GRACE:?} after SIGKILL: killing the pod's VM",
                process.container_id, process.exec_id
            );
            sandbox.vm.kill();
        }
    });
    if let Err(err) = spawned {
        warn!("cannot watch a SIGKILL: {err}");
    }
}

/// Removes container `cid` in the guest, killing what still runs in it.
fn remove_in_guest(agent: &AgentClient, cid: &str) {
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

/// Freezes (`pause`) or thaws container `id` in the guest.
fn freeze_container(agent: &AgentClient, id: &str, pause: bool) -> Result<()> {
    let container_id = id.to_string();
    if pause {
        let req = agent_api::PauseContainerRequest {
            container_id,
            ..Default::default()
        };
        agent
            .pause_container(agent_ctx(), &req)
            .map_err(TaskError::agent(format!("PauseContainer {id}")))?;
    } else {
        let req = agent_api::ResumeContainerRequest {
            container_id,
            ..Default::default()
        };
        agent
            .resume_container(agent_ctx(), &req)
            .map_err(TaskError::agent(format!("ResumeContainer {id}")))?;
    }
    Ok(())
}

/// Stops (`pause`) or runs again the vCPUs of the pod's VM, for the sandbox
/// task `process` that stands for it: as runc does for a container, only a
/// running task pauses and only a paused one resumes. Every container of the
/// pod is frozen with the VM (State reports them PAUSED meanwhile).
fn pause_vm(sandbox: &Sandbox, process: &Process, pause: bool) -> Result<()> {
    let (wanted, call) = if pause {
        (Status::RUNNING, "pause")
    } else {
        (Status::PAUSED, "resume")
    };
    let status = process.status();
    if status != wanted {
        return Err(TaskError::FailedPrecondition(format!(
            "cannot {call} sandbox task {}: it is {status:?}",
            process.container_id
        )));
    }
    let api = VmmApi::new(&sandbox.dir.api_sock());
    let done = if pause { api.pause() } else { api.resume() };
    done.map_err(|err| TaskError::Internal(format!("pod {}: {err}", sandbox.id)))
}

/// The VM's memory as the sandbox task's metrics (its exits by reason only in
/// the debug log).
fn vm_stats(sandbox: &Sandbox) -> Result<protobuf::well_known_types::any::Any> {
    let vm = VmmApi::new(&sandbox.dir.api_sock())
        .metrics()
        .map_err(|err| TaskError::Internal(format!("pod {}: {err}", sandbox.id)))?;
    debug!(
        "pod {}: VM exits by reason: {}",
        sandbox.id,
        vmm_api::exits_summary(&vm)
    );
    vmm_api::vm_metrics_any(&vm).map_err(TaskError::Internal)
}

/// The status a started process reports while its VM is in state `vm`: all
/// of a paused VM is paused (as Kata reports a paused sandbox's containers);
/// the sandbox task, which stands for the VM (`is_vm`), follows it both ways.
fn status_in_vm(tracked: Status, vm: VmState, is_vm: bool) -> Status {
    match (tracked, vm) {
        (Status::RUNNING, VmState::PAUSED) => Status::PAUSED,
        (Status::PAUSED, VmState::RUNNING) if is_vm => Status::RUNNING,
        _ => tracked,
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        info!("create {} (bundle {})", req.id, req.bundle);
        Ok(self.inner.create(&req)?)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        info!("start {} {}", req.id, req.exec_id);
        Ok(self.inner.start(&req)?)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        info!("delete {} {}", req.id, req.exec_id);
        Ok(self.inner.delete(&req)?)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<api::Empty> {
        info!("exec {} {}", req.id, req.exec_id);
        self.inner.exec(&req)?;
        Ok(api::Empty::default())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        info!(
            "kill {} {} signal {} all {}",
            req.id, req.exec_id, req.signal, req.all
        );
        self.inner.kill(&req)?;
        Ok(api::Empty::default())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        Ok(self.inner.state(&req)?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        Ok(self.inner.pids(&req)?)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<api::Empty> {
        info!("pause {}", req.id);
        self.inner.pause_or_resume(&req.id, true)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<api::Empty> {
        info!("resume {}", req.id);
        self.inner.pause_or_resume(&req.id, false)?;
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
        self.inner.resize_pty(&req)?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<api::Empty> {
        self.inner.close_io(&req)?;
        Ok(api::Empty::default())
    }

    fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        info!("update {}", req.id);
        self.inner.update(&req)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        Ok(self.inner.wait(&req)?)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        Ok(self.inner.stats(&req)?)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.inner.vmm_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        info!("shutdown");
        self.inner.shutdown();
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Arc<Inner> {
        Arc::new(Inner {
            namespace: "default".into(),
            events: EventQueue::unread(),
            exit_signal: Arc::default(),
            pod: Mutex::default(),
        })
    }

    fn state_of(inner: &Inner, id: &str) -> Result<api::StateResponse> {
        inner.state(&api::StateRequest {
            id: id.into(),
            ..Default::default()
        })
    }

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

    #[test]
    fn the_pod_answers_while_a_create_boots_its_vm() {
        let inner = inner();
        let (booting, running) = inner
            .reserve("c1", "/bundles/c1", &PodRole::Standalone)
            .unwrap();
        assert!(running.is_none(), "this create boots the VM");
        // The create now boots without the pod lock: another thread's RPCs on
        // the pod answer at once.
        let other = Arc::clone(&inner);
        let answers = std::thread::spawn(move || {
            let state = state_of(&other, "c1").unwrap();
            let delete = other.delete(&api::DeleteRequest {
                id: "c1".into(),
                ..Default::default()
            });
            let twice = other.reserve("c1", "/b", &PodRole::Standalone).err();
            let second_pod = other.reserve("c2", "/b", &PodRole::Standalone).err();
            let member = PodRole::Container {
                sandbox_id: "c1".into(),
            };
            let joins = other.reserve("c3", "/b", &member).err();
            (state, delete.err(), twice, second_pod, joins)
        });
        let (state, delete, twice, second_pod, joins) = answers.join().unwrap();
        assert_eq!(state.status, Status::UNKNOWN.into());
        assert_eq!(state.bundle, "/bundles/c1");
        assert!(
            matches!(delete, Some(TaskError::FailedPrecondition(m)) if m.contains("being created"))
        );
        assert!(matches!(twice, Some(TaskError::AlreadyExists(_))));
        assert!(
            matches!(second_pod, Some(TaskError::FailedPrecondition(m)) if m.contains("booting"))
        );
        assert!(matches!(joins, Some(TaskError::FailedPrecondition(m)) if m.contains("booting")));
        // A create that fails drops its reservation: the id and the VM are free.
        drop(booting);
        assert!(matches!(
            state_of(&inner, "c1"),
            Err(TaskError::NotFound { .. })
        ));
        let (_again, running) = inner.reserve("c2", "/b", &PodRole::Standalone).unwrap();
        assert!(running.is_none());
    }
}

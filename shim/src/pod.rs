//! The pod as the task RPCs see it: its VM, its tasks and their processes, and
//! the creates in flight. A create reserves its task id (and the VM, if it
//! boots it) under the lock, then boots without it: no lock is ever held
//! across a VM boot, so the pod's other RPCs answer meanwhile.

use crate::error::{Result, TaskError};
use crate::exit::{Exit, VM_GONE_STATUS};
use crate::process::Process;
use crate::sandbox::Sandbox;
use crate::spec::PodRole;
use containerd_shim::protos::api::Status;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[cfg(test)]
mod tests;

/// A task: a container, or the stand-in for a CRI pod's sandbox.
pub struct Task {
    /// containerd's bundle directory of it.
    pub bundle: String,
    /// What it is in the pod.
    pub role: PodRole,
    /// Its init process.
    pub init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
}

impl Task {
    /// A task of `role` from `bundle` whose init process is `init`.
    pub fn new(bundle: &str, role: PodRole, init: Arc<Process>) -> Self {
        Self {
            bundle: bundle.to_string(),
            role,
            init,
            execs: HashMap::new(),
        }
    }

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
    pub fn in_guest(&self) -> bool {
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

impl Pod {
    fn vmm_pid(&self) -> u32 {
        self.sandbox.as_ref().map_or(0, |s| s.vm.pid())
    }
}

/// A process found by its task and exec ids, with the pod's VM.
pub struct Found {
    /// The pod's VM.
    pub sandbox: Arc<Sandbox>,
    /// The process.
    pub process: Arc<Process>,
    /// Whether its task runs in the guest (not the pod sandbox's stand-in).
    pub in_guest: bool,
}

/// What State reports of a task id.
pub enum Snapshot {
    /// Still being created from `bundle`: neither CREATED nor failed yet.
    Creating { bundle: String },
    /// A task.
    Task {
        bundle: String,
        /// The VMM's pid.
        pid: u32,
        process: Arc<Process>,
        in_guest: bool,
    },
}

/// A process removed by Delete.
pub struct Removed {
    /// The VMM's pid.
    pub pid: u32,
    /// Its exit (now with status 0 if it never ran).
    pub exit: Exit,
    /// The pod's VM, when a container's init was removed: its container is
    /// then to be removed in the guest and from the share.
    pub container_in: Option<Arc<Sandbox>>,
}

/// A create in flight: its task id, and the pod's VM if it boots it, reserved
/// in the pod while the slow work runs without the pod lock; released when
/// dropped.
pub struct Reservation<'a> {
    pods: &'a PodTable,
    id: String,
    boots: bool,
}

impl Reservation<'_> {
    /// Adds the created task, and the VM this create booted, to the pod; true
    /// if this create booted the VM.
    pub fn commit(self, task: Task, sandbox: &Arc<Sandbox>) -> bool {
        let mut pod = self.pods.lock();
        if self.boots {
            pod.sandbox = Some(Arc::clone(sandbox));
        }
        // A VMM that exited before the task was in the pod: vm_exited missed it.
        if sandbox.vm.has_exited() {
            task.init.record_exit(Exit::now(VM_GONE_STATUS));
        }
        pod.tasks.insert(self.id.clone(), task);
        drop(pod);
        self.boots
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut pod = self.pods.lock();
        pod.creating.remove(&self.id);
        if self.boots {
            pod.booting = false;
        }
    }
}

/// The shim's one pod, behind its lock.
#[derive(Default)]
pub struct PodTable {
    pod: Mutex<Pod>,
}

impl PodTable {
    fn lock(&self) -> MutexGuard<'_, Pod> {
        self.pod.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Task `id`'s process `exec_id` (its init if empty) and the pod's VM.
    pub fn lookup(&self, id: &str, exec_id: &str) -> Result<Found> {
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
        Ok(Found {
            sandbox,
            process,
            in_guest: task.in_guest(),
        })
    }

    /// The VMM's pid, 0 without a VM.
    pub fn vmm_pid(&self) -> u32 {
        self.lock().vmm_pid()
    }

    /// Reserves task id `id` (with its `bundle`) for a create in flight, and the
    /// pod's VM if this create boots it; the pod's running VM for a container
    /// that joins it, none for a create that boots one.
    pub fn reserve(
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
            PodRole::Container { sandbox_id } => Some(joined(&pod, sandbox_id)?),
            PodRole::Sandbox | PodRole::Standalone => {
                start_boot(&mut pod)?;
                None
            }
        };
        pod.creating.insert(id.to_string(), bundle.to_string());
        let reservation = Reservation {
            pods: self,
            id: id.to_string(),
            boots: running.is_none(),
        };
        Ok((reservation, running))
    }

    /// Adds exec'd process `process` to its task, a running container.
    pub fn add_exec(&self, process: Process) -> Result<()> {
        let (id, exec_id) = (&process.container_id, &process.exec_id);
        let mut pod = self.lock();
        let task = pod
            .tasks
            .get_mut(id)
            .ok_or_else(|| TaskError::not_found("task", id))?;
        if !task.in_guest() {
            return Err(TaskError::FailedPrecondition(
                "a pod sandbox runs no container to exec into".into(),
            ));
        }
        if !task.init.is_live() {
            return Err(TaskError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if task.execs.contains_key(exec_id) {
            return Err(TaskError::AlreadyExists(format!(
                "exec {exec_id} exists in {id}"
            )));
        }
        task.execs.insert(exec_id.clone(), Arc::new(process));
        Ok(())
    }

    /// Removes task `id`'s ended process `exec_id` (the task itself if empty).
    pub fn remove(&self, id: &str, exec_id: &str) -> Result<Removed> {
        let mut pod = self.lock();
        let pid = pod.vmm_pid();
        if !pod.tasks.contains_key(id) && pod.creating.contains_key(id) {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id} is still being created"
            )));
        }
        let task = pod
            .tasks
            .get_mut(id)
            .ok_or_else(|| TaskError::not_found("task", id))?;
        let process = task.process(exec_id)?;
        if process.is_live() {
            return Err(TaskError::FailedPrecondition(format!(
                "process {} of {id} is still running",
                process.event_id()
            )));
        }
        let exit = process.exit().unwrap_or_else(|| Exit::now(0));
        let mut removed = Removed {
            pid,
            exit,
            container_in: None,
        };
        if !exec_id.is_empty() {
            task.execs.remove(exec_id);
            return Ok(removed);
        }
        let in_guest = task.in_guest();
        pod.tasks.remove(id);
        removed.container_in = pod.sandbox.clone().filter(|_| in_guest);
        Ok(removed)
    }

    /// What State reports of task `id`'s process `exec_id`.
    pub fn snapshot(&self, id: &str, exec_id: &str) -> Result<Snapshot> {
        let pod = self.lock();
        if let (None, Some(bundle)) = (pod.tasks.get(id), pod.creating.get(id)) {
            let bundle = bundle.clone();
            return Ok(Snapshot::Creating { bundle });
        }
        let task = pod
            .tasks
            .get(id)
            .ok_or_else(|| TaskError::not_found("task", id))?;
        Ok(Snapshot::Task {
            bundle: task.bundle.clone(),
            pid: pod.vmm_pid(),
            process: task.process(exec_id)?,
            in_guest: task.in_guest(),
        })
    }

    /// The pod's VM if the VMM's run state can change what State reports of
    /// task `id`'s process `exec_id`: for a running process, and for the
    /// sandbox task (the VM itself) once paused.
    pub fn vm_to_ask(&self, id: &str, exec_id: &str) -> Option<Arc<Sandbox>> {
        let pod = self.lock();
        let task = pod.tasks.get(id)?;
        let status = task.process(exec_id).ok()?.status();
        let asks = status == Status::RUNNING || (!task.in_guest() && status == Status::PAUSED);
        pod.sandbox.clone().filter(|_| asks)
    }

    /// Every process of the pod, and the VMM's pid.
    pub fn processes(&self) -> (Vec<Arc<Process>>, u32) {
        let pod = self.lock();
        let processes = pod
            .tasks
            .values()
            .flat_map(|task| std::iter::once(&task.init).chain(task.execs.values()))
            .cloned()
            .collect();
        (processes, pod.vmm_pid())
    }

    /// Whether `id` is one of the pod's containers that run in the guest.
    pub fn is_guest_container(&self, id: &str) -> bool {
        self.lock().tasks.get(id).is_some_and(Task::in_guest)
    }

    /// Whether the pod's VM is gone (or was never booted).
    pub fn vm_gone(&self) -> bool {
        self.lock()
            .sandbox
            .as_ref()
            .map_or(true, |s| s.vm.has_exited())
    }

    /// Takes the pod's VM out once no task is left or being created; the
    /// number of tasks left otherwise.
    pub fn take_if_idle(&self) -> std::result::Result<Option<Arc<Sandbox>>, usize> {
        let mut pod = self.lock();
        let left = pod.tasks.len() + pod.creating.len();
        if left > 0 {
            return Err(left);
        }
        Ok(pod.sandbox.take())
    }
}

/// The pod's running VM `sandbox_id`, for a container joining it.
fn joined(pod: &Pod, sandbox_id: &str) -> Result<Arc<Sandbox>> {
    match &pod.sandbox {
        Some(sandbox) if sandbox.id == sandbox_id => Ok(Arc::clone(sandbox)),
        _ if pod.booting => Err(TaskError::FailedPrecondition(format!(
            "pod {sandbox_id}: this shim is still booting its VM"
        ))),
        _ => Err(TaskError::FailedPrecondition(format!(
            "pod {sandbox_id} has no VM in this shim"
        ))),
    }
}

/// Marks the pod's VM booting, for the create of its first task.
fn start_boot(pod: &mut Pod) -> Result<()> {
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
    Ok(())
}

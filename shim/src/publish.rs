//! The task events the shim publishes, built from what its RPCs and watchers
//! saw: one function per event.

use crate::events::EventQueue;
use crate::exit::Exit;
use crate::process::Process;
use containerd_shim::protos::api::CreateTaskRequest;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::topics;
use log::info;

/// TaskCreate of the task `req` created, in a VM of VMM `pid`.
pub fn created(events: &EventQueue, req: &CreateTaskRequest, pid: u32) {
    let io = TaskIO {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
        ..Default::default()
    };
    let event = TaskCreate {
        container_id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        io: Some(io).into(),
        pid,
        ..Default::default()
    };
    events.publish(topics::TASK_CREATE_EVENT_TOPIC, event);
}

/// TaskStart of an init process, TaskExecStarted of an exec'd one.
pub fn started(events: &EventQueue, process: &Process, pid: u32) {
    if process.exec_id.is_empty() {
        let event = TaskStart {
            container_id: process.container_id.clone(),
            pid,
            ..Default::default()
        };
        events.publish(topics::TASK_START_EVENT_TOPIC, event);
    } else {
        let event = TaskExecStarted {
            container_id: process.container_id.clone(),
            exec_id: process.exec_id.clone(),
            pid,
            ..Default::default()
        };
        events.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, event);
    }
}

/// Records `process`'s `exit` and publishes its TaskExit, once: nothing if
/// its exit was already recorded.
pub fn exited(events: &EventQueue, process: &Process, exit: Exit, pid: u32) {
    if !process.record_exit(exit) {
        return;
    }
    info!(
        "process {}/{} exited with {}",
        process.container_id, process.exec_id, exit.status
    );
    let event = TaskExit {
        container_id: process.container_id.clone(),
        id: process.event_id().to_string(),
        pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    };
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, event);
}

/// TaskDelete of task `id`, which ended with `exit`.
pub fn deleted(events: &EventQueue, id: &str, pid: u32, exit: Exit) {
    let event = TaskDelete {
        container_id: id.to_string(),
        pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        id: id.to_string(),
        ..Default::default()
    };
    events.publish(topics::TASK_DELETE_EVENT_TOPIC, event);
}

/// TaskExecAdded of exec `exec_id` in task `id`.
pub fn exec_added(events: &EventQueue, id: &str, exec_id: &str) {
    let event = TaskExecAdded {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    events.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, event);
}

/// TaskPaused of task `id`.
pub fn paused(events: &EventQueue, id: &str) {
    let event = TaskPaused {
        container_id: id.to_string(),
        ..Default::default()
    };
    events.publish(topics::TASK_PAUSED_EVENT_TOPIC, event);
}

/// TaskResumed of task `id`.
pub fn resumed(events: &EventQueue, id: &str) {
    let event = TaskResumed {
        container_id: id.to_string(),
        ..Default::default()
    };
    events.publish(topics::TASK_RESUMED_EVENT_TOPIC, event);
}

/// TaskOOM of container `id` if the queue has room: dropped on a full queue,
/// it must never hold up lifecycle events.
pub fn oom(events: &EventQueue, container_id: String) {
    let event = TaskOOM {
        container_id,
        ..Default::default()
    };
    events.offer(topics::TASK_OOM_EVENT_TOPIC, event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::StdioUris;
    use containerd_shim::protos::api::Status;

    #[test]
    fn an_exit_is_recorded_and_published_once() {
        let events = EventQueue::unread();
        let process = Process::new("c1", "e1", StdioUris::default(), None);
        process.set_status(Status::RUNNING);
        exited(&events, &process, Exit::now(137), 1);
        exited(&events, &process, Exit::now(255), 1);
        assert_eq!(process.status(), Status::STOPPED);
        assert_eq!(process.exit().map(|exit| exit.status), Some(137));
    }
}

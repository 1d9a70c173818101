//! The threads that watch what the task RPCs started: a process's exit, the
//! guest's OOM kills, a SIGKILL's outcome, and the VMM's own exit.

use crate::events::EventQueue;
use crate::exit::{Exit, VM_GONE_STATUS};
use crate::oom::{OomGate, Verdict, OOM_INTERVAL};
use crate::pod::PodTable;
use crate::process::Process;
use crate::publish;
use crate::sandbox::Sandbox;
use crate::text::{bounded_text, MAX_GUEST_TEXT};
use containerd_shim::protos::api::Status;
use log::{debug, warn};
use protocol::agent as agent_api;
use std::sync::{Arc, Weak};
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

/// Waits in the agent for the process's exit, then drains its output and
/// publishes the exit (after its start: this runs only once started).
pub fn watch_exit(events: &EventQueue, sandbox: &Arc<Sandbox>, process: &Arc<Process>) {
    let (events, sandbox, process) = (events.clone(), Arc::clone(sandbox), Arc::clone(process));
    let name = format!("wait-{}", process.event_id());
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let exit = wait_process(&sandbox, &process);
            process.finish_io();
            publish::exited(&events, &process, exit, sandbox.vm.pid());
        });
    if let Err(err) = spawned {
        warn!("cannot start {name}: {err}");
    }
}

/// The process's exit as the agent reports it; 255 if the agent cannot.
fn wait_process(sandbox: &Sandbox, process: &Process) -> Exit {
    let req = agent_api::WaitProcessRequest {
        container_id: process.container_id.clone(),
        exec_id: process.exec_id.clone(),
        ..Default::default()
    };
    // No deadline: a process may run for as long as it likes.
    match sandbox
        .agent
        .wait_process(ttrpc::context::Context::default(), &req)
    {
        Ok(reply) => Exit::at_unix_nanos(reply.exit_status.unsigned_abs(), reply.exited_at_ns),
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
    }
}

/// What runs when the pod's VMM exits: every process still running exits
/// with 255 (nothing once the pod table is gone).
pub fn on_vm_exit(pods: &Arc<PodTable>, events: &EventQueue) -> impl FnOnce(i32) + Send + 'static {
    let (pods, events) = (Arc::downgrade(pods), events.clone());
    move |status| {
        if let Some(pods) = Weak::upgrade(&pods) {
            vm_exited(&pods, &events, status);
        }
    }
}

fn vm_exited(pods: &PodTable, events: &EventQueue, status: i32) {
    let (processes, pid) = pods.processes();
    if processes.iter().any(|p| p.exit().is_none()) {
        warn!("the VMM exited ({status}) under running processes");
    }
    for process in processes {
        if process.status() == Status::CREATED {
            process.record_exit(Exit::now(VM_GONE_STATUS));
        } else {
            process.finish_io();
            publish::exited(events, &process, Exit::now(VM_GONE_STATUS), pid);
        }
    }
}

/// Forwards the guest's OOM kills as TaskOOM events, while the VM runs:
/// only of the pod's containers in the guest, each at most once per
/// [`OOM_INTERVAL`].
pub fn watch_oom(pods: &Arc<PodTable>, events: &EventQueue, sandbox: &Sandbox) {
    let (pods, events) = (Arc::downgrade(pods), events.clone());
    let agent = sandbox.agent.clone();
    let mut gate = OomGate::new(OOM_INTERVAL);
    let spawned = std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || loop {
            let reply = agent.get_oom_event(
                ttrpc::context::with_duration(OOM_POLL),
                &agent_api::GetOOMEventRequest::default(),
            );
            let Some(table) = pods.upgrade() else {
                return;
            };
            let next = after_oom_poll(&table, &events, &mut gate, reply);
            drop(table);
            match next {
                Next::Poll => {}
                Next::PauseThenPoll(pause) => std::thread::sleep(pause),
                Next::Stop => return,
            }
        });
    if let Err(err) = spawned {
        warn!("cannot watch OOM events: {err}");
    }
}

/// What the OOM watcher does after a poll.
enum Next {
    Poll,
    PauseThenPoll(Duration),
    Stop,
}

/// Handles one OOM poll's `reply`; stops once the VM is gone.
fn after_oom_poll(
    pods: &PodTable,
    events: &EventQueue,
    gate: &mut OomGate,
    reply: ttrpc::Result<agent_api::OOMEvent>,
) -> Next {
    let vm_gone = pods.vm_gone();
    match reply {
        Ok(event) => {
            if forward_oom(pods, events, gate, event.container_id) {
                Next::Poll
            } else {
                // A guest flooding reports gets one poll per pause.
                Next::PauseThenPoll(OOM_DROP_PAUSE)
            }
        }
        Err(_) if vm_gone => Next::Stop,
        Err(ttrpc::Error::RpcStatus(status)) if status.code() == ttrpc::Code::DEADLINE_EXCEEDED => {
            Next::Poll
        }
        Err(err) => {
            let err = bounded_text(&err.to_string(), MAX_GUEST_TEXT);
            debug!("GetOOMEvent: {err}");
            Next::PauseThenPoll(Duration::from_secs(1))
        }
    }
}

/// Publishes the guest's OOM kill of `container_id` if `gate` lets it
/// through; false if it was dropped.
fn forward_oom(
    pods: &PodTable,
    events: &EventQueue,
    gate: &mut OomGate,
    container_id: String,
) -> bool {
    let known = pods.is_guest_container(&container_id);
    match gate.admit(&container_id, known, Instant::now()) {
        Verdict::Publish => {
            publish::oom(events, container_id);
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

/// A SIGKILL always ends a process, whatever the guest does: if the guest has
/// not reported its exit [`KILL_GRACE`] after the signal, it is not doing its
/// job, and the VMM is killed (every process of the pod then exits with 255).
pub fn watch_kill(sandbox: &Arc<Sandbox>, process: &Arc<Process>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_watcher_pauses_on_floods_and_stops_with_the_vm() {
        let (pods, events) = (PodTable::default(), EventQueue::unread());
        let mut gate = OomGate::new(OOM_INTERVAL);
        let stranger = agent_api::OOMEvent {
            container_id: "not-ours".into(),
            ..Default::default()
        };
        let next = after_oom_poll(&pods, &events, &mut gate, Ok(stranger));
        assert!(matches!(next, Next::PauseThenPoll(OOM_DROP_PAUSE)));
        // No VM (gone): a failed poll ends the watcher.
        let failed = Err(ttrpc::Error::Others("closed".into()));
        let next = after_oom_poll(&pods, &events, &mut gate, failed);
        assert!(matches!(next, Next::Stop));
    }
}

//! The ttrpc service: one short method per call, translating requests into
//! sandbox, container and network operations.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use nix::sys::signal::Signal;
use protocol::agent as api;
use ttrpc::TtrpcContext;

use crate::error::{AgentError, Result};
use crate::network;
use crate::sandbox::Sandbox;
use protocol::id::check_id;

/// Features GuestDetails reports.
const FEATURES: &[&str] = &[
    "stdio-streams",
    "exec",
    "cgroup-v1",
    "cgroup-v2",
    "sandbox-setup",
    "network",
];

/// The agent's ttrpc service.
pub struct AgentService {
    sandbox: Arc<Sandbox>,
    init: bool,
}

impl AgentService {
    /// The service over `sandbox`; `init` tells whether the agent is PID 1.
    pub fn new(sandbox: Arc<Sandbox>, init: bool) -> Self {
        Self { sandbox, init }
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<crate::process::Process>> {
        self.sandbox.container(container_id)?.process(exec_id)
    }

    fn do_start_container(
        &self,
        req: api::StartContainerRequest,
    ) -> Result<api::StartContainerResponse> {
        let pid = self.sandbox.container(&req.container_id)?.start()?;
        Ok(api::StartContainerResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_exec_process(&self, req: api::ExecProcessRequest) -> Result<api::ExecProcessResponse> {
        check_id("exec_id", &req.exec_id)?;
        let process: oci_spec::runtime::Process = serde_json::from_str(&req.process)
            .map_err(|e| AgentError::InvalidArgument(format!("process: {e}")))?;
        let container = self.sandbox.container(&req.container_id)?;
        let stdio = req.stdio.clone().unwrap_or_default();
        let pid = container.exec(&req.exec_id, &process, &stdio)?;
        Ok(api::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    fn do_signal_process(&self, req: api::SignalProcessRequest) -> Result<api::Empty> {
        let signal = signal(req.signal)?;
        let container = self.sandbox.container(&req.container_id)?;
        container.signal(&req.exec_id, signal, req.all)?;
        Ok(api::Empty::new())
    }

    fn do_wait_process(&self, req: api::WaitProcessRequest) -> Result<api::WaitProcessResponse> {
        let exit = self.process(&req.container_id, &req.exec_id)?.wait();
        let exited_at_ns = exit
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Ok(api::WaitProcessResponse {
            exit_status: exit.status,
            exited_at_ns,
            ..Default::default()
        })
    }

    fn do_list_processes(
        &self,
        req: api::ListProcessesRequest,
    ) -> Result<api::ListProcessesResponse> {
        let pids = self
            .sandbox
            .container(&req.container_id)?
            .cgroup()?
            .pids()?;
        Ok(api::ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    fn do_update_container(&self, req: api::UpdateContainerRequest) -> Result<api::Empty> {
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_str(&req.resources)
            .map_err(|e| AgentError::InvalidArgument(format!("resources: {e}")))?;
        self.sandbox
            .container(&req.container_id)?
            .cgroup()?
            .update(&resources)?;
        Ok(api::Empty::new())
    }

    fn do_tty_win_resize(&self, req: api::TtyWinResizeRequest) -> Result<api::Empty> {
        let size = |n: u32| {
            u16::try_from(n).map_err(|_| {
                AgentError::InvalidArgument(format!("window size {n} is out of range"))
            })
        };
        let (rows, columns) = (size(req.rows)?, size(req.columns)?);
        self.process(&req.container_id, &req.exec_id)?
            .resize(rows, columns)?;
        Ok(api::Empty::new())
    }

    fn do_update_interface(&self, req: api::UpdateInterfaceRequest) -> Result<api::Interface> {
        self.check_network_is_ours()?;
        let iface = req
            .interface
            .as_ref()
            .ok_or_else(|| AgentError::InvalidArgument("no interface given".into()))?;
        network::update_interface(iface)
    }

    fn do_update_routes(&self, req: api::UpdateRoutesRequest) -> Result<api::Routes> {
        self.check_network_is_ours()?;
        let routes = req.routes.as_ref().map_or(&[][..], |r| &r.routes[..]);
        Ok(api::Routes {
            routes: network::update_routes(routes)?,
            ..Default::default()
        })
    }

    /// The guest's network is the agent's; in host mode only a network
    /// namespace of its own is.
    fn check_network_is_ours(&self) -> Result<()> {
        if self.init {
            Ok(())
        } else {
            network::check_own_netns()
        }
    }
}

fn reply<T>(result: Result<T>) -> ttrpc::Result<T> {
    result.map_err(ttrpc::Error::from)
}

fn signal(number: u32) -> Result<Signal> {
    i32::try_from(number)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| AgentError::InvalidArgument(format!("signal {number} is not a signal")))
}

impl api::Agent for AgentService {
    fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        // The guest's own generator and clock, before the sandbox runs
        // anything (never the host's, in host mode), and its share.
        let refreshed = if self.init {
            crate::refresh::reseed(&req.entropy)
                .and_then(|()| crate::refresh::set_clock(req.realtime_ns))
                .map(|()| crate::guest::mount_shared_dir_once())
        } else {
            crate::refresh::check_entropy(&req.entropy)
        };
        reply(
            refreshed
                .and_then(|()| self.sandbox.create(&req))
                .map(|()| api::Empty::new()),
        )
    }

    fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: api::DestroySandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        let removed = self.sandbox.destroy();
        if self.init {
            // What the guest still holds dirty goes to its disks and shares
            // before the answer: the shim stops the VM as soon as it has it.
            nix::unistd::sync();
            // The VM ends with its sandbox, once this answer is on its way
            // (unless the shim has stopped it first).
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let err = crate::init::power_off();
                log::error!("{err}");
            });
        }
        reply(removed.map(|()| api::Empty::new()))
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(
            self.sandbox
                .create_container(&req)
                .map(|()| api::Empty::new()),
        )
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        reply(self.do_start_container(req))
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(
            self.sandbox
                .remove_container(&req.container_id, req.force)
                .map(|()| api::Empty::new()),
        )
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::ExecProcessResponse> {
        reply(self.do_exec_process(req))
    }

    fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(self.do_signal_process(req))
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::WaitProcessRequest,
    ) -> ttrpc::Result<api::WaitProcessResponse> {
        reply(self.do_wait_process(req))
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        req: api::ListProcessesRequest,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        reply(self.do_list_processes(req))
    }

    fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(self.do_update_container(req))
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: api::StatsContainerRequest,
    ) -> ttrpc::Result<api::StatsContainerResponse> {
        reply(
            self.sandbox
                .container(&req.container_id)
                .and_then(|c| c.cgroup()?.stats()),
        )
    }

    fn pause_container(
        &self,
        _: &TtrpcContext,
        req: api::PauseContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(
            self.sandbox
                .container(&req.container_id)
                .and_then(|c| c.pause())
                .map(|()| api::Empty::new()),
        )
    }

    fn resume_container(
        &self,
        _: &TtrpcContext,
        req: api::ResumeContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(
            self.sandbox
                .container(&req.container_id)
                .and_then(|c| c.resume())
                .map(|()| api::Empty::new()),
        )
    }

    fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: api::TtyWinResizeRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(self.do_tty_win_resize(req))
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _: api::GetOOMEventRequest,
    ) -> ttrpc::Result<api::OOMEvent> {
        // Answer just before the caller's deadline (none: wait for ever).
        let deadline = u64::try_from(ctx.timeout_nano)
            .ok()
            .filter(|&ns| ns > 0)
            .map(|ns| Instant::now() + Duration::from_nanos(ns).mul_f64(0.9));
        match self.sandbox.oom.events.next(deadline) {
            Some(container_id) => Ok(api::OOMEvent {
                container_id,
                ..Default::default()
            }),
            None => reply(Err(AgentError::DeadlineExceeded(
                "no OOM event before the deadline".into(),
            ))),
        }
    }

    fn update_interface(
        &self,
        _: &TtrpcContext,
        req: api::UpdateInterfaceRequest,
    ) -> ttrpc::Result<api::Interface> {
        reply(self.do_update_interface(req))
    }

    fn update_routes(
        &self,
        _: &TtrpcContext,
        req: api::UpdateRoutesRequest,
    ) -> ttrpc::Result<api::Routes> {
        reply(self.do_update_routes(req))
    }

    fn guest_details(
        &self,
        _: &TtrpcContext,
        _: api::GuestDetailsRequest,
    ) -> ttrpc::Result<api::GuestDetailsResponse> {
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(api::GuestDetailsResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release,
            init: self.init,
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })
    }

    fn check(
        &self,
        _: &TtrpcContext,
        _: api::CheckRequest,
    ) -> ttrpc::Result<api::HealthCheckResponse> {
        let mut response = api::HealthCheckResponse::new();
        response.set_status(api::ServingStatus::SERVING);
        Ok(response)
    }
}

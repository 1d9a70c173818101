//! The VMM control API (`protocol::vmm`, ttrpc) on `--api-sock`: Describe,
//! Pause, Resume, Shutdown and Metrics, each a short call into [`VmHandle`].

use crate::metrics::resident_bytes;
use crate::runtime::VmHandle;
use crate::vstate::vcpu::RunState;
use protocol::vmm::{
    create_vmm, DescribeRequest, MetricsRequest, PauseRequest, PauseResponse, ResumeRequest,
    ResumeResponse, ShutdownRequest, ShutdownResponse, VmInfo, VmMetrics, VmState, Vmm,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ttrpc::TtrpcContext;

/// Errors while starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Binding or starting the ttrpc server failed.
    #[error("cannot serve the API on {path}: {source}")]
    Serve { path: PathBuf, source: ttrpc::Error },
}

struct ApiService(Arc<VmHandle>);

fn status(code: ttrpc::Code, message: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

impl Vmm for ApiService {
    fn describe(&self, _: &TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
        let handle = &self.0;
        let mut info = VmInfo::new();
        info.set_state(
            match (handle.shutdown_deadline(), handle.shared.control.target()) {
                (Some(_), _) | (_, RunState::Stopping) => VmState::SHUTTING_DOWN,
                (None, RunState::Paused) => VmState::PAUSED,
                (None, RunState::Running) => VmState::RUNNING,
            },
        );
        info.set_vcpus(u32::from(handle.cpus));
        info.set_memory_mib(handle.memory_mib);
        info.set_boot_time_us(handle.shared.timer.boot_time_us());
        info.set_vmm_setup_us(handle.shared.timer.setup_us());
        info.set_pid(std::process::id());
        Ok(info)
    }

    fn pause(&self, _: &TtrpcContext, _: PauseRequest) -> ttrpc::Result<PauseResponse> {
        if self.0.pause() {
            Ok(PauseResponse::new())
        } else {
            Err(status(
                ttrpc::Code::UNAVAILABLE,
                "the vCPUs did not pause (VM stopping?)",
            ))
        }
    }

    fn resume(&self, _: &TtrpcContext, _: ResumeRequest) -> ttrpc::Result<ResumeResponse> {
        self.0.resume();
        Ok(ResumeResponse::new())
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        self.0
            .request_shutdown(Duration::from_millis(req.timeout_ms));
        Ok(ShutdownResponse::new())
    }

    fn metrics(&self, _: &TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
        let mut metrics = VmMetrics::new();
        for (name, count) in self.0.shared.counters.snapshot() {
            metrics.exits_by_reason.insert(name.to_owned(), count);
        }
        metrics.set_vmm_rss_bytes(resident_bytes());
        metrics.set_guest_memory_bytes(self.0.memory_mib << 20);
        Ok(metrics)
    }
}

/// The running API server; [`ApiServer::stop`] removes its socket.
pub struct ApiServer {
    server: ttrpc::Server,
    path: PathBuf,
}

impl ApiServer {
    /// Serves the API for `handle` on the Unix socket `path`.
    pub fn start(path: &Path, handle: Arc<VmHandle>) -> Result<Self, ApiError> {
        let serve_err = |source| ApiError::Serve {
            path: path.to_owned(),
            source,
        };
        let address = format!("unix://{}", path.display());
        let mut server = ttrpc::Server::new()
            .bind(&address)
            .map_err(serve_err)?
            .register_service(create_vmm(Arc::new(ApiService(handle))));
        if let Err(err) = server.start() {
            let _ = std::fs::remove_file(path);
            return Err(serve_err(err));
        }
        Ok(Self {
            server,
            path: path.to_owned(),
        })
    }

    /// Stops serving and removes the socket.
    pub fn stop(self) {
        self.server.shutdown();
        let _ = std::fs::remove_file(&self.path);
    }
}

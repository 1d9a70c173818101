//! The VMM control API (`protocol::vmm`, ttrpc) on `--api-sock`: Describe,
//! Pause, Resume, Shutdown, Metrics and Snapshot, each a call into [`VmHandle`].

use crate::metrics::resident_bytes;
use crate::runtime::VmHandle;
use crate::snapshot::SnapshotError;
use crate::vstate::vcpu::RunState;
use protocol::vmm::{
    create_vmm, DescribeRequest, MetricsRequest, PauseRequest, PauseResponse, ResumeRequest,
    ResumeResponse, ShutdownRequest, ShutdownResponse, SnapshotRequest, SnapshotResponse, VmInfo,
    VmMetrics, VmState, Vmm,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use ttrpc::TtrpcContext;

/// Errors while starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Binding or starting the ttrpc server failed.
    #[error("cannot serve the API on {path}: {source}")]
    Serve { path: PathBuf, source: ttrpc::Error },
}

/// The service holds the VM weakly: ttrpc's handler threads may outlive the
/// server, and must not keep the VM's state alive after it ended.
struct ApiService(Weak<VmHandle>);

impl ApiService {
    fn vm(&self) -> ttrpc::Result<Arc<VmHandle>> {
        self.0
            .upgrade()
            .ok_or_else(|| status(ttrpc::Code::UNAVAILABLE, "the VM has ended"))
    }
}

fn status(code: ttrpc::Code, message: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

impl Vmm for ApiService {
    fn describe(&self, _: &TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
        let handle = self.vm()?;
        let ending = handle.shutdown_deadline().is_some() || handle.shared.exits.is_reported();
        let mut info = VmInfo::new();
        info.set_state(match (ending, handle.shared.control.target()) {
            (true, _) | (_, RunState::Stopping) => VmState::SHUTTING_DOWN,
            (false, RunState::Paused) => VmState::PAUSED,
            (false, RunState::Running) => VmState::RUNNING,
        });
        info.set_vcpus(u32::from(handle.cpus));
        info.set_memory_mib(handle.memory_mib);
        info.set_boot_time_us(handle.shared.timer.boot_time_us());
        info.set_vmm_setup_us(handle.shared.timer.setup_us());
        info.set_pid(std::process::id());
        Ok(info)
    }

    fn pause(&self, _: &TtrpcContext, _: PauseRequest) -> ttrpc::Result<PauseResponse> {
        if self.vm()?.pause() {
            Ok(PauseResponse::new())
        } else {
            Err(status(
                ttrpc::Code::UNAVAILABLE,
                "the vCPUs did not pause (VM stopping?)",
            ))
        }
    }

    fn resume(&self, _: &TtrpcContext, _: ResumeRequest) -> ttrpc::Result<ResumeResponse> {
        if !self.vm()?.resume() {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                "a snapshot stopped the VM's devices: it can only be shut down",
            ));
        }
        Ok(ResumeResponse::new())
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        self.vm()?
            .request_shutdown(Duration::from_millis(req.timeout_ms));
        Ok(ShutdownResponse::new())
    }

    fn metrics(&self, _: &TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
        let handle = self.vm()?;
        let mut metrics = VmMetrics::new();
        for (name, count) in handle.shared.counters.snapshot() {
            metrics.exits_by_reason.insert(name.to_owned(), count);
        }
        metrics.set_vmm_rss_bytes(resident_bytes());
        metrics.set_guest_memory_bytes(handle.memory_mib << 20);
        metrics.set_returned_memory_bytes(handle.returned_memory.load(Ordering::Relaxed));
        Ok(metrics)
    }

    fn snapshot(&self, _: &TtrpcContext, _: SnapshotRequest) -> ttrpc::Result<SnapshotResponse> {
        let sizes = self.vm()?.snapshot().map_err(|err| {
            let code = match err {
                SnapshotError::NotPaused
                | SnapshotError::NoDirectory
                | SnapshotError::Unsupported(_) => ttrpc::Code::FAILED_PRECONDITION,
                _ => ttrpc::Code::INTERNAL,
            };
            log::error!("snapshot: {err}");
            status(code, &err.to_string())
        })?;
        log::info!(
            "snapshot written: {} bytes of memory, {} bytes of state",
            sizes.memory_bytes,
            sizes.state_bytes
        );
        let mut response = SnapshotResponse::new();
        response.set_memory_bytes(sizes.memory_bytes);
        response.set_state_bytes(sizes.state_bytes);
        Ok(response)
    }
}

/// The running API server; stopping or dropping it removes its socket.
pub struct ApiServer {
    server: Option<ttrpc::Server>,
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
        // The configuration checked that `path` did not exist: whatever is
        // there after a failed bind or start is ours to remove.
        let server = ttrpc::Server::new().bind(&address).map_err(|err| {
            let _ = std::fs::remove_file(path);
            serve_err(err)
        })?;
        let service = create_vmm(Arc::new(ApiService(Arc::downgrade(&handle))));
        let mut api = Self {
            server: Some(server.register_service(service)),
            path: path.to_owned(),
        };
        if let Some(server) = api.server.as_mut() {
            server.start().map_err(serve_err)?;
        }
        Ok(api)
    }

    /// Stops serving and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

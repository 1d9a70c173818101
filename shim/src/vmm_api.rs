//! The client of the VMM's control API (`protocol::vmm` over ttrpc on
//! `<sandbox dir>/api.sock`): Describe, Pause, Resume, Shutdown and Metrics of
//! the pod's VM, each call on a connection of its own, bounded by a timeout.

use crate::text::{bounded_text, MAX_GUEST_TEXT};
use protocol::hybrid_vsock;
use protocol::vmm::{
    DescribeRequest, MetricsRequest, PauseRequest, ResumeRequest, ShutdownRequest, SnapshotRequest,
    VmInfo, VmMetrics, VmState, VmmClient,
};
use std::io;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound of one API call, connect included: the VMM answers from its own
/// threads, never from the guest's (Pause waits at most 5 s for the vCPUs).
pub const VMM_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call of the VMM's API.
#[derive(Debug, thiserror::Error)]
pub enum VmmApiError {
    /// The socket could not be reached within the call's timeout.
    #[error("cannot connect to the VMM's API {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The connection could not be set up as a ttrpc client.
    #[error("ttrpc client on the VMM's API {path}: {source}")]
    Client { path: PathBuf, source: ttrpc::Error },
    /// The VMM refused the call, failed, or did not answer in time; its text
    /// cut to [`MAX_GUEST_TEXT`].
    #[error("the VMM's {call}: {message}")]
    Call { call: &'static str, message: String },
}

/// The VMM control API of one pod.
#[derive(Debug, Clone)]
pub struct VmmApi {
    sock: PathBuf,
    timeout: Duration,
}

impl VmmApi {
    /// The API served on `sock` (`SandboxDir::api_sock`), calls bounded by
    /// [`VMM_CALL_TIMEOUT`].
    pub fn new(sock: &Path) -> Self {
        Self::with_timeout(sock, VMM_CALL_TIMEOUT)
    }

    /// The API served on `sock`, each call bounded by `timeout`.
    pub fn with_timeout(sock: &Path, timeout: Duration) -> Self {
        Self {
            sock: sock.to_path_buf(),
            timeout,
        }
    }

    /// The VM's state, size and boot timings.
    pub fn describe(&self) -> Result<VmInfo, VmmApiError> {
        self.call("Describe", |client, ctx| {
            client.describe(ctx, &DescribeRequest::new())
        })
    }

    /// The VM's run state.
    pub fn state(&self) -> Result<VmState, VmmApiError> {
        self.describe().map(|info| info.state())
    }

    /// Stops the vCPUs (a paused VM stays paused).
    pub fn pause(&self) -> Result<(), VmmApiError> {
        self.call("Pause", |client, ctx| {
            client.pause(ctx, &PauseRequest::new())
        })
        .map(drop)
    }

    /// Runs the vCPUs again (a running VM keeps running).
    pub fn resume(&self) -> Result<(), VmmApiError> {
        self.call("Resume", |client, ctx| {
            client.resume(ctx, &ResumeRequest::new())
        })
        .map(drop)
    }

    /// Gives the guest `grace` to power off, then has the VMM stop the VM; the
    /// VMM exits once the VM is gone.
    pub fn shutdown(&self, grace: Duration) -> Result<(), VmmApiError> {
        let mut req = ShutdownRequest::new();
        req.set_timeout_ms(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        self.call("Shutdown", |client, ctx| client.shutdown(ctx, &req))
            .map(drop)
    }

    /// Writes a snapshot of the paused VM into the VMM's snapshot directory.
    pub fn snapshot(&self) -> Result<(), VmmApiError> {
        self.call("Snapshot", |client, ctx| {
            client.snapshot(ctx, &SnapshotRequest::new())
        })
        .map(drop)
    }

    /// The VMM's counters: exits by reason, its RSS, the guest's memory size.
    pub fn metrics(&self) -> Result<VmMetrics, VmmApiError> {
        self.call("Metrics", |client, ctx| {
            client.metrics(ctx, &MetricsRequest::new())
        })
    }

    /// Runs `call` on a fresh connection; connect and call together end within
    /// the timeout (a VMM whose backlog is full, or that never answers, costs
    /// no more).
    fn call<T>(
        &self,
        name: &'static str,
        call: impl FnOnce(&VmmClient, ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, VmmApiError> {
        let deadline = Instant::now() + self.timeout;
        let client = self.connect(deadline)?;
        // A zero duration would mean no deadline at all.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        call(&client, ttrpc::context::with_duration(left)).map_err(|err| VmmApiError::Call {
            call: name,
            message: bounded_text(&call_error_text(err), MAX_GUEST_TEXT),
        })
    }

    fn connect(&self, deadline: Instant) -> Result<VmmClient, VmmApiError> {
        let connect_err = |source: io::Error| {
            let source = if source.kind() == io::ErrorKind::TimedOut {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not accepted within {:?}", self.timeout),
                )
            } else {
                source
            };
            VmmApiError::Connect {
                path: self.sock.clone(),
                source,
            }
        };
        let stream = hybrid_vsock::connect_by(&self.sock, deadline).map_err(connect_err)?;
        // ttrpc's threads do their own waiting: no socket timeout may stay.
        stream
            .set_write_timeout(None)
            .and_then(|()| stream.set_read_timeout(None))
            .map_err(connect_err)?;
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|source| VmmApiError::Client {
                path: self.sock.clone(),
                source,
            })?;
        Ok(VmmClient::new(client))
    }
}

/// A ttrpc error as text: a status by its code and message (no details).
fn call_error_text(err: ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;

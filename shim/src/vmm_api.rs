//! The client of the VMM's control API (`protocol::vmm` over ttrpc on
//! `<sandbox dir>/api.sock`): Describe, Pause, Resume, Shutdown and Metrics of
//! the pod's VM, each call on a connection of its own, bounded by a timeout.

use crate::error::{bounded_text, MAX_GUEST_TEXT};
use containerd_shim::protos::cgroups_v2::metrics::{MemoryStat, Metrics};
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use protocol::hybrid_vsock;
use protocol::vmm::{
    DescribeRequest, MetricsRequest, PauseRequest, ResumeRequest, ShutdownRequest, VmInfo,
    VmMetrics, VmState, VmmClient,
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

/// The VM's memory as containerd's cgroups v2 `Metrics` (the type CRI and
/// `ctr task metrics` decode for a task): the VMM's RSS as usage, the guest's
/// memory size as the limit. The VMM counts no CPU time, pids or io.
pub fn vm_metrics_any(vm: &VmMetrics) -> Result<Any, String> {
    let memory = MemoryStat {
        usage: vm.vmm_rss_bytes,
        usage_limit: vm.guest_memory_bytes,
        ..Default::default()
    };
    let metrics = Metrics {
        memory: Some(memory).into(),
        ..Default::default()
    };
    let value = metrics
        .write_to_bytes()
        .map_err(|err| format!("encode the VM's metrics: {err}"))?;
    Ok(Any {
        type_url: crate::metrics::type_url(),
        value,
        ..Default::default()
    })
}

/// The VM's exits by reason as one line, sorted, at most [`MAX_GUEST_TEXT`]
/// bytes (for a debug log: containerd's metrics have no place for them).
pub fn exits_summary(vm: &VmMetrics) -> String {
    let mut exits: Vec<(&String, &u64)> = vm.exits_by_reason.iter().collect();
    exits.sort();
    let line = exits
        .iter()
        .map(|(reason, count)| format!("{reason}={count}"))
        .collect::<Vec<_>>()
        .join(" ");
    bounded_text(&line, MAX_GUEST_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::vmm::{create_vmm, PauseResponse, ResumeResponse, ShutdownResponse, Vmm};
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};
    use ttrpc::TtrpcContext;

    /// Unit-test double of runv-vmm's API: a VM whose state follows Pause,
    /// Resume and Shutdown, and that records the calls.
    #[derive(Default)]
    struct FakeVmm {
        state: Mutex<VmState>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeVmm {
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Vmm for FakeVmm {
        fn describe(&self, _: &TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
            let mut info = VmInfo::new();
            info.set_state(*self.state.lock().unwrap());
            info.set_vcpus(2);
            info.set_memory_mib(256);
            info.set_pid(4242);
            Ok(info)
        }

        fn pause(&self, _: &TtrpcContext, _: PauseRequest) -> ttrpc::Result<PauseResponse> {
            self.record("pause".into());
            *self.state.lock().unwrap() = VmState::PAUSED;
            Ok(PauseResponse::new())
        }

        fn resume(&self, _: &TtrpcContext, _: ResumeRequest) -> ttrpc::Result<ResumeResponse> {
            self.record("resume".into());
            *self.state.lock().unwrap() = VmState::RUNNING;
            Ok(ResumeResponse::new())
        }

        fn shutdown(
            &self,
            _: &TtrpcContext,
            req: ShutdownRequest,
        ) -> ttrpc::Result<ShutdownResponse> {
            self.record(format!("shutdown {}", req.timeout_ms));
            *self.state.lock().unwrap() = VmState::SHUTTING_DOWN;
            Ok(ShutdownResponse::new())
        }

        fn metrics(&self, _: &TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
            let mut metrics = VmMetrics::new();
            metrics.exits_by_reason =
                HashMap::from([("io".to_string(), 17), ("hlt".to_string(), 3)]);
            metrics.set_vmm_rss_bytes(48 << 20);
            metrics.set_guest_memory_bytes(256 << 20);
            Ok(metrics)
        }
    }

    fn serve(vmm: Arc<FakeVmm>) -> (tempfile::TempDir, PathBuf, ttrpc::Server) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_vmm(vmm));
        server.start().unwrap();
        (dir, sock, server)
    }

    #[test]
    fn every_call_reaches_the_vmm() {
        let vmm = Arc::new(FakeVmm::default());
        let (_dir, sock, server) = serve(Arc::clone(&vmm));
        let api = VmmApi::new(&sock);

        let info = api.describe().unwrap();
        assert_eq!(
            (info.state(), info.vcpus(), info.pid()),
            (VmState::RUNNING, 2, 4242)
        );
        api.pause().unwrap();
        assert_eq!(api.state().unwrap(), VmState::PAUSED);
        api.resume().unwrap();
        assert_eq!(api.state().unwrap(), VmState::RUNNING);
        let metrics = api.metrics().unwrap();
        assert_eq!(metrics.vmm_rss_bytes, 48 << 20);
        api.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(api.state().unwrap(), VmState::SHUTTING_DOWN);
        assert_eq!(
            *vmm.calls.lock().unwrap(),
            ["pause", "resume", "shutdown 10000"]
        );
        server.shutdown();
    }

    #[test]
    fn a_missing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let err = VmmApi::new(&sock).describe().unwrap_err();
        assert!(matches!(err, VmmApiError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&sock.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_vmm_that_never_answers_costs_only_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        // Accepts (the backlog does) and never reads nor answers.
        let _listener = UnixListener::bind(&sock).unwrap();
        let api = VmmApi::with_timeout(&sock, Duration::from_millis(300));
        let started = Instant::now();
        let err = api.pause().unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, VmmApiError::Call { call: "Pause", .. }),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn a_refusal_keeps_its_code_and_is_bounded() {
        struct Refusing;
        impl Vmm for Refusing {
            fn pause(&self, _: &TtrpcContext, _: PauseRequest) -> ttrpc::Result<PauseResponse> {
                let huge = "x".repeat(1 << 20);
                Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::UNAVAILABLE,
                    huge,
                )))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_vmm(Arc::new(Refusing)));
        server.start().unwrap();
        let text = VmmApi::new(&sock).pause().unwrap_err().to_string();
        assert!(
            text.starts_with("the VMM's Pause: UNAVAILABLE: xxx"),
            "{}",
            &text[..64]
        );
        assert!(text.len() < 2 * MAX_GUEST_TEXT, "{} bytes", text.len());
        server.shutdown();
    }

    #[test]
    fn vm_metrics_decode_as_cgroups_v2_memory() {
        let mut vm = VmMetrics::new();
        vm.set_vmm_rss_bytes(48 << 20);
        vm.set_guest_memory_bytes(256 << 20);
        vm.exits_by_reason = HashMap::from([("mmio".to_string(), 5), ("hlt".to_string(), 9)]);
        let any = vm_metrics_any(&vm).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(metrics.memory.usage, 48 << 20);
        assert_eq!(metrics.memory.usage_limit, 256 << 20);
        assert!(metrics.cpu.is_none() && metrics.pids.is_none());
        assert_eq!(exits_summary(&vm), "hlt=9 mmio=5");
    }
}

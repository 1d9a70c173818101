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

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        self.record(format!("shutdown {}", req.timeout_ms));
        *self.state.lock().unwrap() = VmState::SHUTTING_DOWN;
        Ok(ShutdownResponse::new())
    }

    fn metrics(&self, _: &TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
        let mut metrics = VmMetrics::new();
        metrics.exits_by_reason = HashMap::from([("io".to_string(), 17), ("hlt".to_string(), 3)]);
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

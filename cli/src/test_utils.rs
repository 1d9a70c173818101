//! Helpers the unit tests share: a fake VMM on a sandbox's API socket, a
//! process standing in for the VMM, a start timeline.

use containerd_shim_runv_v2::paths::SandboxDir;
use containerd_shim_runv_v2::start_phases::StartPhases;
use protocol::vmm::{create_vmm, DescribeRequest, MetricsRequest, VmInfo, VmMetrics, VmState, Vmm};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

/// The VMM API of a paused VM with 2 vCPUs and 512 MiB, whose VMM counts 42
/// `mmio` exits, 128 MiB of RSS and 256 MiB of guest memory.
pub struct FakeVmm;

impl Vmm for FakeVmm {
    fn describe(&self, _: &ttrpc::TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
        let mut info = VmInfo::new();
        info.set_state(VmState::PAUSED);
        info.set_vcpus(2);
        info.set_memory_mib(512);
        Ok(info)
    }

    fn metrics(&self, _: &ttrpc::TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
        let mut metrics = VmMetrics::new();
        metrics.exits_by_reason.insert("mmio".into(), 42);
        metrics.vmm_rss_bytes = 1 << 27;
        metrics.guest_memory_bytes = 1 << 28;
        metrics.returned_memory_bytes = 1 << 26;
        Ok(metrics)
    }
}

/// Makes sandbox dir `dir` with its `vm/` and serves [`FakeVmm`] on its API
/// socket, as a running VMM would; the server stops when dropped.
pub fn serve_vmm(dir: &SandboxDir) -> ttrpc::Server {
    std::fs::create_dir(dir.path()).unwrap();
    dir.create_vmm_dirs().unwrap();
    let addr = format!("unix://{}", dir.api_sock().display());
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_vmm(Arc::new(FakeVmm)));
    server.start().unwrap();
    server
}

/// Spawns a process standing in for the VMM of sandbox `dir` (which must
/// exist): its command line names the sandbox's API socket and its pid is in
/// `vmm.pid`. Returns once the child has exec'd (until then its command line
/// is the test's); it sleeps 10 s unless killed.
pub fn spawn_vmm_stand_in(dir: &SandboxDir) -> Child {
    let vmm = Command::new("/bin/sh")
        .arg("-c")
        .arg("sleep 10; true")
        .arg(dir.api_sock())
        .spawn()
        .unwrap();
    std::fs::write(dir.vmm_pid_file(), format!("{}\n", vmm.id())).unwrap();
    let cmdline = format!("/proc/{}/cmdline", vmm.id());
    let api_sock = dir.api_sock().display().to_string();
    for _ in 0..200 {
        let text = std::fs::read(&cmdline).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(&api_sock) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    vmm
}

/// A start timeline: a 1 ms spawn, 2 ms of setup, a 300 ms guest boot and
/// 7 ms until the agent answers.
pub fn start_phases() -> StartPhases {
    StartPhases {
        vmm_spawn_us: 1_000,
        vmm_setup_us: 2_000,
        guest_boot_us: 300_000,
        agent_ready_us: 7_000,
    }
}

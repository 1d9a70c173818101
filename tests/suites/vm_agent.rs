//! Tier 2: runv-agent as PID 1 under runv-vmm. A client reaches it through the
//! hybrid vsock socket, runs a container whose bundle the host shares by
//! virtio-fs, reads its output over the stdio streams, sees a container over
//! its memory limit end with 137 and its OOM event (the guest's cgroup v2
//! notification), memory the guest frees goes back to the host (free page
//! reporting), and DestroySandbox powers the guest off.

use protocol::agent::{
    AgentClient, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    GetOOMEventRequest, StartContainerRequest, Stdio, WaitProcessRequest,
};
use protocol::stdio::{StreamHeader, StreamKind, AGENT_STDIO_VSOCK_PORT};
use protocol::vmm::{MetricsRequest, VmMetrics, VmmClient};
use protocol::{AGENT_VSOCK_PORT, BOOT_MARKER, GUEST_SHARED_DIR};
use runv_tests::agent_host::{ctx, output_stdio, read_all, spec, unpack_test_image, SpecOptions};
use runv_tests::artefacts::{vmm_binary, GuestArtefacts};
use runv_tests::console::VmProcess;
use runv_tests::host::{assert_no_process_left, require_kvm};
use runv_tests::hybrid_vsock::{connect, connect_within};
use runv_tests::scratch::Scratch;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;
/// What the memory hog touches.
const HOG_MIB: u64 = 96;
/// How long the guest may take to report what the hog freed (it reports
/// every 2 s, a part of its free lists at a time).
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

fn vmm_metrics(api: &VmmClient) -> VmMetrics {
    api.metrics(ctx(), &MetricsRequest::new())
        .expect("the VMM's Metrics")
}

/// Runs a container that touches [`HOG_MIB`] of memory and exits, then waits
/// until the VMM has given back most of that and its RSS is back near
/// `before`.
fn assert_freed_memory_goes_back(
    client: &AgentClient,
    api: &VmmClient,
    create: &CreateContainerRequest,
    before: &VmMetrics,
) {
    create_memory_hog(client, create, "hog", HOG_MIB, &SpecOptions::default());
    assert_eq!(start_and_wait(client, "hog"), 0, "the hog failed");
    wait_for_metrics(api, |now| {
        let returned = now.returned_memory_bytes - before.returned_memory_bytes;
        let back = now.vmm_rss_bytes <= before.vmm_rss_bytes + HOG_MIB / 4 * MIB;
        // Not all of it: a page the hog touched may come from a block the
        // guest never reported, or stay in a smaller free block.
        (returned >= HOG_MIB * MIB * 3 / 4 && back)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "the VMM gave back {} MiB since the hog started and its RSS is {} MiB, {} MiB \
                 before the hog",
                    returned / MIB,
                    now.vmm_rss_bytes / MIB,
                    before.vmm_rss_bytes / MIB
                )
            })
    });
}

/// Creates container `cid` from `create` with `options`: `dd` through a
/// buffer of `mib` MiB, which it touches whole, with no stdio.
fn create_memory_hog(
    client: &AgentClient,
    create: &CreateContainerRequest,
    cid: &str,
    mib: u64,
    options: &SpecOptions,
) {
    let mut hog = create.clone();
    hog.container_id = cid.into();
    let buffer = format!("bs={mib}M");
    let args = [
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        &buffer,
        "count=1",
    ];
    hog.oci_spec = spec(cid, &args, options);
    hog.stdio = Some(Stdio::default()).into();
    client
        .create_container(ctx(), &hog)
        .unwrap_or_else(|err| panic!("CreateContainer {cid}: {err}"));
}

/// The VMM's metrics once `settled` accepts them (polled every second), or a
/// panic with its last complaint after [`REPORT_TIMEOUT`].
fn wait_for_metrics(
    api: &VmmClient,
    settled: impl Fn(&VmMetrics) -> Result<(), String>,
) -> VmMetrics {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let now = vmm_metrics(api);
        match settled(&now) {
            Ok(()) => return now,
            Err(complaint) => assert!(
                Instant::now() < deadline,
                "after {REPORT_TIMEOUT:?}: {complaint}"
            ),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn stream(uds: &Path, cid: &str, kind: StreamKind) -> std::os::unix::net::UnixStream {
    let mut conn = connect(uds, AGENT_STDIO_VSOCK_PORT).expect("connect to the stdio port");
    StreamHeader::new(cid, "", kind)
        .bind(&mut conn)
        .unwrap_or_else(|err| panic!("bind {kind} of {cid}: {err}"));
    conn
}

/// Starts container `cid`'s init process; its exit status.
fn start_and_wait(client: &AgentClient, cid: &str) -> i32 {
    let start = StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    client
        .start_container(ctx(), &start)
        .unwrap_or_else(|err| panic!("StartContainer {cid}: {err}"));
    let wait = WaitProcessRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    client
        .wait_process(ctx(), &wait)
        .unwrap_or_else(|err| panic!("WaitProcess {cid}: {err}"))
        .exit_status
}

#[test]
fn agent_in_the_guest_runs_a_container_from_the_shared_directory() {
    require_kvm();
    let scratch = Scratch::new("runv-vm-agent");
    let dir = scratch.path();
    let shared = dir.join("shared");
    unpack_test_image(&shared.join("c1"));
    let uds = dir.join("vsock.sock");
    let api_sock = dir.join("api.sock");
    let guest = GuestArtefacts::from_env();
    let mut vmm = Command::new(vmm_binary());
    vmm.arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--cpus", "2", "--memory-mib", "256", "--console", "stdout"])
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--fs")
        .arg(format!("tag=runv,path={}", shared.display()))
        .arg("--api-sock")
        .arg(&api_sock)
        .arg("--free-page-reporting");
    let mut vm = VmProcess::spawn(vmm);
    assert!(
        vm.wait_for(BOOT_MARKER, BOOT_TIMEOUT).is_some(),
        "the agent did not start"
    );
    let conn = connect_within(&uds, AGENT_VSOCK_PORT, Duration::from_secs(30))
        .expect("the agent listens on vsock port 1024");
    let client = AgentClient::new(ttrpc::Client::new(conn.into_raw_fd()).expect("ttrpc client"));

    let sandbox = CreateSandboxRequest {
        shared_dir: GUEST_SHARED_DIR.into(),
        ..Default::default()
    };
    client
        .create_sandbox(ctx(), &sandbox)
        .expect("CreateSandbox with the shared directory");
    let create = CreateContainerRequest {
        container_id: "c1".into(),
        oci_spec: spec(
            "c1",
            &[
                "sh",
                "-c",
                "echo hello from the guest; echo err >&2; \
                 cat /sys/module/page_reporting/parameters/page_reporting_order; exit 3",
            ],
            &SpecOptions::default(),
        ),
        rootfs: format!("{GUEST_SHARED_DIR}/c1/bundle/rootfs"),
        stdio: Some(output_stdio()).into(),
        ..Default::default()
    };
    client
        .create_container(ctx(), &create)
        .expect("CreateContainer");
    let stdout = read_all(stream(&uds, "c1", StreamKind::Stdout));
    let stderr = read_all(stream(&uds, "c1", StreamKind::Stderr));
    assert_eq!(start_and_wait(&client, "c1"), 3);
    // The agent set the guest's free page reporting to 2 MiB blocks (order 9).
    assert_eq!(stdout.join().unwrap(), b"hello from the guest\n9\n");
    assert_eq!(stderr.join().unwrap(), b"err\n");

    // An escape from the shared directory is refused, and the agent serves on.
    let mut escape = create.clone();
    escape.container_id = "c2".into();
    escape.rootfs = "/".into();
    let refused = client.create_container(ctx(), &escape);
    assert!(
        refused.is_err(),
        "a rootfs outside the shared dir was accepted"
    );

    // Over its memory limit: killed (137), and the OOM event arrives.
    let limit = 32u64 << 20;
    let limited = SpecOptions {
        resources: Some(serde_json::json!({"memory": {"limit": limit}})),
        ..Default::default()
    };
    create_memory_hog(&client, &create, "oom", 64, &limited);
    let status = start_and_wait(&client, "oom");
    assert_eq!(status, 137, "the hog was not OOM-killed");
    let event = client
        .get_oom_event(
            ttrpc::context::with_duration(Duration::from_secs(30)),
            &GetOOMEventRequest::new(),
        )
        .expect("an OOM event for the hog");
    assert_eq!(event.container_id, "oom");

    let address = format!("unix://{}", api_sock.display());
    let api = VmmClient::new(ttrpc::Client::connect(&address).expect("connect to the VMM's API"));
    // The guest reports what is free from 2 s after its balloon driver starts.
    let before = wait_for_metrics(&api, |now| {
        (now.returned_memory_bytes > 0)
            .then_some(())
            .ok_or_else(|| "the guest reported no free memory since boot".to_owned())
    });
    assert_freed_memory_goes_back(&client, &api, &create, &before);

    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::default())
        .expect("DestroySandbox");
    let run = vm.wait_exit(BOOT_MARKER, BOOT_TIMEOUT);
    assert!(
        run.status.success(),
        "exit {}:\n{}",
        run.status,
        run.transcript()
    );
    assert!(!uds.exists(), "the vsock socket outlived the VMM");
    assert_no_process_left("runv-vmm");
}

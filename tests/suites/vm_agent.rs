//! Tier 2: runv-agent as PID 1 under runv-vmm. A client reaches it through the
//! hybrid vsock socket, runs a container whose bundle the host shares by
//! virtio-fs, reads its output over the stdio streams, sees a container over
//! its memory limit end with 137 and its OOM event (the guest's cgroup v2
//! notification), memory the guest frees goes back to the host (free page
//! reporting), and DestroySandbox powers the guest off. A snapshot of the
//! ready agent's VM starts guests that run containers from their own shares.

use protocol::agent::{
    AgentClient, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    GetOOMEventRequest, StartContainerRequest, Stdio, WaitProcessRequest,
};
use protocol::stdio::{StreamHeader, StreamKind, AGENT_STDIO_VSOCK_PORT};
use protocol::vmm::{
    MetricsRequest, PauseRequest, ResumeRequest, ShutdownRequest, SnapshotRequest, VmMetrics,
    VmmClient,
};
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
    let vmm = agent_vmm(
        &uds,
        &shared,
        &[
            "--cpus".as_ref(),
            "2".as_ref(),
            "--api-sock".as_ref(),
            api_sock.as_os_str(),
        ],
    );
    let mut vm = VmProcess::spawn(vmm);
    assert!(
        vm.wait_for(BOOT_MARKER, BOOT_TIMEOUT).is_some(),
        "the agent did not start"
    );
    let client = agent_client(&uds);
    make_sandbox(&client);
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

/// runv-vmm for the agent (one vCPU, 256 MiB), with vsock on `uds` and the
/// share `shared`, plus `extra` flags (which win): the devices every pod's
/// VM has.
fn agent_vmm(uds: &Path, shared: &Path, extra: &[&std::ffi::OsStr]) -> Command {
    let guest = GuestArtefacts::from_env();
    let mut vmm = Command::new(vmm_binary());
    vmm.arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--cpus", "1", "--memory-mib", "256", "--console", "stdout"])
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--fs")
        .arg(format!("tag=runv,path={}", shared.display()))
        .args(["--rng", "--free-page-reporting"])
        .args(extra);
    vmm
}

/// Connects to the agent behind `uds`.
fn agent_client(uds: &Path) -> AgentClient {
    let conn = connect_within(uds, AGENT_VSOCK_PORT, Duration::from_secs(60))
        .expect("the agent listens on vsock port 1024");
    AgentClient::new(ttrpc::Client::new(conn.into_raw_fd()).expect("ttrpc client"))
}

/// Makes the sandbox behind `client` as the shim does: the shared
/// directory, host randomness and the host's clock.
fn make_sandbox(client: &AgentClient) {
    let mut entropy = vec![0u8; 64];
    protocol::random::fill(&mut entropy).expect("host randomness");
    let sandbox = CreateSandboxRequest {
        shared_dir: GUEST_SHARED_DIR.into(),
        entropy,
        realtime_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        ..Default::default()
    };
    client
        .create_sandbox(ctx(), &sandbox)
        .expect("CreateSandbox with the shared directory");
}

/// Runs container `c1` of the share behind `client` with `args`, in a
/// sandbox made by [`make_sandbox`]; its stdout.
fn run_c1(client: &AgentClient, uds: &Path, args: &[&str]) -> Vec<u8> {
    make_sandbox(client);
    let create = CreateContainerRequest {
        container_id: "c1".into(),
        oci_spec: spec("c1", args, &SpecOptions::default()),
        rootfs: format!("{GUEST_SHARED_DIR}/c1/bundle/rootfs"),
        stdio: Some(output_stdio()).into(),
        ..Default::default()
    };
    client
        .create_container(ctx(), &create)
        .expect("CreateContainer");
    let stdout = read_all(stream(uds, "c1", StreamKind::Stdout));
    let stderr = read_all(stream(uds, "c1", StreamKind::Stderr));
    assert_eq!(start_and_wait(client, "c1"), 0, "c1 failed");
    drop(stderr.join());
    stdout.join().unwrap()
}

/// Boots the agent's VM with `--snapshot-dir`, waits until the agent
/// answers (the connection closed again, so that guests made from it hold
/// none), pauses it, snapshots it and shuts it down; the snapshot directory.
fn make_template(dir: &Path) -> std::path::PathBuf {
    let snapshots = dir.join("snapshot");
    let share = dir.join("template-share");
    for made in [&snapshots, &share] {
        std::fs::create_dir(made).unwrap();
    }
    let api_sock = dir.join("api.sock");
    let uds = dir.join("template.sock");
    let extra = [
        "--api-sock".as_ref(),
        api_sock.as_os_str(),
        "--snapshot-dir".as_ref(),
        snapshots.as_os_str(),
    ];
    let mut template = VmProcess::spawn(agent_vmm(&uds, &share, &extra));
    assert!(
        template.wait_for(BOOT_MARKER, BOOT_TIMEOUT).is_some(),
        "the agent did not start"
    );
    drop(agent_client(&uds));
    std::thread::sleep(Duration::from_secs(1));
    let address = format!("unix://{}", api_sock.display());
    let api = VmmClient::new(ttrpc::Client::connect(&address).expect("connect to the VMM's API"));
    api.pause(ctx(), &PauseRequest::new()).expect("Pause");
    let sizes = api
        .snapshot(ctx(), &SnapshotRequest::new())
        .expect("Snapshot of the agent's VM");
    assert!(
        sizes.memory_bytes() > 0 && sizes.state_bytes() > 0,
        "{sizes:?}"
    );
    let resumed = api.resume(ctx(), &ResumeRequest::new());
    assert!(
        resumed.is_err(),
        "the snapshot's VM resumed without its devices"
    );
    let mut shutdown = ShutdownRequest::new();
    shutdown.timeout_ms = 0;
    api.shutdown(ctx(), &shutdown).expect("Shutdown");
    drop(api);
    let run = template.wait_exit(BOOT_MARKER, BOOT_TIMEOUT);
    assert!(run.status.success(), "{}", run.transcript());
    snapshots
}

#[test]
fn a_snapshot_of_the_ready_agent_starts_guests_that_run_containers_from_their_own_shares() {
    require_kvm();
    let scratch = Scratch::new("runv-vm-agent-snapshot");
    let dir = scratch.path();
    let snapshots = make_template(dir);

    // Two guests from the snapshot at once, each with its own vsock socket
    // and share: each agent answers and runs a container from its share.
    let guests: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let uds = dir.join(format!("{name}.sock"));
            let shared = dir.join(format!("share-{name}"));
            unpack_test_image(&shared.join("c1"));
            std::fs::write(shared.join("c1/bundle/rootfs/whoami"), name).unwrap();
            let restore = ["--restore-from".as_ref(), snapshots.as_os_str()];
            let vm = VmProcess::spawn(agent_vmm(&uds, &shared, &restore));
            (name, uds, vm)
        })
        .collect();
    let mut uuids = Vec::new();
    for (name, uds, vm) in guests {
        let client = agent_client(&uds);
        let out = run_c1(
            &client,
            &uds,
            &[
                "sh",
                "-c",
                "cat /whoami; echo; cat /proc/sys/kernel/random/uuid",
            ],
        );
        let out = String::from_utf8(out).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(name), "guest {name}: {out}");
        uuids.push(lines.next().unwrap_or_default().to_owned());
        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::default())
            .expect("DestroySandbox");
        let run = vm.wait_exit(BOOT_MARKER, BOOT_TIMEOUT);
        assert!(run.status.success(), "guest {name}:\n{}", run.transcript());
        assert!(
            !uds.exists(),
            "guest {name}'s vsock socket outlived the VMM"
        );
    }
    assert_ne!(
        uuids[0], uuids[1],
        "two guests from one snapshot drew the same random numbers"
    );
    assert_no_process_left("runv-vmm");
}

/// The VMM process's proportional set size in KiB (guest memory included).
fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("Pss in smaps_rollup")
}

/// Starts an agent VM with `extra` flags and makes its sandbox; the time from
/// spawn to the sandbox's answer, the VM and its client.
fn start_agent(
    dir: &Path,
    name: &str,
    extra: &[&std::ffi::OsStr],
) -> (Duration, VmProcess, AgentClient) {
    let uds = dir.join(format!("{name}.sock"));
    let shared = dir.join(format!("share-{name}"));
    std::fs::create_dir_all(&shared).unwrap();
    let started = Instant::now();
    let vm = VmProcess::spawn(agent_vmm(&uds, &shared, extra));
    let client = agent_client(&uds);
    make_sandbox(&client);
    (started.elapsed(), vm, client)
}

fn stop_agent(vm: VmProcess, client: AgentClient) {
    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::default())
        .expect("DestroySandbox");
    let run = vm.wait_exit(BOOT_MARKER, BOOT_TIMEOUT);
    assert!(run.status.success(), "{}", run.transcript());
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Benchmark (bench/vm-template), not a test: the agent's VM started from a
/// snapshot of the ready agent against a cold boot, both to the answer of
/// CreateSandbox, alternating; then the PSS of two idle VMs of each kind side
/// by side. Prints medians and ratios.
#[test]
#[ignore = "a benchmark: bench/vm-template"]
fn template_start_and_memory_against_cold_boot() {
    require_kvm();
    let runs: usize = std::env::var("RUNV_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    let scratch = Scratch::new("runv-vm-template-bench");
    let dir = scratch.path();
    let snapshots = make_template(dir);
    let memory = std::fs::metadata(snapshots.join("memory")).unwrap();

    let restore = ["--restore-from".as_ref(), snapshots.as_os_str()];
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (took, vm, client) = start_agent(dir, &format!("cold{run}"), &[]);
        stop_agent(vm, client);
        cold.push(took.as_secs_f64() * 1000.0);
        let (took, vm, client) = start_agent(dir, &format!("warm{run}"), &restore);
        stop_agent(vm, client);
        warm.push(took.as_secs_f64() * 1000.0);
    }
    let (cold_ms, warm_ms) = (median(cold), median(warm));
    println!(
        "bench vm-template: snapshot of the ready agent: {:.1} MiB of memory on disk",
        std::os::unix::fs::MetadataExt::blocks(&memory) as f64 * 512.0 / MIB as f64
    );
    println!(
        "bench vm-template: spawn to CreateSandbox answered, median of {runs}: cold boot {cold_ms:.0} ms, \
         from the template {warm_ms:.0} ms (ratio {:.2})",
        warm_ms / cold_ms
    );

    // Memory: two idle VMs of each kind at once, each after its sandbox.
    let pss = |kind: &str, extra: &[&std::ffi::OsStr]| {
        let vms: Vec<_> = (0..2)
            .map(|index| start_agent(dir, &format!("{kind}-idle{index}"), extra))
            .collect();
        // Free page reporting settles a few seconds after boot.
        std::thread::sleep(Duration::from_secs(10));
        let total: u64 = vms.iter().map(|(_, vm, _)| pss_kib(vm.pid())).sum();
        for (_, vm, client) in vms {
            stop_agent(vm, client);
        }
        total as f64 / 2.0 / 1024.0
    };
    let cold_mib = pss("cold", &[]);
    let warm_mib = pss("warm", &restore);
    println!(
        "bench vm-template: idle VM's PSS (VMM + guest memory), two at once: cold boot \
         {cold_mib:.1} MiB, from the template {warm_mib:.1} MiB (ratio {:.2})",
        warm_mib / cold_mib
    );
    assert_no_process_left("runv-vmm");
}

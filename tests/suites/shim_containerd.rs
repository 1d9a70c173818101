//! Tier 4: runv end to end. containerd (a fixture of its own) runs containers with
//! runtime `io.pouch.runv.v2`: `containerd-shim-runv-v2` boots a pod's VM in runv-vmm
//! and the agent in the guest runs the containers. Driven by `ctr` and by a CRI
//! client (runtime handler `runv`). After every test, nothing is left: no runv-vmm or
//! shim process, no mount under /run/runv, no directory in it.
//!
//! Every VM boot costs 10-20 s in the emulated test host, so each test batches its
//! checks into as few `ctr run`s (one VM each) or pods as it can.
//!
//! `RUNV_TIER4_PEER=runc` runs the same checks with runc (containerd's default
//! runtime) instead, to check the suite's own expectations; checks that only make
//! sense for runv (its VMM, its config) are then skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use k8s_cri::v1::{
    Capability, ContainerConfig, DnsConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
};
use runv_tests::containerd::{
    assert_clean, cgroup_of, pattern, run_with_deadline, search_path, wait_until, Containerd,
    ContainerdVersion, Runtime, RunvConfig, TestRunvConfig, TEST_IMAGE,
};
use runv_tests::cri::{container_config, envs, pod_config, pod_config_annotated};
use runv_tests::host::{pids_named, processes_matching};
use runv_tests::scratch::Scratch;

/// A runv config value that pod annotations may override (the shim's
/// `enable_annotations` default includes it).
const VCPUS_ANNOTATION: &str = "io.pouch.runv.default_vcpus";
/// The guest memory annotation (also overridable by default), bounded by
/// `max_memory_mib`.
const MEMORY_ANNOTATION: &str = "io.pouch.runv.default_memory_mib";

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Waits up to `timeout` for task `id` to reach `status`.
fn wait_task_status(containerd: &Containerd, id: &str, status: &str, timeout: Duration) {
    let reached = wait_until(timeout, || {
        containerd.task_status(id).as_deref() == Some(status)
    });
    assert!(
        reached,
        "task {id} did not become {status} within {timeout:?} (now {:?})\n{}",
        containerd.task_status(id),
        containerd.log_tail()
    );
}

/// The live runv-vmm processes.
fn vmm_pids() -> Vec<i32> {
    pids_named("runv-vmm")
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// `arg` quoted for sh.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks left to the end of every test: nothing of containerd's or runv's stays.
fn finish(containerd: Containerd) {
    assert_eq!(
        containerd.ctr(&["containers", "ls", "-q"]),
        "",
        "containers left"
    );
    containerd.assert_clean();
    drop(containerd);
    assert_clean();
}

/// One VM: output on stdout and stderr, exit status 42, env and cwd, 1 MiB
/// through stdin and back out of `cat`, byte for byte, and a seccomp profile.
#[test]
fn ctr_run_output_status_env_cwd_stdin_seccomp() {
    let runtime = Runtime::under_test();
    let containerd = Containerd::start();
    let input = pattern(1 << 20);
    // A seccomp profile that refuses mkdir: the guest's agent applies it.
    let profile_dir = Scratch::new("runv-seccomp");
    let profile = profile_dir.path().join("no-mkdir.json");
    let no_mkdir = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#;
    std::fs::write(&profile, no_mkdir).expect("write the seccomp profile");
    let profile = profile.display().to_string();
    let script = "echo to-stderr >&2; cat; echo \"$GREETING\"; pwd; \
                  mkdir /tmp/d 2>/dev/null; echo mkdir=$?; exit 42";
    let args = runtime.run_args(
        &containerd,
        &[
            "--rm",
            "--seccomp",
            "--seccomp-profile",
            &profile,
            "--env",
            "GREETING=hello",
            "--cwd",
            "/tmp",
            TEST_IMAGE,
            "r1",
            "sh",
            "-c",
            script,
        ],
    );
    let run = containerd.ctr_stdin("r1", &strs(&args), &input);
    assert_eq!(
        run.status.code(),
        Some(42),
        "exit status; stderr: {}",
        text(&run.stderr)
    );
    assert!(
        text(&run.stderr).contains("to-stderr"),
        "stderr: {}",
        text(&run.stderr)
    );
    assert!(
        run.stdout.len() >= input.len(),
        "stdout has {} bytes",
        run.stdout.len()
    );
    let (echoed, rest) = run.stdout.split_at(input.len());
    assert!(
        echoed == input.as_slice(),
        "the 1 MiB through cat came back changed"
    );
    assert_eq!(text(rest), "hello\n/tmp\nmkdir=1\n");
    finish(containerd);
}

/// One VM with a terminal (`ctr run -t`, ctr itself on a pty made by `script`).
#[test]
fn ctr_run_tty() {
    let runtime = Runtime::under_test();
    let containerd = Containerd::start();
    let mut ctr = vec![
        "ctr".to_owned(),
        "--address".into(),
        containerd.socket().display().to_string(),
    ];
    let script = "test -t 0 && test -t 1 && echo on-a-tty; exit 3";
    ctr.extend(runtime.run_args(
        &containerd,
        &["-t", "--rm", TEST_IMAGE, "t1", "sh", "-c", script],
    ));
    let line = ctr
        .iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("script");
    command.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
    let run = run_with_deadline(command, None, Duration::from_secs(300))
        .unwrap_or_else(|out| panic!("ctr run -t did not finish: {out:?}"));
    assert!(
        text(&run.stdout).contains("on-a-tty"),
        "{run:?}\n{}",
        containerd.log_tail()
    );
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    finish(containerd);
}

/// One VM running in the background: ctr task exec (as root and as user 1000),
/// ps, pause and resume, metrics, kill with SIGTERM (trapped) and SIGKILL.
#[test]
fn ctr_task_exec_ps_pause_metrics_kill() {
    let runtime = Runtime::under_test();
    let containerd = Containerd::start();
    let script = "trap 'touch /tmp/got-term' TERM; while true; do sleep 1; done";
    let args = runtime.run_args(&containerd, &["-d", TEST_IMAGE, "k1", "sh", "-c", script]);
    containerd.ctr(&strs(&args));
    wait_task_status(&containerd, "k1", "RUNNING", Duration::from_secs(60));
    if runtime == Runtime::Runv {
        runv_cli_sees_the_pod(&containerd, "k1");
    }

    let exec = containerd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "k1",
        "sh",
        "-c",
        "echo exec-out; id -u",
    ]);
    assert_eq!(exec, "exec-out\n0\n");
    // uid:gid, both numeric: with a user name or a bare uid, ctr mounts the
    // container's (active) overlay snapshot a second time on the host to read
    // /etc/passwd, which breaks file creation in the running container.
    let exec = containerd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "--user",
        "1000:1000",
        "k1",
        "id",
    ]);
    assert!(exec.starts_with("uid=1000(user) gid=1000(user)"), "{exec}");
    let status = containerd.ctr_output(&[
        "tasks",
        "exec",
        "--exec-id",
        "e3",
        "k1",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(status.status.code(), Some(5), "{status:?}");
    let input = pattern(64 << 10);
    let cat = containerd.ctr_stdin(
        "k1",
        &["tasks", "exec", "--exec-id", "e4", "k1", "cat"],
        &input,
    );
    assert!(
        cat.status.success() && cat.stdout == input,
        "exec'd cat: {} bytes back",
        cat.stdout.len()
    );

    let ps = containerd.ctr(&["tasks", "ps", "k1"]);
    assert!(ps.lines().count() >= 2, "ctr task ps: {ps}");
    let metrics = containerd.ctr(&["tasks", "metrics", "k1"]);
    assert!(
        metrics.contains("pids.current") && metrics.contains("memory"),
        "ctr task metrics: {metrics}"
    );

    containerd.ctr(&["tasks", "pause", "k1"]);
    wait_task_status(&containerd, "k1", "PAUSED", Duration::from_secs(30));
    containerd.ctr(&["tasks", "resume", "k1"]);
    wait_task_status(&containerd, "k1", "RUNNING", Duration::from_secs(30));
    let alive = containerd.ctr(&["tasks", "exec", "--exec-id", "e5", "k1", "echo", "resumed"]);
    assert_eq!(alive, "resumed\n");

    containerd.ctr(&["tasks", "kill", "k1"]);
    let mut last = None;
    let trapped = wait_until(Duration::from_secs(30), || {
        let check = [
            "tasks",
            "exec",
            "--exec-id",
            "e6",
            "k1",
            "test",
            "-f",
            "/tmp/got-term",
        ];
        let run = containerd.ctr_output(&check);
        let done = run.status.success();
        last = Some(run);
        done
    });
    assert!(
        trapped,
        "SIGTERM did not reach the container's trap: {last:?}"
    );
    assert_eq!(containerd.task_status("k1").as_deref(), Some("RUNNING"));
    containerd.ctr(&["tasks", "kill", "--signal", "SIGKILL", "k1"]);
    wait_task_status(&containerd, "k1", "STOPPED", Duration::from_secs(30));
    // `ctr task rm` reports a non-zero exit status as a warning (and exits 0).
    let removed = containerd.ctr_output(&["tasks", "rm", "k1"]);
    assert!(
        removed.status.success() && text(&removed.stderr).contains("exit code 137"),
        "ctr task rm of the SIGKILLed task: {removed:?}"
    );
    containerd.ctr(&["containers", "rm", "k1"]);
    finish(containerd);
}

/// containerd 2.3+ reaches runv's shim through task v3 (the version `start`
/// answers its bootstrap protocol with), every container of the pod included;
/// older ones through task v2.
fn assert_task_api_version(containerd: &Containerd) {
    let version = ContainerdVersion::on_path();
    let expected = if (version.major, version.minor) >= (2, 3) {
        "version=3"
    } else {
        "version=2"
    };
    let log = std::fs::read_to_string(containerd.dir().join("containerd.log"))
        .expect("read containerd's log");
    let connections: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("connecting to shim"))
        .collect();
    // containerd 1.x logs its shim connections only at debug level.
    assert!(
        version.major < 2 || !connections.is_empty(),
        "containerd {} logged no shim connection",
        version.text
    );
    for line in connections {
        assert!(line.contains(expected), "{expected} expected: {line}");
    }
}

/// One pod (one VM) with two containers, through the CRI: ExecSync in both, both
/// in the same VM with the pod's hostname, DNS and sysctls, the first (and a
/// third) in the pod's PID namespace under its pause, the second in its own,
/// a bridge made with CAP_NET_ADMIN, netfilter in the guest's kernel,
/// ContainerStats,
/// UpdateContainerResources, StopContainer (SIGKILL after the grace period for
/// a container ignoring SIGTERM, at once for one that exits on it),
/// StopPodSandbox, RemovePodSandbox.
/// `runv check` passes, `runv ps` lists running pod `pod` with its VMM, 1
/// vCPU and 256 MiB (the harness's config), and `runv env` reports the config
/// containerd gave it.
fn runv_cli_sees_the_pod(containerd: &Containerd, pod: &str) {
    let cli = std::env::var("RUNV_CLI").expect("RUNV_CLI: the runv CLI (scripts/test sets it)");
    runv_check_passes(&cli, containerd);
    let run = |args: &[&str]| {
        let output = std::process::Command::new(&cli)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run {cli}: {err}"));
        assert!(output.status.success(), "runv {args:?}: {output:?}");
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .unwrap_or_else(|err| panic!("runv {args:?} printed no JSON ({err}): {output:?}"))
    };
    let pods = run(&["ps", "--json"]);
    let listed = pods
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["id"] == pod))
        .unwrap_or_else(|| panic!("runv ps does not list {pod}: {pods}"));
    let vmm = vmm_pids();
    assert_eq!(vmm.len(), 1, "one runv-vmm: {vmm:?}");
    assert_eq!(listed["vmm_pid"], vmm[0], "{listed}");
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["vcpus"], 1, "{listed}");
    assert_eq!(listed["memory_mib"], 256, "{listed}");
    let config = containerd.dir().join("runv.toml");
    let env = run(&["env", "--json", "--config", &config.display().to_string()]);
    let vmm_path = std::env::var("RUNV_VMM").expect("RUNV_VMM");
    assert_eq!(env["config"]["values"]["vmm"], vmm_path.as_str(), "{env}");
    assert_eq!(env["vmm"]["path"], vmm_path.as_str(), "{env}");
    assert!(env["vmm"]["version"].is_string(), "{env}");
    runv_metrics_show_the_pod(&cli, pod);
}

/// `runv check --json`, given the runv and containerd configs of `containerd`
/// and the PATH it runs with (`RUNV_SHIM`'s directory first), exits 0 with
/// every check ok: this host (the KVM test host, or one with
/// hardware-assisted KVM) can run runv pods, as the running pod shows.
fn runv_check_passes(cli: &str, containerd: &Containerd) {
    let path = search_path();
    let runv_config = containerd.runv_config_path().display().to_string();
    let containerd_config = containerd.dir().join("config.toml").display().to_string();
    let args = [
        "check",
        "--json",
        "--config",
        &runv_config,
        "--containerd-config",
        &containerd_config,
    ];
    let output = Command::new(cli)
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|err| panic!("run {cli}: {err}"));
    let stdout = text(&output.stdout);
    let report = format!(
        "runv {args:?}: {}\n{stdout}{}",
        output.status,
        text(&output.stderr)
    );
    eprintln!("{report}");
    let checks: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("runv check printed no JSON ({err}): {report}"));
    let checks = checks
        .as_array()
        .unwrap_or_else(|| panic!("runv check printed no array: {report}"));
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "failed checks {failed:?}: {report}");
    for name in ["kvm", "cpu", "kvm-speed", "assets", "cgroup", "containerd"] {
        assert!(
            checks.iter().any(|check| check["name"] == name),
            "no check {name}: {report}"
        );
    }
    assert!(output.status.success(), "{report}");
}

/// `runv metrics` serves pod `pod`'s VMM RSS, the guest memory its VMM gave
/// back and its start timeline, and
/// `runv trace` prints that timeline.
fn runv_metrics_show_the_pod(cli: &str, pod: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = std::process::Command::new(cli)
        .args(["metrics", "--listen", &listen])
        .spawn()
        .unwrap_or_else(|err| panic!("start runv metrics: {err}"));
    let scrape = || -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&listen)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: runv\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let mut answer = Err(std::io::Error::other("not tried"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        answer = scrape();
        if answer.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    let answer = answer.unwrap_or_else(|err| panic!("scrape runv metrics on {listen}: {err}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The value of the scraped sample `series` (its name and labels).
    let sample = |series: String| -> u64 {
        let prefix = format!("{series} ");
        answer
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in the scrape:\n{answer}"))
    };
    let rss = sample(format!("runv_vmm_rss_bytes{{pod=\"{pod}\"}}"));
    assert!(rss > 1 << 20, "VMM RSS {rss} bytes:\n{answer}");
    // The guest reports its free memory from 2 s after its balloon driver
    // starts, long before this point.
    let returned = sample(format!(
        "runv_guest_memory_returned_bytes_total{{pod=\"{pod}\"}}"
    ));
    assert!(returned > 0, "no guest memory given back:\n{answer}");
    for phase in ["vmm_spawn", "vmm_setup", "guest_boot", "agent_ready"] {
        let counted = sample(format!(
            "runv_pod_start_phase_seconds_count{{phase=\"{phase}\"}}"
        ));
        assert!(counted >= 1, "phase {phase} not counted:\n{answer}");
    }
    let trace = std::process::Command::new(cli)
        .args(["trace", pod])
        .output()
        .unwrap_or_else(|err| panic!("run runv trace: {err}"));
    let timeline = String::from_utf8_lossy(&trace.stdout);
    assert!(trace.status.success(), "runv trace {pod}: {trace:?}");
    assert!(timeline.contains("guest"), "runv trace {pod}:\n{timeline}");
}

#[test]
fn cri_pod_with_two_containers() {
    let runtime = Runtime::under_test();
    let containerd = Containerd::start();
    let cri = containerd.cri();
    let mut pod = pod_config("two");
    pod.dns_config = Some(DnsConfig {
        servers: vec!["192.0.2.53".into()],
        searches: vec!["pods.example.test".into()],
        options: vec!["ndots:2".into()],
    });
    // The pod's sysctls, one of its IPC and one of its network namespace.
    if let Some(linux) = pod.linux.as_mut() {
        linux.sysctls = [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_unprivileged_port_start", "80"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    }
    let pod_id = cri.run_pod_sandbox(&pod, runtime.handler());
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let mut config = container_config(name, TEST_IMAGE, &["sleep", "100000"]);
        config.envs = envs(&[("NAME", name)]);
        // CRI's default (POD) shares the pod's; kubelet asks for CONTAINER
        // unless the pod has shareProcessNamespace.
        let pid_namespace = if name == "first" {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        };
        set_pid_namespace(&mut config, pid_namespace);
        if name == "first" {
            let linux = config.linux.get_or_insert_with(Default::default);
            let context = linux.security_context.get_or_insert_with(Default::default);
            context.capabilities = Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            });
        }
        let id = cri.create_container(&pod_id, &config, &pod);
        cri.start_container(&id);
        ids.push(id);
    }
    if runtime == Runtime::Runv {
        assert_eq!(
            vmm_pids().len(),
            1,
            "one runv-vmm for the pod: {:?}",
            processes_matching("runv-vmm")
        );
    }

    // containerd 2.x puts `net.ipv4.ping_group_range` (and the unprivileged
    // port start, which the pod sets itself here) in every pod's sandbox
    // spec; 1.x leaves the kernel's default.
    let unprivileged_ping = if ContainerdVersion::on_path().major >= 2 {
        "0\t2147483647"
    } else {
        "1\t0"
    };
    let host_boot_id =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("host boot_id");
    let mut boot_ids = Vec::new();
    for (id, name) in ids.iter().zip(["first", "second"]) {
        let exec = cri.exec_sync(
            id,
            &[
                "sh",
                "-c",
                "echo $NAME; cat /proc/sys/kernel/random/boot_id; hostname; \
                 cat /proc/sys/kernel/shm_rmid_forced \
                 /proc/sys/net/ipv4/ip_unprivileged_port_start \
                 /proc/sys/net/ipv4/ping_group_range; \
                 echo \"pid1 $(tr '\\0' ' ' </proc/1/cmdline)\"; \
                 grep -v '^#' /etc/resolv.conf; exit 4",
            ],
            60,
        );
        assert_eq!(exec.exit_code, 4, "{exec:?}");
        let out = text(&exec.stdout);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(name), "{out}");
        boot_ids.push(lines.next().unwrap_or_default().to_owned());
        assert_eq!(lines.next(), Some("two"), "the pod's hostname: {out}");
        assert_eq!(
            lines.next(),
            Some("1"),
            "the pod's kernel.shm_rmid_forced: {out}"
        );
        assert_eq!(
            lines.next(),
            Some("80"),
            "the pod's net.ipv4.ip_unprivileged_port_start: {out}"
        );
        assert_eq!(
            lines.next(),
            Some(unprivileged_ping),
            "net.ipv4.ping_group_range, which containerd 2.x sets in every pod: {out}"
        );
        let pid1 = lines.next().unwrap_or_default();
        assert_eq!(
            pid1 == "pid1 sleep 100000 ",
            name == "second",
            "PID 1 is its own init only outside the pod's PID namespace: {out}"
        );
        if name == "first" && runtime == Runtime::Runv {
            assert_eq!(
                pid1, "pid1 /pause --pod-pid-holder ",
                "PID 1 of the pod's namespace: {out}"
            );
        }
        let resolv: Vec<&str> = lines.collect();
        for expected in [
            "nameserver 192.0.2.53",
            "search pods.example.test",
            "options ndots:2",
        ] {
            assert!(
                resolv.contains(&expected),
                "the pod's resolv.conf lacks {expected:?}: {out}"
            );
        }
    }
    assert_eq!(
        boot_ids[0], boot_ids[1],
        "both containers run in one kernel"
    );
    if runtime == Runtime::Runv {
        assert_ne!(
            boot_ids[0],
            host_boot_id.trim(),
            "the containers run in the pod's VM, not on the host"
        );
        assert_task_api_version(&containerd);
    }

    // With CAP_NET_ADMIN a container makes a bridge (critest's check); the
    // guest's kernel has netfilter for iptables, legacy and nft, and conntrack.
    let mut script =
        String::from("brctl addbr runvbr0 && ip link show runvbr0 >/dev/null && echo bridge");
    if runtime == Runtime::Runv {
        script.push_str(
            "; for f in /proc/net/ip_tables_names /proc/net/ip6_tables_names \
             /proc/sys/net/netfilter/nf_conntrack_max; do test -e $f || echo no $f; done",
        );
    }
    let exec = cri.exec_sync(&ids[0], &["sh", "-c", &script], 60);
    assert_eq!(
        (exec.exit_code, text(&exec.stdout).trim()),
        (0, "bridge"),
        "a bridge and netfilter in the pod: {exec:?}"
    );

    let stats = cri.container_stats(&ids[0]);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    assert!(
        memory.unwrap_or(0) > 0 && cpu.unwrap_or(0) > 0,
        "ContainerStats: {stats:?}"
    );

    let limit = 96 << 20;
    let resources = LinuxContainerResources {
        memory_limit_in_bytes: limit,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    cri.update_container_resources(&ids[0], &resources);
    let read = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
    let exec = cri.exec_sync(&ids[0], &["sh", "-c", read], 60);
    assert_eq!(
        text(&exec.stdout).trim(),
        limit.to_string(),
        "memory limit seen in the container: {exec:?}"
    );

    // StopContainer: `sleep` as its container's init has no SIGTERM handler,
    // so only the SIGKILL after the grace period ends it; a shell that traps
    // SIGTERM ends at once, with its own status.
    let polite = {
        let script = "trap 'exit 3' TERM; while :; do sleep 1; done";
        let mut config = container_config("polite", TEST_IMAGE, &["sh", "-c", script]);
        set_pid_namespace(&mut config, NamespaceMode::Pod);
        let id = cri.create_container(&pod_id, &config, &pod);
        cri.start_container(&id);
        id
    };
    // In the pod's PID namespace: the first container's init, not the second's.
    let seen = "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -o 'sleep 1[0]0000' | wc -l";
    let exec = cri.exec_sync(&polite, &["sh", "-c", seen], 60);
    assert_eq!(
        text(&exec.stdout).trim(),
        "1",
        "sleepers seen in the pod's PID namespace: {exec:?}"
    );
    let grace = 4;
    let started = Instant::now();
    cri.stop_container(&ids[1], grace);
    let took = started.elapsed();
    let status = cri.container_status(&ids[1]);
    assert!(
        took >= Duration::from_secs(grace as u64) && took < Duration::from_secs(60),
        "StopContainer of a container ignoring SIGTERM took {took:?} (grace {grace} s)"
    );
    assert_eq!(
        (status.state, status.exit_code),
        (k8s_cri::v1::ContainerState::ContainerExited as i32, 137),
        "after StopContainer, SIGKILLed: {status:?}"
    );
    let started = Instant::now();
    cri.stop_container(&polite, 120);
    let took = started.elapsed();
    let status = cri.container_status(&polite);
    assert!(
        took < Duration::from_secs(60),
        "StopContainer of a container that exits on SIGTERM took {took:?}"
    );
    assert_eq!(
        (status.state, status.exit_code),
        (k8s_cri::v1::ContainerState::ContainerExited as i32, 3),
        "after StopContainer, its own exit status: {status:?}"
    );
    ids.push(polite);

    cri.stop_pod_sandbox(&pod_id);
    for id in &ids {
        let state = cri.container_status(id).state;
        assert_eq!(
            state,
            k8s_cri::v1::ContainerState::ContainerExited as i32,
            "container {id} after StopPodSandbox"
        );
    }
    cri.remove_pod_sandbox(&pod_id);
    assert!(
        cri.list_pod_sandboxes(None).is_empty(),
        "pods left after RemovePodSandbox"
    );
    assert!(
        cri.list_containers(None).is_empty(),
        "containers left after RemovePodSandbox"
    );
    finish(containerd);
}

/// Gives the container the pod's PID namespace (`Pod`, Kubernetes'
/// shareProcessNamespace) or one of its own (`Container`).
fn set_pid_namespace(config: &mut ContainerConfig, mode: NamespaceMode) {
    let linux = config.linux.get_or_insert_with(Default::default);
    let context = linux.security_context.get_or_insert_with(Default::default);
    let namespaces = context
        .namespace_options
        .get_or_insert_with(Default::default);
    namespaces.pid = mode as i32;
}

/// SIGKILL of runv-vmm under a running `ctr run --rm`: the task exits, ctr
/// returns, and the shim cleans up.
#[test]
fn fault_vmm_killed() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's VMM only");
    }
    let containerd = Containerd::start();
    let args = runtime.run_args(&containerd, &["--rm", TEST_IMAGE, "v1", "sleep", "100000"]);
    let mut ctr = containerd.ctr_command("default");
    ctr.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ctr = ctr.spawn().expect("spawn ctr run");
    wait_task_status(&containerd, "v1", "RUNNING", Duration::from_secs(180));
    let vmms = vmm_pids();
    assert_eq!(
        vmms.len(),
        1,
        "one runv-vmm: {:?}",
        processes_matching("runv-vmm")
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmms[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL runv-vmm");
    let run = wait_output(ctr, Duration::from_secs(120)).unwrap_or_else(|out| {
        panic!(
            "ctr run did not return after its VMM died: {out:?}\n{}",
            containerd.log_tail()
        )
    });
    assert!(
        !run.status.success(),
        "ctr run of a task whose VM died: {run:?}"
    );
    finish(containerd);
}

/// The CRI cgroup parent of `cri_sandbox_task_is_the_vm`'s pod.
const POD_CGROUP_PARENT: &str = "/runv-tests-cri";

/// Removes the cgroup parent a test's pods had, after checking that the
/// pods' own cgroups below it are gone.
fn remove_cgroup_parent(parent: &str) {
    let dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|hierarchy| hierarchy.path().join(parent.trim_start_matches('/')))
        .chain([Path::new("/sys/fs/cgroup").join(parent.trim_start_matches('/'))])
        .filter(|dir| dir.is_dir())
        .collect();
    let mut left = Vec::new();
    for dir in &dirs {
        for entry in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                left.push(entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    assert!(left.is_empty(), "pod cgroups left: {left:?}");
}

/// A CRI pod's VM cannot take more host memory than its cgroup parent allows
/// (as kubelet sets a pod's limit): a 512 MiB guest whose container touches
/// 400 MiB, under a 256 MiB parent, has its VMM OOM-killed on the host, not
/// the host's memory taken; its task exits and the pod goes cleanly.
#[test]
fn cri_pod_memory_is_bounded_by_its_host_cgroup() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's VM in the pod's cgroup");
    }
    const PARENT: &str = "/runv-tests-memory";
    const LIMIT: u64 = 256 << 20;
    let root = Path::new("/sys/fs/cgroup");
    let v2 = root.join("cgroup.controllers").exists();
    let parent = if v2 {
        // The memory controller must reach the parent.
        std::fs::write(root.join("cgroup.subtree_control"), "+memory")
            .expect("enable the memory controller at the cgroup root");
        root.join(PARENT.trim_start_matches('/'))
    } else {
        root.join("memory").join(PARENT.trim_start_matches('/'))
    };
    std::fs::create_dir_all(&parent).expect("create the pod's cgroup parent");
    let (limit_file, events_file) = if v2 {
        ("memory.max", "memory.events")
    } else {
        ("memory.limit_in_bytes", "memory.oom_control")
    };
    std::fs::write(parent.join(limit_file), LIMIT.to_string()).expect("set the memory limit");
    if v2 {
        // No swap to escape to.
        let _ = std::fs::write(parent.join("memory.swap.max"), "0");
    }

    let containerd = Containerd::start();
    let cri = containerd.cri();
    let mut pod = pod_config_annotated("memhog", &[(MEMORY_ANNOTATION, "512")]);
    if let Some(linux) = pod.linux.as_mut() {
        linux.cgroup_parent = PARENT.into();
    }
    let pod_id = cri.run_pod_sandbox(&pod, runtime.handler());
    let config = container_config(
        "hog",
        TEST_IMAGE,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=400M count=1; echo survived; sleep 100000",
        ],
    );
    let id = cri.create_container(&pod_id, &config, &pod);
    cri.start_container(&id);
    let vmm_gone = wait_until(Duration::from_secs(240), || vmm_pids().is_empty());
    let events = std::fs::read_to_string(parent.join(events_file)).unwrap_or_default();
    let oom_kills: u64 = events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        vmm_gone && oom_kills >= 1,
        "the VM was not bounded by its 256 MiB host cgroup: VMM gone {vmm_gone}, \
         {events_file}:\n{events}\n{}",
        containerd.log_tail()
    );
    if let Ok(peak) = std::fs::read_to_string(parent.join("memory.peak")) {
        eprintln!("the pod's cgroup peaked at {} bytes", peak.trim());
    }
    cri.stop_pod_sandbox(&pod_id);
    cri.remove_pod_sandbox(&pod_id);
    finish(containerd);
    remove_cgroup_parent(PARENT);
}

/// runv-vmm `vmm` of pod `pod_id` is confined: an empty environment, no new
/// privileges, only virtio-fs's capabilities, a seccomp filter on every
/// thread, and its jail: its own mount and pid namespaces (where it is pid 1)
/// and a root that holds its pod's share but none of the host's `/etc`, `/usr`
/// or `/home`.
fn assert_vmm_confined(vmm: i32, pod_id: &str) {
    let proc_file = |name: &str| {
        std::fs::read_to_string(format!("/proc/{vmm}/{name}"))
            .unwrap_or_else(|err| panic!("/proc/{vmm}/{name}: {err}"))
    };
    assert_eq!(proc_file("environ"), "", "the VMM's environment");
    let status = proc_file("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        field("NoNewPrivs:"),
        "1",
        "the VMM may gain privileges:\n{status}"
    );
    // Of root's capabilities it keeps what virtio-fs needs: CHOWN,
    // DAC_OVERRIDE, FOWNER, FSETID, SETGID and SETUID.
    for set in ["CapEff:", "CapBnd:"] {
        assert_eq!(field(set), "00000000000000db", "the VMM's {set}\n{status}");
    }
    assert_eq!(
        field("NSpid:"),
        format!("{vmm} 1"),
        "the VMM's pid namespace"
    );
    assert_every_thread_filtered(vmm);
    for ns in ["mnt", "pid"] {
        let of =
            |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("a namespace");
        assert_ne!(
            of(&vmm.to_string()),
            of("self"),
            "the VMM shares the host's {ns} namespace"
        );
    }
    let root = std::path::PathBuf::from(format!("/proc/{vmm}/root"));
    for host_dir in ["etc", "usr", "home"] {
        assert!(
            !root.join(host_dir).exists(),
            "the VMM's root has the host's /{host_dir}"
        );
    }
    let share = format!("run/runv/{pod_id}/shared");
    assert!(root.join(&share).is_dir(), "the VMM's root has no /{share}");
}

/// Every thread of process `pid` runs under a seccomp filter (`Seccomp: 2`).
fn assert_every_thread_filtered(pid: i32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|err| panic!("/proc/{pid}/task: {err}"));
    let mut threads = Vec::new();
    for task in tasks {
        let path = task.expect("a task entry").path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .unwrap_or_default()
        };
        threads.push((field("Name:"), field("Seccomp:")));
    }
    assert!(threads.len() > 1, "threads of {pid}: {threads:?}");
    assert!(
        threads.iter().all(|(_, mode)| mode == "2"),
        "threads of runv-vmm {pid} without a seccomp filter: {threads:?}"
    );
}

/// A VMM that makes a syscall outside its seccomp filter dies by SIGSYS: its
/// pod's task exits, and the shim's log names the cause. The VMM under test
/// is a build with the test-only `seccomp-trigger` feature
/// (`RUNV_VMM_SECCOMP_TRIGGER`), whose event loop makes such a call on SIGUSR2.
#[test]
fn fault_vmm_killed_by_seccomp() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's VMM only");
    }
    let trigger = std::env::var_os("RUNV_VMM_SECCOMP_TRIGGER").unwrap_or_else(|| {
        panic!(
            "RUNV_VMM_SECCOMP_TRIGGER is not set: scripts/build-vmm --seccomp-trigger \
             (scripts/test runs it)"
        )
    });
    let containerd = Containerd::start();
    containerd.write_runv_config(
        &RunvConfig {
            vmm: trigger.into(),
            ..RunvConfig::from_env()
        }
        .to_toml(),
    );
    let args = runtime.run_args(&containerd, &["-d", TEST_IMAGE, "sc1", "sleep", "100000"]);
    containerd.ctr(&strs(&args));
    wait_task_status(&containerd, "sc1", "RUNNING", Duration::from_secs(180));
    let [vmm] = vmm_pids()[..] else {
        panic!("not one runv-vmm: {:?}", processes_matching("runv-vmm"));
    };
    assert_vmm_confined(vmm, "sc1");
    // ctr puts a container in the cgroup /<namespace>/<id>: so is its VM.
    assert_eq!(
        cgroup_of(vmm, "memory"),
        "/default/sc1",
        "the VMM's memory cgroup"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .expect("SIGUSR2 runv-vmm");
    wait_task_status(&containerd, "sc1", "STOPPED", Duration::from_secs(60));
    let log_path = containerd.dir().join("containerd.log");
    let said = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| {
            log.contains(&format!("VMM {vmm} was killed by SIGSYS")) && log.contains("seccomp")
        })
    });
    assert!(
        said,
        "the shim's log does not say the VMM died by seccomp\n{}",
        containerd.log_tail()
    );
    containerd.ctr(&["tasks", "rm", "-f", "sc1"]);
    containerd.ctr(&["containers", "rm", "sc1"]);
    finish(containerd);
}

/// SIGKILL of the shim: `ctr task rm -f` and `ctr c rm` still clean everything
/// (containerd runs the shim's `delete` for a dead shim).
#[test]
fn fault_shim_killed() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's shim only");
    }
    let containerd = Containerd::start();
    let args = runtime.run_args(&containerd, &["-d", TEST_IMAGE, "s1", "sleep", "100000"]);
    containerd.ctr(&strs(&args));
    wait_task_status(&containerd, "s1", "RUNNING", Duration::from_secs(60));
    let shims = containerd.shims();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the shim");
    // containerd may already have cleaned up the dead shim's task.
    let rm = containerd.ctr_output(&["tasks", "rm", "-f", "s1"]);
    assert!(
        rm.status.success() || text(&rm.stderr).contains("not found"),
        "ctr task rm -f after the shim died: {rm:?}\n{}",
        containerd.log_tail()
    );
    containerd.ctr(&["containers", "rm", "s1"]);
    finish(containerd);
}

/// Bad input fails the create with a message naming the problem and leaves
/// nothing: a malformed config.toml, a missing kernel, a bad annotation value,
/// a memory size above `max_memory_mib` (through ctr and through the CRI). No VM
/// boots for them; one VM checks that a size within the maximum is taken.
#[test]
fn bad_input_is_refused_by_name() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's config only");
    }
    let containerd = Containerd::start();
    let config_path = containerd.runv_config_path().display().to_string();
    let refused = |id: &str, extra: &[&str], names: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["--rm", TEST_IMAGE, id, "echo", "never"]);
        let run = containerd.ctr_output(&strs(&runtime.run_args(&containerd, &args)));
        let stderr = text(&run.stderr);
        assert!(
            !run.status.success() && !text(&run.stdout).contains("never"),
            "{id} ran: {run:?}"
        );
        for name in names {
            assert!(
                stderr.contains(name),
                "{id}: the error does not name {name:?}: {stderr}"
            );
        }
        assert_eq!(
            containerd.ctr(&["containers", "ls", "-q"]),
            "",
            "{id} left a container"
        );
        assert_clean();
    };

    containerd.write_runv_config("vmm = \"/usr/bin/runv-vmm\"\nkernel = [unclosed\n");
    refused("b1", &[], &[&config_path]);

    let missing = RunvConfig {
        kernel: "/nonexistent/vmlinux".into(),
        ..RunvConfig::from_env()
    };
    containerd.write_runv_config(&missing.to_toml());
    refused("b2", &[], &["/nonexistent/vmlinux"]);

    containerd.write_runv_config(&RunvConfig::from_env().to_toml());
    let annotation = format!("{VCPUS_ANNOTATION}=lots");
    refused("b3", &["--annotation", &annotation], &[VCPUS_ANNOTATION]);
    // A tenant's size above the config's maximum (default 16384 MiB) is refused,
    // naming the annotation and the maximum.
    let huge = format!("{MEMORY_ANNOTATION}=1048576");
    refused(
        "b4",
        &["--annotation", &huge],
        &[MEMORY_ANNOTATION, "above max_memory_mib = 16384"],
    );
    // One within it boots a guest of that size (256 MiB without it).
    let within = format!("{MEMORY_ANNOTATION}=512");
    let args = runtime.run_args(
        &containerd,
        &[
            "--rm",
            "--annotation",
            &within,
            TEST_IMAGE,
            "b5",
            "grep",
            "MemTotal",
            "/proc/meminfo",
        ],
    );
    let run = containerd.ctr_output(&strs(&args));
    assert!(run.status.success(), "{run:?}\n{}", containerd.log_tail());
    let mem_total_kib = text(&run.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {run:?}"));
    assert!(
        mem_total_kib > 300 << 10,
        "a 512 MiB guest shows MemTotal {mem_total_kib} kB"
    );

    let cri = containerd.cri();
    let pod = pod_config_annotated("bad-annotation", &[(VCPUS_ANNOTATION, "lots")]);
    let status = cri
        .try_run_pod_sandbox(&pod, runtime.handler())
        .expect_err("RunPodSandbox with a bad annotation value");
    assert!(
        status.message().contains(VCPUS_ANNOTATION),
        "RunPodSandbox: {status:?}"
    );
    assert!(
        cri.list_pod_sandboxes(None).is_empty(),
        "a failed RunPodSandbox left a pod"
    );

    // The host's namespaces: a VM cannot share them; each is refused, naming
    // the field that asked for it, before a VM boots.
    refused("b6", &["--net-host"], &["hostNetwork"]);
    let node = NamespaceMode::Node as i32;
    for (field, options) in [
        (
            "hostPID",
            NamespaceOption {
                pid: node,
                ..Default::default()
            },
        ),
        (
            "hostIPC",
            NamespaceOption {
                ipc: node,
                ..Default::default()
            },
        ),
        (
            "hostNetwork",
            NamespaceOption {
                network: node,
                ..Default::default()
            },
        ),
    ] {
        let mut pod = pod_config(&format!("host-{}", field.to_lowercase()));
        pod.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(options),
                ..Default::default()
            }),
            ..Default::default()
        });
        let status = cri
            .try_run_pod_sandbox(&pod, runtime.handler())
            .expect_err(field);
        assert!(status.message().contains(field), "{field}: {status:?}");
        assert!(
            cri.list_pod_sandboxes(None).is_empty(),
            "a refused {field} pod was left"
        );
        assert_clean();
    }
    finish(containerd);
}

/// One VM, a privileged container that mounts the pod's virtio-fs share itself
/// and tries to write everywhere in it: at its root and in its container's
/// directory (a directory, a file, a symlink where the shim will mount next,
/// 32 MiB to fill it). Every attempt fails; its writable volume still takes
/// writes; a read-only volume with a submount is read-only throughout.
#[test]
fn guest_cannot_write_the_share() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's share only");
    }
    let containerd = Containerd::start();
    let scratch = Scratch::new("runv-share");
    let writable = scratch.path().join("writable");
    let read_only = scratch.path().join("read-only");
    let submount = read_only.join("sub");
    std::fs::create_dir_all(&writable).expect("make the writable volume");
    std::fs::create_dir_all(&submount).expect("make the read-only volume");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "runv-test-sub"])
        .arg(&submount)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount a tmpfs on {}", submount.display());
    let script = r#"
        mkdir -p /s && mount -t virtiofs runv /s || { echo no-share; exit 1; }
        try() { if "$@" 2>/dev/null; then echo "ALLOWED: $*"; fi; }
        for d in /s /s/*; do
            try mkdir "$d/new-dir"; try touch "$d/new-file"; try ln -s /etc "$d/new-link"
            try mkdir "$d/mounts/97"; try ln -s /etc "$d/mounts/98"
        done
        try dd if=/dev/zero of=/s/fill bs=1M count=32
        try dd if=/dev/zero of=/s/p1/fill bs=1M count=32
        echo written > /vol/out || echo "volume write failed"
        try touch /ro/top; try touch /ro/sub/below
        for m in /s/p1/mounts/*; do
            [ -d "$m/sub" ] || continue
            echo read-only-volume-in-share; try touch "$m/top"; try touch "$m/sub/below"
        done
        echo "entries: $(ls -A /s | tr '\n' ' ')"
        echo done"#;
    let vol = format!(
        "type=bind,src={},dst=/vol,options=rbind:rw",
        writable.display()
    );
    let ro = format!(
        "type=bind,src={},dst=/ro,options=rbind:ro",
        read_only.display()
    );
    let args = runtime.run_args(
        &containerd,
        &[
            "--rm",
            "--privileged",
            "--mount",
            &vol,
            "--mount",
            &ro,
            TEST_IMAGE,
            "p1",
            "sh",
            "-c",
            script,
        ],
    );
    let run = containerd.ctr_output(&strs(&args));
    let stdout = text(&run.stdout);
    let unmounted = Command::new("umount").arg(&submount).status();
    assert!(
        unmounted.is_ok_and(|s| s.success()),
        "umount {}",
        submount.display()
    );
    assert!(
        run.status.success() && stdout.contains("done"),
        "{run:?}\n{}",
        containerd.log_tail()
    );
    assert!(
        !stdout.contains("ALLOWED"),
        "the guest wrote the share:\n{stdout}"
    );
    assert!(!stdout.contains("failed"), "{stdout}");
    assert!(stdout.contains("read-only-volume-in-share"), "{stdout}");
    assert!(
        stdout.contains("entries: p1 \n"),
        "the share's root: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(writable.join("out"))
            .ok()
            .as_deref(),
        Some("written\n"),
        "the writable volume took no write"
    );
    let in_read_only: Vec<_> = std::fs::read_dir(&read_only)
        .expect("read the read-only volume")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(in_read_only, vec![std::ffi::OsString::from("sub")]);
    finish(containerd);
}

/// Benchmark (bench/start-latency), not a test: `ctr run --rm <image> x echo` with
/// runc and with runv alternating (`RUNV_BENCH_RUNS`, default 10, each), medians
/// and their ratio; host memory per idle pod (PSS of shim + VMM, without and with
/// the guest's RAM) over `RUNV_BENCH_PODS` (default 10) pods; that many pods
/// started at once with each runtime: all succeed, total times and their ratio.
#[test]
#[ignore = "benchmark: run through bench/start-latency"]
fn start_latency_memory_and_concurrency_against_runc() {
    let runv = Runtime::under_test();
    assert_eq!(
        runv,
        Runtime::Runv,
        "the benchmark measures runv against runc"
    );
    let env_count = |var: &str| -> usize {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10)
    };
    let (runs, pods) = (env_count("RUNV_BENCH_RUNS"), env_count("RUNV_BENCH_PODS"));
    let containerd = Containerd::start();
    // Each run's wall-clock start and end, to place the shim's log lines in it.
    let mut spans = Vec::new();
    let mut timed_echo = |runtime: Runtime, id: &str| -> Duration {
        let args = runtime.run_args(&containerd, &["--rm", TEST_IMAGE, id, "echo", "x"]);
        let (started, wall) = (Instant::now(), SystemTime::now());
        let out = containerd.ctr(&strs(&args));
        let took = started.elapsed();
        spans.push((id.to_owned(), wall, SystemTime::now()));
        assert_eq!(out, "x\n", "{runtime:?} {id}");
        took
    };
    let (mut runc_times, mut runv_times) = (Vec::new(), Vec::new());
    for i in 0..runs {
        runc_times.push(timed_echo(Runtime::Runc, &format!("lat-runc-{i}")));
        runv_times.push(timed_echo(Runtime::Runv, &format!("lat-runv-{i}")));
    }
    runc_times.sort();
    runv_times.sort();
    let (runc, runv_median) = (runc_times[runs / 2], runv_times[runs / 2]);
    println!(
        "start latency (ctr run --rm, echo), median of {runs}: runv {:.2} s, runc {:.2} s, \
         ratio runv/runc {:.2}",
        runv_median.as_secs_f64(),
        runc.as_secs_f64(),
        runv_median.as_secs_f64() / runc.as_secs_f64()
    );

    // The jail's cost: the same runs without it, and the shim's spawn times
    // (fork to exec, where the jail is made) from its log.
    containerd.write_runv_config(
        &RunvConfig {
            vmm_jail: false,
            ..RunvConfig::from_env()
        }
        .to_toml(),
    );
    let mut unjailed_times: Vec<Duration> = (0..runs)
        .map(|i| timed_echo(Runtime::Runv, &format!("lat-nojail-{i}")))
        .collect();
    containerd.write_runv_config(&RunvConfig::from_env().to_toml());
    unjailed_times.sort();
    let unjailed = unjailed_times[runs / 2];
    let log = std::fs::read_to_string(containerd.dir().join("containerd.log")).unwrap_or_default();

    // From a VM template: one run to make it, then the timed ones (read
    // after `log`, so that the boot phases below are cold boots only).
    let templates = Path::new(shim::paths::TEMPLATES_ROOT);
    let _ = std::fs::remove_dir_all(templates);
    containerd.write_runv_config(
        &RunvConfig {
            vm_templates: true,
            ..RunvConfig::from_env()
        }
        .to_toml(),
    );
    let making = timed_echo(Runtime::Runv, "lat-make-template");
    let mut template_times: Vec<Duration> = (0..runs)
        .map(|i| timed_echo(Runtime::Runv, &format!("lat-template-{i}")))
        .collect();
    containerd.write_runv_config(&RunvConfig::from_env().to_toml());
    template_times.sort();
    let from_template = template_times[runs / 2];
    println!(
        "start from a VM template (ctr run --rm, echo), median of {runs}: {:.2} s, ratio to \
         runv's cold start {:.2}, to runc {:.2} (the run that made the template: {:.2} s)",
        from_template.as_secs_f64(),
        from_template.as_secs_f64() / runv_median.as_secs_f64(),
        from_template.as_secs_f64() / runc.as_secs_f64(),
        making.as_secs_f64()
    );
    let (jailed_spawn, jailed_setup, guest_boot) = vmm_phases(&log, "lat-runv-", "in its jail");
    let (unjailed_spawn, unjailed_setup, _) = vmm_phases(&log, "lat-nojail-", "no jail");
    let vm_ms = jailed_spawn + jailed_setup + guest_boot;
    println!(
        "runv's start, medians of {runs}: VMM spawn {jailed_spawn:.1} ms, VMM setup (exec to \
         first KVM_RUN) {jailed_setup:.1} ms, guest boot to the agent {guest_boot:.1} ms; the \
         rest of ctr run --rm echo (shim, container create, start, echo, delete) {:.1} ms; \
         runc's whole ctr run --rm echo {:.1} ms",
        runv_median.as_secs_f64() * 1000.0 - vm_ms,
        runc.as_secs_f64() * 1000.0
    );
    print_echo_phases(&log, &spans, ("lat-runv-", "cold"));
    let template_log =
        std::fs::read_to_string(containerd.dir().join("containerd.log")).unwrap_or_default();
    // A restored guest has no boot for the VMM to time: the rest of the VM's
    // start is in the phases below (the agent's first answers).
    let (spawn, setup, _) = vmm_phases(&template_log, "lat-template-", "in its jail");
    println!(
        "runv's start from a VM template, medians of {runs}: VMM spawn {spawn:.1} ms, VMM setup \
         (exec to first KVM_RUN, the restore among it) {setup:.1} ms"
    );
    print_echo_phases(&template_log, &spans, ("lat-template-", "from a template"));
    let jail_cost = jailed_spawn - unjailed_spawn;
    println!(
        "the VMM's jail, medians of {runs}: ctr run --rm echo {:.2} s with it, {:.2} s without \
         (ratio {:.3}); VMM spawn (fork to exec) {jailed_spawn:.1} ms with it, \
         {unjailed_spawn:.1} ms without; VMM setup (exec to first KVM_RUN) {jailed_setup:.1} ms \
         with it, {unjailed_setup:.1} ms without: the jail costs {jail_cost:.1} ms, {:.1}% of \
         the VMM's setup (spawn + setup) without it",
        runv_median.as_secs_f64(),
        unjailed.as_secs_f64(),
        runv_median.as_secs_f64() / unjailed.as_secs_f64(),
        100.0 * jail_cost / (unjailed_spawn + unjailed_setup)
    );

    let guest_kib = u64::from(RunvConfig::from_env().default_memory_mib) * 1024;
    let (runv_host, runv_total) = idle_pods_pss(&containerd, runv, pods, guest_kib);
    let (runc_total, _) = idle_pods_pss(&containerd, Runtime::Runc, pods, guest_kib);
    let mib = |kib: u64| kib as f64 / 1024.0 / pods as f64;
    println!(
        "host memory per idle pod (PSS, {pods} pods): runv {:.1} MiB for shim + VMM, {:.1} MiB \
         with the guest's RAM ({:.1} MiB of the {} MiB guest touched); runc {:.1} MiB for shim + \
         container; ratio runv/runc {:.2} without the guest's RAM, {:.2} with it",
        mib(runv_host),
        mib(runv_total),
        mib(runv_total - runv_host),
        guest_kib / 1024,
        mib(runc_total),
        runv_host as f64 / runc_total.max(1) as f64,
        runv_total as f64 / runc_total.max(1) as f64
    );
    // The same from the template the timed runs made: the pages its guests
    // only read are counted once, split among them.
    containerd.write_runv_config(
        &RunvConfig {
            vm_templates: true,
            ..RunvConfig::from_env()
        }
        .to_toml(),
    );
    let (template_host, template_total) = idle_pods_pss(&containerd, runv, pods, guest_kib);
    containerd.write_runv_config(&RunvConfig::from_env().to_toml());
    println!(
        "host memory per idle pod from a VM template (PSS, {pods} pods): runv {:.1} MiB for \
         shim + VMM, {:.1} MiB with the guest's RAM; ratio to runv's cold pod {:.2}, to runc \
         {:.2}; the template's memory file holds {:.1} MiB on tmpfs, once for its shape",
        mib(template_host),
        mib(template_total),
        template_total as f64 / runv_total.max(1) as f64,
        template_total as f64 / runc_total.max(1) as f64,
        template_memory_kib(templates) as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(templates);

    let runv_at_once = run_at_once(&containerd, runv, pods);
    let runc_at_once = run_at_once(&containerd, Runtime::Runc, pods);
    println!(
        "{pods} pods started at once (ctr run --rm echo each): all succeeded, runv in {:.1} s, \
         runc in {:.1} s, ratio runv/runc {:.2}",
        runv_at_once.as_secs_f64(),
        runc_at_once.as_secs_f64(),
        runv_at_once.as_secs_f64() / runc_at_once.as_secs_f64()
    );
    finish(containerd);
}

/// The shim's log lines that end each phase of a runv `ctr run --rm echo`,
/// in order, with the phase's name: the Create RPC arrives, the VM's boot is
/// done (the agent answered), the container's rootfs is in the share, the
/// agent has created it, its stdio is attached (these three at debug level,
/// which the benchmark's runv config asks for), the Start RPC arrives, the
/// Delete RPC arrives, the pod is torn down (after containerd's Shutdown).
/// Each is found by its text and the id.
const ECHO_MARKS: [(&str, &str); 8] = [
    (
        "create {id} (",
        "the shim's start and containerd until Create",
    ),
    (
        "pod {id}: VMM spawn",
        "the VM's boot (the shim's setup, VMM spawn and setup, guest boot, agent ready)",
    ),
    (
        "container {id}: rootfs and volumes in the share",
        "the rootfs into the share",
    ),
    (
        "container {id}: created in the guest",
        "the agent's CreateContainer",
    ),
    ("container {id}: stdio attached", "stdio attached"),
    ("start {id} ", "containerd until Start"),
    (
        "delete {id} ",
        "its start, the echo and its exit until Delete",
    ),
    ("pod {id}: torn down", "the delete and the VM's shutdown"),
];

/// Medians of the VMM's spawn, setup and guest boot (ms) of the pods whose ids
/// start with `prefix`, from the shim's line per boot in containerd's `log`:
/// "pod ID: VMM spawn S ms (`how`), VMM setup T ms, guest boot B ms".
fn vmm_phases(log: &str, prefix: &str, how: &str) -> (f64, f64, f64) {
    let (mut spawns, mut setups, mut boots) = (Vec::new(), Vec::new(), Vec::new());
    let pod = format!("pod {prefix}");
    for line in log.lines().filter(|line| line.contains(&pod)) {
        let Some((_, rest)) = line.split_once("VMM spawn ") else {
            continue;
        };
        if !rest.contains(&format!("({how})")) {
            continue;
        }
        let number_after = |key: &str| -> Option<f64> {
            rest.split_once(key)?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if let (Some(spawn), Some(setup), Some(boot)) = (
            number_after(""),
            number_after("VMM setup "),
            number_after("guest boot "),
        ) {
            spawns.push(spawn);
            setups.push(setup);
            boots.push(boot);
        }
    }
    assert!(
        !spawns.is_empty(),
        "no VMM spawn ({how}) of a pod {prefix}* in the shim's log"
    );
    (median(spawns), median(setups), median(boots))
}

/// Prints where runv's `ctr run --rm echo` spends its time (`how`: cold or
/// from a template), medians over the runs among `spans` (id, wall-clock start
/// and end) whose ids start with `prefix`: from the times of the shim's lines
/// in containerd's `log` ([`ECHO_MARKS`]).
fn print_echo_phases(
    log: &str,
    spans: &[(String, SystemTime, SystemTime)],
    (prefix, how): (&str, &str),
) {
    let time_of = |line: &str| -> Option<SystemTime> {
        let stamp = line.split_once("time=\"")?.1.split('"').next()?;
        let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .ok()?;
        let nanos = u64::try_from(at.unix_timestamp_nanos()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
    };
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); ECHO_MARKS.len() + 1];
    let runs = spans.iter().filter(|(id, ..)| id.starts_with(prefix));
    let mut count = 0;
    for (id, started, ended) in runs {
        count += 1;
        let mut marks = vec![*started];
        for (mark, _) in ECHO_MARKS {
            let text = mark.replace("{id}", id);
            let at = log
                .lines()
                .filter(|line| line.contains(&text))
                .find_map(time_of)
                .unwrap_or_else(|| panic!("no shim log line \"{text}\" with a time for {id}"));
            marks.push(at);
        }
        marks.push(*ended);
        for (phase, pair) in phases.iter_mut().zip(marks.windows(2)) {
            let took = pair[1]
                .duration_since(pair[0])
                .unwrap_or_else(|_| panic!("{id}: the shim's log lines are out of order"));
            phase.push(took.as_secs_f64() * 1000.0);
        }
    }
    let names = ECHO_MARKS
        .iter()
        .map(|(_, name)| *name)
        .chain(["after the pod's teardown until ctr exits"]);
    let parts: Vec<String> = names
        .zip(phases)
        .map(|(name, values)| format!("{name} {:.1} ms", median(values)))
        .collect();
    println!(
        "runv's ctr run --rm echo {how}, phase by phase from the shim's log, medians of \
         {count}: {}",
        parts.join("; ")
    );
}

/// The median of `values` (the upper one of an even count); panics if empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `pods` `ctr run --rm echo` of `runtime` at once; how long until all
/// had answered (each must print its echo).
fn run_at_once(containerd: &Containerd, runtime: Runtime, pods: usize) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..pods)
            .map(|i| {
                let id = format!("many-{}-{i}", runtime.name());
                let args = runtime.run_args(containerd, &["--rm", TEST_IMAGE, &id, "echo", "x"]);
                scope.spawn(move || containerd.ctr(&strs(&args)))
            })
            .collect();
        for run in runs {
            assert_eq!(run.join().expect("a concurrent ctr run"), "x\n");
        }
    });
    started.elapsed()
}

/// Starts `pods` idle `runtime` containers (`sleep`), measures the PSS of their
/// shims and everything under them (runv: the VMMs; runc: the containers) once
/// it has settled (a runv guest reports what it freed after boot over some
/// seconds), then removes them: (total without mappings of `guest_kib`, total)
/// in KiB.
fn idle_pods_pss(
    containerd: &Containerd,
    runtime: Runtime,
    pods: usize,
    guest_kib: u64,
) -> (u64, u64) {
    let ids: Vec<String> = (0..pods)
        .map(|i| format!("idle-{}-{i}", runtime.name()))
        .collect();
    for id in &ids {
        let args = runtime.run_args(containerd, &["-d", TEST_IMAGE, id, "sleep", "100000"]);
        containerd.ctr(&strs(&args));
    }
    for id in &ids {
        wait_task_status(containerd, id, "RUNNING", Duration::from_secs(120));
    }
    if runtime == Runtime::Runv {
        print_guest_memory(containerd, &ids[0]);
    }
    let shims: Vec<i32> = containerd.shims().iter().map(|(pid, _)| *pid).collect();
    assert_eq!(shims.len(), pods, "one shim per {runtime:?} pod");
    let measured = with_descendants(&shims);
    if runtime == Runtime::Runv {
        assert_eq!(vmm_pids().len(), pods, "one VMM per pod");
    }
    let sample = || {
        measured
            .iter()
            .map(|pid| pss_kib(*pid, guest_kib))
            .fold((0, 0), |(without, total), (all, guest)| {
                (without + all - guest, total + all)
            })
    };
    let started = Instant::now();
    let mut last = sample();
    let settled = loop {
        std::thread::sleep(PSS_SETTLE_INTERVAL);
        let now = sample();
        // Settled: less than 1% gone since the last sample.
        if now.1 * 100 >= last.1 * 99 || started.elapsed() >= PSS_SETTLE_TIMEOUT {
            break now;
        }
        last = now;
    };
    println!(
        "{runtime:?} idle pods' PSS settled after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let (without_guest, total) = settled;
    for id in &ids {
        containerd.ctr(&["tasks", "rm", "-f", id]);
        containerd.ctr(&["containers", "rm", id]);
    }
    (without_guest, total)
}

/// KiB the memory files of the templates under `root` hold (their blocks: a
/// snapshot leaves pages of zeros out).
fn template_memory_kib(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let memory = entry.path().join(protocol::vm_config::SNAPSHOT_MEMORY_FILE);
            std::fs::metadata(memory).ok()
        })
        .map(|meta| meta.blocks() / 2)
        .sum()
}

/// How often the idle pods' PSS is sampled until it settles.
const PSS_SETTLE_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for it to settle.
const PSS_SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where an idle pod's guest memory goes, from the guest kernel's
/// `/proc/meminfo` as its container `id` reads it (the guest's own: no
/// namespace virtualises it): what the kernel holds, the page cache (the
/// agent's binary is in it, as shmem), anonymous memory (the agent, the
/// container's processes) and what is free.
fn print_guest_memory(containerd: &Containerd, id: &str) {
    let meminfo = containerd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "meminfo",
        id,
        "cat",
        "/proc/meminfo",
    ]);
    let mib = |key: &str| -> f64 {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {key} in the guest's /proc/meminfo:\n{meminfo}"))
            / 1024.0
    };
    let kernel = mib("Slab") + mib("KernelStack") + mib("PageTables");
    let used = mib("MemTotal") - mib("MemFree");
    println!(
        "guest memory of an idle pod (its /proc/meminfo, MiB): total {:.1}, used {used:.1}: \
         page cache {:.1} (shmem, the agent's binary in its tmpfs root among it, {:.1}), \
         anonymous {:.1}, kernel slab + stacks + page tables {kernel:.1}, the rest (buffers, \
         other kernel allocations) {:.1}; free {:.1}",
        mib("MemTotal"),
        mib("Cached"),
        mib("Shmem"),
        mib("AnonPages"),
        used - mib("Cached") - mib("AnonPages") - kernel,
        mib("MemFree"),
    );
}

/// `roots` and every live process below them.
fn with_descendants(roots: &[i32]) -> Vec<i32> {
    let parent_of = |pid: i32| -> Option<i32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse()
            .ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut found = roots.to_vec();
    loop {
        let before = found.len();
        for &pid in &all {
            if !found.contains(&pid) && parent_of(pid).is_some_and(|p| found.contains(&p)) {
                found.push(pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// PSS of process `pid` and the part of it in the guest's RAM, in KiB, from
/// /proc/<pid>/smaps. The guest's RAM is `guest_kib` of address space from a
/// 2 MiB boundary: one anonymous mapping after a cold boot; from a template,
/// the memory file's data ranges among anonymous mappings, end to end.
fn pss_kib(pid: i32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let field = |line: &str, name: &str| -> Option<u64> {
        line.strip_prefix(name)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    // (start, end, PSS in KiB) of each mapping.
    let mut mappings: Vec<(u64, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|range| range.split_once('-'))
            .and_then(|(start, end)| {
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                ))
            });
        if let Some((start, end)) = range {
            mappings.push((start, end, 0));
        } else if let (Some(pss), Some(last)) = (field(line, "Pss:"), mappings.last_mut()) {
            last.2 += pss;
        }
    }
    let total = mappings.iter().map(|m| m.2).sum();
    let guest_bytes = guest_kib * 1024;
    for (first, &(start, ..)) in mappings.iter().enumerate() {
        if start % (2 << 20) != 0 {
            continue;
        }
        let (mut end, mut pss) = (start, 0);
        for &(from, to, kib) in &mappings[first..] {
            if from != end || to - start > guest_bytes {
                break;
            }
            (end, pss) = (to, pss + kib);
            if end - start == guest_bytes {
                return (total, pss);
            }
        }
    }
    (total, 0)
}

/// Waits for `child` (stdout and stderr piped) to exit within `timeout`; its
/// output, or `Err` with it after killing it.
fn wait_output(mut child: std::process::Child, timeout: Duration) -> Result<Output, Output> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(child.wait_with_output().expect("collect ctr's output"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(child.wait_with_output().expect("collect ctr's output"))
}

/// A CRI pod's sandbox task stands for its VM, through the VMM's API (the VMM
/// runs with no environment, no new privileges and the sandbox's OOM score
/// adjustment): `ctr task metrics` reports the VM's memory (the VMM's RSS, the guest's size as the
/// limit), `ctr task pause`/`resume` stop and restart the vCPUs (the pod's
/// container reports PAUSED meanwhile, and runs on after), and the pod's end
/// asks the VMM to shut the VM down (the shim says so in containerd's log).
#[test]
fn cri_sandbox_task_is_the_vm() {
    use runv_tests::containerd::CRI_NAMESPACE;
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's VMM API only");
    }
    let containerd = Containerd::start();
    let cri = containerd.cri();
    let mut pod = pod_config("vmapi");
    if let Some(linux) = pod.linux.as_mut() {
        linux.cgroup_parent = POD_CGROUP_PARENT.into();
    }
    let pod_id = cri.run_pod_sandbox(&pod, runtime.handler());
    let config = container_config("ticker", TEST_IMAGE, &["sleep", "100000"]);
    let id = cri.create_container(&pod_id, &config, &pod);
    cri.start_container(&id);

    let [vmm] = vmm_pids()[..] else {
        panic!("not one runv-vmm: {:?}", processes_matching("runv-vmm"));
    };
    assert_vmm_confined(vmm, &pod_id);
    // The VMM has the sandbox's OOM score adjustment (containerd's CRI gives
    // it -998).
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{vmm}/oom_score_adj"))
            .expect("the VMM's oom_score_adj")
            .trim(),
        "-998",
        "the VMM's oom_score_adj"
    );
    // The VMM is charged to the pod's cgroup (CRI's cgroup parent + the
    // sandbox id), not to containerd's.
    let pod_cgroup = format!("{POD_CGROUP_PARENT}/{pod_id}");
    for controller in ["memory", "pids"] {
        assert_eq!(
            cgroup_of(vmm, controller),
            pod_cgroup,
            "the VMM's {controller} cgroup"
        );
    }

    let metrics = containerd.ctr_in(CRI_NAMESPACE, &["tasks", "metrics", &pod_id]);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(name)).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in ctr task metrics of the sandbox:\n{metrics}"))
    };
    let (usage, limit) = (value("memory.usage"), value("memory.usage_limit"));
    let guest = u64::from(RunvConfig::from_env().default_memory_mib) << 20;
    assert!(
        usage > 0 && limit == guest,
        "the VM's memory: usage {usage}, limit {limit} (guest memory {guest})\n{metrics}"
    );

    let statuses = || -> Vec<(String, String)> {
        let list = containerd.ctr_in(CRI_NAMESPACE, &["tasks", "ls"]);
        list.lines()
            .skip(1)
            .filter_map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [task, _, status] => Some((task.to_owned(), status.to_owned())),
                    _ => None,
                },
            )
            .collect()
    };
    let all_become = |status: &str| {
        let reached = wait_until(Duration::from_secs(30), || {
            let now = statuses();
            now.len() == 2 && now.iter().all(|(_, s)| s == status)
        });
        assert!(
            reached,
            "the sandbox and its container did not become {status}: {:?}\n{}",
            statuses(),
            containerd.log_tail()
        );
    };
    containerd.ctr_in(CRI_NAMESPACE, &["tasks", "pause", &pod_id]);
    all_become("PAUSED");
    let mut again = containerd.ctr_command(CRI_NAMESPACE);
    again.args(["tasks", "pause", &pod_id]);
    let again = run_with_deadline(again, None, Duration::from_secs(60))
        .unwrap_or_else(|out| panic!("ctr tasks pause of a paused sandbox hung: {out:?}"));
    assert!(
        !again.status.success(),
        "a paused sandbox paused again: {again:?}"
    );
    containerd.ctr_in(CRI_NAMESPACE, &["tasks", "resume", &pod_id]);
    all_become("RUNNING");
    let exec = cri.exec_sync(&id, &["echo", "resumed"], 60);
    assert_eq!(text(&exec.stdout), "resumed\n", "{exec:?}");

    cri.stop_pod_sandbox(&pod_id);
    cri.remove_pod_sandbox(&pod_id);
    // Once DestroySandbox is answered the shim has the VMM stop the VM at
    // once (the API's Shutdown). The VMM may end before its answer is out, or
    // the guest, which powers itself off 100 ms after its own answer, may win
    // on a slow host: the shim says that too.
    let said = [
        format!("pod {pod_id}: VMM API Shutdown sent"),
        format!("pod {pod_id}: the VMM exited before answering Shutdown"),
    ];
    let log_path = containerd.dir().join("containerd.log");
    let shut_down = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|log| said.iter().any(|line| log.contains(line)))
    });
    assert!(
        shut_down,
        "the pod's end went neither through the VMM API's Shutdown nor a power-off \
         ({said:?} not logged)\n{}",
        containerd.log_tail()
    );
    remove_cgroup_parent(POD_CGROUP_PARENT);
    finish(containerd);
}

/// With `vm_templates`, pods start from the template of their shape, made
/// ahead by `runv template make` (no pod makes it again): each runs, execs
/// and reads its own random numbers. A broken template is removed and its pod
/// boots cold; the first pod of another shape makes that shape's template.
#[test]
fn vm_templates_start_pods_with_fresh_randomness() {
    let runtime = Runtime::under_test();
    if runtime != Runtime::Runv {
        return eprintln!("skipped: runv's VM templates only");
    }
    let templates = Path::new(shim::paths::TEMPLATES_ROOT);
    let _ = std::fs::remove_dir_all(templates);
    let containerd = Containerd::start();
    let config = RunvConfig {
        vm_templates: true,
        ..RunvConfig::from_env()
    };
    containerd.write_runv_config(&config.to_toml());
    let log_count = |line: &str| containerd.log_count(line);
    let uuid = |id: &str| {
        let args = runtime.run_args(
            &containerd,
            &[
                "--rm",
                TEST_IMAGE,
                id,
                "cat",
                "/proc/sys/kernel/random/uuid",
            ],
        );
        containerd.ctr(&strs(&args)).trim().to_owned()
    };
    // Made ahead by `runv template make`, with containerd's config for runv.
    let cli = std::env::var("RUNV_CLI").expect("RUNV_CLI: the runv CLI (scripts/test sets it)");
    let runv_config = containerd.runv_config_path();
    let made = Command::new(&cli)
        .args(["template", "make", "--config"])
        .arg(&runv_config)
        .env("PATH", search_path())
        .output()
        .unwrap_or_else(|err| panic!("run {cli}: {err}"));
    assert!(made.status.success(), "runv template make: {made:?}");
    let made_dir = PathBuf::from(String::from_utf8_lossy(&made.stdout).trim());
    assert!(
        made_dir.starts_with(templates) && made_dir.join("memory").is_file(),
        "runv template make printed no template: {made:?}"
    );
    let first = uuid("tpl1");
    assert_eq!(
        log_count(" made in "),
        0,
        "made again though made ahead:\n{}",
        containerd.log_tail()
    );
    assert_eq!(
        log_count("VM started from template"),
        1,
        "{}",
        containerd.log_tail()
    );
    let second = uuid("tpl2");
    assert_eq!(
        log_count("VM started from template"),
        2,
        "{}",
        containerd.log_tail()
    );
    assert_eq!(first.len(), 36, "{first:?}");
    assert_ne!(
        first, second,
        "two pods from one template drew the same numbers"
    );

    // Exec in a pod from the template.
    let args = runtime.run_args(&containerd, &["-d", TEST_IMAGE, "tpl3", "sleep", "100000"]);
    containerd.ctr(&strs(&args));
    wait_task_status(&containerd, "tpl3", "RUNNING", Duration::from_secs(180));
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "e1", "tpl3", "echo", "exec ok"]);
    assert_eq!(exec, "exec ok\n");
    // The guest's memory beyond the template's own pages is the pod's: 32 MiB
    // written in the container leaves the shared memory file as it was.
    use std::os::unix::fs::MetadataExt;
    let memory_file = made_dir.join("memory");
    let file_kib = || std::fs::metadata(&memory_file).unwrap().blocks() / 2;
    let before = file_kib();
    let write = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "tpl3",
        "sh",
        "-c",
        "head -c 33554432 /dev/zero > /tmp/fill && rm /tmp/fill && echo written",
    ]);
    assert_eq!(write, "written\n");
    let after = file_kib();
    assert!(
        after <= before + 1024,
        "the template's memory file grew from {before} KiB to {after} KiB with a pod's writes"
    );
    containerd.ctr(&["task", "kill", "-s", "SIGKILL", "tpl3"]);
    wait_task_status(&containerd, "tpl3", "STOPPED", Duration::from_secs(60));
    containerd.ctr(&["task", "rm", "tpl3"]);
    containerd.ctr(&["container", "rm", "tpl3"]);
    assert_eq!(
        log_count("VM started from template"),
        3,
        "{}",
        containerd.log_tail()
    );

    // A template whose VM does not start is removed; the pod boots cold.
    let [made] = &std::fs::read_dir(templates)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .collect::<Vec<_>>()[..]
    else {
        panic!("not one template in {}", templates.display());
    };
    std::fs::write(made.path().join("state.json"), "{\"version\": 1").unwrap();
    assert_eq!(uuid("tpl-stale").len(), 36);
    assert_eq!(log_count("did not start"), 1, "{}", containerd.log_tail());
    assert!(!made.path().exists(), "the broken template was kept");

    // Another shape: its own template, made by its first pod.
    containerd.write_runv_config(
        &RunvConfig {
            default_memory_mib: 320,
            ..config
        }
        .to_toml(),
    );
    assert_eq!(uuid("tpl4").len(), 36);
    assert_eq!(
        log_count(" made in "),
        1,
        "a new shape's first pod made no template of its own:\n{}",
        containerd.log_tail()
    );
    let kept: Vec<_> = std::fs::read_dir(templates)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .collect();
    // The first shape's was removed as broken; no build directory is left.
    assert_eq!(kept.len(), 1, "the new shape's template only: {kept:?}");
    finish(containerd);
    std::fs::remove_dir_all(templates).unwrap();
}

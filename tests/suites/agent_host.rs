//! Tier 3: runv-agent in host mode, as root, with real namespaces and cgroups, at
//! native speed. Each test starts its own agent and unpacks the test image's
//! busybox as the container rootfs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::Instant;

use protocol::agent::{
    CheckRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, GetOOMEventRequest, Interface, IpAddress, ListProcessesRequest, Mount,
    PauseContainerRequest, RemoveContainerRequest, ResumeContainerRequest, Route, Routes,
    ServingStatus, SignalProcessRequest, StartContainerRequest, StatsContainerRequest,
    StatsContainerResponse, Stdio, TtyWinResizeRequest, UpdateContainerRequest,
    UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest,
};
use protocol::stdio::StreamKind;
use runv_tests::agent_host::{ctx, exec_request, output_stdio, spec, HostAgent, SpecOptions};
use runv_tests::host::require_root;
use runv_tests::scratch::Scratch;

/// An agent and a fresh busybox rootfs.
struct Fixture {
    agent: HostAgent,
    rootfs: PathBuf,
    _image: Scratch,
}

fn fixture() -> Fixture {
    require_root("containers need namespaces, mounts and cgroups");
    let image = Scratch::new("runv-agent-image");
    let rootfs = runv_tests::agent_host::unpack_test_image(image.path());
    Fixture {
        agent: HostAgent::start(),
        rootfs,
        _image: image,
    }
}

fn remove(agent: &HostAgent, cid: &str) {
    let req = RemoveContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent
        .client
        .remove_container(ctx(), &req)
        .unwrap_or_else(|err| panic!("remove {cid}: {err:?}"));
}

fn sh(script: &str) -> Vec<&str> {
    vec!["/bin/sh", "-c", script]
}

fn rpc_code<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn cgroup_dirs(cid: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("runv-tests").join(cid))
        .filter(|p| p.exists())
        .collect()
}

fn mounts_under(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// What the open fds of process `pid` point to.
fn open_fds(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

/// Processes whose parent is `pid` (forked by any of its threads).
fn children_of(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

#[test]
fn echo_is_captured_on_stdout() {
    let f = fixture();
    let out = f.agent.run(
        "echo",
        &f.rootfs,
        &spec(
            "echo",
            &sh("echo hello; echo oops >&2"),
            &SpecOptions::default(),
        ),
    );
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status),
        ("hello\n", "oops\n", 0)
    );
    remove(&f.agent, "echo");
}

#[test]
fn exit_code_is_reported() {
    let f = fixture();
    let out = f.agent.run(
        "exit42",
        &f.rootfs,
        &spec("exit42", &sh("exit 42"), &SpecOptions::default()),
    );
    assert_eq!(out.status, 42, "{out:?}");
    remove(&f.agent, "exit42");
}

#[test]
fn exec_runs_in_the_running_container() {
    let f = fixture();
    let cid = "execd";
    f.agent.create(
        cid,
        &f.rootfs,
        &spec(
            cid,
            &sh("echo ready > /tmp/mark; sleep 60"),
            &SpecOptions::default(),
        ),
        false,
    );
    let init = f.agent.collect(cid, "");
    f.agent.start_container(cid);

    let req = exec_request(
        cid,
        "e1",
        &sh("while [ ! -f /tmp/mark ]; do sleep 0.05; done; cat /tmp/mark; echo $$; exit 3"),
    );
    let pid = f.agent.client.exec_process(ctx(), &req).expect("exec").pid;
    assert!(pid > 0);
    let out = f.agent.collect(cid, "e1").finish(f.agent.wait(cid, "e1"));
    assert_eq!(out.status, 3, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"ready"), "{out:?}");
    assert_ne!(
        lines.get(1),
        Some(&"1"),
        "exec'd process is not the container's init"
    );

    // The id of an exec that has exited may be used again (containerd frees it
    // when it deletes the exec, and then may reuse it).
    f.agent
        .client
        .exec_process(ctx(), &req)
        .expect("exec with the id of an exited exec");
    let again = f.agent.collect(cid, "e1").finish(f.agent.wait(cid, "e1"));
    assert_eq!(again.status, 3, "{again:?}");

    let kill = SignalProcessRequest {
        container_id: cid.into(),
        signal: 9,
        ..Default::default()
    };
    f.agent.client.signal_process(ctx(), &kill).expect("kill");
    assert_eq!(init.finish(f.agent.wait(cid, "")).status, 137);
    remove(&f.agent, cid);
}

#[test]
fn sigterm_and_sigkill_end_the_process() {
    let f = fixture();
    for (cid, signal, script, status) in [
        // The shell traps TERM and exits 7 itself.
        (
            "term",
            15,
            "trap 'exit 7' TERM; echo up; while true; do sleep 0.05; done",
            7,
        ),
        // PID 1 in a pid namespace ignores unhandled signals except SIGKILL.
        ("kill", 9, "echo up; while true; do sleep 0.05; done", 137),
    ] {
        f.agent.create(
            cid,
            &f.rootfs,
            &spec(cid, &sh(script), &SpecOptions::default()),
            false,
        );
        let mut stdout = f.agent.stream(cid, "", StreamKind::Stdout);
        let stderr = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stderr));
        f.agent.start_container(cid);
        let mut up = [0u8; 3];
        std::io::Read::read_exact(&mut stdout, &mut up).expect("read up");
        assert_eq!(&up, b"up\n");
        let req = SignalProcessRequest {
            container_id: cid.into(),
            signal,
            ..Default::default()
        };
        f.agent.client.signal_process(ctx(), &req).expect("signal");
        drop(stdout);
        let _ = stderr.join();
        assert_eq!(f.agent.wait(cid, ""), status, "{cid}");
        remove(&f.agent, cid);
    }
}

#[test]
fn env_and_cwd_are_applied() {
    let f = fixture();
    let opts = SpecOptions {
        env: vec!["GREETING=hi there".into()],
        cwd: Some("/etc".into()),
        ..Default::default()
    };
    let out = f.agent.run(
        "envcwd",
        &f.rootfs,
        &spec("envcwd", &sh("echo \"$GREETING\"; pwd"), &opts),
    );
    assert_eq!(out.stdout, "hi there\n/etc\n", "{out:?}");
    remove(&f.agent, "envcwd");
}

#[test]
fn user_and_group_are_applied() {
    let f = fixture();
    let opts = SpecOptions {
        user: Some((1000, 1000)),
        ..Default::default()
    };
    let out = f
        .agent
        .run("user", &f.rootfs, &spec("user", &sh("id -u; id -g"), &opts));
    assert_eq!(out.stdout, "1000\n1000\n", "{out:?}");
    remove(&f.agent, "user");
}

#[test]
fn the_container_has_its_own_pid_namespace() {
    let f = fixture();
    let out = f.agent.run(
        "pidns",
        &f.rootfs,
        &spec("pidns", &sh("echo $$"), &SpecOptions::default()),
    );
    assert_eq!(out.stdout, "1\n", "{out:?}");
    remove(&f.agent, "pidns");
}

/// Containers created with `sandbox_pidns` share one PID namespace, whose
/// PID 1 is the agent's holder (`/pause`), as the pause container is with
/// runc; one without it still gets its own. DestroySandbox ends the holder.
#[test]
fn containers_of_a_pod_share_its_pid_namespace_under_pause() {
    let f = fixture();
    let create = |cid: &str, script: &str| {
        let req = CreateContainerRequest {
            container_id: cid.into(),
            oci_spec: spec(cid, &sh(script), &SpecOptions::default()),
            rootfs: f.rootfs.display().to_string(),
            stdio: Some(output_stdio()).into(),
            sandbox_pidns: true,
            ..Default::default()
        };
        f.agent
            .client
            .create_container(ctx(), &req)
            .unwrap_or_else(|err| panic!("create {cid} in the pod's PID namespace: {err:?}"));
    };
    create("pp-sleeper", "exec sleep 1000");
    let sleeper = f.agent.collect("pp-sleeper", "");
    f.agent.start_container("pp-sleeper");
    create(
        "pp-looker",
        "echo self $$; for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' <$p/cmdline)\"; done",
    );
    let looker = f.agent.collect("pp-looker", "");
    f.agent.start_container("pp-looker");
    let out = looker.finish(f.agent.wait("pp-looker", ""));
    assert_eq!(out.status, 0, "{out:?}");
    let seen: Vec<&str> = out.stdout.lines().collect();
    assert!(
        seen.contains(&"1 /pause --pod-pid-holder "),
        "PID 1 of the pod's namespace is the holder: {seen:?}"
    );
    assert!(
        seen.iter().any(|line| line.ends_with(" sleep 1000 ")),
        "the other container's process is seen: {seen:?}"
    );
    assert!(
        !seen.contains(&"self 1"),
        "the looker is not PID 1: {seen:?}"
    );
    let own = f.agent.run(
        "pp-own",
        &f.rootfs,
        &spec("pp-own", &sh("echo $$"), &SpecOptions::default()),
    );
    assert_eq!(own.stdout, "1\n", "without sandbox_pidns: {own:?}");

    let holders = || runv_tests::host::pids_matching("--pod-pid-holder");
    let [(holder, _)] = holders()[..] else {
        panic!("not one holder: {:?}", holders());
    };
    // Confined: nobody, no capabilities, an empty root of its own.
    let status = std::fs::read_to_string(format!("/proc/{holder}/status")).expect("its status");
    for (key, want) in [
        ("Uid:", "65534"),
        ("Gid:", "65534"),
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
    ] {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next());
        assert_eq!(value, Some(want), "the holder's {key}\n{status}");
    }
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{holder}/root"))
        .expect("the holder's root")
        .collect();
    assert!(root.is_empty(), "the holder's root is not empty: {root:?}");
    f.agent
        .client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .expect("destroy sandbox");
    let _ = sleeper.finish(137);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holders().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(holders().is_empty(), "holder left: {:?}", holders());
}

#[test]
fn sixteen_mib_go_through_cat_unchanged() {
    let f = fixture();
    let cid = "cat";
    f.agent.create(
        cid,
        &f.rootfs,
        &spec(cid, &["/bin/cat"], &SpecOptions::default()),
        true,
    );
    let mut stdin = f.agent.stream(cid, "", StreamKind::Stdin);
    let output = f.agent.collect(cid, "");
    f.agent.start_container(cid);
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            stdin.write_all(&data).expect("write stdin");
            stdin
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close stdin");
        })
    };
    let status = f.agent.wait(cid, "");
    writer.join().expect("writer");
    let (stdout, stderr) = output.finish_raw();
    assert_eq!(status, 0, "stderr: {}", String::from_utf8_lossy(&stderr));
    assert_eq!(stdout.len(), data.len());
    // Byte for byte (a stronger check than equal sha256 sums).
    assert!(stdout == data, "stdout differs from stdin");
    remove(&f.agent, cid);
}

#[test]
fn a_read_only_rootfs_refuses_writes() {
    let f = fixture();
    let opts = SpecOptions {
        readonly: true,
        ..Default::default()
    };
    let out = f.agent.run(
        "ro",
        &f.rootfs,
        &spec(
            "ro",
            &sh("touch /file && echo wrote; echo ok > /tmp/t && cat /tmp/t"),
            &opts,
        ),
    );
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    assert!(out.stderr.contains("Read-only"), "{out:?}");
    assert!(!f.rootfs.join("file").exists());
    remove(&f.agent, "ro");
}

/// A profile that allows everything but mkdir, which fails with EPERM.
fn no_mkdir_profile() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    })
}

#[test]
fn a_seccomp_profile_filters_the_container_and_its_execs() {
    let f = fixture();
    let opts = SpecOptions {
        seccomp: Some(no_mkdir_profile()),
        ..Default::default()
    };
    let script = "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f && echo touched";
    let out = f
        .agent
        .run("sc", &f.rootfs, &spec("sc", &sh(script), &opts));
    assert_eq!(out.stdout, "mkdir=1\ntouched\n", "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    remove(&f.agent, "sc");

    // An exec joins the container's filter too.
    f.agent.create(
        "sc2",
        &f.rootfs,
        &spec("sc2", &["sleep", "1000"], &opts),
        false,
    );
    f.agent.start_container("sc2");
    let req = exec_request("sc2", "mk", &sh("mkdir /tmp/e; echo mkdir=$?"));
    f.agent
        .client
        .exec_process(ctx(), &req)
        .expect("exec under the profile");
    let out = f
        .agent
        .collect("sc2", "mk")
        .finish(f.agent.wait("sc2", "mk"));
    assert_eq!(out.stdout, "mkdir=1\n", "{out:?}");
    kill_and_remove(&f.agent, "sc2");

    // A profile that names an action seccomp does not have is refused by name.
    let mut bad = no_mkdir_profile();
    bad["syscalls"][0]["action"] = "SCMP_ACT_SOMETIMES".into();
    let bad_opts = SpecOptions {
        seccomp: Some(bad),
        ..Default::default()
    };
    let req = CreateContainerRequest {
        container_id: "sc3".into(),
        oci_spec: spec("sc3", &sh("exit 0"), &bad_opts),
        rootfs: f.rootfs.display().to_string(),
        ..Default::default()
    };
    let (code, msg) = rpc_code(f.agent.client.create_container(ctx(), &req));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("SCMP_ACT_SOMETIMES"), "{msg}");
}

#[test]
fn a_bind_mounted_volume_is_shared() {
    let f = fixture();
    let volume = Scratch::new("runv-agent-volume");
    std::fs::write(volume.path().join("in"), "from host\n").expect("write volume file");
    let opts = SpecOptions {
        binds: vec![(volume.path().to_path_buf(), "/data".into())],
        ..Default::default()
    };
    let out = f.agent.run(
        "vol",
        &f.rootfs,
        &spec(
            "vol",
            &sh("cat /data/in; echo from container > /data/out"),
            &opts,
        ),
    );
    assert_eq!(out.stdout, "from host\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(volume.path().join("out")).expect("read out"),
        "from container\n"
    );
    remove(&f.agent, "vol");
}

/// CRI asks for `rootfsPropagation` "rslave" (a volume propagated host to
/// container) or "rshared" (bidirectional), with the same option on the volume;
/// a container with either starts, and with "rslave" a mount the host makes
/// under the volume after the start appears in it.
#[test]
fn a_volume_with_propagation_starts_and_sees_later_host_mounts() {
    let f = fixture();
    let volume = Scratch::new("runv-agent-propagated");
    let dir = volume.path().join("vol");
    std::fs::create_dir_all(dir.join("sub")).expect("make the volume");
    // The volume is a shared mount of its own, as CRI requires of its source.
    let mount = |args: &[&str]| {
        let status = std::process::Command::new("mount")
            .args(args)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount {args:?}");
    };
    /// Unmounts the volume and what is under it however the test ends.
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-R", &self.0])
                .status();
        }
    }
    let dir_str = dir.display().to_string();
    mount(&["--bind", &dir_str, &dir_str]);
    let _unmount = Unmount(dir_str.clone());
    mount(&["--make-shared", &dir_str]);
    for (cid, propagation) in [("rslave", "rslave"), ("rshared", "rshared")] {
        let script = "while [ ! -f /v/sub/marker ]; do sleep 0.05; done; cat /v/sub/marker";
        let mut spec: serde_json::Value =
            serde_json::from_str(&spec(cid, &sh(script), &SpecOptions::default()))
                .expect("spec JSON");
        spec["linux"]["rootfsPropagation"] = propagation.into();
        spec["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(serde_json::json!({
                "destination": "/v", "type": "bind", "source": dir,
                "options": ["rbind", "rw", propagation]
            }));
        f.agent.create(cid, &f.rootfs, &spec.to_string(), false);
        let output = f.agent.collect(cid, "");
        f.agent.start_container(cid);
        // After the start: the host mounts a tmpfs under the volume.
        let sub = dir.join("sub");
        mount(&["-t", "tmpfs", "tmpfs", &sub.display().to_string()]);
        std::fs::write(sub.join("marker"), format!("{cid} sees the host's mount\n"))
            .expect("write the marker");
        let out = output.finish(f.agent.wait(cid, ""));
        let _ = std::process::Command::new("umount").arg(&sub).status();
        assert_eq!(out.status, 0, "{cid}: {out:?}");
        assert_eq!(
            out.stdout,
            format!("{cid} sees the host's mount\n"),
            "{out:?}"
        );
        remove(&f.agent, cid);
    }
}

/// CreateSandbox sets the pod's sysctls in the pod's (the guest's own) IPC
/// and network namespaces: in host mode, as files under the state dir. A
/// container with namespaces of its own gets its spec's sysctls inside them.
#[test]
fn pod_sysctls_go_to_the_pod_and_a_containers_own_to_it() {
    let f = fixture();
    let sandbox = CreateSandboxRequest {
        sysctls: [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_unprivileged_port_start", "80"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    f.agent
        .client
        .create_sandbox(ctx(), &sandbox)
        .expect("create sandbox with sysctls");
    let pod_file = |rel: &str| {
        std::fs::read_to_string(f.agent.state_dir().join("sandbox/sysctl").join(rel))
            .unwrap_or_else(|e| panic!("the pod's sysctl {rel}: {e}"))
    };
    assert_eq!(pod_file("kernel/shm_rmid_forced"), "1");
    assert_eq!(pod_file("net/ipv4/ip_unprivileged_port_start"), "80");

    let script = "cat /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_unprivileged_port_start";
    let mut own: serde_json::Value =
        serde_json::from_str(&spec("own", &sh(script), &SpecOptions::default()))
            .expect("spec JSON");
    own["linux"]["sysctl"] = serde_json::json!({
        "kernel.domainname": "pod.test",
        "net.ipv4.ip_unprivileged_port_start": "81"
    });
    let out = f.agent.run("own", &f.rootfs, &own.to_string());
    assert_eq!(out.stdout, "pod.test\n81\n", "{out:?}");
    remove(&f.agent, "own");
}

#[test]
fn bad_requests_get_precise_errors_and_the_agent_keeps_serving() {
    let f = fixture();
    let c = &f.agent.client;
    let good = spec("dup", &sh("exit 0"), &SpecOptions::default());
    let create = |cid: &str, spec: &str| CreateContainerRequest {
        container_id: cid.into(),
        oci_spec: spec.into(),
        rootfs: f.rootfs.display().to_string(),
        ..Default::default()
    };

    let (code, msg) = rpc_code(c.start_container(
        ctx(),
        &StartContainerRequest {
            container_id: "nope".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    let (code, _) = rpc_code(c.wait_process(
        ctx(),
        &WaitProcessRequest {
            container_id: "nope".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, msg) = rpc_code(c.create_container(ctx(), &create("bad", "{ not json")));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let (code, _) = rpc_code(c.create_container(ctx(), &create("a/b", &good)));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    let mut no_rootfs = create("noroot", &good);
    no_rootfs.rootfs = "/nonexistent/rootfs".into();
    let (code, msg) = rpc_code(c.create_container(ctx(), &no_rootfs));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    c.create_container(ctx(), &create("dup", &good))
        .expect("create dup");
    let (code, _) = rpc_code(c.create_container(ctx(), &create("dup", &good)));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    let (code, _) = rpc_code(c.wait_process(
        ctx(),
        &WaitProcessRequest {
            container_id: "dup".into(),
            exec_id: "ghost".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, _) = rpc_code(c.exec_process(
        ctx(),
        &ExecProcessRequest {
            container_id: "dup".into(),
            exec_id: "e".into(),
            process: "[]".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    let (code, _) = rpc_code(c.signal_process(
        ctx(),
        &SignalProcessRequest {
            container_id: "dup".into(),
            signal: 99999,
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    // A stream that was not asked for is refused on the stdio port.
    assert!(f.agent.try_stream("dup", "", StreamKind::Stdout).is_err());
    assert!(f.agent.try_stream("ghost", "", StreamKind::Stdout).is_err());

    // An agent in the host's network namespace changes nothing there (the
    // interface does not exist either, in case the guard ever failed).
    let (code, msg) = rpc_code(c.update_interface(ctx(), &interface_request("runv-none0", &[])));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    let (code, msg) = rpc_code(c.update_routes(ctx(), &UpdateRoutesRequest::new()));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    let (code, _) = rpc_code(c.update_container(
        ctx(),
        &UpdateContainerRequest {
            container_id: "dup".into(),
            resources: "{".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);

    remove(&f.agent, "dup");
    let health = c.check(ctx(), &CheckRequest::new()).expect("check");
    assert_eq!(health.status(), ServingStatus::SERVING);
}

#[test]
fn nothing_is_left_behind() {
    let f = fixture();
    for i in 0..5 {
        let cid = format!("leak{i}");
        let script = if i % 2 == 0 { "sleep 60" } else { "exit 0" };
        f.agent.create(
            &cid,
            &f.rootfs,
            &spec(&cid, &sh(script), &SpecOptions::default()),
            false,
        );
        let out = f.agent.collect(&cid, "");
        f.agent.start_container(&cid);
        if i % 2 == 0 {
            let req = RemoveContainerRequest {
                container_id: cid.clone(),
                force: true,
                ..Default::default()
            };
            f.agent
                .client
                .remove_container(ctx(), &req)
                .expect("force remove");
            drop(out);
        } else {
            assert_eq!(out.finish(f.agent.wait(&cid, "")).status, 0);
            remove(&f.agent, &cid);
        }
        assert_eq!(
            cgroup_dirs(&cid),
            Vec::<PathBuf>::new(),
            "cgroups of {cid} left"
        );
    }
    // Reaping is asynchronous: allow the reaper a moment.
    let mut left = children_of(f.agent.pid());
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = children_of(f.agent.pid());
    }
    assert!(left.is_empty(), "processes left under the agent: {left:?}");
    assert!(
        mounts_under(&f.rootfs).is_empty(),
        "mounts left: {:?}",
        mounts_under(&f.rootfs)
    );
}

fn stats(agent: &HostAgent, cid: &str) -> StatsContainerResponse {
    let req = StatsContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent.client.stats_container(ctx(), &req).expect("stats")
}

fn kill_and_remove(agent: &HostAgent, cid: &str) {
    let req = RemoveContainerRequest {
        container_id: cid.into(),
        force: true,
        ..Default::default()
    };
    agent
        .client
        .remove_container(ctx(), &req)
        .expect("force remove");
}

/// Reads `stream` until `needle` was seen.
fn read_until(stream: &mut std::os::unix::net::UnixStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).expect("read stream");
        assert!(
            n > 0,
            "EOF before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn stats_and_process_list_show_the_running_container() {
    let f = fixture();
    let cid = "stats";
    let script =
        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 60 & echo busy-done; wait";
    f.agent.create(
        cid,
        &f.rootfs,
        &spec(cid, &sh(script), &SpecOptions::default()),
        false,
    );
    let mut stdout = f.agent.stream(cid, "", StreamKind::Stdout);
    let _stderr = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stderr));
    let init = f.agent.start_container(cid);
    read_until(&mut stdout, "busy-done");

    let figures = stats(&f.agent, cid);
    assert!(figures.cpu.usage_usec > 0, "{figures:?}");
    assert!(figures.memory.usage > 0, "{figures:?}");
    assert!(figures.pids.current >= 2, "sh and sleep: {figures:?}");

    let req = ListProcessesRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    let pids = f
        .agent
        .client
        .list_processes(ctx(), &req)
        .expect("list")
        .pids;
    assert!(
        pids.contains(&init) && pids.len() >= 2,
        "init {init}, pids {pids:?}"
    );
    kill_and_remove(&f.agent, cid);
}

/// The whole disk holding `path` (major, minor), or None when it is not on a
/// block device (tmpfs, overlay).
fn backing_disk(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    // A partition's sysfs directory sits inside its disk's.
    let disk = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys
    };
    let number = std::fs::read_to_string(disk.join("dev")).ok()?;
    let (major, minor) = number.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[test]
fn io_stats_count_the_containers_disk_io() {
    let f = fixture();
    let cid = "io";
    let data = Scratch::new("runv-agent-io");
    let (major, minor) = backing_disk(data.path()).unwrap_or_else(|| {
        panic!(
            "{} is not on a block device: set TMPDIR to a disk-backed directory",
            data.path().display()
        )
    });
    // cgroup v1 counts blkio.throttle.io_service_bytes / io_serviced only on a
    // disk where blk-throttle is active (Linux 6.10 and later activate it at the
    // first throttle rule on the disk): a limit far above any disk's speed has
    // the container's I/O counted without slowing it. cgroup v2's io.stat
    // counts without it.
    let unlimited = serde_json::json!([{"major": major, "minor": minor, "rate": 1u64 << 40}]);
    let opts = SpecOptions {
        binds: vec![(data.path().to_path_buf(), "/data".into())],
        resources: Some(serde_json::json!({"blockIO": {
            "throttleReadBpsDevice": unlimited,
            "throttleWriteBpsDevice": unlimited
        }})),
        ..Default::default()
    };
    // O_DIRECT: every byte goes to the disk, none stays in the page cache.
    let script = "dd if=/dev/zero of=/data/io.bin bs=1M count=8 oflag=direct conv=fsync \
                  && dd if=/data/io.bin of=/dev/null bs=1M iflag=direct";
    let out = f.agent.run(cid, &f.rootfs, &spec(cid, &sh(script), &opts));
    assert_eq!(out.status, 0, "{out:?}");
    let io = stats(&f.agent, cid).io;
    let disk = io
        .iter()
        .find(|e| (e.major, e.minor) == (major, minor))
        .unwrap_or_else(|| panic!("no io entry for {major}:{minor}: {io:?}"));
    assert!(disk.wbytes >= 8 << 20 && disk.wios >= 1, "{disk:?}");
    assert!(disk.rbytes >= 8 << 20 && disk.rios >= 1, "{disk:?}");
    remove(&f.agent, cid);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let f = fixture();
    let cid = "pause";
    let script = "while true; do echo tick; sleep 0.02; done";
    f.agent.create(
        cid,
        &f.rootfs,
        &spec(cid, &sh(script), &SpecOptions::default()),
        false,
    );
    let mut stdout = f.agent.stream(cid, "", StreamKind::Stdout);
    let _stderr = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stderr));
    f.agent.start_container(cid);
    read_until(&mut stdout, "tick");

    let c = &f.agent.client;
    c.pause_container(
        ctx(),
        &PauseContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        },
    )
    .expect("pause");
    // Drain what was written before the freeze, then expect silence.
    stdout
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while stdout.read(&mut buf).is_ok() {}
    let silent = stdout.read(&mut buf);
    assert!(silent.is_err(), "a paused container wrote {silent:?}");

    c.resume_container(
        ctx(),
        &ResumeContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        },
    )
    .expect("resume");
    stdout
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    read_until(&mut stdout, "tick");
    kill_and_remove(&f.agent, cid);
}

#[test]
fn a_memory_limit_ends_a_hog_with_137() {
    let f = fixture();
    let cid = "oom";
    let limit = 32u64 << 20;
    let opts = SpecOptions {
        resources: Some(serde_json::json!({"memory": {"limit": limit, "swap": limit}})),
        ..Default::default()
    };
    // dd fills a 64 MiB buffer: twice the limit.
    let args = [
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ];
    f.agent
        .create(cid, &f.rootfs, &spec(cid, &args, &opts), false);
    let output = f.agent.collect(cid, "");
    f.agent.start_container(cid);
    let out = output.finish(f.agent.wait(cid, ""));
    assert_eq!(out.status, 137, "{out:?}");
    let figures = stats(&f.agent, cid);
    assert_eq!(figures.memory.usage_limit, limit, "{figures:?}");
    assert!(figures.memory_events.oom_kill >= 1, "{figures:?}");
    let event = f
        .agent
        .client
        .get_oom_event(ctx(), &GetOOMEventRequest::new())
        .expect("OOM event");
    assert_eq!(event.container_id, cid);
    remove(&f.agent, cid);
    // One kill, one event: not again when the removal takes its last look.
    assert_no_oom_event(&f.agent);
}

/// GetOOMEvent finds nothing queued within half a second.
fn assert_no_oom_event(agent: &HostAgent) {
    let short = ttrpc::context::with_duration(Duration::from_millis(500));
    let (code, _) = rpc_code(
        agent
            .client
            .get_oom_event(short, &GetOOMEventRequest::new()),
    );
    assert_eq!(
        code,
        ttrpc::Code::DEADLINE_EXCEEDED,
        "an OOM event was queued"
    );
}

#[test]
fn a_pids_limit_stops_forks() {
    let f = fixture();
    let cid = "pids";
    let opts = SpecOptions {
        resources: Some(serde_json::json!({"pids": {"limit": 4}})),
        ..Default::default()
    };
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait; echo done";
    let out = f.agent.run(cid, &f.rootfs, &spec(cid, &sh(script), &opts));
    assert!(out.stderr.contains("can't fork"), "{out:?}");
    assert_eq!(stats(&f.agent, cid).pids.limit, 4);
    remove(&f.agent, cid);
}

#[test]
fn a_hundred_cycles_leave_nothing_behind() {
    let f = fixture();
    let started = Instant::now();
    let mut fds_after_first = 0;
    for i in 0..100 {
        let cid = format!("cycle{i}");
        let out = f.agent.run(
            &cid,
            &f.rootfs,
            &spec(&cid, &["/bin/true"], &SpecOptions::default()),
        );
        assert_eq!(out.status, 0, "{cid}: {out:?}");
        remove(&f.agent, &cid);
        assert_eq!(
            cgroup_dirs(&cid),
            Vec::<PathBuf>::new(),
            "cgroups of {cid} left"
        );
        if i == 0 {
            fds_after_first = open_fds(f.agent.pid()).len();
        }
    }
    eprintln!(
        "100 create/start/wait/remove cycles: {:?}",
        started.elapsed()
    );
    let fds = open_fds(f.agent.pid());
    assert!(
        fds.len() <= fds_after_first,
        "the agent held {fds_after_first} fds after the first cycle, now {fds:?}"
    );
    // A cgroup's removal is no OOM (v1 signals the OOM eventfd when it goes).
    assert_no_oom_event(&f.agent);
    assert!(children_of(f.agent.pid()).is_empty());
    assert!(
        mounts_under(&f.rootfs).is_empty(),
        "mounts left: {:?}",
        mounts_under(&f.rootfs)
    );
    let state = f.agent.dir.path().join("state");
    for sub in ["runtime", "bundles"] {
        let left: Vec<_> = std::fs::read_dir(state.join(sub))
            .expect("state dir")
            .collect();
        assert!(left.is_empty(), "{sub} left: {left:?}");
    }
}

/// The agent's threads (one per ttrpc connection and per stdio stream) start
/// and end while it makes containers and execs: none of those may hang. Made
/// in the agent itself, a container's intermediate process could inherit a lock
/// a starting or ending thread held and wait on it for ever.
#[test]
fn containers_and_execs_are_made_while_agent_threads_come_and_go() {
    let f = fixture();
    /// Ends the churn however the scope ends (a panic included).
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let churned = std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut connections = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let client = f.agent.connect();
                client
                    .check(ctx(), &CheckRequest::default())
                    .expect("check on a new connection");
                drop(client);
                // A stream of no process: its server thread ends at once.
                let _ = f.agent.try_stream("none", "", StreamKind::Stdout);
                connections += 1;
            }
            connections
        });
        let stopper = StopOnDrop(&stop);
        for i in 0..12 {
            let cid = format!("churn{i}");
            f.agent.create(
                &cid,
                &f.rootfs,
                &spec(&cid, &sh("sleep 60"), &SpecOptions::default()),
                false,
            );
            let init = f.agent.collect(&cid, "");
            f.agent.start_container(&cid);
            for e in 0..3 {
                let eid = format!("e{e}");
                let req = exec_request(&cid, &eid, &sh("echo $$"));
                f.agent
                    .client
                    .exec_process(ctx(), &req)
                    .unwrap_or_else(|err| panic!("exec {cid}/{eid}: {err:?}"));
                let out = f.agent.collect(&cid, &eid).finish(f.agent.wait(&cid, &eid));
                assert_eq!(out.status, 0, "{cid}/{eid}: {out:?}");
            }
            let kill = SignalProcessRequest {
                container_id: cid.clone(),
                signal: 9,
                ..Default::default()
            };
            f.agent.client.signal_process(ctx(), &kill).expect("kill");
            assert_eq!(init.finish(f.agent.wait(&cid, "")).status, 137);
            remove(&f.agent, &cid);
        }
        drop(stopper);
        churn.join().expect("churn thread")
    });
    assert!(churned > 0, "no connection came and went");
    assert!(children_of(f.agent.pid()).is_empty());
}

/// Benchmark, not a test (`bench/agent-start`): create+start → first output byte,
/// the agent against `runc run` of the same bundle, median of `RUNV_BENCH_RUNS`.
#[test]
#[ignore = "benchmark: run through bench/agent-start"]
fn start_latency_against_runc() {
    let f = fixture();
    let runs: usize = std::env::var("RUNV_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bundle = f.rootfs.parent().expect("bundle dir").to_path_buf();
    let (mut agent_times, mut runc_times) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let cid = format!("lat{i}");
        let config = spec(&cid, &["/bin/echo", "up"], &SpecOptions::default());

        let started = Instant::now();
        f.agent.create(&cid, &f.rootfs, &config, false);
        let mut stdout = f.agent.stream(&cid, "", StreamKind::Stdout);
        let stderr = runv_tests::agent_host::read_all(f.agent.stream(&cid, "", StreamKind::Stderr));
        f.agent.start_container(&cid);
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).expect("first byte");
        agent_times.push(started.elapsed());
        drop(stdout);
        let _ = stderr.join();
        f.agent.wait(&cid, "");
        remove(&f.agent, &cid);

        let runc_id = format!("runc-lat{i}");
        std::fs::write(
            bundle.join("config.json"),
            spec(&runc_id, &["/bin/echo", "up"], &SpecOptions::default()),
        )
        .expect("write config.json");
        let started = Instant::now();
        let mut child = std::process::Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&runc_id)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn runc");
        let mut out = child.stdout.take().expect("runc stdout");
        out.read_exact(&mut byte).expect("runc first byte");
        runc_times.push(started.elapsed());
        assert!(child.wait().expect("wait runc").success());
        let _ = std::process::Command::new("runc")
            .args(["delete", "-f", &runc_id])
            .status();
    }
    agent_times.sort();
    runc_times.sort();
    let (agent, runc) = (agent_times[runs / 2], runc_times[runs / 2]);
    println!(
        "start latency (create+start → first output byte), median of {runs}: \
         runv-agent {agent:?}, runc {runc:?}, ratio {:.2}",
        agent.as_secs_f64() / runc.as_secs_f64()
    );
}

#[test]
fn a_terminal_carries_both_directions_and_resizes() {
    let f = fixture();
    let cid = "tty";
    let req = CreateContainerRequest {
        container_id: cid.into(),
        oci_spec: spec(
            cid,
            &sh("stty size; read x; echo got-$x"),
            &SpecOptions::default(),
        ),
        rootfs: f.rootfs.display().to_string(),
        stdio: Some(Stdio {
            terminal: true,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let c = &f.agent.client;
    c.create_container(ctx(), &req)
        .expect("create with a terminal");
    let resize = TtyWinResizeRequest {
        container_id: cid.into(),
        rows: 40,
        columns: 100,
        ..Default::default()
    };
    c.tty_win_resize(ctx(), &resize).expect("resize");
    let mut tty = f.agent.stream(cid, "", StreamKind::Tty);
    f.agent.start_container(cid);
    let seen = read_until(&mut tty, "40 100");
    tty.write_all(b"hi\n").expect("type on the terminal");
    let mut rest = String::new();
    tty.read_to_string(&mut rest)
        .expect("read the terminal to EOF");
    assert!(rest.contains("got-hi"), "{seen}{rest}");
    assert_eq!(f.agent.wait(cid, ""), 0);
    // Without a terminal, resizing is refused.
    remove(&f.agent, cid);
    let (code, _) = rpc_code(c.tty_win_resize(ctx(), &resize));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
}

#[test]
fn paths_outside_the_shared_dir_are_refused() {
    let f = fixture();
    let c = &f.agent.client;
    let shared = f.rootfs.parent().and_then(Path::parent).expect("image dir");
    let sandbox = CreateSandboxRequest {
        shared_dir: shared.display().to_string(),
        ..Default::default()
    };
    c.create_sandbox(ctx(), &sandbox).expect("create sandbox");

    let outside = Scratch::new("runv-agent-outside");
    let create = |cid: &str, rootfs: &Path, opts: &SpecOptions| CreateContainerRequest {
        container_id: cid.into(),
        oci_spec: spec(cid, &sh("cat /data/in"), opts),
        rootfs: rootfs.display().to_string(),
        stdio: Some(output_stdio()).into(),
        ..Default::default()
    };
    let (code, msg) = rpc_code(c.create_container(
        ctx(),
        &create("out1", outside.path(), &SpecOptions::default()),
    ));
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    // A symlink inside that leads outside escapes as well.
    let link = shared.join("link");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    let opts = SpecOptions {
        binds: vec![(link.clone(), "/data".into())],
        ..Default::default()
    };
    let (code, msg) = rpc_code(c.create_container(ctx(), &create("out2", &f.rootfs, &opts)));
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");

    let volume = shared.join("volume");
    std::fs::create_dir(&volume).expect("volume dir");
    std::fs::write(volume.join("in"), "inside\n").expect("volume file");
    let opts = SpecOptions {
        binds: vec![(volume, "/data".into())],
        ..Default::default()
    };
    c.create_container(ctx(), &create("in", &f.rootfs, &opts))
        .expect("create inside");
    let output = f.agent.collect("in", "");
    f.agent.start_container("in");
    let out = output.finish(f.agent.wait("in", ""));
    assert_eq!(out.stdout, "inside\n", "{out:?}");
    remove(&f.agent, "in");
}

/// stdin ends as the shim ends it (shim/src/stdio.rs): a half-close of the
/// stream, the connection itself kept open until the process is gone.
#[test]
fn a_half_closed_stdin_stream_gives_eof() {
    let f = fixture();
    let cid = "stdin-eof";
    f.agent.create(
        cid,
        &f.rootfs,
        &spec(cid, &sh("cat; echo eof"), &SpecOptions::default()),
        true,
    );
    let mut stdin = f.agent.stream(cid, "", StreamKind::Stdin);
    let output = f.agent.collect(cid, "");
    f.agent.start_container(cid);
    stdin.write_all(b"data\n").expect("write stdin");
    stdin
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close stdin");
    let out = output.finish(f.agent.wait(cid, ""));
    drop(stdin);
    assert_eq!(
        (out.stdout.as_str(), out.status),
        ("data\neof\n", 0),
        "{out:?}"
    );
    remove(&f.agent, cid);
}

/// How long after an exit the agent keeps an unconnected output's pipe
/// (`UNBOUND_OUTPUT_GRACE`, protocol/README.md "stdio streams").
const UNBOUND_OUTPUT_GRACE: Duration = Duration::from_secs(10);

#[test]
fn an_output_never_connected_holds_wait_only_for_the_grace_period() {
    let f = fixture();
    let script = "echo out; echo err >&2; exit 3";
    let opts = SpecOptions::default();

    // Connected late, but within the grace: nothing is lost, no wait for it.
    let cid = "late-stdout";
    f.agent
        .create(cid, &f.rootfs, &spec(cid, &sh(script), &opts), false);
    let stderr = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stderr));
    f.agent.start_container(cid);
    std::thread::sleep(Duration::from_secs(1));
    let stdout = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stdout));
    let started = Instant::now();
    assert_eq!(f.agent.wait(cid, ""), 3);
    assert!(
        started.elapsed() < UNBOUND_OUTPUT_GRACE / 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stdout.join().expect("stdout reader"), b"out\n");
    assert_eq!(stderr.join().expect("stderr reader"), b"err\n");
    remove(&f.agent, cid);

    // Never connected: WaitProcess answers once the grace has passed.
    let cid = "unbound-stdout";
    f.agent
        .create(cid, &f.rootfs, &spec(cid, &sh(script), &opts), false);
    let stderr = runv_tests::agent_host::read_all(f.agent.stream(cid, "", StreamKind::Stderr));
    f.agent.start_container(cid);
    let started = Instant::now();
    assert_eq!(f.agent.wait(cid, ""), 3);
    let waited = started.elapsed();
    assert!(
        waited >= UNBOUND_OUTPUT_GRACE - Duration::from_secs(1)
            && waited < UNBOUND_OUTPUT_GRACE + Duration::from_secs(5),
        "WaitProcess took {waited:?}"
    );
    assert_eq!(stderr.join().expect("stderr reader"), b"err\n");
    let late = f
        .agent
        .try_stream(cid, "", StreamKind::Stdout)
        .expect_err("stdout bound after its pipe was dropped");
    assert!(
        late.to_string().contains("was not connected within 10s"),
        "{late}"
    );
    remove(&f.agent, cid);
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").expect("read the host's hostname")
}

#[test]
fn the_sandbox_gives_containers_hosts_dns_and_hostname() {
    let f = fixture();
    let c = &f.agent.client;
    let hostname_before = host_hostname();
    let sandbox = CreateSandboxRequest {
        sandbox_id: "pod1".into(),
        hostname: "pod-one".into(),
        dns: vec!["nameserver 192.0.2.53".into(), "search example.test".into()],
        hosts: "127.0.0.1 localhost\n192.0.2.7 db.example.test db".into(),
        ..Default::default()
    };
    c.create_sandbox(ctx(), &sandbox).expect("create sandbox");
    // Host mode keeps the files in the state dir and leaves the host's name alone.
    assert_eq!(host_hostname(), hostname_before);
    let files = f.agent.state_dir().join("sandbox");
    assert_eq!(
        std::fs::read_to_string(files.join("hostname")).expect("hostname file"),
        "pod-one\n"
    );

    let script = "cat /etc/hosts /etc/resolv.conf /etc/hostname; \
                  if echo x > /etc/hosts; then echo writable; fi";
    let out = f.agent.run(
        "etc",
        &f.rootfs,
        &spec("etc", &sh(script), &SpecOptions::default()),
    );
    assert_eq!(
        (out.stdout.as_str(), out.status),
        (
            "127.0.0.1 localhost\n192.0.2.7 db.example.test db\n\
             nameserver 192.0.2.53\nsearch example.test\n\
             pod-one\n",
            0
        ),
        "{out:?}"
    );
    remove(&f.agent, "etc");

    // A spec that mounts its own /etc/hosts (as CRI's do) keeps it.
    let volume = Scratch::new("runv-agent-hosts");
    let own_hosts = volume.path().join("hosts");
    std::fs::write(&own_hosts, "10.0.0.1 own\n").expect("write own hosts");
    let opts = SpecOptions {
        binds: vec![(own_hosts, "/etc/hosts".into())],
        ..Default::default()
    };
    let out = f.agent.run(
        "own",
        &f.rootfs,
        &spec("own", &sh("cat /etc/hosts /etc/hostname"), &opts),
    );
    assert_eq!(out.stdout, "10.0.0.1 own\npod-one\n", "{out:?}");
    remove(&f.agent, "own");

    let (code, msg) = rpc_code(c.create_sandbox(ctx(), &sandbox));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");
}

#[test]
fn bad_sandbox_requests_are_refused_and_change_nothing() {
    let f = fixture();
    let c = &f.agent.client;
    let tmpfs = |target: &str, fstype: &str| Mount {
        target: target.into(),
        fstype: fstype.into(),
        ..Default::default()
    };
    let root = f.agent.state_dir().join("sandbox").join("mounts");
    for (what, bad, code) in [
        (
            "hostname",
            CreateSandboxRequest {
                hostname: "a/b".into(),
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "dns line",
            CreateSandboxRequest {
                dns: vec!["nameserver 192.0.2.1\nnameserver 192.0.2.2".into()],
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "relative target",
            CreateSandboxRequest {
                mounts: vec![tmpfs("run/x", "tmpfs")],
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "target with ..",
            CreateSandboxRequest {
                mounts: vec![tmpfs("/run/../../etc", "tmpfs")],
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "no type",
            CreateSandboxRequest {
                mounts: vec![tmpfs("/run/x", "")],
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "sysctl outside the pod's namespaces",
            CreateSandboxRequest {
                sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "sysctl name leaving /proc/sys",
            CreateSandboxRequest {
                sysctls: [("net.ipv4/../../x".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            // The first mount is made, the second fails: the first is undone.
            "unknown file system",
            CreateSandboxRequest {
                mounts: vec![tmpfs("/run/x", "tmpfs"), tmpfs("/run/y", "runv-nosuchfs")],
                ..Default::default()
            },
            ttrpc::Code::INTERNAL,
        ),
    ] {
        let (got, msg) = rpc_code(c.create_sandbox(ctx(), &bad));
        assert_eq!(got, code, "{what}: {msg}");
        assert!(
            mounts_under(&root).is_empty(),
            "{what}: {:?}",
            mounts_under(&root)
        );
    }
    assert!(
        !f.agent.state_dir().join("sandbox/sysctl").exists(),
        "a refused sysctl was written"
    );
    // None of them counted as the sandbox's creation.
    c.create_sandbox(ctx(), &CreateSandboxRequest::new())
        .expect("create sandbox after refusals");
}

#[test]
fn sandbox_mounts_are_made_and_undone() {
    let f = fixture();
    let c = &f.agent.client;
    let volume = Scratch::new("runv-agent-sandbox-volume");
    std::fs::write(volume.path().join("in"), "shared\n").expect("write volume file");
    let sandbox = CreateSandboxRequest {
        mounts: vec![
            Mount {
                target: "/run/shm".into(),
                fstype: "tmpfs".into(),
                options: vec!["nosuid".into(), "nodev".into(), "size=1m".into()],
                ..Default::default()
            },
            Mount {
                source: volume.path().display().to_string(),
                target: "/data".into(),
                fstype: "bind".into(),
                options: vec!["ro".into()],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    c.create_sandbox(ctx(), &sandbox).expect("create sandbox");
    // Host mode places the targets under the state dir.
    let root = f.agent.state_dir().join("sandbox").join("mounts");
    let shm = mountinfo_line(&root.join("run/shm")).expect("tmpfs mounted");
    assert!(
        shm.contains(" - tmpfs ") && shm.contains("nosuid") && shm.contains("nodev"),
        "{shm}"
    );
    let data = mountinfo_line(&root.join("data")).expect("bind mounted");
    assert!(
        data.split(' ').nth(5).is_some_and(|o| o.starts_with("ro")),
        "{data}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/in")).expect("read through the bind"),
        "shared\n"
    );
    assert!(
        std::fs::write(root.join("data/out"), "x").is_err(),
        "the bind is writable"
    );

    // Containers reach them through their own binds.
    let opts = SpecOptions {
        binds: vec![(root.join("data"), "/data".into())],
        ..Default::default()
    };
    let out = f
        .agent
        .run("use", &f.rootfs, &spec("use", &sh("cat /data/in"), &opts));
    assert_eq!(out.stdout, "shared\n", "{out:?}");

    // DestroySandbox removes the containers and undoes the mounts; the
    // sandbox can be made again.
    c.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .expect("destroy sandbox");
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    let (code, _) = rpc_code(c.start_container(
        ctx(),
        &StartContainerRequest {
            container_id: "use".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    c.create_sandbox(ctx(), &sandbox)
        .expect("create sandbox again");
    assert!(mountinfo_line(&root.join("run/shm")).is_some());
    // Stopping the agent undoes them too.
    drop(f);
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
}

/// The mountinfo line of the mount on exactly `path`.
fn mountinfo_line(path: &Path) -> Option<String> {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .map(str::to_string)
}

fn ip(address: &str, prefix_len: u32) -> IpAddress {
    IpAddress {
        address: address.into(),
        prefix_len,
        ..Default::default()
    }
}

fn interface_request(name: &str, addresses: &[IpAddress]) -> UpdateInterfaceRequest {
    UpdateInterfaceRequest {
        interface: Some(Interface {
            name: name.into(),
            addresses: addresses.to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn route(dest: &str, gateway: &str, device: &str, scope: u32) -> Route {
    Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        scope,
        ..Default::default()
    }
}

fn routes_request(routes: Vec<Route>) -> UpdateRoutesRequest {
    UpdateRoutesRequest {
        routes: Some(Routes {
            routes,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The addresses of `device` ("10.88.0.3/24", ...), without their changing
/// flags (an IPv6 address is "tentative" for a while).
fn inet_addresses(agent: &HostAgent, device: &str) -> Vec<String> {
    let listing = agent.in_netns(&["ip", "-o", "addr", "show", "dev", device]);
    let mut addresses: Vec<String> = listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next().map(str::to_string)
        })
        .collect();
    addresses.sort();
    addresses
}

/// The flags of `ip -o link show` output: "<BROADCAST,UP,...>".
fn link_flags(line: &str) -> Vec<String> {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn interfaces_and_routes_are_set_in_the_agents_own_netns() {
    require_root("network namespaces");
    // The agent runs in a network namespace of its own, holding a veth pair:
    // nothing here touches the host's interfaces.
    let agent = HostAgent::start_in_netns();
    let c = &agent.client;
    agent.in_netns(&[
        "ip", "link", "add", "eth-t0", "type", "veth", "peer", "name", "eth-t1",
    ]);
    agent.in_netns(&["ip", "link", "set", "eth-t1", "up"]);

    let mut req = interface_request("eth-t0", &[ip("10.88.0.2", 24), ip("fd00:88::2", 64)]);
    if let Some(iface) = req.interface.as_mut() {
        iface.hw_addr = "02:00:00:00:00:0a".into();
        iface.mtu = 1400;
    }
    let reply = c.update_interface(ctx(), &req).expect("update interface");
    assert_eq!(
        (reply.hw_addr.as_str(), reply.mtu),
        ("02:00:00:00:00:0a", 1400)
    );
    let has = |reply: &Interface, address: &str, prefix_len: u32| {
        reply
            .addresses
            .iter()
            .any(|a| a.address == address && a.prefix_len == prefix_len)
    };
    assert!(
        has(&reply, "10.88.0.2", 24) && has(&reply, "fd00:88::2", 64),
        "{reply:?}"
    );
    let link = agent.in_netns(&["ip", "-o", "link", "show", "dev", "eth-t0"]);
    assert!(
        link.contains("mtu 1400")
            && link.contains("link/ether 02:00:00:00:00:0a")
            && link_flags(&link).iter().any(|f| f == "UP"),
        "{link}"
    );
    let addresses = agent.in_netns(&["ip", "-o", "addr", "show", "dev", "eth-t0"]);
    assert!(
        addresses.contains("inet 10.88.0.2/24 brd 10.88.0.255")
            && addresses.contains("inet6 fd00:88::2/64"),
        "{addresses}"
    );

    // The addresses given replace those there were; a new MAC on the link
    // that is up now (taken down for the change, then up again).
    let mut req = interface_request("eth-t0", &[ip("10.88.0.3", 24), ip("fd00:88::3", 64)]);
    if let Some(iface) = req.interface.as_mut() {
        iface.hw_addr = "02:00:00:00:00:0b".into();
    }
    let reply = c.update_interface(ctx(), &req).expect("replace addresses");
    assert!(!has(&reply, "10.88.0.2", 24), "{reply:?}");
    assert_eq!(
        (reply.hw_addr.as_str(), reply.mtu),
        ("02:00:00:00:00:0b", 1400)
    );
    let link = agent.in_netns(&["ip", "-o", "link", "show", "dev", "eth-t0"]);
    assert!(link_flags(&link).iter().any(|f| f == "UP"), "{link}");
    let addresses = agent.in_netns(&["ip", "-o", "addr", "show", "dev", "eth-t0"]);
    assert!(
        addresses.contains("inet 10.88.0.3/24")
            && addresses.contains("inet6 fd00:88::3/64")
            && !addresses.contains("10.88.0.2/")
            && !addresses.contains("fd00:88::2/"),
        "{addresses}"
    );

    let mut via_gateway_from = route("192.0.2.0/24", "10.88.0.254", "eth-t0", 0);
    via_gateway_from.source = "10.88.0.3".into();
    let reply = c
        .update_routes(
            ctx(),
            &routes_request(vec![
                route("", "10.88.0.1", "eth-t0", 0),
                via_gateway_from,
                route("10.99.0.0/16", "", "eth-t0", 253),
                route("", "fd00:88::1", "eth-t0", 0),
            ]),
        )
        .expect("update routes");
    let v4 = agent.in_netns(&["ip", "route", "show"]);
    for expected in [
        "default via 10.88.0.1 dev eth-t0",
        "10.99.0.0/16 dev eth-t0 scope link",
        "192.0.2.0/24 via 10.88.0.254 dev eth-t0 src 10.88.0.3",
        "10.88.0.0/24 dev eth-t0 proto kernel",
    ] {
        assert!(v4.contains(expected), "{expected:?} not in\n{v4}");
    }
    let v6 = agent.in_netns(&["ip", "-6", "route", "show"]);
    assert!(v6.contains("default via fd00:88::1 dev eth-t0"), "{v6}");
    let listed = |reply: &Routes, dest: &str, gateway: &str| {
        reply
            .routes
            .iter()
            .any(|r| r.dest == dest && r.gateway == gateway && r.device == "eth-t0")
    };
    assert!(
        listed(&reply, "", "10.88.0.1")
            && listed(&reply, "10.99.0.0/16", "")
            && listed(&reply, "10.88.0.0/24", ""),
        "{reply:?}"
    );
    assert!(
        reply
            .routes
            .iter()
            .any(|r| r.dest == "10.99.0.0/16" && r.scope == 253),
        "{reply:?}"
    );

    // The routes given replace the old ones of the interface; the kernel's
    // prefix routes stay.
    let reply = c
        .update_routes(
            ctx(),
            &routes_request(vec![route("", "10.88.0.254", "eth-t0", 0)]),
        )
        .expect("replace routes");
    let v4 = agent.in_netns(&["ip", "route", "show"]);
    assert!(
        v4.contains("default via 10.88.0.254 dev eth-t0")
            && v4.contains("10.88.0.0/24 dev eth-t0 proto kernel")
            && !v4.contains("10.88.0.1 ")
            && !v4.contains("10.99.0.0")
            && !v4.contains("192.0.2.0"),
        "{v4}"
    );
    let v6 = agent.in_netns(&["ip", "-6", "route", "show"]);
    assert!(!v6.contains("default"), "{v6}");
    assert!(listed(&reply, "", "10.88.0.254"), "{reply:?}");

    // Bad requests: each refused with its code, none changes anything.
    let network = || {
        (
            inet_addresses(&agent, "eth-t0"),
            agent.in_netns(&["ip", "route", "show"]),
            agent.in_netns(&["ip", "-o", "link", "show", "dev", "eth-t0"]),
        )
    };
    let before = network();
    let mut no_interface = UpdateInterfaceRequest::new();
    no_interface.interface = protobuf::MessageField::none();
    let mut bad_mac = interface_request("eth-t0", &[ip("10.88.0.3", 24)]);
    let mut bad_mtu = bad_mac.clone();
    if let Some(iface) = bad_mac.interface.as_mut() {
        iface.hw_addr = "zz:00:00:00:00:01".into();
    }
    if let Some(iface) = bad_mtu.interface.as_mut() {
        iface.mtu = 10;
    }
    for (what, req, code) in [
        ("no interface", no_interface, ttrpc::Code::INVALID_ARGUMENT),
        (
            "no name",
            interface_request("", &[]),
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "unknown interface",
            interface_request("nope0", &[]),
            ttrpc::Code::NOT_FOUND,
        ),
        (
            "bad address",
            interface_request("eth-t0", &[ip("10.88.0.300", 24)]),
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "bad prefix",
            interface_request("eth-t0", &[ip("10.88.0.4", 33)]),
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        ("bad MAC", bad_mac, ttrpc::Code::INVALID_ARGUMENT),
        ("MTU too small", bad_mtu, ttrpc::Code::INVALID_ARGUMENT),
    ] {
        let (got, msg) = rpc_code(c.update_interface(ctx(), &req));
        assert_eq!(got, code, "{what}: {msg}");
    }
    let mut mixed = route("10.77.0.0/16", "fd00:88::1", "eth-t0", 0);
    mixed.source = "10.88.0.3".into();
    for (what, routes, code) in [
        (
            "unknown device",
            vec![route("", "10.88.0.1", "nope0", 0)],
            ttrpc::Code::NOT_FOUND,
        ),
        (
            "no device",
            vec![route("", "10.88.0.1", "", 0)],
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "host bits in the destination",
            vec![route("10.77.0.1/16", "", "eth-t0", 253)],
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        (
            "bad gateway",
            vec![route("", "bogus", "eth-t0", 0)],
            ttrpc::Code::INVALID_ARGUMENT,
        ),
        ("mixed families", vec![mixed], ttrpc::Code::INVALID_ARGUMENT),
        (
            "unreachable gateway",
            vec![route("", "172.31.0.1", "eth-t0", 0)],
            ttrpc::Code::INVALID_ARGUMENT,
        ),
    ] {
        let (got, msg) = rpc_code(c.update_routes(ctx(), &routes_request(routes)));
        assert_eq!(got, code, "{what}: {msg}");
    }
    assert_eq!(before, network(), "a refused request changed the network");
}

use super::*;
use crate::test_utils::{serve_vmm, spawn_vmm_stand_in};

/// A bash process whose command name holds a space and a parenthesis.
const STAT: &str = "4242 (runv vmm) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    12 34 0 0 20 0 3 0 987654 123456789 1234 18446744073709551615 0 0 0 0 0 0 0 0 0";

#[test]
fn parses_proc_texts() {
    assert_eq!(start_time_ticks(STAT), Some(987_654));
    assert_eq!(start_time_ticks("4242 (short) S 1"), None);
    assert_eq!(parse_uptime("12345.67 45678.90\n"), Some(12_345));
    assert_eq!(parse_uptime(""), None);
    assert_eq!(parse_pid("4242\n"), Some(4242));
    assert_eq!(parse_pid("-1"), None);
    assert_eq!(parse_pid("0"), None);
    assert_eq!(parse_pid("42 43"), None);
    let cmdline =
        b"/usr/local/bin/runv-vmm\0--config\0{\"api_sock\":\"/run/runv/pod-10/vm/api.sock\"}\0";
    assert!(names_dir(cmdline, Path::new("/run/runv/pod-10")));
    assert!(!names_dir(cmdline, Path::new("/run/runv/pod-1")));
    assert!(!names_dir(cmdline, Path::new("/run/runv/pod-2")));
}

#[test]
fn formats_the_table() {
    assert_eq!(human_duration(7), "7s");
    assert_eq!(human_duration(306), "5m06s");
    assert_eq!(human_duration(3 * 3600 + 4 * 60 + 5), "3h04m");
    assert_eq!(human_duration(86400 + 2 * 3600), "1d02h");
    let pod = Pod {
        id: "pod-1".into(),
        vmm_pid: Some(4242),
        state: Some("running".into()),
        vcpus: Some(2),
        memory_mib: Some(512),
        uptime_secs: Some(65),
        problems: Vec::new(),
    };
    let empty = Pod {
        id: "pod-2".into(),
        ..Pod::default()
    };
    let table = lines(&[pod, empty]);
    assert_eq!(
        table,
        [
            "POD                       VMM PID STATE         VCPUS   MEMORY   UPTIME",
            "pod-1                        4242 running           2     512M    1m05s",
            "pod-2                           - -                 -        -        -",
        ]
    );
}

#[test]
fn lists_sandbox_directories_and_asks_their_vmm() {
    let root = tempfile::tempdir().unwrap();
    let served = SandboxDir::under(root.path(), "served");
    let server = serve_vmm(&served);

    // A pod whose VMM is gone: a pid file naming a process that is not it.
    let gone = SandboxDir::under(root.path(), "gone");
    std::fs::create_dir(gone.path()).unwrap();
    std::fs::write(gone.vmm_pid_file(), std::process::id().to_string()).unwrap();
    // Not pods: a symlink to a pod, a file, a name that is no sandbox id.
    std::os::unix::fs::symlink(served.path(), root.path().join("linked")).unwrap();
    std::fs::write(root.path().join("file"), "").unwrap();
    std::fs::create_dir(root.path().join("not an id")).unwrap();
    // A `vm` symlink is not followed to another VMM's socket.
    let redirected = SandboxDir::under(root.path(), "redirected");
    std::fs::create_dir(redirected.path()).unwrap();
    std::os::unix::fs::symlink(served.vm_dir(), redirected.vm_dir()).unwrap();

    let pods = list(root.path()).unwrap();
    server.shutdown();
    let ids: Vec<&str> = pods.iter().map(|pod| pod.id.as_str()).collect();
    assert_eq!(ids, ["gone", "redirected", "served"]);
    let [gone, redirected, served] = &pods[..] else {
        unreachable!()
    };
    assert_eq!(gone.vmm_pid, None);
    assert!(
        gone.problems[0].contains("no longer this pod's VMM"),
        "{gone:?}"
    );
    assert_eq!(redirected.state, None);
    assert!(redirected
        .problems
        .iter()
        .any(|p| p.contains("is not a directory")));
    assert_eq!(served.state.as_deref(), Some("paused"));
    assert_eq!((served.vcpus, served.memory_mib), (Some(2), Some(512)));
}

#[test]
fn a_missing_root_has_no_pods_and_a_symlinked_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list(&dir.path().join("none")).unwrap().is_empty());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    assert!(matches!(list(&link), Err(PsError::NotDirectory(_))));
}

#[test]
fn a_live_vmm_is_found_by_its_pid_file_and_command_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(root.path(), "live");
    std::fs::create_dir(dir.path()).unwrap();
    let mut vmm = spawn_vmm_stand_in(&dir);
    let pods = list(root.path());
    vmm.kill().unwrap();
    vmm.wait().unwrap();
    let pods = pods.unwrap();
    let [pod] = &pods[..] else { panic!("{pods:?}") };
    assert_eq!(pod.vmm_pid, i32::try_from(vmm.id()).ok());
    assert!(pod.uptime_secs.is_some_and(|secs| secs < 10), "{pod:?}");
    // No API socket: the VM's size stays unknown.
    assert_eq!(pod.vcpus, None);
    assert_eq!(pod.problems.len(), 1, "{pod:?}");
}

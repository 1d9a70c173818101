use super::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn speed_names_the_emulated_kvm_with_its_figures() {
    let slow = speed_outcome(
        probe::Measured {
            fastest: Duration::from_micros(382_200),
            runs: 3,
        },
        probe::ITERATIONS,
        probe::THRESHOLD,
    );
    assert!(!slow.ok);
    assert_eq!(
        slow.reason,
        "1000000 guest loop rounds in 382.2 ms, the fastest of 3 runs (threshold 100 ms): \
         emulated or nested without hardware assistance"
    );
    let fast = speed_outcome(
        probe::Measured {
            fastest: Duration::from_micros(17_200),
            runs: 1,
        },
        probe::ITERATIONS,
        probe::THRESHOLD,
    );
    assert!(fast.ok);
    assert_eq!(
        fast.reason,
        "1000000 guest loop rounds in 17.2 ms (threshold 100 ms): hardware-assisted"
    );
}

#[test]
fn cpu_passes_on_flags_or_a_paravirtual_kvm() {
    let intel = "flags\t\t: fpu vmx ept\n";
    let pvm = "flags\t\t: fpu hypervisor\n";
    let ok = check_cpu(intel, &["kvm_intel"]);
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.reason, "Intel VT-x (vmx); KVM module kvm_intel");
    let pvm_ok = check_cpu(pvm, &["kvm_pvm"]);
    assert!(pvm_ok.ok);
    assert!(pvm_ok.reason.contains("kvm_pvm, paravirtual"));
    assert!(pvm_ok.reason.contains("itself a VM"));
    let none = check_cpu("flags\t\t: fpu\n", &[]);
    assert!(!none.ok);
    assert!(none.reason.ends_with("no KVM module loaded"));
}

#[test]
fn assets_names_every_missing_file() {
    let config = RunvConfig::default();
    let path = Path::new("/etc/runv/config.toml");
    let all = assets_outcome(path, &config, |_| true);
    assert!(all.ok);
    assert_eq!(
        all.reason,
        "/etc/runv/config.toml: vmm /usr/local/bin/runv-vmm, \
         kernel /usr/share/runv/vmlinux, initrd /usr/share/runv/initrd.img"
    );
    let some = assets_outcome(path, &config, |p| p.ends_with("runv-vmm"));
    assert!(!some.ok);
    assert_eq!(
        some.reason,
        "/etc/runv/config.toml: missing kernel /usr/share/runv/vmlinux, \
         initrd /usr/share/runv/initrd.img"
    );
}

#[test]
fn assets_reports_a_config_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "no_such_key = 1\n").unwrap();
    let outcome = check_assets(&path);
    assert!(!outcome.ok);
    assert!(outcome.reason.contains("config.toml"), "{outcome:?}");
}

#[test]
fn cgroup_fails_only_without_memory_accounting() {
    let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
    let no_memory = check_cgroup(&cgroup::layout_from_mounts(mounts));
    assert!(!no_memory.ok);
    assert_eq!(
        no_memory.reason,
        "hybrid (v1 controllers: cpu): no memory controller mounted"
    );
    assert!(check_cgroup(&Layout::V2).ok);
    assert!(!check_cgroup(&Layout::None).ok);
    let v1 = check_cgroup(&Layout::V1 {
        controllers: vec!["cpu".into(), "memory".into()],
    });
    assert!(v1.ok);
    assert_eq!(
        v1.reason,
        "v1 (v1 controllers: cpu memory); not charged in: cpuacct pids blkio"
    );
}

#[test]
fn containerd_needs_binary_shim_and_runtime() {
    let containerd = PathBuf::from("/usr/bin/containerd");
    let shim = PathBuf::from("/usr/local/bin/containerd-shim-runv-v2");
    let config = Path::new("/etc/containerd/config.toml");
    let all = containerd_outcome(Some(&containerd), Some(&shim), config, Ok(true));
    assert!(all.ok);
    let unnamed = containerd_outcome(Some(&containerd), Some(&shim), config, Ok(false));
    assert!(!unnamed.ok);
    assert_eq!(
        unnamed.reason,
        "/usr/bin/containerd, shim /usr/local/bin/containerd-shim-runv-v2; \
         /etc/containerd/config.toml names no runtime_type \"io.pouch.runv.v2\""
    );
    assert!(!containerd_outcome(None, Some(&shim), config, Ok(true)).ok);
    assert!(!containerd_outcome(Some(&containerd), None, config, Ok(true)).ok);
    let unread = containerd_outcome(
        Some(&containerd),
        Some(&shim),
        config,
        Err(std::io::Error::other("gone")),
    );
    assert!(unread
        .reason
        .ends_with("cannot read /etc/containerd/config.toml: gone"));
}

#[test]
fn outcome_lines_align() {
    assert_eq!(
        Outcome::fail("kvm-speed", "slow").line(),
        "kvm-speed   fail  slow"
    );
    assert_eq!(
        Outcome::pass("kvm", "fine").line(),
        "kvm         ok    fine"
    );
}

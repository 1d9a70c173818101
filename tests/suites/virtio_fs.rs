//! Tier 2: runv-vmm's inline virtio-fs. One boot: the guest mounts the share,
//! changes it (create, write, rename, chmod, symlink, hard link, unlink,
//! mkdir, fallocate) and the host sees it while the VM runs; the host changes
//! it and the guest sees that; a busybox root file system on the share is
//! chrooted into; symlinks pointing out of the share and `..` of the mount
//! reach nothing of the host.

use runv_tests::artefacts::{busybox_initrd, vmm_binary, GuestArtefacts};
use runv_tests::console::VmProcess;
use runv_tests::host::require_kvm;
use runv_tests::scratch::Scratch;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Generous: a nested, emulated test host boots in several seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The guest's part after the host answered.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);
const TAG: &str = "runvtest";

/// The guest's /init: phase 1 changes the share and reports; phase 2 starts
/// once the host created `host-phase2`.
const GUEST_SCRIPT: &str = r#"b=/bin/busybox
$b mount -t devtmpfs dev /dev
$b mount -t proc proc /proc
$b mkdir -p /mnt
$b mount -t virtiofs runvtest /mnt && echo fs-mounted
echo host-read=$($b cat /mnt/host-file)
echo guest-data > /mnt/created
$b mv /mnt/created /mnt/renamed
$b chmod 640 /mnt/renamed
$b ln -s renamed /mnt/sym
$b ln /mnt/renamed /mnt/hard
echo doomed > /mnt/doomed && $b rm /mnt/doomed
$b mkdir /mnt/newdir && $b mkdir /mnt/gone && $b rmdir /mnt/gone
$b fallocate -l 65536 /mnt/falloc && echo falloc-size=$($b stat -c %s /mnt/falloc)
echo readlink=$($b readlink /mnt/sym) via-sym=$($b cat /mnt/sym)
echo statfs-blocks=$($b stat -f -c %b /mnt)
$b chroot /mnt/rootfs /bin/sh -c 'echo chroot-$((20+22))-ok'
echo escape-abs=$($b cat /mnt/escape-abs 2>&1)
echo escape-rel=$($b cat /mnt/escape-rel 2>&1)
echo escape-dotdot=$($b cat /mnt/../outside-secret 2>&1)
echo escape-write > /mnt/escape-write 2>/dev/null || echo escape-write-refused
echo dotdot-is=$(cd /mnt/.. && $b pwd) dotdot-has-init=$($b ls /mnt/.. | $b grep -c '^init$')
$b sync
echo phase1-done
i=0
while [ ! -e /mnt/host-phase2 ] && [ $i -lt 600 ]; do $b sleep 0.1; i=$((i+1)); done
$b sleep 2
echo host-new=$($b cat /mnt/host-new)
[ -e /mnt/hard ] || echo hard-gone-in-guest
echo host-mode=$($b stat -c %a /mnt/host-file)
$b umount /mnt && echo fs-umounted
$b reboot -f
"#;

/// The share: a file from the host, a busybox root file system, and symlinks
/// that point outside it (absolute host path, relative `..`).
fn make_share(share: &Path, outside: &Path) {
    std::fs::write(share.join("host-file"), "from-host-1\n").unwrap();
    let bin = share.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static at /bin/busybox");
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    std::fs::write(outside.join("outside-secret"), "HOST-SECRET-42\n").unwrap();
    std::os::unix::fs::symlink(outside.join("outside-secret"), share.join("escape-abs")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", share.join("escape-rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("written-outside"), share.join("escape-write"))
        .unwrap();
}

/// What the guest's phase 1 left on the host.
fn check_guest_changes(share: &Path) {
    let renamed = share.join("renamed");
    assert_eq!(std::fs::read_to_string(&renamed).unwrap(), "guest-data\n");
    let meta = std::fs::metadata(&renamed).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "chmod");
    assert_eq!(meta.nlink(), 2, "hard link");
    assert_eq!(
        std::fs::metadata(share.join("hard")).unwrap().ino(),
        meta.ino()
    );
    assert_eq!(
        std::fs::read_link(share.join("sym")).unwrap(),
        Path::new("renamed")
    );
    assert!(!share.join("created").exists(), "rename left the old name");
    assert!(!share.join("doomed").exists(), "unlink");
    assert!(share.join("newdir").is_dir(), "mkdir");
    assert!(!share.join("gone").exists(), "rmdir");
    assert_eq!(
        std::fs::metadata(share.join("falloc")).unwrap().len(),
        65536
    );
}

#[test]
fn guest_and_host_share_a_directory_that_guest_paths_cannot_escape() {
    require_kvm();
    let scratch = Scratch::new("runv-vmm-fs");
    let dir = scratch.path();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    make_share(&share, dir);

    let mut guest = GuestArtefacts::from_env();
    guest.initrd = busybox_initrd(dir, "fs", GUEST_SCRIPT);
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--memory-mib", "256", "--console", "stdout"])
        .arg("--fs")
        .arg(format!("tag={TAG},path={}", share.display()));
    let mut vm = VmProcess::spawn(command);
    let phase1 = vm.wait_for("phase1-done", BOOT_TIMEOUT).is_some();
    if phase1 {
        check_guest_changes(&share);
        // The host's turn: the guest sees these after host-phase2 appears.
        std::fs::write(share.join("host-new"), "from-host-2\n").unwrap();
        std::fs::remove_file(share.join("hard")).unwrap();
        std::fs::set_permissions(
            share.join("host-file"),
            std::fs::Permissions::from_mode(0o604),
        )
        .unwrap();
        std::fs::write(share.join("host-phase2"), "").unwrap();
    }
    let run = vm.wait_exit("fs-umounted", PHASE_TIMEOUT);
    let transcript = run.transcript();
    assert!(phase1, "the guest did not finish phase 1:\n{transcript}");
    assert!(run.status.success(), "exit {}:\n{transcript}", run.status);
    for line in [
        "fs-mounted",
        "host-read=from-host-1",
        "falloc-size=65536",
        "readlink=renamed via-sym=guest-data",
        "chroot-42-ok",
        "escape-write-refused",
        "dotdot-is=/ dotdot-has-init=1",
        "host-new=from-host-2",
        "hard-gone-in-guest",
        "host-mode=604",
        "fs-umounted",
    ] {
        assert!(run.saw(line), "no '{line}' on the console:\n{transcript}");
    }
    assert!(
        !run.saw("statfs-blocks=0") && run.saw("statfs-blocks="),
        "statfs:\n{transcript}"
    );
    assert!(
        !run.saw("HOST-SECRET"),
        "the guest read a host file outside the share:\n{transcript}"
    );
    for name in ["escape-abs=", "escape-rel=", "escape-dotdot="] {
        assert!(run.saw(name), "no '{name}':\n{transcript}");
    }
    assert!(
        !dir.join("written-outside").exists(),
        "the guest wrote outside the share"
    );
}

#[test]
fn bad_fs_options_are_refused() {
    require_kvm();
    let guest = GuestArtefacts::from_env();
    let kernel = guest.kernel.display().to_string();
    let not_dir = guest.initrd.display().to_string();
    for (fs, expected) in [
        ("tag=t".to_owned(), "--fs tag=t: no path"),
        (
            "tag=t,path=/no/such/dir".to_owned(),
            "--fs tag=t: /no/such/dir",
        ),
        (format!("tag=t,path={not_dir}"), "is not a directory"),
        (
            "tag=t,path=/,cache=sometimes".to_owned(),
            "unknown cache 'sometimes'",
        ),
        (format!("tag={},path=/", "x".repeat(37)), "1 to 36 bytes"),
    ] {
        let output = Command::new(vmm_binary())
            .args(["--kernel", &kernel, "--fs", &fs])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--fs {fs}: {stderr}");
        assert!(
            stderr.starts_with("runv-vmm: error: ") && stderr.contains(expected),
            "--fs {fs}: expected '{expected}' in: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

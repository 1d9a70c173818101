//! Tier 2: runv-vmm's inline virtio-fs. One boot: the guest mounts the share,
//! changes it (create, write, rename, chmod, symlink, hard link, unlink,
//! mkdir, fallocate, xattrs) and the host sees it while the VM runs; the host
//! changes it and the guest sees that; flock and POSIX locks conflict between
//! guest processes; a busybox root file system on the share is chrooted into;
//! symlinks pointing out of the share, `..` of the mount, and a directory the
//! host keeps swapping with a symlink out of the share reach nothing of the
//! host. The share keeps no setuid bit the guest sets or writes under, makes
//! no device node, refuses `trusted.*` and `security.capability`, and past
//! its bound on host fds answers ENFILE until the guest forgets inodes.

use runv_tests::artefacts::{busybox_initrd_with, fs_check_binary, vmm_binary, GuestArtefacts};
use runv_tests::console::VmProcess;
use runv_tests::host::require_kvm;
use runv_tests::scratch::Scratch;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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
/bin/fs-check xattr /mnt/renamed
/bin/fs-check locks /mnt/lockfile
/bin/fs-check race /mnt/racedir/secret 400
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
echo x > /mnt/suid && $b chmod 4755 /mnt/suid && echo suid-mode=$($b stat -c %a /mnt/suid)
echo more >> /mnt/host-suid && echo host-suid-mode=$($b stat -c %a /mnt/host-suid)
$b mknod /mnt/null c 1 3 2>/dev/null && echo mknod-c-made || echo mknod-c-refused
$b mknod /mnt/fifo p && echo mknod-p-made
/bin/fs-check fill /mnt/fill
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

/// The share: a file from the host, a setuid one, a busybox root file system,
/// and symlinks that point outside it (absolute host path, relative `..`).
fn make_share(share: &Path, outside: &Path) {
    std::fs::write(share.join("host-file"), "from-host-1\n").unwrap();
    std::fs::write(share.join("host-suid"), "host\n").unwrap();
    std::fs::set_permissions(
        share.join("host-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let bin = share.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static at /bin/busybox");
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    std::fs::write(outside.join("outside-secret"), "HOST-SECRET-42\n").unwrap();
    std::os::unix::fs::symlink(outside.join("outside-secret"), share.join("escape-abs")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", share.join("escape-rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("written-outside"), share.join("escape-write"))
        .unwrap();
    let racedir = share.join("racedir");
    std::fs::create_dir(&racedir).unwrap();
    std::fs::write(racedir.join("secret"), "inside\n").unwrap();
    let outside_dir = outside.join("outside-dir");
    std::fs::create_dir(&outside_dir).unwrap();
    std::fs::write(outside_dir.join("secret"), "HOST-SECRET-43\n").unwrap();
    std::os::unix::fs::symlink("../outside-dir", share.join("race-alt")).unwrap();
}

/// Swaps the share's `racedir` with `race-alt`, a symlink out of the share,
/// again and again (renameat2 RENAME_EXCHANGE, atomic) until stopped.
struct RenameRacer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl RenameRacer {
    fn start(share: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let c_path = |name: &str| CString::new(share.join(name).as_os_str().as_bytes()).unwrap();
        let (a, b) = (c_path("racedir"), c_path("race-alt"));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                // SAFETY: both paths are NUL-terminated; AT_FDCWD with absolute paths.
                let ret = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(
                    ret,
                    0,
                    "RENAME_EXCHANGE: {}",
                    std::io::Error::last_os_error()
                );
                swaps += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            swaps
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops swapping; how many swaps were made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().expect("the racer panicked"))
    }
}

impl Drop for RenameRacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The value of the extended attribute `name` of `path` on the host.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: path and name are NUL-terminated; buf is writable for its length.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    buf.truncate(usize::try_from(len).ok()?);
    Some(buf)
}

/// The `race-<key>=N` count the guest printed.
fn race_count(run_lines: &[String], key: &str) -> Option<u32> {
    printed_count(run_lines, &format!("race-{key}="))
}

/// The count the guest printed after `prefix`.
fn printed_count(run_lines: &[String], prefix: &str) -> Option<u32> {
    run_lines.iter().find_map(|line| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
    })
}

/// Regular files in `dir`.
fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .count()
    })
}

/// Files named `made-by-guest-*` in `dir`.
fn made_by_guest(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("made-by-guest-")
            })
            .count()
    })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
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
    assert_eq!(
        host_xattr(&renamed, "security.runv.kept").as_deref(),
        Some(&b"guest"[..]),
        "the guest's xattr on the host"
    );
    for name in [
        "security.runv.gone",
        "trusted.runv.denied",
        "security.capability",
    ] {
        assert_eq!(host_xattr(&renamed, name), None, "{name}");
    }
    let mode = |name: &str| std::fs::metadata(share.join(name)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755, "chmod 4755 by the guest");
    assert_eq!(mode("host-suid"), 0o755, "written by the guest");
    assert_eq!(
        std::fs::read_to_string(share.join("host-suid")).unwrap(),
        "host\nmore\n"
    );
    assert!(
        share.join("null").symlink_metadata().is_err(),
        "a device node"
    );
    assert!(std::fs::symlink_metadata(share.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
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
    guest.initrd =
        busybox_initrd_with(dir, "fs", GUEST_SCRIPT, &[(&fs_check_binary(), "fs-check")]);
    let racer = RenameRacer::start(&share);
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--memory-mib", "256", "--console", "stdout"])
        // cache=never: every guest path walk asks the device, so the rename
        // race below meets the host's swaps instead of the guest's dentry cache.
        // It also makes the guest drop every inode it does not use, so that
        // it holds few: max-fds is low for fs-check fill, which keeps files
        // open, to reach the bound quickly.
        .arg("--fs")
        .arg(format!(
            "tag={TAG},path={},cache=never,max-fds=256",
            share.display()
        ));
    let mut vm = VmProcess::spawn(command);
    let phase1 = vm.wait_for("phase1-done", BOOT_TIMEOUT).is_some();
    let swaps = racer.stop();
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
        "xattr-get=guest xattr-listed=true xattr-removed=enodata xattr-trusted=eperm \
         xattr-capability=eperm",
        "suid-mode=755",
        "host-suid-mode=755",
        "mknod-c-refused",
        "mknod-p-made",
        "fill-refused=enfile fill-made=",
        "fill-again=ok",
        "locks-child-held=true flock-conflict=true posix-conflict=true \
         flock-free-after=true posix-free-after=true",
        "race-rounds=400 ",
        "race-escaped=0",
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
    assert_eq!(
        entries(&dir.join("outside-dir")),
        [dir.join("outside-dir/secret")],
        "the guest created a file outside the share through the raced symlink"
    );
    assert!(swaps > 0, "the host never swapped racedir");
    // fs-check fill held two fds per file (inode, open file) up to the bound,
    // and made one more once it had closed them.
    let made = printed_count(&run.lines, "fill-made=").expect("fill-made");
    assert!(made > 50, "the bound refused early: {made}\n{transcript}");
    assert_eq!(files(&share.join("fill")), made as usize + 1);
    let count = |key| race_count(&run.lines, key).unwrap_or(0);
    assert!(
        count("inside") > 0 && count("failed") > 0,
        "the guest did not meet both sides of the swap ({swaps} swaps):\n{transcript}"
    );
    // The real directory ends under either name; every file the guest made is in it.
    let real = ["racedir", "race-alt"]
        .map(|name| share.join(name))
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
        .expect("the real racedir");
    assert_eq!(
        made_by_guest(&real),
        count("created") as usize,
        "files the guest created during the race are not all in the share's racedir"
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
        (
            "tag=t,path=/,max-fds=1".to_owned(),
            "max-fds must be between 64 and",
        ),
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

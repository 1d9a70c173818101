use super::*;
use std::fs;

/// Runs `body` on a thread in a mount namespace of its own (root needed:
/// a test that cannot get one fails), so nothing it mounts reaches the host.
fn in_own_mount_namespace(body: impl FnOnce() + Send) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_FS).expect("unshare CLONE_FS");
                enter_own_mount_namespace().expect("these tests need root (CAP_SYS_ADMIN)");
                body();
            })
            .join()
            .expect("test thread panicked");
    });
}

fn sandbox_in(root: &Path) -> SandboxDir {
    let dir = SandboxDir::under(root, "pod");
    fs::create_dir(dir.path()).unwrap();
    dir
}

fn volume(source: &Path, cid: &str, index: usize, attrs: MountAttrs) -> ShareBind {
    ShareBind {
        source: source.into(),
        target: SharedPath::new(cid, &format!("mounts/{index}")),
        recursive: true,
        attrs,
    }
}

fn errno_of(result: std::io::Result<()>) -> Option<i32> {
    result.err().and_then(|err| err.raw_os_error())
}

#[test]
fn the_guest_view_is_read_only_but_a_writable_volume_is_not() {
    in_own_mount_namespace(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = sandbox_in(root.path());
        let share = PodShare::create(&dir).unwrap();
        let data = root.path().join("data");
        fs::create_dir(&data).unwrap();
        share
            .bind(&volume(&data, "c1", 0, MountAttrs::default()))
            .unwrap();
        let view = dir.shared();
        for attempt in [
            fs::create_dir(view.join("x")),
            fs::write(view.join("f"), "x"),
            std::os::unix::fs::symlink("/", view.join("l")),
            fs::create_dir(view.join("c1/x")),
            std::os::unix::fs::symlink("/", view.join("c1/mounts/97")),
        ] {
            assert_eq!(errno_of(attempt), Some(libc::EROFS));
        }
        fs::write(view.join("c1/mounts/0/written"), "ok").unwrap();
        assert_eq!(fs::read_to_string(data.join("written")).unwrap(), "ok");
        share.remove_container("c1").unwrap();
        assert!(!view.join("c1").exists());
        assert!(data.join("written").exists(), "the volume's data stays");
        teardown(&dir).unwrap();
        assert!(!mounts::anything_mounted_under(dir.path()).unwrap());
    });
}

#[test]
fn a_read_only_volume_is_read_only_throughout() {
    in_own_mount_namespace(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = sandbox_in(root.path());
        let share = PodShare::create(&dir).unwrap();
        let data = root.path().join("data");
        fs::create_dir_all(data.join("sub")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &data.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
        let attrs = MountAttrs {
            readonly: true,
            nosuid: true,
            nodev: true,
            noexec: true,
        };
        share.bind(&volume(&data, "c1", 0, attrs)).unwrap();
        let seen = dir.shared().join("c1/mounts/0");
        assert!(seen.join("sub").is_dir());
        assert_eq!(
            errno_of(fs::write(seen.join("top"), "x")),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno_of(fs::write(seen.join("sub/below"), "x")),
            Some(libc::EROFS)
        );
        fs::write(data.join("sub/host-side"), "x").unwrap();
        teardown(&dir).unwrap();
        nix::mount::umount2(&data.join("sub"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    });
}

#[test]
fn a_symlink_planted_where_the_shim_mounts_is_refused() {
    in_own_mount_namespace(|| {
        let root = tempfile::tempdir().unwrap();
        let dir = sandbox_in(root.path());
        let share = PodShare::create(&dir).unwrap();
        let host = root.path().join("host-target");
        fs::create_dir(&host).unwrap();
        let data = root.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("file"), "x").unwrap();
        // What a guest would plant if it could write the share (or what an
        // earlier bug left): each place the shim mounts on, as a symlink out.
        let mounts = dir.mounts();
        fs::create_dir_all(mounts.join("c1")).unwrap();
        std::os::unix::fs::symlink(&host, mounts.join("c1/mounts")).unwrap();
        fs::create_dir_all(mounts.join("c2/mounts")).unwrap();
        std::os::unix::fs::symlink(&host, mounts.join("c2/mounts/0")).unwrap();
        std::os::unix::fs::symlink(&host, mounts.join("c3")).unwrap();
        let file = data.join("file");
        for bind in [
            volume(&data, "c1", 0, MountAttrs::default()),
            volume(&data, "c2", 0, MountAttrs::default()),
            volume(&file, "c2", 0, MountAttrs::default()),
            volume(&data, "c3", 0, MountAttrs::default()),
        ] {
            let err = share.bind(&bind).unwrap_err();
            assert!(
                matches!(
                    err,
                    ShareError::Container {
                        source: MountError::Sys {
                            source: Errno::ELOOP | Errno::ENOTDIR,
                            ..
                        },
                        ..
                    }
                ),
                "{err}"
            );
        }
        let rootfs = SharedPath::new("c3", "rootfs");
        assert!(share.mount_rootfs(&rootfs, &[], &data).is_err());
        assert!(!mounts::anything_mounted_under(&host).unwrap());
        assert_eq!(
            fs::read_dir(&host).unwrap().count(),
            0,
            "nothing made on the host"
        );
        teardown(&dir).unwrap();
    });
}

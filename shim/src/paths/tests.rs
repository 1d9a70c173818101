use super::*;

#[test]
fn the_vmms_dirs_are_private_kept_if_there_and_never_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let run = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(run.path(), "pod");
    std::fs::create_dir(dir.path()).unwrap();
    dir.create_vmm_dirs().unwrap();
    for made in [dir.vm_dir(), dir.jail_root()] {
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", made.display());
    }
    dir.create_vmm_dirs()
        .expect("existing directories are kept");

    let planted = SandboxDir::under(run.path(), "planted");
    std::fs::create_dir(planted.path()).unwrap();
    std::os::unix::fs::symlink(run.path(), planted.vm_dir()).unwrap();
    let err = planted.create_vmm_dirs().unwrap_err();
    assert!(err.to_string().contains("/planted/vm"), "{err}");
}

#[test]
fn shared_paths_match_on_both_sides() {
    let dir = SandboxDir::new("pod");
    assert_eq!(dir.vsock_sock(), Path::new("/run/runv/pod/vm/vsock.sock"));
    assert_eq!(dir.shared(), Path::new("/run/runv/pod/shared"));
    let rootfs = SharedPath::new("c1", "rootfs");
    assert_eq!(rootfs.rel, Path::new("c1/rootfs"));
    assert_eq!(rootfs.guest, "/run/runv/shared/c1/rootfs");
}

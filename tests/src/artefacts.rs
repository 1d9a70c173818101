//! The guest kernel and initrd under test, as built by `scripts/test`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the guest artefacts a suite boots.
#[derive(Debug, Clone)]
pub struct GuestArtefacts {
    /// Uncompressed guest kernel (`guest-kernel/build.sh`).
    pub kernel: PathBuf,
    /// Initrd with the agent as `/init` (`images/build-initrd.sh`).
    pub initrd: PathBuf,
}

impl GuestArtefacts {
    /// Reads `RUNV_KERNEL` and `RUNV_INITRD`; panics with the reason when one is
    /// unset or missing, so that a suite never passes without its artefacts.
    pub fn from_env() -> Self {
        Self {
            kernel: required_file("RUNV_KERNEL", "guest-kernel/build.sh"),
            initrd: required_file("RUNV_INITRD", "images/build-initrd.sh"),
        }
    }
}

/// The `runv-vmm` binary under test (`RUNV_VMM`, set by `scripts/test`).
pub fn vmm_binary() -> PathBuf {
    required_file("RUNV_VMM", "scripts/build-vmm (a static runv-vmm)")
}

/// The guest end of the vsock suite (`RUNV_VSOCK_PEER`, from
/// `images/build-test-peer.sh`).
pub fn vsock_peer_binary() -> PathBuf {
    required_file("RUNV_VSOCK_PEER", "images/build-test-peer.sh")
}

/// The guest end of the virtio-fs suite's xattr, lock and rename-race checks:
/// `fs-check`, built beside the vsock peer by `images/build-test-peer.sh`.
pub fn fs_check_binary() -> PathBuf {
    let peer = vsock_peer_binary();
    let path = peer.with_file_name("fs-check");
    assert!(
        path.is_file(),
        "{} is missing: images/build-test-peer.sh builds it beside {}",
        path.display(),
        peer.display()
    );
    path
}

fn required_file(var: &str, builder: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the suite through scripts/test, or set it to the output of {builder}")
    });
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

/// A test-only initrd in `dir`: static busybox plus `/init`, a shell script
/// running `script`. The production initrd holds nothing but the agent.
pub fn busybox_initrd(dir: &Path, name: &str, script: &str) -> PathBuf {
    busybox_initrd_with(dir, name, script, &[])
}

/// [`busybox_initrd`] plus `programs` (host path, name) copied into `/bin`.
pub fn busybox_initrd_with(
    dir: &Path,
    name: &str,
    script: &str,
    programs: &[(&Path, &str)],
) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    for sub in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(sub)).expect("create initrd dirs");
    }
    for (program, name) in programs {
        std::fs::copy(program, root.join("bin").join(name))
            .unwrap_or_else(|err| panic!("copy {} into the initrd: {err}", program.display()));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static at /bin/busybox (scripts/setup)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("link sh");
    let init = root.join("init");
    std::fs::write(&init, format!("#!/bin/sh\n{script}\n")).expect("write init");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod init");
    let initrd = dir.join(format!("{name}-initrd.img"));
    let status = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$2\"")
        .args([
            "sh",
            &root.display().to_string(),
            &initrd.display().to_string(),
        ])
        .status()
        .expect("run cpio");
    assert!(status.success(), "packing {} failed", initrd.display());
    initrd
}

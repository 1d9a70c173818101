//! The guest kernel and initrd under test, as built by `scripts/test`.

use std::path::PathBuf;

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
    required_file(
        "RUNV_VMM",
        "cargo build --release (target/release/runv-vmm)",
    )
}

fn required_file(var: &str, builder: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the suite through scripts/test, or set it to the output of {builder}")
    });
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

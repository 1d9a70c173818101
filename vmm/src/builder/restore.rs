//! What a VM started from a snapshot needs of its configuration: a snapshot
//! made from the same boot files and shape, and no device whose state a
//! snapshot does not hold.

use super::BuildError;
use crate::config::VmConfig;
use crate::snapshot::{self, SnapshotError, VmSnapshot};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Reads the snapshot in `dir` for `config` and opens its memory file.
pub fn open(dir: &Path, config: &VmConfig) -> Result<(VmSnapshot, File), BuildError> {
    if let Some(device) = virtio_devices(config).first() {
        return Err(SnapshotError::Unsupported((*device).to_owned()).into());
    }
    let state = VmSnapshot::read(
        dir,
        config.cpus,
        config.memory_mib,
        &boot_fingerprint(config),
    )?;
    let memory = snapshot::open_memory(dir, config.memory_mib)?;
    Ok((state, memory))
}

/// The virtio devices `config` asks for, by name.
pub fn virtio_devices(config: &VmConfig) -> Vec<&'static str> {
    [
        (!config.disks.is_empty(), "a virtio-blk disk"),
        (!config.fs.is_empty(), "a virtio-fs share"),
        (config.rng, "virtio-rng"),
        (config.free_page_reporting, "virtio-balloon"),
        (config.vsock.is_some(), "virtio-vsock"),
        (!config.net.is_empty(), "a virtio-net card"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect()
}

/// What the guest was booted from: the kernel's and initrd's paths, sizes
/// and modification times, and the extra command line. A snapshot records
/// it, and a VM whose files changed since is not started from it.
pub fn boot_fingerprint(config: &VmConfig) -> String {
    let file = |path: &Path| match std::fs::metadata(path) {
        Ok(meta) => format!(
            "{} {} {}.{}",
            path.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
        Err(_) => format!("{} missing", path.display()),
    };
    format!(
        "kernel {}; initrd {}; cmdline {:?}",
        file(&config.kernel),
        config.initrd.as_deref().map_or("none".into(), file),
        config.cmdline.as_deref().unwrap_or("")
    )
}

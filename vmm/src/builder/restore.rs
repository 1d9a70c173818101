//! What a VM started from a snapshot needs of its configuration: a snapshot
//! made from the same boot files and shape, and the same virtio devices in
//! the same order (their back ends may differ: the VM's own sockets, share
//! directory and disks).

use super::{BuildError, VirtioSlot};
use crate::config::VmConfig;
use crate::snapshot::{self, SnapshotError, VmSnapshot};
use protocol::vm_config::file_identity;
use std::fs::File;
use std::path::Path;

/// Reads the snapshot in `dir` for `config` and opens its memory file.
pub fn open(dir: &Path, config: &VmConfig) -> Result<(VmSnapshot, File), BuildError> {
    let state = VmSnapshot::read(
        dir,
        config.cpus,
        config.memory_mib,
        &boot_fingerprint(config),
    )?;
    let memory = snapshot::open_memory(dir, config.memory_mib)?;
    Ok((state, memory))
}

/// Gives each virtio transport its state from `snapshot`, slot by slot:
/// the configuration must build the devices the snapshot holds, in order.
pub(super) fn devices(snapshot: &VmSnapshot, virtio: &[VirtioSlot]) -> Result<(), BuildError> {
    if snapshot.devices.len() != virtio.len() {
        return Err(SnapshotError::DeviceCount {
            snapshot: snapshot.devices.len(),
            config: virtio.len(),
        }
        .into());
    }
    for (index, (slot, state)) in virtio.iter().zip(&snapshot.devices).enumerate() {
        slot.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(state)
            .map_err(|source| SnapshotError::Device { index, source })?;
    }
    Ok(())
}

/// What the guest was booted from: the kernel's and initrd's paths, sizes
/// and modification times, and the extra command line. A snapshot records
/// it, and a VM whose files changed since is not started from it.
pub fn boot_fingerprint(config: &VmConfig) -> String {
    format!(
        "kernel {}; initrd {}; cmdline {:?}",
        file_identity(&config.kernel),
        config
            .initrd
            .as_deref()
            .map_or("none".into(), file_identity),
        config.cmdline.as_deref().unwrap_or("")
    )
}

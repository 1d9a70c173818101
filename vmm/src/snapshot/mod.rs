//! VM snapshots, the ground of VM templates: a paused VM's state (vCPUs,
//! interrupt controllers, PIT, kvmclock, UART) and its memory written to a
//! directory, and a new VM built from one, its memory mapped privately from
//! the snapshot's file so that every VM started from it shares the pages it
//! only reads.
//!
//! A snapshot is made for the same VMM build and host (CPUID is derived
//! again at restore, as at boot). Taking one stops the virtio devices'
//! serving for good (their transports and rings are saved, their back ends
//! are the restored VM's own), so the VM can then only be shut down.

pub mod memory_file;
mod serial_state;
mod take;
#[cfg(test)]
mod tests;
mod vcpu_state;
mod vm_state;

pub use serial_state::SerialSnapshot;
pub use take::{SnapshotSizes, SnapshotSource, SnapshotTarget};
pub use vcpu_state::{VcpuState, VcpuStateError};
pub use vm_state::{VmState, VmStateError};

use crate::devices::virtio::mmio::state::{TransportState, TransportStateError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use protocol::vm_config::{
    SNAPSHOT_MEMORY_FILE as MEMORY_FILE, SNAPSHOT_STATE_FILE as STATE_FILE,
};
/// What this VMM writes and reads; any other version is refused.
const FORMAT_VERSION: u32 = 1;
/// Largest state file read (a vCPU's state is about 20 KiB of JSON).
const MAX_STATE_BYTES: u64 = 4 << 20;

/// Errors while writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot file cannot be written or read.
    #[error("snapshot file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    /// The state file is not a snapshot of this format.
    #[error("snapshot state {path}: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The state file is larger than any snapshot's.
    #[error("snapshot state {path} is over {MAX_STATE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// Another format version.
    #[error("snapshot {path} has format version {found}, this VMM reads {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    /// The snapshot was made for another VM shape.
    #[error("snapshot {path} was made with {what} {snapshot}, the VM is configured with {config}")]
    Shape {
        path: PathBuf,
        what: &'static str,
        snapshot: u64,
        config: u64,
    },
    /// The snapshot was made from other boot files.
    #[error("snapshot {path} was made from {snapshot}, the VM is configured with {config}")]
    OtherBoot {
        path: PathBuf,
        snapshot: String,
        config: String,
    },
    /// The memory file does not hold the whole guest memory.
    #[error("snapshot memory {path} has {found} bytes, the guest has {expected}")]
    MemorySize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    /// A vCPU's state.
    #[error("vCPU {index}: {source}")]
    Vcpu {
        index: usize,
        source: VcpuStateError,
    },
    /// The VM's state.
    #[error(transparent)]
    Vm(#[from] VmStateError),
    /// The VM has a device that cannot stop for a snapshot.
    #[error("no snapshot of a VM with {0}: it cannot stop serving its queues")]
    Unsupported(String),
    /// The snapshot holds another number of virtio devices than the VM.
    #[error("the snapshot holds {snapshot} virtio devices, the VM is configured with {config}")]
    DeviceCount { snapshot: usize, config: usize },
    /// A virtio device's state does not fit the VM's device in its slot.
    #[error("virtio slot {index}: {source}")]
    Device {
        index: usize,
        source: TransportStateError,
    },
    /// The vCPUs are not all paused.
    #[error("the VM must be paused for a snapshot")]
    NotPaused,
    /// No snapshot directory was configured.
    #[error("no snapshot directory is configured (--snapshot-dir)")]
    NoDirectory,
}

/// A paused VM's state, without its memory.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    version: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// What the guest was booted from (kernel, initrd, command line).
    boot: String,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Each vCPU's state, by index.
    pub vcpus: Vec<VcpuState>,
    /// The UART's registers.
    pub serial: SerialSnapshot,
    /// Each virtio transport's state, in slot order.
    pub devices: Vec<TransportState>,
}

impl VmSnapshot {
    /// A snapshot of the parts read from a paused VM.
    pub fn new(
        memory_mib: u64,
        boot: String,
        vm: VmState,
        vcpus: Vec<VcpuState>,
        serial: SerialSnapshot,
        devices: Vec<TransportState>,
    ) -> Self {
        Self {
            version: FORMAT_VERSION,
            memory_mib,
            boot,
            vm,
            vcpus,
            serial,
            devices,
        }
    }

    /// Writes the state file into `dir` (whole or not at all: through a
    /// temporary file renamed into place); returns its size.
    pub fn write(&self, dir: &Path) -> Result<u64, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let temp = dir.join(format!("{STATE_FILE}.tmp"));
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::File { path, source }
        };
        let bytes = serde_json::to_vec(self).map_err(|source| SnapshotError::Format {
            path: path.clone(),
            source,
        })?;
        let file = create(&temp).map_err(file_err(&temp))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 0).map_err(file_err(&temp))?;
        file.sync_all().map_err(file_err(&temp))?;
        std::fs::rename(&temp, &path).map_err(file_err(&path))?;
        Ok(bytes.len() as u64)
    }

    /// Reads the state file of `dir` and checks it against the VM's shape
    /// and what it boots from (`boot`).
    pub fn read(dir: &Path, cpus: u8, memory_mib: u64, boot: &str) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let file_err = |source| SnapshotError::File {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .map_err(file_err)?
            .take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(file_err)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(SnapshotError::TooLarge { path });
        }
        let snapshot: Self =
            serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Format {
                path: path.clone(),
                source,
            })?;
        if snapshot.version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path,
                found: snapshot.version,
            });
        }
        let shape = [
            ("vCPUs", snapshot.vcpus.len() as u64, u64::from(cpus)),
            ("MiB of memory", snapshot.memory_mib, memory_mib),
        ];
        if let Some((what, snapshot, config)) = shape.into_iter().find(|(_, s, c)| s != c) {
            return Err(SnapshotError::Shape {
                path,
                what,
                snapshot,
                config,
            });
        }
        if snapshot.boot != boot {
            return Err(SnapshotError::OtherBoot {
                path,
                snapshot: snapshot.boot,
                config: boot.to_owned(),
            });
        }
        Ok(snapshot)
    }
}

/// Opens the memory file of `dir` for a guest of `memory_mib`, checking that
/// it holds all of it (a short file would fault the VMM past its end).
pub fn open_memory(dir: &Path, memory_mib: u64) -> Result<File, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file_err = |source| SnapshotError::File {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(file_err)?;
    let found = file.metadata().map_err(file_err)?.len();
    let expected = memory_mib << 20;
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path,
            found,
            expected,
        });
    }
    Ok(file)
}

/// Creates (or empties) the memory file of `dir`.
pub fn create_memory(dir: &Path) -> Result<File, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    create(&path).map_err(|source| SnapshotError::File { path, source })
}

/// A new file, or an existing one emptied, never through a symlink.
fn create(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

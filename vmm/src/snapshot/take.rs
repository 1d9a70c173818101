//! Taking a snapshot of a running VMM's paused VM.

use super::{memory_file, SnapshotError, VmSnapshot, VmState};
use crate::devices::legacy::Serial;
use crate::vstate::vcpu::VcpuControl;
use crate::vstate::vm::Vm;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

/// How long the parked vCPUs get to read their state.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a snapshot reads beyond the vCPUs: kept by the VMM from its build.
pub struct SnapshotSource {
    /// The VM (interrupt controllers, PIT, clock).
    pub vm: Arc<Vm>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The UART.
    pub serial: Arc<Mutex<Serial>>,
    /// KVM's list of MSRs to save, read before the filters were installed.
    pub msr_list: Arc<[u32]>,
    /// Where snapshots go, if anywhere.
    pub dir: Option<PathBuf>,
    /// What the guest was booted from.
    pub boot: String,
    /// The VM's virtio devices, by name: a snapshot cannot hold them yet.
    pub devices: Vec<&'static str>,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSizes {
    /// Bytes of guest memory written (pages of zeros are holes).
    pub memory_bytes: u64,
    /// Bytes of the state file.
    pub state_bytes: u64,
}

impl SnapshotSource {
    /// Writes the snapshot of the VM, whose `cpus` vCPUs `control` holds
    /// parked, into the snapshot directory: memory first, the state file
    /// last, so that a directory with a state file holds a whole snapshot.
    pub fn take(&self, control: &VcpuControl, cpus: u8) -> Result<SnapshotSizes, SnapshotError> {
        let dir = self.dir.as_deref().ok_or(SnapshotError::NoDirectory)?;
        if let Some(device) = self.devices.first() {
            return Err(SnapshotError::Unsupported((*device).to_owned()));
        }
        let vcpus =
            control.save_vcpus(usize::from(cpus), self.msr_list.clone(), VCPU_SAVE_TIMEOUT)?;
        let vm = VmState::save(self.vm.fd())?;
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
            .into();
        let memory_mib = self.mem_mib();
        // A state file left by an earlier snapshot would describe the new
        // memory wrongly while it is written.
        let _ = std::fs::remove_file(dir.join(super::STATE_FILE));
        let memory = super::create_memory(dir)?;
        let memory_bytes =
            memory_file::save(&self.mem, &memory).map_err(|source| SnapshotError::File {
                path: dir.join(super::MEMORY_FILE),
                source,
            })?;
        let state = VmSnapshot::new(memory_mib, self.boot.clone(), vm, vcpus, serial);
        let state_bytes = state.write(dir)?;
        Ok(SnapshotSizes {
            memory_bytes,
            state_bytes,
        })
    }

    fn mem_mib(&self) -> u64 {
        use vm_memory::{GuestMemory, GuestMemoryRegion};
        self.mem.iter().map(|region| region.len()).sum::<u64>() >> 20
    }
}

//! Taking a snapshot of a running VMM's paused VM.

use super::{memory_file, SnapshotError, VmSnapshot, VmState};
use crate::devices::legacy::Serial;
use crate::devices::virtio::mmio::state::TransportState;
use crate::devices::virtio::mmio::MmioTransport;
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
    /// Where snapshots go, if the VMM was given a directory.
    pub target: Option<SnapshotTarget>,
    /// The VM's virtio transports, in slot order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// What only a VMM that may snapshot reads at its start.
pub struct SnapshotTarget {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// What the guest was booted from.
    pub boot: String,
    /// KVM's list of MSRs to save, read before the filters were installed.
    pub msr_list: Arc<[u32]>,
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
    /// Writes the snapshot of the VM (`memory_mib` of memory), whose `cpus`
    /// vCPUs `control` holds parked, into the snapshot directory: memory
    /// first, the state file last, so that a directory with a state file
    /// holds a whole snapshot.
    pub fn take(
        &self,
        control: &VcpuControl,
        cpus: u8,
        memory_mib: u64,
    ) -> Result<SnapshotSizes, SnapshotError> {
        let target = self.target.as_ref().ok_or(SnapshotError::NoDirectory)?;
        let dir = target.dir.as_path();
        // First: a device still serving could raise an interrupt or write
        // guest memory after the state below was read.
        let devices = self.stop_devices()?;
        let vcpus = control.save_vcpus(
            usize::from(cpus),
            target.msr_list.clone(),
            VCPU_SAVE_TIMEOUT,
        )?;
        let vm = VmState::save(self.vm.fd())?;
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
            .into();
        // A state file left by an earlier snapshot would describe the new
        // memory wrongly while it is written.
        let _ = std::fs::remove_file(dir.join(super::STATE_FILE));
        let memory = super::create_memory(dir)?;
        let memory_bytes =
            memory_file::save(&self.mem, &memory).map_err(|source| SnapshotError::File {
                path: dir.join(super::MEMORY_FILE),
                source,
            })?;
        let state = VmSnapshot::new(memory_mib, target.boot.clone(), vm, vcpus, serial, devices);
        let state_bytes = state.write(dir)?;
        Ok(SnapshotSizes {
            memory_bytes,
            state_bytes,
        })
    }

    /// Stops every virtio device's serving, so that no device writes guest
    /// memory while it is saved, and reads each transport's state.
    fn stop_devices(&self) -> Result<Vec<TransportState>, SnapshotError> {
        self.transports
            .iter()
            .map(|transport| {
                let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
                if !transport.quiesce() {
                    let device = transport.save().device_type;
                    return Err(SnapshotError::Unsupported(device_name(device).to_owned()));
                }
                Ok(transport.save())
            })
            .collect()
    }
}

/// A virtio device type's name, for errors.
fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "a virtio-net card",
        2 => "a virtio-blk disk",
        4 => "virtio-rng",
        5 => "virtio-balloon",
        19 => "virtio-vsock",
        26 => "a virtio-fs share",
        _ => "an unknown virtio device",
    }
}

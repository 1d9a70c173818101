//! The VM-wide state KVM holds: the in-kernel interrupt controllers, the PIT
//! and the guest's clock (kvmclock).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors while reading or writing the VM's state.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {source}")]
pub struct VmStateError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

/// The chips in the order they are saved and restored.
const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// The two PICs, the IOAPIC, the PIT and kvmclock of a paused VM.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct VmState {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

impl VmState {
    /// Reads the state of `fd`, whose vCPUs are all paused.
    pub fn save(fd: &VmFd) -> Result<Self, VmStateError> {
        let irqchips = IRQCHIPS
            .into_iter()
            .map(|chip_id| {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                fd.get_irqchip(&mut chip)
                    .map_err(kvm_err("read an interrupt controller"))?;
                Ok(chip)
            })
            .collect::<Result<_, _>>()?;
        let mut clock = fd.get_clock().map_err(kvm_err("read kvmclock"))?;
        // No flags: with KVM_CLOCK_REALTIME, KVM_SET_CLOCK would move the
        // clock on by the time the snapshot spent on disk; the others only
        // describe this reading.
        clock.flags = 0;
        Ok(Self {
            irqchips,
            pit: fd.get_pit2().map_err(kvm_err("read the PIT"))?,
            clock,
        })
    }

    /// Writes the state into `fd`, a new VM with its irqchip and PIT
    /// created and no vCPU run yet. The guest's clock goes on from where it
    /// was saved: the time the template spent on disk does not pass for it.
    pub fn restore(&self, fd: &VmFd) -> Result<(), VmStateError> {
        fd.set_pit2(&self.pit).map_err(kvm_err("set the PIT"))?;
        fd.set_clock(&self.clock).map_err(kvm_err("set kvmclock"))?;
        for chip in &self.irqchips {
            fd.set_irqchip(chip)
                .map_err(kvm_err("set an interrupt controller"))?;
        }
        Ok(())
    }
}

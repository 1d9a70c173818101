//! One vCPU's architectural state: read from KVM on a paused vCPU, and
//! written back into a new vCPU, in the order Firecracker restores it.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Errors while reading or writing a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A vCPU ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than the snapshot holds.
    #[error("KVM restored {set} of the snapshot's {wanted} MSRs (the first refused: {first:#x})")]
    Msrs {
        set: usize,
        wanted: usize,
        first: u32,
    },
    /// The MSR list cannot be built.
    #[error("cannot build the MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, source }
}

/// Everything KVM holds about one vCPU that a restored guest needs. The FPU
/// and vector registers are in `xsave`; CPUID is not saved: the restoring
/// VMM derives it as at boot, for the same host.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(Default))]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    debug_regs: kvm_debugregs,
    /// Every MSR of KVM's save list this vCPU could read: (index, value).
    msrs: Vec<(u32, u64)>,
}

impl VcpuState {
    /// Reads the state of `fd`, a vCPU outside `KVM_RUN`; `msr_list` is
    /// KVM's list of MSRs to save (`KVM_GET_MSR_INDEX_LIST`).
    pub fn save(fd: &VcpuFd, msr_list: &[u32]) -> Result<Self, VcpuStateError> {
        Ok(Self {
            regs: fd.get_regs().map_err(kvm_err("read the registers"))?,
            sregs: fd
                .get_sregs()
                .map_err(kvm_err("read the special registers"))?,
            xsave: fd.get_xsave().map_err(kvm_err("read the XSAVE area"))?,
            xcrs: fd.get_xcrs().map_err(kvm_err("read the XCRs"))?,
            lapic: fd.get_lapic().map_err(kvm_err("read the local APIC"))?,
            mp_state: fd.get_mp_state().map_err(kvm_err("read the MP state"))?,
            events: fd
                .get_vcpu_events()
                .map_err(kvm_err("read the pending events"))?,
            debug_regs: fd
                .get_debug_regs()
                .map_err(kvm_err("read the debug registers"))?,
            msrs: read_msrs(fd, msr_list)?,
        })
    }

    /// Writes the state into `fd`, a new vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        fd.set_mp_state(self.mp_state)
            .map_err(kvm_err("set the MP state"))?;
        fd.set_regs(&self.regs)
            .map_err(kvm_err("set the registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(kvm_err("set the special registers"))?;
        // SAFETY: `xsave` is a whole kvm_xsave as KVM_GET_XSAVE wrote it, the
        // size KVM_SET_XSAVE reads.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm_err("set the XSAVE area"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm_err("set the XCRs"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm_err("set the debug registers"))?;
        fd.set_lapic(&self.lapic)
            .map_err(kvm_err("set the local APIC"))?;
        write_msrs(fd, &self.msrs)?;
        // Last: pending events depend on the state above.
        fd.set_vcpu_events(&self.events)
            .map_err(kvm_err("set the pending events"))
    }
}

/// Reads each MSR of `list` on its own: KVM stops a batch at the first MSR
/// it cannot read (one this CPU model lacks), and skipping those is what the
/// guest can observe anyway.
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut values = Vec::with_capacity(list.len());
    for &index in list {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(VcpuStateError::MsrList)?;
        if fd.get_msrs(&mut msrs).map_err(kvm_err("read the MSRs"))? == 1 {
            values.push((index, msrs.as_slice()[0].data));
        }
    }
    Ok(values)
}

fn write_msrs(fd: &VcpuFd, values: &[(u32, u64)]) -> Result<(), VcpuStateError> {
    for (chunk_index, chunk) in values.chunks(KVM_MAX_MSR_ENTRIES).enumerate() {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(VcpuStateError::MsrList)?;
        let set = fd.set_msrs(&msrs).map_err(kvm_err("set the MSRs"))?;
        if set != entries.len() {
            return Err(VcpuStateError::Msrs {
                set: chunk_index * KVM_MAX_MSR_ENTRIES + set,
                wanted: values.len(),
                first: chunk.get(set).map_or(0, |(index, _)| *index),
            });
        }
    }
    Ok(())
}

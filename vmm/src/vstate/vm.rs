//! The KVM VM: guest memory slots, in-kernel irqchip and PIT.

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// KVM API version this VMM speaks.
const KVM_API_VERSION: i32 = 12;

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("KVM API version {0} is not supported (need {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability the VMM relies on is missing.
    #[error("KVM lacks the capability {0:?}")]
    MissingCap(Cap),
    /// A guest memory region has no host mapping.
    #[error("guest memory region has no host address: {0}")]
    HostAddress(vm_memory::GuestMemoryError),
    /// A VM-level KVM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Capabilities the VMM cannot work without.
const REQUIRED_CAPS: [Cap; 6] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
];

/// A KVM VM with its memory registered and its interrupt controllers created.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, registers `mem` and creates the IOAPIC/PIC and PIT.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS
            .into_iter()
            .find(|cap| !kvm.check_extension(*cap))
        {
            return Err(VmError::MissingCap(cap));
        }
        let fd = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host_addr = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(VmError::HostAddress)?;
            let kvm_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which outlives
            // the VM (the builder keeps both and drops the VM first).
            unsafe { fd.set_user_memory_region(kvm_region) }
                .map_err(kvm_err("register guest memory"))?;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;
        Ok(Self { kvm, fd })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}

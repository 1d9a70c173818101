//! Initial vCPU register state for the two boot protocols.

use super::gdt::{segment_from_gdt, LONG_MODE_GDT, PVH_GDT};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Bit 1 of RFLAGS is reserved and must be set.
const RFLAGS_RESERVED: u64 = 0x2;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, `rbx` = start info.
    Pvh {
        /// PVH entry point (from the ELF note).
        entry: GuestAddress,
        /// `hvm_start_info` address.
        start_info: GuestAddress,
    },
    /// 64-bit Linux boot protocol: long mode, identity-mapped, `rsi` = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: GuestAddress,
        /// `boot_params` address.
        zero_page: GuestAddress,
    },
}

/// Errors while setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Writing boot tables to guest memory failed.
    #[error("cannot write the {what} to guest memory: {source}")]
    Memory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// x87 and SSE control words as after a reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("set FPU state"))
}

/// General-purpose registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, boot: BootEntry) -> Result<(), RegsError> {
    let regs = match boot {
        BootEntry::Pvh { entry, start_info } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.0,
            rbx: start_info.0,
            ..Default::default()
        },
        BootEntry::Linux64 { entry, zero_page } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page.0,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm_err("set registers"))
}

/// Segment and control registers of the boot vCPU, with the GDT, an empty IDT
/// and (for long mode) identity page tables written to guest memory.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, boot: BootEntry) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("get special registers"))?;
    match boot {
        BootEntry::Pvh { .. } => {
            load_segments(mem, &mut sregs, &PVH_GDT)?;
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
        }
        BootEntry::Linux64 { .. } => {
            load_segments(mem, &mut sregs, &LONG_MODE_GDT)?;
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("set special registers"))
}

fn load_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    gdt: &[u64],
) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + (i * 8) as u64))
            .map_err(|source| RegsError::Memory {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|source| RegsError::Memory {
            what: "IDT",
            source,
        })?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let code = segment_from_gdt(gdt, 1);
    let data = segment_from_gdt(gdt, 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt, 3);
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the kernel to
/// reach its own page tables.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| RegsError::Memory {
                what: "page tables",
                source,
            })
    };
    write(PDPTE_START | 0x03, PML4_START)?;
    write(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        write((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn identity_page_tables_map_first_gib() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }
}

//! Guest physical memory layout (the same shape as Firecracker's).
//!
//! ```text
//! 0x0000_0500  GDT                  0x0000_9000  PML4, PDPTE, PDE (64-bit boot)
//! 0x0000_0520  IDT                  0x0002_0000  kernel command line
//! 0x0000_6000  PVH start info       0x0009_fc00  MP table (last KiB of base memory)
//! 0x0000_7000  zero page / PVH e820 0x0010_0000  kernel, then RAM up to the MMIO gap
//! 0x0000_8ff0  boot stack           0xd000_0000  MMIO gap: virtio-mmio, IOAPIC, LAPIC
//! ```
//! RAM beyond the gap continues at 4 GiB.

/// Boot GDT.
pub const GDT_START: u64 = 0x500;
/// Boot IDT (empty).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit boot protocol.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line x86 Linux accepts (`COMMAND_LINE_SIZE`), with its NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// MP table, in the last KiB of base memory where Linux scans for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// First address above the legacy hole: the kernel loads here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (768 MiB below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for its TSS on Intel, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Highest IRQ line routed through the IOAPIC (24 pins).
pub const IRQ_MAX: u8 = 23;
/// Page size.
pub const PAGE_SIZE: u64 = 0x1000;

//! Boot information for the guest kernel: the memory map and the PVH start info
//! or Linux zero page that carries it, with the command line and initrd.

use super::layout::{
    EBDA_START, HIMEM_START, MMIO_GAP_END, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Linux boot protocol header magic "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag`.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.type_of_loader`: an undefined boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Minimum kernel alignment the 64-bit protocol asks for.
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Largest e820 table in the zero page.
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Errors while writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Guest memory rejected a write.
    #[error("cannot write {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    /// More memory regions than the zero page holds.
    #[error("the guest memory map has too many entries for the zero page")]
    TooManyE820Entries,
}

/// One range of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type (1 = RAM).
    pub kind: u32,
}

/// Where the command line and initrd sit in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct BootPayload {
    /// Command line address and length (without the NUL).
    pub cmdline: (GuestAddress, usize),
    /// Initrd address and size, if any.
    pub initrd: Option<(GuestAddress, usize)>,
}

/// The RAM map a guest sees: base memory below the EBDA, then every region
/// from 1 MiB on (below the MMIO gap and above 4 GiB).
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.last_addr().raw_value() + 1;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    value: T,
    addr: u64,
    what: &'static str,
) -> Result<(), BootError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, source })
}

/// Writes the PVH start info, module list and memory map; returns the start
/// info's address, which the vCPU gets in `rbx`.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    payload: &BootPayload,
) -> Result<GuestAddress, BootError> {
    let map = e820_map(mem);
    for (i, entry) in map.iter().enumerate() {
        let table_entry = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write(mem, table_entry, addr, "PVH memory map")?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: payload.cmdline.0.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = payload.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size: size as u64,
            ..Default::default()
        };
        write(mem, module, PVH_MODLIST_START, "PVH module list")?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    write(mem, info, PVH_INFO_START, "PVH start info")?;
    Ok(GuestAddress(PVH_INFO_START))
}

/// Writes the Linux boot protocol zero page, starting from the kernel's own
/// setup header when it has one (bzImage); returns its address, which the vCPU
/// gets in `rsi`.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    payload: &BootPayload,
    kernel_header: Option<setup_header>,
) -> Result<GuestAddress, BootError> {
    let mut params = boot_params::default();
    if let Some(header) = kernel_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = payload.cmdline.0.raw_value() as u32;
    params.hdr.cmdline_size = payload.cmdline.1 as u32;
    if let Some((addr, size)) = payload.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820Entries);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.type_ = entry.kind;
    }
    params.e820_entries = map.len() as u8;
    write(mem, params, ZERO_PAGE_START, "zero page")?;
    Ok(GuestAddress(ZERO_PAGE_START))
}

/// Highest address (exclusive) of the RAM below 4 GiB, where the initrd goes.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|region| region.last_addr().raw_value() + 1)
        .filter(|end| *end <= MMIO_GAP_END)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    fn payload() -> BootPayload {
        BootPayload {
            cmdline: (GuestAddress(0x20000), 10),
            initrd: Some((GuestAddress(0x400_0000), 0x1234)),
        }
    }

    #[test]
    fn e820_map_skips_legacy_hole_and_mmio_gap() {
        let mem = create_guest_memory(128 << 20).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
        let big = create_guest_memory(4 << 30).unwrap();
        let map = e820_map(&big);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[1].addr + map[1].size,
            crate::arch::x86_64::layout::MMIO_GAP_START
        );
        assert_eq!(map[2].addr, MMIO_GAP_END);
        let total: u64 = map.iter().map(|e| e.size).sum::<u64>() + (HIMEM_START - EBDA_START);
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_initrd_and_map() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let addr = write_pvh_start_info(&mem, &payload()).unwrap();
        let info: hvm_start_info = mem.read_obj(addr).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 2);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x400_0000, 0x1234));
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(second.addr, HIMEM_START);
    }

    #[test]
    fn zero_page_carries_header_magic_cmdline_and_e820() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let addr = write_zero_page(&mem, &payload(), None).unwrap();
        let params: boot_params = mem.read_obj(addr).unwrap();
        assert_eq!({ params.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 2);
    }
}

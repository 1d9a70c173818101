//! The Intel MultiProcessor table (MPS 1.4) that tells a guest without ACPI its
//! CPUs, the IOAPIC and how the 24 ISA/IOAPIC interrupt lines route.
//!
//! runv uses the MP table, not ACPI: the guest kernel is built without ACPI
//! (smaller, faster to boot), and nothing else in ACPI is needed by a guest
//! whose devices are announced on the command line.

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IRQ_MAX, MPTABLE_START};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most vCPUs whose entries fit in the last KiB of base memory.
pub const MAX_VCPUS: u8 = 32;

const MPTABLE_AREA_END: u64 = 0xa0000;
const MPC_SPEC_1_4: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MPC_APIC_USABLE: u8 = 1;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
const BUS_ID_ISA: u8 = 0;
const FLOATING_POINTER_LEN: usize = 16;
const TABLE_HEADER_LEN: usize = 44;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table's area.
    #[error("the MP table takes 1 to {MAX_VCPUS} vCPUs, not {0}")]
    TooManyCpus(u8),
    /// Guest memory rejected the write.
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer followed by the configuration table, as bytes.
pub fn mptable_bytes(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entry_count += 2;
    for irq in 0..=IRQ_MAX {
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            IRQ_TYPE_INT,
            0,
            0,
            BUS_ID_ISA,
            irq,
            ioapic_id,
            irq,
        ]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, BUS_ID_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, BUS_ID_ISA, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = TABLE_HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC_1_4);
    table.push(0); // checksum, below
    table.extend_from_slice(b"RUNV    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_addr = (MPTABLE_START as usize + FLOATING_POINTER_LEN) as u32;
    let mut bytes = Vec::with_capacity(FLOATING_POINTER_LEN + table_len);
    bytes.extend_from_slice(b"_MP_");
    bytes.extend_from_slice(&table_addr.to_le_bytes());
    bytes.extend_from_slice(&[1, MPC_SPEC_1_4, 0, 0, 0, 0, 0, 0]); // length in 16-byte units
    bytes[10] = checksum(&bytes);
    bytes.extend_from_slice(&table);
    Ok(bytes)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(num_cpus)?;
    if MPTABLE_START + bytes.len() as u64 > MPTABLE_AREA_END {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_entry_count() {
        let bytes = mptable_bytes(2).unwrap();
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        let table = &bytes[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 2 + 2 + u16::from(IRQ_MAX) + 1 + 2);
        // First processor entry is the enabled boot processor with APIC id 0.
        assert_eq!(&table[44..48], &[ENTRY_PROCESSOR, 0, APIC_VERSION, 3]);
        assert_eq!(table[64 + 1], 1); // second CPU's APIC id
    }

    #[test]
    fn max_vcpus_fit_and_more_do_not() {
        let mem = crate::vstate::memory::create_guest_memory(64 << 20).unwrap();
        setup_mptable(&mem, MAX_VCPUS).unwrap();
        assert!(matches!(
            setup_mptable(&mem, MAX_VCPUS + 1),
            Err(MptableError::TooManyCpus(_))
        ));
        assert!(matches!(
            mptable_bytes(0),
            Err(MptableError::TooManyCpus(0))
        ));
    }
}

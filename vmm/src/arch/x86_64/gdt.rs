//! Boot GDT entries and the KVM segments they describe.

use kvm_bindings::kvm_segment;

/// Packs a GDT descriptor from its flags (access byte + granularity nibble), base
/// and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// GDT of the PVH entry: flat 32-bit code and data, a TSS.
pub const PVH_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// GDT of the 64-bit boot protocol: 64-bit code, flat data, a TSS.
pub const LONG_MODE_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    if granularity(entry) == 0 {
        limit
    } else {
        (limit << 12) | 0xfff
    }
}

fn granularity(entry: u64) -> u8 {
    ((entry >> 55) & 1) as u8
}

/// The KVM segment register value for GDT entry `index` of `table`.
pub fn segment_from_gdt(table: &[u64], index: usize) -> kvm_segment {
    let entry = table[index];
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity(entry),
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_long_mode_code_segment() {
        let cs = segment_from_gdt(&LONG_MODE_GDT, 1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.l, cs.db, cs.s, cs.g),
            (0xb, 1, 1, 0, 1, 1)
        );
    }

    #[test]
    fn flat_32bit_segments_for_pvh() {
        let cs = segment_from_gdt(&PVH_GDT, 1);
        assert_eq!((cs.l, cs.db, cs.type_), (0, 1, 0xb));
        let ds = segment_from_gdt(&PVH_GDT, 2);
        assert_eq!((ds.type_, ds.selector, ds.limit), (0x3, 16, 0xffff_ffff));
        let tss = segment_from_gdt(&PVH_GDT, 3);
        assert_eq!((tss.type_, tss.s, tss.g, tss.limit), (0xb, 0, 0, 0x67));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let seg = segment_from_gdt(&[entry], 0);
        assert_eq!((seg.base, seg.limit), (0x1234_5678, 0xabcde));
        assert_eq!(segment_from_gdt(&[0], 0).unusable, 1);
    }
}

//! CPUID as a vCPU sees it: what KVM supports, with this vCPU's APIC id and the
//! VM's topology (one thread per core, one socket), the hypervisor bit set, and
//! masked what a guest must not see: nested virtualization (VMX/SVM: KVM then
//! refuses VMXON and EFER.SVME, the largest guest-to-host attack surface), the
//! PMU, and power management.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: VMX (nested virtualization on Intel).
const ECX_VMX: u32 = 1 << 5;
/// Leaf 1 ECX: perfmon and debug capability (exposes PERF_CAPABILITIES).
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 0x8000_0001 ECX: SVM (nested virtualization on AMD).
const EXT_ECX_SVM: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX: core performance counter extensions.
const EXT_ECX_PERFCTR_CORE: u32 = 1 << 23;
/// Leaf 6 EAX: APIC timer always running (keeps the LAPIC timer's rating).
const PM_EAX_ARAT: u32 = 1 << 2;
/// Leaf 1 ECX: TSC deadline timer (KVM's in-kernel LAPIC emulates it).
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (leaf 0xb / 0x1f ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Where a vCPU sits in the VM's topology.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC id.
    pub index: u8,
    /// Number of vCPUs in the VM.
    pub count: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => {
            Vendor::Intel
        }
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites the KVM-supported CPUID entries for one vCPU.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology, tsc_deadline: bool) {
    let vendor = vendor(entries);
    let apic_id = u32::from(topo.index);
    let count = u32::from(topo.count);
    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                if entry.ebx & 0xff00 == 0 {
                    entry.ebx |= 8 << 8; // CLFLUSH line size: 64 bytes
                }
                entry.ecx |= ECX_HYPERVISOR;
                entry.ecx &= !(ECX_VMX | ECX_PDCM);
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level == 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3ff) | ((count - 1) << 26) | (sharing << 14);
            }
            // Thermal and power management: only "APIC timer always running".
            0x6 => {
                entry.eax &= PM_EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // Performance monitoring (Intel), SVM features, PerfMonV2 (AMD): none.
            0xa | 0x8000_000a | 0x8000_0022 => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xb | 0x1f => {
                let (shift, logical, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (id_bits(topo.count), count, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = logical;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = apic_id;
            }
            0x8000_0001 => entry.ecx &= !(EXT_ECX_SVM | EXT_ECX_PERFCTR_CORE),
            0x8000_0008 if vendor == Vendor::Amd => {
                entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(topo.count) << 12) | (count - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff; // compute unit id, one thread per unit
                entry.ecx = 0; // node 0, one node
                entry.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn amd_leaves() -> Vec<kvm_cpuid_entry2> {
        let mut vendor = leaf(0, 0);
        (vendor.ebx, vendor.edx, vendor.ecx) = (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let mut pm = leaf(0x6, 0);
        pm.eax = 0x77;
        let mut ext = leaf(0x8000_0001, 0);
        ext.ecx = EXT_ECX_SVM | EXT_ECX_PERFCTR_CORE | 1;
        let mut svm = leaf(0x8000_000a, 0);
        svm.edx = 0xff;
        vec![
            vendor,
            leaf(1, 0),
            pm,
            ext,
            svm,
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut entries = amd_leaves();
        normalize(&mut entries, VcpuTopology { index: 3, count: 4 }, true);
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt_and_masked_power_leaf() {
        let mut entries = amd_leaves();
        entries[1].edx = EDX_HTT;
        normalize(&mut entries, VcpuTopology { index: 0, count: 1 }, false);
        assert_eq!(find(&entries, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&entries, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&entries, 6, 0).eax, PM_EAX_ARAT);
    }

    #[test]
    fn nested_virtualization_and_pmu_are_hidden() {
        let mut entries = amd_leaves();
        entries[1].ecx = ECX_VMX | ECX_PDCM;
        normalize(&mut entries, VcpuTopology { index: 0, count: 2 }, false);
        assert_eq!(find(&entries, 1, 0).ecx & (ECX_VMX | ECX_PDCM), 0);
        assert_eq!(find(&entries, 0x8000_0001, 0).ecx, 1);
        assert_eq!(find(&entries, 0x8000_000a, 0).edx, 0);
    }

    #[test]
    fn extended_topology_describes_cores() {
        let mut entries = amd_leaves();
        normalize(&mut entries, VcpuTopology { index: 2, count: 3 }, false);
        let smt = find(&entries, 0xb, 0);
        let core = find(&entries, 0xb, 1);
        let end = find(&entries, 0xb, 2);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, LEVEL_TYPE_SMT, 2)
        );
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8, core.edx),
            (2, 3, LEVEL_TYPE_CORE, 2)
        );
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        assert_eq!(find(&entries, 0x8000_0008, 0).ecx & 0xff, 2);
        assert_eq!(find(&entries, 0x8000_001e, 0).eax, 2);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)],
            [0, 1, 2, 2, 3]
        );
    }
}

//! The CPU's virtualization support: its flags in `/proc/cpuinfo` and the
//! KVM module that is loaded.

use std::path::Path;

/// Where the CPU's description is read.
pub const CPUINFO: &str = "/proc/cpuinfo";
/// Where the loaded modules are listed.
const SYS_MODULE: &str = "/sys/module";
/// Bytes of `/proc/cpuinfo` read (the first CPU's entry comes first).
pub const MAX_CPUINFO: u64 = 64 * 1024;

/// The KVM back ends this tool knows, by module name.
const KVM_MODULES: [&str; 3] = ["kvm_intel", "kvm_amd", "kvm_pvm"];

/// The virtualization extension a CPU advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtFlag {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
}

impl VirtFlag {
    /// How the flag is named for the operator.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Vmx => "Intel VT-x (vmx)",
            Self::Svm => "AMD-V (svm)",
        }
    }
}

/// The first CPU's `flags` line: vmx or svm if it lists one.
pub fn virt_flag(cpuinfo: &str) -> Option<VirtFlag> {
    let flags = field(cpuinfo, "flags")?;
    flags.split_whitespace().find_map(|flag| match flag {
        "vmx" => Some(VirtFlag::Vmx),
        "svm" => Some(VirtFlag::Svm),
        _ => None,
    })
}

/// Whether the first CPU's flags say it runs under a hypervisor.
pub fn under_hypervisor(cpuinfo: &str) -> bool {
    field(cpuinfo, "flags").is_some_and(|flags| flags.split_whitespace().any(|f| f == "hypervisor"))
}

/// The first CPU's `model name`.
pub fn model_name(cpuinfo: &str) -> Option<&str> {
    field(cpuinfo, "model name")
}

/// The value of the first `key : value` line with that key.
fn field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim())
    })
}

/// The KVM back-end modules loaded, of those this tool knows.
pub fn kvm_modules() -> Vec<&'static str> {
    kvm_modules_under(Path::new(SYS_MODULE))
}

fn kvm_modules_under(sys_module: &Path) -> Vec<&'static str> {
    KVM_MODULES
        .into_iter()
        .filter(|module| sys_module.join(module).exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM_GUEST: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        model name\t: Intel(R) Xeon(R) Processor\n\
        flags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\n\n\
        processor\t: 1\nflags\t\t: fpu vmx\n";
    const AMD_HOST: &str = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu vme svm npt\n";
    const INTEL_HOST: &str = "model name\t: Intel(R) Core(TM) i7\nflags\t\t: fpu vmx ept\n";

    #[test]
    fn reads_the_first_cpus_flags_and_model() {
        assert_eq!(virt_flag(PVM_GUEST), None);
        assert!(under_hypervisor(PVM_GUEST));
        assert_eq!(model_name(PVM_GUEST), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(virt_flag(AMD_HOST), Some(VirtFlag::Svm));
        assert!(!under_hypervisor(AMD_HOST));
        assert_eq!(virt_flag(INTEL_HOST), Some(VirtFlag::Vmx));
        assert_eq!(virt_flag(""), None);
        assert_eq!(model_name(""), None);
    }

    #[test]
    fn lists_the_kvm_modules_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kvm")).unwrap();
        std::fs::create_dir(dir.path().join("kvm_pvm")).unwrap();
        assert_eq!(kvm_modules_under(dir.path()), ["kvm_pvm"]);
    }
}

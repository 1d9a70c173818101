//! What the shim shares with runv's other tools: the VMM's jail and
//! privileges and the sandbox paths they name (`runv-vmm-jailed` starts a
//! VMM in them by hand, for bench/vmm-boot), runv's config file (which
//! the end-to-end tests write) and the pod's start timeline (which `runv
//! metrics` reads).

pub mod config;
pub mod jail;
pub mod paths;
pub mod privileges;
pub mod start_phases;

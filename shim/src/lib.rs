//! What the shim shares with runv's other tools: the VMM's jail and
//! privileges and the sandbox paths they name (`runv-vmm-jailed` starts a
//! VMM in them by hand, for bench/vmm-boot), runv's config file (which
//! the end-to-end tests write), the pod's start timeline (which `runv
//! metrics` reads) and the client of the VMM's API (which `runv ps` and
//! `runv metrics` call).

pub mod config;
pub mod jail;
pub mod paths;
pub mod privileges;
pub mod start_phases;
pub mod text;
pub mod vmm_api;

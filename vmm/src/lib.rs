//! The runv virtual machine monitor.
//!
//! Boots one KVM microVM per pod from an uncompressed guest `vmlinux` (PVH) or a
//! bzImage and the agent's initrd (see `ARCHITECTURE.md`). [`builder`] holds the
//! boot sequence; [`runtime`] runs the VM until it ends.

pub(crate) mod api;
pub(crate) mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod devices;
pub(crate) mod metrics;
pub mod runtime;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub(crate) mod vm_exit;
pub(crate) mod vstate;

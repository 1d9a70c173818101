//! The runv virtual machine monitor.
//!
//! Boots one KVM microVM per pod from an uncompressed guest `vmlinux` and the
//! agent's initrd (see `ARCHITECTURE.md`).

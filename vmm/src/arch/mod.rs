//! Architecture-specific parts of the VM: only x86_64 is supported.

pub mod x86_64;

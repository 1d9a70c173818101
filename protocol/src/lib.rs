//! What the runv shim, VMM and guest agent agree on (see `ARCHITECTURE.md`).

/// vsock port on which the agent serves the shim's ttrpc connection.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Line the agent writes to the console once it runs as the guest's init.
///
/// Boot tests and benchmarks wait for it on the serial console.
pub const BOOT_MARKER: &str = "runv-agent: init started";

//! The tests' use of [`protocol::hybrid_vsock`], with the patience the emulated
//! test host needs.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the VMM may take to answer a `CONNECT` in the test host.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects through the hybrid socket `uds` to guest `port`.
pub fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    protocol::hybrid_vsock::connect(uds, port, HANDSHAKE_TIMEOUT)
}

/// [`connect`], retried until the guest accepts or `timeout` passes.
pub fn connect_within(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    protocol::hybrid_vsock::connect_within(uds, port, timeout, Duration::from_millis(100), || None)
}

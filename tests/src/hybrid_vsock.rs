//! The host side of runv-vmm's hybrid vsock: connect to its Unix socket and
//! ask for a guest port.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connects through the hybrid socket `uds` to guest `port`: the stream after
/// the `OK` line, or `ConnectionRefused` if the guest does not accept.
pub fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    writeln!(stream, "CONNECT {port}")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        reply.push(byte[0]);
    }
    if !reply.starts_with(b"OK ") {
        let reply = String::from_utf8_lossy(&reply).into_owned();
        return Err(io::Error::other(format!("handshake answer {reply:?}")));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// [`connect`], retried until the guest accepts or `timeout` passes.
pub fn connect_within(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect(uds, port) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

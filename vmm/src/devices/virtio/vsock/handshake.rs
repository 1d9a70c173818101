//! The host side of a host-initiated connection: a client of the vsock Unix
//! socket first writes `CONNECT <port>\n` (Firecracker's hybrid vsock). It is
//! read byte by byte so that data the client sends right after the line stays
//! in the socket for the connection.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Longest handshake line accepted ("CONNECT 4294967295\n" is 19 bytes).
const MAX_LINE: usize = 32;

/// Progress of one client's handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// More bytes are needed.
    Pending,
    /// The client asked for this guest port.
    Connect(u32),
}

/// Errors that end a handshake (the client socket is closed).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The line is not `CONNECT <port>`.
    #[error("bad vsock handshake {0:?} (expected \"CONNECT <port>\\n\")")]
    BadLine(String),
    /// The client closed before finishing the line.
    #[error("the client closed before its CONNECT line")]
    Closed,
    /// Reading failed.
    #[error("cannot read the CONNECT line: {0}")]
    Io(#[from] io::Error),
}

/// A client whose `CONNECT` line is being read.
pub struct Handshake {
    /// The client's socket (non-blocking).
    pub stream: UnixStream,
    /// When an unfinished handshake is dropped.
    pub deadline: Instant,
    line: Vec<u8>,
}

impl Handshake {
    /// Starts reading `stream`'s handshake, to finish before `deadline`.
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            deadline,
            line: Vec::with_capacity(MAX_LINE),
        }
    }

    /// Reads what the client sent so far.
    pub fn advance(&mut self) -> Result<HandshakeStatus, HandshakeError> {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) if byte[0] == b'\n' => {
                    return parse_line(&self.line).map(HandshakeStatus::Connect)
                }
                Ok(_) if self.line.len() >= MAX_LINE => {
                    return Err(HandshakeError::BadLine(
                        String::from_utf8_lossy(&self.line).into_owned(),
                    ))
                }
                Ok(_) => self.line.push(byte[0]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(HandshakeStatus::Pending)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

fn parse_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let bad = || HandshakeError::BadLine(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or_else(bad)?;
    port.trim().parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn pair() -> (UnixStream, Handshake) {
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        (
            client,
            Handshake::new(server, Instant::now() + Duration::from_secs(2)),
        )
    }

    #[test]
    fn connect_line_in_pieces_names_the_port_and_leaves_data_behind() {
        let (mut client, mut handshake) = pair();
        client.write_all(b"CONN").unwrap();
        assert_eq!(handshake.advance().unwrap(), HandshakeStatus::Pending);
        client.write_all(b"ECT 1024\npayload").unwrap();
        assert_eq!(handshake.advance().unwrap(), HandshakeStatus::Connect(1024));
        let mut rest = [0u8; 7];
        handshake.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"payload");
    }

    #[test]
    fn bad_lines_and_early_close_are_errors() {
        for line in [&b"CONNECT x\n"[..], b"HELLO 5\n", b"CONNECT 99999999999\n"] {
            let (mut client, mut handshake) = pair();
            client.write_all(line).unwrap();
            assert!(matches!(
                handshake.advance(),
                Err(HandshakeError::BadLine(_))
            ));
        }
        let (mut client, mut handshake) = pair();
        client.write_all(&[b'C'; 40]).unwrap();
        assert!(matches!(
            handshake.advance(),
            Err(HandshakeError::BadLine(_))
        ));
        let (client, mut handshake) = pair();
        drop(client);
        assert!(matches!(handshake.advance(), Err(HandshakeError::Closed)));
    }
}

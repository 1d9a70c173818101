//! The stdio stream header: the first line of each stream connection to the agent's
//! stdio port, binding the connection to one stream of one process.
//!
//! ```text
//! client → agent:  runv-stdio v1 <kind> <container_id> [<exec_id>]\n
//! agent → client:  ok\n        or        error <reason>\n
//! ```
//!
//! `<kind>` is `stdin`, `stdout`, `stderr` or `tty`; the exec id is left out for the
//! container's init process. After `ok` the connection is a plain byte stream (see
//! `protocol/README.md`).

use std::fmt;
use std::io::{self, Read, Write};

/// vsock port of the agent's stdio listener in the guest.
pub const AGENT_STDIO_VSOCK_PORT: u32 = 1025;

/// Longest header line accepted, newline included.
pub const MAX_HEADER_LEN: usize = 512;

const MAGIC: &str = "runv-stdio";
const VERSION: &str = "v1";

/// Which stream of a process a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Client → process stdin.
    Stdin,
    /// Process stdout → client.
    Stdout,
    /// Process stderr → client.
    Stderr,
    /// Both directions of the process's terminal.
    Tty,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Tty => "tty",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "stdin" => Self::Stdin,
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            "tty" => Self::Tty,
            _ => return None,
        })
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of reading or writing a header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection failed or closed before a full line.
    #[error("stdio header: {0}")]
    Io(#[from] io::Error),
    /// The line is longer than [`MAX_HEADER_LEN`].
    #[error("stdio header longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// The line does not follow the grammar.
    #[error("malformed stdio header {0:?}")]
    Malformed(String),
    /// The agent refused the binding.
    #[error("agent refused the stream: {0}")]
    Refused(String),
}

/// The process stream a connection binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Container of the process.
    pub container_id: String,
    /// Exec id of the process; empty for the container's init process.
    pub exec_id: String,
    /// Which stream.
    pub kind: StreamKind,
}

impl StreamHeader {
    /// Header of `kind` of process (`container_id`, `exec_id`).
    pub fn new(container_id: &str, exec_id: &str, kind: StreamKind) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            kind,
        }
    }

    /// The header line, newline included.
    pub fn encode(&self) -> String {
        let mut line = format!("{MAGIC} {VERSION} {} {}", self.kind, self.container_id);
        if !self.exec_id.is_empty() {
            line.push(' ');
            line.push_str(&self.exec_id);
        }
        line.push('\n');
        line
    }

    /// Parses one header line (without its newline).
    pub fn parse(line: &str) -> Result<Self, HeaderError> {
        let malformed = || HeaderError::Malformed(line.to_string());
        let words: Vec<&str> = line.split(' ').collect();
        let (kind, container_id, exec_id) = match words.as_slice() {
            [MAGIC, VERSION, kind, cid] => (kind, cid, ""),
            [MAGIC, VERSION, kind, cid, eid] if !eid.is_empty() => (kind, cid, *eid),
            _ => return Err(malformed()),
        };
        let kind = StreamKind::parse(kind).ok_or_else(malformed)?;
        if container_id.is_empty() {
            return Err(malformed());
        }
        Ok(Self::new(container_id, exec_id, kind))
    }

    /// Agent side: reads the header line byte by byte, so that no stream data
    /// after it is consumed.
    pub fn read_from(reader: &mut impl Read) -> Result<Self, HeaderError> {
        Self::parse(&read_line(reader)?)
    }

    /// Client side: sends the header and waits for the agent's answer.
    pub fn bind<S: Read + Write>(&self, stream: &mut S) -> Result<(), HeaderError> {
        stream.write_all(self.encode().as_bytes())?;
        let reply = read_line(stream)?;
        match reply.strip_prefix("error ") {
            Some(reason) => Err(HeaderError::Refused(reason.to_string())),
            None if reply == "ok" => Ok(()),
            None => Err(HeaderError::Malformed(reply)),
        }
    }
}

/// Copies `from` to `to` until EOF with plain read(2) and write(2) calls; the
/// bytes copied.
///
/// `std::io::copy` splices when one side is a pipe or FIFO, and a splice between
/// a socket and a pipe holds the pipe's lock while it waits on the socket: the
/// pipe's other user (a FIFO reader closing it, a process writing its output)
/// then sleeps uninterruptibly, unkillable, until the socket moves.
pub fn copy_plain(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        to.write_all(&buf[..n])?;
        copied += n as u64;
    }
}

/// Buffer of one [`copy_plain`].
const COPY_BUFFER: usize = 64 << 10;

/// Agent side: accepts a binding.
pub fn write_ok(writer: &mut impl Write) -> io::Result<()> {
    writer.write_all(b"ok\n")
}

/// Agent side: refuses a binding with a one-line reason.
pub fn write_error(writer: &mut impl Write, reason: &str) -> io::Result<()> {
    let reason = reason.replace('\n', " ");
    writer.write_all(format!("error {reason}\n").as_bytes())
}

fn read_line(reader: &mut impl Read) -> Result<String, HeaderError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if reader.read(&mut byte)? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() >= MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
    }
    String::from_utf8(line).map_err(|e| HeaderError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for header in [
            StreamHeader::new("c1", "", StreamKind::Stdout),
            StreamHeader::new("c1", "exec-2", StreamKind::Stdin),
            StreamHeader::new("pod.x_y", "e", StreamKind::Tty),
        ] {
            let line = header.encode();
            let parsed = StreamHeader::read_from(&mut line.as_bytes()).unwrap();
            assert_eq!(parsed, header);
        }
        assert_eq!(
            StreamHeader::new("c1", "", StreamKind::Stderr).encode(),
            "runv-stdio v1 stderr c1\n"
        );
    }

    #[test]
    fn read_stops_at_the_newline() {
        let mut input: &[u8] = b"runv-stdio v1 stdin c1\npayload";
        StreamHeader::read_from(&mut input).unwrap();
        assert_eq!(input, b"payload");
    }

    #[test]
    fn bad_headers_are_refused() {
        for line in [
            "",
            "runv-stdio v2 stdout c1",
            "runv-stdio v1 stdpot c1",
            "runv-stdio v1 stdout",
            "runv-stdio v1 stdout  e",
            "runv-stdio v1 stdout c1 e1 extra",
        ] {
            assert!(
                matches!(StreamHeader::parse(line), Err(HeaderError::Malformed(_))),
                "{line:?} accepted"
            );
        }
        let long = "x".repeat(MAX_HEADER_LEN + 1);
        assert!(matches!(
            StreamHeader::read_from(&mut long.as_bytes()),
            Err(HeaderError::TooLong)
        ));
    }
}

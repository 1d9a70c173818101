//! The shim's side of what the guest's agent answers: a ttrpc response whose
//! payload is one of the agent's reply messages, decoded as the shim's ttrpc
//! client does, then used as the shim uses it where that code stands alone
//! (an exit's timestamp, shim/src/exit.rs compiled in); and the stdio stream
//! header both ways. (shim/src/metrics.rs is not compiled in: it needs the
//! containerd-shim crate, which would double the fuzz build.)
//!
//! Input: a selector byte, then the bytes of what it selects.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use protocol::agent;
use protocol::stdio::{HeaderError, StreamHeader, MAX_HEADER_LEN};
use std::io::{self, Read, Write};
use ttrpc::proto::{Code, Response};

/// The shim's handling of an exit (shim/src/exit.rs).
#[allow(dead_code)]
#[path = "../../../shim/src/exit.rs"]
mod exit;

/// Decodes `bytes` as the generated ttrpc client does (merging into a
/// default message) and checks that it encodes back to the same message.
fn decode<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let mut message = M::new();
    message.merge_from_bytes(bytes).ok()?;
    let encoded = message.write_to_bytes().expect("a decoded message encodes");
    assert_eq!(M::parse_from_bytes(&encoded).ok().as_ref(), Some(&message));
    Some(message)
}

/// Uses a reply as the shim does.
fn reply(kind: u8, payload: &[u8]) {
    match kind % 10 {
        0 => {
            if let Some(reply) = decode::<agent::WaitProcessResponse>(payload) {
                let exit =
                    exit::Exit::at_unix_nanos(reply.exit_status.unsigned_abs(), reply.exited_at_ns);
                let _ = exit.timestamp();
            }
        }
        1 => {
            let _ = decode::<agent::StatsContainerResponse>(payload);
        }
        2 => {
            let _ = decode::<agent::OOMEvent>(payload);
        }
        3 => {
            let _ = decode::<agent::ListProcessesResponse>(payload);
        }
        4 => {
            let _ = decode::<agent::ExecProcessResponse>(payload);
        }
        5 => {
            let _ = decode::<agent::StartContainerResponse>(payload);
        }
        6 => {
            let _ = decode::<agent::GuestDetailsResponse>(payload);
        }
        7 => {
            let _ = decode::<agent::HealthCheckResponse>(payload);
        }
        8 => {
            let _ = decode::<agent::Interface>(payload);
        }
        _ => {
            let _ = decode::<agent::Routes>(payload);
        }
    }
}

/// A stream whose reads come from the input and whose writes are dropped.
struct Stream<'a> {
    incoming: &'a [u8],
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.incoming.read(buf)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stdio header: the agent parsing a client's line, and the shim binding
/// a stream and reading the agent's answer.
fn stdio(bytes: &[u8]) {
    let mut reader = bytes;
    match StreamHeader::read_from(&mut reader) {
        Ok(header) => {
            // A line read from a stream has no newline: it encodes back.
            let line = header.encode();
            assert!(line.len() <= MAX_HEADER_LEN);
            let again = StreamHeader::read_from(&mut line.as_bytes()).expect("re-parse");
            assert_eq!(again, header);
        }
        Err(HeaderError::Io(_) | HeaderError::TooLong | HeaderError::Malformed(_)) => {}
        Err(HeaderError::Refused(_)) => panic!("the agent's parse refused like a client"),
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = StreamHeader::parse(text);
    }
    let header = StreamHeader::new("c", "", protocol::stdio::StreamKind::Stdout);
    let mut stream = Stream { incoming: bytes };
    let _ = header.bind(&mut stream);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 0x80 != 0 {
        stdio(rest);
        return;
    }
    // The shim's client: a response, its status, then the payload.
    if selector & 0x40 != 0 {
        let Ok(response) = Response::parse_from_bytes(rest) else {
            return;
        };
        if response.status().code() != Code::OK {
            return;
        }
        reply(selector, &response.payload);
    } else {
        reply(selector, rest);
    }
});

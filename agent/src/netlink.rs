//! A small synchronous rtnetlink client: one request at a time, answered by
//! the kernel's ACK (or errno) or by a dump.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// Receive buffer: larger than any datagram a dump sends (at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// An rtnetlink socket in the agent's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// Opens and binds a NETLINK_ROUTE socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` with `flags` (NLM_F_CREATE, ...) and waits for the
    /// kernel's answer: Ok on ACK, its errno otherwise.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(|payload| match payload {
            NetlinkPayload::Error(err) if err.code.is_none() => Ok(true),
            NetlinkPayload::Error(err) => Err(err.to_io()),
            _ => Ok(false),
        })
    }

    /// Sends a dump request; every message of the reply.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut messages = Vec::new();
        self.receive(|payload| match payload {
            NetlinkPayload::InnerMessage(message) => {
                messages.push(message);
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(err) => Err(err.to_io()),
            _ => Ok(false),
        })?;
        Ok(messages)
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        let sent = self.socket.send(&buffer, 0)?;
        if sent != buffer.len() {
            return Err(io::Error::other(format!(
                "netlink: sent {sent} of {} bytes",
                buffer.len()
            )));
        }
        Ok(())
    }

    /// Feeds the replies to the current request to `each` until it says done.
    fn receive(
        &mut self,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        let mut buffer = vec![0u8; RECV_BUFFER];
        loop {
            let received = self.socket.recv(&mut &mut buffer[..], 0)?;
            let mut offset = 0;
            while offset < received {
                let packet =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..received])
                        .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}"))
                    })?;
                let length = packet.header.length as usize;
                if length == 0 {
                    break;
                }
                // Messages in one datagram start on 4-byte boundaries.
                offset += (length + 3) & !3;
                if packet.header.sequence_number != self.sequence {
                    continue;
                }
                if each(packet.payload)? {
                    return Ok(());
                }
            }
        }
    }
}

//! A small synchronous rtnetlink client: one request at a time, answered by
//! the kernel's ACK (or errno) or by a dump. The agent configures the guest's
//! network with it, the shim the pod's network namespace on the host.
//!
//! A socket belongs to the network namespace of the thread that opened it,
//! for its whole life.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// Receive buffer: larger than any datagram a dump sends (at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// An rtnetlink socket in the network namespace of the thread that opened it.
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
        let mut messages = Vec::new();
        self.dump_each(message, |reply| {
            messages.push(reply);
            Ok::<(), io::Error>(())
        })?;
        Ok(messages)
    }

    /// Sends a dump request and hands each message of the reply to `each`,
    /// keeping none: the caller decides what to keep and how much. After an
    /// error of `each` the rest of the reply is read and dropped (the kernel
    /// refuses a new dump on a socket whose dump is unfinished), then that
    /// error is returned.
    pub fn dump_each<E: From<io::Error>>(
        &mut self,
        message: RouteNetlinkMessage,
        mut each: impl FnMut(RouteNetlinkMessage) -> Result<(), E>,
    ) -> Result<(), E> {
        self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut failed = None;
        let received = self.receive(|payload| match payload {
            NetlinkPayload::InnerMessage(message) => {
                if failed.is_none() {
                    failed = each(message).err();
                }
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(err) => Err(err.to_io()),
            _ => Ok(false),
        });
        match failed {
            Some(err) => Err(err),
            None => Ok(received?),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn names(nl: &mut Netlink) -> Vec<String> {
        nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .expect("dump the links")
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => {
                    link.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_dump_stopped_early_leaves_the_socket_usable() {
        let mut nl = Netlink::open().expect("open");
        let all = names(&mut nl);
        assert!(all.iter().any(|name| name == "lo"), "{all:?}");

        let mut seen = 0;
        let stopped = nl.dump_each(RouteNetlinkMessage::GetLink(LinkMessage::default()), |_| {
            seen += 1;
            Err(io::Error::other("enough"))
        });
        assert_eq!(stopped.expect_err("stopped").to_string(), "enough");
        assert_eq!(seen, 1);
        // The rest of that dump was drained: a new one starts and is whole.
        assert_eq!(names(&mut nl), all);
    }
}

//! One stream connection between a guest socket and a host Unix socket: its
//! state, the guest→host buffer and both directions' credit accounting.

use super::packet::{op, Header, HOST_CID, TYPE_STREAM};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Receive buffer each connection offers the guest: the guest never has more
/// than this in flight towards a host socket that is slow to read.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Consumed bytes after which the guest is told of the freed space unasked.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent, the guest has until the deadline to
    /// answer.
    AwaitingResponse(Instant),
    /// Data flows.
    Established,
    /// The guest closed (a reset confirms it); the buffered data still goes
    /// to the host, then the connection ends.
    Draining,
    /// The host side ended it: the socket is shut and the buffer freed; the
    /// connection stays only until the guest gets its reset.
    Closed,
}

/// The credit rule was broken: the guest sent more than the space offered.
#[derive(Debug, thiserror::Error)]
#[error("the guest overran the connection's receive buffer ({buffered} + {incoming} > {BUF_ALLOC} bytes)")]
pub struct CreditOverrun {
    buffered: usize,
    incoming: usize,
}

/// A connection, keyed by (host port, guest port).
pub struct Connection {
    /// The host end (non-blocking).
    pub stream: UnixStream,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// The guest's context id.
    pub guest_cid: u64,
    /// Life cycle.
    pub state: ConnState,
    /// The host end reached end of file (guest told with SHUTDOWN).
    pub host_eof: bool,
    /// The host end hung up entirely; it is no longer polled.
    pub host_hung_up: bool,
    /// Queued for the guest's receive queue.
    pub queued_for_rx: bool,
    /// Host data waits for the guest to free space (credit request sent).
    pub waiting_credit: bool,
    /// Shutdown flags the guest sent.
    pub guest_shutdown: u32,
    /// The control packet owed to the guest (an `op`), sent in its next
    /// receive buffer; at most one, see [`Connection::owe`].
    owed: Option<u16>,
    to_host: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    reported_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    /// A connection on `stream` between host `local_port` and guest
    /// `peer_port`.
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: ConnState,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            host_eof: false,
            host_hung_up: false,
            queued_for_rx: false,
            waiting_credit: false,
            guest_shutdown: 0,
            owed: None,
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            reported_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// A header from the host end of this connection to the guest; it
    /// carries (and so reports) the current receive credit.
    pub fn header(&mut self, op: u16) -> Header {
        self.reported_fwd_cnt = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Header::default()
        }
    }

    /// Takes the guest's view of its receive buffer from any packet it sent.
    pub fn note_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `bytes` sent to the guest.
    pub fn sent_to_guest(&mut self, bytes: usize) {
        self.tx_cnt += Wrapping(bytes as u32);
    }

    /// Whether enough space was freed that the guest should hear of it.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.reported_fwd_cnt).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Whether guest data waits for the host end to read it.
    pub fn has_host_backlog(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Queues guest data for the host end and writes what the host takes now.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), CreditOverrun> {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return Err(CreditOverrun {
                buffered: self.to_host.len(),
                incoming: data.len(),
            });
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Writes buffered guest data to the host end until it would block.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Drops the guest data the host end will never read.
    pub fn discard_host_backlog(&mut self) {
        self.to_host = VecDeque::new();
    }

    /// Owes the guest control packet `op`; true if nothing was owed before
    /// (the caller queues the connection once). Only the most important
    /// packet is kept: a reset ends everything, and a request or response
    /// carries the credit an update would (every header is built when sent).
    pub fn owe(&mut self, op: u16) -> bool {
        let rank = |op: u16| match op {
            op::CREDIT_UPDATE => 0,
            op::RST => 2,
            _ => 1,
        };
        match self.owed {
            None => {
                self.owed = Some(op);
                true
            }
            Some(owed) => {
                if rank(op) > rank(owed) {
                    self.owed = Some(op);
                }
                false
            }
        }
    }

    /// The control packet owed to the guest, if any.
    pub fn owed(&self) -> Option<u16> {
        self.owed
    }

    /// The owed control packet, built now so it carries the current credit.
    pub fn take_owed(&mut self) -> Option<Header> {
        let op = self.owed.take()?;
        Some(self.header(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn connection() -> (UnixStream, Connection) {
        let (host_peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            host_peer,
            Connection::new(ours, 1 << 30, 1024, 3, ConnState::Established),
        )
    }

    #[test]
    fn peer_credit_follows_what_was_sent_and_what_the_guest_consumed() {
        let (_peer, mut conn) = connection();
        assert_eq!(conn.peer_credit(), 0, "no credit before the guest tells");
        let mut from_guest = Header {
            buf_alloc: 4096,
            ..Header::default()
        };
        conn.note_peer_credit(&from_guest);
        conn.sent_to_guest(4000);
        assert_eq!(conn.peer_credit(), 96);
        conn.sent_to_guest(96);
        assert_eq!(conn.peer_credit(), 0);
        from_guest.fwd_cnt = 4096;
        conn.note_peer_credit(&from_guest);
        assert_eq!(conn.peer_credit(), 4096);
    }

    #[test]
    fn counters_wrap_without_losing_credit() {
        let (_peer, mut conn) = connection();
        conn.sent_to_guest(u32::MAX as usize);
        conn.note_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: u32::MAX - 10,
            ..Header::default()
        });
        conn.sent_to_guest(20);
        // 10 + 20 bytes in flight across the wrap.
        assert_eq!(conn.peer_credit(), 970);
    }

    #[test]
    fn guest_data_reaches_the_host_and_is_reported_as_credit() {
        let (mut peer, mut conn) = connection();
        let chunk = vec![7u8; CREDIT_UPDATE_THRESHOLD as usize];
        conn.push_from_guest(&chunk).unwrap();
        assert!(!conn.needs_credit_update(), "nothing consumed yet");
        conn.flush_to_host().unwrap();
        // The socket buffer may not take it all at once; drain it.
        let mut seen = vec![0u8; chunk.len()];
        let mut got = 0;
        while got < chunk.len() {
            got += peer.read(&mut seen[got..]).unwrap();
            conn.flush_to_host().unwrap();
        }
        assert_eq!(seen, chunk);
        assert!(conn.needs_credit_update());
        assert!(conn.owe(op::CREDIT_UPDATE));
        let update = conn.take_owed().expect("a credit update");
        assert_eq!(update.op, op::CREDIT_UPDATE);
        assert_eq!(update.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert_eq!(update.buf_alloc, BUF_ALLOC);
        assert!(!conn.needs_credit_update(), "reported once");
        assert!(conn.take_owed().is_none());
    }

    #[test]
    fn a_connection_owes_one_control_packet_the_most_important() {
        let (_peer, mut conn) = connection();
        assert!(conn.owe(op::CREDIT_UPDATE), "the first is queued");
        assert!(!conn.owe(op::CREDIT_UPDATE), "a duplicate is not");
        assert!(!conn.owe(op::RESPONSE));
        assert_eq!(
            conn.owed(),
            Some(op::RESPONSE),
            "a response carries the credit"
        );
        assert!(!conn.owe(op::RST));
        assert!(!conn.owe(op::CREDIT_UPDATE));
        assert_eq!(
            conn.take_owed().map(|h| h.op),
            Some(op::RST),
            "a reset ends it all"
        );
        assert_eq!(conn.owed(), None);
    }

    #[test]
    fn more_than_the_offered_buffer_is_an_overrun() {
        let (_peer, mut conn) = connection();
        conn.push_from_guest(&vec![0u8; BUF_ALLOC as usize])
            .unwrap();
        assert!(conn.push_from_guest(&[0u8]).is_err());
    }
}

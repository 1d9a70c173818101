//! One stream connection between a guest socket and a host Unix socket: its
//! state, the guest→host buffer and both directions' credit accounting.

use super::packet::{
    op, Header, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

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

/// What the muxer does with a connection after it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it as it is (a closed one already owes its reset).
    Keep,
    /// Settle it ([`Connection::settle`]).
    Settle,
    /// It owes the guest a control packet it did not owe before: queue it
    /// for the control queue, then settle it.
    QueueControl,
    /// It has host data to carry: queue it for the receive queue, then
    /// settle it.
    QueueRx,
    /// End it and tell the guest.
    Reset,
    /// End it without telling the guest.
    Remove,
}

/// What [`Connection::reset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetOutcome {
    /// It was closed already.
    AlreadyClosed,
    /// The guest never saw it, or already has its reset: remove it.
    Withdraw,
    /// Now closed, owing the guest a reset.
    Closed {
        /// It must leave the receive queue.
        unqueue_rx: bool,
        /// It must join the control queue.
        queue_control: bool,
    },
}

/// What [`Connection::settle`] asks of the muxer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The connection is done: remove it (nothing else applies).
    pub remove: bool,
    /// Queue it for the control queue (a credit update became owed).
    pub queue_control: bool,
    /// Queue it for the receive queue (a hung-up host end to read out).
    pub queue_rx: bool,
    /// The events to poll its socket for; None for none at all.
    pub interest: Option<EventSet>,
}

/// What a connection puts in a receive buffer ([`Connection::next_to_guest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToGuest {
    /// Nothing now: the buffer stays unused; settle the connection.
    Nothing,
    /// A control packet (credit request, shutdown); settle the connection.
    Control(Header),
    /// A data packet of the header's length, read into the caller's buffer;
    /// queue the connection for the receive queue again.
    Data(Header),
    /// The host end failed: this reset goes to the guest and the connection
    /// is removed.
    Failed(Header),
}

/// A connection, keyed by (host port, guest port). Its state changes only
/// through its methods, each of which says what the muxer must do next.
pub struct Connection {
    /// The host end (non-blocking).
    stream: UnixStream,
    /// Port on the host side (CID 2).
    local_port: u32,
    /// Port on the guest side.
    peer_port: u32,
    /// The guest's context id.
    guest_cid: u64,
    /// Life cycle.
    state: ConnState,
    /// The host end reached end of file (guest told with SHUTDOWN).
    host_eof: bool,
    /// The host end hung up entirely; it is no longer polled.
    host_hung_up: bool,
    /// Queued for the guest's receive queue.
    queued_for_rx: bool,
    /// Host data waits for the guest to free space (credit request sent).
    waiting_credit: bool,
    /// Shutdown flags the guest sent.
    guest_shutdown: u32,
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

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Connection {
    /// A connection on `stream` between host `local_port` and guest
    /// `peer_port`, owing the guest control packet `first` (its request or
    /// response).
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: ConnState,
        first: u16,
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
            owed: Some(first),
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            reported_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// Where it is in its life.
    #[cfg(test)]
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// (host port, guest port).
    pub fn ports(&self) -> (u32, u32) {
        (self.local_port, self.peer_port)
    }

    /// When the guest's answer to a host-initiated request is due, if one
    /// is awaited.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ConnState::AwaitingResponse(deadline) => Some(deadline),
            _ => None,
        }
    }

    /// Whether it is queued for the guest's receive queue.
    pub fn queued_for_rx(&self) -> bool {
        self.queued_for_rx
    }

    /// Queues it for the receive queue unless it is already: true if the
    /// caller must add it there.
    fn queue_for_rx(&mut self) -> bool {
        !std::mem::replace(&mut self.queued_for_rx, true)
    }

    /// Serves what the poll reported on the host end.
    pub fn host_event(&mut self, events: EventSet) -> Action {
        if events.contains(EventSet::OUT) && self.flush_to_host().is_err() {
            return Action::Reset;
        }
        let hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        match self.state {
            ConnState::AwaitingResponse(_) if hangup => Action::Reset,
            ConnState::AwaitingResponse(_) => Action::Settle,
            ConnState::Established => {
                if events.contains(EventSet::ERROR) {
                    return Action::Reset;
                }
                if events.contains(EventSet::HANG_UP) {
                    self.host_hung_up = true;
                    if self.has_host_backlog() {
                        // Nobody is left to read the guest's data.
                        return Action::Reset;
                    }
                }
                if !self.host_eof && self.queue_for_rx() {
                    Action::QueueRx
                } else {
                    Action::Settle
                }
            }
            ConnState::Draining if hangup => {
                // Nobody is left to read the guest's data; the connection
                // ends once the guest has its reset.
                self.host_hung_up = true;
                self.discard_host_backlog();
                Action::Settle
            }
            ConnState::Draining | ConnState::Closed => Action::Settle,
        }
    }

    /// Serves a packet the guest sent on this connection.
    pub fn guest_packet(&mut self, header: &Header, payload: &[u8]) -> Action {
        self.note_peer_credit(header);
        if self.waiting_credit && self.peer_credit() > 0 {
            self.waiting_credit = false;
        }
        match (header.op, self.state) {
            (op::RST, _) => Action::Remove,
            // Its reset is owed already.
            (_, ConnState::Closed) => Action::Keep,
            (op::RESPONSE, ConnState::AwaitingResponse(_)) => {
                self.state = ConnState::Established;
                let reply = format!("OK {}\n", self.local_port);
                // A fresh socket's buffer always takes these few bytes.
                if self.stream.write_all(reply.as_bytes()).is_err() {
                    return Action::Reset;
                }
                Action::Settle
            }
            (op::RW, ConnState::Established) if self.guest_shutdown & SHUTDOWN_SEND == 0 => {
                if self.push_from_guest(payload).is_err() || self.flush_to_host().is_err() {
                    return Action::Reset;
                }
                Action::Settle
            }
            (op::CREDIT_UPDATE, _) => Action::Settle,
            (op::CREDIT_REQUEST, _) => self.owe_action(op::CREDIT_UPDATE),
            (op::SHUTDOWN, ConnState::Established) => {
                self.guest_shutdown |= header.flags & SHUTDOWN_BOTH;
                if self.guest_shutdown != SHUTDOWN_BOTH {
                    return Action::Settle;
                }
                // The guest closed: confirm with a reset, then hand the host
                // what is still buffered.
                self.state = ConnState::Draining;
                self.owe_action(op::RST)
            }
            _ => Action::Reset,
        }
    }

    fn owe_action(&mut self, op: u16) -> Action {
        if self.owe(op) {
            Action::QueueControl
        } else {
            Action::Settle
        }
    }

    /// Ends the connection from the host side: it then stays, closed, until
    /// the guest has read its reset, so that reset is never dropped.
    pub fn reset(&mut self) -> ResetOutcome {
        match (self.state, self.owed) {
            (ConnState::Closed, _) => return ResetOutcome::AlreadyClosed,
            // The guest never saw the request, or already has its reset.
            (_, Some(op::REQUEST)) | (ConnState::Draining, None) => return ResetOutcome::Withdraw,
            _ => {}
        }
        self.state = ConnState::Closed;
        self.discard_host_backlog();
        let _ = self.stream.shutdown(Shutdown::Both);
        let unqueue_rx = std::mem::take(&mut self.queued_for_rx);
        ResetOutcome::Closed {
            unqueue_rx,
            queue_control: self.owe(op::RST),
        }
    }

    /// Settles the connection after anything changed: says whether it is
    /// done, reports credit, half-closes the host end, and says what its
    /// socket must be polled for.
    pub fn settle(&mut self) -> Settled {
        let done = match self.state {
            ConnState::Draining => !self.has_host_backlog() && self.owed.is_none(),
            ConnState::Closed => self.owed.is_none(),
            _ => false,
        };
        let mut settled = Settled {
            remove: done,
            queue_control: false,
            queue_rx: false,
            interest: None,
        };
        if done {
            return settled;
        }
        if self.state == ConnState::Established {
            settled.queue_control = self.needs_credit_update() && self.owe(op::CREDIT_UPDATE);
            if self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.has_host_backlog() {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            // A hung-up host end is no longer polled: read it to its end.
            if self.host_hung_up && !self.host_eof && !self.waiting_credit {
                settled.queue_rx = self.queue_for_rx();
            }
        }
        settled.interest = (!self.host_hung_up && self.state != ConnState::Closed).then(|| {
            let mut set = EventSet::empty();
            let reading = self.state == ConnState::Established
                && !self.queued_for_rx
                && !self.host_eof
                && !self.waiting_credit
                && self.guest_shutdown & SHUTDOWN_RCV == 0;
            if reading {
                set |= EventSet::IN;
            }
            if self.has_host_backlog() {
                set |= EventSet::OUT;
            }
            set
        });
        settled
    }

    /// What goes into a receive buffer of `room` payload bytes, the
    /// connection having been taken off the receive queue; data is read
    /// into `buf`.
    pub fn next_to_guest(&mut self, room: usize, buf: &mut [u8]) -> ToGuest {
        self.queued_for_rx = false;
        if self.state != ConnState::Established || self.host_eof {
            return ToGuest::Nothing;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            self.waiting_credit = true;
            return ToGuest::Control(self.header(op::CREDIT_REQUEST));
        }
        let want = room.min(credit).min(buf.len());
        match self.stream.read(&mut buf[..want]) {
            Ok(0) => {
                self.host_eof = true;
                let mut shutdown = self.header(op::SHUTDOWN);
                shutdown.flags = if self.host_hung_up {
                    SHUTDOWN_BOTH
                } else {
                    SHUTDOWN_SEND
                };
                ToGuest::Control(shutdown)
            }
            Ok(n) => {
                let mut data = self.header(op::RW);
                data.len = n as u32;
                self.sent_to_guest(n);
                self.queued_for_rx = true;
                ToGuest::Data(data)
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                ToGuest::Nothing
            }
            Err(_) => ToGuest::Failed(self.header(op::RST)),
        }
    }

    /// A header from the host end of this connection to the guest; it
    /// carries (and so reports) the current receive credit.
    fn header(&mut self, op: u16) -> Header {
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
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `bytes` sent to the guest.
    fn sent_to_guest(&mut self, bytes: usize) {
        self.tx_cnt += Wrapping(bytes as u32);
    }

    /// Whether enough space was freed that the guest should hear of it.
    fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.reported_fwd_cnt).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Whether guest data waits for the host end to read it.
    fn has_host_backlog(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Queues guest data for the host end and writes what the host takes now.
    fn push_from_guest(&mut self, data: &[u8]) -> Result<(), CreditOverrun> {
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
    fn flush_to_host(&mut self) -> io::Result<()> {
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
    fn discard_host_backlog(&mut self) {
        self.to_host = VecDeque::new();
    }

    /// Owes the guest control packet `op`; true if nothing was owed before
    /// (the caller queues the connection once). Only the most important
    /// packet is kept: a reset ends everything, and a request or response
    /// carries the credit an update would (every header is built when sent).
    fn owe(&mut self, op: u16) -> bool {
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
        (host_peer, {
            let mut conn =
                Connection::new(ours, 1 << 30, 1024, 3, ConnState::Established, op::RESPONSE);
            conn.take_owed();
            conn
        })
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

    #[test]
    fn a_request_the_guest_never_saw_is_withdrawn_on_reset() {
        let (_peer, ours) = UnixStream::pair().unwrap();
        let deadline = Instant::now();
        let mut conn = Connection::new(
            ours,
            1 << 30,
            1024,
            3,
            ConnState::AwaitingResponse(deadline),
            op::REQUEST,
        );
        assert_eq!(conn.deadline(), Some(deadline));
        assert_eq!(conn.reset(), ResetOutcome::Withdraw);
    }

    #[test]
    fn a_reset_closes_once_and_owes_the_guest_a_reset() {
        let (_peer, mut conn) = connection();
        assert_eq!(conn.host_event(EventSet::IN), Action::QueueRx);
        assert_eq!(conn.host_event(EventSet::IN), Action::Settle, "queued once");
        assert_eq!(
            conn.reset(),
            ResetOutcome::Closed {
                unqueue_rx: true,
                queue_control: true,
            }
        );
        assert_eq!(conn.state(), ConnState::Closed);
        assert_eq!(conn.reset(), ResetOutcome::AlreadyClosed);
        let settled = conn.settle();
        assert!(!settled.remove, "kept until the guest reads its reset");
        assert_eq!(settled.interest, None, "a closed socket is not polled");
        assert_eq!(conn.take_owed().map(|h| h.op), Some(op::RST));
        assert!(conn.settle().remove);
    }

    #[test]
    fn a_host_hang_up_with_guest_data_unread_resets() {
        let (peer, mut conn) = connection();
        conn.push_from_guest(&[1, 2, 3]).unwrap();
        drop(peer);
        assert_eq!(conn.host_event(EventSet::HANG_UP), Action::Reset);
    }

    #[test]
    fn the_guest_shutting_both_ways_drains_then_ends() {
        let (_peer, mut conn) = connection();
        let shutdown = Header {
            op: op::SHUTDOWN,
            flags: SHUTDOWN_BOTH,
            ..Header::default()
        };
        assert_eq!(conn.guest_packet(&shutdown, &[]), Action::QueueControl);
        assert_eq!(conn.state(), ConnState::Draining);
        assert!(!conn.settle().remove, "its reset is still owed");
        assert_eq!(conn.take_owed().map(|h| h.op), Some(op::RST));
        assert!(conn.settle().remove);
    }

    #[test]
    fn host_data_goes_to_the_guest_within_its_credit() {
        let (mut peer, mut conn) = connection();
        let mut buf = [0u8; 64];
        assert!(
            matches!(conn.next_to_guest(64, &mut buf), ToGuest::Control(h) if h.op == op::CREDIT_REQUEST),
            "no credit: ask for it"
        );
        let credit = Header {
            op: op::CREDIT_UPDATE,
            buf_alloc: 4,
            ..Header::default()
        };
        assert_eq!(conn.guest_packet(&credit, &[]), Action::Settle);
        peer.write_all(b"abcdef").unwrap();
        match conn.next_to_guest(64, &mut buf) {
            ToGuest::Data(header) => {
                assert_eq!(header.len, 4, "cut to the credit");
                assert_eq!(&buf[..4], b"abcd");
            }
            other => panic!("{other:?}"),
        }
        assert!(conn.queued_for_rx(), "more may follow");
        drop(peer);
        assert!(
            matches!(conn.next_to_guest(64, &mut buf), ToGuest::Control(h) if h.op == op::CREDIT_REQUEST),
            "the credit is used up"
        );
    }
}

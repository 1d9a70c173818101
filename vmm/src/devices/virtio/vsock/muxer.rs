//! The vsock backend: one thread that carries packets between the guest's
//! queues and host Unix sockets.
//!
//! Host-initiated connections arrive on the listening socket and name a guest
//! port with a `CONNECT` line ([`super::handshake`]); guest-initiated ones to
//! host port P connect to `<uds>_P`. Every connection is a [`Connection`] with
//! bounded buffers and credit-based flow control; a packet that fits no
//! connection is answered with a reset.
//!
//! # What a guest can make the host hold
//!
//! The guest drives this thread with every packet it sends, and it may post no
//! receive buffers at all: nothing waiting for the receive queue may grow with
//! the packets it sends (Firecracker's muxer bounds its receive queue the same
//! way, keyed by connection, with advisory resets droppable).
//!
//! - `control`: connections that owe the guest a control packet (request,
//!   response, credit update, reset). A connection owes at most one
//!   (`Connection::owe`: a reset outranks a request or response, which
//!   outranks a credit update; each is built when sent, so it carries the
//!   current credit) and is queued once, so the queue never holds more than
//!   [`MAX_CONNECTIONS`] tokens and nothing owed is ever dropped. That is
//!   why, unlike Firecracker's fixed-size queue, it never has to be rebuilt
//!   from the connection table.
//! - A connection the host side ends stays in the table, closed (socket shut,
//!   buffer freed), until its reset reaches the guest, and keeps counting
//!   towards [`MAX_CONNECTIONS`]: a guest that never reads only runs out of
//!   connections. A request the guest never saw is withdrawn without one.
//! - `resets`: replies to packets that fit no connection, at most
//!   [`MAX_QUEUED_RESETS`]; more are dropped. They are advisory: the guest
//!   has no connection they would end (a connect it tried times out instead).
//! - `rx_ready`: connections with host data to carry, each at most once
//!   (`queued_for_rx`), so at most [`MAX_CONNECTIONS`].
//! - Guest data waiting for a slow host end: at most `BUF_ALLOC` bytes a
//!   connection (more breaks the credit rule and resets it).
//! - Handshakes: counted with the connections, a line of a few bytes each,
//!   dropped after [`CONNECT_TIMEOUT`].

use super::connection::{Action, ConnState, Connection, ResetOutcome, ToGuest};
use super::handshake::{Handshake, HandshakeStatus};
use super::packet::{op, Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use crate::devices::virtio::device_thread::EventRegistry;
use crate::devices::virtio::VirtioInterrupt;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// How long a client has to send its `CONNECT` line, and the guest to accept
/// the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections (and pending handshakes) served at once, closed ones
/// whose reset the guest has not read yet included. Each may hold a socket
/// and a 256 KiB buffer, so 1024 caps a VM's vsock at 1024 sockets and
/// 256 MiB of guest data, far above what the agent's API and stdio streams
/// use (a few per container).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most resets for packets that fit no connection waiting for receive
/// buffers: as many as one full receive queue (256 buffers) takes, so a guest
/// that keeps its queue filled misses none; past that the guest is not
/// reading and they are dropped (they are advisory).
pub const MAX_QUEUED_RESETS: usize = 256;
/// First host port given to host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Token of the listening socket in the device thread's registry.
const TOKEN_LISTENER: u64 = 4;
/// Token of the first host connection; each later one takes the next.
pub const FIRST_CONN_TOKEN: u64 = 16;

/// The device's queues once the driver set them up, in virtio order.
pub struct GuestQueues {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Receive queue (host → guest packets).
    pub rx: Queue,
    /// Transmit queue (guest → host packets).
    pub tx: Queue,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Carries the packets of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    registry: EventRegistry,
    conns: HashMap<u64, Connection>,
    by_ports: HashMap<(u32, u32), u64>,
    polled: HashMap<u64, EventSet>,
    handshakes: HashMap<u64, Handshake>,
    /// Host ports given to host-initiated connections, with the connection
    /// holding each. A guest-initiated one's host port is the guest's choice
    /// (it may be any of these): it is not recorded here, nor freed.
    host_ports: HashMap<u32, u64>,
    next_token: u64,
    next_host_port: u32,
    /// Connections owing the guest a control packet, each at most once.
    control: VecDeque<u64>,
    /// Replies to packets that fit no connection, at most
    /// [`MAX_QUEUED_RESETS`].
    resets: VecDeque<Header>,
    /// Connections with host data to carry, each at most once.
    rx_ready: VecDeque<u64>,
    buf: Vec<u8>,
}

impl Muxer {
    /// A muxer for guest `guest_cid` serving clients of `listener` (bound at
    /// `uds_path`).
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            registry: EventRegistry::new()?,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            polled: HashMap::new(),
            handshakes: HashMap::new(),
            host_ports: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            resets: VecDeque::new(),
            rx_ready: VecDeque::new(),
            buf: vec![0; MAX_PAYLOAD],
        })
    }

    /// Where the muxer's host sockets are watched.
    pub fn registry(&self) -> &EventRegistry {
        &self.registry
    }

    /// Starts watching the listening socket for clients.
    pub fn watch_listener(&self) -> io::Result<()> {
        self.registry
            .add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
    }

    /// Serves what the registry reported with `token`: a client on the
    /// listening socket or a host connection's socket.
    pub fn fd_event(&mut self, token: u64, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_clients(),
            token => self.host_event(token, events),
        }
    }

    /// When the next handshake or guest connect times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        let pending = self.conns.values().filter_map(Connection::deadline);
        handshakes.chain(pending).min()
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Accepts every client waiting on the listening socket.
    pub fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                        protocol::log_limited!(
                            log::Level::Warn,
                            "virtio-vsock: {MAX_CONNECTIONS} connections open, refusing a client"
                        );
                        continue;
                    }
                    if let Err(err) = self.watch_client(stream) {
                        log::error!("virtio-vsock: cannot watch a client: {err}");
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    protocol::log_limited!(log::Level::Error, "virtio-vsock: accept failed: {err}");
                    return;
                }
            }
        }
    }

    fn watch_client(&mut self, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let token = self.take_token();
        self.registry.add(stream.as_raw_fd(), token, EventSet::IN)?;
        let handshake = Handshake::new(stream, Instant::now() + CONNECT_TIMEOUT);
        self.handshakes.insert(token, handshake);
        Ok(())
    }

    /// Serves what epoll reported on the socket of connection `token`.
    pub fn host_event(&mut self, token: u64, events: EventSet) {
        if let Some(handshake) = self.handshakes.get_mut(&token) {
            match handshake.advance() {
                Ok(HandshakeStatus::Pending) => {}
                Ok(HandshakeStatus::Connect(port)) => {
                    if let Some(handshake) = self.drop_handshake(token) {
                        self.connect_to_guest(token, handshake.stream, port);
                    }
                }
                Err(err) => {
                    protocol::log_limited!(log::Level::Warn, "virtio-vsock: {err}");
                    self.drop_handshake(token);
                }
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let action = conn.host_event(events);
        self.apply(token, action);
    }

    /// Does what a connection asked for after it changed.
    fn apply(&mut self, token: u64, action: Action) {
        match action {
            Action::Keep => return,
            Action::Settle => {}
            Action::QueueControl => self.control.push_back(token),
            Action::QueueRx => self.rx_ready.push_back(token),
            Action::Reset => return self.reset(token),
            Action::Remove => {
                self.remove(token);
                return;
            }
        }
        self.after_change(token);
    }

    fn drop_handshake(&mut self, token: u64) -> Option<Handshake> {
        let handshake = self.handshakes.remove(&token)?;
        let _ = self.registry.remove(handshake.stream.as_raw_fd());
        Some(handshake)
    }

    /// A client's `CONNECT <port>`: asks the guest to accept.
    fn connect_to_guest(&mut self, token: u64, stream: UnixStream, port: u32) {
        let local_port = self.allocate_host_port(port);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let conn = Connection::new(
            stream,
            local_port,
            port,
            self.guest_cid,
            ConnState::AwaitingResponse(deadline),
            op::REQUEST,
        );
        self.host_ports.insert(local_port, token);
        self.insert(token, conn);
    }

    /// A host port for a connection to guest port `peer_port`: one no
    /// host-initiated connection holds, and that no guest-initiated one from
    /// `peer_port` uses. Each live connection takes at most one port, so the
    /// search ends within `MAX_CONNECTIONS + 1` of them.
    fn allocate_host_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            let taken = self.host_ports.contains_key(&port)
                || self.by_ports.contains_key(&(port, peer_port));
            if !taken {
                return port;
            }
        }
    }

    /// Adds a connection, which owes the guest its request or response.
    fn insert(&mut self, token: u64, conn: Connection) {
        self.control.push_back(token);
        self.by_ports.insert(conn.ports(), token);
        self.conns.insert(token, conn);
        self.after_change(token);
    }

    /// Ends a connection and tells the guest: it stays, closed, until the
    /// guest has read its reset, so that reset is never dropped.
    fn reset(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        match conn.reset() {
            ResetOutcome::AlreadyClosed => return,
            ResetOutcome::Withdraw => {
                self.remove(token);
                return;
            }
            ResetOutcome::Closed {
                unqueue_rx,
                queue_control,
            } => {
                if unqueue_rx {
                    self.rx_ready.retain(|queued| *queued != token);
                }
                if queue_control {
                    self.control.push_back(token);
                }
            }
        }
        self.after_change(token);
    }

    /// Ends a connection without telling the guest; its socket closes.
    fn remove(&mut self, token: u64) -> Option<Connection> {
        let conn = self.conns.remove(&token)?;
        let (local_port, peer_port) = conn.ports();
        self.by_ports.remove(&(local_port, peer_port));
        // Only the connection the port was given to frees it.
        if self.host_ports.get(&local_port) == Some(&token) {
            self.host_ports.remove(&local_port);
        }
        // Both queues hold at most MAX_CONNECTIONS tokens.
        if conn.owed().is_some() {
            self.control.retain(|queued| *queued != token);
        }
        if conn.queued_for_rx() {
            self.rx_ready.retain(|queued| *queued != token);
        }
        if self.polled.remove(&token).is_some() {
            let _ = self.registry.remove(conn.as_raw_fd());
        }
        Some(conn)
    }

    /// Settles a connection after anything changed: removes what is done,
    /// queues what it owes the guest, and polls what is needed.
    fn after_change(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let settled = conn.settle();
        if settled.remove {
            self.remove(token);
            return;
        }
        if settled.queue_control {
            self.control.push_back(token);
        }
        if settled.queue_rx {
            self.rx_ready.push_back(token);
        }
        let fd = conn.as_raw_fd();
        if let Err(err) = self.poll(token, fd, settled.interest) {
            log::error!("virtio-vsock: cannot poll a connection: {err}");
            self.reset(token);
        }
    }

    fn poll(&mut self, token: u64, fd: RawFd, wanted: Option<EventSet>) -> io::Result<()> {
        let current = self.polled.get(&token).copied();
        if current == wanted {
            return Ok(());
        }
        match wanted {
            Some(set) => {
                match current {
                    Some(_) => self.registry.modify(fd, token, set)?,
                    None => self.registry.add(fd, token, set)?,
                }
                self.polled.insert(token, set);
            }
            None => {
                self.polled.remove(&token);
                self.registry.remove(fd)?;
            }
        }
        Ok(())
    }

    /// Drops handshakes and guest connects whose deadline passed by `now`.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in late {
            self.drop_handshake(token);
        }
        let unanswered: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(token, _)| *token)
            .collect();
        for token in unanswered {
            self.reset(token);
        }
    }

    /// Takes every packet the guest sent; true if any buffer was used.
    pub fn process_tx(&mut self, queues: &mut GuestQueues) -> bool {
        let mut used = false;
        while let Some(chain) = queues.tx.pop_descriptor_chain(&queues.mem) {
            let head = chain.head_index();
            // A chain that does not map into guest memory carries nothing.
            if let Ok(mut reader) = chain.reader(&queues.mem) {
                self.take_packet(&mut reader);
            }
            if queues.tx.add_used(&queues.mem, head, 0).is_err() {
                protocol::log_limited!(
                    log::Level::Error,
                    "virtio-vsock: the used ring is outside guest memory"
                );
                break;
            }
            used = true;
        }
        used
    }

    fn take_packet(&mut self, reader: &mut Reader<'_>) {
        let mut raw = [0u8; HEADER_LEN];
        if reader.read_exact(&mut raw).is_err() {
            return; // too short for a header: nothing to answer
        }
        let header = Header::decode(&raw);
        let len = header.len as usize;
        if len > MAX_PAYLOAD || reader.available_bytes() < len {
            self.refuse(&header);
            return;
        }
        let mut payload = std::mem::take(&mut self.buf);
        if reader.read_exact(&mut payload[..len]).is_ok() {
            self.handle_guest_packet(header, &payload[..len]);
        } else {
            self.refuse(&header);
        }
        self.buf = payload;
    }

    /// Answers a packet that cannot be served with a reset (never a reset
    /// with a reset), unless [`MAX_QUEUED_RESETS`] already wait.
    fn refuse(&mut self, header: &Header) {
        let answered = header.op != op::RST && header.src_cid == self.guest_cid;
        if answered && self.resets.len() < MAX_QUEUED_RESETS {
            self.resets.push_back(header.reset_reply());
        }
    }

    fn handle_guest_packet(&mut self, header: Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid {
            return; // not from this guest: dropped
        }
        if header.dst_cid != HOST_CID || header.kind != TYPE_STREAM {
            self.refuse(&header);
            return;
        }
        let Some(&token) = self.by_ports.get(&(header.dst_port, header.src_port)) else {
            if header.op == op::REQUEST {
                self.connect_to_host(&header);
            } else {
                self.refuse(&header);
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let action = conn.guest_packet(&header, payload);
        self.apply(token, action);
    }

    /// A guest REQUEST to host port P: connects to `<uds>_P`.
    fn connect_to_host(&mut self, header: &Header) {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            self.refuse(header);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", header.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(_) => {
                self.refuse(header);
                return;
            }
        };
        let mut conn = Connection::new(
            stream,
            header.dst_port,
            header.src_port,
            self.guest_cid,
            ConnState::Established,
            op::RESPONSE,
        );
        conn.note_peer_credit(header);
        let token = self.take_token();
        self.insert(token, conn);
    }

    /// Fills the guest's receive buffers with connections' control packets
    /// first, then resets, then host data, round robin; true if any buffer
    /// was used.
    pub fn fill_rx(&mut self, queues: &mut GuestQueues) -> bool {
        let mut used = false;
        while !(self.control.is_empty() && self.resets.is_empty() && self.rx_ready.is_empty()) {
            let Some(chain) = queues.rx.pop_descriptor_chain(&queues.mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&queues.mem) {
                Ok(mut writer) if writer.available_bytes() >= HEADER_LEN => {
                    self.fill_buffer(&mut writer)
                }
                // Unusable buffer: handed back empty.
                _ => Some(0),
            };
            match written {
                Some(len) => {
                    if queues.rx.add_used(&queues.mem, head, len as u32).is_err() {
                        protocol::log_limited!(
                            log::Level::Error,
                            "virtio-vsock: the used ring is outside guest memory"
                        );
                        break;
                    }
                    used = true;
                }
                None => queues.rx.go_to_previous_position(),
            }
        }
        used
    }

    /// Writes one packet into `writer`: its length, or None if the buffer
    /// stays unused.
    fn fill_buffer(&mut self, writer: &mut Writer<'_>) -> Option<usize> {
        if let Some(token) = self.control.pop_front() {
            let owed = self.conns.get_mut(&token).and_then(Connection::take_owed);
            // A closed connection whose reset went out ends here.
            self.after_change(token);
            return owed.map(|header| write_packet(writer, &header, &[]));
        }
        if let Some(header) = self.resets.pop_front() {
            return Some(write_packet(writer, &header, &[]));
        }
        let token = self.rx_ready.pop_front()?;
        let room = writer.available_bytes() - HEADER_LEN;
        let conn = self.conns.get_mut(&token)?;
        match conn.next_to_guest(room, &mut self.buf) {
            ToGuest::Nothing => {
                self.after_change(token);
                None
            }
            ToGuest::Control(header) => {
                self.after_change(token);
                Some(write_packet(writer, &header, &[]))
            }
            ToGuest::Data(header) => {
                self.rx_ready.push_back(token);
                let len = header.len as usize;
                Some(write_packet(writer, &header, &self.buf[..len]))
            }
            ToGuest::Failed(reset) => {
                self.remove(token);
                Some(write_packet(writer, &reset, &[]))
            }
        }
    }
}

/// Writes a packet; its length, or 0 if the buffer could not take it.
fn write_packet(writer: &mut Writer<'_>, header: &Header, payload: &[u8]) -> usize {
    let written = writer
        .write_all(&header.encode())
        .and_then(|()| writer.write_all(payload));
    match written {
        Ok(()) => HEADER_LEN + payload.len(),
        Err(_) => 0,
    }
}

/// Connects to a Unix socket without waiting for a full backlog.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and its size is passed with it.
    let ret = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

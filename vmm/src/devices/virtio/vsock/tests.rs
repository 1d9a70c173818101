//! Tests of virtio-vsock: the muxer driven step by step, the test playing
//! the guest driver on mock queues and the host clients on real Unix
//! sockets; the device's configuration space.

use super::*;
use crate::devices::virtio::test_utils::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
use crate::devices::virtio::vsock::packet::SHUTDOWN_BOTH;
use std::io::{Read, Write};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const GUEST_CID: u64 = 3;
const QUEUE_SIZE: u16 = 64;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
/// The device's used rings, away from the mock's, which overlaps the second
/// half of its avail ring (it takes the ring's length in entries for bytes).
const RX_USED: u64 = 0x4000;
const TX_USED: u64 = 0xc000;
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x20_0000;

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_posted: u16,
    tx_posted: u16,
    rx_seen: u16,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), QUEUE_SIZE),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), QUEUE_SIZE),
            rx_posted: 0,
            tx_posted: 0,
            rx_seen: 0,
        }
    }

    fn queues(&self) -> GuestQueues {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queue = |mock: &MockSplitQueue<'_, GuestMemoryMmap>, used: u64| {
            let mut queue: Queue = mock.create_queue().unwrap();
            queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
            queue
        };
        GuestQueues {
            mem: self.mem.clone(),
            rx: queue(&self.rx, RX_USED),
            tx: queue(&self.tx, TX_USED),
            interrupt: Arc::new(VirtioInterrupt::new(eventfd())),
        }
    }

    /// Posts one receive buffer (header + 4 KiB, as Linux 6.1 does).
    fn post_rx(&mut self) {
        let slot = self.rx_posted % 32;
        let addr = RX_BUFFERS + u64::from(slot) * 0x2000;
        chain(
            &self.rx,
            slot * 2,
            &[
                (addr, HEADER_LEN as u32, WRITE),
                (addr + 0x100, 4096, WRITE),
            ],
        );
        self.rx_posted = self.rx_posted.wrapping_add(1);
    }

    /// Sends a packet through the transmit queue (header and payload in two
    /// descriptors).
    fn send(&mut self, muxer: &mut Muxer, queues: &mut GuestQueues, header: Header, data: &[u8]) {
        let slot = self.tx_posted % 32;
        let addr = TX_BUFFERS + u64::from(slot) * 0x2000;
        self.mem
            .write_slice(&header.encode(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + 0x100))
            .unwrap();
        let mut descs = vec![(addr, HEADER_LEN as u32, 0)];
        if !data.is_empty() {
            descs.push((addr + 0x100, data.len() as u32, 0));
        }
        chain(&self.tx, slot * 2, &descs);
        self.tx_posted = self.tx_posted.wrapping_add(1);
        assert!(muxer.process_tx(queues));
    }

    /// The packets the device put in the receive queue since the last call.
    fn received(&mut self, muxer: &mut Muxer, queues: &mut GuestQueues) -> Vec<(Header, Vec<u8>)> {
        muxer.fill_rx(queues);
        let idx = self.used_idx(RX_USED);
        let mut packets = Vec::new();
        while self.rx_seen != idx {
            let element = RX_USED + 4 + 8 * u64::from(self.rx_seen % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(element)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(element + 4)).unwrap();
            let slot = u64::from(id / 2);
            let addr = RX_BUFFERS + slot * 0x2000;
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let header = Header::decode(&raw);
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + 0x100))
                .unwrap();
            assert_eq!(len as usize, HEADER_LEN + data.len());
            packets.push((header, data));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        packets
    }

    /// The index of the used ring at `used`.
    fn used_idx(&self, used: u64) -> u16 {
        self.mem.read_obj(GuestAddress(used + 2)).unwrap()
    }

    /// Keeps 32 receive buffers posted until the device has nothing more to
    /// send; every packet it sent.
    fn drain(&mut self, muxer: &mut Muxer, queues: &mut GuestQueues) -> Vec<(Header, Vec<u8>)> {
        let mut packets = Vec::new();
        loop {
            while self.rx_posted.wrapping_sub(self.rx_seen) < 32 {
                self.post_rx();
            }
            let got = self.received(muxer, queues);
            if got.is_empty() {
                return packets;
            }
            packets.extend(got);
        }
    }
}

/// Writes a descriptor chain at table index `first` and offers it, as a
/// driver does (the mock's `add_desc_chains` does not wrap around the ring).
fn chain(queue: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, descs: &[(u64, u32, u16)]) {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let index = first + i as u16;
        let flags = if i + 1 == descs.len() {
            flags
        } else {
            flags | NEXT
        };
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, index + 1));
        queue.desc_table().store(index, desc).unwrap();
    }
    let avail = queue.avail();
    let idx = avail.idx().load();
    avail
        .ring()
        .ref_at(usize::from(idx % QUEUE_SIZE))
        .unwrap()
        .store(first);
    avail.idx().store(idx.wrapping_add(1));
}

fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

struct Fixture {
    dir: PathBuf,
    mem: GuestMemoryMmap,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runv-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        Self { dir, mem }
    }

    fn uds(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// A muxer on the fixture's socket and a guest driver that posted 8
    /// receive buffers.
    fn start(&self) -> (Muxer, Guest<'_>, GuestQueues) {
        let (muxer, mut guest, queues) = self.start_bare();
        for _ in 0..8 {
            guest.post_rx();
        }
        (muxer, guest, queues)
    }

    /// A muxer and a guest driver that posted no receive buffers.
    fn start_bare(&self) -> (Muxer, Guest<'_>, GuestQueues) {
        let listener = UnixListener::bind(self.uds()).unwrap();
        let muxer = Muxer::new(GUEST_CID, &self.uds(), listener).unwrap();
        let guest = Guest::new(&self.mem);
        let queues = guest.queues();
        (muxer, guest, queues)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn host_connect_is_offered_to_the_guest_and_data_flows_both_ways() {
    let f = Fixture::new("host");
    let (mut muxer, mut guest, mut queues) = f.start();

    let mut client = UnixStream::connect(f.uds()).unwrap();
    muxer.accept_clients();
    client.write_all(b"CONNECT 1024\nearly").unwrap();
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    let packets = guest.received(&mut muxer, &mut queues);
    assert_eq!(packets.len(), 1);
    let request = packets[0].0;
    assert_eq!(request.op, op::REQUEST);
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(request.dst_port, 1024);
    let host_port = request.src_port;

    guest.send(
        &mut muxer,
        &mut queues,
        from_guest(op::RESPONSE, 1024, host_port),
        &[],
    );
    let mut ok = [0u8; 32];
    let n = client.read(&mut ok).unwrap();
    assert_eq!(&ok[..n], format!("OK {host_port}\n").as_bytes());

    // Bytes the client sent right after its CONNECT line reach the guest.
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    let packets = guest.received(&mut muxer, &mut queues);
    assert_eq!(packets[0].0.op, op::RW);
    assert_eq!(packets[0].1, b"early");

    let mut data = from_guest(op::RW, 1024, host_port);
    data.len = 5;
    guest.send(&mut muxer, &mut queues, data, b"hello");
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // The guest closes: a reset confirms it and the client sees the end.
    let mut shutdown = from_guest(op::SHUTDOWN, 1024, host_port);
    shutdown.flags = SHUTDOWN_BOTH;
    guest.send(&mut muxer, &mut queues, shutdown, &[]);
    let packets = guest.received(&mut muxer, &mut queues);
    assert!(packets.iter().any(|(h, _)| h.op == op::RST));
    assert_eq!(client.read(&mut got).unwrap(), 0);
    assert!(muxer.conns.is_empty());
}

#[test]
fn host_data_waits_for_guest_credit() {
    let f = Fixture::new("credit");
    let (mut muxer, mut guest, mut queues) = f.start();
    let mut client = UnixStream::connect(f.uds()).unwrap();
    muxer.accept_clients();
    client.write_all(b"CONNECT 7\n").unwrap();
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    let host_port = guest.received(&mut muxer, &mut queues)[0].0.src_port;
    let mut response = from_guest(op::RESPONSE, 7, host_port);
    response.buf_alloc = 100;
    guest.send(&mut muxer, &mut queues, response, &[]);

    client.write_all(&[1u8; 300]).unwrap();
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    let packets = guest.received(&mut muxer, &mut queues);
    let sent: usize = packets.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(sent, 100, "no more than the guest's buffer");
    assert_eq!(packets.last().unwrap().0.op, op::CREDIT_REQUEST);

    let mut update = from_guest(op::CREDIT_UPDATE, 7, host_port);
    update.buf_alloc = 100;
    update.fwd_cnt = 100;
    guest.send(&mut muxer, &mut queues, update, &[]);
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    let packets = guest.received(&mut muxer, &mut queues);
    let sent: usize = packets.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(sent, 100);
}

#[test]
fn guest_connects_to_a_host_listener_and_is_refused_without_one() {
    let f = Fixture::new("guest");
    let (mut muxer, mut guest, mut queues) = f.start();
    let service = UnixListener::bind(f.dir.join("vsock.sock_5000")).unwrap();

    guest.send(
        &mut muxer,
        &mut queues,
        from_guest(op::REQUEST, 40000, 5000),
        &[],
    );
    guest.send(
        &mut muxer,
        &mut queues,
        from_guest(op::REQUEST, 40001, 5001),
        &[],
    );
    let packets = guest.received(&mut muxer, &mut queues);
    let ops: Vec<(u16, u32)> = packets.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(ops, [(op::RESPONSE, 40000), (op::RST, 40001)]);

    let (mut accepted, _) = service.accept().unwrap();
    let mut data = from_guest(op::RW, 40000, 5000);
    data.len = 3;
    guest.send(&mut muxer, &mut queues, data, b"abc");
    let mut got = [0u8; 3];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
}

#[test]
fn malformed_packets_are_answered_or_dropped_without_harm() {
    let f = Fixture::new("malformed");
    let (mut muxer, mut guest, mut queues) = f.start();
    // Too short for a header; outside guest memory; device-writable only.
    chain(&guest.tx, 0, &[(TX_BUFFERS, 10, 0)]);
    chain(&guest.tx, 2, &[(0x1_0000_0000, 44, 0)]);
    chain(&guest.tx, 4, &[(TX_BUFFERS, 44, WRITE)]);
    assert!(muxer.process_tx(&mut queues));
    assert_eq!(guest.used_idx(TX_USED), 3, "every chain is returned");
    guest.tx_posted = 3;

    // A payload longer than the chain carries, data for no connection, a
    // datagram and a packet from another guest.
    let mut lying = from_guest(op::RW, 1, 2);
    lying.len = 4096;
    guest.send(&mut muxer, &mut queues, lying, b"short");
    guest.send(&mut muxer, &mut queues, from_guest(op::RW, 3, 4), &[]);
    let mut datagram = from_guest(op::REQUEST, 5, 6);
    datagram.kind = 2;
    guest.send(&mut muxer, &mut queues, datagram, &[]);
    let mut spoofed = from_guest(op::REQUEST, 7, 8);
    spoofed.src_cid = 99;
    guest.send(&mut muxer, &mut queues, spoofed, &[]);
    let packets = guest.received(&mut muxer, &mut queues);
    let resets: Vec<u32> = packets
        .iter()
        .inspect(|(h, _)| assert_eq!(h.op, op::RST))
        .map(|(h, _)| h.dst_port)
        .collect();
    assert_eq!(resets, [1, 3, 5], "the spoofed packet is dropped");
    assert!(muxer.conns.is_empty());
}

/// Packets a hostile guest sends in the flood tests.
const FLOOD: u32 = 1_000_000;

/// The guest connects from `guest_port` to the host service on port 5000;
/// the service's end of it.
fn connect_to_service(
    muxer: &mut Muxer,
    guest: &mut Guest<'_>,
    queues: &mut GuestQueues,
    service: &UnixListener,
    guest_port: u32,
) -> UnixStream {
    guest.send(
        muxer,
        queues,
        from_guest(op::REQUEST, guest_port, 5000),
        &[],
    );
    // Posts no more than the response takes.
    if guest.rx_posted == guest.rx_seen {
        guest.post_rx();
    }
    let packets = guest.received(muxer, queues);
    let ops: Vec<(u16, u32)> = packets.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(ops, [(op::RESPONSE, guest_port)]);
    service.accept().unwrap().0
}

/// Data still flows both ways on the connection between `guest_port` and
/// the service (whose end is `accepted`).
fn assert_data_flows(
    muxer: &mut Muxer,
    guest: &mut Guest<'_>,
    queues: &mut GuestQueues,
    accepted: &mut UnixStream,
    guest_port: u32,
) {
    let mut ping = from_guest(op::RW, guest_port, 5000);
    ping.len = 4;
    guest.send(muxer, queues, ping, b"ping");
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    accepted.write_all(b"pong").unwrap();
    let token = muxer.by_ports[&(5000, guest_port)];
    muxer.host_event(token, EventSet::IN);
    let packets = guest.drain(muxer, queues);
    assert_eq!(packets.len(), 1);
    assert_eq!(
        (packets[0].0.op, packets[0].0.dst_port),
        (op::RW, guest_port)
    );
    assert_eq!(packets[0].1, b"pong");
}

#[test]
fn a_million_refused_packets_without_rx_buffers_queue_a_bounded_number_of_resets() {
    let f = Fixture::new("flood-refused");
    let (mut muxer, mut guest, mut queues) = f.start_bare();
    let service = UnixListener::bind(f.dir.join("vsock.sock_5000")).unwrap();

    // Data for no connection and requests to a port nobody listens on; a
    // few through the transmit queue, the rest straight to the handler.
    for port in 0..100 {
        guest.send(&mut muxer, &mut queues, from_guest(op::RW, port, 9), &[]);
    }
    for i in 0..FLOOD {
        let op = if i % 100 == 0 { op::REQUEST } else { op::RW };
        muxer.handle_guest_packet(from_guest(op, i, 9), &[]);
        assert!(muxer.resets.len() <= MAX_QUEUED_RESETS);
    }
    assert_eq!(muxer.resets.len(), MAX_QUEUED_RESETS);
    assert!(muxer.control.is_empty() && muxer.conns.is_empty());

    // The guest reads again: the resets drain, the oldest first.
    let packets = guest.drain(&mut muxer, &mut queues);
    let resets: Vec<u32> = packets
        .iter()
        .inspect(|(h, _)| assert_eq!(h.op, op::RST))
        .map(|(h, _)| h.dst_port)
        .collect();
    let expected: Vec<u32> = (0..100).chain(0..156).collect();
    assert_eq!(resets, expected);
    assert!(muxer.resets.is_empty());

    let mut accepted = connect_to_service(&mut muxer, &mut guest, &mut queues, &service, 40000);
    assert_data_flows(&mut muxer, &mut guest, &mut queues, &mut accepted, 40000);
}

#[test]
fn a_million_packets_for_a_live_connection_without_rx_buffers_owe_it_one_credit_update() {
    let f = Fixture::new("flood-live");
    let (mut muxer, mut guest, mut queues) = f.start_bare();
    let service = UnixListener::bind(f.dir.join("vsock.sock_5000")).unwrap();
    let mut accepted = connect_to_service(&mut muxer, &mut guest, &mut queues, &service, 40000);
    assert_eq!(
        guest.rx_posted, guest.rx_seen,
        "the guest posts no more buffers"
    );
    let token = muxer.by_ports[&(5000, 40000)];

    // Credit requests, data the host consumes (every 64 KiB of it owes a
    // credit update) and packets for no connection.
    let chunk = [7u8; 4096];
    let mut data = from_guest(op::RW, 40000, 5000);
    data.len = chunk.len() as u32;
    let mut consumed = 0u32;
    let mut seen = [0u8; 4096];
    for i in 0..FLOOD {
        match i % 1000 {
            0 => {
                muxer.handle_guest_packet(data, &chunk);
                accepted.read_exact(&mut seen).unwrap();
                consumed += chunk.len() as u32;
            }
            n if n % 2 == 1 => muxer.handle_guest_packet(from_guest(op::RW, i, 9), &[]),
            _ => muxer.handle_guest_packet(from_guest(op::CREDIT_REQUEST, 40000, 5000), &[]),
        }
        assert!(muxer.control.len() <= 1, "one entry for the one connection");
        assert!(muxer.resets.len() <= MAX_QUEUED_RESETS);
    }
    assert_eq!(muxer.control, [token]);

    // The guest reads again: one credit update with everything consumed,
    // then the resets.
    let packets = guest.drain(&mut muxer, &mut queues);
    let ours: Vec<&Header> = packets
        .iter()
        .map(|(h, _)| h)
        .filter(|h| h.dst_port == 40000)
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].op, op::CREDIT_UPDATE);
    assert_eq!(ours[0].fwd_cnt, consumed);
    assert_eq!(packets.len(), 1 + MAX_QUEUED_RESETS);
    assert!(muxer.control.is_empty() && muxer.resets.is_empty());

    assert_data_flows(&mut muxer, &mut guest, &mut queues, &mut accepted, 40000);
}

#[test]
fn connections_the_host_resets_keep_their_reset_until_the_guest_reads() {
    let f = Fixture::new("zombies");
    let (mut muxer, mut guest, mut queues) = f.start_bare();
    let service = UnixListener::bind(f.dir.join("vsock.sock_5000")).unwrap();
    service.set_nonblocking(true).unwrap();

    // Each connection is reset at once: a second request on its ports is a
    // protocol error. Past MAX_CONNECTIONS, requests are refused.
    let extra = 50;
    let mut first = None;
    for i in 0..(MAX_CONNECTIONS + extra) as u32 {
        let request = from_guest(op::REQUEST, 50000 + i, 5000);
        muxer.handle_guest_packet(request, &[]);
        muxer.handle_guest_packet(request, &[]);
        if let Ok((accepted, _)) = service.accept() {
            first.get_or_insert(accepted);
        }
        assert!(muxer.conns.len() <= MAX_CONNECTIONS);
        assert!(muxer.control.len() <= muxer.conns.len());
    }
    assert_eq!(muxer.conns.len(), MAX_CONNECTIONS);
    assert!(muxer.conns.values().all(|c| c.state() == ConnState::Closed));
    assert_eq!(muxer.control.len(), MAX_CONNECTIONS);
    assert_eq!(muxer.resets.len(), 2 * extra);
    let mut first = first.unwrap();
    assert_eq!(
        first.read(&mut [0u8; 8]).unwrap(),
        0,
        "the host end is closed"
    );

    // Every connection gets its reset, then the refusals follow.
    let packets = guest.drain(&mut muxer, &mut queues);
    assert!(packets.iter().all(|(h, _)| h.op == op::RST));
    let ports: Vec<u32> = packets.iter().map(|(h, _)| h.dst_port).collect();
    let refused = (MAX_CONNECTIONS as u32..(MAX_CONNECTIONS + extra) as u32)
        .flat_map(|i| [50000 + i, 50000 + i]);
    let expected: Vec<u32> = (50000..50000 + MAX_CONNECTIONS as u32)
        .chain(refused)
        .collect();
    assert_eq!(ports, expected);
    assert!(muxer.conns.is_empty() && muxer.control.is_empty() && muxer.resets.is_empty());

    service.set_nonblocking(false).unwrap();
    let mut accepted = connect_to_service(&mut muxer, &mut guest, &mut queues, &service, 40000);
    assert_data_flows(&mut muxer, &mut guest, &mut queues, &mut accepted, 40000);
}

#[test]
fn a_request_the_guest_never_read_is_withdrawn_when_it_times_out() {
    let f = Fixture::new("withdrawn");
    let (mut muxer, mut guest, mut queues) = f.start_bare();
    let mut client = UnixStream::connect(f.uds()).unwrap();
    muxer.accept_clients();
    client.write_all(b"CONNECT 1024\n").unwrap();
    muxer.host_event(FIRST_CONN_TOKEN, EventSet::IN);
    assert_eq!(muxer.control, [FIRST_CONN_TOKEN]);

    muxer.expire(Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1));
    assert!(muxer.conns.is_empty() && muxer.control.is_empty());
    assert_eq!(
        client.read(&mut [0u8; 8]).unwrap(),
        0,
        "the client is let go"
    );
    assert!(guest.drain(&mut muxer, &mut queues).is_empty());
}

/// A client connects to guest port `guest_port` and the guest accepts: the
/// client's stream, past its `OK` line, and the host port it was given.
fn host_connects(
    f: &Fixture,
    muxer: &mut Muxer,
    guest: &mut Guest<'_>,
    queues: &mut GuestQueues,
    guest_port: u32,
) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(f.uds()).unwrap();
    let token = muxer.next_token;
    muxer.accept_clients();
    writeln!(client, "CONNECT {guest_port}").unwrap();
    muxer.host_event(token, EventSet::IN);
    let packets = guest.drain(muxer, queues);
    assert_eq!(packets.len(), 1);
    assert_eq!(
        (packets[0].0.op, packets[0].0.dst_port),
        (op::REQUEST, guest_port)
    );
    let host_port = packets[0].0.src_port;
    guest.send(
        muxer,
        queues,
        from_guest(op::RESPONSE, guest_port, host_port),
        &[],
    );
    let expected = format!("OK {host_port}\n");
    let mut ok = vec![0u8; expected.len()];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, expected.as_bytes());
    (client, host_port)
}

/// Guest data on each of `routes` (guest port, host port) reaches its own
/// host end, and only that one.
fn assert_routed(
    muxer: &mut Muxer,
    guest: &mut Guest<'_>,
    queues: &mut GuestQueues,
    routes: &mut [((u32, u32), &mut UnixStream)],
) {
    for (i, ((guest_port, host_port), _)) in routes.iter().enumerate() {
        let mut packet = from_guest(op::RW, *guest_port, *host_port);
        packet.len = 1;
        guest.send(muxer, queues, packet, &[i as u8]);
    }
    for (i, (route, host_end)) in routes.iter_mut().enumerate() {
        host_end
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = [0u8; 2];
        let n = host_end.read(&mut got).unwrap_or(0);
        assert_eq!(&got[..n], [i as u8], "data sent on {route:?}");
    }
}

/// The guest connects from `guest_port` to the host service on
/// `host_port`; the service's end of it.
fn connect_to_service_port(
    muxer: &mut Muxer,
    guest: &mut Guest<'_>,
    queues: &mut GuestQueues,
    service: &UnixListener,
    guest_port: u32,
    host_port: u32,
) -> UnixStream {
    guest.send(
        muxer,
        queues,
        from_guest(op::REQUEST, guest_port, host_port),
        &[],
    );
    let packets = guest.drain(muxer, queues);
    let ops: Vec<(u16, u32)> = packets.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(ops, [(op::RESPONSE, guest_port)]);
    service.accept().unwrap().0
}

#[test]
fn a_guest_connection_to_a_host_port_in_use_does_not_free_it() {
    let f = Fixture::new("host-port-freed");
    let (mut muxer, mut guest, mut queues) = f.start();
    let (mut first, host_port) = host_connects(&f, &mut muxer, &mut guest, &mut queues, 1024);
    assert_eq!(host_port, FIRST_HOST_PORT);

    // The guest connects to that very port number on the host (a service at
    // `<uds>_P`) from another port, then resets its connection.
    let service = UnixListener::bind(f.dir.join(format!("vsock.sock_{host_port}"))).unwrap();
    let _accepted = connect_to_service_port(
        &mut muxer,
        &mut guest,
        &mut queues,
        &service,
        7000,
        host_port,
    );
    guest.send(
        &mut muxer,
        &mut queues,
        from_guest(op::RST, 7000, host_port),
        &[],
    );
    assert_eq!(muxer.conns.len(), 1);

    // The allocator comes round again (its counter wraps after 3 * 2^30
    // host connections) and a second client asks for the same guest port.
    muxer.next_host_port = FIRST_HOST_PORT;
    let (mut second, second_port) = host_connects(&f, &mut muxer, &mut guest, &mut queues, 1024);
    assert_ne!(second_port, host_port, "the port is still in use");

    // Each client still gets its own guest data.
    let routes = &mut [
        ((1024, host_port), &mut first),
        ((1024, second_port), &mut second),
    ];
    assert_routed(&mut muxer, &mut guest, &mut queues, routes);
}

#[test]
fn host_ports_skip_those_of_live_guest_connections() {
    let f = Fixture::new("host-port-taken");
    let (mut muxer, mut guest, mut queues) = f.start();

    // The guest, from its port 1024, connects to the host port the next
    // client would be given.
    let next = muxer.next_host_port;
    let service = UnixListener::bind(f.dir.join(format!("vsock.sock_{next}"))).unwrap();
    let mut accepted =
        connect_to_service_port(&mut muxer, &mut guest, &mut queues, &service, 1024, next);

    let (mut client, host_port) = host_connects(&f, &mut muxer, &mut guest, &mut queues, 1024);
    assert_ne!(host_port, next, "the pair of ports is taken");
    let routes = &mut [
        ((1024, next), &mut accepted),
        ((1024, host_port), &mut client),
    ];
    assert_routed(&mut muxer, &mut guest, &mut queues, routes);
}

#[test]
fn config_space_holds_the_guest_cid() {
    use crate::devices::virtio::vsock::Vsock;
    use crate::devices::virtio::VirtioDevice;
    let dir = std::env::temp_dir().join(format!("runv-vsock-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let device = Vsock::new(0x1_0000_0003, &path).unwrap();
    let mut low = [0u8; 4];
    device.read_config(0, &mut low);
    assert_eq!(u32::from_le_bytes(low), 3);
    let mut high = [0u8; 4];
    device.read_config(4, &mut high);
    assert_eq!(u32::from_le_bytes(high), 1);
    let mut past = [0xffu8; 4];
    device.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    assert!(Vsock::new(3, &path).is_err(), "a bound path is refused");
    drop(device);
    assert!(!path.exists(), "the socket is removed with the device");
    std::fs::remove_dir_all(&dir).unwrap();
}

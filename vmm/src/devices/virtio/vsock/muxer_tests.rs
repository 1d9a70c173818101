//! The muxer driven step by step, the test playing the guest driver on mock
//! queues and the host clients on real Unix sockets.

use super::*;
use crate::devices::virtio::test_utils::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
use std::io::{Read, Write};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
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
            rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), 64),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), 64),
            rx_posted: 0,
            tx_posted: 0,
            rx_seen: 0,
        }
    }

    fn queues(&self) -> GuestQueues {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        GuestQueues {
            mem: self.mem.clone(),
            rx: self.rx.create_queue().unwrap(),
            tx: self.tx.create_queue().unwrap(),
            notify: [eventfd(), eventfd(), eventfd()],
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
        self.rx_posted += 1;
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
        self.tx_posted += 1;
        assert!(muxer.process_tx(queues));
    }

    /// The packets the device put in the receive queue since the last call.
    fn received(&mut self, muxer: &mut Muxer, queues: &mut GuestQueues) -> Vec<(Header, Vec<u8>)> {
        muxer.fill_rx(queues);
        let used = self.rx.used();
        let idx = used.idx().load();
        let mut packets = Vec::new();
        while self.rx_seen != idx {
            let element = used
                .ring()
                .ref_at(usize::from(self.rx_seen % 64))
                .unwrap()
                .load();
            let slot = (element.id() / 2) as u64;
            let addr = RX_BUFFERS + slot * 0x2000;
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let header = Header::decode(&raw);
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + 0x100))
                .unwrap();
            assert_eq!(element.len() as usize, HEADER_LEN + data.len());
            packets.push((header, data));
            self.rx_seen += 1;
        }
        packets
    }
}

fn chain(queue: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, descs: &[(u64, u32, u16)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            RawDescriptor::from(Descriptor::new(addr, len, flags, first + i as u16 + 1))
        })
        .collect();
    queue.add_desc_chains(&raw, first).unwrap();
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
        let listener = UnixListener::bind(self.uds()).unwrap();
        let muxer = Muxer::new(GUEST_CID, &self.uds(), listener).unwrap();
        let mut guest = Guest::new(&self.mem);
        let queues = guest.queues();
        for _ in 0..8 {
            guest.post_rx();
        }
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
    assert_eq!(guest.tx.used().idx().load(), 3, "every chain is returned");
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

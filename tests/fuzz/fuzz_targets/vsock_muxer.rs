//! The vsock muxer's state machine, driven step by step as its event loop
//! would: a guest sending packets and posting receive buffers on its queues,
//! host clients connecting, talking, half-closing and hanging up on real Unix
//! sockets, and time passing. Every packet the muxer hands the guest is
//! checked to be well formed.
//!
//! Input: a sequence of steps, each an opcode byte and its arguments (see
//! `Step`). The tokens the muxer gives connections are predicted as it takes
//! them (`FIRST_CONN_TOKEN` on, one per accepted client or guest connect).

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{interrupt, memory, Driver, Input, Ring, FAR_REGION, F_WRITE};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::vsock::muxer::{GuestQueues, Muxer, CONNECT_TIMEOUT, FIRST_CONN_TOKEN};
use vmm::devices::virtio::vsock::packet::{Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use vmm_sys_util::epoll::EventSet;

const GUEST_CID: u64 = 3;
/// Queue size of both rings.
const QUEUE_SIZE: u16 = 64;
/// Receive chains: two descriptors each (slot `n` takes descriptors `2n` and
/// `2n + 1`), with fixed buffers.
const RX_SLOTS: u16 = 16;
/// Where receive slot `n`'s buffers are, `RX_SLOT_LEN` bytes each.
const RX_AREA: u64 = 0x1_0000;
const RX_SLOT_LEN: u64 = 0x1200;
/// Transmit buffers come from the buffer area past the receive slots.
const TX_DATA_FROM: u64 = RX_SLOTS as u64 * RX_SLOT_LEN;
/// Host ports with a listening socket of the harness (`<uds>_P`).
const PEER_PORTS: [u32; 2] = [1, 2];
/// Most host endpoints (clients plus accepted guest connects).
const MAX_ENDPOINTS: usize = 8;
/// Most steps taken from one input.
const MAX_STEPS: usize = 128;

/// A receive chain the guest posted: its two buffers, and whether they are
/// the slot's own writable buffers (only those are checked).
#[derive(Clone, Copy, Default)]
struct RxChain {
    buffers: [(u64, u32); 2],
    clean: bool,
}

/// A host end of a connection, with the token the muxer polls it under.
struct Endpoint {
    stream: Option<UnixStream>,
    token: Option<u64>,
}

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    muxer: Muxer,
    queues: GuestQueues,
    tx: Driver<'m>,
    rx_ring: Ring,
    rx_posted: u16,
    rx_seen: u16,
    rx_chains: [RxChain; RX_SLOTS as usize],
    uds: PathBuf,
    peers: Vec<UnixListener>,
    endpoints: Vec<Endpoint>,
    next_token: u64,
    clock: Instant,
}

/// This process's directory for its sockets (the run script points TMPDIR
/// at a directory it removes).
fn socket_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("runv-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket dir");
        dir
    })
}

fn bind(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind a harness socket");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    listener
}

/// Whether the peer of `stream` shut its writing side (a read would see EOF).
fn at_eof(stream: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into `byte`, on an fd `stream` owns.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            std::ptr::addr_of_mut!(byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// A port as the guest or a client names it: mostly one the harness serves.
fn port(input: &mut Input<'_>) -> u32 {
    let b = input.u8();
    match b >> 6 {
        0 => 1024 + u32::from(b & 3),
        1 => PEER_PORTS[usize::from(b & 1)] + u32::from(b & 2),
        2 => (1 << 30) + u32::from(b & 7),
        _ => input.u32(),
    }
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap, dir: &Path) -> Self {
        let uds = dir.join("v");
        let listener = bind(&uds);
        let muxer = Muxer::new(GUEST_CID, &uds, listener).expect("muxer");
        let peers = PEER_PORTS
            .iter()
            .map(|p| bind(&dir.join(format!("v_{p}"))))
            .collect();
        let (rx_ring, tx_ring) = (Ring::new(0, QUEUE_SIZE), Ring::new(1, QUEUE_SIZE));
        let queues = GuestQueues {
            mem: mem.clone(),
            rx: rx_ring.queue(false),
            tx: tx_ring.queue(false),
            interrupt: interrupt(),
        };
        Self {
            mem,
            muxer,
            queues,
            tx: Driver::new(mem, tx_ring, TX_DATA_FROM),
            rx_ring,
            rx_posted: 0,
            rx_seen: 0,
            rx_chains: [RxChain::default(); RX_SLOTS as usize],
            uds,
            peers,
            endpoints: Vec::new(),
            next_token: FIRST_CONN_TOKEN,
            clock: Instant::now(),
        }
    }

    /// The guest sends one packet through the transmit queue.
    fn guest_send(&mut self, input: &mut Input<'_>) {
        let control = input.u8();
        let mut header = Header {
            src_cid: if control & 1 == 0 {
                GUEST_CID
            } else {
                input.u64()
            },
            dst_cid: if control & 2 == 0 {
                HOST_CID
            } else {
                input.u64()
            },
            src_port: port(input),
            dst_port: port(input),
            kind: if control & 4 == 0 {
                TYPE_STREAM
            } else {
                input.u16()
            },
            op: u16::from(input.u8() % 8),
            flags: u32::from(input.u8()),
            buf_alloc: match input.u8() % 4 {
                0 => 0,
                1 => 4096,
                2 => 256 << 10,
                _ => input.u32(),
            },
            fwd_cnt: if control & 8 == 0 { 0 } else { input.u32() },
            len: 0,
        };
        let payload = if control & 0x10 != 0 {
            let len = input.u16() % 0x2000;
            input.bytes(usize::from(len))
        } else {
            &[]
        };
        header.len = if control & 0x20 == 0 {
            payload.len() as u32
        } else {
            input.u32()
        };
        let wire = header.encode();
        // The header in one buffer, or split where the input says.
        let split = if control & 0x40 == 0 {
            HEADER_LEN
        } else {
            usize::from(input.u8()) % HEADER_LEN
        };
        let flags = if control & 0x80 == 0 { 0 } else { F_WRITE };
        let mut buffers = Vec::new();
        for part in [&wire[..split], &wire[split..], payload] {
            if !part.is_empty() {
                let addr = self.tx.alloc_with(part, part.len() as u64);
                buffers.push((addr, part.len() as u32, flags));
            }
        }
        self.tx.add_chain(&buffers);
        self.muxer.process_tx(&mut self.queues);
        self.accept_guest_connects();
    }

    /// A guest REQUEST that the muxer connected took the next token.
    fn accept_guest_connects(&mut self) {
        for listener in &self.peers {
            while let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(true).expect("non-blocking stream");
                self.endpoints.push(Endpoint {
                    stream: Some(stream),
                    token: Some(self.next_token),
                });
                self.next_token += 1;
            }
        }
    }

    /// The guest posts receive chains in free slots.
    fn post_rx(&mut self, input: &mut Input<'_>) {
        let count = input.u8() % 8;
        for _ in 0..count {
            let outstanding = self.rx_posted.wrapping_sub(self.rx_seen);
            if outstanding >= RX_SLOTS {
                break;
            }
            let control = input.u8();
            let slot = self.rx_posted % RX_SLOTS;
            let area = RX_AREA + u64::from(slot) * RX_SLOT_LEN;
            let header_len = match control & 3 {
                0 | 1 => HEADER_LEN as u32,
                2 => u32::from(input.u8() % 64),
                _ => 0x100,
            };
            let data_len = u32::from(input.u16()) % 0x1001;
            let wild = control & 4 != 0;
            let header_addr = if wild {
                FAR_REGION + u64::from(input.u16() % 0x2000)
            } else {
                area
            };
            let flags = if control & 8 == 0 { F_WRITE } else { 0 };
            let buffers = [(header_addr, header_len), (area + 0x100, data_len)];
            self.rx_chains[usize::from(slot)] = RxChain {
                buffers,
                clean: !wild && flags == F_WRITE,
            };
            let head = slot * 2;
            for (i, &(addr, len)) in buffers.iter().enumerate() {
                let next = head + 1;
                let desc_flags = if i == 0 { flags | 1 } else { flags };
                self.write_rx_desc(head + i as u16, addr, len, desc_flags, next);
            }
            self.publish_rx(head);
        }
    }

    fn write_rx_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.rx_ring.desc + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&raw, GuestAddress(at));
    }

    fn publish_rx(&mut self, head: u16) {
        let ring = self.rx_ring;
        let slot = ring.avail + 4 + 2 * u64::from(self.rx_posted % ring.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        self.rx_posted = self.rx_posted.wrapping_add(1);
        let _ = self
            .mem
            .write_obj(self.rx_posted, GuestAddress(ring.avail + 2));
    }

    /// The muxer fills the guest's receive buffers; each packet is checked.
    fn fill_rx(&mut self) {
        self.muxer.fill_rx(&mut self.queues);
        let used = self.queues.rx.next_used();
        while self.rx_seen != used {
            let (id, len) = self.rx_ring.used_entry(self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            assert!(id % 2 == 0 && id < u32::from(QUEUE_SIZE), "used head {id}");
            let chain = self.rx_chains[(id / 2) as usize];
            if chain.clean {
                self.check_packet(&chain, len);
            }
        }
    }

    fn check_packet(&self, chain: &RxChain, len: u32) {
        let capacity: u32 = chain.buffers.iter().map(|b| b.1).sum();
        assert!(len <= capacity, "{len} bytes written in {capacity}");
        if len == 0 {
            return;
        }
        assert!(len as usize >= HEADER_LEN, "a {len}-byte packet");
        let mut bytes = Vec::new();
        for &(addr, buffer_len) in &chain.buffers {
            let mut part = vec![0u8; buffer_len as usize];
            self.mem
                .read_slice(&mut part, GuestAddress(addr))
                .expect("a clean receive buffer is in guest memory");
            bytes.extend_from_slice(&part);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&bytes[..HEADER_LEN]);
        let header = Header::decode(&raw);
        assert_eq!(header.len as usize + HEADER_LEN, len as usize, "{header:?}");
        assert!(header.len as usize <= MAX_PAYLOAD);
        // A reset may answer a packet the guest sent to another cid from it.
        assert_eq!(header.dst_cid, GUEST_CID);
        assert_eq!(header.kind, TYPE_STREAM);
    }

    /// A host client connects to the device's socket.
    fn connect_client(&mut self) {
        if self.endpoints.len() >= MAX_ENDPOINTS {
            return;
        }
        if let Ok(stream) = UnixStream::connect(&self.uds) {
            stream.set_nonblocking(true).expect("non-blocking stream");
            self.endpoints.push(Endpoint {
                stream: Some(stream),
                token: None,
            });
        }
    }

    /// The muxer accepts the waiting clients, in the order they connected.
    fn accept_clients(&mut self) {
        self.muxer.accept_clients();
        for endpoint in &mut self.endpoints {
            if endpoint.token.is_none() {
                endpoint.token = Some(self.next_token);
                self.next_token += 1;
            }
        }
    }

    fn endpoint(&mut self, input: &mut Input<'_>) -> Option<(usize, u64)> {
        if self.endpoints.is_empty() {
            return None;
        }
        let index = usize::from(input.u8()) % self.endpoints.len();
        let endpoint = &self.endpoints[index];
        endpoint.stream.as_ref()?;
        Some((index, endpoint.token?))
    }

    /// A host end writes (a CONNECT line or bytes), half-closes, hangs up or
    /// reads what the muxer sent, and the muxer hears of it.
    fn host_action(&mut self, input: &mut Input<'_>) {
        let action = input.u8() % 5;
        let Some((index, token)) = self.endpoint(input) else {
            return;
        };
        let slot = &mut self.endpoints[index].stream;
        let Some(stream) = slot.as_mut() else {
            return;
        };
        let events = match action {
            0 => {
                let line = format!("CONNECT {}\n", port(input));
                let _ = stream.write(line.as_bytes());
                EventSet::IN
            }
            1 => {
                let len = usize::from(input.u8());
                let _ = stream.write(input.bytes(len));
                EventSet::IN
            }
            2 => {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(err) if err.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                EventSet::OUT
            }
            3 => {
                let _ = stream.shutdown(Shutdown::Write);
                // Both directions shut: epoll reports a hang-up.
                if at_eof(stream) {
                    EventSet::IN | EventSet::HANG_UP
                } else {
                    EventSet::IN
                }
            }
            _ => {
                *slot = None;
                EventSet::IN | EventSet::HANG_UP
            }
        };
        self.muxer.host_event(token, events);
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 9 {
            0 => self.guest_send(input),
            1 => self.post_rx(input),
            2 => self.fill_rx(),
            3 => self.connect_client(),
            4 => self.accept_clients(),
            5 => self.host_action(input),
            6 => {
                // A wake-up with nothing to do (epoll is level-triggered).
                let token = FIRST_CONN_TOKEN + u64::from(input.u8() % 16);
                let events = if input.bool() {
                    EventSet::IN
                } else {
                    EventSet::OUT
                };
                self.muxer.host_event(token, events);
            }
            7 => {
                if input.bool() {
                    self.clock += CONNECT_TIMEOUT + Duration::from_millis(1);
                }
                self.muxer.expire(self.clock);
            }
            _ => {
                self.post_rx(input);
                self.fill_rx();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = socket_dir();
    let mem = memory();
    let mut harness = Harness::new(&mem, dir);
    let mut input = Input::new(data);
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        harness.step(&mut input);
    }
    // The guest takes what is left for it: four clean 4 KiB chains.
    let mut rest = Input::new(&[4, 0, 0, 0x10, 0, 0, 0x10, 0, 0, 0x10, 0, 0, 0x10]);
    harness.post_rx(&mut rest);
    harness.fill_rx();
});

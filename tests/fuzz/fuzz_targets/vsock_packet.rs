//! virtio-vsock packet headers: decoding any 44 bytes, the wire form round
//! trip and resets, and a header read out of a guest's transmit chain.
//!
//! Input: 44 header bytes, then the chains (`Driver::decode_chains`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{memory, Driver, Input, Ring, MAX_CHAINS};
use std::io::Read;
use virtio_queue::QueueT;
use vmm::devices::virtio::vsock::packet::{op, Header, HEADER_LEN, MAX_PAYLOAD, TYPE_STREAM};

fn check_header(raw: &[u8; HEADER_LEN]) -> Header {
    let header = Header::decode(raw);
    assert_eq!(&header.encode(), raw, "wire form round trip");
    let reset = header.reset_reply();
    assert_eq!((reset.op, reset.kind, reset.len), (op::RST, TYPE_STREAM, 0));
    let back = reset.reset_reply();
    assert_eq!(
        (back.src_cid, back.dst_cid, back.src_port, back.dst_port),
        (
            header.src_cid,
            header.dst_cid,
            header.src_port,
            header.dst_port
        )
    );
    header
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut raw = [0u8; HEADER_LEN];
    let taken = input.bytes(HEADER_LEN);
    raw[..taken.len()].copy_from_slice(taken);
    check_header(&raw);

    let mem = memory();
    let ring = Ring::new(0, 256);
    let mut driver = Driver::new(&mem, ring, 0);
    driver.decode_chains(&mut input);
    let mut queue = ring.queue(false);
    let mut payload = vec![0u8; MAX_PAYLOAD];
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let Ok(mut reader) = chain.reader(&mem) else {
            continue;
        };
        let mut raw = [0u8; HEADER_LEN];
        if reader.read_exact(&mut raw).is_err() {
            continue;
        }
        let header = check_header(&raw);
        let len = header.len as usize;
        if len <= MAX_PAYLOAD && reader.available_bytes() >= len {
            // The muxer refuses the packet if this fails.
            let _ = reader.read_exact(&mut payload[..len]);
        }
    }
});

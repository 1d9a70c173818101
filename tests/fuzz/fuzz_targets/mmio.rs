//! The virtio-MMIO transport: a guest's reads and writes of its registers and
//! configuration space, in any order, on the block device (which then serves
//! its queue wherever the guest put it) or on a two-queue test device whose
//! activation and reset may fail. (Not virtio-rng: it is rate-limited, and
//! would sleep.)
//!
//! Input: a byte choosing the device (bit 0: the test device; then bit 1:
//! its activation fails, bit 2: it cannot reset; else bit 1: a read-only
//! disk), then steps, each an opcode byte and its arguments (see `step`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{disk_image, memory, Driver, Input, Ring};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use vmm::devices::virtio::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// The registers a driver uses (virtio 1.2, 4.2.2).
const REGISTERS: [u64; 23] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc,
];
const MAGIC_VALUE: u32 = 0x7472_6976;
const STATUS: u64 = 0x070;
/// Status bits, in the order a driver sets them.
const DRIVER_STEPS: [u32; 3] = [1, 2, 8];
const DRIVER_OK: u32 = 4;
/// Most steps taken from one input.
const MAX_STEPS: usize = 256;

/// A device with two queues whose activation and reset succeed or fail as
/// the input says.
struct TestDevice {
    config: [u8; 12],
    activation_fails: bool,
    resettable: bool,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        0x42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 64]
    }
    fn avail_features(&self) -> u64 {
        0b1011 | 1 << 40
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        vmm::devices::virtio::read_config_space(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = start.checked_add(i).and_then(|at| self.config.get_mut(at)) {
                *slot = *byte;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        _interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        assert_eq!(queues.len(), 2, "activated with every queue");
        if self.activation_fails {
            return Err(ActivateError::Io(std::io::Error::other("the input says so")));
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resettable
    }
}

struct Harness<'m> {
    transport: MmioTransport,
    drivers: Vec<Driver<'m>>,
    mem: &'m GuestMemoryMmap,
}

impl Harness<'_> {
    fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// What a Linux driver does to bring the device up, with queue `i` on
    /// `Ring::new(i, size)`.
    fn bring_up(&mut self, input: &mut Input<'_>) {
        self.write32(STATUS, 0);
        let mut status = 0;
        for bit in DRIVER_STEPS {
            if bit == 8 {
                let features = input.u64() | 1 << 32;
                for (sel, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
                    self.write32(0x024, sel);
                    self.write32(0x020, half);
                }
            }
            status |= bit;
            self.write32(STATUS, status);
        }
        for (index, driver) in self.drivers.iter().enumerate() {
            let ring = driver.ring;
            self.transport.write(0x030, &(index as u32).to_le_bytes());
            self.transport
                .write(0x038, &u32::from(ring.size).to_le_bytes());
            for (reg, addr) in [(0x080, ring.desc), (0x090, ring.avail), (0x0a0, ring.used)] {
                self.transport.write(reg, &(addr as u32).to_le_bytes());
                self.transport
                    .write(reg + 4, &((addr >> 32) as u32).to_le_bytes());
            }
            self.transport.write(0x044, &1u32.to_le_bytes());
        }
        self.write32(STATUS, status | DRIVER_OK);
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 8 {
            0 => {
                let offset = u64::from(input.u16() % 0x200);
                let mut data = [0u8; 8];
                let len = [1, 2, 4, 8][usize::from(input.u8() % 4)];
                self.transport.read(offset, &mut data[..len]);
            }
            1 | 2 => {
                let choice = input.u8();
                let offset = if choice & 0x80 == 0 {
                    REGISTERS[usize::from(choice) % REGISTERS.len()]
                } else {
                    u64::from(input.u16() % 0x200)
                };
                let value = input.u32();
                self.write32(offset, value);
            }
            3 => {
                let offset = 0x100 + u64::from(input.u8());
                let len = usize::from(input.u8() % 9);
                let data = input.bytes(len);
                self.transport.write(offset, data);
            }
            4 => {
                // Devices serve their queues on their own threads: a
                // notification is only a register write here.
                let value = input.u8();
                self.write32(REG_QUEUE_NOTIFY, u32::from(value));
            }
            5 => {
                let addr = u64::from(input.u16()) * 4;
                let len = usize::from(input.u8());
                let _ = self.mem.write_slice(input.bytes(len), GuestAddress(addr));
            }
            6 => self.bring_up(input),
            _ => {
                let index = usize::from(input.u8()) % self.drivers.len();
                self.drivers[index].decode_chains(input);
                self.write32(REG_QUEUE_NOTIFY, index as u32);
            }
        }
        assert_eq!(self.read32(0x000), MAGIC_VALUE);
        assert_eq!(self.read32(0x004), 2);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let choice = input.u8();
    let mem = memory();
    let (device, sizes): (Box<dyn VirtioDevice>, &[u16]) = if choice & 1 == 0 {
        let block = Block::open(disk_image(), choice & 2 != 0, "mmio").expect("disk image");
        (Box::new(block), &[256])
    } else {
        let device = TestDevice {
            config: [0; 12],
            activation_fails: choice & 2 != 0,
            resettable: choice & 4 == 0,
        };
        (Box::new(device), &[16, 64])
    };
    let transport = MmioTransport::new(device, mem.clone()).expect("transport");
    let drivers = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| Driver::new(&mem, Ring::new(i as u64, size), i as u64 * 0x8000))
        .collect();
    let mut harness = Harness {
        transport,
        drivers,
        mem: &mem,
    };
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        harness.step(&mut input);
    }
});

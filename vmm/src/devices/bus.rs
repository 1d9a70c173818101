//! Address-range dispatch of port I/O and MMIO exits to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus: reads and writes at an offset from its base address.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors while placing devices on a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    /// A zero-length range.
    #[error("bus range at {0:#x} is empty")]
    Empty(u64),
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Devices by base address; ranges never overlap.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before_overlaps = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if before_overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, device)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, device))
    }

    /// Runs `access` on the device claiming `addr` with its offset; returns
    /// false when no device claims it.
    fn dispatch(&self, addr: u64, access: impl FnOnce(&mut dyn BusDevice, u64)) -> bool {
        let Some((offset, device)) = self.find(addr) else {
            return false;
        };
        let mut device = device
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        access(&mut *device, offset);
        true
    }

    /// Dispatches a read; returns false when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.dispatch(addr, |device, offset| device.read(offset, data))
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.dispatch(addr, |device, offset| device.write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Register {
        last: Option<(u64, u8)>,
    }

    impl BusDevice for Register {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Register::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x3f0, 9),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0x3ff, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0x500, 0),
            Err(BusError::Empty(_))
        ));
        bus.insert(dev.clone(), 0x400, 1).unwrap();

        let mut data = [0u8];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data[0], 3);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((1, 7)));
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.write(0x401, &[0]));
    }
}

//! The i8042 keyboard controller at ports 0x60-0x64, only for its CPU reset
//! line: the guest's `reboot=k` writes 0xfe to port 0x64, which ends the VM.

use super::PowerOffTrigger;
use crate::devices::bus::BusDevice;

/// The i8042 as a port I/O bus device.
pub struct I8042(vm_superio::I8042Device<PowerOffTrigger>);

impl I8042 {
    /// An i8042 that ends the VM through `reset` when the guest pulses the
    /// reset line.
    pub fn new(reset: PowerOffTrigger) -> Self {
        Self(vm_superio::I8042Device::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(byte), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *byte = self.0.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(byte), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(err) = self.0.write(offset, *byte) {
                protocol::log_limited!(
                    log::Level::Error,
                    "cannot end the VM on the guest's reset: {err}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_exit::{ExitReporter, VmExit};
    use std::sync::Arc;

    #[test]
    fn reset_command_ends_the_vm_as_powered_off() {
        let exits = Arc::new(ExitReporter::new().unwrap());
        let mut i8042 = I8042::new(PowerOffTrigger(exits.clone()));
        i8042.write(0, &[0xfe]); // data port: ignored
        assert!(!exits.is_reported());
        i8042.write(4, &[0xfe]);
        assert!(matches!(exits.take(), Some(VmExit::PoweredOff)));
    }
}

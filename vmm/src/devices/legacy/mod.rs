//! Legacy port I/O devices: the 8250 UART, the i8042 reset line and the debug
//! port the agent signals boot progress on.

mod debug_port;
mod i8042;
mod serial;

pub use debug_port::{BootTimer, DebugPort};
pub use i8042::I8042;
pub use serial::{Capped, ConsoleSink, GuestPanic, Serial, MAX_CONSOLE_FILE_BYTES};

use crate::vm_exit::{ExitReporter, VmExit};
use std::io;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// A vm-superio trigger backed by an eventfd (an irqfd or a VMM event).
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A vm-superio trigger that ends the VM as powered off: the i8042's reset line.
pub struct PowerOffTrigger(pub Arc<ExitReporter>);

impl vm_superio::Trigger for PowerOffTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.report(VmExit::PoweredOff);
        Ok(())
    }
}

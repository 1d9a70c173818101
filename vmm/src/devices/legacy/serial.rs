//! The 8250 UART on port 0x3f8 (IRQ 4): the guest console.
//!
//! Output goes to the configured sink; every line is also watched for the
//! kernel's panic message, so that a panicking guest is reported even when the
//! console output itself is discarded.

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// What the kernel prints first when it panics.
const PANIC_PREFIX: &[u8] = b"Kernel panic - not syncing";
/// Longest console line kept for panic detection.
const MAX_LINE: usize = 512;
/// Most console bytes written to a file: the guest drives the console, and the
/// file is on the host (the shim's `/run`, a tmpfs), so it must not grow for ever.
pub const MAX_CONSOLE_FILE_BYTES: u64 = 16 << 20;

/// The guest's panic message, once seen on the console.
#[derive(Clone, Default)]
pub struct GuestPanic(Arc<Mutex<Option<String>>>);

impl GuestPanic {
    /// The panic line, if the guest panicked.
    pub fn message(&self) -> Option<String> {
        self.0
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn record(&self, line: &[u8]) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(line).trim().to_owned());
        }
    }
}

/// Where console bytes go, and the panic watch over them.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    line: Vec<u8>,
    panic: GuestPanic,
}

impl ConsoleSink {
    /// Sends console output to `out` (or discards it with `None`).
    pub fn new(out: Option<Box<dyn Write + Send>>, panic: GuestPanic) -> Self {
        Self {
            out,
            line: Vec::with_capacity(MAX_LINE),
            panic,
        }
    }

    fn watch(&mut self, byte: u8) {
        if byte == b'\n' {
            if let Some(at) = find(&self.line, PANIC_PREFIX) {
                self.panic.record(&self.line[at..]);
            }
            self.line.clear();
        } else if self.line.len() < MAX_LINE {
            self.line.push(byte);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for byte in buf {
            self.watch(*byte);
        }
        match &mut self.out {
            Some(out) => out.write_all(buf).map(|()| buf.len()),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// A writer that takes at most `limit` bytes, then notes once that it dropped
/// the rest and swallows everything after it.
pub struct Capped<W: Write> {
    inner: W,
    left: u64,
    noted: bool,
}

impl<W: Write> Capped<W> {
    /// `inner`, capped at `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            noted: false,
        }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        if take > 0 {
            self.inner.write_all(&buf[..take])?;
            self.left -= take as u64;
        }
        if take < buf.len() && !self.noted {
            self.noted = true;
            self.inner
                .write_all(b"\n[runv-vmm: console output over its limit dropped]\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The UART as a port I/O bus device.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
    /// A failed console write is logged once, not once per guest byte.
    write_failed: bool,
}

impl Serial {
    /// A UART raising its interrupt through `irq` and writing to `sink`.
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, sink),
            write_failed: false,
        }
    }

    /// A UART with the registers of `state` (a snapshot's); None if its
    /// receive FIFO is over the UART's size.
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        irq: EventFdTrigger,
        sink: ConsoleSink,
    ) -> Option<Self> {
        let uart =
            vm_superio::Serial::from_state(state, irq, vm_superio::serial::NoEvents, sink).ok()?;
        Some(Self {
            uart,
            write_failed: false,
        })
    }

    /// The UART's registers, for a snapshot.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.uart.state()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(byte), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(byte), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(err) = self.uart.write(offset, *byte) {
                if !self.write_failed {
                    self.write_failed = true;
                    log::warn!("serial console write failed (not logged again): {err:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial(out: Option<Box<dyn Write + Send>>, panic: GuestPanic) -> (Serial, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let trigger = EventFdTrigger(irq.try_clone().unwrap());
        (Serial::new(trigger, ConsoleSink::new(out, panic)), irq)
    }

    #[test]
    fn transmit_register_reaches_the_sink() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (mut uart, _irq) = serial(Some(Box::new(Shared(buf.clone()))), GuestPanic::default());
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        uart.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
    }

    #[test]
    fn a_capped_console_keeps_its_limit() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let capped = Capped::new(Shared(buf.clone()), 10);
        let (mut uart, _irq) = serial(Some(Box::new(capped)), GuestPanic::default());
        for _ in 0..100_000 {
            uart.write(0, b"x");
        }
        let written = buf.lock().unwrap().clone();
        assert!(written.starts_with(b"xxxxxxxxxx\n[runv-vmm: console output"));
        assert!(written.len() < 100, "{} bytes", written.len());
    }

    #[test]
    fn panic_line_is_caught_with_console_off() {
        let panic = GuestPanic::default();
        let (mut uart, _irq) = serial(None, panic.clone());
        for b in b"noise\n[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\nmore\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(
            panic.message().as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root")
        );
    }
}

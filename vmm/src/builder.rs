//! Assembles a microVM from its configuration, in boot order: guest memory →
//! VM with irqchip and PIT → kernel → initrd → command line → boot information
//! → MP table → legacy devices → vCPUs. The result is a [`Vmm`] ready to run.
//! A VM started from a snapshot ([`restore`]) maps its memory from the
//! snapshot and sets the saved state instead of loading the kernel.

pub mod restore;

use crate::arch::x86_64::boot::{self, BootPayload};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, IRQ_MAX, MMIO_GAP_START, PAGE_SIZE,
};
use crate::arch::x86_64::mptable;
use crate::arch::x86_64::regs::BootEntry;
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{
    BootTimer, Capped, ConsoleSink, DebugPort, EventFdTrigger, GuestPanic, PowerOffTrigger, Serial,
    I8042, MAX_CONSOLE_FILE_BYTES,
};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{
    register_notifiers, MmioError, MmioTransport, MMIO_WINDOW_SIZE,
};
use crate::devices::virtio::net::{tap, Net, NetError, Tap};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::metrics::ExitCounters;
use crate::runtime::Vmm;
use crate::snapshot::{SerialSnapshot, SnapshotError, SnapshotSource, SnapshotTarget, VmSnapshot};
use crate::vm_exit::ExitReporter;
use crate::vstate::memory::{self, create_guest_memory, guest_memory_from_file};
use crate::vstate::vcpu::{Vcpu, VcpuControl, VcpuCpuid, VcpuError, VcpuSetup, VcpuShared};
use crate::vstate::vm::{Vm, VmError};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Cap;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{self, BzImage, KernelLoader};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Command line every guest gets: reboot through the i8042 (ends the VM), reboot
/// at once on panic, no PCI or modules, no port-0x80 I/O delays (the debug port
/// times the boot), a minimal i8042 probe, the console on the 8250 UART.
const BASE_CMDLINE: &str = "reboot=k panic=-1 pci=off nomodule io_delay=none \
     i8042.noaux i8042.nomux i8042.dumbkbd console=ttyS0";
/// First IRQ line of the virtio-mmio devices (below: legacy ISA devices).
const VIRTIO_IRQ_BASE: u32 = 5;
/// Legacy device placement.
const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_IRQ: u32 = 4;
const I8042_PORT: u64 = 0x60;
/// The bzImage 64-bit entry is 0x200 past its load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol version (2.12) from which `xloadflags` announces the 64-bit entry.
const BOOT_PROTOCOL_64BIT_ENTRY: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1;

/// Errors while building the VM; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// KVM VM creation.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        path: PathBuf,
        source: loader::Error,
    },
    /// The bzImage has no 64-bit entry point.
    #[error("kernel {path} is a bzImage without the 64-bit boot protocol (2.12+, XLF_KERNEL_64)")]
    KernelNot64Bit { path: PathBuf },
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    InitrdCopy {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    /// The kernel command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line to guest memory failed.
    #[error("cannot write the kernel command line: {0}")]
    CmdlineLoad(loader::Error),
    /// Boot information.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Device placement.
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    /// An eventfd or irqfd for a device.
    #[error("cannot set up {what}: {source}")]
    Device {
        what: &'static str,
        source: std::io::Error,
    },
    /// The console file cannot be opened.
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// KVM's supported CPUID cannot be read.
    #[error("cannot read KVM's supported CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A virtio transport.
    #[error(transparent)]
    Virtio(#[from] MmioError),
    /// A disk image.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio-fs share.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A virtio-net card.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A snapshot to start from.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A snapshot's UART registers are out of range.
    #[error("the snapshot's UART state holds more than a FIFO")]
    SerialState,
    /// KVM's list of MSRs to save cannot be read.
    #[error("cannot read KVM's MSR list: {0}")]
    MsrList(kvm_ioctls::Error),
    /// More virtio devices than IRQ lines.
    #[error("too many virtio devices for the IOAPIC's interrupt lines")]
    TooManyDevices,
}

/// How the loaded kernel is entered.
enum KernelEntry {
    Pvh(GuestAddress),
    Linux64 {
        entry: GuestAddress,
        header: Option<setup_header>,
    },
}

struct LoadedKernel {
    entry: KernelEntry,
    end: u64,
}

/// How the vCPUs start: at the kernel's entry, or where a snapshot left them.
enum Start {
    Boot(BootEntry),
    Restore(Box<VmSnapshot>),
}

/// Builds the VM described by `config`; `process_start` dates the VMM's setup.
pub fn build_microvm(config: &VmConfig, process_start: Instant) -> Result<Vmm, BuildError> {
    let restored = match &config.restore_from {
        Some(dir) => Some(restore::open(dir, config)?),
        None => None,
    };
    let mem = match &restored {
        Some((_, memory)) => guest_memory_from_file(config.memory_mib << 20, memory)?,
        None => create_guest_memory(config.memory_mib << 20)?,
    };
    let vm = Arc::new(Vm::new(&mem)?);
    let mut mmio = Bus::new();
    let returned_memory = Arc::new(AtomicU64::new(0));
    let virtio = attach_virtio_devices(&vm, &mem, config, &returned_memory, &mut mmio)?;
    let start = match restored {
        Some((snapshot, _)) => {
            snapshot.vm.restore(vm.fd()).map_err(SnapshotError::from)?;
            restore::devices(&snapshot, &virtio)?;
            Start::Restore(Box::new(snapshot))
        }
        None => Start::Boot(load_guest(&mem, config, &virtio)?),
    };

    let panic = GuestPanic::default();
    let timer = Arc::new(BootTimer::default());
    let exits = Arc::new(ExitReporter::new().map_err(|source| BuildError::Device {
        what: "the VM exit event",
        source,
    })?);
    let serial_state = match &start {
        Start::Restore(snapshot) => Some(&snapshot.serial),
        Start::Boot(_) => None,
    };
    let (pio, serial) = legacy_devices(
        &vm,
        config,
        LegacyWiring {
            panic: panic.clone(),
            exits: exits.clone(),
            timer: timer.clone(),
        },
        serial_state,
    )?;
    let shared = VcpuShared {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        control: Arc::new(VcpuControl::default()),
        exits,
        timer,
        counters: Arc::new(ExitCounters::default()),
        process_start,
    };

    let supported_cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let cpuid = VcpuCpuid {
        supported: &supported_cpuid,
        tsc_deadline: vm.kvm().check_extension(Cap::TscDeadlineTimer),
        count: config.cpus,
    };
    let vcpus = match &start {
        Start::Boot(boot) => {
            let setup = VcpuSetup {
                cpuid,
                mem: &mem,
                boot: *boot,
            };
            (0..config.cpus)
                .map(|index| Vcpu::new(vm.fd(), index, &setup, shared.clone()))
                .collect::<Result<Vec<_>, _>>()?
        }
        Start::Restore(snapshot) => (0..config.cpus)
            .zip(&snapshot.vcpus)
            .map(|(index, state)| Vcpu::restore(vm.fd(), index, &cpuid, state, shared.clone()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    // Only a VMM that may snapshot reads what a snapshot records.
    let target = match &config.snapshot_dir {
        Some(dir) => Some(SnapshotTarget {
            dir: dir.clone(),
            boot: restore::boot_fingerprint(config),
            msr_list: vm
                .kvm()
                .get_msr_index_list()
                .map_err(BuildError::MsrList)?
                .as_slice()
                .into(),
        }),
        None => None,
    };
    let source = SnapshotSource {
        vm: vm.clone(),
        mem: mem.clone(),
        serial,
        target,
        transports: virtio.iter().map(|slot| slot.transport.clone()).collect(),
    };

    Ok(Vmm::new(
        config.clone(),
        vm,
        mem,
        vcpus,
        shared,
        panic,
        returned_memory,
        source,
    ))
}

/// Loads the kernel, initrd and command line, writes the boot information
/// and MP table, and returns the kernel's entry.
fn load_guest(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    virtio: &[VirtioSlot],
) -> Result<BootEntry, BuildError> {
    let kernel = load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(mem, path, kernel.end)?),
        None => None,
    };
    let cmdline = kernel_cmdline(config, virtio)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BuildError::CmdlineLoad)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BuildError::Cmdline)?
        .as_bytes()
        .len();
    let payload = BootPayload {
        cmdline: (GuestAddress(CMDLINE_START), cmdline_len),
        initrd,
    };
    let boot = match kernel.entry {
        KernelEntry::Pvh(entry) => BootEntry::Pvh {
            entry,
            start_info: boot::write_pvh_start_info(mem, &payload)?,
        },
        KernelEntry::Linux64 { entry, header } => BootEntry::Linux64 {
            entry,
            zero_page: boot::write_zero_page(mem, &payload, header)?,
        },
    };
    mptable::setup_mptable(mem, config.cpus)?;
    Ok(boot)
}

/// Loads an ELF vmlinux (PVH entry if it has the note, else the 64-bit entry)
/// or a bzImage.
fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BuildError> {
    let mut file = File::open(path).map_err(|source| BuildError::KernelOpen {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |source| BuildError::KernelLoad {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(result) => {
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => KernelEntry::Pvh(entry),
                _ => KernelEntry::Linux64 {
                    entry: result.kernel_load,
                    header: None,
                },
            };
            Ok(LoadedKernel {
                entry,
                end: result.kernel_end,
            })
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            let result = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            let header = result
                .setup_header
                .ok_or_else(|| BuildError::KernelNot64Bit {
                    path: path.to_owned(),
                })?;
            let (version, xloadflags) = (header.version, header.xloadflags);
            if version < BOOT_PROTOCOL_64BIT_ENTRY || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BuildError::KernelNot64Bit {
                    path: path.to_owned(),
                });
            }
            Ok(LoadedKernel {
                entry: KernelEntry::Linux64 {
                    entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                    header: Some(header),
                },
                end: bzimage_decompression_end(result.kernel_load.0, &header),
            })
        }
        Err(source) => Err(load_err(source)),
    }
}

/// End of the region a bzImage decompresses itself into: from its load (or
/// preferred) address aligned to the kernel alignment we announce, `init_size`
/// bytes. The initrd must stay above it.
fn bzimage_decompression_end(load: u64, header: &setup_header) -> u64 {
    let align = u64::from(boot::KERNEL_MIN_ALIGNMENT_BYTES);
    let (pref_address, init_size) = (header.pref_address, header.init_size);
    load.max(pref_address).next_multiple_of(align) + u64::from(init_size)
}

/// Copies the initrd to the top of low memory, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, usize), BuildError> {
    let read_err = |source| BuildError::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr = boot::low_ram_end(mem)
        .checked_sub(size)
        .map(|top| top & !(PAGE_SIZE - 1))
        .filter(|addr| *addr >= kernel_end)
        .ok_or_else(|| BuildError::InitrdTooLarge {
            path: path.to_owned(),
            size,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BuildError::InitrdCopy {
            path: path.to_owned(),
            source,
        })?;
    Ok((GuestAddress(addr), size as usize))
}

/// The VMM's command line, the console's log level, then the user's extras
/// (later parameters win in Linux, so the user can override ours).
fn kernel_cmdline(config: &VmConfig, virtio: &[VirtioSlot]) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(BuildError::Cmdline)?;
    // With the console off, print only emergencies (a panic still reaches the
    // VMM's panic watch); otherwise the usual quiet boot.
    let verbosity = match config.console {
        ConsoleConfig::Off => "loglevel=1",
        ConsoleConfig::Stdout | ConsoleConfig::File(_) => "quiet",
    };
    cmdline.insert_str(verbosity).map_err(BuildError::Cmdline)?;
    for slot in virtio {
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(slot.base), slot.irq, None)
            .map_err(BuildError::Cmdline)?;
    }
    if let Some(extra) = config.cmdline.as_deref().filter(|s| !s.trim().is_empty()) {
        cmdline
            .insert_str(extra.trim())
            .map_err(BuildError::Cmdline)?;
    }
    Ok(cmdline)
}

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx).
fn random_mac() -> [u8; 6] {
    let mut mac = [2u8, 0, 0, 0, 0, 0];
    if protocol::random::fill(&mut mac[1..]).is_err() {
        mac[2..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    mac
}

/// The virtio devices the configuration asks for, each on its MMIO window in
/// the gap with its own IRQ (from 5 on), notifications and interrupt wired to
/// KVM; the balloon counts what it gives back in `returned_memory`.
fn attach_virtio_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    returned_memory: &Arc<AtomicU64>,
    mmio: &mut Bus,
) -> Result<Vec<VirtioSlot>, BuildError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (index, disk) in config.disks.iter().enumerate() {
        let id = disk.id.clone().unwrap_or_else(|| format!("disk{index}"));
        devices.push(Box::new(Block::open(&disk.path, disk.readonly, &id)?));
    }
    for share in &config.fs {
        devices.push(Box::new(Fs::new(share)?));
    }
    if config.rng {
        let rng = Rng::new().map_err(|source| BuildError::Device {
            what: "the virtio-rng thread",
            source,
        })?;
        devices.push(Box::new(rng));
    }
    if config.free_page_reporting {
        let balloon =
            Balloon::new(returned_memory.clone()).map_err(|source| BuildError::Device {
                what: "the virtio-balloon thread",
                source,
            })?;
        devices.push(Box::new(balloon));
    }
    if let Some(vsock) = &config.vsock {
        devices.push(Box::new(Vsock::new(vsock.cid, &vsock.uds)?));
    }
    for net in &config.net {
        let mac = net.mac_bytes().unwrap_or_else(random_mac);
        let tap = match (&net.tap, net.fd) {
            (Some(name), _) => Some(Tap::open(name)),
            (None, Some(fd)) => Some(tap::inherited_fd(fd).and_then(Tap::from_fd)),
            // Validated: only a VM that makes a snapshot has one.
            (None, None) => None,
        };
        let card = match tap {
            Some(tap) => Net::new(tap.map_err(NetError::from)?, mac)?,
            None => Net::detached(mac)?,
        };
        devices.push(Box::new(card));
    }
    devices
        .into_iter()
        .enumerate()
        .map(|(index, device)| {
            let irq = VIRTIO_IRQ_BASE + index as u32;
            if irq > u32::from(IRQ_MAX) {
                return Err(BuildError::TooManyDevices);
            }
            let base = MMIO_GAP_START + index as u64 * MMIO_WINDOW_SIZE;
            let transport = MmioTransport::new(device, mem.clone())?;
            register_notifiers(vm.fd(), &transport, base, irq)?;
            // The bus owns the transport, and with it the device; snapshots
            // reach it too.
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(transport.clone(), base, MMIO_WINDOW_SIZE)?;
            Ok(VirtioSlot {
                base,
                irq,
                transport,
            })
        })
        .collect()
}

/// Where a virtio device sits: its MMIO window and IRQ line; its transport.
struct VirtioSlot {
    base: u64,
    irq: u32,
    transport: Arc<Mutex<MmioTransport>>,
}

fn eventfd(what: &'static str) -> Result<EventFd, BuildError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|source| BuildError::Device { what, source })
}

fn console_output(console: &ConsoleConfig) -> Result<Option<Box<dyn Write + Send>>, BuildError> {
    Ok(match console {
        ConsoleConfig::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleConfig::Off => None,
        ConsoleConfig::File(path) => Some(Box::new(Capped::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::ConsoleFile {
                    path: path.clone(),
                    source,
                })?,
            MAX_CONSOLE_FILE_BYTES,
        ))),
    })
}

/// What the legacy devices report to.
struct LegacyWiring {
    panic: GuestPanic,
    exits: Arc<ExitReporter>,
    timer: Arc<BootTimer>,
}

/// The UART (IRQ 4 through an irqfd; with a snapshot's registers if given),
/// the i8042 (its reset ends the VM) and the debug port; the UART also apart,
/// for snapshots.
fn legacy_devices(
    vm: &Vm,
    config: &VmConfig,
    wiring: LegacyWiring,
    serial_state: Option<&SerialSnapshot>,
) -> Result<(Bus, Arc<Mutex<Serial>>), BuildError> {
    let serial_irq = eventfd("the serial interrupt")?;
    vm.fd()
        .register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|err| BuildError::Device {
            what: "the serial irqfd",
            source: std::io::Error::from_raw_os_error(err.errno()),
        })?;
    let sink = ConsoleSink::new(console_output(&config.console)?, wiring.panic);
    let serial = match serial_state {
        Some(saved) => Serial::from_state(&saved.into(), EventFdTrigger(serial_irq), sink)
            .ok_or(BuildError::SerialState)?,
        None => Serial::new(EventFdTrigger(serial_irq), sink),
    };
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = I8042::new(PowerOffTrigger(wiring.exits));

    let mut pio = Bus::new();
    pio.insert(serial.clone(), SERIAL_PORT, 8)?;
    pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT, 5)?;
    pio.insert(
        Arc::new(Mutex::new(DebugPort(wiring.timer))),
        u64::from(protocol::BOOT_TIMER_PORT),
        1,
    )?;
    Ok((pio, serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PartialConfig;

    fn config(console: ConsoleConfig, extra: Option<&str>) -> VmConfig {
        let kernel = std::env::current_exe().unwrap();
        let mut config = PartialConfig {
            kernel: Some(kernel),
            console: Some(console),
            ..Default::default()
        }
        .finish()
        .unwrap();
        config.cmdline = extra.map(str::to_owned);
        config
    }

    fn kernel_cmdline_for(config: &VmConfig) -> Result<Cmdline, BuildError> {
        kernel_cmdline(config, &[])
    }

    #[test]
    fn cmdline_puts_user_extras_last() {
        let cmdline =
            kernel_cmdline_for(&config(ConsoleConfig::Stdout, Some("loglevel=7 foo=bar"))).unwrap();
        let text = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert!(text.starts_with("reboot=k panic=-1"));
        assert!(text.ends_with("quiet loglevel=7 foo=bar"), "{text}");
    }

    #[test]
    fn console_off_keeps_only_emergencies() {
        let cmdline = kernel_cmdline_for(&config(ConsoleConfig::Off, None)).unwrap();
        let text = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert!(text.ends_with("console=ttyS0 loglevel=1"), "{text}");
    }

    #[test]
    fn overlong_cmdline_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            kernel_cmdline_for(&config(ConsoleConfig::Off, Some(&long))),
            Err(BuildError::Cmdline(_))
        ));
    }

    #[test]
    fn bzimage_decompression_region_is_aligned_and_sized() {
        let header = setup_header {
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            ..Default::default()
        };
        assert_eq!(bzimage_decompression_end(0x10_0000, &header), 0x300_0000);
        assert_eq!(bzimage_decompression_end(0x180_0000, &header), 0x400_0000);
    }

    #[test]
    fn initrd_above_the_kernel_or_refused() {
        let mem = create_guest_memory(64 << 20).unwrap();
        // A file of a known size: this test's own binary outgrew the guest.
        let file = std::env::temp_dir().join(format!("runv-initrd-{}", std::process::id()));
        std::fs::write(&file, vec![0x5a; (8 << 20) + 123]).unwrap();
        let size = std::fs::metadata(&file).unwrap().len();
        let (addr, len) = load_initrd(&mem, &file, HIMEM_START).unwrap();
        assert_eq!(len as u64, size);
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + size <= 64 << 20);
        assert!(matches!(
            load_initrd(&mem, &file, (64 << 20) - 4096),
            Err(BuildError::InitrdTooLarge { .. })
        ));
        std::fs::remove_file(file).unwrap();
    }
}

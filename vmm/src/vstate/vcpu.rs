//! vCPUs: creation and boot state, and the thread that runs each one.
//!
//! The event loop steers the vCPU threads through [`VcpuControl`] (run, pause,
//! stop) and kicks them out of `KVM_RUN` with a real-time signal whose handler
//! sets `immediate_exit`, so that a kick is never lost between the state check
//! and the next `KVM_RUN`.

use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::{interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::devices::legacy::BootTimer;
use crate::metrics::{ExitCounters, ExitKind};
use crate::snapshot::{SnapshotError, VcpuState, VcpuStateError};
use crate::vm_exit::{Crash, ExitReporter, VmExit};
use kvm_bindings::{kvm_run, CpuId, KVM_SYSTEM_EVENT_CRASH};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU KVM ioctl failed.
    #[error("vCPU {index}: cannot {what}: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: regs::RegsError },
    /// KVM took fewer MSRs than given.
    #[error("vCPU {index}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    /// Building the MSR list failed.
    #[error("cannot build the boot MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
    /// Registering the kick signal handler failed.
    #[error("cannot register the vCPU kick signal handler: {0}")]
    KickSignal(vmm_sys_util::errno::Error),
    /// A snapshot's state could not be set.
    #[error("vCPU {index}: cannot restore its state: {source}")]
    Restore { index: u8, source: VcpuStateError },
    /// Spawning the vCPU thread failed.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
}

/// What the vCPU threads should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running the guest.
    Running,
    /// Parked outside `KVM_RUN`.
    Paused,
    /// Leaving their threads.
    Stopping,
}

struct ControlState {
    target: RunState,
    parked: usize,
    /// A snapshot's request for the parked vCPUs' state.
    save: Option<SaveRound>,
}

/// The parked vCPUs' states as a snapshot collects them.
struct SaveRound {
    /// MSRs to read (KVM's save list).
    msr_list: Arc<[u32]>,
    /// Each vCPU's state once it has read it, by index.
    states: Vec<Option<Result<VcpuState, VcpuStateError>>>,
}

/// The run state all vCPU threads follow.
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            state: Mutex::new(ControlState {
                target: RunState::Running,
                parked: 0,
                save: None,
            }),
            changed: Condvar::new(),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state the vCPUs are asked to be in.
    pub fn target(&self) -> RunState {
        self.lock().target
    }

    /// Asks every vCPU to move to `target` (the caller then kicks them).
    pub fn set_target(&self, target: RunState) {
        let mut state = self.lock();
        if state.target != RunState::Stopping {
            state.target = target;
        }
        self.changed.notify_all();
    }

    /// Back to running, unless a stop or resume came in between.
    pub fn resume_if_paused(&self) {
        let mut state = self.lock();
        if state.target == RunState::Paused {
            state.target = RunState::Running;
        }
        self.changed.notify_all();
    }

    /// Waits until `count` vCPUs are parked, or the timeout passes.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| {
                s.parked < count && s.target == RunState::Paused
            })
            .unwrap_or_else(|p| p.into_inner());
        state.parked >= count
    }

    /// Reads the state of every vCPU of `count`, all parked: each reads its
    /// own (its fd is its thread's), with the MSRs of `msr_list`.
    pub fn save_vcpus(
        &self,
        count: usize,
        msr_list: Arc<[u32]>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, SnapshotError> {
        let mut state = self.lock();
        if state.target != RunState::Paused || state.parked < count {
            return Err(SnapshotError::NotPaused);
        }
        state.save = Some(SaveRound {
            msr_list,
            states: (0..count).map(|_| None).collect(),
        });
        self.changed.notify_all();
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| {
                s.target == RunState::Paused
                    && s.save
                        .as_ref()
                        .is_some_and(|round| round.states.iter().any(Option::is_none))
            })
            .unwrap_or_else(|p| p.into_inner());
        let round = state.save.take().ok_or(SnapshotError::NotPaused)?;
        round
            .states
            .into_iter()
            .enumerate()
            .map(|(index, saved)| match saved {
                Some(Ok(vcpu)) => Ok(vcpu),
                Some(Err(source)) => Err(SnapshotError::Vcpu { index, source }),
                None => Err(SnapshotError::NotPaused),
            })
            .collect()
    }

    /// Parks vCPU `index` while paused, reading its state with `save` when a
    /// snapshot asks; false once it should stop.
    fn park(&self, index: u8, save: impl Fn(&[u32]) -> Result<VcpuState, VcpuStateError>) -> bool {
        let mut state = self.lock();
        state.parked += 1;
        self.changed.notify_all();
        while state.target == RunState::Paused {
            if let Some(SaveRound { msr_list, states }) = state.save.as_mut() {
                if let Some(slot) = states.get_mut(usize::from(index)).filter(|s| s.is_none()) {
                    *slot = Some(save(msr_list));
                    self.changed.notify_all();
                    continue;
                }
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        state.target != RunState::Stopping
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's mapped `kvm_run`; it is set
            // while the vCPU fd lives on this thread and cleared before it drops.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
    compiler_fence(Ordering::SeqCst);
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn register_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::KickSignal)
}

/// What every vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuShared {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Run state.
    pub control: Arc<VcpuControl>,
    /// Where a vCPU reports why the VM must end.
    pub exits: Arc<ExitReporter>,
    /// Boot timing.
    pub timer: Arc<BootTimer>,
    /// VM exit counts.
    pub counters: Arc<ExitCounters>,
    /// When the VMM process started.
    pub process_start: Instant,
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    shared: VcpuShared,
}

/// What every vCPU's CPUID is made from.
pub struct VcpuCpuid<'a> {
    /// KVM's supported CPUID, normalized per vCPU.
    pub supported: &'a CpuId,
    /// Whether KVM emulates the TSC deadline timer.
    pub tsc_deadline: bool,
    /// Number of vCPUs.
    pub count: u8,
}

/// Boot state every vCPU gets; the boot vCPU also gets registers.
pub struct VcpuSetup<'a> {
    /// CPUID.
    pub cpuid: VcpuCpuid<'a>,
    /// Guest memory, for the boot vCPU's tables.
    pub mem: &'a GuestMemoryMmap,
    /// Kernel entry of the boot vCPU.
    pub boot: regs::BootEntry,
}

/// An error of `what`, a KVM ioctl on vCPU `index`.
fn kvm_err(index: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm {
        index,
        what,
        source,
    }
}

/// Creates vCPU `index` in `vm` with its CPUID set.
fn create(vm: &kvm_ioctls::VmFd, index: u8, cpuid: &VcpuCpuid<'_>) -> Result<VcpuFd, VcpuError> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm_err(index, "create it"))?;
    let mut entries = cpuid.supported.clone();
    let topology = VcpuTopology {
        index,
        count: cpuid.count,
    };
    cpuid::normalize(entries.as_mut_slice(), topology, cpuid.tsc_deadline);
    fd.set_cpuid2(&entries)
        .map_err(kvm_err(index, "set CPUID"))?;
    Ok(fd)
}

impl Vcpu {
    /// Creates vCPU `index` in `vm` and sets its boot state.
    pub fn new(
        vm: &kvm_ioctls::VmFd,
        index: u8,
        setup: &VcpuSetup<'_>,
        shared: VcpuShared,
    ) -> Result<Self, VcpuError> {
        let fd = create(vm, index, &setup.cpuid)?;
        let msrs = msr::boot_msrs_wrapper().map_err(VcpuError::MsrList)?;
        let wanted = msrs.as_slice().len();
        let set = fd
            .set_msrs(&msrs)
            .map_err(kvm_err(index, "set boot MSRs"))?;
        if set != wanted {
            return Err(VcpuError::Msrs { index, set, wanted });
        }

        regs::setup_fpu(&fd).map_err(|source| VcpuError::Regs { index, source })?;
        if index == 0 {
            regs::setup_regs(&fd, setup.boot)
                .map_err(|source| VcpuError::Regs { index, source })?;
            regs::setup_sregs(setup.mem, &fd, setup.boot)
                .map_err(|source| VcpuError::Regs { index, source })?;
        }
        let mut lapic = fd
            .get_lapic()
            .map_err(kvm_err(index, "get the local APIC"))?;
        interrupts::set_lint(&mut lapic);
        fd.set_lapic(&lapic)
            .map_err(kvm_err(index, "set the local APIC"))?;
        Ok(Self { index, fd, shared })
    }

    /// Creates vCPU `index` in `vm` with the state a snapshot saved.
    pub fn restore(
        vm: &kvm_ioctls::VmFd,
        index: u8,
        cpuid: &VcpuCpuid<'_>,
        state: &VcpuState,
        shared: VcpuShared,
    ) -> Result<Self, VcpuError> {
        let fd = create(vm, index, cpuid)?;
        state
            .restore(&fd)
            .map_err(|source| VcpuError::Restore { index, source })?;
        Ok(Self { index, fd, shared })
    }

    /// Starts the vCPU on its own thread.
    pub fn start(self) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|source| VcpuError::Spawn { index, source })
    }

    fn run(mut self) {
        // Before the guest runs a single instruction on this vCPU.
        if let Err(err) = crate::seccomp::confine(crate::seccomp::ThreadKind::Vcpu) {
            self.shared.exits.report(VmExit::Crashed(err.into()));
            return;
        }
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        if let Some(exit) = self.run_loop() {
            self.shared.exits.report(exit);
        }
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }

    /// Runs until the VM must end (`Some`) or the vCPU is told to stop (`None`).
    fn run_loop(&mut self) -> Option<VmExit> {
        loop {
            // Once the VM must end (a reset, another vCPU's fatal exit), no vCPU
            // re-enters the guest: a rebooting kernel would otherwise go on
            // running its fallback reset paths.
            if self.shared.exits.is_reported() {
                return None;
            }
            match self.shared.control.target() {
                RunState::Stopping => return None,
                RunState::Paused => {
                    let fd = &self.fd;
                    let save = |msr_list: &[u32]| VcpuState::save(fd, msr_list);
                    if !self.shared.control.park(self.index, save) {
                        return None;
                    }
                    continue;
                }
                RunState::Running => {}
            }
            if self.index == 0 {
                if let Some(us) = self.shared.timer.mark_first_run(self.shared.process_start) {
                    log::info!("vmm-setup-us={us}");
                }
            }
            let outcome = match self.fd.run() {
                Ok(exit) => handle_exit(&self.shared, exit),
                Err(err) if matches!(err.errno(), libc::EINTR | libc::EAGAIN) => {
                    self.shared.counters.count(ExitKind::Kick);
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(source) => Some(VmExit::Crashed(Crash::Run {
                    index: self.index,
                    source,
                })),
            };
            if outcome.is_some() {
                return outcome;
            }
        }
    }

    /// Interrupts the vCPU thread `handle` (see [`kick_signal`]).
    pub fn kick(handle: &JoinHandle<()>) {
        // A thread that already left is fine: there is nothing to interrupt.
        let _ = handle.kill(kick_signal());
    }
}

/// Handles one exit; `Some` when the VM must end.
fn handle_exit(shared: &VcpuShared, exit: VcpuExit<'_>) -> Option<VmExit> {
    let counters = &shared.counters;
    match exit {
        VcpuExit::IoIn(port, data) => {
            counters.count(ExitKind::IoIn);
            if !shared.pio.read(u64::from(port), data) {
                data.fill(0xff); // nothing there: a floating bus
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            counters.count(ExitKind::IoOut);
            shared.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            counters.count(ExitKind::MmioRead);
            if !shared.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            counters.count(ExitKind::MmioWrite);
            shared.mmio.write(addr, data);
            None
        }
        VcpuExit::Shutdown => {
            counters.count(ExitKind::Shutdown);
            Some(VmExit::TripleFault)
        }
        VcpuExit::SystemEvent(kind, _) => {
            counters.count(ExitKind::SystemEvent);
            if kind == KVM_SYSTEM_EVENT_CRASH {
                Some(VmExit::Crashed(Crash::GuestReported))
            } else {
                Some(VmExit::PoweredOff)
            }
        }
        VcpuExit::Hlt => {
            counters.count(ExitKind::Other);
            Some(VmExit::Crashed(Crash::Halted))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            counters.count(ExitKind::Other);
            Some(VmExit::Crashed(Crash::FailEntry { reason, cpu }))
        }
        VcpuExit::InternalError => {
            counters.count(ExitKind::Other);
            Some(VmExit::Crashed(Crash::Internal))
        }
        other => {
            counters.count(ExitKind::Other);
            Some(VmExit::Crashed(Crash::Unexpected(format!("{other:?}"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paused control with one "vCPU" thread parked on it.
    fn parked_vcpu() -> (Arc<VcpuControl>, JoinHandle<bool>) {
        let control = Arc::new(VcpuControl::default());
        control.set_target(RunState::Paused);
        let vcpu = {
            let control = control.clone();
            thread::spawn(move || control.park(0, |_| panic!("no snapshot asked")))
        };
        assert!(control.wait_parked(1, Duration::from_secs(5)));
        (control, vcpu)
    }

    #[test]
    fn pause_parks_and_resume_releases() {
        let (control, vcpu) = parked_vcpu();
        control.set_target(RunState::Running);
        assert!(vcpu.join().unwrap(), "resumed, not stopped");
    }

    #[test]
    fn stop_wins_over_pause_and_is_final() {
        let (control, vcpu) = parked_vcpu();
        control.set_target(RunState::Stopping);
        assert!(!vcpu.join().unwrap());
        control.set_target(RunState::Running);
        assert_eq!(control.target(), RunState::Stopping);
    }
}

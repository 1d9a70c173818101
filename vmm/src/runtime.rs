//! A built VM at run time: starts the vCPUs and the API server, then runs the
//! event loop until the VM ends, and frees everything before returning.

use crate::api::{self, ApiServer};
use crate::config::VmConfig;
use crate::devices::legacy::GuestPanic;
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::signals::StopSignals;
use crate::snapshot::{SnapshotError, SnapshotSizes, SnapshotSource};
use crate::vm_exit::VmExit;
use crate::vstate::vcpu::{self, RunState, Vcpu, VcpuError, VcpuShared};
use crate::vstate::vm::Vm;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How long Pause waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_VM_EXIT: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_API: u64 = 3;

/// Errors of the run phase (before the guest's own exit).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Event loop or signal setup failed.
    #[error("cannot set up the event loop: {0}")]
    EventLoop(std::io::Error),
    /// A vCPU could not start.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The API server could not start.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// A thread could not be confined.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The API server's thread could not start.
    #[error("cannot start the API thread: {0}")]
    ApiThread(std::io::Error),
}

/// Starts the API server from a thread of its own, confined first, so that
/// ttrpc's threads inherit its filter.
fn start_api(path: &std::path::Path, handle: &Arc<VmHandle>) -> Result<ApiServer, RunError> {
    let (path, handle) = (path.to_owned(), handle.clone());
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            seccomp::confine(ThreadKind::Api)?;
            Ok(ApiServer::start(&path, handle)?)
        })
        .map_err(RunError::ApiThread)?
        .join()
        .unwrap_or_else(|_| {
            Err(RunError::ApiThread(std::io::Error::other(
                "the API thread panicked",
            )))
        })
}

/// What the API and the event loop share about the running VM.
pub(crate) struct VmHandle {
    /// vCPU threads, kicked on pause and stop, joined at the end.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// vCPU state, counters and timing.
    pub shared: VcpuShared,
    /// vCPU count.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Bytes of guest memory the balloon gave back to the host.
    pub returned_memory: Arc<AtomicU64>,
    /// When a requested shutdown turns forced.
    shutdown_deadline: Mutex<Option<Instant>>,
    /// Wakes the event loop for API requests.
    pub wake: EventFd,
    /// What a snapshot reads besides the vCPUs.
    snapshot: SnapshotSource,
    /// Held while a snapshot is taken: the VM stays paused meanwhile.
    snapshotting: Mutex<()>,
    /// A snapshot stopped the virtio devices: the VM may only be shut down.
    devices_stopped: AtomicBool,
}

impl VmHandle {
    fn kick_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.iter().for_each(Vcpu::kick);
    }

    /// Parks every vCPU outside the guest; false if they did not all park in time.
    pub fn pause(&self) -> bool {
        let control = &self.shared.control;
        if control.target() == RunState::Stopping {
            return false;
        }
        control.set_target(RunState::Paused);
        self.kick_all();
        let parked = control.wait_parked(usize::from(self.cpus), PAUSE_TIMEOUT);
        if !parked {
            // Do not leave a VM half paused behind an error.
            control.resume_if_paused();
        }
        parked
    }

    /// Lets the vCPUs run again (after a snapshot being taken); false if a
    /// snapshot stopped the devices, so that the guest cannot go on.
    pub fn resume(&self) -> bool {
        let _snapshot_done = self.snapshotting.lock().unwrap_or_else(|p| p.into_inner());
        if self.devices_stopped.load(Ordering::SeqCst) {
            return false;
        }
        self.shared.control.set_target(RunState::Running);
        true
    }

    /// Writes a snapshot of the paused VM into the snapshot directory.
    pub fn snapshot(&self) -> Result<SnapshotSizes, SnapshotError> {
        let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.control.target() != RunState::Paused {
            return Err(SnapshotError::NotPaused);
        }
        if self.snapshot.target.is_none() {
            return Err(SnapshotError::NoDirectory);
        }
        // From here on the devices stop, also if a later step fails.
        if !self.snapshot.transports.is_empty() {
            self.devices_stopped.store(true, Ordering::SeqCst);
        }
        self.snapshot
            .take(&self.shared.control, self.cpus, self.memory_mib)
    }

    /// Gives the guest `grace` to power off by itself, then stops the VM.
    pub fn request_shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut slot = self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(slot.map_or(deadline, |d| d.min(deadline)));
        drop(slot);
        // A paused guest cannot power itself off: let it run (unless a
        // snapshot stopped its devices: the deadline then ends it).
        self.resume();
        if let Err(err) = self.wake.write(1) {
            log::error!("cannot wake the event loop: {err}");
        }
    }

    /// The pending shutdown deadline, if any.
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        *self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn stop_and_join(&self) {
        self.shared.control.set_target(RunState::Stopping);
        self.kick_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            if thread.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }
}

/// A built VM, not yet running.
pub struct Vmm {
    config: VmConfig,
    vcpus: Vec<Vcpu>,
    shared: VcpuShared,
    panic: GuestPanic,
    returned_memory: Arc<AtomicU64>,
    snapshot: SnapshotSource,
    // Dropped in this order: the VM before the memory it maps.
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
}

impl Vmm {
    /// Wraps the parts the builder made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: VmConfig,
        vm: Arc<Vm>,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        shared: VcpuShared,
        panic: GuestPanic,
        returned_memory: Arc<AtomicU64>,
        snapshot: SnapshotSource,
    ) -> Self {
        Self {
            config,
            vcpus,
            shared,
            panic,
            returned_memory,
            snapshot,
            vm,
            mem,
        }
    }

    /// Runs the VM until it ends, stopping it on `signals`; every thread is
    /// joined and the API socket removed before this returns.
    pub fn run(self, mut signals: StopSignals) -> Result<VmExit, RunError> {
        // Bindings drop in reverse order: vCPUs, then the VM, then its memory.
        let Vmm {
            mem,
            vm,
            panic,
            shared,
            vcpus,
            config,
            returned_memory,
            snapshot,
        } = self;
        vcpu::register_kick_handler()?;
        let handle = Arc::new(VmHandle {
            threads: Mutex::new(Vec::new()),
            shared,
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            returned_memory,
            shutdown_deadline: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(RunError::EventLoop)?,
            snapshot,
            snapshotting: Mutex::new(()),
            devices_stopped: AtomicBool::new(false),
        });
        let api = match &config.api_sock {
            Some(path) => Some(start_api(path, &handle)?),
            None => None,
        };

        // The vCPUs confine themselves and wait, parked, until this thread
        // (which starts them) is confined too.
        handle.shared.control.set_target(RunState::Paused);
        let started = vcpus.into_iter().try_for_each(|vcpu| {
            let thread = vcpu.start()?;
            handle
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(thread);
            Ok::<(), VcpuError>(())
        });
        let outcome = match started {
            Ok(()) => seccomp::confine(ThreadKind::EventLoop)
                .map_err(RunError::from)
                .and_then(|()| {
                    handle.shared.control.resume_if_paused();
                    event_loop(&handle, &mut signals).map_err(RunError::EventLoop)
                }),
            Err(err) => Err(err.into()),
        };

        handle.stop_and_join();
        if let Some(api) = api {
            api.stop();
        }
        drop(vm);
        drop(mem);
        let exit = outcome?;
        Ok(match (exit, panic.message()) {
            (VmExit::PoweredOff, Some(line)) => VmExit::Panicked(line),
            (exit, _) => exit,
        })
    }
}

/// Waits for the event that ends the VM.
fn event_loop(handle: &VmHandle, signals: &mut StopSignals) -> std::io::Result<VmExit> {
    let epoll = Epoll::new()?;
    for (fd, token) in [
        (handle.shared.exits.event.as_raw_fd(), TOKEN_VM_EXIT),
        (signals.as_raw_fd(), TOKEN_SIGNAL),
        (handle.wake.as_raw_fd(), TOKEN_API),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let mut events = vec![EpollEvent::default(); 3];
    loop {
        let deadline = handle.shutdown_deadline();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(VmExit::Stopped);
        }
        let timeout_ms = deadline.map_or(-1, |d| {
            let left_ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
            left_ms.min(i32::MAX as u128) as i32
        });
        let ready = match epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        for event in &events[..ready] {
            match event.data() {
                TOKEN_VM_EXIT => {
                    let _ = handle.shared.exits.event.read();
                    if let Some(exit) = handle.shared.exits.take() {
                        return Ok(exit);
                    }
                }
                TOKEN_SIGNAL => {
                    if let Some(signal) = signals.read()? {
                        #[cfg(feature = "seccomp-trigger")]
                        if signal == libc::SIGUSR2 as u32 {
                            seccomp::break_the_filter();
                        }
                        log::info!("stopping the VM on signal {signal}");
                        return Ok(VmExit::Stopped);
                    }
                }
                _ => {
                    let _ = handle.wake.read();
                }
            }
        }
    }
}

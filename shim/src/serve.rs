//! The long-running shim: containerd's task API on the socket `start` chose,
//! served as task v2 (containerd 1.6 to 2.2) and as task v3 (containerd 2.3+,
//! which `start` answered with version 3). The two are the same messages
//! under two service names, so one [`TaskService`](crate::task::TaskService)
//! answers both.
//!
//! containerd-shim's own `run` registers task v2 only, so the serving half is
//! here: signals and the child reaper, the log FIFO, the event publisher, the
//! socket and the ttrpc server. `start` and `delete` stay with the crate.

use containerd_shim::monitor::monitor_notify_by_pid;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::Task;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::synchronous::util::write_address;
use containerd_shim::{logger, Config, Shim};
use log::{info, warn};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGINT, SIGPIPE, SIGTERM};
use signal_hook::iterator::Signals;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable with containerd's ttrpc address (for events).
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

/// Method-name prefix of task v2, as the generated service registers it.
const TASK_V2_PREFIX: &str = "/containerd.task.v2.Task/";

/// Method-name prefix of task v3: the same service in package `containerd.task.v3`.
const TASK_V3_PREFIX: &str = "/containerd.task.v3.Task/";

/// How often, and how far apart, a socket already bound is tried before it
/// is taken for a stale one.
const SOCKET_PROBES: u32 = 5;
const SOCKET_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// A method table of the ttrpc server.
type Methods = HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>>;

/// A failed start of the long-running shim.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The command line containerd gave is not the shim's.
    #[error("parse the command line: {0}")]
    Flags(#[source] containerd_shim::Error),
    /// A flag the server needs is empty.
    #[error("the {0} flag is empty")]
    EmptyFlag(&'static str),
    /// containerd did not say where its ttrpc API is.
    #[error("{TTRPC_ADDRESS_ENV}: {0}")]
    TtrpcAddress(#[source] std::env::VarError),
    /// The signal handlers could not be installed.
    #[error("install the signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The shim could not become its children's reaper.
    #[error("become a child subreaper: {0}")]
    Subreaper(#[source] Errno),
    /// The log FIFO containerd reads could not be opened.
    #[error("open the log: {0}")]
    Logger(#[source] containerd_shim::Error),
    /// The event publisher could not connect to containerd.
    #[error("connect the event publisher: {0}")]
    Publisher(#[source] containerd_shim::Error),
    /// The socket could not be bound, or a stale one removed.
    #[error("bind {path}: {source}")]
    Bind { path: String, source: io::Error },
    /// The socket's address could not be recorded for containerd.
    #[error("record the address: {0}")]
    Address(#[source] containerd_shim::Error),
    /// The ttrpc server did not start.
    #[error("start the ttrpc server: {0}")]
    Server(#[source] ttrpc::Error),
    /// A thread could not be spawned.
    #[error("spawn the signal thread: {0}")]
    Thread(#[source] io::Error),
}

/// Runs the shim's server with `args` (the command line after the program
/// name) until the shim is told to exit.
pub fn run<S: Shim>(runtime_id: &str, args: &[OsString]) -> Result<(), ServeError>
where
    S::T: Send + Sync + 'static,
{
    let flags = containerd_shim::parse(args).map_err(ServeError::Flags)?;
    for (name, value) in [("namespace", &flags.namespace), ("socket", &flags.socket)] {
        if value.is_empty() {
            return Err(ServeError::EmptyFlag(name));
        }
    }
    let ttrpc_address = std::env::var(TTRPC_ADDRESS_ENV).map_err(ServeError::TtrpcAddress)?;
    let signals = Signals::new([SIGTERM, SIGINT, SIGPIPE, SIGCHLD]).map_err(ServeError::Signals)?;
    nix::sys::prctl::set_child_subreaper(true).map_err(ServeError::Subreaper)?;
    let mut config = Config::default();
    let mut shim = S::new(runtime_id, &flags, &mut config);
    logger::init(
        flags.debug,
        &config.default_log_level,
        &flags.namespace,
        &flags.id,
    )
    .map_err(ServeError::Logger)?;
    let Some(listener) = bind(&flags.socket)? else {
        // The pod's shim: `start` answers its address (from the bundle),
        // and waits for this process's stdout to close: it ends before it
        // has a publisher connection or a task service to tear down.
        info!("a shim already serves {}", flags.socket);
        return write_address(&flags.socket).map_err(ServeError::Address);
    };
    let publisher = RemotePublisher::new(&ttrpc_address).map_err(ServeError::Publisher)?;
    let task: Arc<dyn Task + Send + Sync> = Arc::new(shim.create_task_service(publisher));
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(ServeError::Server)?
        .register_service(task_methods(task));
    server.start().map_err(ServeError::Server)?;
    release_stdout();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || handle_signals(signals))
        .map_err(ServeError::Thread)?;
    info!("serving task v2 and v3 on {}", flags.socket);
    shim.wait();
    info!("shutting down");
    server.shutdown();
    remove_socket(socket_path(&flags.socket));
    Ok(())
}

/// The task service's methods under task v2's names and again under v3's.
pub fn task_methods(task: Arc<dyn Task + Send + Sync>) -> Methods {
    let mut methods = create_task(Arc::clone(&task));
    let v3: Methods = create_task(task)
        .into_iter()
        .filter_map(|(name, handler)| {
            let method = name.strip_prefix(TASK_V2_PREFIX)?;
            Some((format!("{TASK_V3_PREFIX}{method}"), handler))
        })
        .collect();
    methods.extend(v3);
    methods
}

/// The file system path of a `unix://` socket address.
fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the shim's socket; `None` when a live shim already serves it (a
/// second server for the same pod exits). A socket nothing answers on is a
/// dead shim's and is replaced.
fn bind(address: &str) -> Result<Option<UnixListener>, ServeError> {
    let path = socket_path(address);
    let bind_error = |source| ServeError::Bind {
        path: path.to_string(),
        source,
    };
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => return Ok(Some(listener)),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {}
        Err(err) => return Err(bind_error(err)),
    }
    for _ in 0..SOCKET_PROBES {
        if is_served(address) {
            return Ok(None);
        }
        std::thread::sleep(SOCKET_PROBE_INTERVAL);
    }
    remove_socket(path);
    UnixListener::bind(path).map(Some).map_err(bind_error)
}

/// Whether a live shim accepts connections on `address` (`unix://PATH`).
pub(crate) fn is_served(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// Removes the socket at `path`, if a socket is there.
fn remove_socket(path: &str) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    if is_socket {
        if let Err(err) = std::fs::remove_file(path) {
            warn!("remove {path}: {err}");
        }
    }
}

/// Points stdout at stderr: `start` waits for the server on a pipe that was
/// this process's stdout until now.
fn release_stdout() {
    // SAFETY: dup2 on the process's own standard descriptors; no memory is
    // involved and both stay open.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        warn!("release stdout: {}", io::Error::last_os_error());
    }
}

/// Reaps every exited child and tells the exit monitor (the VMM's watcher
/// subscribes to it); other signals are only logged: the shim ends through
/// its task API.
pub(crate) fn handle_signals(mut signals: Signals) {
    for signal in signals.forever() {
        if signal == SIGCHLD {
            reap_children();
        } else {
            info!("received signal {signal}");
        }
    }
}

/// Waits for every child that has exited, without blocking, and tells the
/// exit monitor.
fn reap_children() {
    loop {
        let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) => (pid, status),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => {
                warn!("reap children: {err}");
                return;
            }
        };
        if let Err(err) = monitor_notify_by_pid(pid.as_raw(), code) {
            warn!("report the exit of {pid}: {err}");
        }
    }
}

#[cfg(test)]
mod tests;

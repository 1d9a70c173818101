//! The shim's life as containerd drives it: `start` (find or spawn the pod's
//! shim), the long-running server, and `delete` (clean up after a dead shim).

use crate::bootstrap::{self, StartInput};
use crate::events::EventQueue;
use crate::exit::timestamp;
use crate::options;
use crate::paths::SandboxDir;
use crate::sandbox;
use crate::serve;
use crate::share::ShareError;
use crate::spec;
use crate::task::TaskService;
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::synchronous::util::write_address;
use containerd_shim::{socket_address, spawn, Config, Error, ExitSignal, Flags, StartOpts};
use log::{info, warn};
use protocol::id::check_id;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// How long the shim waits for its last events to reach containerd before it exits.
const EVENT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit status containerd records for a task whose shim died (SIGKILL).
const DEAD_SHIM_STATUS: u32 = 128 + 9;

/// The runv shim.
pub struct RunvShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
    events: OnceLock<EventQueue>,
}

/// The pod a task belongs to, from the bundle in `dir` (containerd runs `start`
/// and `delete` in the bundle directory).
fn pod_of(task_id: &str, bundle: &Path) -> String {
    match spec::read_spec(bundle) {
        Ok(spec) => spec::sandbox_id(task_id, &spec::annotations(&spec)),
        Err(_) => task_id.to_string(),
    }
}

impl containerd_shim::Shim for RunvShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            events: OnceLock::new(),
        }
    }

    /// Answers containerd on stdout: the crate prints the string returned,
    /// so the `BootstrapResult` of 2.3+ is written here and nothing returned.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let input = StartInput::parse(&bootstrap::read_stdin(), &opts.id, &opts.namespace);
        let config_path = input
            .config_path()
            .map_err(|err| Error::InvalidArgument(err.to_string()))?;
        let config_path = config_path.map(|path| path.to_string_lossy().into_owned());
        let vars: Vec<(&str, &str)> = config_path
            .iter()
            .map(|path| (options::START_CONFIG_PATH_ENV, path.as_str()))
            .collect();
        // One shim per pod: every container of the pod gets the same socket.
        // As runc's shim does, a start that finds the pod's shim serving
        // there answers its address and spawns nothing; otherwise the new
        // server checks again (two starts may race).
        let pod = pod_of(&opts.id, Path::new("."));
        let served = socket_address(&opts.address, &opts.namespace, &pod);
        // (No log here: containerd reads this process's output as its answer.)
        let address = if serve::is_served(&served) {
            served
        } else {
            spawn(opts, &pod, vars)?.1
        };
        write_address(&address)?;
        if let StartInput::Legacy(_) = input {
            return Ok(address);
        }
        let answer = input
            .answer(&address)
            .map_err(|err| Error::Other(err.to_string()))?;
        io::stdout()
            .write_all(&answer)
            .and_then(|()| io::stdout().flush())
            .map_err(|err| Error::Other(format!("start: write the BootstrapResult: {err}")))?;
        Ok(String::new())
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let pod = pod_of(&self.id, Path::new("."));
        check_id("sandbox id", &pod).map_err(|err| Error::InvalidArgument(err.to_string()))?;
        let dir = SandboxDir::new(&pod);
        if served_by_live_shim(&dir) {
            // Only this container's part of a pod whose shim still runs.
            info!(
                "delete {}: pod {pod} lives on; removing the container's share",
                self.id
            );
            if check_id("container id", &self.id).is_ok() {
                if let Err(err) = remove_in_pod_namespace(&dir, &self.id) {
                    warn!("delete {}: {err}", self.id);
                }
            }
        } else {
            info!("delete {}: cleaning pod {pod} after its shim", self.id);
            sandbox::cleanup(&dir);
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: DEAD_SHIM_STATUS,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        if let Some(events) = self.events.get() {
            events.flush(EVENT_FLUSH_TIMEOUT);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let events = EventQueue::start(publisher, self.namespace.clone());
        let _ = self.events.set(events.clone());
        TaskService::new(&self.namespace, events, Arc::clone(&self.exit))
    }
}

/// A failed removal of a container's share from a live pod's mount namespace.
#[derive(Debug, thiserror::Error)]
enum PodShareError {
    /// The VMM's pid file could not be read.
    #[error("{}: {source}", path.display())]
    ReadVmmPid { path: PathBuf, source: io::Error },
    /// The VMM's mount namespace could not be opened.
    #[error("{path}: {source}")]
    OpenNamespace { path: String, source: io::Error },
    /// The removal thread could not enter it.
    #[error("enter the pod's mount namespace: {0}")]
    EnterNamespace(#[source] nix::Error),
    /// The removal itself failed.
    #[error("{0}")]
    Remove(#[source] ShareError),
    /// The removal thread panicked.
    #[error("the share removal thread panicked")]
    Panicked,
}

/// Removes container `cid`'s part of the share from inside the pod's mount
/// namespace (the live shim's, entered through its VMM), on a thread of its own
/// so that this process stays where it is.
fn remove_in_pod_namespace(dir: &SandboxDir, cid: &str) -> Result<(), PodShareError> {
    let path = dir.vmm_pid_file();
    let pid = std::fs::read_to_string(&path)
        .map_err(|source| PodShareError::ReadVmmPid { path, source })?;
    let ns_path = format!("/proc/{}/ns/mnt", pid.trim());
    let ns = std::fs::File::open(&ns_path).map_err(|source| PodShareError::OpenNamespace {
        path: ns_path,
        source,
    })?;
    let (dir, cid) = (dir.clone(), cid.to_string());
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // A thread shares its file-system context with the process until
                // it unshares it; only then may it change mount namespace.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .and_then(|()| nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS))
                    .map_err(PodShareError::EnterNamespace)?;
                crate::share::remove_container_of(&dir, &cid).map_err(PodShareError::Remove)
            })
            .join()
            .map_err(|_| PodShareError::Panicked)?
    })
}

/// Whether the pod's VMM still has a live runv shim as its parent.
fn served_by_live_shim(dir: &SandboxDir) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.vmm_pid_file()) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) else {
        return false;
    };
    // Fields after the command name: state, ppid, ...
    let Some(ppid) = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
    else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{ppid}/comm"))
        .map(|comm| comm.trim_end().starts_with("containerd-shim"))
        .unwrap_or(false)
}

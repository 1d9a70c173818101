//! One container, made and driven by youki's libcontainer: create, start, exec,
//! signal, remove. Holds the container's processes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use libcontainer::container::{Container as Runtime, ContainerStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{Process as OciProcess, Spec};
use protocol::agent::Stdio;

use crate::cgroup::Cgroup;
use crate::console::ConsoleSocket;
use crate::error::{AgentError, Result};
use crate::process::Process;
use crate::reaper::Reaper;
use crate::spawn::{spawn, SpawnRequest};

/// How long a forced remove waits for SIGKILLed processes to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent keeps container state.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// libcontainer's state root (one directory per container).
    pub runtime_root: PathBuf,
    /// The bundles the agent writes (config.json, exec process files).
    pub bundles: PathBuf,
    /// Console sockets of processes with a terminal.
    pub consoles: PathBuf,
}

impl StatePaths {
    /// The layout under `state_dir`, created if missing.
    pub fn create(state_dir: &Path) -> Result<Self> {
        let paths = Self {
            runtime_root: state_dir.join("runtime"),
            bundles: state_dir.join("bundles"),
            consoles: state_dir.join("consoles"),
        };
        for dir in [&paths.runtime_root, &paths.bundles, &paths.consoles] {
            fs::create_dir_all(dir).map_err(AgentError::io(format!("create {}", dir.display())))?;
        }
        Ok(paths)
    }
}

/// A container and its processes.
pub struct Container {
    /// The container's id.
    pub id: String,
    runtime: Mutex<Runtime>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    bundle: PathBuf,
    paths: StatePaths,
    reaper: Arc<Reaper>,
    cgroup: OnceLock<Cgroup>,
}

impl Container {
    /// Creates the container from `spec` (root.path already absolute); its init
    /// process waits for [`Container::start`].
    pub fn create(
        id: &str,
        spec: &Spec,
        stdio: &Stdio,
        paths: &StatePaths,
        reaper: &Arc<Reaper>,
    ) -> Result<Arc<Self>> {
        let bundle = paths.bundles.join(id);
        let mut spec = spec.clone();
        if let Some(mut process) = spec.process().clone() {
            process.set_terminal(Some(stdio.terminal));
            spec.set_process(Some(process));
        }
        write_bundle(&bundle, &spec)?;
        let created = Self::create_in(id, &bundle, stdio, paths, reaper);
        if created.is_err() {
            let _ = fs::remove_dir_all(&bundle);
        }
        created
    }

    fn create_in(
        id: &str,
        bundle: &Path,
        stdio: &Stdio,
        paths: &StatePaths,
        reaper: &Arc<Reaper>,
    ) -> Result<Arc<Self>> {
        let (init, child) = Process::new("", stdio)?;
        let console = console_socket(stdio, paths)?;
        let request = SpawnRequest::Init {
            root: paths.runtime_root.clone(),
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            console: console.as_ref().map(|c| c.path().to_path_buf()),
        };
        let spawned = {
            let _guard = reaper.spawn_guard();
            let spawned = spawn(&request, child);
            reaper.child_spawned();
            spawned
        };
        let runtime = match spawned.and_then(|_| load(&paths.runtime_root, id)) {
            Ok(runtime) => runtime,
            Err(err) => {
                // The helper may have left a half-made container: its state
                // would block the id, its processes would run untracked.
                if let Ok(mut runtime) = load(&paths.runtime_root, id) {
                    let _guard = reaper.spawn_guard();
                    let _ = runtime.delete(true);
                }
                return Err(err);
            }
        };
        let pid = runtime
            .pid()
            .ok_or_else(|| AgentError::FailedPrecondition(format!("container {id} has no pid")))?;
        init.set_pid(pid.as_raw());
        reaper.watch(pid.as_raw(), Arc::clone(&init));
        let mut runtime = runtime;
        if let Some(console) = console {
            if let Err(err) = take_console(&init, &console) {
                // Undo the half-made container rather than leave it untracked.
                let _guard = reaper.spawn_guard();
                let _ = runtime.delete(true);
                return Err(err);
            }
        }
        Ok(Arc::new(Self {
            id: id.to_string(),
            runtime: Mutex::new(runtime),
            init,
            execs: Mutex::new(HashMap::new()),
            bundle: bundle.to_path_buf(),
            paths: paths.clone(),
            reaper: Arc::clone(reaper),
            cgroup: OnceLock::new(),
        }))
    }

    /// Runs the init process; returns its pid.
    pub fn start(&self) -> Result<u32> {
        let mut runtime = self.lock_runtime();
        refresh(&mut runtime)?;
        if runtime.status() != ContainerStatus::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {}, not created",
                self.id,
                runtime.status()
            )));
        }
        let _guard = self.reaper.spawn_guard();
        runtime
            .start()
            .map_err(AgentError::runtime(format!("start container {}", self.id)))?;
        Ok(self.init.pid())
    }

    /// Starts `process` in the running container as `exec_id`; returns its pid.
    pub fn exec(&self, exec_id: &str, process: &OciProcess, stdio: &Stdio) -> Result<u32> {
        let mut execs = self.lock_execs();
        // An exec id names one live process: once its process has exited (and
        // containerd deleted it), the id may be used again, as with runc.
        let live = execs
            .get(exec_id)
            .is_some_and(|old| old.exit_status().is_none());
        if live {
            return Err(AgentError::AlreadyExists {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            });
        }
        {
            let mut runtime = self.lock_runtime();
            refresh(&mut runtime)?;
            if runtime.status() != ContainerStatus::Running {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {} is {}, not running",
                    self.id,
                    runtime.status()
                )));
            }
        }
        let process_file = self.bundle.join(format!("exec-{exec_id}.json"));
        let mut process = process.clone();
        process.set_terminal(Some(stdio.terminal));
        let json = serde_json::to_vec(&process)
            .map_err(|e| AgentError::InvalidArgument(format!("process: {e}")))?;
        fs::write(&process_file, json)
            .map_err(AgentError::io(format!("write {}", process_file.display())))?;

        let (exec, child) = Process::new(exec_id, stdio)?;
        let console = console_socket(stdio, &self.paths)?;
        let request = SpawnRequest::Exec {
            root: self.paths.runtime_root.clone(),
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            bundle: self.bundle.clone(),
            process: process_file.clone(),
            console: console.as_ref().map(|c| c.path().to_path_buf()),
        };
        let built = {
            let _guard = self.reaper.spawn_guard();
            let built = spawn(&request, child);
            self.reaper.child_spawned();
            built
        };
        let _ = fs::remove_file(&process_file);
        let pid = built?;
        exec.set_pid(pid);
        self.reaper.watch(pid, Arc::clone(&exec));
        if let Some(console) = console {
            if let Err(err) = take_console(&exec, &console) {
                // The process is watched by the reaper; just end it.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(err);
            }
        }
        execs.insert(exec_id.to_string(), exec);
        Ok(pid as u32)
    }

    /// The process `exec_id` (empty = init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.lock_execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::no_exec(&self.id, exec_id))
    }

    /// Sends `signal` to process `exec_id`, or to every process with `all`.
    pub fn signal(&self, exec_id: &str, signal: Signal, all: bool) -> Result<()> {
        if all {
            let mut runtime = self.lock_runtime();
            let _guard = self.reaper.spawn_guard();
            return runtime
                .kill(signal, true)
                .map_err(AgentError::runtime(format!("signal container {}", self.id)));
        }
        let process = self.process(exec_id)?;
        if process.exit_status().is_some() {
            return Err(AgentError::NotFound {
                kind: "running process",
                id: format!("{}/{exec_id}", self.id),
            });
        }
        kill(Pid::from_raw(process.pid() as i32), signal)
            .map_err(|e| AgentError::io(format!("signal {}/{exec_id}", self.id))(e.into()))
    }

    /// Removes the container: refuses while a process runs unless `force`, which
    /// kills them all first. `processes_gone` runs once every process was
    /// reaped, before the cgroup and the state are deleted.
    pub fn remove(&self, force: bool, processes_gone: impl FnOnce()) -> Result<()> {
        let processes: Vec<Arc<Process>> = std::iter::once(Arc::clone(&self.init))
            .chain(self.lock_execs().values().cloned())
            .collect();
        let mut runtime = self.lock_runtime();
        refresh(&mut runtime)?;
        let running = matches!(
            runtime.status(),
            ContainerStatus::Running | ContainerStatus::Paused
        );
        if running && !force {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {}; stop it or remove with force",
                self.id,
                runtime.status()
            )));
        }
        if running || runtime.status() == ContainerStatus::Created {
            let _guard = self.reaper.spawn_guard();
            runtime
                .kill(Signal::SIGKILL, true)
                .map_err(AgentError::runtime(format!("kill container {}", self.id)))?;
        }
        for process in &processes {
            if !process.wait_exit_timeout(KILL_TIMEOUT) {
                return Err(AgentError::FailedPrecondition(format!(
                    "process {}/{} survived SIGKILL for {KILL_TIMEOUT:?}",
                    self.id, process.exec_id
                )));
            }
        }
        processes_gone();
        {
            let _guard = self.reaper.spawn_guard();
            runtime
                .delete(true)
                .map_err(AgentError::runtime(format!("delete container {}", self.id)))?;
        }
        let _ = fs::remove_dir_all(&self.bundle);
        Ok(())
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Result<&Cgroup> {
        if let Some(cgroup) = self.cgroup.get() {
            return Ok(cgroup);
        }
        let config = self
            .lock_runtime()
            .spec()
            .map_err(AgentError::runtime(format!(
                "read the config of {}",
                self.id
            )))?;
        let cgroup = Cgroup::open(&self.id, &config.cgroup_path)?;
        Ok(self.cgroup.get_or_init(|| cgroup))
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        let mut runtime = self.lock_runtime();
        refresh(&mut runtime)?;
        runtime
            .pause()
            .map_err(AgentError::runtime(format!("pause container {}", self.id)))
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<()> {
        let mut runtime = self.lock_runtime();
        refresh(&mut runtime)?;
        runtime
            .resume()
            .map_err(AgentError::runtime(format!("resume container {}", self.id)))
    }

    fn lock_runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Gives `process` the pty master waiting on `console`.
fn take_console(process: &Process, console: &ConsoleSocket) -> Result<()> {
    let master = console
        .receive_master()
        .map_err(AgentError::io("receive the pty master"))?;
    process.set_console(master)
}

/// A console socket when the process gets a terminal.
fn console_socket(stdio: &Stdio, paths: &StatePaths) -> Result<Option<ConsoleSocket>> {
    if !stdio.terminal {
        return Ok(None);
    }
    ConsoleSocket::bind(&paths.consoles)
        .map(Some)
        .map_err(AgentError::io("listen on a console socket"))
}

/// The libcontainer state of container `id`, which a spawn helper made.
fn load(root: &Path, id: &str) -> Result<Runtime> {
    Runtime::load(root.join(id)).map_err(AgentError::runtime(format!("load container {id}")))
}

fn refresh(runtime: &mut Runtime) -> Result<()> {
    runtime
        .refresh_status()
        .map_err(AgentError::runtime("read container status"))
}

fn write_bundle(bundle: &Path, spec: &Spec) -> Result<()> {
    fs::create_dir_all(bundle).map_err(AgentError::io(format!("create {}", bundle.display())))?;
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| AgentError::InvalidArgument(format!("spec: {e}")))?;
    let config = bundle.join("config.json");
    fs::write(&config, json).map_err(AgentError::io(format!("write {}", config.display())))
}

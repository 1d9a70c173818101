//! The sandbox's state: what CreateSandbox set up (hostname, DNS, hosts,
//! sandbox-wide mounts, the shared dir), its containers by id, and the checks
//! on requests that name them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount as OciMount, MountBuilder,
    Spec,
};
use protocol::agent::{CreateContainerRequest, CreateSandboxRequest};
use protocol::id::check_id;

use crate::container::{Container, StatePaths};
use crate::error::{AgentError, Result};
use crate::mount::{self, MountPlan};
use crate::oom::OomMonitor;
use crate::pid_namespace::PodPidNamespace;
use crate::reaper::Reaper;
use crate::sysctl::{self, SysctlRoot};

/// Longest hostname the kernel takes (HOST_NAME_MAX).
const MAX_HOSTNAME_LEN: usize = 64;
/// Where the sandbox's hosts, resolv.conf and hostname files live in the guest.
pub const GUEST_SANDBOX_DIR: &str = "/run/runv/sandbox";

/// Where CreateSandbox's guest-wide settings take effect. As the guest's PID 1
/// the agent owns the guest: it sets the hostname and mounts on the given
/// targets. In host mode (tests) the host is not the sandbox's: the files and
/// the mounts go under the state dir, and the hostname is only written to the
/// hostname file, never set.
#[derive(Debug, Clone)]
pub struct SandboxHome {
    /// Holds the hosts, resolv.conf and hostname files containers get.
    pub files: PathBuf,
    /// Sandbox mount targets are taken relative to this (`/` in the guest).
    pub mount_root: PathBuf,
    /// Whether CreateSandbox sets the kernel's hostname (sethostname).
    pub set_hostname: bool,
    /// Where the pod's sysctls go (`/proc/sys` in the guest).
    pub sysctls: SysctlRoot,
}

impl SandboxHome {
    /// The guest, as its PID 1.
    pub fn guest() -> Self {
        Self {
            files: PathBuf::from(GUEST_SANDBOX_DIR),
            mount_root: PathBuf::from("/"),
            set_hostname: true,
            sysctls: SysctlRoot {
                dir: PathBuf::from("/proc/sys"),
                create: false,
            },
        }
    }

    /// Host mode: `<state_dir>/sandbox`, mounts under `<state_dir>/sandbox/mounts`,
    /// the pod's sysctls as files under `<state_dir>/sandbox/sysctl`.
    pub fn host(state_dir: &Path) -> Self {
        let files = state_dir.join("sandbox");
        Self {
            mount_root: files.join("mounts"),
            sysctls: SysctlRoot {
                dir: files.join("sysctl"),
                create: true,
            },
            files,
            set_hostname: false,
        }
    }
}

/// What CreateSandbox set up.
#[derive(Debug, Default)]
struct Setup {
    /// Where every rootfs and bind source must lie; None = anywhere.
    shared_dir: Option<PathBuf>,
    /// Files every container gets unless its spec mounts something there:
    /// (destination in the container, sandbox file).
    etc_files: Vec<(&'static str, PathBuf)>,
    /// The sandbox mounts' targets, in the order they were mounted.
    mounts: Vec<PathBuf>,
}

/// The sandbox: its setup and every container of the pod.
pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// None until CreateSandbox succeeded.
    setup: Mutex<Option<Setup>>,
    /// Ids being created: taken, but not yet in `containers`.
    creating: Mutex<HashSet<String>>,
    /// The PID namespace the pod's containers share, once one asked for it.
    pod_pid_namespace: Mutex<Option<PodPidNamespace>>,
    paths: StatePaths,
    home: SandboxHome,
    reaper: Arc<Reaper>,
    /// Watches the containers' cgroups for OOM kills.
    pub oom: Arc<OomMonitor>,
}

impl Sandbox {
    /// An empty sandbox keeping container state under `paths` and its own
    /// settings in `home`, its containers' OOM kills watched by `oom`.
    pub fn new(
        paths: StatePaths,
        home: SandboxHome,
        reaper: Arc<Reaper>,
        oom: Arc<OomMonitor>,
    ) -> Self {
        Self {
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            pod_pid_namespace: Mutex::new(None),
            setup: Mutex::new(None),
            paths,
            home,
            reaper,
            oom,
        }
    }

    /// Sets up the sandbox once: checks the whole request, then writes the
    /// hosts, resolv.conf and hostname files, sets the hostname (guest only)
    /// and performs the sandbox mounts. A second call, until DestroySandbox,
    /// is `ALREADY_EXISTS`; a failed one changes nothing that stays mounted
    /// and may be retried.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        let mut setup = self.lock_setup();
        if setup.is_some() {
            return Err(AgentError::AlreadyExists {
                kind: "sandbox",
                id: req.sandbox_id.clone(),
            });
        }
        if !req.sandbox_id.is_empty() {
            check_id("sandbox_id", &req.sandbox_id)?;
        }
        let shared_dir = match req.shared_dir.as_str() {
            "" => None,
            dir => Some(
                Path::new(dir)
                    .canonicalize()
                    .map_err(|e| AgentError::InvalidArgument(format!("shared_dir {dir}: {e}")))?,
            ),
        };
        if !req.hostname.is_empty() {
            check_hostname(&req.hostname)?;
        }
        let files = etc_files(req)?;
        let sysctls = sysctl::plan(&self.home.sysctls, &req.sysctls)?;
        let plans = req
            .mounts
            .iter()
            .map(|m| MountPlan::new(m, &self.home.mount_root))
            .collect::<Result<Vec<_>>>()?;

        let mut etc = Vec::new();
        if !files.is_empty() {
            let dir = &self.home.files;
            fs::create_dir_all(dir).map_err(AgentError::io(format!("create {}", dir.display())))?;
        }
        for (destination, name, content) in files {
            let path = self.home.files.join(name);
            write_file(&path, &content)?;
            etc.push((destination, path));
        }
        sysctl::write_all(&self.home.sysctls, &sysctls)?;
        if self.home.set_hostname && !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|e| {
                AgentError::io(format!("set the hostname to {}", req.hostname))(e.into())
            })?;
        }
        let mounts = mount::mount_all(&plans)?;
        *setup = Some(Setup {
            shared_dir,
            etc_files: etc,
            mounts,
        });
        Ok(())
    }

    /// Removes every container, ends the pod's shared PID namespace, then
    /// undoes the sandbox mounts; CreateSandbox may be called again
    /// afterwards. Reports the first failure.
    pub fn destroy(&self) -> Result<()> {
        let removed = self.remove_all();
        self.lock_pod_pid_namespace().take();
        if let Some(setup) = self.lock_setup().take() {
            mount::unmount_all(&setup.mounts);
        }
        removed
    }

    /// Creates a container from the request.
    pub fn create_container(&self, req: &CreateContainerRequest) -> Result<()> {
        check_id("container_id", &req.container_id)?;
        let mut spec = load_spec(req)?;
        {
            let setup = self.lock_setup();
            if let Some(shared) = setup.as_ref().and_then(|s| s.shared_dir.as_ref()) {
                check_confined(&spec, shared)?;
            }
            if let Some(setup) = setup.as_ref() {
                add_etc_mounts(&mut spec, &setup.etc_files)?;
            }
        }
        // Reserve the id, so that a duplicate cannot race; the map stays free for
        // calls on other containers while this one is made.
        {
            let containers = self.lock();
            let mut creating = self.lock_creating();
            if containers.contains_key(&req.container_id)
                || !creating.insert(req.container_id.clone())
            {
                return Err(AgentError::AlreadyExists {
                    kind: "container",
                    id: req.container_id.clone(),
                });
            }
        }
        let stdio = req.stdio.clone().unwrap_or_default();
        // Only a create that passed every check starts the pod's namespace.
        let joined = if req.sandbox_pidns {
            self.pod_pid_namespace_path()
                .and_then(|path| join_pid_namespace(&mut spec, path))
        } else {
            Ok(())
        };
        let created = joined.and_then(|()| {
            Container::create(&req.container_id, &spec, &stdio, &self.paths, &self.reaper)
        });
        if let Ok(container) = &created {
            // While the id is still reserved: a remove cannot come first.
            self.watch_oom(container);
        }
        let mut containers = self.lock();
        self.lock_creating().remove(&req.container_id);
        containers.insert(req.container_id.clone(), created?);
        Ok(())
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::no_container(id))
    }

    /// Removes the container `id` (see [`Container::remove`]); its OOM watch
    /// ends once its processes are gone, before its cgroup is.
    pub fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let container = self.container(id)?;
        container.remove(force, || self.oom.unwatch(id))?;
        self.lock().remove(id);
        Ok(())
    }

    /// Has the OOM monitor watch the container's cgroup. A container without
    /// one still runs; it only gets no OOM events.
    fn watch_oom(&self, container: &Container) {
        let watched = container
            .cgroup()
            .and_then(|cgroup| self.oom.watch(&container.id, cgroup.oom_source()));
        if let Err(err) = watched {
            // One line per container the tenant creates.
            protocol::log_limited!(
                log::Level::Warn,
                "no OOM events for container {}: {err}",
                container.id
            );
        }
    }

    /// Force-removes every container; reports the first failure.
    pub fn remove_all(&self) -> Result<()> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let mut first_error = None;
        for id in ids {
            if let Err(err) = self.remove_container(&id, true) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The pod's shared PID namespace, started on first use.
    fn pod_pid_namespace_path(&self) -> Result<PathBuf> {
        let mut slot = self.lock_pod_pid_namespace();
        let namespace = match &mut *slot {
            Some(namespace) => namespace,
            empty => empty.insert(PodPidNamespace::start(&self.reaper)?),
        };
        namespace.path()
    }

    fn lock_pod_pid_namespace(&self) -> MutexGuard<'_, Option<PodPidNamespace>> {
        self.pod_pid_namespace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_setup(&self) -> MutexGuard<'_, Option<Setup>> {
        self.setup.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_creating(&self) -> MutexGuard<'_, HashSet<String>> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a hostname: 1-64 characters of `[A-Za-z0-9.-]`, not starting with
/// `-` or `.`.
fn check_hostname(hostname: &str) -> Result<()> {
    let valid = hostname.len() <= MAX_HOSTNAME_LEN
        && !hostname.starts_with(['-', '.'])
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "hostname {hostname:?} must be 1-{MAX_HOSTNAME_LEN} characters of [A-Za-z0-9.-]"
        )))
    }
}

/// The files the request asks for: (container destination, file name,
/// content). A field left empty gives no file, and no mount.
fn etc_files(req: &CreateSandboxRequest) -> Result<Vec<(&'static str, &'static str, String)>> {
    let mut files = Vec::new();
    if !req.hosts.is_empty() {
        if req.hosts.contains('\0') {
            return Err(AgentError::InvalidArgument(
                "hosts contains a NUL byte".into(),
            ));
        }
        let mut hosts = req.hosts.clone();
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        files.push(("/etc/hosts", "hosts", hosts));
    }
    if !req.dns.is_empty() {
        if let Some(line) = req.dns.iter().find(|l| l.contains(['\n', '\0'])) {
            return Err(AgentError::InvalidArgument(format!(
                "dns line {line:?} holds a newline or NUL byte"
            )));
        }
        files.push(("/etc/resolv.conf", "resolv.conf", req.dns.join("\n") + "\n"));
    }
    if !req.hostname.is_empty() {
        files.push(("/etc/hostname", "hostname", format!("{}\n", req.hostname)));
    }
    Ok(files)
}

/// Writes `content` to `path`, mode 0644 whatever the umask.
fn write_file(path: &Path, content: &str) -> Result<()> {
    let step = || format!("write {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(AgentError::io(step()))?;
    file.write_all(content.as_bytes())
        .map_err(AgentError::io(step()))
}

/// Adds a read-only bind of each sandbox file whose destination the spec does
/// not mount itself (CRI usually does, with the shim rewriting the sources).
fn add_etc_mounts(spec: &mut Spec, files: &[(&'static str, PathBuf)]) -> Result<()> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (destination, source) in files {
        if mounts
            .iter()
            .any(|m| m.destination() == Path::new(destination))
        {
            continue;
        }
        let mount: OciMount = MountBuilder::default()
            .destination(*destination)
            .typ("bind")
            .source(source)
            .options(
                ["rbind", "ro", "nosuid", "nodev", "noexec"]
                    .map(String::from)
                    .to_vec(),
            )
            .build()
            .map_err(|e| AgentError::InvalidArgument(format!("mount of {destination}: {e}")))?;
        mounts.push(mount);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Checks that the rootfs and every bind-mount source resolve under `shared`.
fn check_confined(spec: &Spec, shared: &Path) -> Result<()> {
    let escapes = |what, path: &Path| AgentError::Escapes {
        what,
        path: path.display().to_string(),
        shared: shared.display().to_string(),
    };
    let inside = |path: &Path| path.canonicalize().is_ok_and(|p| p.starts_with(shared));
    if let Some(root) = spec.root() {
        if !inside(root.path()) {
            return Err(escapes("rootfs", root.path()));
        }
    }
    for mount in spec.mounts().iter().flatten() {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(source)) = (bind, mount.source()) {
            if !inside(source) {
                return Err(escapes("bind mount source", source));
            }
        }
    }
    Ok(())
}

/// The request's spec with an absolute, existing root path.
fn load_spec(req: &CreateContainerRequest) -> Result<Spec> {
    let bundle = Path::new(&req.bundle);
    let mut spec: Spec = if req.oci_spec.is_empty() {
        if req.bundle.is_empty() {
            return Err(AgentError::InvalidArgument(
                "neither oci_spec nor bundle is given".into(),
            ));
        }
        let config = bundle.join("config.json");
        let json = std::fs::read(&config).map_err(|e| {
            AgentError::InvalidArgument(format!("cannot read {}: {e}", config.display()))
        })?;
        parse_spec(&json)?
    } else {
        parse_spec(req.oci_spec.as_bytes())?
    };
    let root_path = if req.rootfs.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| AgentError::InvalidArgument("the spec has no root".into()))?;
        bundle.join(root.path())
    } else {
        PathBuf::from(&req.rootfs)
    };
    if !root_path.is_absolute() || !root_path.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {} is not an existing absolute directory",
            root_path.display()
        )));
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(root_path);
    spec.set_root(Some(root));
    if spec.process().is_none() {
        return Err(AgentError::InvalidArgument(
            "the spec has no process".into(),
        ));
    }
    normalize_rootfs_propagation(&mut spec)?;
    Ok(spec)
}

/// Puts the container's processes into the PID namespace at `path`: its spec's
/// pid namespace entry gets the path (one is added if it has none).
fn join_pid_namespace(spec: &mut Spec, path: PathBuf) -> Result<()> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Pid)
        .collect();
    let joined = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Pid)
        .path(path)
        .build()
        .map_err(|e| AgentError::InvalidArgument(format!("pid namespace entry: {e}")))?;
    namespaces.push(joined);
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(())
}

/// Gives `linux.rootfsPropagation` the spelling libcontainer 0.7 knows. CRI
/// asks for "rslave" (a volume propagated host to container) and "rshared"
/// (bidirectional), as runc accepts; libcontainer knows only the plain names and
/// refuses the others, though it always applies them recursively.
fn normalize_rootfs_propagation(spec: &mut Spec) -> Result<()> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(());
    };
    let Some(asked) = linux.rootfs_propagation().clone() else {
        return Ok(());
    };
    let plain = match asked.as_str() {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        other => {
            return Err(AgentError::InvalidArgument(format!(
                "linux.rootfsPropagation {other:?} is none of shared, slave, private, \
                 unbindable (or their r-forms)"
            )))
        }
    };
    linux.set_rootfs_propagation(Some(plain.to_string()));
    spec.set_linux(Some(linux));
    Ok(())
}

fn parse_spec(json: &[u8]) -> Result<Spec> {
    serde_json::from_slice(json).map_err(|e| AgentError::InvalidArgument(format!("OCI spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        for good in ["pod", "pod-1.example.test", &"h".repeat(MAX_HOSTNAME_LEN)] {
            assert!(check_hostname(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "a/b",
            "a b",
            "-pod",
            ".pod",
            "pod_1",
            &"h".repeat(MAX_HOSTNAME_LEN + 1),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sandbox_files_are_made_from_the_request() {
        let req = CreateSandboxRequest {
            hostname: "pod".into(),
            dns: vec!["nameserver 192.0.2.1".into(), "options ndots:5".into()],
            hosts: "127.0.0.1 localhost".into(),
            ..Default::default()
        };
        let files = etc_files(&req).expect("files");
        assert_eq!(
            files,
            [
                ("/etc/hosts", "hosts", "127.0.0.1 localhost\n".to_string()),
                (
                    "/etc/resolv.conf",
                    "resolv.conf",
                    "nameserver 192.0.2.1\noptions ndots:5\n".to_string()
                ),
                ("/etc/hostname", "hostname", "pod\n".to_string()),
            ]
        );
        assert!(etc_files(&CreateSandboxRequest::new())
            .expect("none")
            .is_empty());
    }

    #[test]
    fn a_spec_mount_on_a_sandbox_file_wins() {
        let mut spec: Spec = serde_json::from_str(
            r#"{"ociVersion": "1.0.2", "mounts": [
                {"destination": "/etc/hosts/", "type": "bind", "source": "/own/hosts"}
            ]}"#,
        )
        .expect("spec");
        let files = [
            ("/etc/hosts", PathBuf::from("/sandbox/hosts")),
            ("/etc/resolv.conf", PathBuf::from("/sandbox/resolv.conf")),
        ];
        add_etc_mounts(&mut spec, &files).expect("add mounts");
        let mounts = spec.mounts().clone().unwrap_or_default();
        let sources: Vec<_> = mounts
            .iter()
            .map(|m| (m.destination().clone(), m.source().clone()))
            .collect();
        assert_eq!(
            sources,
            [
                (
                    PathBuf::from("/etc/hosts/"),
                    Some(PathBuf::from("/own/hosts"))
                ),
                (
                    PathBuf::from("/etc/resolv.conf"),
                    Some(PathBuf::from("/sandbox/resolv.conf"))
                ),
            ]
        );
        let options = mounts[1].options().clone().unwrap_or_default();
        assert!(options.iter().any(|o| o == "ro"), "{options:?}");
    }

    #[test]
    fn rootfs_propagation_gets_libcontainers_spelling() {
        let with = |propagation: Option<&str>| {
            let mut spec = Spec::default();
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_rootfs_propagation(propagation.map(String::from));
            spec.set_linux(Some(linux));
            spec
        };
        for (asked, plain) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("slave", "slave"),
            ("shared", "shared"),
        ] {
            let mut spec = with(Some(asked));
            normalize_rootfs_propagation(&mut spec).unwrap();
            let linux = spec.linux().as_ref().unwrap();
            assert_eq!(
                linux.rootfs_propagation().as_deref(),
                Some(plain),
                "{asked}"
            );
        }
        let mut spec = with(None);
        normalize_rootfs_propagation(&mut spec).unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation(), &None);
        let err = normalize_rootfs_propagation(&mut with(Some("rsideways"))).unwrap_err();
        assert!(
            matches!(&err, AgentError::InvalidArgument(m) if m.contains("rsideways")),
            "{err}"
        );
    }

    #[test]
    fn malformed_specs_are_invalid_arguments() {
        let mut req = CreateContainerRequest::new();
        req.container_id = "c".into();
        for spec in ["", "{", r#"{"ociVersion": 1}"#] {
            req.oci_spec = spec.into();
            let err = load_spec(&req).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{spec:?}: {err}");
        }
        req.oci_spec = r#"{"ociVersion": "1.0.2", "root": {"path": "/nonexistent"}}"#.into();
        req.rootfs = String::new();
        let err = load_spec(&req).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}

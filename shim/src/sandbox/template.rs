//! VM templates (`vm_templates` in the config): a snapshot of a guest booted
//! to its agent, one per VM shape, from which a pod starts instead of
//! booting. Its memory is mapped privately from the
//! template's file, so the pages the guest only reads are one copy in the
//! host's page cache for every pod started from it; the agent reseeds its
//! generator, sets its clock and mounts the pod's share in CreateSandbox.
//! A template's network cards are detached: a pod's VM puts its own taps
//! behind them, and the agent gives the guest's interfaces the pod's MACs
//! and addresses as after a cold boot (they stay down until then).
//!
//! The first pod of a shape makes the template (a cold boot, then the
//! snapshot; its own start waits for that); a pod that finds another one
//! making it boots cold. A template lives in `/run/runv-templates/<key>/`,
//! and its key covers everything its VM was made from (VMM, kernel, initrd
//! by path, size and mtime; vCPUs, memory, network cards and the config's VM
//! choices), so a
//! new kernel, initrd, VMM or shape makes a new one. A template whose VM does
//! not start is removed, and the pod boots cold; either is logged. Each
//! template records the VMM, kernel and initrd it was made from
//! ([`MADE_FROM_FILE`]); whenever a template is made, those whose files have
//! changed since (no pod can start from them again) are removed.

use super::{agent, teardown, SandboxError};
use crate::config::RunvConfig;
use crate::mounts::{open_beneath, remove_entry};
use crate::paths::{SandboxDir, TEMPLATES_ROOT};
use crate::share::PodShare;
use crate::spec::VmSize;
use crate::vm::{NetCard, Vm, VmStart, VmmPlacement};
use crate::vmm_api::{VmmApi, VmmApiError};
use log::{info, warn};
use protocol::agent::AgentClient;
use protocol::vm_config::{file_identity, snapshot_files};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the guest gets to see the readiness check's connection closed
/// before the snapshot, so that the pods' guests hold none.
const CLOSE_SETTLE: Duration = Duration::from_millis(200);
/// How long the template's VMM may take to exit after its Shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// The file in a template's directory naming the files it was made from.
const MADE_FROM_FILE: &str = "made-from.json";
/// Largest [`MADE_FROM_FILE`] read.
const MADE_FROM_MAX_BYTES: u64 = 64 << 10;

/// Most templates kept at once: pod annotations may pick vCPUs and memory,
/// and each shape's template holds host memory.
pub const MAX_TEMPLATES: usize = 8;

/// What became of an attempt to make a template.
enum Made {
    /// It is there (made now, or by another while this waited).
    Ready,
    /// Another pod is making it.
    Busy,
}

/// Why a template could not be made (logged; the pod boots cold).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// [`MAX_TEMPLATES`] are there already.
    #[error("{MAX_TEMPLATES} VM templates exist already")]
    Full,
    /// A directory or file of the template.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The template's VM did not start or its agent did not answer.
    #[error(transparent)]
    Boot(#[from] SandboxError),
    /// The VMM's API refused a step.
    #[error(transparent)]
    Api(#[from] VmmApiError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The files a template was made from, each with its identity then
/// ([`file_identity`]): if one has changed, the template is stale.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MadeFrom {
    files: Vec<(PathBuf, String)>,
}

impl MadeFrom {
    /// The VMM, kernel and initrd of `config`, as they are now.
    fn now(config: &RunvConfig) -> Self {
        Self {
            files: [&config.vmm, &config.kernel, &config.initrd]
                .map(|path| (path.clone(), file_identity(path)))
                .to_vec(),
        }
    }

    /// What template `dir` records; None if it records nothing readable
    /// (a template of an older shim, or a damaged one).
    fn of(dir: &Path) -> Option<Self> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(MADE_FROM_FILE))
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut record = Vec::new();
        file.take(MADE_FROM_MAX_BYTES)
            .read_to_end(&mut record)
            .ok()?;
        serde_json::from_slice(&record).ok()
    }

    /// Writes the record as a new file in directory `snapshot`, which the
    /// template's VMM could write: neither is followed if a symlink, and
    /// whatever the VMM left under the record's name is removed first.
    fn write_into(&self, snapshot: &Path) -> io::Result<()> {
        use nix::fcntl::OFlag;
        use std::io::Write;
        use std::os::fd::AsFd;
        use std::os::unix::fs::OpenOptionsExt;
        let record = serde_json::to_vec(self).map_err(io::Error::other)?;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(snapshot)?;
        let name = Path::new(MADE_FROM_FILE);
        remove_entry(dir.as_fd(), name).map_err(io::Error::other)?;
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
        let file = open_beneath(dir.as_fd(), name, flags, true).map_err(io::Error::other)?;
        fs::File::from(file).write_all(&record)
    }

    /// Whether every file is still as it was.
    fn is_current(&self) -> bool {
        self.files
            .iter()
            .all(|(path, identity)| file_identity(path) == *identity)
    }
}

/// A template: a snapshot directory, complete or not.
#[derive(Debug)]
pub struct Template {
    key: String,
    dir: PathBuf,
    /// What the key was made from, recorded in the template: read once, so
    /// that a file replaced while the template is made leaves it stale.
    made_from: MadeFrom,
}

/// The shape of a pod's VM: what a template is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    /// vCPUs and memory.
    pub size: VmSize,
    /// Network cards.
    pub cards: usize,
}

/// The template for pods of `shape` under `config`, made now if there is
/// none and nobody else is making it; None (logged) when templates are off,
/// being made elsewhere, or cannot be made.
pub fn find_or_make(config: &RunvConfig, shape: VmShape) -> Option<Template> {
    if !config.vm_templates {
        return None;
    }
    let template = Template::of(config, shape);
    if template.is_complete() {
        return Some(template);
    }
    match make_once(config, shape, &template, Lock::TryOnce) {
        Ok(Made::Ready) => Some(template),
        Ok(Made::Busy) => {
            info!(
                "VM template {} is being made by another pod: cold boot",
                template.key
            );
            None
        }
        Err(err) => {
            warn!("VM template {}: {err}; cold boot", template.key);
            None
        }
    }
}

/// Makes the template for pods of `shape` under `config` unless it is there,
/// waiting for a pod that is making it (`runv template make`): its directory.
pub fn make_ahead(config: &RunvConfig, shape: VmShape) -> Result<PathBuf, TemplateError> {
    let template = Template::of(config, shape);
    if !template.is_complete() {
        // Never Busy: the lock is waited for.
        make_once(config, shape, &template, Lock::Wait)?;
    }
    Ok(template.dir)
}

impl Template {
    /// The template of pods of `shape` under `config`, made or not.
    fn of(config: &RunvConfig, shape: VmShape) -> Self {
        let made_from = MadeFrom::now(config);
        let key = key(config, shape, &made_from);
        Self {
            dir: Path::new(TEMPLATES_ROOT).join(&key),
            key,
            made_from,
        }
    }

    /// A real directory holding the snapshot's files as regular files: the
    /// template's VMM wrote them, and a symlink it planted there would
    /// have later pods' jails bind whatever it points at.
    fn is_complete(&self) -> bool {
        let is = |path: &Path, dir: bool| {
            fs::symlink_metadata(path).is_ok_and(|meta| {
                let kind = meta.file_type();
                if dir {
                    kind.is_dir()
                } else {
                    kind.is_file()
                }
            })
        };
        is(&self.dir, true) && snapshot_files(&self.dir).iter().all(|file| is(file, false))
    }

    /// Removes the template (its VM did not start): the next pod makes it
    /// again.
    fn discard(&self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            warn!("removing VM template {}: {err}", self.key);
        }
    }
}

/// How [`make_once`] takes a template's lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A pod: if another one holds it, it boots cold ([`Made::Busy`]).
    TryOnce,
    /// `runv template make`: until the holder is done.
    Wait,
}

/// Makes the template under its lock (taken as `lock_mode` says), unless it
/// is there once the lock is held or there are [`MAX_TEMPLATES`] already
/// ([`TemplateError::Full`]). Templates made from files since changed are
/// removed first.
fn make_once(
    config: &RunvConfig,
    shape: VmShape,
    template: &Template,
    lock_mode: Lock,
) -> Result<Made, TemplateError> {
    let root = Path::new(TEMPLATES_ROOT);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io_err(root))?;
    let lock_path = root.join(format!("{}.lock", template.key));
    let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    let operation = match lock_mode {
        Lock::TryOnce => libc::LOCK_EX | libc::LOCK_NB,
        Lock::Wait => libc::LOCK_EX,
    };
    // SAFETY: flock on an fd this function owns; the lock goes with the fd.
    if unsafe { libc::flock(lock.as_raw_fd(), operation) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(Made::Busy);
        }
        return Err(io_err(&lock_path)(err));
    }
    if template.is_complete() {
        return Ok(Made::Ready);
    }
    remove_stale(root);
    if templates_in(root).map_err(io_err(root))?.len() >= MAX_TEMPLATES {
        return Err(TemplateError::Full);
    }
    let build = SandboxDir::under(root, &format!("{}.build", template.key));
    if build.path().exists() {
        // What a shim that died making it left.
        teardown::cleanup(&build);
    }
    let started = Instant::now();
    let made = boot_and_snapshot(config, shape, &build, template);
    teardown::cleanup(&build);
    made?;
    info!(
        "VM template {} made in {} ms",
        template.key,
        started.elapsed().as_millis()
    );
    Ok(Made::Ready)
}

/// The templates (directories but builds) under `root`.
fn templates_in(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut templates = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let is_build = entry.file_name().to_string_lossy().ends_with(".build");
        if entry.file_type()?.is_dir() && !is_build {
            templates.push(entry.path());
        }
    }
    Ok(templates)
}

/// Removes (logged) the templates under `root` made from a VMM, kernel or
/// initrd that has changed since, or that do not say what they were made
/// from: no pod starts from them again. One being made is a build
/// directory, not a template, and is left alone.
fn remove_stale(root: &Path) {
    let templates = match templates_in(root) {
        Ok(templates) => templates,
        Err(err) => return warn!("listing VM templates in {}: {err}", root.display()),
    };
    for dir in templates {
        if MadeFrom::of(&dir).is_some_and(|made| made.is_current()) {
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => info!(
                "VM template {} removed: made from files since changed",
                dir.display()
            ),
            Err(err) => warn!("removing stale VM template {}: {err}", dir.display()),
        }
    }
}

/// Boots the template's VM in `build` (a sandbox directory of its own, with
/// an empty share), waits for its agent, snapshots it and moves the snapshot
/// to `dir`.
fn boot_and_snapshot(
    config: &RunvConfig,
    shape: VmShape,
    build: &SandboxDir,
    template: &Template,
) -> Result<(), TemplateError> {
    let dir = &template.dir;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(build.path())
        .map_err(io_err(build.path()))?;
    let _share = PodShare::create(build).map_err(SandboxError::from)?;
    build.create_vmm_dirs().map_err(io_err(&build.vm_dir()))?;
    let snapshot = build.vm_dir().join("snapshot");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&snapshot)
        .map_err(io_err(&snapshot))?;
    let vm = Vm::launch(
        config,
        build,
        (
            shape.size,
            VmStart::MakeTemplate {
                snapshot: &snapshot,
                cards: shape.cards,
            },
        ),
        &[],
        VmmPlacement {
            oom_score_adj: None,
            cgroup_procs: &[],
        },
        |_| {},
    )
    .map_err(|err| SandboxError::Launch(err.into()))?;
    let snapshotted = agent::connect_agent(build, &vm, config)
        .map_err(TemplateError::from)
        .and_then(|agent| {
            drop(agent);
            std::thread::sleep(CLOSE_SETTLE);
            let api = VmmApi::new(&build.api_sock());
            api.pause()?;
            api.snapshot()?;
            api.shutdown(Duration::ZERO)?;
            Ok(())
        });
    if !vm.wait_exit(SHUTDOWN_WAIT) {
        vm.kill();
    }
    snapshotted?;
    template
        .made_from
        .write_into(&snapshot)
        .map_err(io_err(&snapshot.join(MADE_FROM_FILE)))?;
    // Whatever an incomplete template left (a symlink is removed itself).
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(io_err(dir)(err)),
        _ => {}
    }
    // A rename moves a symlink planted as `snapshot`, never its target:
    // `is_complete` refuses that.
    fs::rename(&snapshot, dir).map_err(io_err(dir))
}

/// Which came first of a VM's start as the pod's and its exit, decided
/// once: a VM from a template serves the pod only if its start wins; an exit
/// before that is the template's failure, which the pod never hears of.
struct Handover(AtomicU8);

impl Handover {
    /// Not yet the pod's.
    const STARTING: u8 = 0;
    /// The pod's: its exit is the pod's.
    const SERVING: u8 = 1;
    /// Exited before it was the pod's.
    const EXITED_EARLY: u8 = 2;

    /// A VM from a template, not yet the pod's.
    fn starting() -> Arc<Self> {
        Arc::new(Self(AtomicU8::new(Self::STARTING)))
    }

    /// A VM that is the pod's from its start (a cold boot).
    fn serving() -> Arc<Self> {
        Arc::new(Self(AtomicU8::new(Self::SERVING)))
    }

    /// The VM becomes the pod's; false if it exited first.
    fn serve(&self) -> bool {
        self.leave_starting(Self::SERVING).is_ok()
    }

    /// The VM exited: whether the pod is to hear of it.
    fn exited(&self) -> bool {
        self.leave_starting(Self::EXITED_EARLY) == Err(Self::SERVING)
    }

    /// Moves from STARTING to `to`; else the state it is in.
    fn leave_starting(&self, to: u8) -> Result<u8, u8> {
        self.0
            .compare_exchange(Self::STARTING, to, Ordering::SeqCst, Ordering::SeqCst)
    }
}

/// Starts the pod's VM in `dir` and connects to its agent: from `template`
/// if there is one, and cold if there is none or its VM does not start.
/// A template whose VM did not start is removed only once the cold boot
/// with the same pod's parts (taps, cgroup, share) has: if that fails too,
/// the pod's parts are the likelier cause, and the template stays.
/// `on_vm_exit` runs when the VM that serves the pod exits; a VM from the
/// template serves it only once its agent answered.
pub(super) fn start_vm(
    config: &RunvConfig,
    dir: &SandboxDir,
    (size, template): (VmSize, Option<&Template>),
    cards: &[NetCard<'_>],
    placement: VmmPlacement<'_>,
    on_vm_exit: impl FnOnce(i32) + Send + 'static,
) -> Result<(Vm, AgentClient), SandboxError> {
    let slot = Arc::new(Mutex::new(Some(on_vm_exit)));
    // The exit of the VM, if the pod is to hear of it.
    let exit_of = |handover: Arc<Handover>| {
        let slot = slot.clone();
        move |code| {
            if handover.exited() {
                let callback = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(callback) = callback {
                    callback(code);
                }
            }
        }
    };
    let launch = |start: VmStart<'_>, handover: &Arc<Handover>| {
        let vm = Vm::launch(
            config,
            dir,
            (size, start),
            cards,
            placement,
            exit_of(handover.clone()),
        )
        .map_err(|err| SandboxError::Launch(err.into()))?;
        match agent::connect_agent(dir, &vm, config) {
            Ok(agent) => Ok((vm, agent)),
            Err(err) => {
                vm.kill();
                Err(err)
            }
        }
    };
    if let Some(template) = template {
        let handover = Handover::starting();
        let restored =
            launch(VmStart::Restore(&template.dir), &handover).and_then(|(vm, agent)| {
                if !handover.serve() {
                    // Gone as its agent answered: its exit was not reported.
                    return Err(SandboxError::Launch(
                        "the VMM exited after its start".into(),
                    ));
                }
                Ok((vm, agent))
            });
        let err = match restored {
            Ok(started) => {
                info!("VM started from template {}", template.key);
                return Ok(started);
            }
            Err(err) => err,
        };
        warn!(
            "VM template {} did not start ({err}): cold boot",
            template.key
        );
        // A killed VMM leaves its sockets; the next one makes them.
        for socket in [dir.api_sock(), dir.vsock_sock()] {
            let _ = fs::remove_file(socket);
        }
    }
    let cold = launch(VmStart::Boot, &Handover::serving())?;
    // Here a template is one whose VM did not start.
    if let Some(template) = template {
        warn!(
            "VM template {}: removed, as a cold boot of the same pod started",
            template.key
        );
        template.discard();
    }
    Ok(cold)
}

/// The template key of pods of `shape` under `config` whose VMM, kernel and
/// initrd are `files`: a hash of what their VM is made from.
fn key(config: &RunvConfig, VmShape { size, cards }: VmShape, files: &MadeFrom) -> String {
    let identities: Vec<&str> = files.files.iter().map(|(_, id)| id.as_str()).collect();
    let made_from = format!(
        "runv {}; files {}; {} vCPUs; {} MiB; {cards} cards; reporting {}; seccomp {:?}; jail {}",
        env!("CARGO_PKG_VERSION"),
        identities.join(", "),
        size.vcpus,
        size.memory_mib,
        config.free_page_reporting,
        config.vmm_seccomp,
        config.vmm_jail,
    );
    format!("{:016x}", fnv1a(made_from.as_bytes()))
}

/// FNV-1a, 64 bits: a stable hash (std's is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(vcpus: u32, memory_mib: u32) -> VmShape {
        VmShape {
            size: VmSize { vcpus, memory_mib },
            cards: 0,
        }
    }

    fn key_of(config: &RunvConfig, shape: VmShape) -> String {
        key(config, shape, &MadeFrom::now(config))
    }

    #[test]
    fn a_template_vm_that_exits_before_it_serves_is_not_the_pods() {
        let handover = Handover::starting();
        assert!(!handover.exited(), "the pod heard of a template's failure");
        assert!(!handover.serve(), "an exited VM became the pod's");
        assert!(!handover.exited());
    }

    #[test]
    fn a_vm_that_serves_the_pod_exits_as_the_pods() {
        let handover = Handover::starting();
        assert!(handover.serve());
        assert!(handover.exited());
        assert!(Handover::serving().exited(), "a cold boot's exit");
    }

    #[test]
    fn the_key_changes_with_what_the_vm_is_made_from() {
        let config = RunvConfig::default();
        let base = key_of(&config, size(1, 256));
        assert_eq!(base, key_of(&config, size(1, 256)), "stable");
        assert_eq!(base.len(), 16);
        assert_ne!(base, key_of(&config, size(2, 256)));
        assert_ne!(base, key_of(&config, size(1, 512)));
        let one_card = VmShape {
            cards: 1,
            ..size(1, 256)
        };
        assert_ne!(base, key_of(&config, one_card));
        let other_kernel = RunvConfig {
            kernel: "/elsewhere/vmlinux".into(),
            ..RunvConfig::default()
        };
        assert_ne!(base, key_of(&other_kernel, size(1, 256)));
        let no_reporting = RunvConfig {
            free_page_reporting: false,
            ..RunvConfig::default()
        };
        assert_ne!(base, key_of(&no_reporting, size(1, 256)));
    }

    #[test]
    fn templates_off_means_none_and_nothing_made() {
        let config = RunvConfig::default();
        assert!(!config.vm_templates, "off unless asked");
        assert!(find_or_make(&config, size(1, 256)).is_none());
    }

    #[test]
    fn templates_made_from_changed_files_are_removed_as_stale() {
        let root = tempfile::tempdir().unwrap();
        let kernel = root.path().join("vmlinux");
        fs::write(&kernel, b"old kernel").unwrap();
        let config = RunvConfig {
            kernel: kernel.clone(),
            ..RunvConfig::default()
        };
        let template = |name: &str, made: Option<&MadeFrom>| {
            let dir = root.path().join(name);
            fs::create_dir(&dir).unwrap();
            if let Some(made) = made {
                made.write_into(&dir).unwrap();
            }
            dir
        };
        let made = MadeFrom::now(&config);
        let kept = template("current", Some(&made));
        assert_eq!(MadeFrom::of(&kept).as_ref(), Some(&made), "read back");
        made.write_into(&kept).unwrap();
        assert_eq!(MadeFrom::of(&kept).as_ref(), Some(&made), "written again");
        let unsaid = template("unsaid", None);
        let building = template("new.build", None);
        remove_stale(root.path());
        assert!(kept.exists() && building.exists());
        assert!(
            !unsaid.exists(),
            "a template that says nothing of its files"
        );

        fs::write(&kernel, b"a new kernel").unwrap();
        remove_stale(root.path());
        assert!(!kept.exists(), "a template of the old kernel");
        assert!(building.exists(), "a template being made");
    }

    #[test]
    fn a_record_is_not_written_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let planted = root.path().join("snapshot");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        let made = MadeFrom::now(&RunvConfig::default());
        assert!(made.write_into(&planted).is_err());
        assert!(!elsewhere.join(MADE_FROM_FILE).exists());

        // A symlink left under the record's name is replaced, not followed.
        let snapshot = root.path().join("real");
        fs::create_dir(&snapshot).unwrap();
        let target = root.path().join("target");
        fs::write(&target, b"host file").unwrap();
        std::os::unix::fs::symlink(&target, snapshot.join(MADE_FROM_FILE)).unwrap();
        assert_eq!(
            MadeFrom::of(&snapshot),
            None,
            "a symlinked record is not read"
        );
        made.write_into(&snapshot).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"host file");
        assert_eq!(MadeFrom::of(&snapshot).as_ref(), Some(&made));
    }

    #[test]
    fn templates_are_counted_without_builds_or_locks() {
        let root = std::env::temp_dir().join(format!("runv-templates-{}", std::process::id()));
        for dir in ["a", "b", "c.build"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("a.lock"), b"").unwrap();
        assert_eq!(templates_in(&root).unwrap().len(), 2);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_template_is_complete_only_as_real_files_in_a_real_directory() {
        let root = std::env::temp_dir().join(format!("runv-template-files-{}", std::process::id()));
        let template = |name: &str| Template {
            key: name.into(),
            dir: root.join(name),
            made_from: MadeFrom { files: Vec::new() },
        };
        let whole = template("whole");
        fs::create_dir_all(&whole.dir).unwrap();
        for file in snapshot_files(&whole.dir) {
            fs::write(file, b"x").unwrap();
        }
        assert!(whole.is_complete());

        let planted = template("planted");
        fs::create_dir_all(&planted.dir).unwrap();
        let [state, memory] = &snapshot_files(&planted.dir)[..] else {
            panic!("two snapshot files");
        };
        std::os::unix::fs::symlink("/etc/hostname", state).unwrap();
        fs::write(memory, b"x").unwrap();
        assert!(!planted.is_complete(), "a symlinked state file");

        let linked = template("linked");
        std::os::unix::fs::symlink(&whole.dir, &linked.dir).unwrap();
        assert!(!linked.is_complete(), "a symlinked directory");
        assert!(!template("missing").is_complete());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

//! VM templates (`vm_templates` in the config): a snapshot of a guest booted
//! to its agent, one per VM shape, from which a pod without a network card
//! starts instead of booting. Its memory is mapped privately from the
//! template's file, so the pages the guest only reads are one copy in the
//! host's page cache for every pod started from it; the agent reseeds its
//! generator, sets its clock and mounts the pod's share in CreateSandbox.
//!
//! The first pod of a shape makes the template (a cold boot, then the
//! snapshot; its own start waits for that); a pod that finds another one
//! making it boots cold. A template lives in `/run/runv-templates/<key>/`,
//! and its key covers everything its VM was made from (VMM, kernel, initrd
//! by path, size and mtime; vCPUs, memory and the config's VM choices), so a
//! new kernel, initrd, VMM or shape makes a new one. A template whose VM does
//! not start is removed, and the pod boots cold; either is logged.

use super::{agent, teardown, SandboxError};
use crate::config::RunvConfig;
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the guest gets to see the readiness check's connection closed
/// before the snapshot, so that the pods' guests hold none.
const CLOSE_SETTLE: Duration = Duration::from_millis(200);
/// How long the template's VMM may take to exit after its Shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Most templates kept at once: pod annotations may pick vCPUs and memory,
/// and each shape's template holds host memory.
pub const MAX_TEMPLATES: usize = 8;

/// What became of an attempt to make a template.
enum Made {
    /// It is there.
    Done,
    /// Another pod is making it.
    Busy,
    /// [`MAX_TEMPLATES`] are there already.
    Full,
}

/// Why a template could not be made (logged; the pod boots cold).
#[derive(Debug, thiserror::Error)]
enum TemplateError {
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

/// A complete template: a snapshot directory.
#[derive(Debug)]
pub struct Template {
    key: String,
    dir: PathBuf,
}

/// The template for pods of `size` under `config`, made now if there is
/// none and nobody else is making it; None (logged) when templates are off,
/// being made elsewhere, or cannot be made.
pub fn find_or_make(config: &RunvConfig, size: VmSize) -> Option<Template> {
    if !config.vm_templates {
        return None;
    }
    let key = key(config, size);
    let template = Template {
        dir: Path::new(TEMPLATES_ROOT).join(&key),
        key,
    };
    if template.is_complete() {
        return Some(template);
    }
    let made = Instant::now();
    match make_once(config, size, &template) {
        Ok(Made::Done) => {
            info!(
                "VM template {} made in {} ms",
                template.key,
                made.elapsed().as_millis()
            );
            Some(template)
        }
        Ok(Made::Busy) => {
            info!(
                "VM template {} is being made by another pod: cold boot",
                template.key
            );
            None
        }
        Ok(Made::Full) => {
            warn!(
                "no VM template {}: {MAX_TEMPLATES} templates exist already: cold boot",
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

impl Template {
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

/// Makes the template under its lock, unless another pod holds the lock or
/// there are [`MAX_TEMPLATES`] already.
fn make_once(
    config: &RunvConfig,
    size: VmSize,
    template: &Template,
) -> Result<Made, TemplateError> {
    let root = Path::new(TEMPLATES_ROOT);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io_err(root))?;
    let lock_path = root.join(format!("{}.lock", template.key));
    let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    // SAFETY: flock on an fd this function owns; the lock goes with the fd.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(Made::Busy);
        }
        return Err(io_err(&lock_path)(err));
    }
    if template.is_complete() {
        return Ok(Made::Done);
    }
    if count_templates(root).map_err(io_err(root))? >= MAX_TEMPLATES {
        return Ok(Made::Full);
    }
    let build = SandboxDir::under(root, &format!("{}.build", template.key));
    if build.path().exists() {
        // What a shim that died making it left.
        teardown::cleanup(&build);
    }
    let made = boot_and_snapshot(config, size, &build, &template.dir);
    teardown::cleanup(&build);
    made.map(|()| Made::Done)
}

/// The templates (directories but builds) under `root`.
fn count_templates(root: &Path) -> io::Result<usize> {
    let mut count = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let is_build = entry.file_name().to_string_lossy().ends_with(".build");
        if entry.file_type()?.is_dir() && !is_build {
            count += 1;
        }
    }
    Ok(count)
}

/// Boots the template's VM in `build` (a sandbox directory of its own, with
/// an empty share), waits for its agent, snapshots it and moves the snapshot
/// to `dir`.
fn boot_and_snapshot(
    config: &RunvConfig,
    size: VmSize,
    build: &SandboxDir,
    dir: &Path,
) -> Result<(), TemplateError> {
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
        (size, VmStart::MakeTemplate(&snapshot)),
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
    // Whatever an incomplete template left (a symlink is removed itself).
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(io_err(dir)(err)),
        _ => {}
    }
    // A rename moves a symlink planted as `snapshot`, never its target:
    // `is_complete` refuses that.
    fs::rename(&snapshot, dir).map_err(io_err(dir))
}

/// Starts the pod's VM in `dir` and connects to its agent: from `template`
/// if there is one, and cold if there is none or its VM does not start (the
/// template is then removed). `on_vm_exit` runs when the VM that serves the
/// pod exits; a VM from the template serves it only once its agent answered.
pub(super) fn start_vm(
    config: &RunvConfig,
    dir: &SandboxDir,
    (size, template): (VmSize, Option<&Template>),
    cards: &[NetCard<'_>],
    placement: VmmPlacement<'_>,
    on_vm_exit: impl FnOnce(i32) + Send + 'static,
) -> Result<(Vm, AgentClient), SandboxError> {
    let slot = Arc::new(Mutex::new(Some(on_vm_exit)));
    // The exit of the VM that serves the pod, if `serving` says it does.
    let exit_of = |serving: Arc<AtomicBool>| {
        let slot = slot.clone();
        move |code| {
            if serving.load(Ordering::SeqCst) {
                let callback = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(callback) = callback {
                    callback(code);
                }
            }
        }
    };
    let launch = |start: VmStart<'_>, serving: &Arc<AtomicBool>| {
        let vm = Vm::launch(
            config,
            dir,
            (size, start),
            cards,
            placement,
            exit_of(serving.clone()),
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
        let serving = Arc::new(AtomicBool::new(false));
        let restored = launch(VmStart::Restore(&template.dir), &serving).and_then(|(vm, agent)| {
            serving.store(true, Ordering::SeqCst);
            if vm.has_exited() {
                // Gone as its agent answered: its exit was not reported.
                return Err(SandboxError::Launch(
                    "the VMM exited after its start".into(),
                ));
            }
            Ok((vm, agent))
        });
        match restored {
            Ok(started) => {
                info!("VM started from template {}", template.key);
                return Ok(started);
            }
            Err(err) => {
                warn!(
                    "VM template {} did not start ({err}): removed; cold boot",
                    template.key
                );
                template.discard();
                // A killed VMM leaves its sockets; the next one makes them.
                for socket in [dir.api_sock(), dir.vsock_sock()] {
                    let _ = fs::remove_file(socket);
                }
            }
        }
    }
    launch(VmStart::Boot, &Arc::new(AtomicBool::new(true)))
}

/// The template key of pods of `size` under `config`: a hash of what their
/// VM is made from.
fn key(config: &RunvConfig, size: VmSize) -> String {
    let made_from = format!(
        "runv {}; vmm {}; kernel {}; initrd {}; {} vCPUs; {} MiB; reporting {}; seccomp {:?}; jail {}",
        env!("CARGO_PKG_VERSION"),
        file_identity(&config.vmm),
        file_identity(&config.kernel),
        file_identity(&config.initrd),
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

    fn size(vcpus: u32, memory_mib: u32) -> VmSize {
        VmSize { vcpus, memory_mib }
    }

    #[test]
    fn the_key_changes_with_what_the_vm_is_made_from() {
        let config = RunvConfig::default();
        let base = key(&config, size(1, 256));
        assert_eq!(base, key(&config, size(1, 256)), "stable");
        assert_eq!(base.len(), 16);
        assert_ne!(base, key(&config, size(2, 256)));
        assert_ne!(base, key(&config, size(1, 512)));
        let other_kernel = RunvConfig {
            kernel: "/elsewhere/vmlinux".into(),
            ..RunvConfig::default()
        };
        assert_ne!(base, key(&other_kernel, size(1, 256)));
        let no_reporting = RunvConfig {
            free_page_reporting: false,
            ..RunvConfig::default()
        };
        assert_ne!(base, key(&no_reporting, size(1, 256)));
    }

    #[test]
    fn templates_off_means_none_and_nothing_made() {
        let config = RunvConfig::default();
        assert!(!config.vm_templates, "off unless asked");
        assert!(find_or_make(&config, size(1, 256)).is_none());
    }

    #[test]
    fn templates_are_counted_without_builds_or_locks() {
        let root = std::env::temp_dir().join(format!("runv-templates-{}", std::process::id()));
        for dir in ["a", "b", "c.build"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("a.lock"), b"").unwrap();
        assert_eq!(count_templates(&root).unwrap(), 2);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_template_is_complete_only_as_real_files_in_a_real_directory() {
        let root = std::env::temp_dir().join(format!("runv-template-files-{}", std::process::id()));
        let template = |name: &str| Template {
            key: name.into(),
            dir: root.join(name),
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

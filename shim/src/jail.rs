//! The VMM's jail: the mount and pid namespaces the shim starts runv-vmm in,
//! before any guest code runs.
//!
//! The jail's root is a small read-only tmpfs, mounted on `<sandbox>/jail` in
//! the VMM's own mount namespace and made its root with `pivot_root`. It holds,
//! each at its host path: the VMM binary, the guest kernel and initrd
//! (read-only binds), `/dev/kvm`, the pod's share `<sandbox>/shared` (the
//! read-only view with the volumes under it, a slave: the mounts the shim makes
//! later appear in it), the VMM's own directory `<sandbox>/vm` (its sockets and
//! console), and a `/proc` of its own pid namespace that shows only its own
//! process (`subset=pid`). Nothing else of the host: no `/etc`, `/usr`, `/sys`,
//! no other pod, not the shim's files in the sandbox directory; `/dev/net/tun`
//! neither, as the taps come open. The VMM is the first process of a pid
//! namespace of its own, so it sees and can signal no other process.
//!
//! Everything is worked out before the fork ([`Jail::plan`]); the child only
//! makes system calls on that plan ([`Jail::enter`]). A failed step is
//! reported to the parent as a code that [`Jail::describe`] turns back into
//! the step and the path.

use crate::paths::SandboxDir;
use crate::privileges::VmmPrivileges;
use nix::errno::Errno;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The device the VMM opens.
const DEV_KVM: &str = "/dev/kvm";
/// Options of the jail's root tmpfs: only directories and mount points.
const ROOT_TMPFS_OPTIONS: &std::ffi::CStr = c"mode=0755,size=64k,nr_inodes=256";
/// `/proc` with nothing but process directories (Linux 5.8+): no `/proc/sys`,
/// no `/proc/kcore`, no host-wide files.
const PROC_OPTIONS: &std::ffi::CStr = c"subset=pid";

/// Flags of a read-only bind of a data file (kernel, initrd).
const READ_ONLY_DATA: libc::c_ulong =
    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
/// Flags of the VMM binary's bind: read-only, executable.
const READ_ONLY_PROGRAM: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
/// Flags of `/dev/kvm`'s bind: a device, nothing else.
const DEVICE: libc::c_ulong = libc::MS_NOSUID | libc::MS_NOEXEC;
/// Flags of the VMM's writable directory.
const WRITABLE_DATA: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Errors of planning a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A path the jail would hold is not absolute and plain.
    #[error("{path}: the jail takes absolute paths without '.' or '..'")]
    NotPlain { path: PathBuf },
    /// A path has a NUL byte.
    #[error("{path}: contains a NUL byte")]
    Nul { path: PathBuf },
    /// The VMM binary cannot be read.
    #[error("the VMM {path}: {source}")]
    Vmm { path: PathBuf, source: io::Error },
    /// The VMM binary needs a program interpreter (shared libraries).
    #[error(
        "the VMM {path} is dynamically linked, and its jail holds no shared library: \
         use a static runv-vmm (scripts/build-vmm) or set vmm_jail = false"
    )]
    Dynamic { path: PathBuf },
}

/// One bind mount of the jail.
#[derive(Debug)]
struct Bind {
    /// The host path.
    source: CString,
    /// Where it goes under the jail's root (the same path below it).
    target: CString,
    /// A file (its mount point is made as a file), else a directory.
    file: bool,
    /// With the mounts below it.
    recursive: bool,
    /// The flags it is remounted with, if any (else it keeps its source's).
    flags: Option<libc::c_ulong>,
}

/// A step of [`Jail::enter`], for its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Unshare = 1,
    Slave,
    MountRoot,
    MakeDir,
    MakeMountPoint,
    Bind,
    Remount,
    MountProc,
    PivotRoot,
    DetachOldRoot,
    ReadOnlyRoot,
}

impl Step {
    const ALL: [Step; 11] = [
        Step::Unshare,
        Step::Slave,
        Step::MountRoot,
        Step::MakeDir,
        Step::MakeMountPoint,
        Step::Bind,
        Step::Remount,
        Step::MountProc,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::ReadOnlyRoot,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Unshare => "enter a mount namespace",
            Step::Slave => "make the mounts slaves",
            Step::MountRoot => "mount the root tmpfs on",
            Step::MakeDir => "make directory",
            Step::MakeMountPoint => "make the mount point of",
            Step::Bind => "bind",
            Step::Remount => "restrict the bind of",
            Step::MountProc => "mount proc on",
            Step::PivotRoot => "pivot_root to",
            Step::DetachOldRoot => "detach the host's root from",
            Step::ReadOnlyRoot => "make the root read-only:",
        }
    }

    /// The code a failure of this step on entry `index` with `errno` is
    /// reported as: step, index and errno in one `i32`.
    fn code(self, index: usize, errno: i32) -> i32 {
        (i32::from(self as u8) << 24) | ((index as i32 & 0xff) << 16) | (errno & 0xffff)
    }

    /// The step, index and errno of a code made by [`Step::code`].
    fn decode(code: i32) -> Option<(Step, usize, i32)> {
        let step = u8::try_from(code >> 24).ok()?;
        let step = Self::ALL.into_iter().find(|s| *s as u8 == step)?;
        Some((step, ((code >> 16) & 0xff) as usize, code & 0xffff))
    }
}

/// The jail of one VMM, planned in the shim and entered by its child.
#[derive(Debug)]
pub struct Jail {
    /// `<sandbox>/jail`: where the root tmpfs is mounted before `pivot_root`.
    root: CString,
    /// Directories made in the tmpfs, parents first.
    dirs: Vec<CString>,
    /// Files first, then directories.
    binds: Vec<Bind>,
    /// `<root>/proc`.
    proc: CString,
}

impl Jail {
    /// Plans the jail of the VMM of sandbox `dir`: the VMM `program` (static),
    /// the read-only `data` files (kernel, initrd), `/dev/kvm`, the share and
    /// the VMM's directory. The jail's mount point `<sandbox>/jail` and the
    /// VMM's directory must exist.
    pub fn plan(dir: &SandboxDir, program: &Path, data: &[&Path]) -> Result<Self, JailError> {
        check_static(program)?;
        let root = dir.jail_root();
        let mut plan = Self {
            root: cstring(&root)?,
            dirs: Vec::new(),
            binds: Vec::new(),
            proc: cstring(&root.join("proc"))?,
        };
        plan.dirs.push(plan.proc.clone());
        plan.add(&root, program, true, false, Some(READ_ONLY_PROGRAM))?;
        for file in data {
            plan.add(&root, file, true, false, Some(READ_ONLY_DATA))?;
        }
        plan.add(&root, Path::new(DEV_KVM), true, false, Some(DEVICE))?;
        // The share keeps its own flags (read-only view, writable volumes).
        plan.add(&root, &dir.shared(), false, true, None)?;
        plan.add(&root, &dir.vm_dir(), false, false, Some(WRITABLE_DATA))?;
        Ok(plan)
    }

    /// Adds a bind of `path` at the same path under `root`, and the
    /// directories above it.
    fn add(
        &mut self,
        root: &Path,
        path: &Path,
        file: bool,
        recursive: bool,
        flags: Option<libc::c_ulong>,
    ) -> Result<(), JailError> {
        let inner = plain_relative(path)?;
        let target = root.join(inner);
        let target_c = cstring(&target)?;
        if self.binds.iter().any(|bind| bind.target == target_c) {
            return Ok(());
        }
        let mut parent = root.to_path_buf();
        let mut components = inner.components().peekable();
        while let Some(component) = components.next() {
            if components.peek().is_none() && file {
                break;
            }
            parent.push(component);
            let dir = cstring(&parent)?;
            if !self.dirs.contains(&dir) {
                self.dirs.push(dir);
            }
        }
        let bind = Bind {
            source: cstring(path)?,
            target: target_c,
            file,
            recursive,
            flags,
        };
        // Files before directories: a file's mount point is never made
        // inside a bound host directory.
        let at = if file {
            self.binds.iter().take_while(|bind| bind.file).count()
        } else {
            self.binds.len()
        };
        self.binds.insert(at, bind);
        Ok(())
    }

    /// Enters the jail: a new mount namespace whose mounts receive the
    /// shim's but never reach it, the root tmpfs, the binds, `/proc`, then
    /// `pivot_root` into it and the host's root detached. For the child
    /// between fork and exec, in the pid namespace [`spawn`] made:
    /// async-signal-safe, system calls on the plan only, no allocation.
    pub fn enter(&self) -> io::Result<()> {
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: unshare takes flags; no memory.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check(unshared, Step::Unshare, 0)?;
        // SAFETY: a NUL-terminated literal target; no source, type or data.
        let slave = unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        };
        check(slave, Step::Slave, 0)?;
        // SAFETY: NUL-terminated strings of the plan and literals.
        let root = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                ROOT_TMPFS_OPTIONS.as_ptr().cast(),
            )
        };
        check(root, Step::MountRoot, 0)?;
        for (index, dir) in self.dirs.iter().enumerate() {
            // SAFETY: a NUL-terminated path of the plan.
            let made = unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
            check(made, Step::MakeDir, index)?;
        }
        for (index, bind) in self.binds.iter().enumerate() {
            bind.mount(index)?;
        }
        // SAFETY: NUL-terminated strings of the plan and literals.
        let proc = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                self.proc.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                PROC_OPTIONS.as_ptr().cast(),
            )
        };
        check(proc, Step::MountProc, 0)?;
        // SAFETY: a NUL-terminated path of the plan.
        let in_root = unsafe { libc::chdir(self.root.as_ptr()) };
        check(in_root, Step::PivotRoot, 0)?;
        // SAFETY: "." twice: the new root stacks over the old, which is then
        // detached from it.
        let pivot = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
        check(pivot as libc::c_int, Step::PivotRoot, 0)?;
        // SAFETY: a NUL-terminated literal.
        let detach = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
        check(detach, Step::DetachOldRoot, 0)?;
        // SAFETY: a NUL-terminated literal.
        let at_root = unsafe { libc::chdir(c"/".as_ptr()) };
        check(at_root, Step::DetachOldRoot, 0)?;
        // SAFETY: a NUL-terminated literal target; no source, type or data.
        let read_only = unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        check(read_only, Step::ReadOnlyRoot, 0)
    }

    /// What a failed spawn of a jailed VMM means: the step and the path when
    /// [`Jail::enter`] failed, else the error as it is.
    pub fn describe(&self, err: &io::Error) -> String {
        let Some((step, index, errno)) = err.raw_os_error().and_then(Step::decode) else {
            return err.to_string();
        };
        let show = |path: &CString| path.to_string_lossy().into_owned();
        let what = match step {
            Step::MountRoot | Step::PivotRoot => show(&self.root),
            Step::MakeDir => self.dirs.get(index).map(show).unwrap_or_default(),
            Step::MakeMountPoint | Step::Remount => self
                .binds
                .get(index)
                .map(|b| show(&b.target))
                .unwrap_or_default(),
            Step::Bind => self
                .binds
                .get(index)
                .map(|b| format!("{} on {}", show(&b.source), show(&b.target)))
                .unwrap_or_default(),
            Step::MountProc => show(&self.proc),
            Step::Unshare | Step::Slave | Step::DetachOldRoot | Step::ReadOnlyRoot => String::new(),
        };
        format!(
            "the VMM's jail: {} {what}: {}",
            step.name(),
            Errno::from_raw(errno).desc()
        )
    }
}

impl Bind {
    /// Makes the mount point, binds, and restricts the bind's flags.
    fn mount(&self, index: usize) -> io::Result<()> {
        if self.file {
            // SAFETY: a NUL-terminated path of the plan; the fd is closed below.
            let fd = unsafe {
                libc::open(
                    self.target.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o600,
                )
            };
            check(fd, Step::MakeMountPoint, index)?;
            // SAFETY: `fd` was just opened and is closed once.
            unsafe { libc::close(fd) };
        }
        let recursive = if self.recursive { libc::MS_REC } else { 0 };
        // SAFETY: NUL-terminated paths of the plan; no type or data.
        let bound = unsafe {
            libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | recursive,
                std::ptr::null(),
            )
        };
        check(bound, Step::Bind, index)?;
        if let Some(flags) = self.flags {
            // SAFETY: as above.
            let restricted = unsafe {
                libc::mount(
                    std::ptr::null(),
                    self.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | flags,
                    std::ptr::null(),
                )
            };
            check(restricted, Step::Remount, index)?;
        }
        Ok(())
    }
}

/// Spawns the VMM `command` confined: in the child, `prepare`, then the
/// entry into `jail` (if any; the child is then the first process of a new pid
/// namespace), then `privileges`. Returns the child and how long the spawn
/// took, fork to exec (with the jail's making), or what failed (a jail step
/// names itself).
///
/// # Safety
///
/// `prepare` runs in the child between fork and exec: it must be
/// async-signal-safe (system calls only; no allocation, no lock).
pub unsafe fn spawn_confined(
    command: &mut Command,
    jail: Option<Arc<Jail>>,
    privileges: VmmPrivileges,
    prepare: impl Fn() -> io::Result<()> + Send + Sync + 'static,
) -> Result<(Child, Duration), String> {
    let entering = jail.clone();
    // SAFETY: the caller vouches for `prepare`; `Jail::enter` and
    // `VmmPrivileges::apply` make system calls on plans made before the fork
    // and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            prepare()?;
            if let Some(jail) = &entering {
                jail.enter()?;
            }
            privileges.apply()
        });
    }
    let started = Instant::now();
    let spawned = match &jail {
        Some(_) => spawn(command),
        None => command.spawn(),
    };
    let took = started.elapsed();
    match spawned {
        Ok(child) => Ok((child, took)),
        Err(err) => Err(jail.map_or(err.to_string(), |jail| jail.describe(&err))),
    }
}

/// Spawns `command` as the first process of a new pid namespace: from a
/// thread of its own that unshares the namespace for its children (the shim's
/// other threads keep theirs), so that the VMM is still the shim's child.
fn spawn(command: &mut Command) -> io::Result<Child> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare takes flags; CLONE_NEWPID changes only the
                // pid namespace of this thread's children, and this thread
                // ends after its one child.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                command.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the VMM's spawner thread panicked")))
    })
}

/// Maps a failed system call's return to the code of `step` on `index`.
fn check(ret: libc::c_int, step: Step, index: usize) -> io::Result<()> {
    if ret >= 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Err(io::Error::from_raw_os_error(step.code(index, errno)))
}

/// `path` without its leading `/`: absolute, plain components only.
fn plain_relative(path: &Path) -> Result<&Path, JailError> {
    let not_plain = || JailError::NotPlain { path: path.into() };
    let inner = path.strip_prefix("/").map_err(|_| not_plain())?;
    if inner.as_os_str().is_empty()
        || !inner
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(not_plain());
    }
    Ok(inner)
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Nul { path: path.into() })
}

/// `PT_INTERP`: a program header naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// Most program headers read.
const MAX_PROGRAM_HEADERS: usize = 64;
/// Bytes of the program read for its check: the ELF header and, right after
/// it where linkers put them, [`MAX_PROGRAM_HEADERS`] 56-byte program headers.
const ELF_HEAD_BYTES: u64 = 4096;

/// Checks that the ELF program at `path` needs no program interpreter: in the
/// jail there is no `ld.so` and no shared library.
fn check_static(path: &Path) -> Result<(), JailError> {
    let read_error = |source| JailError::Vmm {
        path: path.into(),
        source,
    };
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(ELF_HEAD_BYTES).read_to_end(&mut head))
        .map_err(read_error)?;
    match has_interpreter(&head) {
        Some(false) => Ok(()),
        Some(true) => Err(JailError::Dynamic { path: path.into() }),
        None => Err(read_error(io::Error::other(
            "not a 64-bit little-endian ELF program (or its program headers are not at its start)",
        ))),
    }
}

/// Whether the 64-bit little-endian ELF image that starts with `head` has a
/// `PT_INTERP` program header; `None` if `head` is not one.
fn has_interpreter(head: &[u8]) -> Option<bool> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let table = usize::try_from(u64_at(0x20)?).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    if entry_size < 4 || count > MAX_PROGRAM_HEADERS {
        return None;
    }
    for index in 0..count {
        let at = table.checked_add(index.checked_mul(entry_size)?)?;
        if u32_at(at)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static program in a jail sees its files at their host paths, a
    /// `/proc` of its own processes and nothing else, as the first process of
    /// its pid namespace. Needs root; `/bin/busybox` is Debian's
    /// busybox-static (scripts/setup) and `/dev/kvm` must exist.
    #[test]
    fn a_jailed_program_sees_only_its_files_and_its_own_processes() {
        let run = tempfile::tempdir().unwrap();
        let dir = SandboxDir::under(run.path(), "pod");
        for made in [dir.shared(), dir.vm_dir(), dir.jail_root()] {
            std::fs::create_dir_all(made).unwrap();
        }
        std::fs::write(dir.shared().join("seen"), "").unwrap();
        let data = run.path().join("vmlinux");
        std::fs::write(&data, "kernel").unwrap();
        let busybox = Path::new("/bin/busybox");
        let jail = Arc::new(Jail::plan(&dir, busybox, &[&data]).unwrap());
        let script = format!(
            "echo pid $$; echo root $(ls /); echo share $(ls {}); echo proc $(ls /proc | grep -v '^[0-9]'); \
             cat {}; touch /new 2>&- || echo root read-only; \
             touch {}/sock && echo vm writable",
            dir.shared().display(),
            data.display(),
            dir.vm_dir().display()
        );
        let mut command = Command::new(busybox);
        command.args(["sh", "-c", &script]).env_clear();
        command.stdout(std::process::Stdio::piped());
        // SAFETY: nothing is prepared.
        let (child, _) =
            unsafe { spawn_confined(&mut command, Some(jail), VmmPrivileges::new(), || Ok(())) }
                .unwrap_or_else(|err| panic!("{err}"));
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let top = run
            .path()
            .components()
            .nth(1)
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [
                "pid 1".to_string(),
                format!("root bin dev proc {top}"),
                "share seen".into(),
                "proc self thread-self".into(),
                "kernelroot read-only".into(),
                "vm writable".into(),
            ],
            "{output:?}"
        );
        assert!(
            dir.vm_dir().join("sock").exists(),
            "the VMM's directory is the host's"
        );
    }

    #[test]
    fn a_failed_step_is_named_with_its_path() {
        let dir = SandboxDir::new("pod");
        let jail = Jail {
            root: cstring(&dir.jail_root()).unwrap(),
            dirs: vec![],
            binds: vec![Bind {
                source: c"/dev/kvm".into(),
                target: c"/run/runv/pod/jail/dev/kvm".into(),
                file: true,
                recursive: false,
                flags: Some(DEVICE),
            }],
            proc: c"/run/runv/pod/jail/proc".into(),
        };
        let err = io::Error::from_raw_os_error(Step::Bind.code(0, libc::ENOENT));
        assert_eq!(
            jail.describe(&err),
            "the VMM's jail: bind /dev/kvm on /run/runv/pod/jail/dev/kvm: No such file or directory"
        );
        let plain = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(jail.describe(&plain), plain.to_string());
    }

    #[test]
    fn the_plan_holds_each_path_at_its_host_path_files_first() {
        let run = tempfile::tempdir().unwrap();
        let dir = SandboxDir::under(run.path(), "pod");
        // The test binary itself is dynamic: plan around the check.
        let mut jail = Jail {
            root: cstring(&dir.jail_root()).unwrap(),
            dirs: vec![],
            binds: vec![],
            proc: cstring(&dir.jail_root().join("proc")).unwrap(),
        };
        let root = dir.jail_root();
        jail.add(&root, &dir.shared(), false, true, None).unwrap();
        // Twice: the second is the same bind and adds nothing.
        for _ in 0..2 {
            let kernel = Path::new("/usr/share/runv/vmlinux");
            jail.add(&root, kernel, true, false, Some(READ_ONLY_DATA))
                .unwrap();
        }
        let targets: Vec<_> = jail.binds.iter().map(|b| b.target.clone()).collect();
        assert_eq!(
            targets,
            [
                cstring(&root.join("usr/share/runv/vmlinux")).unwrap(),
                cstring(&root.join(dir.shared().strip_prefix("/").unwrap())).unwrap(),
            ]
        );
        let usr = cstring(&root.join("usr")).unwrap();
        let runv = cstring(&root.join("usr/share/runv")).unwrap();
        let at = |dir: &CString| jail.dirs.iter().position(|d| d == dir).unwrap();
        assert!(at(&usr) < at(&runv), "parents first: {:?}", jail.dirs);
        assert!(
            !jail
                .dirs
                .contains(&cstring(&root.join("usr/share/runv/vmlinux")).unwrap()),
            "a file's mount point is not a directory"
        );
    }

    #[test]
    fn paths_that_are_not_absolute_and_plain_are_refused() {
        for bad in ["relative", "/a/../b", "/"] {
            assert!(plain_relative(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            plain_relative(Path::new("/dev/kvm")).unwrap(),
            Path::new("dev/kvm")
        );
    }

    #[test]
    fn a_dynamic_program_is_told_from_a_static_one() {
        // This test binary has an interpreter; a header without one has none.
        let own = std::env::current_exe().unwrap();
        assert!(matches!(check_static(&own), Err(JailError::Dynamic { .. })));
        let mut elf = vec![0u8; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(has_interpreter(&elf), Some(false));
        elf[0x40..0x44].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert_eq!(has_interpreter(&elf), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
    }
}

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

mod enter;
mod spawn;

pub use spawn::spawn_confined;

use crate::paths::SandboxDir;
use nix::errno::Errno;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

/// Errors of planning a jail or of spawning the VMM in it.
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
    /// A step of entering the jail failed in the VMM's child.
    #[error("the VMM's jail: {step} {what}: {}", .errno.desc())]
    Enter {
        step: &'static str,
        what: String,
        errno: Errno,
    },
    /// The spawn failed otherwise.
    #[error("{0}")]
    Spawn(#[source] io::Error),
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
mod tests;

//! Host mounts of a container's share: its rootfs from containerd's snapshot
//! mounts and its bind volumes, under `<sandbox dir>/shared/<cid>/`.

use containerd_shim::protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors of setting up or tearing down the share's mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {what} on {target}: {message}")]
    Mount {
        what: String,
        target: PathBuf,
        message: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("unmount {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MountError + '_ {
    move |source| MountError::Io {
        path: path.into(),
        source,
    }
}

/// Mounts the container's rootfs on `target`: containerd's snapshot `mounts`
/// (overlay, bind, ...) when it gave some, else a bind of the bundle's rootfs.
pub fn mount_rootfs(
    mounts: &[Mount],
    bundle_rootfs: &Path,
    target: &Path,
) -> Result<(), MountError> {
    fs::create_dir_all(target).map_err(io_error(target))?;
    if mounts.is_empty() {
        return bind(bundle_rootfs, target, false);
    }
    for m in mounts {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            target,
        )
        .map_err(|err| MountError::Mount {
            what: format!("{} {}", m.type_, m.source),
            target: target.into(),
            message: err.to_string(),
        })?;
    }
    Ok(())
}

/// Bind-mounts `source` (a file or a directory) on `target`, creating `target`
/// as the same kind; read-only if asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    let meta = fs::metadata(source).map_err(io_error(source))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    if meta.is_dir() {
        fs::create_dir_all(target).map_err(io_error(target))?;
    } else if !target.exists() {
        fs::File::create(target).map_err(io_error(target))?;
    }
    let failed = |err: nix::Error| MountError::Mount {
        what: format!("bind {}", source.display()),
        target: target.into(),
        message: err.to_string(),
    };
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(failed)?;
    if readonly {
        let remount = flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(failed)?;
    }
    Ok(())
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info).map_err(io_error(info))?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything at or under `dir` (lazily, so a busy mount still goes),
/// then removes `dir` with what is left in it.
pub fn unmount_and_remove(dir: &Path) -> Result<(), MountError> {
    for point in mounts_under(dir)? {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(MountError::Unmount {
                    path: point,
                    source,
                })
            }
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountError::Io {
            path: dir.into(),
            source,
        }),
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }

    #[test]
    fn unmount_and_remove_takes_a_plain_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("c1");
        fs::create_dir_all(tree.join("rootfs/etc")).unwrap();
        fs::write(tree.join("rootfs/etc/hosts"), "x").unwrap();
        unmount_and_remove(&tree).unwrap();
        assert!(!tree.exists());
        unmount_and_remove(&tree).unwrap();
    }
}

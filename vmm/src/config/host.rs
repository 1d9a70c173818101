//! What a [`VmConfig`] asks of the host: files that exist and are readable,
//! directories for its sockets, socket paths not taken.

use super::{ConfigError, ConsoleConfig, FsConfig, VmConfig};
use std::path::{Path, PathBuf};

/// The size of a regular file this process can open.
fn file_size(what: &'static str, path: &Path) -> Result<u64, ConfigError> {
    let file_err = |source| ConfigError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(file_err)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            what,
            path: path.to_owned(),
        });
    }
    // Opening proves it is readable by this process.
    std::fs::File::open(path).map_err(file_err)?;
    Ok(meta.len())
}

fn require_parent_dir(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::NoParentDir {
            what,
            path: path.to_owned(),
        })
    }
}

/// A socket path free, in a directory that exists.
fn free_socket(
    what: &'static str,
    path: &Path,
    in_use: fn(PathBuf) -> ConfigError,
) -> Result<(), ConfigError> {
    if path.symlink_metadata().is_ok() {
        return Err(in_use(path.to_owned()));
    }
    require_parent_dir(what, path)
}

fn share_dir(share: &FsConfig) -> Result<(), ConfigError> {
    match std::fs::metadata(&share.path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::FsNotDir {
            tag: share.tag.clone(),
            path: share.path.clone(),
        }),
        Err(source) => Err(ConfigError::FsPath {
            tag: share.tag.clone(),
            path: share.path.clone(),
            source,
        }),
    }
}

/// Checks the files and sockets `config` names.
pub(super) fn check(config: &VmConfig) -> Result<(), ConfigError> {
    let kernel_size = file_size("kernel", &config.kernel)?;
    if kernel_size == 0 {
        return Err(ConfigError::EmptyKernel(config.kernel.clone()));
    }
    if let Some(initrd) = &config.initrd {
        let size = file_size("initrd", initrd)?;
        if size + kernel_size >= config.memory_mib << 20 {
            return Err(ConfigError::InitrdTooLarge {
                path: initrd.clone(),
                size_mib: size.div_ceil(1 << 20),
                memory_mib: config.memory_mib,
            });
        }
    }
    for disk in &config.disks {
        file_size("disk", &disk.path)?;
    }
    config.fs.iter().try_for_each(share_dir)?;
    if let Some(sock) = &config.api_sock {
        free_socket("api socket", sock, ConfigError::ApiSocketInUse)?;
    }
    if let ConsoleConfig::File(path) = &config.console {
        require_parent_dir("console file", path)?;
    }
    if let Some(vsock) = &config.vsock {
        free_socket("vsock socket", &vsock.uds, ConfigError::VsockSocketInUse)?;
    }
    for (what, dir) in [
        ("--snapshot-dir", &config.snapshot_dir),
        ("--restore-from", &config.restore_from),
    ] {
        if let Some(dir) = dir.as_ref().filter(|dir| !dir.is_dir()) {
            return Err(ConfigError::NotADir {
                what,
                path: dir.clone(),
            });
        }
    }
    Ok(())
}

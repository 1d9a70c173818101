//! `runv template make`: the shim makes the VM template of one pod shape
//! (`containerd-shim-runv-v2 --make-template`), as it would at the first pod
//! of that shape, with the same config, VMM, kernel and initrd.

use crate::args::TemplateMakeArgs;
use crate::command::find_on_path;
use crate::containerd::SHIM_BINARY;
use std::path::PathBuf;
use std::process::Command;

/// Why the shim could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No shim on PATH.
    #[error("{SHIM_BINARY} is not on PATH: containerd would not find it either")]
    NoShim,
    /// The shim did not run.
    #[error("run {path}: {source}")]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the shim's `--make-template` with `args`' flags, its output and
/// errors on this process's; whether it made the template (or found it).
pub fn make(args: &TemplateMakeArgs) -> Result<bool, TemplateError> {
    let shim = find_on_path(SHIM_BINARY).ok_or(TemplateError::NoShim)?;
    let status = Command::new(&shim)
        .arg("--make-template")
        .args(&args.flags)
        .status()
        .map_err(|source| TemplateError::Run { path: shim, source })?;
    Ok(status.success())
}

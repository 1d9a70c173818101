//! Starts a runv-vmm by hand in the jail and with the privileges the shim
//! gives it, or with the privileges only (`--no-jail`), and waits for it:
//! for bench/vmm-boot, which measures what the jail costs.
//!
//! ```text
//! runv-vmm-jailed [--no-jail] --sandbox DIR [--data FILE]... -- VMM [ARGS...]
//! ```
//!
//! `DIR` stands for a sandbox directory (its `shared/`, `vm/` and `jail/`
//! are made if missing); each `--data` file (kernel, initrd) is bound
//! read-only. Prints `jail-spawn-us=N` (fork to exec) on stderr and exits
//! with the VMM's status.

use containerd_shim_runv_v2::jail::{self, Jail};
use containerd_shim_runv_v2::paths::SandboxDir;
use containerd_shim_runv_v2::privileges::VmmPrivileges;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

const USAGE: &str =
    "usage: runv-vmm-jailed [--no-jail] --sandbox DIR [--data FILE]... -- VMM [ARGS...]";

/// Why the helper did not run a VMM.
#[derive(Debug, thiserror::Error)]
enum JailedError {
    /// The command line is not of the form in [`USAGE`].
    #[error("{0}")]
    Usage(&'static str),
    /// An argument the helper does not know.
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    /// The sandbox directory cannot be made.
    #[error("{path}: {source}")]
    SandboxDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The jail cannot be planned or the VMM not started in it.
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    /// Waiting for the VMM failed.
    #[error("wait: {0}")]
    Wait(std::io::Error),
}

/// The parsed command line.
struct Args {
    jailed: bool,
    sandbox: PathBuf,
    data: Vec<PathBuf>,
    vmm: PathBuf,
    vmm_args: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, JailedError> {
    let (mut jailed, mut sandbox, mut data) = (true, None, Vec::new());
    loop {
        match args.next().as_deref() {
            Some("--no-jail") => jailed = false,
            Some("--sandbox") => sandbox = args.next().map(PathBuf::from),
            Some("--data") => data.push(PathBuf::from(
                args.next()
                    .ok_or(JailedError::Usage("--data needs a path"))?,
            )),
            Some("--") => break,
            Some(other) => return Err(JailedError::UnknownArgument(other.into())),
            None => return Err(JailedError::Usage("no VMM after --")),
        }
    }
    let vmm = args
        .next()
        .ok_or(JailedError::Usage("no VMM after --"))?
        .into();
    Ok(Args {
        jailed,
        sandbox: sandbox.ok_or(JailedError::Usage("--sandbox is required"))?,
        data,
        vmm,
        vmm_args: args.collect(),
    })
}

fn run(args: Args) -> Result<u8, JailedError> {
    let parent = args.sandbox.parent().unwrap_or(Path::new("/"));
    let name = args
        .sandbox
        .file_name()
        .ok_or(JailedError::Usage("--sandbox names no directory"))?
        .to_string_lossy();
    let dir = SandboxDir::under(parent, &name);
    let sandbox_dir = |source| JailedError::SandboxDir {
        path: dir.path().to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir.shared()).map_err(sandbox_dir)?;
    dir.create_vmm_dirs().map_err(sandbox_dir)?;
    let jail = if args.jailed {
        let data: Vec<&Path> = args.data.iter().map(PathBuf::as_path).collect();
        Some(Arc::new(Jail::plan(&dir, &args.vmm, &data)?))
    } else {
        None
    };
    let mut command = Command::new(&args.vmm);
    command.args(&args.vmm_args).env_clear();
    // SAFETY: nothing is prepared.
    let (mut child, took) =
        unsafe { jail::spawn_confined(&mut command, jail, VmmPrivileges::new(), || Ok(())) }?;
    eprintln!("jail-spawn-us={}", took.as_micros());
    let status = child.wait().map_err(JailedError::Wait)?;
    Ok(status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(1))
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("runv-vmm-jailed: {err}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

//! `runv`: runv's operator tool, in the manner of kata-ctl.
//!
//! - `runv check`: can this host run runv pods (KVM usable and fast, CPU
//!   support, guest assets, cgroups, containerd naming the runtime);
//! - `runv env`: versions and paths of runv's parts and host facts, for bug
//!   reports;
//! - `runv ps`: the pods on this host, with their VMM's pid, vCPUs, memory
//!   and uptime.
//!
//! The command's output goes to stdout; diagnostics go through `log` to
//! stderr.

mod args;
mod cgroup;
mod check;
mod command;
mod containerd;
mod cpu;
mod env;
mod files;
mod probe;
mod ps;

use args::Command;
use std::process::ExitCode;

/// Why a command could not print its answer.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// The command line is invalid.
    #[error("{0}\n{usage}", usage = args::USAGE)]
    Args(#[from] args::ArgsError),
    /// The answer could not be encoded as JSON.
    #[error("encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `runv ps` could not list the pods.
    #[error(transparent)]
    Ps(#[from] ps::PsError),
}

fn main() -> ExitCode {
    protocol::logger::init("runv", log::LevelFilter::Info);
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            log::error!("{err}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command: whether it succeeded (for `check`, whether all passed).
fn run() -> Result<bool, MainError> {
    match args::parse(std::env::args().skip(1))? {
        Command::Help => {
            println!("{}", args::USAGE);
            Ok(true)
        }
        Command::Version => {
            println!("runv {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        Command::Check(args) => Ok(check::print(&check::run_all(&args), args.json)?),
        Command::Env(args) => {
            env::print(&env::collect(&args.config), args.json)?;
            Ok(true)
        }
        Command::Ps(args) => {
            ps::print(&ps::list(&args.run_root)?, args.json)?;
            Ok(true)
        }
    }
}

//! `runv`: runv's operator tool, in the manner of kata-ctl.
//!
//! - `runv check`: can this host run runv pods (KVM usable and fast, CPU
//!   support, guest assets, cgroups, containerd naming the runtime);
//! - `runv env`: versions and paths of runv's parts and host facts, for bug
//!   reports;
//! - `runv ps`: the pods on this host, with their VMM's pid, vCPUs, memory
//!   and uptime;
//! - `runv metrics`: a Prometheus endpoint for all pods on the node;
//! - `runv trace POD`: one pod's start timeline;
//! - `runv template make`: a VM template made ahead of its pods.
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
mod metrics;
mod probe;
mod ps;
mod template;
#[cfg(test)]
mod test_utils;
mod trace;

use args::Command;
use std::io::Write;
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
    /// `runv metrics` could not listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// `runv trace` could not read the pod's timeline.
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    /// `runv template make` could not run the shim.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// The pod has no timeline recorded.
    #[error("pod {0}: no start timeline recorded (booting, or no such pod)")]
    NoTrace(String),
    /// The answer could not be written to stdout.
    #[error("write to stdout: {0}")]
    Output(#[source] std::io::Error),
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
        Command::Help => output(&format!("{}\n", args::USAGE)).map(|()| true),
        Command::Version => output(&format!("runv {}\n", env!("CARGO_PKG_VERSION"))).map(|()| true),
        Command::Check(args) => {
            let outcomes = check::run_all(&args);
            output(&check::render(&outcomes, args.json)?)?;
            Ok(check::all_passed(&outcomes))
        }
        Command::Env(args) => {
            output(&env::render(&env::collect(&args.config), args.json)?).map(|()| true)
        }
        Command::Ps(args) => {
            let pods = ps::list(&args.run_root)?;
            output(&ps::render(&pods, args.json)?)?;
            ps::log_problems(&pods);
            Ok(true)
        }
        Command::Metrics(args) => {
            let listener =
                std::net::TcpListener::bind(&args.listen).map_err(|source| MainError::Listen {
                    addr: args.listen.clone(),
                    source,
                })?;
            log::info!("serving metrics on http://{}/metrics", args.listen);
            let mut collector = metrics::Collector::new(&args.run_root);
            metrics::serve(&listener, || collector.scrape());
            Ok(true)
        }
        Command::Trace(args) => {
            let phases = trace::read(&args.run_root, &args.pod)?
                .ok_or_else(|| MainError::NoTrace(args.pod.clone()))?;
            output(&trace::render(&phases)).map(|()| true)
        }
        Command::TemplateMake(args) => Ok(template::make(&args)?),
    }
}

/// Writes the command's answer to stdout; a reader that went away (`| head`)
/// is not an error.
fn output(text: &str) -> Result<(), MainError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(MainError::Output(err)),
        _ => Ok(()),
    }
}

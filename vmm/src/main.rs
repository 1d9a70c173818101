//! `runv-vmm`: the VMM process of one pod.

use std::process::ExitCode;
use std::time::Instant;
use vmm::builder::BuildError;
use vmm::cli::{self, CliError, Command};
use vmm::config::ConfigError;
use vmm::runtime::RunError;
use vmm::seccomp::SeccompError;

/// Why the VMM could not run its VM, one variant per step of `run`.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// The command line is invalid.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// The config or the flags laid over it are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Blocking the stop signals failed.
    #[error("cannot set up the stop signals: {0}")]
    Signals(std::io::Error),
    /// The seccomp filters cannot be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Running the VM failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Before any thread starts, so that every thread logs through the sink
    // (one write(2) on fd 2, allowed by each thread's seccomp filter).
    protocol::logger::init("runv-vmm", log::LevelFilter::Info);
    match run(process_start) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            log::error!("{err}");
            ExitCode::from(2)
        }
    }
}

/// Returns the exit status for a VM that ran, or the error that kept it from running.
fn run(process_start: Instant) -> Result<u8, MainError> {
    let (config, flags) = match cli::parse(std::env::args().skip(1))? {
        Command::Help => {
            println!("{}", cli::USAGE);
            return Ok(0);
        }
        Command::Version => {
            println!("runv-vmm {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Command::Run { config, flags } => (config, flags),
    };
    let config = vmm::config::load(config.as_deref(), *flags)?;
    // Before the first thread starts (device threads start with their
    // devices): each thread inherits the blocked stop signals, and confines
    // itself as it starts.
    let signals = vmm::signals::StopSignals::new().map_err(MainError::Signals)?;
    vmm::seccomp::prepare(config.seccomp)?;
    let vmm = vmm::builder::build_microvm(&config, process_start)?;
    let exit = vmm.run(signals)?;
    let code = exit.exit_code();
    if code == 0 {
        log::info!("{exit}");
    } else {
        log::error!("{exit}");
    }
    Ok(code)
}

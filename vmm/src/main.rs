//! `runv-vmm`: the VMM process of one pod.

use std::process::ExitCode;
use std::time::Instant;
use vmm::cli::{self, Command};

fn main() -> ExitCode {
    let process_start = Instant::now();
    match run(process_start) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("runv-vmm: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Returns the exit status for a VM that ran, or the error that kept it from running.
fn run(process_start: Instant) -> Result<u8, String> {
    let (config, flags) = match cli::parse(std::env::args().skip(1)).map_err(|e| e.to_string())? {
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
    let config = vmm::config::load(config.as_deref(), *flags).map_err(|e| e.to_string())?;
    // Before the first thread starts (device threads start with their
    // devices): each thread inherits the blocked stop signals, and confines
    // itself as it starts.
    let signals = vmm::signals::StopSignals::new()
        .map_err(|e| format!("cannot set up the stop signals: {e}"))?;
    vmm::seccomp::prepare(config.seccomp).map_err(|e| e.to_string())?;
    let vmm = vmm::builder::build_microvm(&config, process_start).map_err(|e| e.to_string())?;
    let exit = vmm.run(signals).map_err(|e| e.to_string())?;
    let code = exit.exit_code();
    if code == 0 {
        eprintln!("runv-vmm: {exit}");
    } else {
        eprintln!("runv-vmm: error: {exit}");
    }
    Ok(code)
}

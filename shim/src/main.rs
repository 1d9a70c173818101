//! `containerd-shim-runv-v2`: the containerd shim of runtime `io.pouch.runv.v2`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-v") => {
            println!(
                "containerd-shim-runv-v2:\n  Version:  {}",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "containerd-shim-runv-v2: the task service is not implemented yet; only -v works"
            );
            ExitCode::from(2)
        }
    }
}

//! `runv-vmm`: the VMM process of one pod.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("runv-vmm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("runv-vmm: booting guests is not implemented yet; only --version works");
            ExitCode::from(2)
        }
    }
}

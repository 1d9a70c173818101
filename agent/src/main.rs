//! runv-agent: the init process (PID 1) of a runv guest.

mod init;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("runv-agent: must run as PID 1 (the init process) of a runv guest");
        return ExitCode::FAILURE;
    }
    if let Err(err) = init::mount_pseudo_filesystems() {
        eprintln!("runv-agent: {err}");
    }
    if let Err(err) = init::signal_boot_timer() {
        eprintln!("runv-agent: {err}");
    }
    println!("{}", protocol::BOOT_MARKER);
    // PID 1 must never return: powering off is the only way out.
    let err = init::power_off();
    eprintln!("runv-agent: {err}");
    ExitCode::FAILURE
}

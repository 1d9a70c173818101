//! runv-agent: the init process (PID 1) of a runv guest, or, in host mode, the same
//! container service as an ordinary process for tests.

mod cgroup;
mod console;
mod container;
mod error;
mod exec_seccomp;
mod guest;
mod host;
mod init;
mod mount;
mod network;
mod oom;
mod pid_namespace;
mod process;
mod reaper;
mod refresh;
mod rpc;
mod sandbox;
mod shutdown;
mod spawn;
mod stdio_server;
mod sysctl;

use std::process::ExitCode;

fn main() -> ExitCode {
    // First, for every role of this binary (init, host mode, the spawn
    // helper, the PID namespace holder): all of them log to stderr, which
    // for PID 1 is the guest's console.
    protocol::logger::init("runv-agent", log::LevelFilter::Info);
    // The pod's PID namespace holder is PID 1 of its namespace: recognised
    // before the guest's PID 1 (whose kernel command line, written by the
    // shim, never carries this argument).
    if std::env::args().nth(1).as_deref() == Some(pid_namespace::HOLDER_ARG) {
        return pid_namespace::holder_main();
    }
    // As PID 1 the arguments are whatever the kernel passed on from its command
    // line: never read them as host-mode flags.
    if std::process::id() == 1 {
        return init_mode();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(spawn::SPAWN_ARG) {
        return spawn::helper_main(&args[1..]);
    }
    if args.is_empty() {
        log::error!(
            "must run as PID 1 of a runv guest, or in host mode: \
             runv-agent --listen unix:///PATH --state-dir DIR"
        );
        return ExitCode::from(2);
    }
    host_mode(&args)
}

fn host_mode(args: &[String]) -> ExitCode {
    let parsed = match host::HostArgs::parse(args) {
        Ok(parsed) => parsed,
        Err(err) => {
            log::error!("{err}");
            return ExitCode::from(2);
        }
    };
    match host::run(&parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn init_mode() -> ExitCode {
    if !std::env::args().any(|arg| arg == init::REROOTED_ARG) {
        // Returns only if the move failed; init then goes on in the initramfs.
        let err = init::leave_initramfs();
        log::warn!("{err}");
    }
    if let Err(err) = init::mount_pseudo_filesystems() {
        log::error!("{err}");
    }
    if let Err(err) = init::tune_free_page_reporting() {
        log::warn!("{err}");
    }
    if let Err(err) = init::signal_boot_timer() {
        log::warn!("{err}");
    }
    // The marker tests and benches wait for, exactly as they match it, on
    // stdout (the console, as stderr is): not a log record.
    println!("{}", protocol::BOOT_MARKER);
    if guest::has_vsock_device() {
        if let Err(err) = guest::run() {
            log::error!("{err}");
        }
    }
    // PID 1 must never return: powering off is the only way out.
    let err = init::power_off();
    log::error!("{err}");
    ExitCode::FAILURE
}

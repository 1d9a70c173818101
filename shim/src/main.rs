//! `containerd-shim-runv-v2`: the containerd shim of runtime `io.pouch.runv.v2`.
//! Each pod runs in its own runv microVM; the guest agent runs its containers.

mod bootstrap;
mod container;
mod error;
mod events;
mod exit;
mod make_template;
mod metrics;
mod mounts;
mod network;
mod oom;
mod options;
mod pod;
mod pod_cgroup;
mod pod_files;
mod pod_vm;
mod process;
mod publish;
mod sandbox;
mod serve;
mod share;
mod shim;
mod spec;
mod stdio;
mod task;
mod vm;
mod watchers;

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use containerd_shim_runv_v2::{config, jail, paths, privileges, start_phases, text, vmm_api};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The runtime name containerd knows runv by.
const RUNTIME_ID: &str = "io.pouch.runv.v2";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-v" | "--version" | "-version") => {
            println!(
                "containerd-shim-runv-v2:\n  Runtime: {RUNTIME_ID}\n  Version: {}",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        // containerd 2.x asks for the runtime's description (a RuntimeInfo).
        Some("-info" | "--info") => print_info(),
        // `runv template make`.
        Some("--make-template") => {
            protocol::logger::init("containerd-shim-runv-v2", log::LevelFilter::Info);
            let args: Vec<String> = std::env::args().skip(2).collect();
            match make_template::run(&args) {
                Ok(dir) => {
                    println!("{}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("containerd-shim-runv-v2: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            let args: Vec<OsString> = std::env::args_os().skip(1).collect();
            if !is_daemon(&args) {
                // `start` and `delete`.
                containerd_shim::run::<shim::RunvShim>(RUNTIME_ID, None);
                return ExitCode::SUCCESS;
            }
            // Before any thread exists: a mount namespace is per thread.
            let served = share::enter_own_mount_namespace()
                .map_err(|err| err.to_string())
                .and_then(|()| {
                    serve::run::<shim::RunvShim>(RUNTIME_ID, &args).map_err(|err| err.to_string())
                });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("containerd-shim-runv-v2: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Whether `args` start the long-running shim (a socket and no action), not
/// `start` or `delete`.
fn is_daemon(args: &[OsString]) -> bool {
    containerd_shim::parse(args)
        .map(|flags| flags.action.is_empty() && !flags.socket.is_empty())
        .unwrap_or(false)
}

/// A failed `-info`.
#[derive(Debug, thiserror::Error)]
enum InfoError {
    /// The RuntimeInfo could not be encoded.
    #[error("{0}")]
    Encode(#[source] containerd_shim::protos::protobuf::Error),
    /// It could not be written to stdout.
    #[error("{0}")]
    Write(#[source] std::io::Error),
}

fn print_info() -> ExitCode {
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let written = info
        .write_to_bytes()
        .map_err(InfoError::Encode)
        .and_then(|bytes| {
            std::io::stdout()
                .write_all(&bytes)
                .map_err(InfoError::Write)
        });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("containerd-shim-runv-v2: -info: {err}");
            ExitCode::FAILURE
        }
    }
}

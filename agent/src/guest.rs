//! Guest mode: the agent as PID 1 of a runv VM. After the init duties it
//! serves the agent API on vsock port 1024 and the stdio streams on port
//! 1025, until DestroySandbox powers the VM off. The sandbox's shared
//! directory (virtio-fs tag `runv`) is mounted by the first CreateSandbox.

use crate::host::{self, HostError};
use crate::rpc::AgentService;
use crate::sandbox::SandboxHome;
use crate::{init, stdio_server};
use std::path::Path;
use std::sync::{Arc, Once};

/// Where containers' state lives in the guest.
pub const STATE_DIR: &str = "/run/runv-agent";

/// virtio device id of a socket device, as sysfs shows it.
const VIRTIO_ID_VSOCK: &str = "0x0013";

/// Whether the VM has a virtio-vsock device: without one there is nobody to
/// serve, and init powers off after its boot marker (a bare boot test).
pub fn has_vsock_device() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.filter_map(Result::ok).any(|device| {
        std::fs::read_to_string(device.path().join("device"))
            .is_ok_and(|id| id.trim() == VIRTIO_ID_VSOCK)
    })
}

/// Mounts the sandbox's shared directory, once: at the first CreateSandbox,
/// not at boot, so that a VM snapshot of the ready agent (a template) holds
/// no file system session, and each guest started from it begins its own on
/// its own share.
pub fn mount_shared_dir_once() {
    static MOUNTED: Once = Once::new();
    MOUNTED.call_once(|| {
        if let Err(err) =
            init::mount_shared_dir(protocol::SHARED_FS_TAG, protocol::GUEST_SHARED_DIR)
        {
            // A VM without the share still serves (containers on other storage).
            log::warn!("{err}");
        }
    });
}

/// Serves the sandbox; returns only on a setup error.
pub fn run() -> Result<(), HostError> {
    if let Err(err) = init::bring_up_loopback() {
        log::warn!("{err}");
    }
    let sandbox = host::start_sandbox(Path::new(STATE_DIR), SandboxHome::guest())?;
    let stdio = protocol::vsock::listen(protocol::stdio::AGENT_STDIO_VSOCK_PORT)
        .map_err(host::setup("listen on the stdio vsock port"))?;
    stdio_server::spawn_accepting(
        move || protocol::vsock::accept(&stdio),
        Arc::clone(&sandbox),
    )
    .map_err(host::setup("start the stdio listener"))?;
    let addr = format!("vsock://-1:{}", protocol::AGENT_VSOCK_PORT);
    let server_error = |source| HostError::Server {
        path: addr.clone(),
        source,
    };
    let service = AgentService::new(sandbox, true);
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(server_error)?
        .register_service(protocol::agent::create_agent(Arc::new(service)));
    server.start().map_err(server_error)?;
    loop {
        std::thread::park();
    }
}

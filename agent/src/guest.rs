//! Guest mode: the agent as PID 1 of a runv VM. After the init duties it
//! mounts the sandbox's shared directory (virtio-fs tag `runv`) and serves
//! the agent API on vsock port 1024 and the stdio streams on port 1025, until
//! DestroySandbox powers the VM off.

use crate::host::{self, HostError};
use crate::rpc::AgentService;
use crate::{init, stdio_server};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

/// Where containers' state lives in the guest.
pub const STATE_DIR: &str = "/run/runv-agent";
/// Where the sandbox's shared directory (virtio-fs) is mounted in the guest.
pub const SHARED_DIR: &str = "/run/runv/shared";
/// virtio-fs tag of the shared directory.
pub const SHARED_FS_TAG: &str = "runv";

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

/// Serves the sandbox; returns only on a setup error.
pub fn run() -> Result<(), HostError> {
    if let Err(err) = init::mount_shared_dir(SHARED_FS_TAG, SHARED_DIR) {
        // A VM without the share still serves (containers on other storage).
        eprintln!("runv-agent: {err}");
    }
    if let Err(err) = init::bring_up_loopback() {
        eprintln!("runv-agent: {err}");
    }
    let sandbox = host::start_sandbox(Path::new(STATE_DIR))?;
    let stdio = vsock_listener(protocol::stdio::AGENT_STDIO_VSOCK_PORT)
        .map_err(host::setup("listen on the stdio vsock port"))?;
    stdio_server::spawn_accepting(move || vsock_accept(&stdio), Arc::clone(&sandbox))
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

fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(socket.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on a socket this function owns.
    if unsafe { libc::listen(socket.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Accepts one vsock connection. It is handed on as a `UnixStream`: the stdio
/// code only reads, writes and shuts down, which vsock stream sockets serve
/// alike.
fn vsock_accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    // SAFETY: accept without an address on a listening socket we own.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh connected socket owned by nothing else.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

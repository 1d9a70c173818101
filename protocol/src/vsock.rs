//! Guest-side AF_VSOCK stream sockets (std has none): listen, accept and
//! connect. A connected socket is handed out as a `UnixStream`, whose read,
//! write and shutdown are the same system calls for vsock streams.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The host's context id, as the guest dials it.
pub const HOST_CID: u32 = 2;

fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A socket listening on `port` of any local context id.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let socket = stream_socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            ADDR_LEN,
        )
    })?;
    // SAFETY: listen on a socket this function owns.
    check(unsafe { libc::listen(socket.as_raw_fd(), 128) })?;
    Ok(socket)
}

/// Accepts one connection on `listener` (from [`listen`]).
pub fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    // SAFETY: accept without an address on a listening socket.
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

/// Connects to `port` of context `cid`.
pub fn connect(cid: u32, port: u32) -> io::Result<UnixStream> {
    let socket = stream_socket()?;
    let addr = address(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            ADDR_LEN,
        )
    })?;
    Ok(UnixStream::from(socket))
}

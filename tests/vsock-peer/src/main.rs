//! `vsock-peer serve PORT`: the guest end of the vsock suite. Each connection
//! starts with one command line:
//!
//! - `sink`: read to end of file, answer the SHA-256 of what came;
//! - `send N`: send N pattern bytes, then close;
//! - `echo`: send back everything until end of file;
//! - `dial PORT N`: connect to the host (CID 2) on PORT, send N pattern bytes,
//!   half-close, and answer `sent <what the host replied>` or `refused <error>`;
//! - `exit`: end the process (the init script then reboots).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use vsock_peer::{fill_pattern, Digester};

const HOST_CID: u32 = 2;

fn vsock_socket() -> io::Result<OwnedFd> {
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

fn listen(port: u32) -> io::Result<OwnedFd> {
    let socket = vsock_socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::bind(socket.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) })?;
    // SAFETY: listen on a socket we own.
    check(unsafe { libc::listen(socket.as_raw_fd(), 128) })?;
    Ok(socket)
}

fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
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
    // SAFETY: `fd` is a fresh connected socket; a UnixStream only reads,
    // writes and shuts down, which vsock stream sockets support alike.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

fn dial(port: u32) -> io::Result<UnixStream> {
    let socket = vsock_socket()?;
    let addr = address(HOST_CID, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::connect(socket.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) })?;
    Ok(UnixStream::from(socket))
}

fn send_pattern(stream: &mut UnixStream, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], offset);
        stream.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

fn number(word: Option<&str>) -> io::Result<u64> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "expected a number"))
}

fn serve(stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let mut out = stream;
    match words.next() {
        Some("sink") => {
            let mut digest = Digester::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                digest.update(&buf[..n]);
            }
            writeln!(out, "{}", digest.hex())
        }
        Some("send") => send_pattern(&mut out, number(words.next())?),
        Some("echo") => {
            io::copy(&mut reader, &mut out)?;
            Ok(())
        }
        Some("dial") => {
            let port = number(words.next())? as u32;
            let len = number(words.next())?;
            match dial(port) {
                Ok(mut host) => {
                    send_pattern(&mut host, len)?;
                    host.shutdown(std::net::Shutdown::Write)?;
                    let mut reply = String::new();
                    host.read_to_string(&mut reply)?;
                    writeln!(out, "sent {}", reply.trim())
                }
                Err(err) => writeln!(out, "refused {err}"),
            }
        }
        Some("exit") => std::process::exit(0),
        _ => writeln!(out, "unknown command {line:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.as_slice() {
        [_, serve, port] if serve == "serve" => port.parse::<u32>().ok(),
        _ => None,
    };
    let Some(port) = port else {
        eprintln!("usage: vsock-peer serve PORT");
        std::process::exit(2);
    };
    let listener = match listen(port) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("vsock-peer: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    println!("vsock-peer: listening on {port}");
    loop {
        match accept(&listener) {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(err) = serve(stream) {
                        eprintln!("vsock-peer: {err}");
                    }
                });
            }
            Err(err) => eprintln!("vsock-peer: accept: {err}"),
        }
    }
}

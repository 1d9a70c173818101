//! The host side of runv-vmm's hybrid vsock (Firecracker's protocol): connect to
//! the VMM's Unix socket and ask for a guest port.
//!
//! ```text
//! client → VMM:  CONNECT <port>\n
//! VMM → client:  OK <host-port>\n      (or the socket closes: nobody listens)
//! ```

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest handshake answer accepted.
const MAX_ANSWER_LEN: usize = 64;

/// Connects through the hybrid socket `uds` to guest `port`: the stream after the
/// `OK` line, or `ConnectionRefused` if the guest does not accept. The whole
/// handshake (the connect, which waits while the VMM's backlog is full, the
/// `CONNECT` line and the answer) must end within `timeout`, or fails with
/// `TimedOut`.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let stream = connect_by(uds, deadline)?;
    let mut timed = DeadlineStream {
        stream: &stream,
        deadline,
    };
    timed
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|err| late(err, "sending CONNECT"))?;
    let answer = read_answer(&mut timed)?;
    if !answer.starts_with(b"OK ") || answer.last() != Some(&b'\n') {
        let answer = String::from_utf8_lossy(&answer).into_owned();
        return Err(io::Error::other(format!("hybrid vsock answer {answer:?}")));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// Reads the answer line, a byte at a time (what follows it is the guest's),
/// up to its newline or [`MAX_ANSWER_LEN`] + 1 bytes, by the stream's deadline.
fn read_answer(stream: &mut DeadlineStream) -> io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.last() != Some(&b'\n') && answer.len() <= MAX_ANSWER_LEN {
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::ConnectionRefused.into()),
            Ok(_) => answer.push(byte[0]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(late(err, "waiting for the answer")),
        }
    }
    Ok(answer)
}

/// Connects a stream socket to `uds`. A full backlog makes the kernel wait
/// for room up to the socket's send timeout, set to the time left before
/// `deadline`.
///
/// `uds` is in a directory the VMM writes: its last component is opened
/// without following a symlink and must be a socket, and the connect goes
/// through that open node (`/proc/self/fd/N`), so a VMM cannot point the
/// caller at another socket on the host.
pub fn connect_by(uds: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let node = open_socket_node(uds)?;
    let addr = socket_address(Path::new(&format!("/proc/self/fd/{}", node.as_raw_fd())))?;
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    loop {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        // SAFETY: `addr` is a valid sockaddr_un and its size is passed with it.
        let ret = unsafe {
            libc::connect(
                stream.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            return Ok(stream);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(late(err, "connecting (the VMM's backlog is full)"));
        }
    }
}

/// `path` opened as an `O_PATH` node without following a symlink in its last
/// component; an error naming it unless it is a socket.
fn open_socket_node(path: &Path) -> io::Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket path has a NUL byte"))?;
    // SAFETY: `c_path` is a valid C string for the call; the result is checked.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let node = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat, which outlives the call, for an open fd.
    if unsafe { libc::fstat(node.as_raw_fd(), &mut stat) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket", path.display()),
        ));
    }
    Ok(node)
}

/// The address of the socket at `path`.
fn socket_address(path: &Path) -> io::Result<libc::sockaddr_un> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // One byte stays zero: the path's terminator.
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

/// A stream whose every read and write ends by `deadline` (`TimedOut` after
/// it): the socket's timeout is set to the time left before each call, so a
/// peer that trickles bytes cannot stretch the whole exchange.
pub struct DeadlineStream<'a> {
    /// The socket.
    pub stream: &'a UnixStream,
    /// When every read and write must have ended.
    pub deadline: Instant,
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream
            .set_read_timeout(Some(time_left(self.deadline)?))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream
            .set_write_timeout(Some(time_left(self.deadline)?))?;
        let mut stream = self.stream;
        stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The time left before `deadline`, or `TimedOut` once it passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "hybrid vsock handshake timed out",
        ));
    }
    Ok(left)
}

/// `err`, as `TimedOut` if it is a socket timeout that expired during `step`.
fn late(err: io::Error, step: &str) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("hybrid vsock handshake timed out {step}"),
        )
    } else {
        err
    }
}

/// [`connect`], retried every `interval` until the guest accepts or `timeout`
/// passes; `give_up` is asked before each retry and ends the wait early with its
/// error (e.g. the VMM exited).
pub fn connect_within(
    uds: &Path,
    port: u32,
    timeout: Duration,
    interval: Duration,
    mut give_up: impl FnMut() -> Option<io::Error>,
) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connect(uds, port, left) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => {
                if let Some(err) = give_up() {
                    return Err(err);
                }
                std::thread::sleep(interval.min(left));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn serve_once(answer: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(conn);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn ok_answer_gives_the_stream() {
        let (_dir, path) = serve_once("OK 1073741824\n");
        connect(&path, 1024, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_closed_socket_is_a_refusal_and_junk_an_error() {
        let (_dir, path) = serve_once("");
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let (_dir, path) = serve_once("NO\n");
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("NO"), "{err}");
    }

    /// A VMM at a fresh socket path that accepts one client, reads its
    /// `CONNECT` line and then runs `peer` on the connection.
    fn serve_with(
        peer: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(conn);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            peer(reader.into_inner());
        });
        (dir, path)
    }

    /// Runs a handshake with a deadline of `timeout`; its error and how long
    /// it took.
    fn failed_handshake(path: &Path, timeout: Duration) -> (io::Error, Duration) {
        let started = Instant::now();
        let err = connect(path, 1024, timeout).unwrap_err();
        (err, started.elapsed())
    }

    const SHORT: Duration = Duration::from_millis(300);

    #[test]
    fn a_vmm_that_never_answers_times_out() {
        let (_dir, path) = serve_with(|conn| {
            std::thread::sleep(Duration::from_secs(5));
            drop(conn);
        });
        let (err, took) = failed_handshake(&path, SHORT);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(took >= SHORT && took < SHORT * 3, "{took:?}");
    }

    #[test]
    fn a_trickled_answer_is_bounded_by_one_deadline() {
        // A byte every 50 ms never ends the line before the deadline, though
        // no single read waits long.
        let (_dir, path) = serve_with(|mut conn| {
            for _ in 0..100 {
                if conn.write_all(b"O").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (err, took) = failed_handshake(&path, SHORT);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(took < SHORT * 3, "{took:?}");
    }

    #[test]
    fn a_long_answer_is_cut_short() {
        let (_dir, path) = serve_with(|mut conn| {
            let _ = conn.write_all(&[b'O'; 4096]);
            std::thread::sleep(Duration::from_secs(5));
        });
        let (err, took) = failed_handshake(&path, Duration::from_secs(5));
        assert_ne!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let quoted = "O".repeat(MAX_ANSWER_LEN + 1);
        assert!(err.to_string().contains(&format!("\"{quoted}\"")), "{err}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn a_full_backlog_is_waited_on_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // A backlog of one connection, taken by a client nobody accepts.
        // SAFETY: `listener` is a bound socket; listen only resizes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let _waiting = UnixStream::connect(&path).unwrap();
        let (err, took) = failed_handshake(&path, SHORT);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(took >= SHORT && took < SHORT * 3, "{took:?}");
    }

    #[test]
    fn data_after_the_answer_stays_in_the_stream() {
        let (_dir, path) = serve_with(|mut conn| {
            conn.write_all(b"OK 1073741824\nguest").unwrap();
        });
        let mut stream = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "guest");
    }

    #[test]
    fn a_symlink_or_a_file_in_the_sockets_place_is_refused() {
        let (dir, path) = serve_with(|mut conn| {
            conn.write_all(b"OK 1073741824\n").unwrap();
        });
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = connect(&link, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        let file = dir.path().join("file.sock");
        std::fs::write(&file, b"").unwrap();
        let err = connect(&file, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        connect(&path, 1024, Duration::from_secs(5)).expect("the socket itself");
    }

    #[test]
    fn give_up_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let started = Instant::now();
        let err = connect_within(
            &missing,
            1024,
            Duration::from_secs(30),
            Duration::from_millis(10),
            || Some(io::Error::other("vmm exited")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("vmm exited"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

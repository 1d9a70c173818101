//! The host side of runv-vmm's hybrid vsock (Firecracker's protocol): connect to
//! the VMM's Unix socket and ask for a guest port.
//!
//! ```text
//! client → VMM:  CONNECT <port>\n
//! VMM → client:  OK <host-port>\n      (or the socket closes: nobody listens)
//! ```

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest handshake answer accepted.
const MAX_ANSWER_LEN: usize = 64;

/// Connects through the hybrid socket `uds` to guest `port`: the stream after the
/// `OK` line, or `ConnectionRefused` if the guest does not accept. The answer must
/// come within `timeout`.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    writeln!(stream, "CONNECT {port}")?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        answer.push(byte[0]);
        if answer.len() > MAX_ANSWER_LEN {
            break;
        }
    }
    if !answer.starts_with(b"OK ") || answer.last() != Some(&b'\n') {
        let answer = String::from_utf8_lossy(&answer).into_owned();
        return Err(io::Error::other(format!("hybrid vsock answer {answer:?}")));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
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

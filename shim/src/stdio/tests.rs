use super::copy::copy_until_stopped;
use super::sinks::{output_sinks, start_logging_binary};
use super::*;
use std::fs::File;
use std::io::Write;

/// A stdio peer that accepts one connection, answers `CONNECT` with
/// `connect_answer` (nothing if empty), then sends `header_answer` one byte
/// every 20 ms and never ends its line; it holds the connection until the
/// client closes it.
fn silent_peer(
    connect_answer: &'static str,
    header_answer: &'static str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(connect_answer.as_bytes()).unwrap();
        for byte in header_answer.bytes() {
            std::thread::sleep(Duration::from_millis(20));
            if conn.write_all(&[byte]).is_err() {
                return;
            }
        }
        // Read (and ignore) until the client gives up and closes.
        let _ = io::copy(&mut conn, &mut io::sink());
    });
    (dir, path)
}

fn connect_within(path: &Path, timeout: Duration) -> (Result<UnixStream, StdioError>, Duration) {
    let name = ProcessName {
        namespace: "default",
        container_id: "c1",
        exec_id: "",
    };
    let started = Instant::now();
    let result = connect_stream(path, &name, StreamKind::Stdout, timeout);
    (result, started.elapsed())
}

#[test]
fn a_peer_that_never_answers_fails_the_stream_in_time() {
    let timeout = Duration::from_millis(300);
    let cases = [
        ("", "", "vsock connect"),
        ("OK 1073741824\n", "", "stream header"),
        // One byte every 20 ms: without a deadline over the whole line, the
        // header's 512 bytes would take 10 s.
        (
            "OK 1073741824\n",
            "okokokokokokokokokokokokokokokokokokokokokok",
            "stream header",
        ),
    ];
    for (connect_answer, header_answer, step) in cases {
        let (_dir, path) = silent_peer(connect_answer, header_answer);
        let (result, took) = connect_within(&path, timeout);
        let err = result.expect_err("the stream connected").to_string();
        assert!(
            err.contains(step) && err.contains("no answer within 300ms"),
            "{err}"
        );
        assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
        assert!(took < timeout + Duration::from_secs(2), "{took:?}");
    }
}

#[test]
fn an_answered_stream_comes_back_without_timeouts() {
    let (_dir, path) = silent_peer("OK 1073741824\n", "ok\n");
    let (result, _) = connect_within(&path, Duration::from_secs(10));
    let stream = result.unwrap();
    assert_eq!(stream.read_timeout().unwrap(), None);
    assert_eq!(stream.write_timeout().unwrap(), None);
}

#[test]
fn agent_streams_follow_the_uris() {
    let uris = StdioUris {
        stdin: "/f/in".into(),
        stdout: "/f/out".into(),
        stderr: String::new(),
        terminal: false,
    };
    let stdio = uris.agent_stdio();
    assert!(stdio.stdin && stdio.stdout && !stdio.stderr && !stdio.terminal);
    let tty = StdioUris {
        terminal: true,
        stderr: "/f/err".into(),
        ..uris
    };
    let stdio = tty.agent_stdio();
    assert!(stdio.terminal && stdio.stdin && !stdio.stdout && !stdio.stderr);
}

#[test]
fn a_stdin_copy_stops_while_its_writer_keeps_the_fifo_open() {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut writer = File::from(write);
    writer.write_all(b"typed").unwrap();
    let copy = std::thread::spawn(move || {
        let mut copied = Vec::new();
        copy_until_stopped(&mut File::from(read), &mut copied, &stop_read).map(|()| copied)
    });
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while std::time::Instant::now() < deadline {
        assert!(!copy.is_finished(), "the copy ended with its writer open");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stop);
    assert_eq!(copy.join().unwrap().unwrap(), b"typed");
    drop(writer);
}

#[test]
fn file_uris_append_and_unknown_schemes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/out.log");
    let name = ProcessName {
        namespace: "default",
        container_id: "c1",
        exec_id: "",
    };
    let uris = StdioUris {
        stdout: format!("file://{}", log.display()),
        ..Default::default()
    };
    let (stdout, stderr) = output_sinks(&name, &uris).unwrap();
    assert!(stderr.is_none());
    stdout.unwrap().open().unwrap().write_all(b"x").unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"x");
    let bad = StdioUris {
        stdout: "tcp://1.2.3.4:5".into(),
        ..Default::default()
    };
    assert!(output_sinks(&name, &bad).is_err());
}

#[test]
fn a_logging_binary_gets_both_streams() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("log");
    let script = dir.path().join("logger.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec 5>&-\ncat <&3 >{0}.out & cat <&4 >{0}.err; wait\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let name = ProcessName {
        namespace: "default",
        container_id: "c1",
        exec_id: "",
    };
    let (mut stdout, mut stderr) =
        start_logging_binary(&script.display().to_string(), &name).unwrap();
    stdout.write_all(b"to out").unwrap();
    stderr.write_all(b"to err").unwrap();
    drop((stdout, stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let read = |suffix: &str| {
        std::fs::read_to_string(format!("{}.{suffix}", out.display())).unwrap_or_default()
    };
    while (read("out") != "to out" || read("err") != "to err")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        (read("out").as_str(), read("err").as_str()),
        ("to out", "to err")
    );
}

//! Guest runs watched through the serial console on the VMM's stdout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished guest run left: its exit status and console lines.
#[derive(Debug)]
pub struct ConsoleRun {
    /// Exit status of the VMM process.
    pub status: ExitStatus,
    /// Every console line, in order.
    pub lines: Vec<String>,
    /// Time from spawning the VMM to the first line containing the marker.
    pub marker_after: Option<Duration>,
}

impl ConsoleRun {
    /// Whether some console line contains `text`.
    pub fn saw(&self, text: &str) -> bool {
        self.lines.iter().any(|line| line.contains(text))
    }

    /// The console, for assertion messages.
    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }
}

/// Runs `command` (a VMM with its console on stdout) until it exits, noting when
/// `marker` appears. A run that outlives `timeout` is killed, and the returned
/// status then reports the kill.
pub fn run_to_exit(mut command: Command, marker: &str, timeout: Duration) -> ConsoleRun {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
    let lines_rx = read_lines(&mut child);
    let deadline = started + timeout;

    let mut lines = Vec::new();
    let mut marker_after = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                if marker_after.is_none() && line.contains(marker) {
                    marker_after = Some(started.elapsed());
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lines.push(format!("<killed after {timeout:?}>"));
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for the VMM process");
    ConsoleRun {
        status,
        lines,
        marker_after,
    }
}

fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

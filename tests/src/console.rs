//! Guest runs watched through the serial console on the VMM's stdout.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a finished guest run left: its exit status, console lines and stderr.
#[derive(Debug)]
pub struct ConsoleRun {
    /// Exit status of the VMM process.
    pub status: ExitStatus,
    /// Every console line, in order.
    pub lines: Vec<String>,
    /// The VMM's stderr.
    pub stderr: String,
    /// Time from spawning the VMM to the first line containing the marker.
    pub marker_after: Option<Duration>,
}

impl ConsoleRun {
    /// Whether some console line contains `text`.
    pub fn saw(&self, text: &str) -> bool {
        self.lines.iter().any(|line| line.contains(text))
    }

    /// Console (its last 200 lines) and stderr, for assertion messages.
    pub fn transcript(&self) -> String {
        let skip = self.lines.len().saturating_sub(200);
        format!(
            "--- console ({} lines, last {} shown)\n{}\n--- stderr\n{}",
            self.lines.len(),
            self.lines.len() - skip,
            self.lines[skip..].join("\n"),
            self.stderr
        )
    }
}

/// A running VMM whose console (stdout) and stderr are captured. Killed and
/// reaped on drop if still running.
pub struct VmProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
}

impl VmProcess {
    /// Spawns `command` with stdin closed and stdout/stderr captured.
    pub fn spawn(mut command: Command) -> Self {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
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
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            started,
        }
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a console line containing `text`; returns the time since
    /// spawn, or `None` if the console closed or the timeout passed first.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Option<Duration> {
        if self.seen.iter().any(|line| line.contains(text)) {
            return Some(self.started.elapsed());
        }
        let deadline = Instant::now() + timeout;
        // The deadline is checked on every line: a guest that floods its
        // console must not keep the wait going.
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let found = line.contains(text);
            self.seen.push(line);
            if found {
                return Some(self.started.elapsed());
            }
        }
        None
    }

    /// Waits for the VMM to exit (killing it after `timeout`) and collects
    /// everything it printed. `marker` dates the first line containing it.
    pub fn wait_exit(mut self, marker: &str, timeout: Duration) -> ConsoleRun {
        let marker_after = self.wait_for(marker, timeout);
        let deadline = self.started + timeout.max(self.started.elapsed());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timed_out = left.is_zero()
                || match self.lines.recv_timeout(left) {
                    Ok(line) => {
                        self.seen.push(line);
                        false
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => true,
                };
            if timed_out {
                self.seen.push(format!("<killed after {timeout:?}>"));
                let _ = self.child.kill();
                break;
            }
        }
        let status = self.child.wait().expect("wait for the VMM process");
        let stderr = self
            .stderr
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        ConsoleRun {
            status,
            lines: std::mem::take(&mut self.seen),
            stderr,
            marker_after,
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let status = match self.child.try_wait() {
            Ok(None) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
            Ok(status) => status,
            Err(_) => None,
        };
        // A failed test shows how the VMM fared: its exit, stderr and console.
        if thread::panicking() {
            let stderr = self
                .stderr
                .take()
                .and_then(|thread| thread.join().ok())
                .unwrap_or_default();
            self.seen.extend(self.lines.try_iter());
            let console = &self.seen[self.seen.len().saturating_sub(20)..];
            eprintln!(
                "--- the VMM {} before the test ended it\n--- stderr\n{stderr}\n\
                 --- console (last {} lines)\n{}",
                status.map_or("was running".to_owned(), |s| format!("had exited: {s}")),
                console.len(),
                console.join("\n")
            );
        }
    }
}

/// Runs `command` (a VMM with its console on stdout) until it exits, noting when
/// `marker` appears. A run that outlives `timeout` is killed.
pub fn run_to_exit(command: Command, marker: &str, timeout: Duration) -> ConsoleRun {
    VmProcess::spawn(command).wait_exit(marker, timeout)
}

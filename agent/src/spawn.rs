//! Container and exec creation in a fresh, single-threaded copy of the agent.
//!
//! libcontainer's builder makes the intermediate and init processes with a raw
//! `clone3`; those children run Rust code and end with `std::process::exit`. A
//! child of a multi-threaded process inherits every lock another thread held at
//! the clone (std's thread registry, taken whenever a thread starts or ends; the
//! allocator's) and waits on it for ever. The agent's ttrpc and stdio threads come
//! and go at any time, so the agent never calls the builder itself: it runs
//! `/proc/self/exe --spawn ...`, a helper that is single-threaded from its first
//! instruction, with the process's stdio as fds 0–2 and a pipe on fd 3 for its one
//! line of answer. The container's init, which the helper leaves behind, is
//! re-parented to the agent (PID 1 in the guest, a child subreaper in host mode).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{dup2, pipe2};
use oci_spec::runtime::Spec;
use protobuf::Enum;

use crate::error::{AgentError, Result};
use crate::exec_seccomp::ExecSeccomp;
use crate::pid_namespace;
use crate::process::ChildStdio;

/// The first argument that makes the agent binary a spawn helper.
pub const SPAWN_ARG: &str = "--spawn";

/// The helper's fd for its answer.
const RESULT_FD: RawFd = 3;

/// How long the agent waits for a helper before it kills it.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest answer line read from a helper.
const MAX_ANSWER: usize = 64 * 1024;

/// What a helper makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnRequest {
    /// A container from `bundle`, its init waiting for start.
    Init {
        /// libcontainer's state root.
        root: PathBuf,
        /// The container's id.
        id: String,
        /// The bundle holding config.json.
        bundle: PathBuf,
        /// The console socket, when the process has a terminal.
        console: Option<PathBuf>,
    },
    /// A process in the running container `id`.
    Exec {
        /// libcontainer's state root.
        root: PathBuf,
        /// The container's id.
        id: String,
        /// The exec's id.
        exec_id: String,
        /// The container's bundle (its seccomp profile applies to the exec).
        bundle: PathBuf,
        /// The exec's OCI process JSON.
        process: PathBuf,
        /// The console socket, when the process has a terminal.
        console: Option<PathBuf>,
    },
    /// The pod's shared PID namespace and its holder (see `pid_namespace`).
    PodPidNamespace,
}

/// The helper argument for [`SpawnRequest::PodPidNamespace`].
const POD_PID_NAMESPACE: &str = "pod-pid-namespace";

impl SpawnRequest {
    /// The helper's arguments after [`SPAWN_ARG`].
    fn to_args(&self) -> Vec<&std::ffi::OsStr> {
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        let (kind, root, id, bundle, console) = match self {
            Self::PodPidNamespace => return vec![POD_PID_NAMESPACE.as_ref()],
            Self::Init {
                root,
                id,
                bundle,
                console,
            } => ("init", root, id, bundle, console),
            Self::Exec {
                root,
                id,
                exec_id,
                bundle,
                process,
                console,
            } => {
                args.extend([
                    "--exec-id".as_ref(),
                    exec_id.as_ref(),
                    "--process".as_ref(),
                    process.as_os_str(),
                ]);
                ("exec", root, id, bundle, console)
            }
        };
        args.extend([
            kind.as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
            "--id".as_ref(),
            id.as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
        ]);
        if let Some(console) = console {
            args.extend(["--console".as_ref(), console.as_os_str()]);
        }
        args
    }

    /// Reads the arguments [`SpawnRequest::to_args`] wrote.
    fn parse(args: &[String]) -> Result<Self> {
        let usage = |what: String| AgentError::InvalidArgument(format!("spawn helper: {what}"));
        if let [only] = args {
            if only == POD_PID_NAMESPACE {
                return Ok(Self::PodPidNamespace);
            }
        }
        let (mut kind, mut root, mut id, mut bundle, mut console) = (None, None, None, None, None);
        let (mut exec_id, mut process) = (None, None);
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let slot = match arg.as_str() {
                "init" | "exec" if kind.is_none() => {
                    kind = Some(arg.as_str());
                    continue;
                }
                "--root" => &mut root,
                "--id" => &mut id,
                "--bundle" => &mut bundle,
                "--exec-id" => &mut exec_id,
                "--process" => &mut process,
                "--console" => &mut console,
                other => return Err(usage(format!("unexpected argument {other:?}"))),
            };
            let value = rest
                .next()
                .ok_or_else(|| usage(format!("{arg} needs a value")))?;
            *slot = Some(value.clone());
        }
        let need = |value: Option<String>, name: &str| {
            value.ok_or_else(|| usage(format!("missing {name}")))
        };
        let (root, id, bundle) = (
            PathBuf::from(need(root, "--root")?),
            need(id, "--id")?,
            PathBuf::from(need(bundle, "--bundle")?),
        );
        let console = console.map(PathBuf::from);
        match kind {
            Some("init") if process.is_none() && exec_id.is_none() => Ok(Self::Init {
                root,
                id,
                bundle,
                console,
            }),
            Some("exec") => Ok(Self::Exec {
                root,
                id,
                exec_id: need(exec_id, "--exec-id")?,
                bundle,
                process: PathBuf::from(need(process, "--process")?),
                console,
            }),
            _ => Err(usage(
                "expected init, or exec with --exec-id and --process".into(),
            )),
        }
    }

    /// What the agent reports when this request fails.
    fn step(&self) -> String {
        match self {
            Self::Init { id, .. } => format!("create container {id}"),
            Self::Exec { id, exec_id, .. } => format!("exec {exec_id} in {id}"),
            Self::PodPidNamespace => pid_namespace::STEP.into(),
        }
    }
}

/// Runs `request` in a helper with `stdio` as the new process's stdio; returns
/// the pid of the container's init or of the exec'd process. The caller holds
/// the reaper's spawn guard, so the helper's exit is this function's to reap.
pub fn spawn(request: &SpawnRequest, stdio: ChildStdio) -> Result<i32> {
    spawn_with_lifeline(request, stdio, None)
}

/// [`spawn`], with `lifeline` (if any) as the helper's fd
/// [`pid_namespace::LIFELINE_FD`], for what it leaves behind. `lifeline` must
/// not be fd 3 or 4.
pub fn spawn_with_lifeline(
    request: &SpawnRequest,
    stdio: ChildStdio,
    lifeline: Option<BorrowedFd<'_>>,
) -> Result<i32> {
    let step = request.step();
    let lifeline = lifeline.map(|fd| fd.as_raw_fd());
    let (answer, answer_in_child) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::io(format!("{step}: pipe"))(e.into()))?;
    let answer_fd = answer_in_child.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(SPAWN_ARG)
        .args(request.to_args())
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // dup2/fcntl, which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if answer_fd == RESULT_FD {
                fcntl(RESULT_FD, FcntlArg::F_SETFD(FdFlag::empty()))?;
            } else {
                // dup2 leaves the new fd without FD_CLOEXEC.
                dup2(answer_fd, RESULT_FD)?;
            }
            if let Some(lifeline) = lifeline {
                dup2(lifeline, pid_namespace::LIFELINE_FD)?;
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(AgentError::io(format!("{step}: start the spawn helper")))?;
    drop(answer_in_child);
    let line = read_answer(answer, &mut child, &step);
    let status = reap(&mut child);
    let line = line?;
    parse_answer(&line).unwrap_or_else(|| {
        Err(AgentError::Io {
            step,
            source: std::io::Error::other(format!(
                "the spawn helper ended ({}) without an answer",
                status.map_or_else(|| "killed by the agent".into(), |s| s.to_string())
            )),
        })
    })
}

/// Reads the helper's answer line (empty if it ended without one); kills the
/// helper once [`SPAWN_TIMEOUT`] has passed.
fn read_answer(answer: OwnedFd, child: &mut Child, step: &str) -> Result<String> {
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    let mut buffer = Vec::new();
    let mut file = File::from(answer);
    while !buffer.contains(&b'\n') && buffer.len() < MAX_ANSWER {
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            return Err(AgentError::DeadlineExceeded(format!(
                "{step}: the spawn helper gave no answer within {SPAWN_TIMEOUT:?}"
            )));
        }
        let wait = PollTimeout::try_from((deadline - now).min(Duration::from_millis(100)))
            .unwrap_or(PollTimeout::MAX);
        match read_within(&mut file, wait, &mut buffer) {
            Ok(Some(0)) => break,
            Ok(Some(_)) => {}
            Ok(None) if matches!(child.try_wait(), Ok(Some(_))) => {
                // The container's init may hold the pipe open (it has not
                // exec'd yet): the helper's exit, not EOF, says no answer is
                // coming. Take what it wrote just before.
                let _ = read_within(&mut file, PollTimeout::ZERO, &mut buffer);
                break;
            }
            Ok(None) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(AgentError::io(format!("{step}: answer pipe"))(err)),
        }
    }
    buffer.truncate(MAX_ANSWER);
    let end = buffer.iter().position(|&b| b == b'\n').unwrap_or(0);
    buffer.truncate(end);
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

/// Appends what `file` has within `wait` to `buffer`: the count read (0 at
/// EOF), or `None` if nothing came.
fn read_within(
    file: &mut File,
    wait: PollTimeout,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, wait)? == 0 {
        return Ok(None);
    }
    let mut chunk = [0u8; 4096];
    let n = file.read(&mut chunk)?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(Some(n))
}

/// Reaps the helper, which exits right after its answer; kills it if it does
/// not within a second. `None` if it had to be killed.
fn reap(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// `pid N` or `error CODE MESSAGE`; `None` for anything else.
fn parse_answer(line: &str) -> Option<Result<i32>> {
    if let Some(pid) = line.strip_prefix("pid ") {
        return pid.parse().ok().filter(|&pid: &i32| pid > 0).map(Ok);
    }
    let rest = line.strip_prefix("error ")?;
    let (code, message) = rest.split_once(' ')?;
    let code = ttrpc::Code::from_i32(code.parse().ok()?)?;
    Some(Err(AgentError::Spawned {
        code,
        message: message.to_string(),
    }))
}

/// The helper's main: makes what the arguments ask for and answers on fd 3.
pub fn helper_main(args: &[String]) -> ExitCode {
    // SAFETY: the agent opened fd 3 for this process as its answer pipe and
    // nothing else here uses that number.
    let answer = unsafe { OwnedFd::from_raw_fd(RESULT_FD) };
    // The container's processes must not keep the pipe past their exec.
    let _ = fcntl(answer.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let mut answer = File::from(answer);
    let outcome = SpawnRequest::parse(args)
        .and_then(|request| make(&request))
        .map_err(|err| AgentError::Spawned {
            code: err.code(),
            message: error_chain(&err),
        });
    let line = match &outcome {
        Ok(pid) => format!("pid {pid}\n"),
        Err(err) => format!(
            "error {} {}\n",
            err.code().value(),
            err.to_string().replace('\n', " ")
        ),
    };
    match (answer.write_all(line.as_bytes()), outcome) {
        (Ok(()), Ok(_)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// `err` and its sources, as one line.
fn error_chain(err: &AgentError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs libcontainer's builder for `request` with this process's stdio.
fn make(request: &SpawnRequest) -> Result<i32> {
    match request {
        SpawnRequest::Init {
            root,
            id,
            bundle,
            console,
        } => {
            let container = builder(root, id, console.as_deref(), stdio_copies()?)?
                .validate_id()
                .map_err(AgentError::runtime("container id"))?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(AgentError::runtime(request.step()))?;
            container
                .pid()
                .map(|pid| pid.as_raw())
                .ok_or_else(|| AgentError::FailedPrecondition("the container has no pid".into()))
        }
        SpawnRequest::PodPidNamespace => pid_namespace::start_in_helper(),
        SpawnRequest::Exec {
            root,
            id,
            bundle,
            process,
            console,
            ..
        } => {
            let seccomp = container_seccomp(bundle)?;
            let pid = builder(root, id, console.as_deref(), stdio_copies()?)?
                .with_executor(ExecSeccomp::new(seccomp))
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(AgentError::runtime(request.step()))?;
            Ok(pid.as_raw())
        }
    }
}

/// Copies of this process's fds 0–2, for libcontainer's builder: it dup2()s
/// each fd onto 0–2 in the container's process and then closes the fd it was
/// given, which would close the stdio it just set up.
fn stdio_copies() -> Result<[OwnedFd; 3]> {
    let copy = |fd: RawFd| dup_above(fd, 10, &format!("copy stdio fd {fd}"));
    Ok([copy(0)?, copy(1)?, copy(2)?])
}

/// A close-on-exec copy of `fd` numbered `min` or above (clear of the fixed
/// fds a helper gets); `step` names it in an error.
pub fn dup_above(fd: RawFd, min: RawFd, step: &str) -> Result<OwnedFd> {
    fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that only this owns.
        .map(|copy| unsafe { OwnedFd::from_raw_fd(copy) })
        .map_err(|e| AgentError::io(step)(e.into()))
}

/// libcontainer's builder for container `id` under `root`, with `stdio`
/// (stdin, stdout, stderr) and the console socket.
fn builder(
    root: &Path,
    id: &str,
    console: Option<&Path>,
    [stdin, stdout, stderr]: [OwnedFd; 3],
) -> Result<ContainerBuilder> {
    Ok(
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(root)
            .map_err(AgentError::runtime("state root"))?
            .with_console_socket(console)
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr),
    )
}

/// The seccomp profile of the container whose bundle is `bundle`.
fn container_seccomp(bundle: &Path) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|e| AgentError::FailedPrecondition(format!("read {}: {e}", config.display())))?;
    Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<&std::ffi::OsStr>) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn requests_survive_the_command_line() {
        let requests = [
            SpawnRequest::Init {
                root: "/s/runtime".into(),
                id: "c1".into(),
                bundle: "/s/bundles/c1".into(),
                console: None,
            },
            SpawnRequest::Exec {
                root: "/s/runtime".into(),
                id: "c1".into(),
                exec_id: "e".into(),
                bundle: "/s/bundles/c1".into(),
                process: "/s/bundles/c1/exec-e.json".into(),
                console: Some("/s/consoles/x.sock".into()),
            },
        ];
        for request in requests {
            let args = strings(request.to_args());
            assert_eq!(SpawnRequest::parse(&args).unwrap(), request, "{args:?}");
        }
    }

    #[test]
    fn bad_helper_command_lines_are_refused() {
        for bad in [
            "",
            "init",
            "init --root /r --id c",
            "exec --root /r --id c --bundle /b",
            "exec --root /r --id c --bundle /b --process /p",
            "init --root /r --id c --bundle /b --process /p",
            "init --root",
            "init init",
            "run --root /r --id c --bundle /b",
        ] {
            let args: Vec<String> = bad.split_whitespace().map(String::from).collect();
            assert!(
                matches!(
                    SpawnRequest::parse(&args),
                    Err(AgentError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn answers_are_read_back_with_their_code() {
        assert!(matches!(parse_answer("pid 42"), Some(Ok(42))));
        match parse_answer("error 6 create container c1: container already exists") {
            Some(Err(err)) => {
                assert_eq!(err.code(), ttrpc::Code::ALREADY_EXISTS);
                assert_eq!(
                    err.to_string(),
                    "create container c1: container already exists"
                );
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "pid",
            "pid 0",
            "pid -3",
            "pid x",
            "error",
            "error x y",
            "error 999 y",
            "ok",
        ] {
            assert!(parse_answer(bad).is_none(), "{bad:?}");
        }
    }
}

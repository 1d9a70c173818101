//! runv-agent in host mode (tier 3): the agent process, a ttrpc client for it, its
//! stdio streams, and OCI bundles from the test image.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::agent::{
    AgentClient, CreateContainerRequest, ExecProcessRequest, StartContainerRequest, Stdio,
    WaitProcessRequest,
};
use protocol::stdio::{StreamHeader, StreamKind};

use crate::scratch::Scratch;

/// Deadline of every call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A ttrpc context with [`CALL_TIMEOUT`].
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(CALL_TIMEOUT)
}

/// The `runv-agent` binary under test (`RUNV_AGENT`, set by `scripts/test`).
pub fn agent_binary() -> PathBuf {
    let path = std::env::var_os("RUNV_AGENT").map(PathBuf::from).unwrap_or_else(|| {
        panic!("RUNV_AGENT is not set: run through scripts/test or set it to target/<profile>/runv-agent")
    });
    assert!(
        path.is_file(),
        "RUNV_AGENT={} is not a file",
        path.display()
    );
    path
}

/// A host-mode agent on sockets in a scratch directory; stopped on drop.
pub struct HostAgent {
    child: Child,
    /// The ttrpc client.
    pub client: AgentClient,
    stdio_sock: PathBuf,
    /// Scratch directory holding the sockets and the state dir.
    pub dir: Scratch,
}

impl HostAgent {
    /// Starts the agent and connects to it.
    pub fn start() -> Self {
        Self::start_with(Command::new(agent_binary()))
    }

    /// Starts the agent in a network namespace of its own (`unshare -n`, which
    /// execs it: the child is the agent), gone when the agent exits. The only
    /// way a test may let the agent change a network.
    pub fn start_in_netns() -> Self {
        let mut command = Command::new("unshare");
        command.arg("--net").arg("--").arg(agent_binary());
        Self::start_with(command)
    }

    /// Runs `args` in the agent's network namespace (`nsenter -n`); its stdout.
    pub fn in_netns(&self, args: &[&str]) -> String {
        let output = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "--"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"));
        assert!(
            output.status.success(),
            "{args:?} in the agent's netns: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The state dir the agent was given.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn start_with(mut command: Command) -> Self {
        let dir = Scratch::new("runv-agent-host");
        let sock = dir.path().join("agent.sock");
        let addr = format!("unix://{}", sock.display());
        let child = command
            .args(["--listen", &addr, "--state-dir"])
            .arg(dir.path().join("state"))
            .spawn()
            .expect("spawn runv-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            if sock.exists() {
                if let Ok(client) = ttrpc::Client::connect(&addr) {
                    break client;
                }
            }
            assert!(
                Instant::now() < deadline,
                "runv-agent did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stdio_sock = sock.into_os_string();
        stdio_sock.push(".stdio");
        Self {
            child,
            client: AgentClient::new(client),
            stdio_sock: PathBuf::from(stdio_sock),
            dir,
        }
    }

    /// A second ttrpc client of the agent, on a connection of its own.
    pub fn connect(&self) -> AgentClient {
        let addr = format!("unix://{}", self.dir.path().join("agent.sock").display());
        AgentClient::new(
            ttrpc::Client::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}")),
        )
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens stream `kind` of process (`cid`, `eid`); panics if refused.
    pub fn stream(&self, cid: &str, eid: &str, kind: StreamKind) -> UnixStream {
        self.try_stream(cid, eid, kind)
            .unwrap_or_else(|err| panic!("bind {kind} of {cid}/{eid}: {err}"))
    }

    /// Opens stream `kind` of process (`cid`, `eid`).
    pub fn try_stream(
        &self,
        cid: &str,
        eid: &str,
        kind: StreamKind,
    ) -> Result<UnixStream, protocol::stdio::HeaderError> {
        let mut conn = UnixStream::connect(&self.stdio_sock)?;
        StreamHeader::new(cid, eid, kind).bind(&mut conn)?;
        Ok(conn)
    }

    /// Creates container `cid` on `rootfs` with `spec`, stdout and stderr.
    pub fn create(&self, cid: &str, rootfs: &Path, spec: &str, stdin: bool) {
        let req = CreateContainerRequest {
            container_id: cid.into(),
            oci_spec: spec.into(),
            rootfs: rootfs.display().to_string(),
            stdio: Some(Stdio {
                stdin,
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.client
            .create_container(ctx(), &req)
            .unwrap_or_else(|err| panic!("create {cid}: {err:?}"));
    }

    /// Starts container `cid`.
    pub fn start_container(&self, cid: &str) -> u32 {
        let req = StartContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        };
        self.client
            .start_container(ctx(), &req)
            .unwrap_or_else(|err| panic!("start {cid}: {err:?}"))
            .pid
    }

    /// Waits for process (`cid`, `eid`); its exit status.
    pub fn wait(&self, cid: &str, eid: &str) -> i32 {
        let req = WaitProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            ..Default::default()
        };
        self.client
            .wait_process(ctx(), &req)
            .unwrap_or_else(|err| panic!("wait {cid}/{eid}: {err:?}"))
            .exit_status
    }

    /// Creates and starts `cid`, collects its output and exit status.
    pub fn run(&self, cid: &str, rootfs: &Path, spec: &str) -> Output {
        self.create(cid, rootfs, spec, false);
        let output = self.collect(cid, "");
        self.start_container(cid);
        output.finish(self.wait(cid, ""))
    }

    /// Starts reading stdout and stderr of (`cid`, `eid`).
    pub fn collect(&self, cid: &str, eid: &str) -> Collector {
        Collector {
            stdout: read_all(self.stream(cid, eid, StreamKind::Stdout)),
            stderr: read_all(self.stream(cid, eid, StreamKind::Stderr)),
        }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Readers of a process's stdout and stderr.
pub struct Collector {
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Collector {
    /// stdout and stderr read to EOF, as bytes.
    pub fn finish_raw(self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.join().expect("stdout reader"),
            self.stderr.join().expect("stderr reader"),
        )
    }

    /// The output read to EOF, with `status`.
    pub fn finish(self, status: i32) -> Output {
        Output {
            stdout: String::from_utf8_lossy(&self.stdout.join().expect("stdout reader")).into(),
            stderr: String::from_utf8_lossy(&self.stderr.join().expect("stderr reader")).into(),
            status,
        }
    }
}

/// What a process wrote and how it ended.
#[derive(Debug)]
pub struct Output {
    /// All of stdout.
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
    /// Exit status (128 + n for signal n).
    pub status: i32,
}

/// Reads `stream` to EOF on a thread.
pub fn read_all(mut stream: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut data = Vec::new();
        stream.read_to_end(&mut data).expect("read stream");
        data
    })
}

/// Unpacks the test image (`RUNV_TEST_IMAGE`) into `dir`; the rootfs path.
pub fn unpack_test_image(dir: &Path) -> PathBuf {
    let tarball = std::env::var_os("RUNV_TEST_IMAGE")
        .map(PathBuf::from)
        .expect("RUNV_TEST_IMAGE is not set (images/build-test-image.sh)");
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&layout).expect("create layout dir");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&layout),
    );
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &format!("{}:latest", layout.display())])
            .arg(&bundle),
    );
    bundle.join("rootfs")
}

fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Knobs of [`spec`].
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    /// Extra environment.
    pub env: Vec<String>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// uid and gid (default 0:0).
    pub user: Option<(u32, u32)>,
    /// Read-only rootfs.
    pub readonly: bool,
    /// Bind mounts (host source, container destination).
    pub binds: Vec<(PathBuf, String)>,
    /// OCI `linux.resources`.
    pub resources: Option<serde_json::Value>,
    /// OCI `linux.seccomp`.
    pub seccomp: Option<serde_json::Value>,
}

/// An OCI spec (as `runc spec` makes it, minus the network) running `args`,
/// in cgroup `/runv-tests/<cid>`.
pub fn spec(cid: &str, args: &[&str], opts: &SpecOptions) -> String {
    let mut env = vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(opts.env.iter().cloned());
    let (uid, gid) = opts.user.unwrap_or((0, 0));
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let mut mounts = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
    ]);
    if let Some(list) = mounts.as_array_mut() {
        for (source, destination) in &opts.binds {
            list.push(serde_json::json!({
                "destination": destination, "type": "bind",
                "source": source, "options": ["rbind", "rw"]
            }));
        }
    }
    let mut spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": opts.cwd.clone().unwrap_or_else(|| "/".into()),
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": opts.readonly},
        "hostname": "runv",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": format!("/runv-tests/{cid}"),
            "resources": opts.resources.clone().unwrap_or_else(|| serde_json::json!({})),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(seccomp) = &opts.seccomp {
        spec["linux"]["seccomp"] = seccomp.clone();
    }
    spec.to_string()
}

/// Stdio with stdout and stderr streams, no stdin.
pub fn output_stdio() -> Stdio {
    Stdio {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// ExecProcess of `args` as exec `eid` in container `cid`, stdout and stderr on.
pub fn exec_request(cid: &str, eid: &str, args: &[&str]) -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        process: exec_process(args),
        stdio: Some(output_stdio()).into(),
        ..Default::default()
    }
}

/// An OCI `process` JSON for ExecProcess running `args` as root.
pub fn exec_process(args: &[&str]) -> String {
    serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
    .to_string()
}

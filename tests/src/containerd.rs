//! Tier 4: a real containerd (Debian's 1.6) started for one test or suite, with its
//! own root, state, sockets and config, the test image imported, `ctr` run against
//! it, and the leak checks the suites make after every test.
//!
//! Layout of one instance, all in a scratch directory:
//!
//! ```text
//! root/               containerd's root: a fresh tmpfs (overlayfs needs a real upper
//!                     file system; the KVM test host's / is 9p with overlays)
//! state/              containerd's state (task bundles, rootfs mounts, pod netns)
//! containerd.sock     gRPC (ctr, CRI); containerd.sock.ttrpc: ttrpc (shims)
//! config.toml         version 2 (containerd 1.x) or 3 (2.x); runc the default runtime,
//!                     runv's table the one operators install (deploy/containerd/)
//! runv.toml           runv's config, given to the shim as ConfigPath
//! cni/                a bridge + host-local conflist: pods get eth0 on a bridge of
//!                     this instance, a /24 of their own (10.233.<n>.0/24), whose
//!                     .1 is the bridge's (the host's) address and their default
//!                     route; no masquerading
//! containerd.log      containerd's stdout and stderr
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cri::Cri;
use crate::host::{mounts_under, pids_matching, pids_named};
use crate::scratch::Scratch;

/// The test image (`images/build-test-image.sh`), imported in every instance.
pub const TEST_IMAGE: &str = "docker.io/runv/test:latest";
/// The CRI's sandbox image: the test image's root running `sleep infinity`.
pub const PAUSE_IMAGE: &str = "docker.io/runv/pause:latest";
/// runv's runtime type (`ctr run --runtime`).
pub const RUNV_RUNTIME: &str = "io.pouch.runv.v2";
/// The CRI runtime handler that runs pods in runv.
pub const RUNV_HANDLER: &str = "runv";
/// runv's runtime table for containerd 1.x (config version 2), as operators
/// install it; the fixture's config holds it with its own `ConfigPath`.
const RUNV_TABLE_V2: &str = include_str!("../../deploy/containerd/runv-v2.toml");
/// runv's runtime table for containerd 2.x (config version 3), likewise.
const RUNV_TABLE_V3: &str = include_str!("../../deploy/containerd/runv-v3.toml");
/// The `ConfigPath` the tables of `deploy/containerd/` name.
const DEPLOYED_RUNV_CONFIG: &str = "/etc/runv/config.toml";
/// The namespace the CRI works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Deadline of one `ctr` command.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the shim keeps one directory per pod (`/run/runv/<sandbox-id>/`).
pub const RUNV_RUN_DIR: &str = "/run/runv";

/// A containerd of its own for a test or suite; stopped and cleaned up on drop.
pub struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    bridge: String,
    subnet: u8,
    dir: Scratch,
}

impl Containerd {
    /// Starts containerd, waits for its CRI, and imports the test image into the
    /// namespaces `default` and `k8s.io`. The shim `containerd-shim-runv-v2` is
    /// found through `RUNV_SHIM`'s directory (if set), ahead of `PATH`.
    pub fn start() -> Self {
        crate::host::require_root("containerd runs as root and mounts its snapshots");
        let dir = Scratch::new("runv-containerd");
        let socket = dir.path().join("containerd.sock");
        let (bridge, subnet) = bridge_name_and_subnet();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).expect("create containerd's root");
        nix::mount::mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0711"),
        )
        .unwrap_or_else(|err| panic!("mount a tmpfs on {}: {err}", root.display()));
        let version = ContainerdVersion::on_path();
        let config = if version.major >= 2 {
            config_toml_v3(dir.path(), &socket)
        } else {
            config_toml(dir.path(), &socket)
        };
        write(&dir.path().join("config.toml"), &config);
        write(
            &dir.path().join("cni/10-runv-test.conflist"),
            &cni_conflist(dir.path(), &bridge, subnet),
        );
        write(
            &dir.path().join("runv.toml"),
            &RunvConfig::from_env().to_toml(),
        );

        prewarm_binaries();
        let log =
            fs::File::create(dir.path().join("containerd.log")).expect("create containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env("PATH", search_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup containerd.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start containerd (scripts/setup installs it): {err}"));
        let mut containerd = Self {
            child: Some(child),
            socket,
            bridge,
            subnet,
            dir,
        };
        let started = Instant::now();
        containerd.wait_ready();
        let ready = started.elapsed();
        let tarball = test_image_tarball().display().to_string();
        std::thread::scope(|scope| {
            for namespace in ["default", CRI_NAMESPACE] {
                let (containerd, tarball) = (&containerd, &tarball);
                scope.spawn(move || containerd.ctr_in(namespace, &["images", "import", tarball]));
            }
        });
        let cri = containerd.cri();
        let seen = wait_until(Duration::from_secs(30), || {
            cri.image_present(TEST_IMAGE) && cri.image_present(PAUSE_IMAGE)
        });
        assert!(
            seen,
            "the CRI did not see the imported images\n{}",
            containerd.log_tail()
        );
        eprintln!(
            "containerd fixture: {} answering after {:.1} s, images imported after {:.1} s",
            version.text,
            ready.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        containerd
    }

    /// The scratch directory of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CNI bridge of this instance's pods (made by the first pod's CNI ADD).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pods' subnet: `(network address, prefix length)`.
    pub fn pod_subnet(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 233, self.subnet, 0), 24)
    }

    /// The bridge's address on the host, the pods' gateway (`.1` of the subnet;
    /// the bridge has it once the first pod is up).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 233, self.subnet, 1)
    }

    /// runv's config file (`runtimes.runv.options.ConfigPath`, and what
    /// `ctr run --runtime-config-path` should name).
    pub fn runv_config_path(&self) -> PathBuf {
        self.dir().join("runv.toml")
    }

    /// Replaces runv's config file with `text` (read by the next shim that starts).
    pub fn write_runv_config(&self, text: &str) {
        write(&self.runv_config_path(), text);
    }

    /// A CRI client on this containerd.
    pub fn cri(&self) -> Cri {
        Cri::connect(&self.socket)
    }

    /// The last 60 lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.dir().join("containerd.log"), 60)
    }

    /// How many times containerd's log (the shims' lines in it) holds `line`.
    pub fn log_count(&self, line: &str) -> usize {
        std::fs::read_to_string(self.dir().join("containerd.log"))
            .unwrap_or_default()
            .matches(line)
            .count()
    }

    /// What a test that panicked leaves to read on stderr: containerd's log
    /// (the shims write theirs into it), the threads of every live shim of
    /// this instance as gdb sees them (a hung call shows where it waits), and
    /// the tail of each pod's `vmm.log` and `console.log`, and containerd's
    /// goroutines that were talking to a shim.
    fn report_failure(&self) {
        eprintln!("containerd fixture: the test failed; what runv and containerd left:");
        eprintln!("{}", file_tail(&self.dir().join("containerd.log"), 200));
        self.report_containerd_shim_goroutines();
        let gdb_installed = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("gdb").is_file()));
        if !gdb_installed {
            eprintln!("--- the shims' threads: gdb is not installed");
        }
        for (pid, _) in self.shims().into_iter().filter(|_| gdb_installed) {
            let mut gdb = Command::new("gdb");
            gdb.args(["-p", &pid.to_string(), "-batch", "-nx"])
                .args(["-ex", "thread apply all bt 30"]);
            let report = match run_with_deadline(gdb, None, Duration::from_secs(120)) {
                Ok(out) | Err(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            };
            let threads: Vec<&str> = report
                .lines()
                .filter(|line| line.starts_with("Thread ") || line.starts_with('#'))
                .collect();
            eprintln!("--- shim {pid}: its threads\n{}", threads.join("\n"));
        }
        let pods = fs::read_dir(RUNV_RUN_DIR)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for pod in pods {
            for log in ["vmm.log", "vm/console.log"] {
                eprintln!("{}", file_tail(&pod.join(log), 40));
            }
        }
    }

    /// containerd's goroutines in its shim manager, its CRI or ttrpc (where a
    /// call to a shim waits), from the stack dump SIGUSR1 has it write to
    /// `$TMPDIR/containerd.<pid>.stacks.log`.
    fn report_containerd_shim_goroutines(&self) {
        let Some(pid) = self.child.as_ref().map(|child| child.id()) else {
            return;
        };
        let dump = std::env::temp_dir().join(format!("containerd.{pid}.stacks.log"));
        let _ = fs::remove_file(&dump);
        if kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).is_err()
            || !wait_until(Duration::from_secs(5), || dump.exists())
        {
            eprintln!("--- containerd wrote no stack dump");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
        let stacks = fs::read_to_string(&dump).unwrap_or_default();
        let _ = fs::remove_file(&dump);
        let waiting: Vec<&str> = stacks
            .split("\n\n")
            .filter(|goroutine| {
                ["runtime/v2", "/cri/", "ttrpc"]
                    .iter()
                    .any(|part| goroutine.contains(part))
            })
            .collect();
        eprintln!(
            "--- containerd's goroutines in shims, CRI or ttrpc ({} of {})\n{}",
            waiting.len(),
            stacks.split("\n\n").count(),
            waiting.join("\n\n")
        );
    }

    /// `ctr --address <socket> --namespace <namespace>`, for a caller that runs it itself.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace]);
        command
    }

    /// Runs `ctr ARGS` in namespace `default`; its stdout. Panics (with stderr and
    /// containerd's log) unless it exits 0.
    pub fn ctr(&self, args: &[&str]) -> String {
        self.ctr_in("default", args)
    }

    /// [`Containerd::ctr`] in `namespace`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> String {
        let output = self.run_ctr(namespace, args, None);
        self.expect_success(args, &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `ctr ARGS` in namespace `default` whatever its exit status (`ctr run`
    /// exits with the task's status); panics only if it cannot run or times out.
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.run_ctr("default", args, None)
    }

    /// [`Containerd::ctr_output`] with `stdin` fed to ctr's standard input, for
    /// `ctr run` of task `task` or `ctr tasks exec` in it (namespace `default`).
    ///
    /// ctr 1.6 loses an EOF on its stdin that comes before its task (or exec) is
    /// set up, and the process then never sees the end of its input. So ctr's
    /// stdin is closed only once that happened: for `ctr run`, once the task
    /// runs; for an exec, once `ctr tasks ps` shows one more process than before
    /// the call (or, for a runtime that lists none, after 30 s).
    pub fn ctr_stdin(&self, task: &str, args: &[&str], stdin: &[u8]) -> Output {
        let socket = self.socket.clone();
        let task = task.to_owned();
        let close_when: Box<dyn Fn() -> bool + Send> = if task_status(&socket, &task).is_none() {
            Box::new(move || task_status(&socket, &task).as_deref() == Some("RUNNING"))
        } else {
            let baseline = task_processes(&socket, &task);
            let fallback = Instant::now() + Duration::from_secs(30);
            Box::new(move || task_processes(&socket, &task) > baseline || Instant::now() > fallback)
        };
        let feed = Feed {
            data: stdin.to_vec(),
            close_when,
        };
        self.run_ctr("default", args, Some(feed))
    }

    /// The STATUS of task `id` in namespace `default` (`RUNNING`, `PAUSED`,
    /// `STOPPED`, ...), or None if there is no such task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        task_status(&self.socket, id)
    }

    /// Panics (naming `args`, with ctr's output and containerd's log) unless
    /// `output` is a success.
    pub fn expect_success(&self, args: &[&str], output: &Output) {
        assert!(
            output.status.success(),
            "ctr {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
    }

    fn run_ctr(&self, namespace: &str, args: &[&str], stdin: Option<Feed>) -> Output {
        let mut command = self.ctr_command(namespace);
        command.args(args);
        match run_with_deadline(command, stdin, CTR_TIMEOUT) {
            Ok(output) => output,
            Err(output) => panic!(
                "ctr {} did not finish within {CTR_TIMEOUT:?} (killed):\n--- stdout\n{}\n--- stderr\n{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            ),
        }
    }

    /// Pids and command lines of this instance's live shims.
    pub fn shims(&self) -> Vec<(i32, String)> {
        let address = self.socket.display().to_string();
        pids_matching("containerd-shim")
            .into_iter()
            .filter(|(_, cmdline)| {
                let program = cmdline.split(' ').next().unwrap_or_default();
                let name = Path::new(program).file_name().unwrap_or_default();
                name.to_string_lossy().starts_with("containerd-shim") && cmdline.contains(&address)
            })
            .collect()
    }

    /// Task ids in `namespace`.
    pub fn tasks(&self, namespace: &str) -> Vec<String> {
        self.try_tasks(namespace).unwrap_or_else(|| {
            panic!(
                "ctr tasks ls failed in namespace {namespace}\n{}",
                self.log_tail()
            )
        })
    }

    /// [`Containerd::tasks`], or None if ctr fails or takes more than 30 s.
    fn try_tasks(&self, namespace: &str) -> Option<Vec<String>> {
        let mut command = self.ctr_command(namespace);
        command.args(["tasks", "ls", "-q"]);
        let output = run_with_deadline(command, None, Duration::from_secs(30)).ok()?;
        let list = String::from_utf8_lossy(&output.stdout);
        output
            .status
            .success()
            .then(|| list.lines().map(str::to_owned).collect())
    }

    /// [`assert_clean`], plus: no task in `default` or `k8s.io`, no shim of this
    /// instance, no mount left in its state dir. Waits up to 10 s for shims
    /// and mounts to go.
    pub fn assert_clean(&self) {
        for namespace in ["default", CRI_NAMESPACE] {
            let tasks = self.tasks(namespace);
            assert!(
                tasks.is_empty(),
                "tasks left in namespace {namespace}: {tasks:?}"
            );
        }
        let state = self.dir().join("state");
        let settled = wait_until(Duration::from_secs(10), || {
            self.shims().is_empty() && mounts_under(&state).is_empty()
        });
        assert!(
            settled,
            "containerd left behind: shims {:?}, mounts {:?}\n{}",
            self.shims(),
            mounts_under(&state),
            self.log_tail()
        );
        assert_clean();
    }

    /// Waits for the CRI to answer on the socket (which the CRI plugin, required
    /// by the config, answers last).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let version = loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                panic!(
                    "containerd exited during start-up ({status})\n{}",
                    self.log_tail()
                );
            }
            let answer = self
                .socket
                .exists()
                .then(|| Cri::try_connect(&self.socket).ok())
                .flatten();
            match answer.map(|cri| cri.try_version()) {
                Some(Ok(version)) => break version,
                Some(Err(status)) if Instant::now() >= deadline => {
                    panic!(
                        "containerd's CRI does not answer: {status}\n{}",
                        self.log_tail()
                    )
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            version.runtime_api_version, "v1",
            "containerd's CRI: {version:?}"
        );
    }

    /// Removes what the test left (tasks, with a warning on stderr), then stops containerd.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            for namespace in [CRI_NAMESPACE, "default"] {
                for task in self.try_tasks(namespace).unwrap_or_default() {
                    eprintln!(
                        "containerd fixture: removing task {namespace}/{task} left by the test"
                    );
                    let mut command = self.ctr_command(namespace);
                    command.args(["--timeout", "60s", "tasks", "rm", "-f", &task]);
                    let _ = run_with_deadline(command, None, Duration::from_secs(90));
                }
            }
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        self.stop();
        for (pid, cmdline) in self.shims() {
            eprintln!("containerd fixture: killing shim {pid} ({cmdline}) and its descendants");
            kill_tree(pid);
            delete_after_dead_shim(&cmdline);
        }
        let mut mounts = mounts_under(self.dir.path());
        mounts.reverse();
        for point in mounts {
            if nix::mount::umount(&point).is_err() {
                let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Panics if runv left something behind: a `runv-vmm` or `containerd-shim-runv-v2`
/// process, a mount under `/run/runv`, or an entry in `/run/runv` (the shim's
/// per-pod directories). Waits up to 10 s for exiting processes to go.
pub fn assert_clean() {
    let run_dir = Path::new(RUNV_RUN_DIR);
    let leftovers = || {
        let mut left: Vec<String> = ["runv-vmm", "containerd-shim-runv-v2"]
            .iter()
            .flat_map(|name| pids_named(name))
            .map(|(pid, cmdline)| format!("process {pid}: {cmdline}"))
            .collect();
        left.extend(
            mounts_under(run_dir)
                .iter()
                .map(|point| format!("mount: {}", point.display())),
        );
        if let Ok(entries) = fs::read_dir(run_dir) {
            left.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| format!("entry: {}", e.path().display())),
            );
        }
        left.extend(
            pod_cgroups_left()
                .iter()
                .map(|dir| format!("cgroup: {}", dir.display())),
        );
        left
    };
    if !wait_until(Duration::from_secs(10), || leftovers().is_empty()) {
        panic!("runv left behind:\n{}", leftovers().join("\n"));
    }
}

/// Cgroups that `ctr run` pods (`/default/<id>`) left in the host's memory
/// and pids hierarchies (v1) or the unified one (v2).
pub fn pod_cgroups_left() -> Vec<PathBuf> {
    ["memory/default", "pids/default", "default"]
        .iter()
        .filter_map(|dir| fs::read_dir(Path::new("/sys/fs/cgroup").join(dir)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .collect()
}

/// The cgroup of process `pid` in the hierarchy holding `controller` (v1),
/// or its unified one (v2), as `/proc/<pid>/cgroup` names it.
pub fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|err| panic!("/proc/{pid}/cgroup: {err}"));
    let in_line = |line: &str| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        (controllers.split(',').any(|c| c == controller) || controllers.is_empty())
            .then(|| (controllers.is_empty(), path.to_owned()))
    };
    let mut found: Vec<(bool, String)> = text.lines().filter_map(in_line).collect();
    // A v1 controller's own line first; the unified line where there is none.
    found.sort();
    found
        .into_iter()
        .next()
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no {controller} cgroup in /proc/{pid}/cgroup:\n{text}"))
}

pub use shim::config::RunvConfig;

/// runv's config file as the tests write it for the shim.
pub trait TestRunvConfig {
    /// The artefacts under test (`RUNV_VMM`, `RUNV_KERNEL`, `RUNV_INITRD`; empty
    /// paths where unset: the runc-only harness check needs none), 1 vCPU,
    /// 256 MiB, debug logs, the shim's defaults otherwise.
    fn from_env() -> Self;
    /// The config as TOML.
    fn to_toml(&self) -> String;
}

impl TestRunvConfig for RunvConfig {
    fn from_env() -> Self {
        let env_path = |var| std::env::var_os(var).map(PathBuf::from).unwrap_or_default();
        RunvConfig {
            vmm: env_path("RUNV_VMM"),
            kernel: env_path("RUNV_KERNEL"),
            initrd: env_path("RUNV_INITRD"),
            default_vcpus: 1,
            default_memory_mib: 256,
            boot_timeout_secs: 120,
            log_level: "debug".into(),
            vmm_jail: true,
            ..RunvConfig::default()
        }
    }

    fn to_toml(&self) -> String {
        toml::to_string(self).expect("runv's config serialises")
    }
}

/// Panics unless the runv artefacts a shim test needs are set and exist:
/// `RUNV_SHIM`, `RUNV_VMM`, `RUNV_KERNEL`, `RUNV_INITRD`.
pub fn require_runv() {
    for (var, builder) in [
        (
            "RUNV_SHIM",
            "cargo build --release (target/release/containerd-shim-runv-v2)",
        ),
        ("RUNV_VMM", "scripts/build-vmm (a static runv-vmm)"),
        ("RUNV_KERNEL", "guest-kernel/build.sh"),
        ("RUNV_INITRD", "images/build-initrd.sh"),
    ] {
        let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "{var} is not set: run through scripts/test, or set it to the output of {builder}"
            )
        });
        assert!(path.is_file(), "{var}={} is not a file", path.display());
    }
}

/// A TOML basic string (a JSON string literal is one).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

fn config_toml(dir: &Path, socket: &Path) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let runtimes = format!("{cri}.containerd.runtimes");
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    format!(
        r#"{header}
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  netns_mounts_under_state_dir = true

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {cni}

[{cri}.containerd]
  default_runtime_name = "runc"
  snapshotter = "overlayfs"
{runtime_tables}"#,
        header = config_header(2, &["io.containerd.snapshotter.v1.aufs"], dir, socket),
        cni = path(dir.join("cni")),
        runtime_tables = runtimes_toml(&runtimes, RUNV_TABLE_V2, dir),
    )
}

/// What the configs of both schemas (`version`) share: the instance's root,
/// state and sockets, the CRI required, the plugins it does not use disabled
/// (with `disabled` of this schema's), containerd's log at info.
fn config_header(version: u32, disabled: &[&str], dir: &Path, socket: &Path) -> String {
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    let disabled: String = disabled
        .iter()
        .chain(&[
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.internal.v1.opt",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ])
        .map(|plugin| format!("  {plugin:?},\n"))
        .collect();
    format!(
        r#"version = {version}
root = {root}
state = {state}
# Without its CRI, containerd should not start at all (the failure is then in its log).
required_plugins = ["io.containerd.grpc.v1.cri"]
# Nothing we do not use: start-up stays fast and touches no host path. (The tasks
# service needs the legacy io.containerd.runtime.v1.linux plugin loaded.)
disabled_plugins = [
{disabled}]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "info"
"#,
        root = path(dir.join("root")),
        state = path(dir.join("state")),
        grpc = path(socket.to_path_buf()),
        ttrpc = path(dir.join("containerd.sock.ttrpc")),
    )
}

/// The `runc` table (the CRI's default) under the CRI's `runtimes` table,
/// then `runv_table` (of `deploy/containerd/`, in the same schema) naming
/// this instance's `runv.toml` as its `ConfigPath`.
fn runtimes_toml(runtimes: &str, runv_table: &str, dir: &Path) -> String {
    let runv = with_config_path(runv_table, &dir.join("runv.toml"));
    format!(
        r#"
[{runtimes}.runc]
  runtime_type = "io.containerd.runc.v2"

{runv}"#
    )
}

/// `table` with the `ConfigPath` line naming `config` instead of
/// [`DEPLOYED_RUNV_CONFIG`]; panics unless `table` has that line once.
fn with_config_path(table: &str, config: &Path) -> String {
    let deployed = format!("ConfigPath = {}", toml_string(DEPLOYED_RUNV_CONFIG));
    assert_eq!(
        table.matches(&deployed).count(),
        1,
        "a runv table of deploy/containerd/ should hold `{deployed}` once:\n{table}"
    );
    let ours = format!(
        "ConfigPath = {}",
        toml_string(&config.display().to_string())
    );
    table.replace(&deployed, &ours)
}

/// The configuration of containerd 2.x (schema version 3: the CRI split into
/// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`), with
/// the same choices as [`config_toml`]'s for 1.x.
fn config_toml_v3(dir: &Path, socket: &Path) -> String {
    let images = "plugins.'io.containerd.cri.v1.images'";
    let runtime = "plugins.'io.containerd.cri.v1.runtime'";
    let runtimes = format!("{runtime}.containerd.runtimes");
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    format!(
        r#"{header}
[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[{runtime}]
  disable_apparmor = true
  netns_mounts_under_state_dir = true

[{runtime}.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = {cni}

[{runtime}.containerd]
  default_runtime_name = "runc"
{runtime_tables}"#,
        header = config_header(3, &[], dir, socket),
        cni = path(dir.join("cni")),
        runtime_tables = runtimes_toml(&runtimes, RUNV_TABLE_V3, dir),
    )
}

/// The version of the containerd the tests start (the first on their `PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    /// Major version: 1 or 2.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// As `containerd --version` prints it (`v2.3.4`, `1.6.20~ds1`).
    pub text: String,
}

impl ContainerdVersion {
    /// Asks the containerd on [`search_path`], once per process; panics if
    /// there is none, if its answer does not parse, or if it is not the
    /// version `RUNV_CONTAINERD_VERSION` names (`major.minor`, where a run
    /// asks for one).
    pub fn on_path() -> Self {
        static ON_PATH: std::sync::OnceLock<ContainerdVersion> = std::sync::OnceLock::new();
        ON_PATH.get_or_init(Self::ask).clone()
    }

    fn ask() -> Self {
        let output = Command::new("containerd")
            .arg("--version")
            .env("PATH", search_path())
            .output()
            .unwrap_or_else(|err| {
                panic!("run containerd --version (scripts/setup installs it): {err}")
            });
        let answer = String::from_utf8_lossy(&output.stdout);
        let version =
            Self::parse(&answer).unwrap_or_else(|| panic!("containerd --version said {answer:?}"));
        if let Ok(wanted) = std::env::var("RUNV_CONTAINERD_VERSION") {
            let have = format!("{}.{}", version.major, version.minor);
            assert_eq!(
                have, wanted,
                "RUNV_CONTAINERD_VERSION asks for containerd {wanted}, PATH gives {}",
                version.text
            );
        }
        version
    }

    /// Parses `containerd <module> <version> <revision>`.
    pub fn parse(answer: &str) -> Option<Self> {
        let text = answer.split_whitespace().nth(2)?;
        let mut numbers = text.trim_start_matches('v').split(['.', '~', '+', '-']);
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(Self {
            major,
            minor,
            text: text.to_string(),
        })
    }
}

/// A bridge with host-local addresses in `10.233.<subnet>.0/24`; the bridge has
/// the gateway address `.1` (`isGateway`), which is the pods' default route
/// (`isDefaultGateway`); no masquerading: pods reach the host and each other,
/// and nothing beyond.
fn cni_conflist(dir: &Path, bridge: &str, subnet: u8) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "runv-test",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("10.233.{subnet}.0/24") }]],
                "dataDir": dir.join("cni-ipam"),
            },
        }],
    })
    .to_string()
}

/// A bridge name unique to this process and instance (at most 15 bytes), and
/// the third octet of the instance's subnet: distinct for instances of one
/// process (tests of a suite may run at once, and each bridge routes its
/// subnet on the host).
fn bridge_name_and_subnet() -> (String, u8) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (format!("rvt{}x{n}", std::process::id()), (n % 256) as u8)
}

/// Reads the programs containerd will run (once per process, on a thread of its
/// own) while containerd starts. In the KVM test host they come over 9p: a cold
/// Go binary takes seconds to load, and would be loaded one by one on demand.
fn prewarm_binaries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let search = search_path();
        let mut paths: Vec<PathBuf> = ["ctr", "runc", "containerd-shim-runc-v2"]
            .iter()
            .filter_map(|name| {
                std::env::split_paths(&search)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
            .collect();
        paths.extend(
            [
                "/usr/lib/cni/bridge",
                "/usr/lib/cni/host-local",
                "/usr/lib/cni/loopback",
            ]
            .iter()
            .map(PathBuf::from),
        );
        paths.extend(
            ["RUNV_SHIM", "RUNV_VMM"]
                .iter()
                .filter_map(std::env::var_os)
                .map(PathBuf::from),
        );
        std::thread::spawn(move || {
            for path in paths {
                let _ = fs::read(path);
            }
        });
    });
}

/// `PATH` with `RUNV_SHIM`'s directory first, where containerd (and the runv
/// CLI) find `containerd-shim-runv-v2`.
pub fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(shim) = std::env::var_os("RUNV_SHIM").map(PathBuf::from) {
        if let Some(parent) = shim.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("PATH entries hold no ':'")
}

/// How many processes task `task` of `namespace` runs (0 if there is no such task).
fn task_processes(socket: &Path, task: &str) -> usize {
    let mut command = Command::new("ctr");
    command
        .arg("--address")
        .arg(socket)
        .args(["tasks", "ps", task]);
    match run_with_deadline(command, None, Duration::from_secs(30)) {
        // A header line, then one line per process.
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .count()
            .saturating_sub(1),
        _ => 0,
    }
}

/// The STATUS column of task `id` of namespace `default` in `ctr tasks ls`.
fn task_status(socket: &Path, id: &str) -> Option<String> {
    let mut command = Command::new("ctr");
    command.arg("--address").arg(socket).args(["tasks", "ls"]);
    let output = run_with_deadline(command, None, Duration::from_secs(30)).ok()?;
    let list = String::from_utf8_lossy(&output.stdout);
    // TASK PID STATUS, after a header line.
    list.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [task, _, status] if *task == id => Some(status.to_string()),
            _ => None,
        }
    })
}

fn test_image_tarball() -> PathBuf {
    let path = std::env::var_os("RUNV_TEST_IMAGE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("RUNV_TEST_IMAGE is not set: run through scripts/test or set it to the output of images/build-test-image.sh")
    });
    assert!(
        path.is_file(),
        "RUNV_TEST_IMAGE={} is not a file",
        path.display()
    );
    path
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|err| panic!("create {}: {err}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

/// Polls `done` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What to write to a command's standard input, and when to close it.
pub struct Feed {
    /// Written first, in full (unless the reader goes away).
    pub data: Vec<u8>,
    /// Polled after the data is written: stdin is closed once this holds, or
    /// once the command has exited.
    pub close_when: Box<dyn Fn() -> bool + Send>,
}

/// The last `count` lines of the file at `path`, under a header naming it.
pub fn file_tail(path: &Path, count: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(count)..].join("\n");
    format!(
        "--- {} (last {} lines)\n{tail}",
        path.display(),
        lines.len().min(count)
    )
}

/// Runs `command` with `stdin` (or none) and its output captured; `Err` with what
/// it printed if it ran past `timeout` and was killed.
pub fn run_with_deadline(
    mut command: Command,
    stdin: Option<Feed>,
    timeout: Duration,
) -> Result<Output, Output> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let exited = Arc::new(AtomicBool::new(false));
    let writer = stdin.map(|feed| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let exited = exited.clone();
        std::thread::spawn(move || {
            // A reader that stops early closes the pipe: the write error is its business.
            let _ = pipe.write_all(&feed.data);
            while !exited.load(Ordering::Relaxed) && !(feed.close_when)() {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut data = Vec::new();
            let _ = pipe.read_to_end(&mut data);
            data
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + timeout;
    let (status, timed_out): (ExitStatus, bool) = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("wait for a killed child"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    exited.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        Err(output)
    } else {
        Ok(output)
    }
}

/// SIGKILLs `pid` and every process descending from it (children first found,
/// then killed together so none is re-parented out of reach).
/// What containerd does after a shim died: runs its binary's `delete` with the
/// shim's own namespace, address and id, so that it cleans up what the pod had.
fn delete_after_dead_shim(cmdline: &str) {
    let words: Vec<&str> = cmdline.split(' ').collect();
    let flag = |name: &str| {
        words
            .iter()
            .position(|word| *word == name)
            .and_then(|at| words.get(at + 1))
            .copied()
    };
    let (Some(program), Some(namespace), Some(address), Some(id)) = (
        words.first(),
        flag("-namespace"),
        flag("-address"),
        flag("-id"),
    ) else {
        return;
    };
    let mut command = Command::new(program);
    command
        .args([
            "-namespace",
            namespace,
            "-address",
            address,
            "-id",
            id,
            "delete",
        ])
        .current_dir("/")
        // What containerd gives a shim binary it runs (the shim crate needs
        // TTRPC_ADDRESS; without it `delete` failed and the pod's directory stayed).
        .env("NAMESPACE", namespace)
        .env("GRPC_ADDRESS", address)
        .env("TTRPC_ADDRESS", format!("{address}.ttrpc"));
    // Only after a test left a shim: what the cleanup said is worth reading.
    let output = match run_with_deadline(command, None, Duration::from_secs(30)) {
        Ok(output) | Err(output) => output,
    };
    eprintln!(
        "containerd fixture: {program} delete {id}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
}

fn kill_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(children_of(parent));
        i += 1;
    }
    for pid in tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid.and_then(|p| p.parse::<i32>().ok()) == Some(parent)
        })
        .collect()
}

/// The runtime a tier-4 suite runs its containers in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Runtime {
    /// runv (`io.pouch.runv.v2`, CRI handler `runv`).
    Runv,
    /// runc: a peer in mixed checks, and the runtime under test with
    /// `RUNV_TIER4_PEER=runc` (to check a suite itself).
    Runc,
}

impl Runtime {
    /// runv unless `RUNV_TIER4_PEER=runc`; checks runv's preconditions.
    pub fn under_test() -> Self {
        match std::env::var("RUNV_TIER4_PEER").as_deref() {
            Ok("runc") => Runtime::Runc,
            Ok(other) if !other.is_empty() => panic!("RUNV_TIER4_PEER must be runc, not {other:?}"),
            _ => {
                crate::host::require_kvm();
                require_runv();
                Runtime::Runv
            }
        }
    }

    /// `ctr run` with this runtime, then `args`.
    pub fn run_args(self, containerd: &Containerd, args: &[&str]) -> Vec<String> {
        let mut all = vec!["run".to_owned()];
        if self == Runtime::Runv {
            let config = containerd.runv_config_path().display().to_string();
            all.extend(["--runtime".into(), RUNV_RUNTIME.into()]);
            all.extend(["--runtime-config-path".into(), config]);
        }
        all.extend(args.iter().map(|arg| arg.to_string()));
        all
    }

    /// A short name, for ids and reports.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runv => "runv",
            Runtime::Runc => "runc",
        }
    }

    /// The CRI runtime handler (the fixture's config names both).
    pub fn handler(self) -> &'static str {
        match self {
            Runtime::Runv => RUNV_HANDLER,
            Runtime::Runc => "runc",
        }
    }
}

/// `len` bytes of a fixed pseudo-random pattern (every byte value occurs).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where runv's runtime table sits in containerd 1.x's config (version 2).
    const RUNV_PATH_V2: [&str; 5] = [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
        RUNV_HANDLER,
    ];
    /// Where it sits in containerd 2.x's config (version 3).
    const RUNV_PATH_V3: [&str; 5] = [
        "plugins",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
        RUNV_HANDLER,
    ];

    fn parse(text: &str) -> toml::Table {
        toml::from_str(text).unwrap_or_else(|err| panic!("does not parse: {err}\n{text}"))
    }

    /// The table at `path` in `doc`.
    fn table<'a>(doc: &'a toml::Table, path: &[&str]) -> &'a toml::Table {
        path.iter().fold(doc, |table, key| {
            table
                .get(*key)
                .and_then(toml::Value::as_table)
                .unwrap_or_else(|| panic!("no table {key} on the way to {path:?}"))
        })
    }

    /// [`table`], to change.
    fn table_mut<'a>(doc: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
        path.iter().fold(doc, |table, key| {
            table
                .get_mut(*key)
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("no table {key} on the way to {path:?}"))
        })
    }

    /// runv's runtime table as the tests and operators want it, naming `config`.
    fn expected_runv_table(config: &str) -> toml::Table {
        parse(&format!(
            r#"runtime_type = "{RUNV_RUNTIME}"
pod_annotations = ["io.pouch.runv.*"]
container_annotations = ["io.pouch.runv.*"]
options = {{ ConfigPath = {} }}
"#,
            toml_string(config)
        ))
    }

    #[test]
    fn deployed_tables_parse_and_hold_only_runvs_runtime() {
        for (snippet, path) in [(RUNV_TABLE_V2, RUNV_PATH_V2), (RUNV_TABLE_V3, RUNV_PATH_V3)] {
            let doc = parse(snippet);
            assert_eq!(
                table(&doc, &path),
                &expected_runv_table(DEPLOYED_RUNV_CONFIG)
            );
            let mut only = doc.clone();
            table_mut(&mut only, &path[..4]).remove(RUNV_HANDLER);
            let empty = path[..4]
                .iter()
                .rev()
                .fold(toml::Table::new(), |inner, key| {
                    toml::Table::from_iter([(key.to_string(), toml::Value::Table(inner))])
                });
            assert_eq!(only, empty, "more than runv's table in:\n{snippet}");
        }
    }

    #[test]
    fn fixture_configs_hold_the_deployed_table_naming_the_tests_runv_toml() {
        let dir = Path::new("/tmp/runv-containerd.test");
        let socket = dir.join("containerd.sock");
        let ours = dir.join("runv.toml").display().to_string();
        for (config, version, path) in [
            (config_toml(dir, &socket), 2, RUNV_PATH_V2),
            (config_toml_v3(dir, &socket), 3, RUNV_PATH_V3),
        ] {
            assert!(
                !config.contains(DEPLOYED_RUNV_CONFIG),
                "the fixture names the host's runv config:\n{config}"
            );
            assert!(config.contains(&ours), "{ours} is not named:\n{config}");
            let doc = parse(&config);
            assert_eq!(doc.get("version"), Some(&toml::Value::Integer(version)));
            assert_eq!(table(&doc, &path), &expected_runv_table(&ours));
            let runc = table(&doc, &[&path[..4], &["runc"]].concat()).clone();
            assert_eq!(
                runc,
                parse(r#"runtime_type = "io.containerd.runc.v2""#),
                "{config}"
            );
        }
    }

    #[test]
    fn the_runtime_class_names_the_deployed_handler() {
        let manifest = include_str!("../../deploy/runtimeclass.yaml");
        let handler = format!("handler: {RUNV_HANDLER}");
        assert!(
            manifest.lines().any(|line| line == handler),
            "deploy/runtimeclass.yaml lacks `{handler}`"
        );
        assert!(manifest.contains("podFixed:"), "{manifest}");
    }

    #[test]
    fn a_table_without_the_deployed_config_path_is_refused() {
        let refused = std::panic::catch_unwind(|| {
            with_config_path("[x]\n  ConfigPath = \"/other\"\n", Path::new("/t"))
        });
        assert!(refused.is_err());
    }
}

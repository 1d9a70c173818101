//! Pod networking against the real kernel: throwaway network namespaces with
//! veths in them, made with `ip` (tests may use it; the product speaks
//! rtnetlink itself). They need root and fail without it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use serde_json::Value;

use super::*;

mod bounds;
mod frames;

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the pod network tests must run as root: they make network namespaces, veths and taps"
    );
}

/// A throwaway network namespace, `/run/netns/<name>`, deleted on drop.
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> Self {
        require_root();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "runvt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &str) -> String {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// Runs `ip -n <ns> -batch -` on `commands`, which must all succeed.
    fn ip_batch(&self, commands: &str) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(commands.as_bytes())
            .expect("write the batch");
        let output = child.wait_with_output().expect("ip -batch");
        assert!(
            output.status.success(),
            "ip -batch failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `tc -n <ns> -j <args>` as JSON.
    fn tc_json(&self, args: &str) -> Value {
        let out = run(Command::new("tc")
            .args(["-n", &self.name, "-j"])
            .args(args.split_whitespace()));
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("tc json")
    }

    /// Whether link `name` exists in the namespace.
    /// Whether link `name` is gone, waiting up to a second: a test running
    /// beside this one may fork while a tap's fd is open, and the copy keeps
    /// the tap until that child execs.
    fn link_gone(&self, name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            if !self.has_link(name) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ip link show")
            .success()
    }

    /// `ip -j link show dev <name>` as JSON (the link's object).
    fn link(&self, name: &str) -> Value {
        let out =
            run(Command::new("ip").args(["-n", &self.name, "-j", "link", "show", "dev", name]));
        let links: Value = serde_json::from_str(&out).expect("ip json");
        links[0].clone()
    }

    /// The kinds of the qdiscs of link `name`.
    fn qdiscs(&self, name: &str) -> Vec<String> {
        let qdiscs = self.tc_json(&format!("qdisc show dev {name}"));
        qdiscs
            .as_array()
            .expect("qdisc list")
            .iter()
            .filter_map(|q| q["kind"].as_str().map(String::from))
            .collect()
    }

    /// Runs `work` on a thread inside the namespace.
    fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("open the test netns");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    work()
                })
                .join()
                .expect("netns thread panicked")
        })
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a test command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A pod namespace with `eth0` (10.99.0.2/24, fd00:99::2/64, MTU 1400,
/// default routes via .1 / ::1, and 10.100.0.0/16 via .1) whose veth peer
/// `vbr0` sits, up, in a second namespace: the bridge side.
struct Pod {
    pod: TestNs,
    bridge: TestNs,
}

fn pod_with_veth() -> Pod {
    let pod = TestNs::new();
    let bridge = TestNs::new();
    pod.ip("link add eth0 mtu 1400 type veth peer name vbr0 mtu 1400");
    pod.ip(&format!("link set vbr0 netns {}", bridge.name));
    pod.ip_batch(
        "addr add 10.99.0.2/24 dev eth0\n\
         addr add fd00:99::2/64 dev eth0 nodad\n\
         link set eth0 up\n\
         route add default via 10.99.0.1\n\
         route add 10.100.0.0/16 via 10.99.0.1\n\
         route add default via fd00:99::1\n",
    );
    bridge.ip("link set vbr0 up");
    Pod { pod, bridge }
}

fn route_key(route: &api::Route) -> (String, String, String, String, u32) {
    (
        route.dest.clone(),
        route.gateway.clone(),
        route.device.clone(),
        route.source.clone(),
        route.scope,
    )
}

/// The target device of the (one) redirect on the ingress of link `name`,
/// and its cookie.
fn redirect_of(ns: &TestNs, name: &str) -> Option<(String, String)> {
    let filters = ns.tc_json(&format!("filter show dev {name} parent ffff:"));
    filters.as_array()?.iter().find_map(|filter| {
        let action = &filter["options"]["actions"][0];
        let to = action["to_dev"].as_str()?;
        Some((to.to_string(), action["cookie"].as_str()?.to_string()))
    })
}

fn current_netns() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("read my netns")
}

/// A raw socket on link `name` of the calling thread's namespace, with a
/// receive timeout.
#[test]
fn closing_the_tap_deletes_it_and_teardown_still_finds_our_qdisc() {
    let Pod {
        pod,
        bridge: _bridge,
    } = pod_with_veth();
    let network = PodNetwork::setup(&pod.path()).expect("setup");
    assert!(pod.has_link("tap0_runv"));
    drop(network);
    assert!(pod.link_gone("tap0_runv"), "a closed tap must disappear");
    // The veth's redirect now points nowhere: the cookie still marks it.
    assert!(pod.qdiscs("eth0").contains(&"ingress".to_string()));
    teardown(&pod.path()).expect("teardown");
    assert!(!pod.qdiscs("eth0").contains(&"ingress".to_string()));
}

#[test]
fn a_failed_setup_undoes_itself_and_teardown_spares_other_qdiscs() {
    let pod = TestNs::new();
    pod.ip_batch(
        "link add eth0 type veth peer name peer0\n\
         link add eth1 type veth peer name peer1\n\
         addr add 10.98.0.2/24 dev eth0\n\
         addr add 10.98.1.2/24 dev eth1\n\
         link set eth0 up\n\
         link set eth1 up\n",
    );
    // A CNI plugin's own ingress qdisc and filter on the second interface.
    run(Command::new("tc").args(["-n", &pod.name, "qdisc", "add", "dev", "eth1", "ingress"]));
    run(Command::new("tc").args([
        "-n", &pod.name, "filter", "add", "dev", "eth1", "parent", "ffff:", "protocol", "all",
        "prio", "7", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
        "dev", "peer1",
    ]));

    let err = PodNetwork::setup(&pod.path()).expect_err("eth1 is taken");
    assert!(
        matches!(&err, NetworkError::IngressTaken { link } if link == "eth1"),
        "{err}"
    );
    assert!(pod.link_gone("tap0_runv") && pod.link_gone("tap1_runv"));
    assert!(!pod.qdiscs("eth0").contains(&"ingress".to_string()));
    assert!(pod.qdiscs("eth1").contains(&"ingress".to_string()));

    teardown(&pod.path()).expect("teardown");
    assert!(pod.qdiscs("eth1").contains(&"ingress".to_string()));
    let filters = pod.tc_json("filter show dev eth1 parent ffff:");
    assert!(!filters.as_array().expect("filters").is_empty());
}

#[test]
fn a_namespace_with_only_lo_has_no_interfaces() {
    let pod = TestNs::new();
    // Even a veth without a global address is not a pod interface.
    pod.ip("link add veth9 type veth peer name veth9p");
    pod.ip("link set veth9 up");
    let network = PodNetwork::setup(&pod.path()).expect("setup");
    assert!(network.interfaces.is_empty());
    assert!(network.routes.is_empty());
    teardown(&pod.path()).expect("teardown");
}

#[test]
fn the_host_namespace_and_other_paths_are_refused() {
    require_root();
    // PID 1's namespace where this sandbox lets us see it; always our own.
    let init = Path::new("/proc/1/ns/net");
    let hosts = [
        Path::new("/proc/self/ns/net"),
        Path::new("/proc/thread-self/ns/net"),
    ];
    let readable_init = std::fs::metadata(init).is_ok().then_some(init);
    for host in hosts.into_iter().chain(readable_init) {
        let host = host.to_str().expect("utf-8");
        let err = PodNetwork::setup(Path::new(host)).expect_err(host);
        assert!(matches!(err, NetworkError::HostNetwork { .. }), "{err}");
        assert!(
            err.to_string().contains(
                "runv pods need a network namespace of their own; host network is not supported"
            ),
            "{err}"
        );
        teardown(Path::new(host)).expect("teardown touches nothing in the host's namespace");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("not-a-netns");
    std::fs::write(&plain, b"").expect("write");
    let err = PodNetwork::setup(&plain).expect_err("a plain file");
    assert!(matches!(err, NetworkError::NotANetns { .. }), "{err}");
    assert!(
        err.to_string().contains(&plain.display().to_string()),
        "{err}"
    );
    teardown(&plain).expect("teardown of a path that is no namespace");

    // A namespace file, but not a network namespace: setns() refuses it.
    let mnt = Path::new("/proc/self/ns/mnt");
    let err = PodNetwork::setup(mnt).expect_err("a mount namespace");
    assert!(matches!(err, NetworkError::EnterNetns { .. }), "{err}");
    assert!(err.to_string().contains("/proc/self/ns/mnt"), "{err}");

    let missing = dir.path().join("gone");
    let err = PodNetwork::setup(&missing).expect_err("missing");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    teardown(&missing).expect("teardown of a namespace that is gone");

    // A FIFO is not opened for reading (which would block).
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let err = PodNetwork::setup(&fifo).expect_err("a fifo");
    assert!(matches!(err, NetworkError::NotANetns { .. }), "{err}");
}

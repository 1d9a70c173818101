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

use super::scan::{MAX_ADDRESSES, MAX_INTERFACES, MAX_LINKS, MAX_ROUTES};
use super::*;

/// An ethertype for local experiments (IEEE 802): nothing else sends it.
const TEST_ETHERTYPE: u16 = 0x88b5;
/// How long a test frame may take to arrive.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

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
fn packet_socket(name: &str) -> (OwnedFd, i32) {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() takes no pointers; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let index = i32::try_from(tap::index_of(name).expect("ifindex")).expect("ifindex range");
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index;
    // SAFETY: bind reads one sockaddr_ll of the length given, which outlives the call.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
    (socket, index)
}

/// An Ethernet frame of [`TEST_ETHERTYPE`] carrying `marker`.
fn frame(dst: [u8; 6], src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(marker);
    frame.resize(64, 0);
    frame
}

fn carries(frame: &[u8], marker: &[u8]) -> bool {
    frame.len() >= 14 + marker.len()
        && frame[12..14] == TEST_ETHERTYPE.to_be_bytes()
        && &frame[14..14 + marker.len()] == marker
}

fn parse_mac(text: &str) -> [u8; 6] {
    protocol::mac::parse_mac(text).expect("the kernel's MAC")
}

/// Waits until `fd` is readable; false after `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll reads and writes one pollfd, which outlives the call.
    unsafe { libc::poll(&mut pollfd, 1, millis) > 0 }
}

/// Reads frames from `fd` until one carries `marker`; the frame (after
/// `skip` bytes of header).
fn receive(fd: BorrowedFd<'_>, skip: usize, marker: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut buffer = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            readable(fd, left),
            "no frame carrying {:?} within {FRAME_TIMEOUT:?}",
            String::from_utf8_lossy(marker)
        );
        // SAFETY: read writes at most buffer.len() bytes into buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
        let got = &buffer[..n as usize];
        if got.len() > skip && carries(&got[skip..], marker) {
            return got[skip..].to_vec();
        }
    }
}

#[test]
fn a_veth_is_joined_to_a_tap_and_frames_flow_both_ways() {
    let Pod { pod, bridge } = pod_with_veth();
    let veth_mac = pod.link("eth0")["address"]
        .as_str()
        .expect("mac")
        .to_string();
    let before = current_netns();

    let network = PodNetwork::setup(&pod.path()).expect("setup");
    assert_eq!(current_netns(), before, "setup moved the caller's thread");

    // What the guest gets.
    assert_eq!(network.interfaces.len(), 1);
    let card = &network.interfaces[0];
    assert_eq!(
        (card.veth.as_str(), card.tap_name.as_str()),
        ("eth0", "tap0_runv")
    );
    assert_eq!(card.mac, veth_mac);
    assert_eq!(card.interface.name, "eth0");
    assert_eq!(card.interface.hw_addr, veth_mac);
    assert_eq!(card.interface.mtu, 1400);
    let addresses: Vec<(String, u32)> = card
        .interface
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    assert_eq!(
        addresses,
        [
            ("10.99.0.2".to_string(), 24),
            ("fd00:99::2".to_string(), 64)
        ]
    );
    let mut routes: Vec<_> = network.routes.iter().map(route_key).collect();
    routes.sort();
    let route = |dest: &str, gateway: &str| {
        (
            dest.to_string(),
            gateway.to_string(),
            "eth0".to_string(),
            String::new(),
            0,
        )
    };
    assert_eq!(
        routes,
        [
            route("", "10.99.0.1"),
            route("", "fd00:99::1"),
            route("10.100.0.0/16", "10.99.0.1")
        ]
    );

    // The tap and the redirects, as `ip` and `tc` see them.
    let tap_link = pod.link("tap0_runv");
    assert_eq!(tap_link["mtu"], 1400);
    assert!(tap_link["flags"]
        .as_array()
        .expect("flags")
        .contains(&"UP".into()));
    assert!(pod.qdiscs("eth0").contains(&"ingress".to_string()));
    assert!(pod.qdiscs("tap0_runv").contains(&"ingress".to_string()));
    let cookie: String = tc::COOKIE.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        redirect_of(&pod, "eth0"),
        Some(("tap0_runv".into(), cookie.clone()))
    );
    assert_eq!(
        redirect_of(&pod, "tap0_runv"),
        Some(("eth0".into(), cookie))
    );

    // A second setup while the first holds the tap fails and breaks nothing.
    let err = PodNetwork::setup(&pod.path()).expect_err("second setup");
    assert!(err.to_string().contains("tap0_runv"), "{err}");
    assert!(pod.has_link("tap0_runv"));
    assert!(redirect_of(&pod, "eth0").is_some());

    // Guest → bridge: a frame written to the tap leaves by the veth.
    let bridge_mac = parse_mac(bridge.link("vbr0")["address"].as_str().expect("mac"));
    let guest_mac = parse_mac(&veth_mac);
    bridge.enter(|| {
        let (socket, _) = packet_socket("vbr0");
        let mut written = vec![0u8; tap::VNET_HDR_LEN as usize];
        written.extend(frame(bridge_mac, guest_mac, b"runv-to-bridge"));
        let mut tap = File::from(card.tap.try_clone().expect("dup the tap"));
        tap.write_all(&written).expect("write to the tap");
        let got = receive(socket.as_fd(), 0, b"runv-to-bridge");
        assert_eq!(&got[..12], [bridge_mac, guest_mac].concat());

        // Bridge → guest: a frame sent on the far end comes out of the tap.
        let sent = frame(guest_mac, bridge_mac, b"runv-to-guest");
        // SAFETY: send reads sent.len() bytes from sent.
        let n = unsafe { libc::send(socket.as_raw_fd(), sent.as_ptr().cast(), sent.len(), 0) };
        assert_eq!(
            n,
            sent.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    });
    let hdr = tap::VNET_HDR_LEN as usize;
    let got = receive(card.tap.as_fd(), hdr, b"runv-to-guest");
    assert_eq!(&got[..12], [guest_mac, bridge_mac].concat());

    // Teardown removes our qdisc and the tap, even while its fd is open.
    teardown(&pod.path()).expect("teardown");
    assert!(!pod.qdiscs("eth0").contains(&"ingress".to_string()));
    assert!(pod.link_gone("tap0_runv"));
    teardown(&pod.path()).expect("teardown again");
    drop(network);
}

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

/// Asserts that setup in `pod` fails on the bound `max` of `what`.
fn assert_bound(pod: &TestNs, what: &str, max: usize) {
    let err = PodNetwork::setup(&pod.path()).expect_err(what);
    assert!(matches!(err, NetworkError::TooMany { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("more than {max} {what}")), "{text}");
    assert!(pod.link_gone("tap0_runv"));
}

#[test]
fn more_interfaces_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let batch: String = (0..=MAX_INTERFACES)
        .map(|i| {
            format!(
                "link add eth{i} type veth peer name peer{i}\naddr add 10.97.{i}.2/24 dev eth{i}\n"
            )
        })
        .collect();
    pod.ip_batch(&batch);
    assert_bound(&pod, "interfaces", MAX_INTERFACES);
}

#[test]
fn more_addresses_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let mut batch = String::from("link add eth0 type veth peer name peer0\n");
    for i in 0..=MAX_ADDRESSES {
        batch += &format!("addr add 10.96.0.{}/24 dev eth0\n", i + 2);
    }
    pod.ip_batch(&batch);
    assert_bound(&pod, "global addresses on eth0", MAX_ADDRESSES);
}

#[test]
fn more_routes_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let mut batch = String::from(
        "link add eth0 type veth peer name peer0\naddr add 10.95.0.2/16 dev eth0\nlink set eth0 up\n",
    );
    for i in 0..=MAX_ROUTES {
        batch += &format!(
            "route add 10.{}.{}.0/24 via 10.95.0.1\n",
            100 + i / 256,
            i % 256
        );
    }
    pod.ip_batch(&batch);
    assert_bound(&pod, "routes", MAX_ROUTES);
}

#[test]
fn more_links_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let batch: String = (0..MAX_LINKS / 2 + 1)
        .map(|i| format!("link add v{i} type veth peer name w{i}\n"))
        .collect();
    pod.ip_batch(&batch);
    assert_bound(&pod, "links", MAX_LINKS);
}

#[test]
fn the_namespace_thread_leaves_the_callers_namespace_alone() {
    let pod = TestNs::new();
    let before = current_netns();
    let ns = match netns::Netns::open(&pod.path()).expect("open") {
        netns::Opened::Pod(ns) => ns,
        netns::Opened::Missing => panic!("the test netns is missing"),
    };
    let inside = ns.run(|| Ok(current_netns())).expect("run");
    assert_ne!(inside, before);
    assert_eq!(current_netns(), before);
    let fresh = std::thread::spawn(current_netns).join().expect("thread");
    assert_eq!(fresh, before);
}

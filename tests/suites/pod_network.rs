//! Tier 4: pod networking through the CRI. containerd's CNI (Debian's bridge and
//! host-local plugins, the fixture's conflist: a bridge of its own whose `.1` is
//! the host's address and the pods' default route, no masquerading) gives each
//! pod a veth in its network namespace; for a runv pod the shim adds a tap
//! `tap<i>_runv` there, redirects veth ⇄ tap with tc, and the guest's eth0 takes
//! the veth's address, MAC, MTU and routes. Traffic goes only to the bridge's
//! subnet: host ⇄ pod, pod ⇄ pod (runv and runc pods on the same bridge).
//!
//! Each runv pod boots a VM (10-20 s in the emulated test host): the suite boots
//! three, and makes every check it can on each.
//!
//! `RUNV_TIER4_PEER=runc` runs the same checks with runc pods (handler `runc`)
//! instead, to check the suite's own expectations; the checks of runv's own
//! datapath (tap, tc filters) then run against a copy of it the suite makes in the
//! runc pod's namespace once its traffic checks are done.
//!
//! `bench_pod_network_against_runc` is a benchmark (bench/net), not a test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::vmm::{MetricsRequest, VmmClient};

use k8s_cri::v1::{Mount, PodSandboxState};
use runv_tests::containerd::{
    assert_clean, file_tail, pattern, wait_until, Containerd, Runtime, RunvConfig, TestRunvConfig,
    CRI_NAMESPACE, RUNV_RUN_DIR, TEST_IMAGE,
};
use runv_tests::cri::{container_config, pod_config, Cri};
use runv_tests::host::{pids_matching, pids_named};
use runv_tests::net::{
    connect_retrying, http_get, ingress_filters, ingress_qdiscs_everywhere, is_runv_tap, links,
    netns_inode, netns_mounts, qdiscs, require_tun, run_in, runv_taps_everywhere, sandbox_netns,
    sha256_hex, visible_netns, HttpServer, Link, Seen,
};

/// Where busybox httpd listens in every pod.
const HTTPD_PORT: u16 = 8080;
/// The file every pod serves at `/blob`, for the host: made in its container
/// from /dev/urandom.
const BLOB_BYTES: usize = 4 << 20;
/// The file every pod serves at `/small`, for other pods: pod → pod bulk
/// traffic is what makes the nested test host's guests triple-fault most
/// (docs/test-host.md), and reaching each other over TCP is what is tested.
const SMALL_BYTES: usize = 256 << 10;
/// Deadline of one ExecSync (a transfer in the emulated test host included).
const EXEC_TIMEOUT_SECS: i64 = 180;

/// The runtime under test, with tun loaded (runv's taps and the runc
/// imitation of them need it).
fn under_test() -> Runtime {
    require_tun();
    Runtime::under_test()
}

/// A running CRI pod with one container (`sleep`), serving `/blob` with httpd.
struct Pod {
    name: String,
    runtime: Runtime,
    id: String,
    container: String,
    /// The address its CNI result gave it (PodSandboxStatus).
    ip: Ipv4Addr,
    /// Its network namespace on the host (from the sandbox container's spec).
    netns: PathBuf,
    netns_inode: u64,
    /// SHA-256 of the `/blob` it serves, by `sha256sum` in the container.
    blob_sha: String,
    /// SHA-256 of the `/small` it serves.
    small_sha: String,
}

impl Pod {
    /// Runs pod `name` with `runtime`, starts its container, and has it make and
    /// serve its blob.
    fn start(containerd: &Containerd, cri: &Cri, name: &str, runtime: Runtime) -> Self {
        let started = Instant::now();
        let config = pod_config(name);
        let id = cri.run_pod_sandbox(&config, runtime.handler());
        let status = cri.pod_sandbox_status(&id);
        let reported = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let ip: Ipv4Addr = reported
            .parse()
            .unwrap_or_else(|_| panic!("pod {name}: no IPv4 address in its status: {status:?}"));
        let netns = sandbox_netns(containerd, &id);
        let netns_inode = netns_inode(&netns);
        let mut sleeper = container_config("c", TEST_IMAGE, &["sleep", "100000"]);
        sleeper
            .mounts
            .push(kubelet_hosts_file(containerd, name, ip));
        let container = cri.create_container(&id, &sleeper, &config);
        cri.start_container(&container);
        let mut pod = Self {
            name: name.into(),
            runtime,
            id,
            container,
            ip,
            netns,
            netns_inode,
            blob_sha: String::new(),
            small_sha: String::new(),
        };
        let serve = format!(
            "set -e; mkdir -p /srv
             busybox dd if=/dev/urandom of=/srv/blob bs=64k count={} 2>/dev/null
             busybox dd if=/dev/urandom of=/srv/small bs=64k count={} 2>/dev/null
             busybox httpd -p {HTTPD_PORT} -h /srv </dev/null >/dev/null 2>&1
             {}
             sha256sum /srv/blob /srv/small
             echo boot_id $(cat /proc/sys/kernel/random/boot_id)",
            BLOB_BYTES / (64 << 10),
            SMALL_BYTES / (64 << 10),
            wait_listening(HTTPD_PORT)
        );
        let out = pod.sh(cri, &serve);
        pod.blob_sha = sha_of(&out, "/srv/blob");
        pod.small_sha = sha_of(&out, "/srv/small");
        // A runv pod's container runs in the pod's VM, a runc pod's on the host.
        let host_boot_id =
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("host boot_id");
        let boot_id = out
            .lines()
            .find_map(|line| line.strip_prefix("boot_id "))
            .unwrap_or_default();
        assert_eq!(
            boot_id == host_boot_id.trim(),
            runtime == Runtime::Runc,
            "pod {name} ({}): its container's kernel (boot_id {boot_id:?}, the host's {host_boot_id:?})",
            runtime.name()
        );
        eprintln!(
            "pod {name} ({}): {} at {ip}, serving after {:.1} s",
            runtime.name(),
            pod.id,
            started.elapsed().as_secs_f64()
        );
        pod
    }

    /// Runs `script` with sh in the pod's container; its stdout. Panics unless
    /// it exits 0.
    fn sh(&self, cri: &Cri, script: &str) -> String {
        let exec = cri
            .try_exec_sync(&self.container, &["sh", "-c", script], EXEC_TIMEOUT_SECS)
            .unwrap_or_else(|status| {
                panic!(
                    "pod {} ({}): ExecSync of `{script}`: {:?}: {}{}",
                    self.name,
                    self.runtime.name(),
                    status.code(),
                    status.message(),
                    self.diagnostics()
                )
            });
        let stdout = String::from_utf8_lossy(&exec.stdout).into_owned();
        assert_eq!(
            exec.exit_code,
            0,
            "pod {} ({}): `{script}` failed:\n--- stdout\n{stdout}\n--- stderr\n{}{}",
            self.name,
            self.runtime.name(),
            String::from_utf8_lossy(&exec.stderr),
            self.diagnostics()
        );
        stdout
    }

    /// For a failure message: whether a runv pod's VMM lives, and the ends of
    /// its log and (with `RUNV_DEBUG_CONSOLE=1`) of its guest's console.
    fn diagnostics(&self) -> String {
        if self.runtime != Runtime::Runv {
            return String::new();
        }
        let dir = PathBuf::from(RUNV_RUN_DIR).join(&self.id);
        let needle = format!("{}/", dir.display());
        let vmms: Vec<i32> = pids_named("runv-vmm")
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(&needle))
            .map(|(pid, _)| pid)
            .collect();
        let mut text = format!("\n--- runv-vmm of pod {}: {vmms:?}", self.name);
        for log in ["vmm.log", "vm/console.log"] {
            text.push('\n');
            text.push_str(&file_tail(&dir.join(log), 40));
        }
        text
    }

    /// The pod's veth (the pod end of the CNI pair), in its namespace.
    fn veth(&self) -> Link {
        let all = links(Some(&self.netns));
        let veths: Vec<&Link> = all
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .collect();
        match veths.as_slice() {
            [veth] => (*veth).clone(),
            _ => panic!(
                "pod {}: not one veth in its namespace {}: {all:?}",
                self.name,
                self.netns.display()
            ),
        }
    }

    /// Fetches `/small` from `server` inside this pod, with wget; checks it
    /// against the server's SHA-256.
    fn fetch_from(&self, cri: &Cri, server: &Pod) {
        let url = format!("http://{}:{HTTPD_PORT}/small", server.ip);
        let got = self.wget(cri, &url, &format!("/tmp/from-{}", server.name));
        assert_eq!(
            got,
            server.small_sha,
            "{} ({}) fetched /small from {} ({}) with another SHA-256",
            self.name,
            self.runtime.name(),
            server.name,
            server.runtime.name()
        );
    }

    /// `wget url` into `file` in the pod (retried while the server is not up,
    /// for up to 10 s); the SHA-256 of what came.
    fn wget(&self, cri: &Cri, url: &str, file: &str) -> String {
        let script = format!(
            "i=0
             until busybox timeout 120 busybox wget -q -O {file} {url}; do
               i=$((i+1)); [ $i -lt 20 ] || {{ echo 'wget {url} failed' >&2; exit 1; }}
               sleep 0.5
             done
             sha256sum {file}"
        );
        sha_of(&self.sh(cri, &script), file)
    }

    /// Stops and removes the pod (the CRI's way: StopPodSandbox, RemovePodSandbox).
    fn remove(&self, cri: &Cri) {
        cri.stop_pod_sandbox(&self.id);
        cri.remove_pod_sandbox(&self.id);
    }
}

/// A shell loop that waits (up to 10 s) until something listens on TCP `port`.
fn wait_listening(port: u16) -> String {
    format!(
        "i=0
         until busybox netstat -ltn | grep -q ':{port} '; do
           i=$((i+1)); [ $i -lt 100 ] || {{ echo 'nothing listens on {port}' >&2; exit 1; }}
           sleep 0.1
         done"
    )
}

/// The hash `sha256sum` printed for `file` in `out`.
fn sha_of(out: &str, file: &str) -> String {
    out.lines()
        .find_map(|line| {
            let (hash, name) = line.split_once(char::is_whitespace)?;
            (name.trim() == file && hash.len() == 64).then(|| hash.to_owned())
        })
        .unwrap_or_else(|| panic!("no SHA-256 of {file} in: {out}"))
}

/// What `busybox ip` shows of eth0 in a container: MAC, `address/prefix`s,
/// MTU, and the default route's gateway (if eth0 has one).
#[derive(Debug, Default)]
struct GuestEth0 {
    mac: String,
    addresses: Vec<String>,
    mtu: u64,
    default_via: Option<String>,
}

impl GuestEth0 {
    const SCRIPT: &'static str =
        "busybox ip link show dev eth0; busybox ip addr show dev eth0; echo '--- routes'; busybox ip route show";

    fn parse(out: &str) -> Self {
        let mut eth0 = GuestEth0::default();
        let (interface, routes) = out.split_once("--- routes").unwrap_or((out, ""));
        for line in interface.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(at) = words.iter().position(|w| *w == "mtu") {
                eth0.mtu = words.get(at + 1).and_then(|m| m.parse().ok()).unwrap_or(0);
            }
            match words.as_slice() {
                ["link/ether", mac, ..] => eth0.mac = mac.to_ascii_lowercase(),
                ["inet", address, ..] => eth0.addresses.push((*address).to_owned()),
                _ => {}
            }
        }
        for line in routes.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["default", "via", gateway, "dev", "eth0", ..] = words.as_slice() {
                eth0.default_via = Some((*gateway).to_owned());
            }
        }
        eth0
    }
}

/// The `/etc/hosts` kubelet gives a pod's containers (its `etc-hosts` file):
/// localhost and the pod's address under its hostname, bound over the CRI's own.
fn kubelet_hosts_file(containerd: &Containerd, name: &str, ip: Ipv4Addr) -> Mount {
    let path = containerd.dir().join(format!("etc-hosts-{name}"));
    let text = format!("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n{ip}\t{name}\n");
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    Mount {
        container_path: "/etc/hosts".into(),
        host_path: path.display().to_string(),
        ..Default::default()
    }
}

/// Inside the pod, its hostname is its name and resolves (through the hosts
/// file kubelet gives it) to its address, where its own httpd answers.
fn check_hostname_resolves(cri: &Cri, pod: &Pod) {
    let out = pod.sh(
        cri,
        &format!(
            "hostname; busybox ping -c 1 -W 5 $(hostname) | head -n 1
             busybox wget -q -O - http://$(hostname):{HTTPD_PORT}/small | sha256sum"
        ),
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(pod.name.as_str()),
        "pod {}: its hostname:\n{out}",
        pod.name
    );
    let resolved = format!("PING {} ({})", pod.name, pod.ip);
    assert!(
        lines.next().is_some_and(|line| line.starts_with(&resolved)),
        "pod {}: its hostname does not resolve to {}:\n{out}",
        pod.name,
        pod.ip
    );
    assert_eq!(
        lines.next().and_then(|line| line.split_whitespace().next()),
        Some(pod.small_sha.as_str()),
        "pod {}: /small fetched by its hostname:\n{out}",
        pod.name
    );
}

/// The pod's eth0, seen from inside, is its veth's twin: the CNI's address (on
/// eth0, with the subnet's prefix), the veth's MAC and MTU, and the default route
/// through the bridge's host address.
fn check_eth0(containerd: &Containerd, cri: &Cri, pod: &Pod) {
    let (subnet, prefix) = containerd.pod_subnet();
    let in_subnet = u32::from(pod.ip) >> (32 - prefix) == u32::from(subnet) >> (32 - prefix);
    assert!(
        in_subnet,
        "pod {}: address {} outside the CNI subnet {subnet}/{prefix}",
        pod.name, pod.ip
    );
    let veth = pod.veth();
    let out = pod.sh(cri, GuestEth0::SCRIPT);
    let eth0 = GuestEth0::parse(&out);
    let expected = format!("{}/{prefix}", pod.ip);
    assert_eq!(
        eth0.addresses,
        vec![expected],
        "pod {}: eth0's IPv4 addresses (the CNI result's is {}):\n{out}",
        pod.name,
        pod.ip
    );
    assert_eq!(
        eth0.mac, veth.mac,
        "pod {}: eth0's MAC is not its veth's ({veth:?}):\n{out}",
        pod.name
    );
    assert_eq!(
        eth0.mtu, veth.mtu,
        "pod {}: eth0's MTU is not its veth's ({veth:?}):\n{out}",
        pod.name
    );
    assert_eq!(
        eth0.default_via,
        Some(containerd.gateway().to_string()),
        "pod {}: the default route (through the bridge's host address):\n{out}",
        pod.name
    );
}

/// While a runv pod runs: one tap `tap<i>_runv` beside the veth in its
/// namespace, an ingress qdisc on both, and a filter on each that redirects
/// (mirred) everything to the other.
fn check_datapath(pod: &Pod) {
    let veth = pod.veth();
    let taps: Vec<Link> = links(Some(&pod.netns))
        .into_iter()
        .filter(|l| is_runv_tap(&l.name))
        .collect();
    let [tap] = taps.as_slice() else {
        panic!(
            "pod {}: not one tap<i>_runv beside its veth: {taps:?}",
            pod.name
        );
    };
    // The scans of every namespace, on which the teardown checks rely, see them.
    let seen = runv_taps_everywhere();
    assert!(
        seen.iter()
            .any(|s| s.netns == pod.netns_inode && s.item == tap.name),
        "pod {}: the scan of every namespace misses its {}: {seen:?}",
        pod.name,
        tap.name
    );
    let seen = ingress_qdiscs_everywhere();
    assert!(
        seen.iter().any(|s| s.netns == pod.netns_inode),
        "pod {}: the scan of every namespace misses its ingress qdiscs: {seen:?}",
        pod.name
    );
    let ingress: Vec<String> = qdiscs(Some(&pod.netns))
        .into_iter()
        .filter(|q| q.is_ingress())
        .map(|q| q.dev)
        .collect();
    for (from, to) in [(&veth.name, &tap.name), (&tap.name, &veth.name)] {
        assert!(
            ingress.contains(from),
            "pod {}: no ingress qdisc on {from} (ingress qdiscs on {ingress:?})",
            pod.name
        );
        let filters = ingress_filters(Some(&pod.netns), from);
        assert!(
            filters.contains("u32") && filters.contains("mirred") && filters.contains(to.as_str()),
            "pod {}: no u32 filter on {from}'s ingress redirecting to {to}:\n{filters}",
            pod.name
        );
    }
}

/// With runc under test (`RUNV_TIER4_PEER=runc`): what runv's shim adds to a
/// pod's namespace (a tap, ingress qdiscs, mirred redirects both ways), made by
/// hand in `pod`'s, so that the datapath and teardown checks see a real one. It
/// takes the runc pod's traffic: only once its traffic checks are done.
fn imitate_datapath(pod: &Pod) {
    let veth = pod.veth().name;
    let ns = Some(pod.netns.as_path());
    run_in(
        ns,
        "ip",
        &["tuntap", "add", "dev", "tap0_runv", "mode", "tap"],
    );
    for (from, to) in [(veth.as_str(), "tap0_runv"), ("tap0_runv", veth.as_str())] {
        run_in(ns, "tc", &["qdisc", "add", "dev", from, "ingress"]);
        run_in(
            ns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        );
    }
}

/// The runv datapath's checks: on runv's own, or on an imitation in a runc pod.
fn check_datapath_of_runtime(pod: &Pod) {
    if pod.runtime == Runtime::Runc {
        imitate_datapath(pod);
    }
    check_datapath(pod);
}

/// Every `tap<i>_runv` we can see lives in the namespace of one of `pods`.
fn check_taps_only_in(pods: &[&Pod]) {
    for seen in runv_taps_everywhere() {
        assert!(
            pods.iter().any(|pod| pod.netns_inode == seen.netns),
            "{} in a namespace that is no pod's: {}",
            seen.item,
            seen.path.display()
        );
    }
}

/// After RemovePodSandbox: nothing of `pod` is left. No process names it (its
/// shim, and for runv the VMM under `/run/runv/<id>/`); its network namespace is
/// neither mounted (containerd mounts it in its state dir) nor held by any
/// process or open file.
fn check_pod_gone(pod: &Pod) {
    let gone = wait_until(Duration::from_secs(10), || {
        pids_matching(&pod.id).is_empty() && !visible_netns().contains_key(&pod.netns_inode)
    });
    assert!(
        gone,
        "pod {} ({}) left: processes {:?}; its namespace still visible at {:?}",
        pod.name,
        pod.runtime.name(),
        pids_matching(&pod.id),
        visible_netns().get(&pod.netns_inode)
    );
    let left: Vec<_> = netns_mounts()
        .into_iter()
        .filter(|(inode, point)| *inode == pod.netns_inode || *point == pod.netns)
        .collect();
    assert!(
        left.is_empty(),
        "pod {}: its network namespace is still mounted: {left:?}",
        pod.name
    );
}

/// After every pod is removed: no `tap<i>_runv` in any namespace we can see, no
/// ingress qdisc that was not there before the pods (`baseline`), no network
/// namespace mounted in containerd's state dir, no runv-vmm.
fn check_nothing_left(containerd: &Containerd, baseline: &[Seen]) {
    let state = containerd.dir().join("state");
    let mounted: Vec<_> = netns_mounts()
        .into_iter()
        .filter(|(_, point)| point.starts_with(&state))
        .collect();
    assert!(
        mounted.is_empty(),
        "network namespaces still mounted in containerd's state dir: {mounted:?}"
    );
    let taps = runv_taps_everywhere();
    assert!(taps.is_empty(), "taps left: {taps:?}");
    let ingress: Vec<Seen> = ingress_qdiscs_everywhere()
        .into_iter()
        .filter(|q| {
            !baseline
                .iter()
                .any(|b| b.netns == q.netns && b.item == q.item)
        })
        .collect();
    assert!(ingress.is_empty(), "ingress qdiscs left: {ingress:?}");
    let vmms = pids_named("runv-vmm");
    assert!(vmms.is_empty(), "runv-vmm left: {vmms:?}");
}

/// containerd for a test or the benchmark; runv starts its pods from VM
/// templates if `vm_templates`. With `RUNV_DEBUG_CONSOLE=1`, runv's guests keep
/// their console in `/run/runv/<id>/vm/console.log`, and [`keep_logs`] copies
/// the logs out while the test runs.
fn start_containerd(vm_templates: bool) -> Containerd {
    let containerd = Containerd::start();
    let debug_console = std::env::var("RUNV_DEBUG_CONSOLE").as_deref() == Ok("1");
    if debug_console || vm_templates {
        let config = RunvConfig {
            debug_console,
            vm_templates,
            ..RunvConfig::from_env()
        };
        containerd.write_runv_config(&config.to_toml());
    }
    if debug_console {
        keep_logs(containerd.dir().join("containerd.log"));
    }
    containerd
}

/// Copies, every half second for as long as the process lives, containerd's
/// log and every pod's `vmm.log` and `console.log` (which the shim removes with
/// the pod, also when its VM dies) to `$RUNV_SCRATCH/pod-network-logs/<pid>/`
/// (shared with the host that runs the test host), for a post-mortem.
fn keep_logs(containerd_log: PathBuf) {
    let Some(scratch) = std::env::var_os("RUNV_SCRATCH") else {
        return eprintln!("RUNV_SCRATCH is unset: the pods' logs are not kept");
    };
    let kept = PathBuf::from(scratch)
        .join("pod-network-logs")
        .join(std::process::id().to_string());
    if let Err(err) = std::fs::create_dir_all(&kept) {
        return eprintln!("cannot keep the pods' logs in {}: {err}", kept.display());
    }
    eprintln!("keeping the pods' logs in {}", kept.display());
    std::thread::spawn(move || {
        let mut sizes: BTreeMap<PathBuf, u64> = BTreeMap::new();
        loop {
            let mut sources = vec![(containerd_log.clone(), "containerd.log".to_owned())];
            let pods = std::fs::read_dir(RUNV_RUN_DIR)
                .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_else(|_| Vec::new());
            for pod in pods {
                let id = pod.file_name().unwrap_or_default().to_string_lossy();
                for log in ["vmm.log", "vm/console.log"] {
                    sources.push((pod.join(log), format!("{id}.{}", log.replace('/', "-"))));
                }
            }
            for (source, name) in sources {
                let size = std::fs::metadata(&source).map(|m| m.len()).unwrap_or(0);
                if size > 0 && sizes.get(&source) != Some(&size) {
                    let _ = std::fs::copy(&source, kept.join(name));
                    sizes.insert(source, size);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// Checks left to the end of every test: nothing of containerd's or runv's stays.
fn finish(containerd: Containerd, cri: &Cri) {
    assert!(cri.list_pod_sandboxes(None).is_empty(), "pods left");
    containerd.assert_clean();
    drop(containerd);
    assert_clean();
}

/// One pod: its eth0 has the CNI result's address, the veth's MAC and MTU and the
/// default route; its hostname resolves to its address; the host fetches 4 MiB from the pod's httpd and the pod
/// fetches 4 MiB from the host (a server on the bridge's address), SHA-256
/// checked both ways; its datapath exists while it runs; after StopPodSandbox
/// and RemovePodSandbox nothing of it is left.
#[test]
fn pod_address_and_files_both_ways_with_host() {
    let runtime = under_test();
    let containerd = start_containerd(false);
    let cri = containerd.cri();
    let baseline = ingress_qdiscs_everywhere();
    let pod = Pod::start(&containerd, &cri, "solo", runtime);
    check_eth0(&containerd, &cri, &pod);
    check_hostname_resolves(&cri, &pod);

    // Host → pod: the pod's httpd, by its address.
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), HTTPD_PORT);
    let body = http_get(addr, "/blob", Duration::from_secs(120))
        .unwrap_or_else(|err| panic!("host → pod {}: {err}", pod.name));
    assert_eq!(body.len(), BLOB_BYTES, "host → pod: the size of /blob");
    assert_eq!(
        sha256_hex(&body),
        pod.blob_sha,
        "host → pod: the blob came changed"
    );

    // Pod → host: a server of the test's on the bridge's (the host's) address.
    let payload = pattern(BLOB_BYTES);
    let server = HttpServer::serve(
        SocketAddr::new(IpAddr::V4(containerd.gateway()), 0),
        "/host-blob",
        payload.clone(),
    );
    let url = format!("http://{}/host-blob", server.addr());
    let got = pod.wget(&cri, &url, "/tmp/from-host");
    assert_eq!(
        got,
        sha256_hex(&payload),
        "pod → host: the blob came changed"
    );
    assert_eq!(
        server.served(),
        vec![IpAddr::V4(pod.ip)],
        "pod → host: the host saw the pod's own address (no NAT)"
    );
    drop(server);

    check_datapath_of_runtime(&pod);
    check_taps_only_in(&[&pod]);
    pod.remove(&cri);
    check_pod_gone(&pod);
    check_nothing_left(&containerd, &baseline);
    finish(containerd, &cri);
}

/// Two pods of the runtime under test and a runc pod on the same bridge: each
/// of the first fetches the other's `/small` (TCP both ways), and the first and the
/// runc pod each other's. runv starts both of its pods from a VM template (the
/// first makes it), so their cards run on taps the template never had. The second and the runc pod are removed: nothing of
/// them stays. Then the first pod's VMM is SIGKILLed (with runc: its pause
/// process), and the pod stopped and removed: nothing of it stays either.
#[test]
fn pods_reach_each_other_and_a_killed_vmm_leaves_nothing() {
    let runtime = under_test();
    let templates = std::path::Path::new(shim::paths::TEMPLATES_ROOT);
    let _ = std::fs::remove_dir_all(templates);
    let containerd = start_containerd(runtime == Runtime::Runv);
    let cri = containerd.cri();
    let baseline = ingress_qdiscs_everywhere();
    let first = Pod::start(&containerd, &cri, "first", runtime);
    let second = Pod::start(&containerd, &cri, "second", runtime);
    let peer = Pod::start(&containerd, &cri, "peer", Runtime::Runc);
    if runtime == Runtime::Runv {
        // The shims' lines reach containerd's log through its copy of their
        // log pipes.
        let counts =
            || [" made in ", "VM started from template"].map(|line| containerd.log_count(line));
        let logged = wait_until(Duration::from_secs(10), || counts() == [1, 2]);
        assert!(
            logged,
            "not one VM template made and both pods started from it: {:?}\n{}",
            counts(),
            containerd.log_tail()
        );
    }

    first.fetch_from(&cri, &second);
    second.fetch_from(&cri, &first);
    first.fetch_from(&cri, &peer);
    peer.fetch_from(&cri, &first);
    check_eth0(&containerd, &cri, &first);
    check_eth0(&containerd, &cri, &second);

    check_datapath_of_runtime(&second);
    check_taps_only_in(&[&first, &second, &peer]);
    for pod in [&second, &peer] {
        pod.remove(&cri);
        check_pod_gone(pod);
    }

    let killed = kill_pod_process(&containerd, &first);
    let notready = wait_until(Duration::from_secs(60), || {
        let status = cri.pod_sandbox_status(&first.id).status;
        status.is_some_and(|s| s.state == PodSandboxState::SandboxNotready as i32)
    });
    eprintln!(
        "pod {}: SIGKILLed its {killed}; NOTREADY within 60 s: {notready}",
        first.name
    );
    first.remove(&cri);
    check_pod_gone(&first);
    check_nothing_left(&containerd, &baseline);
    finish(containerd, &cri);
    let _ = std::fs::remove_dir_all(templates);
}

/// SIGKILLs what runs `pod`: for runv, its runv-vmm (the one under
/// `/run/runv/<id>/`); for runc, its sandbox (pause) process. What was killed.
fn kill_pod_process(containerd: &Containerd, pod: &Pod) -> String {
    let (pid, what) = match pod.runtime {
        Runtime::Runv => {
            let dir = format!("{RUNV_RUN_DIR}/{}/", pod.id);
            let vmms: Vec<(i32, String)> = pids_named("runv-vmm")
                .into_iter()
                .filter(|(_, cmdline)| cmdline.contains(&dir))
                .collect();
            let [(pid, _)] = vmms.as_slice() else {
                panic!("pod {}: not one runv-vmm under {dir}: {vmms:?}", pod.name);
            };
            (*pid, "runv-vmm")
        }
        Runtime::Runc => {
            let tasks = containerd.ctr_in(CRI_NAMESPACE, &["tasks", "ls"]);
            let pid = tasks
                .lines()
                .skip(1)
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.first() == Some(&pod.id.as_str()))
                        .then(|| fields.get(1)?.parse().ok())
                        .flatten()
                })
                .unwrap_or_else(|| panic!("no task of pod {} in: {tasks}", pod.id));
            (pid, "pause process")
        }
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|err| panic!("SIGKILL the {what} {pid} of pod {}: {err}", pod.name));
    // Gone, or a zombie until its parent (the shim) reaps it.
    let died = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    });
    assert!(
        died,
        "the {what} {pid} of pod {} outlived SIGKILL",
        pod.name
    );
    format!("{what} {pid}")
}

// ---------------------------------------------------------------------------
// The benchmark (bench/net).

/// Ports of the benchmark's servers in the pods.
const SINK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;

/// A shell function `now` printing the wall clock in µs (busybox date has no
/// %N; adjtimex(2) read-only needs no privilege).
const NOW_US: &str = "now() { busybox adjtimex | busybox awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf \"%d%06d\\n\", s, u}'; }";

/// Sizes of one benchmark run.
struct BenchSizes {
    runs: usize,
    mib: usize,
    round_trips: usize,
    /// vCPUs of each runv pod's VM.
    vcpus: u32,
    /// The metrics to measure (`RUNV_BENCH_ONLY`, comma-separated); all if none.
    only: Vec<String>,
}

impl BenchSizes {
    fn from_env() -> Self {
        let env = |var: &str, default: usize| -> usize {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Self {
            runs: env("RUNV_BENCH_RUNS", 5),
            mib: env("RUNV_BENCH_MIB", 32),
            round_trips: env("RUNV_BENCH_ROUND_TRIPS", 1000),
            vcpus: u32::try_from(env("RUNV_BENCH_VCPUS", 1)).unwrap_or(1),
            only: std::env::var("RUNV_BENCH_ONLY")
                .unwrap_or_default()
                .split(',')
                .filter(|metric| !metric.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether `metric` is to be measured.
    fn wants(&self, metric: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only == metric)
    }
}

/// Benchmark (bench/net), not a test: TCP throughput (pod → pod, host → pod,
/// pod → host) and round trips (pod → pod, host → pod; TCP and ICMP) between two
/// runv pods and between two runc pods on the same bridge, and a pipe inside a
/// pod as the baseline without network, alternating, in `RUNV_BENCH_RUNS` runs;
/// medians and the ratio runv/runc.
#[test]
#[ignore = "benchmark: run through bench/net"]
fn bench_pod_network_against_runc() {
    let runv = under_test();
    if runv == Runtime::Runc {
        eprintln!("RUNV_TIER4_PEER=runc: the \"runv\" figures are runc's (checks the benchmark)");
    }
    let sizes = BenchSizes::from_env();
    let containerd = start_containerd(false);
    if sizes.vcpus != 1 {
        let config = RunvConfig {
            default_vcpus: sizes.vcpus,
            ..RunvConfig::from_env()
        };
        containerd.write_runv_config(&config.to_toml());
    }
    let cri = containerd.cri();
    let pairs = [
        (
            Runtime::Runc,
            Pod::start(&containerd, &cri, "runc-a", Runtime::Runc),
            Pod::start(&containerd, &cri, "runc-b", Runtime::Runc),
        ),
        (
            runv,
            Pod::start(&containerd, &cri, "runv-a", runv),
            Pod::start(&containerd, &cri, "runv-b", runv),
        ),
    ];
    // (metric, runtime name) → samples
    let mut samples: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    let mut vm_tally = VmTally::default();
    for run in 0..sizes.runs {
        for (index, (_, client, server)) in pairs.iter().enumerate() {
            let side = if index == 0 { "runc" } else { "runv" };
            let started = Instant::now();
            let mut note = |metric: &'static str, value: Option<f64>| {
                if let Some(value) = value {
                    eprintln!("  {side} {metric}: {value:.1}");
                    samples.entry((metric, side)).or_default().push(value);
                }
            };
            if sizes.wants("tcp-pod-pod") {
                note(
                    "tcp-pod-pod",
                    Some(pod_to_pod_mibs(&cri, client, server, sizes.mib)),
                );
            }
            if sizes.wants("pipe-in-pod") {
                note(
                    "pipe-in-pod",
                    Some(pipe_in_pod_mibs(&cri, server, sizes.mib)),
                );
            }
            if sizes.wants("tcp-host-pod") {
                let before = vm_sample(server);
                note(
                    "tcp-host-pod",
                    Some(host_to_pod_mibs(&cri, server, sizes.mib)),
                );
                vm_tally.add("tcp-host-pod", &before, &vm_sample(server));
            }
            if sizes.wants("tcp-pod-host") {
                let before = vm_sample(client);
                note(
                    "tcp-pod-host",
                    Some(pod_to_host_mibs(&containerd, &cri, client, sizes.mib)),
                );
                vm_tally.add("tcp-pod-host", &before, &vm_sample(client));
            }
            if sizes.wants("rtt-pod-pod") {
                note(
                    "rtt-pod-pod",
                    Some(pod_to_pod_rtt_us(&cri, client, server, sizes.round_trips)),
                );
            }
            if sizes.wants("rtt-host-pod") {
                note(
                    "rtt-host-pod",
                    Some(host_to_pod_rtt_us(&cri, server, sizes.round_trips)),
                );
            }
            if sizes.wants("icmp-pod-pod") {
                note("icmp-pod-pod", pod_ping_us(&cri, client, server.ip));
            }
            if sizes.wants("icmp-host-pod") {
                note("icmp-host-pod", host_ping_us(server.ip));
            }
            eprintln!(
                "run {}/{}: {side} in {:.1} s",
                run + 1,
                sizes.runs,
                started.elapsed().as_secs_f64()
            );
        }
    }
    report(&sizes, &samples);
    vm_tally.report(sizes.mib * sizes.runs);
    for (_, client, server) in &pairs {
        client.remove(&cri);
        server.remove(&cri);
    }
    finish(containerd, &cri);
}

/// A runv pod's VMM so far: its VM exits by reason (from the VMM's API), the
/// exits KVM counted, handled in the kernel or not (its debugfs statistics,
/// where debugfs is mounted), and the CPU time of each of its threads by name
/// (`vcpu0`, `virtio-net`, ...), in clock ticks. Empty for a runc pod.
#[derive(Default)]
struct VmSample {
    exits: BTreeMap<String, u64>,
    kvm: BTreeMap<String, u64>,
    cpu_ticks: BTreeMap<String, u64>,
    at: Option<Instant>,
}

/// KVM's debugfs statistics of the VM of process `pid` (a directory
/// `<pid>-<fd>`) that show where a guest's exits go.
fn kvm_debugfs_stats(pid: &str) -> BTreeMap<String, u64> {
    const STATS: [&str; 8] = [
        "exits",
        "halt_exits",
        "irq_exits",
        "io_exits",
        "mmio_exits",
        "irq_injections",
        "irq_window_exits",
        "signal_exits",
    ];
    let prefix = format!("{pid}-");
    let mut stats = BTreeMap::new();
    let vms = std::fs::read_dir("/sys/kernel/debug/kvm")
        .into_iter()
        .flatten()
        .flatten();
    for vm in vms.filter(|vm| vm.file_name().to_string_lossy().starts_with(&prefix)) {
        for stat in STATS {
            if let Some(value) = std::fs::read_to_string(vm.path().join(stat))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                *stats.entry(stat.to_string()).or_default() += value;
            }
        }
    }
    stats
}

fn vm_sample(pod: &Pod) -> VmSample {
    if pod.runtime != Runtime::Runv {
        return VmSample::default();
    }
    let dir = PathBuf::from(RUNV_RUN_DIR).join(&pod.id);
    let address = format!("unix://{}", dir.join("vm/api.sock").display());
    let api = VmmClient::new(
        ttrpc::Client::connect(&address).unwrap_or_else(|e| panic!("connect {address}: {e}")),
    );
    let ctx = ttrpc::context::with_duration(Duration::from_secs(30));
    let metrics = api
        .metrics(ctx, &MetricsRequest::new())
        .unwrap_or_else(|e| panic!("{}: VMM metrics: {e}", pod.name));
    let pid = std::fs::read_to_string(dir.join("vmm.pid")).unwrap_or_default();
    let tasks = PathBuf::from(format!("/proc/{}/task", pid.trim()));
    let mut cpu_ticks = BTreeMap::new();
    for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ..." with utime and stime the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *cpu_ticks
            .entry(stat[open + 1..close].to_string())
            .or_default() += ticks(11) + ticks(12);
    }
    VmSample {
        exits: metrics.exits_by_reason.into_iter().collect(),
        kvm: kvm_debugfs_stats(pid.trim()),
        cpu_ticks,
        at: Some(Instant::now()),
    }
}

/// What the VMM did during each throughput metric, summed over runs.
#[derive(Default)]
struct VmTally(BTreeMap<&'static str, (VmSample, Duration)>);

impl VmTally {
    fn add(&mut self, metric: &'static str, before: &VmSample, after: &VmSample) {
        let (Some(from), Some(to)) = (before.at, after.at) else {
            return;
        };
        let (tally, elapsed) = self.0.entry(metric).or_default();
        *elapsed += to - from;
        let delta = |sum: &mut BTreeMap<String, u64>,
                     a: &BTreeMap<String, u64>,
                     b: &BTreeMap<String, u64>| {
            for (key, count) in b {
                let d = count.saturating_sub(a.get(key).copied().unwrap_or(0));
                *sum.entry(key.clone()).or_default() += d;
            }
        };
        delta(&mut tally.exits, &before.exits, &after.exits);
        delta(&mut tally.kvm, &before.kvm, &after.kvm);
        delta(&mut tally.cpu_ticks, &before.cpu_ticks, &after.cpu_ticks);
    }

    /// Per metric: exits to the VMM per MiB moved, by reason (exits KVM
    /// handles in the kernel, such as queue notifications, are not among
    /// them), and how busy each VMM thread was (a vCPU thread's time includes
    /// its guest's).
    fn report(&self, mib: usize) {
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        for (metric, (tally, elapsed)) in &self.0 {
            let per_mib = |count: u64| count as f64 / mib.max(1) as f64;
            let total: u64 = tally.exits.values().sum();
            let by_reason: Vec<String> = tally
                .exits
                .iter()
                .filter(|(_, count)| **count > 0)
                .map(|(reason, count)| format!("{reason} {:.1}", per_mib(*count)))
                .collect();
            let busy: Vec<String> = tally
                .cpu_ticks
                .iter()
                .filter(|(_, ticks)| **ticks > 0)
                .map(|(thread, ticks)| {
                    let share = *ticks as f64 / hz / elapsed.as_secs_f64().max(1e-9);
                    format!("{thread} {:.0}%", share * 100.0)
                })
                .collect();
            let kvm: Vec<String> = tally
                .kvm
                .iter()
                .map(|(stat, count)| format!("{stat} {:.1}", per_mib(*count)))
                .collect();
            let kvm = if kvm.is_empty() {
                "no KVM debugfs statistics (debugfs not mounted)".to_string()
            } else {
                format!("KVM per MiB: {}", kvm.join(", "))
            };
            println!(
                "runv VMM during {metric}: {:.1} exits to the VMM per MiB ({}); {kvm}; threads \
                 busy: {}",
                per_mib(total),
                by_reason.join(", "),
                busy.join(", ")
            );
        }
    }
}

/// Prints one line per metric: the medians and their ratio.
fn report(sizes: &BenchSizes, samples: &BTreeMap<(&'static str, &'static str), Vec<f64>>) {
    let median = |metric: &'static str, side: &'static str| -> Option<f64> {
        let mut values = samples.get(&(metric, side))?.clone();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let (mib, n) = (sizes.mib, sizes.round_trips);
    println!(
        "pod network: runv pods vs runc pods on one CNI bridge; {} runs each, alternating; medians \
         (runv pods: {} vCPU, 256 MiB)",
        sizes.runs, sizes.vcpus
    );
    let rows: [(&str, String, &str); 8] = [
        (
            "pipe-in-pod",
            format!(
                "Pipe inside the pod, no network ({} MiB, busybox dd to dd)",
                4 * mib
            ),
            "MiB/s",
        ),
        (
            "tcp-pod-pod",
            format!("TCP throughput pod → pod ({mib} MiB, busybox dd to dd)"),
            "MiB/s",
        ),
        (
            "tcp-host-pod",
            format!("TCP throughput host → pod ({mib} MiB into busybox dd)"),
            "MiB/s",
        ),
        (
            "tcp-pod-host",
            format!("TCP throughput pod → host ({mib} MiB from busybox dd)"),
            "MiB/s",
        ),
        (
            "rtt-pod-pod",
            format!("TCP round trip pod → pod ({n} × 2 bytes, busybox sh loop, echo by cat)"),
            "µs",
        ),
        (
            "rtt-host-pod",
            format!("TCP round trip host → pod ({n} × 2 bytes, echo by cat)"),
            "µs",
        ),
        (
            "icmp-pod-pod",
            "ICMP echo round trip pod → pod (busybox ping -A, 50)".into(),
            "µs",
        ),
        (
            "icmp-host-pod",
            "ICMP echo round trip host → pod (busybox ping -A, 50)".into(),
            "µs",
        ),
    ];
    for (metric, what, unit) in rows {
        match (median(metric, "runv"), median(metric, "runc")) {
            (Some(runv), Some(runc)) => println!(
                "{what}: runv {runv:.1} {unit}, runc {runc:.1} {unit}, ratio runv/runc {:.2}",
                runv / runc
            ),
            (runv, runc) => {
                println!("{what}: runv {runv:?} {unit}, runc {runc:?} {unit} (not measured)")
            }
        }
    }
    println!(
        "ratios: throughput ratios > 1 and round-trip ratios < 1 favour runv; absolute figures \
         are from an emulated test host"
    );
}

/// Starts, in the background in `pod`, a one-connection busybox nc server on
/// `port` that runs `program` on the connection (its stdin and stdout are the
/// socket); waits until it listens.
fn start_nc_server(cri: &Cri, pod: &Pod, port: u16, program: &str) {
    pod.sh(
        cri,
        &format!(
            "busybox nc -l -p {port} -e {program} </dev/null >/dev/null 2>&1 &\n{}",
            wait_listening(port)
        ),
    );
}

/// Writes `script` to `path` in `pod`.
fn write_script(cri: &Cri, pod: &Pod, path: &str, script: &str) {
    pod.sh(
        cri,
        &format!("cat >{path} <<'RUNV_SCRIPT_END'\n{script}\nRUNV_SCRIPT_END"),
    );
}

/// The µs figure that ends the last line of `out`.
fn micros(out: &str) -> f64 {
    out.lines()
        .last()
        .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in: {out}"))
}

/// 64 KiB blocks in `mib` MiB.
fn blocks(mib: usize) -> usize {
    mib * 16
}

/// `client` sends `mib` MiB to `server`; both ends are dd on the socket (busybox
/// nc only connects and accepts: its own copy loop moves 1 KiB at a time). The
/// server answers once it has it all; the client times send + answer.
fn pod_to_pod_mibs(cri: &Cri, client: &Pod, server: &Pod, mib: usize) -> f64 {
    let n = blocks(mib);
    write_script(
        cri,
        server,
        "/tmp/sink.sh",
        &format!(
            "busybox dd of=/dev/null bs=64k count={n} iflag=fullblock 2>/tmp/sink.log; \
             echo \"dd exit $?\" >>/tmp/sink.log; echo done"
        ),
    );
    start_nc_server(cri, server, SINK_PORT, "sh /tmp/sink.sh");
    write_script(
        cri,
        client,
        "/tmp/send.sh",
        &format!(
            "{NOW_US}\nt0=$(now); busybox dd if=/dev/zero bs=64k count={n} 2>/dev/null; read answer; \
             t1=$(now); echo \"$answer $((t1 - t0))\" >/tmp/send.us"
        ),
    );
    let out = client.sh(
        cri,
        &format!(
            "rm -f /tmp/send.us; busybox timeout 600 busybox nc {} {SINK_PORT} -e sh /tmp/send.sh; \
             cat /tmp/send.us",
            server.ip
        ),
    );
    if !out.starts_with("done ") {
        let seen = server.sh(
            cri,
            "cat /tmp/sink.log; busybox ps; busybox netstat -tn; busybox ip -s link show dev eth0",
        );
        panic!(
            "pod {} → pod {}: no answer from the server ({out:?}); the server's side:\n{seen}",
            client.name, server.name
        );
    }
    mib as f64 / (micros(&out) / 1e6)
}

fn host_to_pod_mibs(cri: &Cri, server: &Pod, mib: usize) -> f64 {
    start_nc_server(cri, server, SINK_PORT, "busybox dd of=/dev/null bs=64k");
    let addr = SocketAddr::new(IpAddr::V4(server.ip), SINK_PORT);
    let mut stream = connect_retrying(addr, Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("host → pod {}: {err}", server.name));
    let block = pattern(1 << 20);
    let started = Instant::now();
    for _ in 0..mib {
        stream
            .write_all(&block)
            .unwrap_or_else(|err| panic!("host → pod {}: {err}", server.name));
    }
    stream.shutdown(Shutdown::Write).expect("shut the stream");
    // The server closes once it has read everything.
    let mut rest = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .expect("read timeout");
    let _ = stream.read_to_end(&mut rest);
    mib as f64 / started.elapsed().as_secs_f64()
}

fn pod_to_host_mibs(containerd: &Containerd, cri: &Cri, client: &Pod, mib: usize) -> f64 {
    let listener = TcpListener::bind((containerd.gateway(), 0)).expect("listen on the bridge");
    let port = listener
        .local_addr()
        .expect("the listener's address")
        .port();
    let receiver = std::thread::spawn(move || -> Result<(usize, Duration), String> {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => return Err(format!("no connection from the pod: {err}")),
            }
        };
        let started = Instant::now();
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(600)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(err) => return Err(format!("after {total} bytes: {err}")),
            }
        }
        Ok((total, started.elapsed()))
    });
    client.sh(
        cri,
        &format!(
            "busybox timeout 600 busybox nc {} {port} -e busybox dd if=/dev/zero bs=64k count={}",
            containerd.gateway(),
            blocks(mib)
        ),
    );
    let (total, took) = receiver
        .join()
        .expect("the receiving thread")
        .unwrap_or_else(|err| panic!("pod {} → host: {err}", client.name));
    assert_eq!(
        total,
        mib << 20,
        "pod {} → host: bytes received",
        client.name
    );
    mib as f64 / took.as_secs_f64()
}

/// `round_trips` times: `client` sends a line to `server`, which echoes it (cat);
/// the client's shell does both ends of its loop on the socket itself.
fn pod_to_pod_rtt_us(cri: &Cri, client: &Pod, server: &Pod, round_trips: usize) -> f64 {
    start_nc_server(cri, server, ECHO_PORT, "cat");
    write_script(
        cri,
        client,
        "/tmp/rtt.sh",
        &format!(
            "{NOW_US}\ni=0; t0=$(now)\n\
             while [ $i -lt {round_trips} ]; do echo x; read line; i=$((i + 1)); done\n\
             t1=$(now); echo \"$line $((t1 - t0))\" >/tmp/rtt.us"
        ),
    );
    let out = client.sh(
        cri,
        &format!(
            "rm -f /tmp/rtt.us; busybox timeout 600 busybox nc {} {ECHO_PORT} -e sh /tmp/rtt.sh; \
             cat /tmp/rtt.us",
            server.ip
        ),
    );
    assert!(
        out.starts_with("x "),
        "pod {} → pod {}: {out}",
        client.name,
        server.name
    );
    micros(&out) / round_trips as f64
}

/// 4 × `mib` MiB through a pipe inside `pod` (busybox dd to dd), timed
/// inside, less the cost of reading the clock there: how fast the pod's CPU
/// moves bytes with no network, the baseline the throughput ratios compare
/// with.
fn pipe_in_pod_mibs(cri: &Cri, pod: &Pod, mib: usize) -> f64 {
    let mib = 4 * mib;
    let n = blocks(mib);
    let out = pod.sh(
        cri,
        &format!(
            "{NOW_US}\nc0=$(now); c1=$(now); t0=$(now); busybox dd if=/dev/zero bs=64k count={n} \
             2>/dev/null | busybox dd of=/dev/null bs=64k 2>/dev/null; t1=$(now); \
             echo $((t1 - t0 - (c1 - c0)))"
        ),
    );
    mib as f64 / (micros(&out) / 1e6)
}

fn host_to_pod_rtt_us(cri: &Cri, server: &Pod, round_trips: usize) -> f64 {
    start_nc_server(cri, server, ECHO_PORT, "cat");
    let addr = SocketAddr::new(IpAddr::V4(server.ip), ECHO_PORT);
    let mut stream = connect_retrying(addr, Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("host → pod {}: {err}", server.name));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut times = Vec::with_capacity(round_trips);
    let mut reply = [0u8; 2];
    for _ in 0..round_trips {
        let started = Instant::now();
        stream.write_all(b"x\n").expect("send to the echo");
        stream
            .read_exact(&mut reply)
            .unwrap_or_else(|err| panic!("echo of pod {}: {err}", server.name));
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let _ = stream.shutdown(Shutdown::Both);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The average of `busybox ping`'s summary (`round-trip min/avg/max = a/b/c ms`), in µs.
fn ping_avg_us(out: &str) -> Option<f64> {
    let summary = out.lines().find(|l| l.contains("min/avg/max"))?;
    let values = summary.split('=').nth(1)?.trim();
    let avg: f64 = values.split('/').nth(1)?.trim().parse().ok()?;
    Some(avg * 1000.0)
}

fn pod_ping_us(cri: &Cri, client: &Pod, to: Ipv4Addr) -> Option<f64> {
    let exec = cri.exec_sync(
        &client.container,
        &["busybox", "ping", "-c", "50", "-A", "-q", &to.to_string()],
        EXEC_TIMEOUT_SECS,
    );
    let avg = ping_avg_us(&String::from_utf8_lossy(&exec.stdout));
    if avg.is_none() {
        eprintln!("ping from pod {}: {exec:?}", client.name);
    }
    avg
}

fn host_ping_us(to: Ipv4Addr) -> Option<f64> {
    let output = std::process::Command::new("busybox")
        .args(["ping", "-c", "50", "-A", "-q", &to.to_string()])
        .output()
        .ok()?;
    ping_avg_us(&String::from_utf8_lossy(&output.stdout))
}

#[test]
fn guest_eth0_parses() {
    let out = "2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue \n\
               link/ether 0A:58:0a:e9:00:02 brd ff:ff:ff:ff:ff:ff\n\
               2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue \n\
               link/ether 0a:58:0a:e9:00:02 brd ff:ff:ff:ff:ff:ff\n\
               inet 10.233.0.2/24 brd 10.233.0.255 scope global eth0\n\
               valid_lft forever preferred_lft forever\n\
               --- routes\n\
               default via 10.233.0.1 dev eth0 \n\
               10.233.0.0/24 dev eth0 scope link  src 10.233.0.2 \n";
    let eth0 = GuestEth0::parse(out);
    assert_eq!(eth0.mac, "0a:58:0a:e9:00:02");
    assert_eq!(eth0.addresses, vec!["10.233.0.2/24"]);
    assert_eq!(eth0.mtu, 1500);
    assert_eq!(eth0.default_via.as_deref(), Some("10.233.0.1"));
    assert_eq!(
        ping_avg_us("round-trip min/avg/max = 0.051/0.083/0.170 ms"),
        Some(83.0)
    );
    assert_eq!(
        sha_of(&format!("{} /srv/blob\n", "a".repeat(64)), "/srv/blob"),
        "a".repeat(64)
    );
}

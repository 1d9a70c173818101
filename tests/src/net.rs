//! Tier 4 pod networking, seen from the host: a pod's network namespace (its
//! links and qdiscs, through `nsenter` with `ip` and `tc`), every network
//! namespace the host can see at all, and small TCP and HTTP ends for traffic to
//! and from pods (the host end of the bridge).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::containerd::{run_with_deadline, Containerd, CRI_NAMESPACE};

/// Deadline of one `ip`, `tc` or `nsenter` command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest HTTP response [`http_get`] takes.
const MAX_BODY: usize = 256 << 20;

/// A network interface as `ip -d -j link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `ifname`.
    pub name: String,
    /// `ifindex`.
    pub index: u64,
    /// The MAC address (`address`), lower case.
    pub mac: String,
    /// `mtu`.
    pub mtu: u64,
    /// `linkinfo.info_kind` (`veth`, `tun`, `bridge`, ...), if any.
    pub kind: Option<String>,
}

/// A qdisc as `tc -j qdisc show` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Qdisc {
    /// The device it is attached to.
    pub dev: String,
    /// `kind` (`ingress`, `clsact`, `noqueue`, ...).
    pub kind: String,
}

impl Qdisc {
    /// Whether it is a qdisc that takes ingress filters (`ingress`, `clsact`):
    /// what a tc redirect needs, and what nothing in a fresh namespace has.
    pub fn is_ingress(&self) -> bool {
        self.kind == "ingress" || self.kind == "clsact"
    }
}

/// Runs `program args` in the network namespace `netns` (`nsenter --net`), or in
/// this process's if None; its stdout. Panics unless it exits 0.
pub fn run_in(netns: Option<&Path>, program: &str, args: &[&str]) -> String {
    try_run_in(netns, program, args).unwrap_or_else(|err| panic!("{err}"))
}

/// [`run_in`], returning what went wrong.
pub fn try_run_in(netns: Option<&Path>, program: &str, args: &[&str]) -> Result<String, String> {
    let mut command = match netns {
        Some(path) => {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net={}", path.display()))
                .arg(program);
            command
        }
        None => Command::new(program),
    };
    command.args(args).stdin(Stdio::null());
    let what = format!("{program} {} (netns {netns:?})", args.join(" "));
    let output = run_with_deadline(command, None, TOOL_TIMEOUT)
        .map_err(|out| format!("{what} did not finish within {TOOL_TIMEOUT:?}: {out:?}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn json_array(text: &str, what: &str) -> Result<Vec<serde_json::Value>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(items)) => Ok(items),
        other => Err(format!("{what}: not a JSON array ({other:?}): {text}")),
    }
}

/// The links of network namespace `netns` (None: this process's).
pub fn links(netns: Option<&Path>) -> Vec<Link> {
    try_links(netns).unwrap_or_else(|err| panic!("{err}"))
}

/// [`links`], returning what went wrong.
pub fn try_links(netns: Option<&Path>) -> Result<Vec<Link>, String> {
    let text = try_run_in(netns, "ip", &["-d", "-j", "link", "show"])?;
    let links = json_array(&text, "ip -d -j link show")?
        .iter()
        .map(|link| Link {
            name: link["ifname"].as_str().unwrap_or_default().to_owned(),
            index: link["ifindex"].as_u64().unwrap_or_default(),
            mac: link["address"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            mtu: link["mtu"].as_u64().unwrap_or_default(),
            kind: link["linkinfo"]["info_kind"].as_str().map(str::to_owned),
        })
        .collect();
    Ok(links)
}

/// The qdiscs of network namespace `netns` (None: this process's).
pub fn qdiscs(netns: Option<&Path>) -> Vec<Qdisc> {
    try_qdiscs(netns).unwrap_or_else(|err| panic!("{err}"))
}

/// [`qdiscs`], returning what went wrong.
pub fn try_qdiscs(netns: Option<&Path>) -> Result<Vec<Qdisc>, String> {
    let text = try_run_in(netns, "tc", &["-j", "qdisc", "show"])?;
    let qdiscs = json_array(&text, "tc -j qdisc show")?
        .iter()
        .map(|qdisc| Qdisc {
            dev: qdisc["dev"].as_str().unwrap_or_default().to_owned(),
            kind: qdisc["kind"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    Ok(qdiscs)
}

/// `tc filter show dev <dev> ingress` in `netns`, as text (empty without filters).
pub fn ingress_filters(netns: Option<&Path>, dev: &str) -> String {
    run_in(netns, "tc", &["filter", "show", "dev", dev, "ingress"])
}

/// Makes sure `/dev/net/tun` exists (the shim opens it for a pod's taps): the
/// KVM test host's kernel has tun as a module, not loaded at boot.
pub fn require_tun() {
    let tun = Path::new("/dev/net/tun");
    if !tun.exists() {
        let _ = Command::new("modprobe").arg("tun").status();
    }
    assert!(
        tun.exists(),
        "no /dev/net/tun (modprobe tun failed): pods' taps need it"
    );
}

/// Whether `name` is a tap the shim makes for a pod (`tap<i>_runv`).
pub fn is_runv_tap(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix("_runv"))
        .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// The inode of the network namespace at `path` (a netns mount or a
/// `/proc/<pid>/ns/net`), which names it as long as it lives.
pub fn netns_inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat the network namespace {}: {err}", path.display()))
        .ino()
}

/// Every network namespace this process can see, by inode, with one path that
/// enters it: those of every thread of every process, those open as a file
/// descriptor in any process, and those mounted (`nsfs`). A namespace none of
/// these holds is gone (or out of our sight: held only by a socket).
pub fn visible_netns() -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    let pids: Vec<String> = fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    for pid in &pids {
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for task in tasks {
            let ns = task.join("ns/net");
            if let Ok(meta) = fs::metadata(&ns) {
                found.entry(meta.ino()).or_insert(ns);
            }
        }
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for fd in fds {
            let target = fs::read_link(&fd).unwrap_or_default();
            if let Some(inode) = netns_link_inode(&target.to_string_lossy()) {
                found.entry(inode).or_insert(fd);
            }
        }
    }
    for (inode, point) in netns_mounts() {
        found.entry(inode).or_insert(point);
    }
    found
}

/// `net:[<inode>]`, the target of a namespace link, as the inode.
fn netns_link_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The mounted network namespaces (nsfs mounts): inode and mount point.
pub fn netns_mounts() -> Vec<(u64, PathBuf)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            if fields.get(separator + 1) != Some(&"nsfs") {
                return None;
            }
            // The root of an nsfs mount names the namespace: `net:[<inode>]`.
            let inode = netns_link_inode(fields.get(3)?)?;
            let point = crate::host::unescape_mount_field(fields.get(4)?);
            Some((inode, PathBuf::from(point)))
        })
        .collect()
}

/// Something found in a network namespace by [`runv_taps_everywhere`] or
/// [`ingress_qdiscs_everywhere`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The namespace's inode.
    pub netns: u64,
    /// A path that entered it.
    pub path: PathBuf,
    /// What was found (a link name, `"<dev> <qdisc kind>"`).
    pub item: String,
}

/// Every `tap<i>_runv` link in every network namespace we can see.
pub fn runv_taps_everywhere() -> Vec<Seen> {
    everywhere(|netns| {
        Ok(try_links(Some(netns))?
            .into_iter()
            .filter(|link| is_runv_tap(&link.name))
            .map(|link| link.name)
            .collect())
    })
}

/// Every ingress (or clsact) qdisc in every network namespace we can see.
pub fn ingress_qdiscs_everywhere() -> Vec<Seen> {
    everywhere(|netns| {
        Ok(try_qdiscs(Some(netns))?
            .into_iter()
            .filter(Qdisc::is_ingress)
            .map(|q| format!("{} {}", q.dev, q.kind))
            .collect())
    })
}

/// `look` run in every visible namespace. A namespace whose path went away
/// meanwhile (its process exited) is looked at again through a path found anew,
/// and skipped only if it has none (it is gone).
fn everywhere(look: impl Fn(&Path) -> Result<Vec<String>, String>) -> Vec<Seen> {
    let mut found = Vec::new();
    let mut namespaces = visible_netns();
    for _ in 0..3 {
        let mut missed = Vec::new();
        for (netns, path) in namespaces {
            match look(&path) {
                Ok(items) => found.extend(items.into_iter().map(|item| Seen {
                    netns,
                    path: path.clone(),
                    item,
                })),
                Err(_) if fs::metadata(&path).is_err() => missed.push(netns),
                Err(err) => panic!("{err}"),
            }
        }
        namespaces = visible_netns();
        namespaces.retain(|netns, _| missed.contains(netns));
        if namespaces.is_empty() {
            break;
        }
    }
    found
}

/// The network namespace of CRI pod `sandbox_id`: the path in its sandbox
/// container's spec (`ctr -n k8s.io containers info`).
pub fn sandbox_netns(containerd: &Containerd, sandbox_id: &str) -> PathBuf {
    let info = containerd.ctr_in(CRI_NAMESPACE, &["containers", "info", sandbox_id]);
    let info: serde_json::Value = serde_json::from_str(&info)
        .unwrap_or_else(|err| panic!("ctr containers info {sandbox_id}: {err}: {info}"));
    let namespaces = info["Spec"]["linux"]["namespaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no linux.namespaces in the spec of {sandbox_id}: {info}"));
    namespaces
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no network namespace path in the spec of {sandbox_id}: {info}"))
}

/// The SHA-256 of `data` in hex (by `sha256sum`, as in the pods).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("sha256sum's stdin");
    let output = std::thread::scope(|scope| {
        scope.spawn(move || stdin.write_all(data));
        child.wait_with_output().expect("sha256sum's output")
    });
    let text = String::from_utf8_lossy(&output.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    assert!(
        output.status.success() && hex.len() == 64,
        "sha256sum: {output:?}"
    );
    hex.to_owned()
}

/// Connects to `addr`, again on refusal (a server that is not up yet) until
/// `timeout` passed.
pub fn connect_retrying(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() >= deadline => {
                return Err(format!("connect to {addr} for {timeout:?}: {err}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `GET path` (HTTP/1.0) from the server at `addr`: the body of a 200 answer
/// (checked against its Content-Length, if any), or what went wrong.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut stream = connect_retrying(addr, timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| format!("{addr}: {err}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("send the request to {addr}: {err}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_BODY as u64 + 64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|err| {
            format!(
                "read the answer of {addr} ({} bytes so far): {err}",
                answer.len()
            )
        })?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no header end in {} bytes", answer.len()))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = answer[split + 4..].to_vec();
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path} from {addr}: {head}"));
    }
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(length) = length.filter(|length| *length != body.len()) {
        return Err(format!(
            "GET {path} from {addr}: Content-Length {length}, {} bytes came",
            body.len()
        ));
    }
    Ok(body)
}

/// A small HTTP/1.0 server on a thread: `GET <path>` answers `body`, anything
/// else 404. Stopped on drop.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<IpAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `bind` (port 0: any) and serves `body` at `path`.
    pub fn serve(bind: SocketAddr, path: &str, body: Vec<u8>) -> Self {
        let listener =
            TcpListener::bind(bind).unwrap_or_else(|err| panic!("listen on {bind}: {err}"));
        let addr = listener.local_addr().expect("the listener's address");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (path, body) = (path.to_owned(), Arc::new(body));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (path, body, served) = (path.clone(), body.clone(), served.clone());
                    std::thread::spawn(move || answer(stream, &path, &body, &served));
                }
            })
        };
        Self {
            addr,
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peers that were sent the whole body, in order.
    pub fn served(&self) -> Vec<IpAddr> {
        self.served.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream`.
fn answer(mut stream: TcpStream, path: &str, body: &[u8], served: &Mutex<Vec<IpAddr>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(300)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let wanted = line.split_whitespace().nth(1) == Some(path);
    let written = if wanted {
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
    } else {
        stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    };
    // Recorded before the shutdown ends the client's read: a client that has
    // its whole answer finds itself in `served`.
    if wanted && written.is_ok() {
        if let (Ok(peer), Ok(mut served)) = (stream.peer_addr(), served.lock()) {
            served.push(peer.ip());
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runv_tap_names() {
        assert!(is_runv_tap("tap0_runv"));
        assert!(is_runv_tap("tap12_runv"));
        for name in [
            "tap_runv",
            "tapx_runv",
            "tap0",
            "eth0",
            "tap0_runvx",
            "xtap0_runv",
        ] {
            assert!(!is_runv_tap(name), "{name}");
        }
    }

    #[test]
    fn namespace_links() {
        assert_eq!(netns_link_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(netns_link_inode("mnt:[4026531840]"), None);
        assert_eq!(netns_link_inode("socket:[12]"), None);
    }

    #[test]
    fn http_round_trip_on_loopback() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let server = HttpServer::serve("127.0.0.1:0".parse().unwrap(), "/blob", body.clone());
        let got = http_get(server.addr(), "/blob", Duration::from_secs(10)).unwrap();
        assert!(got == body);
        let missing = http_get(server.addr(), "/other", Duration::from_secs(10));
        assert!(missing.unwrap_err().contains("404"));
        assert_eq!(server.served(), vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(sha256_hex(b"abc").len(), 64);
    }
}

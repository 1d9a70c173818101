//! Tier 2: runv-vmm's virtio-net on a host tap against the guest's virtio-net
//! driver. One boot: the guest gets the MAC we chose and the offloads, configures an address on
//! the tap's subnet, pings the host end, fetches 4 MiB over HTTP from a host
//! server (SHA-256 checked in the guest) and sends it back over TCP (compared
//! byte for byte on the host). The tap is deleted at the end, also on failure.

use runv_tests::artefacts::{busybox_initrd, vmm_binary, GuestArtefacts};
use runv_tests::console::run_to_exit;
use runv_tests::host::{assert_no_process_left, require_kvm, require_root};
use runv_tests::scratch::Scratch;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const TAP: &str = "runvtap0";
const HOST_IP: &str = "10.213.0.1";
const GUEST_MAC: &str = "02:00:0a:d5:00:02";
const HTTP_PORT: u16 = 8080;
const SINK_PORT: u16 = 9000;
const BLOB_LEN: usize = 4 << 20;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)")
        .success()
}

fn tap_exists() -> bool {
    Path::new("/sys/class/net").join(TAP).exists()
}

/// A host tap with the host end's address, deleted on drop.
struct TapGuard;

impl TapGuard {
    fn create() -> Self {
        if !Path::new("/dev/net/tun").exists() {
            // The test host's kernel has tun as a module, not loaded at boot.
            let _ = Command::new("modprobe").arg("tun").status();
        }
        if tap_exists() {
            ip(&["link", "del", TAP]); // left by an earlier, killed run
        }
        assert!(
            ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]),
            "create {TAP}"
        );
        let guard = TapGuard;
        assert!(ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]));
        assert!(ip(&["link", "set", TAP, "up"]));
        guard
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        ip(&["link", "del", TAP]);
    }
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap().stdout;
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn guest_pings_the_tap_and_moves_4_mib_each_way() {
    require_kvm();
    require_root("it creates a tap interface");
    let scratch = Scratch::new("runv-net");
    let dir = scratch.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..BLOB_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let expected = sha256(&www.join("blob"));

    let tap = TapGuard::create();
    let httpd = ChildGuard(
        Command::new("/bin/busybox")
            .args(["httpd", "-f", "-p", &format!("{HOST_IP}:{HTTP_PORT}"), "-h"])
            .arg(&www)
            .spawn()
            .expect("busybox httpd"),
    );
    let sink = TcpListener::bind((HOST_IP, SINK_PORT)).expect("bind the TCP sink");
    sink.set_nonblocking(true).unwrap();
    let receiver = thread::spawn(move || {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut stream = loop {
            match sink.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Err(err) => return Err(err),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut got = vec![0u8; BLOB_LEN];
        stream.read_exact(&mut got).map(|()| got)
    });

    let mut guest = GuestArtefacts::from_env();
    guest.initrd = busybox_initrd(
        dir,
        "net",
        &format!(
            "b=/bin/busybox\n$b mount -t proc proc /proc\n$b mount -t sysfs sys /sys\n$b mkdir /tmp\n\
             echo mac=$($b cat /sys/class/net/eth0/address)\n\
             echo features=$($b cat /sys/class/net/eth0/device/features)\n\
             $b ip link set lo up\n$b ip addr add 10.213.0.2/24 dev eth0\n$b ip link set eth0 up\n\
             $b ping -c 3 -W 10 {HOST_IP} > /tmp/ping; echo ping-status=$?; $b cat /tmp/ping\n\
             $b wget -q -O /tmp/blob http://{HOST_IP}:{HTTP_PORT}/blob; echo wget-status=$?\n\
             echo sha=$($b sha256sum /tmp/blob)\n\
             $b nc {HOST_IP} {SINK_PORT} < /tmp/blob; echo sent-back\n\
             echo net-done\n$b reboot -f"
        ),
    );
    let initrd = guest.initrd.display().to_string();
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--memory-mib", "256", "--console", "stdout"])
        .args(["--net", &format!("tap={TAP},mac={GUEST_MAC}")]);
    let run = run_to_exit(command, "net-done", BOOT_TIMEOUT);
    let transcript = run.transcript();
    println!("{transcript}");
    assert!(run.status.success(), "exit {}:\n{transcript}", run.status);
    assert!(run.saw(&format!("mac={GUEST_MAC}")), "{transcript}");
    // Negotiated: checksum and TSO both ways (the tap takes TUNSETOFFLOAD),
    // mergeable rx buffers, MAC, status, event index.
    let features = run
        .lines
        .iter()
        .find_map(|line| line.split_once("features=").map(|(_, bits)| bits.trim()))
        .unwrap_or_else(|| panic!("no feature line:\n{transcript}"));
    for bit in [0, 1, 5, 7, 8, 11, 12, 15, 16, 29, 32] {
        assert_eq!(
            features.as_bytes().get(bit),
            Some(&b'1'),
            "bit {bit} of {features}"
        );
    }
    assert!(run.saw("ping-status=0"), "{transcript}");
    assert!(run.saw("3 packets received"), "{transcript}");
    assert!(run.saw("wget-status=0"), "{transcript}");
    assert!(run.saw(&format!("sha={expected}")), "{transcript}");
    let back = receiver.join().unwrap().expect("4 MiB back from the guest");
    assert!(back == blob, "the guest sent other bytes back");

    drop(httpd);
    drop(tap);
    assert!(!tap_exists(), "{TAP} is left behind");
    assert_no_process_left(&initrd);
}

#[test]
fn a_missing_tap_is_refused_by_name() {
    require_kvm();
    let guest = GuestArtefacts::from_env();
    let out = Command::new(vmm_binary())
        .arg("--kernel")
        .arg(&guest.kernel)
        .args(["--net", "tap=runvnotap9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tap runvnotap9"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!Path::new("/sys/class/net/runvnotap9").exists());
}

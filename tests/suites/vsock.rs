//! Tier 2: runv-vmm's userspace virtio-vsock against the guest kernel's vsock
//! driver, through the hybrid Unix socket. One boot runs every check: 64 MiB
//! each way with matching SHA-256, 64 concurrent connections, guest→host
//! connections, and a fast refusal for a port nobody listens on.

use runv_tests::artefacts::{busybox_initrd_with, vmm_binary, vsock_peer_binary, GuestArtefacts};
use runv_tests::console::VmProcess;
use runv_tests::host::{assert_no_process_left, require_kvm};
use runv_tests::hybrid_vsock::connect;
use runv_tests::scratch::Scratch;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use vsock_peer::{fill_pattern, pattern_digest, Digester};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const PEER_PORT: u32 = 5000;
const BULK: u64 = 64 << 20;

/// Opens a peer connection running `command`.
fn command(uds: &Path, command: &str) -> UnixStream {
    let mut stream = connect(uds, PEER_PORT).expect("connect to the guest peer");
    writeln!(stream, "{command}").unwrap();
    stream
}

fn read_line(stream: UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn host_to_guest(uds: &Path) {
    let mut stream = command(uds, "sink");
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut digest = Digester::default();
    let mut offset = 0;
    while offset < BULK {
        fill_pattern(&mut buf, offset ^ 0x5a5a);
        digest.update(&buf);
        stream.write_all(&buf).unwrap();
        offset += buf.len() as u64;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let answer = read_line(stream);
    println!(
        "host→guest: {BULK} bytes at {:.1} MiB/s (emulated test host)",
        mib_per_s(BULK, started.elapsed())
    );
    assert_eq!(answer, digest.hex(), "the guest received other bytes");
}

fn guest_to_host(uds: &Path) {
    let mut stream = command(uds, &format!("send {BULK}"));
    let started = Instant::now();
    let mut digest = Digester::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        total += n as u64;
    }
    println!(
        "guest→host: {total} bytes at {:.1} MiB/s (emulated test host)",
        mib_per_s(total, started.elapsed())
    );
    assert_eq!(total, BULK);
    assert_eq!(digest.hex(), pattern_digest(BULK));
}

fn concurrent_echoes(uds: &Path, connections: usize) {
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let uds = uds.to_owned();
            thread::spawn(move || {
                let stream = command(&uds, "echo");
                let mut data = vec![0u8; 64 * 1024];
                fill_pattern(&mut data, i as u64 * 7919);
                let mut writer = stream.try_clone().unwrap();
                let sent = data.clone();
                let feeder = thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                (&stream).read_to_end(&mut back).unwrap();
                feeder.join().unwrap();
                assert!(back == data, "connection {i}: echo differs");
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("an echo connection failed");
    }
}

fn guest_dials_host(uds: &Path) {
    let service = UnixListener::bind(format!("{}_7000", uds.display())).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = service.accept().unwrap();
        let mut digest = Digester::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        writeln!(stream, "{}", digest.hex()).unwrap();
    });
    let answer = read_line(command(uds, "dial 7000 1048576"));
    server.join().unwrap();
    assert_eq!(answer, format!("sent {}", pattern_digest(1 << 20)));

    let started = Instant::now();
    let answer = read_line(command(uds, "dial 7001 10"));
    assert!(
        answer.starts_with("refused"),
        "dial with no listener: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        started.elapsed()
    );
}

fn nobody_listening_fails_fast(uds: &Path) {
    let started = Instant::now();
    let result = connect(uds, 6000);
    assert!(
        result.is_err(),
        "a connection to an unserved port was accepted"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusal took {:?}",
        started.elapsed()
    );
}

#[test]
fn vsock_carries_bulk_concurrent_and_guest_initiated_streams() {
    require_kvm();
    let scratch = Scratch::new("runv-vsock");
    let dir = scratch.path();
    let uds = dir.join("vsock.sock");
    let mut guest = GuestArtefacts::from_env();
    guest.initrd = busybox_initrd_with(
        dir,
        "vsock",
        &format!("/bin/vsock-peer serve {PEER_PORT}\n/bin/busybox reboot -f"),
        &[(&vsock_peer_binary(), "vsock-peer")],
    );
    let mut vmm = Command::new(vmm_binary());
    vmm.arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--cpus", "2", "--memory-mib", "256", "--console", "stdout"])
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()));
    let mut vm = VmProcess::spawn(vmm);
    assert!(
        vm.wait_for("vsock-peer: listening", BOOT_TIMEOUT).is_some(),
        "the guest peer did not start"
    );

    nobody_listening_fails_fast(&uds);
    host_to_guest(&uds);
    guest_to_host(&uds);
    concurrent_echoes(&uds, 64);
    guest_dials_host(&uds);

    // Held until the VM is gone: the peer exits, the init script reboots.
    let _exit = command(&uds, "exit");
    let run = vm.wait_exit("reboot", BOOT_TIMEOUT);
    assert!(
        run.status.success(),
        "exit {}:\n{}",
        run.status,
        run.transcript()
    );
    assert!(!uds.exists(), "the vsock socket outlived the VMM");
    assert_no_process_left("runv-vmm");
}

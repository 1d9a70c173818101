//! Tier 2: runv-vmm boots our guest kernel and initrd on KVM to the agent's
//! boot marker, ends with the guest, reports a guest panic, serves its API on a
//! running guest, goes on from a snapshot of a paused guest, and refuses bad
//! input with a clear error.

use protocol::vmm::{
    DescribeRequest, MetricsRequest, PauseRequest, ResumeRequest, ShutdownRequest, SnapshotRequest,
    VmState, VmmClient,
};
use protocol::BOOT_MARKER;
use runv_tests::artefacts::{busybox_initrd, vmm_binary, GuestArtefacts};
use runv_tests::console::{run_to_exit, ConsoleRun, VmProcess};
use runv_tests::host::{assert_no_process_left, require_kvm};
use runv_tests::scratch::Scratch;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Generous: a nested, emulated test host boots in several seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn vmm(guest: &GuestArtefacts, cpus: u32, memory_mib: u32) -> Command {
    let mut vmm = Command::new(vmm_binary());
    vmm.arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args([
            "--cpus",
            &cpus.to_string(),
            "--memory-mib",
            &memory_mib.to_string(),
        ])
        .args(["--console", "stdout"]);
    vmm
}

/// The guest reached the agent and the VMM exited 0.
fn assert_booted(run: &ConsoleRun, what: &str) {
    assert!(
        run.saw(BOOT_MARKER),
        "{what}: no boot marker:\n{}",
        run.transcript()
    );
    assert!(
        run.status.success(),
        "{what}: exit {}:\n{}",
        run.status,
        run.transcript()
    );
}

/// Booted, powered off, timed, and without console noise from our kernel.
fn assert_clean_boot(run: &ConsoleRun, what: &str) {
    assert_booted(run, what);
    assert!(
        run.stderr.contains("the guest powered off"),
        "{what}:\n{}",
        run.transcript()
    );
    for figure in ["vmm-setup-us=", "guest-boot-time-us="] {
        assert!(
            run.stderr.contains(figure),
            "{what}: no {figure}:\n{}",
            run.transcript()
        );
    }
    let kernel_errors: Vec<_> = run.lines.iter().filter(|l| l.contains("i8042")).collect();
    assert!(
        kernel_errors.is_empty(),
        "{what}: i8042 noise: {kernel_errors:?}"
    );
}

#[test]
fn boots_to_agent_with_one_and_two_vcpus_and_exits_on_power_off() {
    require_kvm();
    let guest = GuestArtefacts::from_env();
    for (cpus, memory) in [(1, 128), (2, 512)] {
        let run = run_to_exit(vmm(&guest, cpus, memory), BOOT_MARKER, BOOT_TIMEOUT);
        assert_clean_boot(&run, &format!("{cpus} vCPUs, {memory} MiB"));
    }
    assert_no_process_left(&vmm_binary().display().to_string());
}

/// Debian's generic kernel (a bzImage, installed by scripts/setup for the test
/// host) boots to our agent through the 64-bit Linux boot protocol.
#[test]
#[ignore = "Debian's generic kernel triple-faults in about 1 of 5 boots after its i8042 probe; \
            run with --ignored while that is investigated"]
fn boots_a_bzimage_through_the_64bit_boot_protocol() {
    require_kvm();
    let mut guest = GuestArtefacts::from_env();
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.display().to_string().ends_with("-amd64")
                && path.display().to_string().contains("vmlinuz-")
        })
        .collect();
    kernels.sort();
    guest.kernel = kernels
        .pop()
        .expect("a Debian bzImage in /boot (linux-image-amd64, scripts/setup)");
    let run = run_to_exit(vmm(&guest, 2, 512), BOOT_MARKER, BOOT_TIMEOUT);
    assert_booted(&run, "Debian bzImage");
}

/// With `--rng`, the guest's hw_random core picks virtio-rng and reads host
/// entropy through the virtio-mmio transport (ioeventfd in, irqfd out).
#[test]
fn virtio_rng_feeds_the_guest() {
    require_kvm();
    let scratch = Scratch::new("runv-vmm-rng");
    let mut guest = GuestArtefacts::from_env();
    guest.initrd = busybox_initrd(
        scratch.path(),
        "rng",
        "b=/bin/busybox\n$b mount -t devtmpfs dev /dev\n$b mount -t sysfs sys /sys\n\
         echo rng_current=$($b cat /sys/class/misc/hw_random/rng_current)\n\
         echo rng_bytes=$($b dd if=/dev/hwrng bs=256 count=4 2>/dev/null | $b wc -c)\n\
         $b reboot -f",
    );
    let mut command = vmm(&guest, 1, 128);
    command.arg("--rng");
    let run = run_to_exit(command, "rng_bytes=", BOOT_TIMEOUT);
    assert!(
        run.status.success(),
        "exit {}:\n{}",
        run.status,
        run.transcript()
    );
    assert!(run.saw("rng_current=virtio_rng.0"), "{}", run.transcript());
    assert!(run.saw("rng_bytes=1024"), "{}", run.transcript());
}

/// virtio-blk: an ext4 image made on the host mounts in the guest, a file's
/// checksum matches, a guest write persists after the VM stops, an fstrim in
/// the guest punches the freed blocks out of the host's image, a read-only
/// disk refuses writes and offers no discard, and the disk id reaches the guest.
#[test]
fn virtio_blk_serves_ext4_and_honours_readonly() {
    require_kvm();
    let scratch = Scratch::new("runv-vmm-blk");
    let dir = scratch.path();
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(content.join("data.bin"), &data).unwrap();
    let expected = String::from_utf8(
        Command::new("sha256sum")
            .arg(content.join("data.bin"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let expected = expected.split_whitespace().next().unwrap().to_owned();
    let image = dir.join("rw.ext4");
    let readonly = dir.join("ro.img");
    std::fs::File::create(&readonly)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.success());
    let allocated = |path: &Path| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
    };
    let allocated_before = allocated(&image);

    let mut guest = GuestArtefacts::from_env();
    guest.initrd = busybox_initrd(
        dir,
        "blk",
        "b=/bin/busybox\n$b mount -t devtmpfs dev /dev\n$b mount -t sysfs sys /sys\n$b mkdir /mnt\n\
         $b mount -t ext4 /dev/vda /mnt && echo sha=$($b sha256sum /mnt/data.bin)\n\
         echo from-guest > /mnt/written\n\
         echo discard_max=$($b cat /sys/block/vda/queue/discard_max_bytes)\n\
         $b dd if=/dev/zero of=/mnt/fill bs=1M count=8 2>/dev/null && $b sync && $b rm /mnt/fill && $b sync && echo filled\n\
         $b fstrim -v /mnt | $b sed 's/^/fstrim: /'\n\
         $b umount /mnt && echo umounted\n\
         echo serial=$($b cat /sys/block/vda/serial)\n\
         echo readonly-discard-max=$($b cat /sys/block/vdb/queue/discard_max_bytes)\n\
         $b dd if=/dev/zero of=/dev/vdb bs=512 count=1 oflag=direct 2>/dev/null || echo ro-write-refused\n\
         $b reboot -f",
    );
    let mut command = vmm(&guest, 1, 128);
    command
        .arg("--disk")
        .arg(format!("path={},id=runv-root", image.display()))
        .arg("--disk")
        .arg(format!("path={},readonly", readonly.display()));
    let run = run_to_exit(command, "ro-write-refused", BOOT_TIMEOUT);
    assert!(
        run.status.success(),
        "exit {}:\n{}",
        run.status,
        run.transcript()
    );
    assert!(
        run.saw(&format!("sha={expected}")),
        "checksum mismatch:\n{}",
        run.transcript()
    );
    assert!(run.saw("umounted"), "{}", run.transcript());
    assert!(run.saw("serial=runv-root"), "{}", run.transcript());
    assert!(run.saw("ro-write-refused"), "{}", run.transcript());
    // The read-only disk offers no discard, so the guest never sends one (the
    // device's refusal of a discard sent anyway is a unit test).
    assert!(run.saw("readonly-discard-max=0"), "{}", run.transcript());
    assert!(
        run.saw("filled") && !run.saw("discard_max=0") && run.saw("fstrim: /mnt: "),
        "no discard in the guest:\n{}",
        run.transcript()
    );
    // 8 MiB written, synced, removed and trimmed: the holes are back (a guest
    // without discard would leave the image 8 MiB larger).
    let allocated_after = allocated(&image);
    eprintln!("virtio-blk: image allocated {allocated_before} -> {allocated_after} bytes");
    assert!(
        allocated_after < allocated_before + (4 << 20),
        "the trimmed blocks stayed allocated: {allocated_before} -> {allocated_after} bytes"
    );
    let written = Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&written.stdout).trim(),
        "from-guest"
    );
}

#[test]
fn guest_panic_exits_non_zero_with_cause_even_with_console_off() {
    require_kvm();
    let guest = GuestArtefacts::from_env();
    let mut command = vmm(&guest, 1, 128);
    // No init to run: the kernel panics trying to mount a root file system.
    command.args(["--console", "off", "--cmdline", "rdinit=/no-such-init"]);
    let run = run_to_exit(command, BOOT_MARKER, BOOT_TIMEOUT);
    assert_eq!(run.status.code(), Some(1), "{}", run.transcript());
    assert!(
        run.lines.is_empty(),
        "console off prints nothing:\n{}",
        run.transcript()
    );
    assert!(
        run.stderr
            .contains("the guest kernel panicked: Kernel panic - not syncing"),
        "{}",
        run.transcript()
    );
}

/// An initrd whose init (busybox sh) says it is ready and then idles, so that
/// the API can act on a running guest.
fn idle_initrd(dir: &Path) -> PathBuf {
    busybox_initrd(
        dir,
        "idle",
        "/bin/busybox echo idle-init-ready\nwhile :; do /bin/busybox sleep 1; done",
    )
}

/// Boots the idle initrd (built in `scratch`) with `cpus` vCPUs and 128 MiB,
/// plus `extra` flags, and waits until its init runs.
fn start_idle_vm(scratch: &Scratch, cpus: u32, extra: &[&str]) -> VmProcess {
    require_kvm();
    let mut guest = GuestArtefacts::from_env();
    guest.initrd = idle_initrd(scratch.path());
    let mut command = vmm(&guest, cpus, 128);
    command.args(extra);
    let mut vm = VmProcess::spawn(command);
    assert!(
        vm.wait_for("idle-init-ready", BOOT_TIMEOUT).is_some(),
        "the idle guest did not start"
    );
    vm
}

fn client(sock: &Path) -> VmmClient {
    let address = format!("unix://{}", sock.display());
    VmmClient::new(
        ttrpc::Client::connect(&address).unwrap_or_else(|e| panic!("connect {address}: {e}")),
    )
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(30))
}

#[test]
fn api_describes_pauses_resumes_and_shuts_down_a_running_guest() {
    let scratch = Scratch::new("runv-vmm-api");
    let sock = scratch.path().join("api.sock");
    let vm = start_idle_vm(&scratch, 2, &["--api-sock", &sock.display().to_string()]);

    let api = client(&sock);
    let info = api.describe(ctx(), &DescribeRequest::new()).unwrap();
    assert_eq!(
        (info.state(), info.vcpus(), info.memory_mib()),
        (VmState::RUNNING, 2, 128)
    );
    assert_eq!(info.pid(), vm.pid());
    assert!(info.vmm_setup_us() > 0);

    api.pause(ctx(), &PauseRequest::new()).unwrap();
    assert_eq!(
        api.describe(ctx(), &DescribeRequest::new())
            .unwrap()
            .state(),
        VmState::PAUSED
    );
    let metrics = api.metrics(ctx(), &MetricsRequest::new()).unwrap();
    assert!(
        metrics.exits_by_reason.get("io_out").copied().unwrap_or(0) > 0,
        "{metrics:?}"
    );
    assert!(
        metrics.exits_by_reason.get("kick").copied().unwrap_or(0) >= 2,
        "{metrics:?}"
    );
    assert!(metrics.vmm_rss_bytes() > 0);
    assert_eq!(metrics.guest_memory_bytes(), 128 << 20);

    api.resume(ctx(), &ResumeRequest::new()).unwrap();
    assert_eq!(
        api.describe(ctx(), &DescribeRequest::new())
            .unwrap()
            .state(),
        VmState::RUNNING
    );

    let mut shutdown = ShutdownRequest::new();
    shutdown.timeout_ms = 0;
    api.shutdown(ctx(), &shutdown).unwrap();
    drop(api);
    let run = vm.wait_exit("idle-init-ready", Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.transcript());
    assert!(
        run.stderr.contains("stopped on request"),
        "{}",
        run.transcript()
    );
    assert!(!sock.exists(), "the API socket was left behind");
}

#[test]
fn sigterm_stops_the_guest_and_exits_zero() {
    let scratch = Scratch::new("runv-vmm-sigterm");
    let vm = start_idle_vm(&scratch, 1, &[]);
    let pid = nix::unistd::Pid::from_raw(vm.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let run = vm.wait_exit("idle-init-ready", Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.transcript());
    assert!(
        run.stderr.contains("stopped on request"),
        "{}",
        run.transcript()
    );
}

/// Runs runv-vmm with `args`; it must fail with exit 2 and a one-line error
/// containing `expected`.
fn assert_refused(args: &[&str], expected: &str) {
    let output = Command::new(vmm_binary()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("runv-vmm: error: "),
        "{args:?}: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: expected '{expected}' in: {stderr}"
    );
    assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_left_behind() {
    require_kvm();
    let guest = GuestArtefacts::from_env();
    let scratch = Scratch::new("runv-vmm-bad-input");
    let dir = scratch.path();
    let kernel = guest.kernel.display().to_string();
    let initrd = guest.initrd.display().to_string();

    let truncated = dir.join("truncated-vmlinux");
    let bytes = std::fs::read(&guest.kernel).unwrap();
    std::fs::write(&truncated, &bytes[..4096]).unwrap();
    let big_initrd = dir.join("big-initrd");
    std::fs::File::create(&big_initrd)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let taken = dir.join("taken.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&taken).unwrap();

    assert_refused(
        &["--kernel", "/no/such/vmlinux"],
        "kernel /no/such/vmlinux: No such file or directory",
    );
    assert_refused(
        &["--kernel", &truncated.display().to_string()],
        "cannot load kernel",
    );
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &big_initrd.display().to_string(),
            "--memory-mib",
            "128",
        ],
        "does not fit in 128 MiB of guest memory",
    );
    assert_refused(
        &["--kernel", &kernel, "--cpus", "0"],
        "--cpus must be between 1 and 32, not 0",
    );
    assert_refused(
        &["--kernel", &kernel, "--memory-mib", "16"],
        "--memory-mib must be between 64",
    );
    assert_refused(
        &["--kernel", &kernel, "--frobnicate"],
        "unknown flag '--frobnicate'",
    );
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--api-sock",
            &taken.display().to_string(),
        ],
        "already exists",
    );
    assert!(taken.exists(), "the socket in use was removed");
    assert_no_process_left(&vmm_binary().display().to_string());
}

/// An initrd whose init counts on the console, one line a second, so that a
/// VM started from a snapshot shows where it goes on from.
fn counting_initrd(dir: &Path) -> PathBuf {
    busybox_initrd(
        dir,
        "count",
        "i=0\nwhile :; do i=$((i+1)); /bin/busybox echo tick-$i; /bin/busybox sleep 1; done",
    )
}

/// The highest `tick-N` among `lines`.
fn last_tick(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .filter_map(|line| line.trim().strip_prefix("tick-")?.parse().ok())
        .max()
}

/// KiB of `pid`'s mappings of `file` that other processes map too (clean,
/// or dirty where the file is on tmpfs).
fn shared_kib(pid: u32, file: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.display().to_string();
    let mut in_file = false;
    let mut total = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_file = fields.last() == Some(&name.as_str());
        } else if in_file && matches!(fields.first(), Some(&"Shared_Clean:" | &"Shared_Dirty:")) {
            total += fields[1].parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn a_snapshot_of_a_paused_vm_goes_on_in_two_vms_sharing_its_memory() {
    require_kvm();
    let scratch = Scratch::new("runv-vmm-snapshot");
    let snapshots = scratch.path().join("snapshot");
    std::fs::create_dir(&snapshots).unwrap();
    let mut guest = GuestArtefacts::from_env();
    guest.initrd = counting_initrd(scratch.path());
    let sock = scratch.path().join("api.sock");
    let mut command = vmm(&guest, 2, 128);
    command
        .arg("--api-sock")
        .arg(&sock)
        .arg("--snapshot-dir")
        .arg(&snapshots);
    let mut vm = VmProcess::spawn(command);
    assert!(
        vm.wait_for("tick-3", BOOT_TIMEOUT).is_some(),
        "the counting guest did not start"
    );

    let api = client(&sock);
    let running = api
        .snapshot(ctx(), &SnapshotRequest::new())
        .expect_err("a snapshot of a running VM");
    assert!(running.to_string().contains("must be paused"), "{running}");
    api.pause(ctx(), &PauseRequest::new()).unwrap();
    let sizes = api.snapshot(ctx(), &SnapshotRequest::new()).unwrap();
    assert!(
        sizes.memory_bytes() > 1 << 20 && sizes.memory_bytes() < 128 << 20,
        "{sizes:?}"
    );
    assert!(sizes.state_bytes() > 0, "{sizes:?}");
    let mut shutdown = ShutdownRequest::new();
    shutdown.timeout_ms = 0;
    api.shutdown(ctx(), &shutdown).unwrap();
    drop(api);
    let original = vm.wait_exit("tick-3", Duration::from_secs(60));
    let last = last_tick(&original.lines).expect("ticks before the snapshot");
    let memory = snapshots.join("memory");
    assert_eq!(std::fs::metadata(&memory).unwrap().len(), 128 << 20);

    // Two VMs at once from the one snapshot: each goes on counting from
    // where the snapshot was taken, not from a new boot.
    let restore = |extra: &[&str]| {
        let mut command = vmm(&guest, 2, 128);
        command.arg("--restore-from").arg(&snapshots).args(extra);
        command
    };
    let mut first = VmProcess::spawn(restore(&[]));
    let mut second = VmProcess::spawn(restore(&[]));
    let after = format!("tick-{}", last + 3);
    for vm in [&mut first, &mut second] {
        assert!(
            vm.wait_for(&after, BOOT_TIMEOUT).is_some(),
            "a restored guest did not go on counting to {after}"
        );
    }
    let shared = shared_kib(second.pid(), &memory);
    assert!(
        shared >= 1024,
        "the two VMs share {shared} KiB of the snapshot's memory"
    );
    for vm in [first, second] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vm.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let run = vm.wait_exit(&after, Duration::from_secs(60));
        assert!(run.status.success(), "{}", run.transcript());
        // The pause may have cut a line: the first whole one is the one
        // after the last seen, or that one finished.
        let first_tick = run
            .lines
            .iter()
            .find_map(|line| line.trim().strip_prefix("tick-")?.parse::<u64>().ok());
        assert!(
            first_tick.is_some_and(|n| n > 3 && n <= last + 1),
            "the first tick after a snapshot at tick-{last}: {first_tick:?}\n{}",
            run.transcript()
        );
    }

    // Another shape, or other boot files, are refused before anything runs.
    let kernel = guest.kernel.display().to_string();
    let initrd = guest.initrd.display().to_string();
    let snapshot_dir = snapshots.display().to_string();
    let base = [
        "--kernel",
        kernel.as_str(),
        "--initrd",
        initrd.as_str(),
        "--cpus",
        "2",
        "--restore-from",
        snapshot_dir.as_str(),
    ];
    assert_refused(
        &[&base[..], &["--memory-mib", "256"]].concat(),
        "was made with MiB of memory 128",
    );
    assert_refused(
        &[&base[..], &["--memory-mib", "128", "--cmdline", "quiet"]].concat(),
        "was made from kernel",
    );
    assert_refused(
        &[&base[..], &["--memory-mib", "128", "--rng"]].concat(),
        "the snapshot holds 0 virtio devices, the VM is configured with 1",
    );
    assert_no_process_left(&snapshot_dir);
}

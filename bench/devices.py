#!/usr/bin/env python3
"""runv-vmm's virtio devices: vsock, virtio-fs, virtio-blk and virtio-net throughput.

One guest boot per VMM and run, alternating runv-vmm and QEMU microvm; both boot
the same guest kernel with a busybox initrd, 2 vCPUs and 512 MiB.

- virtio-blk: `dd iflag=direct bs=1M` of 256 MiB of /dev/vda, then a cold read of a
  256 MiB file and a walk (`find` + `stat`) of 10k files on the ext4 image, on both
  VMMs with the same (read-only) image.
- virtio-fs: the same 256 MiB file and 10k files in a directory shared with
  runv-vmm's inline virtio-fs (its default cache=auto), against QEMU's 9p
  (`virtio-9p-device`, `local` backend, security_model=none) on the same directory,
  mounted with version=9p2000.L, msize=512000 (the largest the 6.1 virtio transport
  takes) and cache=loose (page cache, dentries and attributes kept without
  revalidation: the 9p mode closest to virtio-fs's caching, and more generous to
  the peer than runv's cache=auto). The guest kernel has 9p only for this
  (guest-kernel/config/9p.config).
- vsock: host→guest and guest→host bulk streams through runv-vmm's hybrid Unix
  socket to the test peer in the guest (which hashes what it receives and generates
  what it sends). No peer: these hosts have no vhost-vsock, so QEMU has no vsock.
- virtio-net (`--only net`): TCP over a tap of the bench's own, host→guest and
  guest→host (busybox nc and dd in the guest, as in bench/net), on runv-vmm, on
  QEMU's own virtio-net and on QEMU with vhost-net (the data path in the host
  kernel): whether a guest's network is bounded by its VMM or by the host.

Data: `bench/devices` writes the file, the tree and their ext4 image at native speed
(`--prepare`); inside the test host the image is copied to tmpfs (its 9p is far too
slow for 10k small files) and the share is that image loop-mounted read-only and
warmed, so every device reads from the test host's memory.

Times are taken in the guest from /proc/uptime (10 ms resolution) around each step,
and for vsock on the host around each stream.
"""
import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MEMORY_MIB = 512
args_verbose = os.environ.get("BENCH_VERBOSE") == "1"
CPUS = 2
# A boot that takes longer is killed (a hung guest's console never closes; also
# the limit of one vsock transfer).
TIMEOUT_S = 900
# A guest that prints nothing for this long is reported with its VMM's threads.
QUIET_S = 180
BIG_MIB = 256
DIRS, FILES_PER_DIR = 100, 100
PEER_PORT = 5000
TAG = "bench"
# virtio-net: the tap, its subnet (the bench's own, inside the test host) and ports.
NET_TAP = "runvbench0"
NET_HOST, NET_GUEST, NET_PREFIX = "10.214.0.1", "10.214.0.2", 24
NET_MAC = "02:00:0a:d6:00:02"
NET_SINK_PORT, NET_SOURCE_PORT = 5001, 5002
# A TCP stream that makes no progress for this long is reported as stalled: the
# test host loses nested guests' timer interrupts now and then (docs/test-host.md),
# and a guest's TCP sender waits on its timers.
NET_STALL_S = 120

GUEST_SCRIPT = r"""b=/bin/busybox
$b mount -t devtmpfs dev /dev
$b mount -t proc proc /proc
$b mount -t sysfs sys /sys
echo bench-clocksource $($b cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
$b mkdir -p /blk /fs
up() { $b cut -d' ' -f1 /proc/uptime; }
blkdd() { $b dd if=/dev/vda of=/dev/null bs=1M count=%(mib)d iflag=direct 2>/dev/null && echo ok; }
rd() { $b dd if=$1 of=/dev/null bs=1M 2>/dev/null && echo ok; }
walk() { $b find $1 -type f | $b xargs $b stat -c %%s | $b wc -l; }
m() { name=$1; shift; s=$(up); out=$("$@"); e=$(up); echo "bench-result $name $s $e $out"; }
m blk-dd blkdd
$b mount -t ext4 -o ro /dev/vda /blk || echo bench-error ext4 mount
m ext4-read rd /blk/big.bin
m ext4-walk walk /blk/tree
"""

# The shared directory: virtio-fs in runv-vmm, 9p in QEMU; the same steps on both.
GUEST_SHARE = r"""$b mount %(mount)s /fs || echo bench-error share mount
m fs-read rd /fs/big.bin
m fs-walk walk /fs/tree
"""
RUNV_SHARE_MOUNT = f"-t virtiofs {TAG}"
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=loose"
QEMU_SHARE_MOUNT = f"-t 9p -o {NINEP_OPTIONS} {TAG}"

# virtio-net: a sink for the host's stream, then a stream to the host.
GUEST_NET = r"""$b mount -t devtmpfs dev /dev
$b mount -t proc proc /proc
$b ip link set lo up
$b ip link set eth0 up
$b ip addr add %(guest)s/%(prefix)d dev eth0
echo bench-net-ready
$b nc -l -p %(sink)d -e $b dd of=/dev/null bs=64k
$b nc %(host)s %(source)d -e $b dd if=/dev/zero bs=64k count=%(blocks)d
"""

GUEST_END = "echo bench-guest-done\n"
GUEST_VSOCK = "/bin/vsock-peer serve %d\n" % PEER_PORT
GUEST_REBOOT = "$b reboot -f\n"


def progress(message):
    print(f"devices: {message}", file=sys.stderr, flush=True)


def make_content(tmp):
    """The share (big.bin + tree of 10k files) and an ext4 image of the same."""
    share = os.path.join(tmp, "share")
    os.makedirs(share)
    block = bytearray(os.urandom(1 << 20))
    with open(os.path.join(share, "big.bin"), "wb") as big:
        for i in range(BIG_MIB):
            block[:8] = i.to_bytes(8, "little")
            big.write(block)
    for d in range(DIRS):
        sub = os.path.join(share, "tree", f"d{d:03}")
        os.makedirs(sub)
        for f in range(FILES_PER_DIR):
            with open(os.path.join(sub, f"f{f:03}"), "w") as small:
                small.write(f"{d}/{f}\n")
    image = os.path.join(tmp, "disk.ext4")
    # Written out in full first (no holes: every block the guest reads is real), and
    # nodiscard so that mkfs does not punch them again.
    size_mib = BIG_MIB + 128
    with open(image, "wb") as img:
        zero = bytes(1 << 20)
        for _ in range(size_mib):
            img.write(zero)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", share, image],
                   check=True, stdout=subprocess.DEVNULL)
    return share, image


def initrd(tmp, name, script, programs=()):
    root = os.path.join(tmp, f"{name}-root")
    for sub in ("bin", "dev", "proc", "sys"):
        os.makedirs(os.path.join(root, sub))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin/sh"))
    for src, dst in programs:
        shutil.copy(src, os.path.join(root, "bin", dst))
    with open(os.path.join(root, "init"), "w") as init:
        init.write("#!/bin/sh\n" + script)
    os.chmod(os.path.join(root, "init"), 0o755)
    path = os.path.join(tmp, f"{name}.img")
    subprocess.run(f"cd {root} && find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > {path}",
                   shell=True, check=True)
    return path


def runv_cmd(args, initrd_path, image, share, uds):
    return [args.vmm, "--kernel", args.kernel, "--initrd", initrd_path, "--cpus", str(CPUS),
            "--memory-mib", str(MEMORY_MIB), "--console", "stdout", "--cmdline", "quiet",
            "--disk", f"path={image},readonly", "--fs", f"tag={TAG},path={share}",
            "--vsock", f"cid=3,uds={uds}"]


def with_net(cmd, vmm):
    """`cmd` with a virtio-net card on the bench's tap: runv-vmm's, QEMU's own
    (`qemu`) or QEMU's with vhost-net (`qemu-vhost`)."""
    if vmm == "runv":
        return cmd + ["--net", f"tap={NET_TAP},mac={NET_MAC}"]
    vhost = "on" if vmm == "qemu-vhost" else "off"
    extra = ["-netdev", f"tap,id=n,ifname={NET_TAP},script=no,downscript=no,vhost={vhost}",
             "-device", f"virtio-net-device,netdev=n,mac={NET_MAC}"]
    # Before -append, which stays last.
    return cmd[:-2] + extra + cmd[-2:]


def net_up():
    """The bench's tap, with the host's address; vhost-net loaded."""
    subprocess.run(["modprobe", "vhost_net"], check=False)
    if not os.path.exists("/dev/vhost-net"):
        sys.exit("devices: no /dev/vhost-net here: QEMU's vhost-net peer cannot run")
    for step in (["ip", "tuntap", "add", NET_TAP, "mode", "tap", "vnet_hdr"],
                 ["ip", "addr", "add", f"{NET_HOST}/{NET_PREFIX}", "dev", NET_TAP],
                 ["ip", "link", "set", NET_TAP, "up"]):
        subprocess.run(step, check=True)


def net_down():
    subprocess.run(["ip", "link", "del", NET_TAP], check=False)


def net_streams(mib):
    """TCP host→guest then guest→host, `mib` MiB each, in MiB/s; None for a
    stream that made no progress for NET_STALL_S (and for what follows it)."""
    listener = socket.create_server((NET_HOST, NET_SOURCE_PORT))
    listener.settimeout(NET_STALL_S)
    with listener:
        sink = None
        # The guest's nc listens a moment after it says it is ready.
        for _ in range(300):
            try:
                sink = socket.create_connection((NET_GUEST, NET_SINK_PORT), timeout=NET_STALL_S)
                break
            except OSError:
                time.sleep(0.1)
        if sink is None:
            sys.exit("devices: the guest's TCP sink did not answer")
        block = bytes(1 << 20)
        try:
            start = time.monotonic()
            with sink:
                for _ in range(mib):
                    sink.sendall(block)
                sink.shutdown(socket.SHUT_WR)
                # The guest closes once its dd has all of it.
                sink.recv(1)
            to_guest = mib / (time.monotonic() - start)
        except TimeoutError:
            progress(f"TCP host→guest made no progress for {NET_STALL_S} s")
            return None, None
        try:
            source, _ = listener.accept()
            source.settimeout(NET_STALL_S)
            return to_guest, receive_rate(source, mib, "over TCP")
        except TimeoutError:
            progress(f"TCP guest→host made no progress for {NET_STALL_S} s")
            return to_guest, None


def qemu_cmd(args, initrd_path, image, share):
    return ["qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,rtc=off,isa-serial=on",
            "-enable-kvm", "-cpu", "host", "-smp", str(CPUS), "-m", str(MEMORY_MIB),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-device", "i8042", "-kernel", args.kernel, "-initrd", initrd_path,
            "-drive", f"file={image},if=none,id=d,format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=d",
            "-fsdev", f"local,id=s,path={share},security_model=none",
            "-device", f"virtio-9p-device,fsdev=s,mount_tag={TAG}",
            "-append", "console=ttyS0 reboot=k panic=-1 quiet"]


def vsock_connect(uds, command):
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.settimeout(TIMEOUT_S)
    stream.connect(uds)
    stream.sendall(f"CONNECT {PEER_PORT}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        byte = stream.recv(1)
        if not byte:
            sys.exit("devices: the guest refused the vsock connection")
        reply += byte
    if not reply.startswith(b"OK "):
        sys.exit(f"devices: vsock handshake answer {reply!r}")
    stream.sendall(command.encode() + b"\n")
    return stream


def host_to_guest(uds, mib):
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    for _ in range(mib):
        digest.update(block)
    stream = vsock_connect(uds, "sink")
    start = time.monotonic()
    for _ in range(mib):
        stream.sendall(block)
    stream.shutdown(socket.SHUT_WR)
    answer = stream.makefile("rb").readline().decode().strip()
    elapsed = time.monotonic() - start
    stream.close()
    if answer != digest.hexdigest():
        sys.exit(f"devices: the guest received other bytes ({answer!r})")
    return mib / elapsed


def guest_to_host(uds, mib):
    return receive_rate(vsock_connect(uds, f"send {mib << 20}"), mib, "over vsock")


def receive_rate(stream, mib, how):
    """Reads `stream` to its end and closes it; its MiB/s, which must be `mib`
    MiB (`how` they came names them otherwise)."""
    start, total = time.monotonic(), 0
    with stream:
        while data := stream.recv(1 << 20):
            total += len(data)
    elapsed = time.monotonic() - start
    if total != mib << 20:
        sys.exit(f"devices: got {total} of {mib << 20} bytes from the guest {how}")
    return mib / elapsed


def report_threads(pid, name):
    """Prints where each thread of process `pid` waits (wchan, gdb backtraces)."""
    progress(f"{name}: no console output for {QUIET_S} s; its threads:")
    for task in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as comm, \
                    open(f"/proc/{pid}/task/{task}/wchan") as wchan:
                progress(f"  {task} {comm.read().strip()} waits in {wchan.read().strip()}")
        except OSError:
            pass
    if shutil.which("gdb"):
        trace = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 12"],
                               capture_output=True, text=True, check=False)
        for line in trace.stdout.splitlines():
            if line.startswith(("#", "Thread")):
                progress(f"  {line}")


class BootWatchdog:
    """Calls report_threads once if `touch` is not called for QUIET_S seconds,
    and kills the process once it has run for TIMEOUT_S."""

    def __init__(self, pid, name):
        self.pid, self.name = pid, name
        self.started = self.last = time.monotonic()
        self.done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def touch(self):
        self.last = time.monotonic()

    def stop(self):
        self.done.set()

    def _watch(self):
        reported = False
        while not self.done.wait(5):
            now = time.monotonic()
            if now - self.last > QUIET_S and not reported:
                report_threads(self.pid, self.name)
                reported = True
            if now - self.started > TIMEOUT_S:
                progress(f"{self.name}: killed after {TIMEOUT_S} s")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return


class GuestStalled(Exception):
    """The guest kernel reported an RCU stall: one of its vCPUs stopped getting
    timer interrupts, which the emulated nested test host was seen to do to
    QEMU microvm's guests under load (`rcu_sched kthread timer wakeup didn't
    happen`). The boot is not measured."""


# Boots of one VMM in one run, the stalled ones included.
ATTEMPTS = 3


def boot_measured(cmd, name, uds=None, vsock_mib=0, net_mib=0):
    """`boot`, again when the guest stalled (up to ATTEMPTS boots)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return boot(cmd, name, uds, vsock_mib, net_mib)
        except GuestStalled as stall:
            progress(f"{name}: the guest stalled ({stall}); boot {attempt} of {ATTEMPTS} not measured")
    sys.exit(f"devices: the {name} guest stalled {ATTEMPTS} times")


def boot(cmd, name, uds=None, vsock_mib=0, net_mib=0):
    """Boots `cmd`; returns {step: seconds} (+ vsock and TCP MiB/s) and the
    clocksource."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    results, transcript, clock, held = {}, [], "?", []
    watch = BootWatchdog(proc.pid, name)
    try:
        for raw in proc.stdout:
            watch.touch()
            line = raw.decode(errors="replace")
            transcript.append(line)
            if args_verbose:
                progress(f"{name} console: {line.rstrip()}")
            found = re.search(r"bench-result (\S+) ([\d.]+) ([\d.]+) (\S*)", line)
            if found:
                step, start, end, out = found.groups()
                if out not in ("ok", str(DIRS * FILES_PER_DIR)):
                    sys.exit(f"devices: {name} step {step} failed ({out!r}):\n"
                             + "".join(transcript))
                results[step] = float(end) - float(start)
            found = re.search(r"bench-clocksource (\S+)", line)
            if found:
                clock = found.group(1)
            if "rcu_sched detected stalls" in line:
                raise GuestStalled(line.strip())
            if "bench-error" in line:
                sys.exit(f"devices: {name}: {line.strip()}\n" + "".join(transcript))
            if uds and "vsock-peer: listening" in line:
                results["vsock-h2g"] = host_to_guest(uds, vsock_mib)
                results["vsock-g2h"] = guest_to_host(uds, vsock_mib)
                # Held until the VM is gone: the peer exits, the init script reboots.
                held.append(vsock_connect(uds, "exit"))
            if net_mib and "bench-net-ready" in line:
                results["net-h2g"], results["net-g2h"] = net_streams(net_mib)
                # Measured (or stalled): the rest is the guest's reboot, which
                # adds nothing (QEMU's guests were seen to stall in it here).
                proc.kill()
                break
        proc.wait()
    finally:
        watch.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in held:
            stream.close()
    finished = "net-h2g" in results if net_mib else "bench-guest-done" in "".join(transcript)
    if not finished or (uds and "vsock-h2g" not in results):
        sys.exit(f"devices: the {name} guest did not finish (the VMM exited with "
                 f"{proc.returncode}):\n" + "".join(transcript))
    return results, clock


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", metavar="DIR",
                        help="only write the share and the ext4 image into DIR (at native "
                        "speed, outside the test host); reused when --content DIR is given")
    parser.add_argument("--content", metavar="DIR", help="the ext4 image from --prepare DIR, also mounted as the share")
    parser.add_argument("--vmm")
    parser.add_argument("--kernel")
    parser.add_argument("--vsock-peer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vsock-mib", type=int, default=64)
    parser.add_argument("--net-mib", type=int, default=64)
    parser.add_argument("--only", choices=["blk", "net"],
                        help="only the virtio-blk or the virtio-net steps (the devices stay attached, the guests "
                        "skip the share and vsock)")
    args = parser.parse_args()
    if args.prepare:
        if not os.path.exists(os.path.join(args.prepare, "done")):
            shutil.rmtree(args.prepare, ignore_errors=True)
            os.makedirs(args.prepare)
            make_content(args.prepare)
            open(os.path.join(args.prepare, "done"), "w").close()
        return
    if not (args.vmm and args.kernel and args.vsock_peer):
        parser.error("--vmm, --kernel and --vsock-peer are required")

    runs = {"runv": [], "qemu": []}
    if args.only == "net":
        runs["qemu-vhost"] = []
    clocks = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.content:
            # One file copied into the test host's tmpfs (its 9p is far too slow for
            # 10k small files); the share is that image mounted read-only, warmed once,
            # so both VMMs and both devices read from the test host's memory.
            progress(f"copying the ext4 image from {args.content}")
            share, image = os.path.join(tmp, "share"), os.path.join(tmp, "disk.ext4")
            shutil.copyfile(os.path.join(args.content, "disk.ext4"), image)
            os.makedirs(share)
            subprocess.run(["modprobe", "loop"], check=False)
            subprocess.run(["mount", "-t", "ext4", "-o", "loop,ro", image, share], check=True)
            subprocess.run(f"cat {share}/big.bin >/dev/null && find {share}/tree -type f "
                           "| xargs stat -c %s | wc -l >/dev/null", shell=True, check=True)
        else:
            progress("writing the share and the ext4 image")
            share, image = make_content(tmp)
        common = GUEST_SCRIPT % {"mib": BIG_MIB}
        if args.only == "blk":
            runv_initrd = initrd(tmp, "runv", common + GUEST_END + GUEST_REBOOT)
            qemu_initrd = initrd(tmp, "qemu", common + GUEST_END + GUEST_REBOOT)
        elif args.only == "net":
            net = GUEST_NET % {"guest": NET_GUEST, "prefix": NET_PREFIX, "host": NET_HOST,
                               "sink": NET_SINK_PORT, "source": NET_SOURCE_PORT,
                               "blocks": args.net_mib * 16}
            runv_initrd = qemu_initrd = initrd(tmp, "net", "b=/bin/busybox\n" + net + GUEST_REBOOT)
        else:
            runv_initrd = initrd(tmp, "runv", common + GUEST_SHARE % {"mount": RUNV_SHARE_MOUNT}
                                 + GUEST_END + GUEST_VSOCK + GUEST_REBOOT,
                                 [(args.vsock_peer, "vsock-peer")])
            qemu_initrd = initrd(tmp, "qemu", common + GUEST_SHARE % {"mount": QEMU_SHARE_MOUNT}
                                 + GUEST_END + GUEST_REBOOT)
        uds = os.path.join(tmp, "vsock.sock")
        try:
            if args.only == "net":
                net_up()
                measure_net(args, runs, clocks, share, image, runv_initrd, uds)
            else:
                measure(args, runs, clocks, share, image, runv_initrd, qemu_initrd, uds)
        finally:
            if args.only == "net":
                net_down()
            if args.content:
                subprocess.run(["umount", share], check=False)

    report(args, runs, clocks)


def measure(args, runs, clocks, share, image, runv_initrd, qemu_initrd, uds):
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: runv-vmm")
        with_vsock = uds if args.only is None else None
        result, clocks["runv"] = boot_measured(runv_cmd(args, runv_initrd, image, share, uds), "runv-vmm",
                                      with_vsock, args.vsock_mib)
        runs["runv"].append(result)
        progress(f"run {run + 1}/{args.runs}: QEMU microvm (runv-vmm: {result})")
        result, clocks["qemu"] = boot_measured(qemu_cmd(args, qemu_initrd, image, share), "QEMU")
        runs["qemu"].append(result)
        progress(f"run {run + 1}/{args.runs}: QEMU microvm: {result}")


def measure_net(args, runs, clocks, share, image, initrd_path, uds):
    """Each run: runv-vmm, QEMU's virtio-net, QEMU's vhost-net, the same guest."""
    for run in range(args.runs):
        for vmm in runs:
            cmd = runv_cmd(args, initrd_path, image, share, uds) if vmm == "runv" \
                else qemu_cmd(args, initrd_path, image, share)
            progress(f"run {run + 1}/{args.runs}: {vmm}")
            # A VMM killed once measured leaves its vsock socket behind.
            if os.path.exists(uds):
                os.unlink(uds)
            result, clocks[vmm] = boot_measured(with_net(cmd, vmm), vmm, net_mib=args.net_mib)
            runs[vmm].append(result)
            progress(f"run {run + 1}/{args.runs}: {vmm}: {result}")


def report_net(args, runs):
    print(f"virtio-net: TCP over a tap, {args.net_mib} MiB each way, guest of {CPUS} vCPUs and "
          f"{MEMORY_MIB} MiB; {args.runs} runs each, alternating; medians")
    for step, what in (("net-h2g", "host → guest (into busybox dd)"),
                       ("net-g2h", "guest → host (from busybox dd)")):
        value, shown = {}, {}
        for vmm in runs:
            rates = [r[step] for r in runs[vmm] if r[step] is not None]
            stalled = len(runs[vmm]) - len(rates)
            value[vmm] = statistics.median(rates) if rates else None
            shown[vmm] = (f"{value[vmm]:.1f} MiB/s" if rates else "no run") \
                + (f" ({stalled} of {len(runs[vmm])} stalled)" if stalled else "")
        ratios = {peer: f"{value['runv'] / value[peer]:.2f}" if value["runv"] and value[peer]
                  else "none" for peer in ("qemu", "qemu-vhost")}
        print(f"TCP {what}: runv-vmm {shown['runv']}, QEMU virtio-net {shown['qemu']}, "
              f"QEMU vhost-net {shown['qemu-vhost']}; ratio runv/QEMU {ratios['qemu']}, "
              f"runv/vhost-net {ratios['qemu-vhost']}")
    print("ratios > 1 favour runv-vmm; absolute figures are from an emulated test host")


def report(args, runs, clocks):
    if args.only == "net":
        report_net(args, runs)
        return
    def med(vmm, step):
        return statistics.median(r[step] for r in runs[vmm])

    def versus(what, step, throughput):
        """One row: runv-vmm against QEMU microvm on `step`, as MiB/s of BIG_MIB or as s."""
        if throughput:
            value = {v: statistics.median(BIG_MIB / r[step] for r in runs[v]) for v in runs}
            shown = {v: f"{value[v]:.1f} MiB/s" for v in runs}
            ratio = "ratio"
        else:
            value = {v: med(v, step) for v in runs}
            shown = {v: f"{value[v]:.2f} s" for v in runs}
            ratio = "time ratio"
        print(f"{what}: runv-vmm {shown['runv']}, QEMU microvm {shown['qemu']}, "
              f"{ratio} runv/qemu {value['runv'] / value['qemu']:.2f}")

    files = DIRS * FILES_PER_DIR
    print(f"guest: {CPUS} vCPUs, {MEMORY_MIB} MiB, same kernel, busybox initrd; {args.runs} runs "
          f"each, alternating; medians; guest clocksource runv-vmm {clocks['runv']}, "
          f"QEMU {clocks['qemu']}")
    if args.only is None:
        print(f"vsock host→guest ({args.vsock_mib} MiB, guest hashes): runv-vmm "
              f"{med('runv', 'vsock-h2g'):.1f} MiB/s; no peer (no vhost-vsock)")
        print(f"vsock guest→host ({args.vsock_mib} MiB): runv-vmm "
              f"{med('runv', 'vsock-g2h'):.1f} MiB/s; no peer (no vhost-vsock)")
    versus(f"virtio-blk dd {BIG_MIB} MiB O_DIRECT bs=1M", "blk-dd", True)
    versus(f"virtio-blk ext4 read of a {BIG_MIB} MiB file", "ext4-read", True)
    versus(f"virtio-blk ext4 find+stat of {files} files", "ext4-walk", False)
    if args.only == "blk":
        return
    print(f"shared directory: runv-vmm virtio-fs (cache=auto) vs QEMU 9p ({NINEP_OPTIONS})")
    versus(f"virtio-fs/9p read of a {BIG_MIB} MiB file", "fs-read", True)
    versus(f"virtio-fs/9p find+stat of {files} files", "fs-walk", False)
    print("ratios: throughput ratios > 1 and time ratios < 1 favour runv-vmm; "
          "absolute figures are from an emulated test host")

if __name__ == "__main__":
    main()

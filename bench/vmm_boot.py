#!/usr/bin/env python3
"""Boot time and memory overhead: runv-vmm against QEMU microvm on the same guest.

Boot time: process start to the agent's boot marker on the serial console, runs
alternating between the two VMMs, and runv-vmm's own setup time (process start to
the first KVM_RUN, its `vmm-setup-us`) with and without its seccomp filters, and
with and without the jail the shim puts it in (started by `runv-vmm-jailed`, which
makes the shim's jail and privileges and times the spawn, fork to exec). Memory: the
resident size of every mapping of a VMM process except guest RAM, sampled while an
idle guest runs (the way Firecracker measures its overhead).
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BOOT_MARKER = "runv-agent: init started"
IDLE_MARKER = "idle-init-ready"
MEMORY_MIB = 256
CPUS = 2
TIMEOUT_S = 300


def runv_cmd(args, initrd, console="stdout", seccomp="enforce"):
    return [args.vmm, "--kernel", args.kernel, "--initrd", initrd, "--cpus", str(CPUS),
            "--memory-mib", str(MEMORY_MIB), "--console", console, "--seccomp", seccomp]


def jailed_cmd(args, sandbox, jail=True):
    """runv-vmm through runv-vmm-jailed: in the shim's jail, or with its privileges only."""
    return ([args.jailer] + ([] if jail else ["--no-jail"])
            + ["--sandbox", sandbox, "--data", args.kernel, "--data", args.initrd, "--"]
            + runv_cmd(args, args.initrd))


def qemu_cmd(args, initrd):
    return ["qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,rtc=off,isa-serial=on",
            "-enable-kvm", "-cpu", "host", "-smp", str(CPUS), "-m", str(MEMORY_MIB),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-device", "i8042", "-kernel", args.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 reboot=k panic=-1 quiet"]


def wait_marker(proc, marker):
    """Reads console lines until `marker`; returns seconds since spawn or None."""
    for raw in proc.stdout:
        if marker in raw.decode(errors="replace"):
            return time.monotonic()
    return None


def boot_time(cmd, spawn=False):
    """Seconds to the boot marker, and runv-vmm's setup time in µs (None for QEMU);
    with `spawn`, also runv-vmm-jailed's spawn time in µs."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        # A session of its own: a VMM under runv-vmm-jailed goes with it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True)
        try:
            seen = wait_marker(proc, BOOT_MARKER)
            proc.wait(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stderr.seek(0)
        found = {}
        for line in stderr.read().decode(errors="replace").splitlines():
            for key in ("vmm-setup-us=", "jail-spawn-us="):
                if key in line:
                    found[key] = int(line.rsplit("=", 1)[1])
    if seen is None:
        sys.exit(f"vmm-boot: no boot marker from {cmd[0]}")
    if spawn:
        return seen - start, found.get("vmm-setup-us="), found.get("jail-spawn-us=")
    return seen - start, found.get("vmm-setup-us=")


def overhead_kib(pid, guest_bytes):
    """Rss of all mappings smaller than guest RAM (guest RAM itself excluded)."""
    total, size = 0, 0
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields[0] == "Size:":
                size = int(fields[1]) * 1024
            elif fields[0] == "Rss:" and size < guest_bytes:
                total += int(fields[1])
    return total


def idle_initrd(tmp):
    root = os.path.join(tmp, "root")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin/sh"))
    with open(os.path.join(root, "init"), "w") as init:
        init.write(f"#!/bin/sh\n/bin/busybox echo {IDLE_MARKER}\n"
                   "while :; do /bin/busybox sleep 1; done\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    path = os.path.join(tmp, "idle.img")
    subprocess.run(f"cd {root} && find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > {path}",
                   shell=True, check=True)
    return path


def memory_overhead(cmd):
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        if wait_marker(proc, IDLE_MARKER) is None:
            sys.exit(f"vmm-boot: the idle guest did not start under {cmd[0]}")
        time.sleep(1)
        return overhead_kib(proc.pid, MEMORY_MIB << 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmm", required=True)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--jailer", required=True, help="runv-vmm-jailed")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    times = {"runv": [], "qemu": []}
    setup = {"enforce": [], "off": []}
    for _ in range(args.runs):
        boot, setup_us = boot_time(runv_cmd(args, args.initrd))
        times["runv"].append(boot)
        setup["enforce"].append(setup_us)
        times["qemu"].append(boot_time(qemu_cmd(args, args.initrd))[0])
        setup["off"].append(boot_time(runv_cmd(args, args.initrd, seccomp="off"))[1])
    runv, qemu = statistics.median(times["runv"]), statistics.median(times["qemu"])
    with_filters, without = (statistics.median(setup[mode]) for mode in ("enforce", "off"))

    jail = {True: ([], []), False: ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for jailed in (True, False):
                _, setup_us, spawn_us = boot_time(
                    jailed_cmd(args, os.path.join(tmp, "pod"), jailed), spawn=True)
                jail[jailed][0].append(spawn_us)
                jail[jailed][1].append(setup_us)
    (spawn_in, setup_in), (spawn_out, setup_out) = (
        tuple(statistics.median(values) / 1000 for values in jail[jailed])
        for jailed in (True, False))

    with tempfile.TemporaryDirectory() as tmp:
        initrd = idle_initrd(tmp)
        runv_kib = memory_overhead(runv_cmd(args, initrd))
        qemu_kib = memory_overhead(qemu_cmd(args, initrd))

    print(f"guest: {CPUS} vCPUs, {MEMORY_MIB} MiB, {args.runs} runs each, alternating")
    print(f"boot to marker (median): runv-vmm {runv * 1000:.0f} ms, QEMU microvm {qemu * 1000:.0f} ms")
    print(f"boot ratio runv/qemu: {runv / qemu:.2f} (target <= 0.80)")
    print(f"VMM memory overhead (RSS without guest RAM): runv-vmm {runv_kib / 1024:.1f} MiB, "
          f"QEMU microvm {qemu_kib / 1024:.1f} MiB (target <= 5 MiB)")
    print(f"memory ratio runv/qemu: {runv_kib / qemu_kib:.2f}")
    print(f"runv-vmm setup to first KVM_RUN (median): {with_filters / 1000:.1f} ms with its "
          f"seccomp filters, {without / 1000:.1f} ms without (--seccomp off): "
          f"ratio {with_filters / without:.2f} (goal <= 1.05)")
    cost = spawn_in - spawn_out
    print(f"the shim's jail (medians): spawn, fork to exec, {spawn_in:.1f} ms with it, "
          f"{spawn_out:.1f} ms without; setup to first KVM_RUN {setup_in:.1f} ms with it, "
          f"{setup_out:.1f} ms without: the jail costs {cost:.1f} ms, "
          f"{100 * cost / (spawn_out + setup_out):.1f}% of the VMM's setup (spawn + setup) "
          f"without it (goal < 5%)")


if __name__ == "__main__":
    main()

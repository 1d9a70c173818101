//! Tier 2: our guest kernel and initrd boot to the agent in the reference VMM,
//! QEMU microvm, on KVM. Proves the guest artefacts independently of runv-vmm.

use protocol::BOOT_MARKER;
use runv_tests::artefacts::GuestArtefacts;
use runv_tests::console::run_to_exit;
use runv_tests::host::{assert_no_process_left, require_kvm};
use std::process::Command;
use std::time::Duration;

/// Generous: a nested, emulated test host boots in about 20 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// QEMU microvm with what our guest needs: the 8250 UART for the console and an
/// i8042 whose reset line ends the VM on the agent's `reboot=k` power-off.
fn qemu_microvm(guest: &GuestArtefacts, cpus: u32, memory_mib: u32) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm,acpi=off,x-option-roms=off,rtc=off,isa-serial=on",
    ])
    .args(["-enable-kvm", "-cpu", "host"])
    .args(["-smp", &cpus.to_string(), "-m", &memory_mib.to_string()])
    .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
    .args(["-serial", "stdio", "-device", "i8042"])
    .arg("-kernel")
    .arg(&guest.kernel)
    .arg("-initrd")
    .arg(&guest.initrd)
    .args(["-append", "console=ttyS0 reboot=k panic=-1 quiet"]);
    qemu
}

#[test]
fn guest_boots_to_agent_and_powers_off_in_qemu_microvm() {
    require_kvm();
    let guest = GuestArtefacts::from_env();

    let run = run_to_exit(qemu_microvm(&guest, 2, 256), BOOT_MARKER, BOOT_TIMEOUT);

    assert!(
        run.saw(BOOT_MARKER),
        "no boot marker on the console:\n{}",
        run.transcript()
    );
    assert!(
        run.status.success(),
        "QEMU did not exit cleanly on the agent's power-off ({}):\n{}",
        run.status,
        run.transcript()
    );
    if let Some(after) = run.marker_after {
        eprintln!("boot marker after {after:?} (QEMU microvm, 2 vCPUs, 256 MiB)");
    }
    assert_no_process_left(&guest.kernel.display().to_string());
}

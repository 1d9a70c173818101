//! The configuration the shim hands its VMM: protocol's [`VmConfig`], passed
//! as `--config JSON`.

use super::{NetCard, VmError, VmStart};
use crate::config::RunvConfig;
use crate::paths::{SandboxDir, GUEST_CID};
use crate::spec::VmSize;
use protocol::vm_config::{ConsoleConfig, FsConfig, NetConfig, VmConfig, VsockConfig};
use protocol::{SHARED_FS_TAG, SHARE_MAX_FDS};
use std::os::fd::AsRawFd;

/// The VM of sandbox `dir`: `size`, the shared directory, vsock, rng and
/// the network cards `nets` (inherited under their fd numbers), or a VM
/// template's detached cards, checked.
pub(super) fn vmm_config(
    config: &RunvConfig,
    dir: &SandboxDir,
    size: VmSize,
    nets: &[NetCard<'_>],
    start: VmStart<'_>,
) -> Result<VmConfig, VmError> {
    let mut net: Vec<NetConfig> = nets
        .iter()
        .map(|net| NetConfig {
            tap: None,
            fd: Some(net.tap.as_raw_fd()),
            mac: Some(net.mac.to_owned()),
        })
        .collect();
    let (snapshot_dir, restore_from) = match start {
        VmStart::Boot => (None, None),
        VmStart::MakeTemplate { snapshot, cards } => {
            net = vec![NetConfig::default(); cards];
            (Some(snapshot.to_path_buf()), None)
        }
        VmStart::Restore(dir) => (None, Some(dir.to_path_buf())),
    };
    let vm = VmConfig {
        kernel: config.kernel.clone(),
        initrd: Some(config.initrd.clone()),
        cpus: u8::try_from(size.vcpus).map_err(|_| VmError::Vcpus(size.vcpus))?,
        memory_mib: u64::from(size.memory_mib),
        cmdline: None,
        console: if config.debug_console {
            ConsoleConfig::File(dir.console_log())
        } else {
            ConsoleConfig::Off
        },
        api_sock: Some(dir.api_sock()),
        rng: true,
        free_page_reporting: config.free_page_reporting,
        disks: Vec::new(),
        vsock: Some(VsockConfig {
            cid: u64::from(GUEST_CID),
            uds: dir.vsock_sock(),
        }),
        fs: vec![FsConfig {
            max_fds: SHARE_MAX_FDS,
            ..FsConfig::new(SHARED_FS_TAG, &dir.shared())
        }],
        net,
        // The shim's own name for the mode, until its config uses protocol's.
        seccomp: config.vmm_seccomp,
        snapshot_dir,
        restore_from,
    };
    vm.validate()?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_vm_config_names_the_sandbox_and_survives_json() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SandboxDir::under(parent.path(), "pod");
        let tap = std::fs::File::open("/dev/null").unwrap();
        let nets = [NetCard {
            tap: tap.as_fd(),
            mac: "02:00:0a:d5:00:02",
        }];
        let size = VmSize {
            vcpus: 2,
            memory_mib: 384,
        };
        let config = RunvConfig::default();
        let vm = vmm_config(&config, &dir, size, &nets, VmStart::Boot).unwrap();
        assert_eq!((vm.cpus, vm.memory_mib, vm.rng), (2, 384, true));
        assert!(vm.free_page_reporting, "on by default");
        assert_eq!(vm.net[0].fd, Some(tap.as_raw_fd()));
        assert_eq!(vm.fs[0].path, dir.shared());
        let json = serde_json::to_string(&vm).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), vm);
        // kill_orphan knows its VMM by the sandbox directory in its arguments.
        assert!(json.contains(&dir.path().display().to_string()), "{json}");

        let too_many = VmSize {
            vcpus: 300,
            memory_mib: 384,
        };
        let err = vmm_config(&config, &dir, too_many, &nets, VmStart::Boot).unwrap_err();
        assert!(matches!(err, VmError::Vcpus(300)), "{err}");
        let mut bad_mac = nets;
        bad_mac[0].mac = "01:00:00:00:00:01";
        let err = vmm_config(&config, &dir, size, &bad_mac, VmStart::Boot).unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
    }
}

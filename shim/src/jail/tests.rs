use super::enter::Step;
use super::*;
use crate::privileges::VmmPrivileges;
use std::process::Command;
use std::sync::Arc;

/// A static program in a jail sees its files at their host paths, a
/// `/proc` of its own processes and nothing else, as the first process of
/// its pid namespace. Needs root; `/bin/busybox` is Debian's
/// busybox-static (scripts/setup) and `/dev/kvm` must exist.
#[test]
fn a_jailed_program_sees_only_its_files_and_its_own_processes() {
    let run = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(run.path(), "pod");
    for made in [dir.shared(), dir.vm_dir(), dir.jail_root()] {
        std::fs::create_dir_all(made).unwrap();
    }
    std::fs::write(dir.shared().join("seen"), "").unwrap();
    let data = run.path().join("vmlinux");
    std::fs::write(&data, "kernel").unwrap();
    let busybox = Path::new("/bin/busybox");
    let jail = Arc::new(Jail::plan(&dir, busybox, &[&data]).unwrap());
    let script = format!(
        "echo pid $$; echo root $(ls /); echo share $(ls {}); echo proc $(ls /proc | grep -v '^[0-9]'); \
         cat {}; touch /new 2>&- || echo root read-only; \
         touch {}/sock && echo vm writable",
        dir.shared().display(),
        data.display(),
        dir.vm_dir().display()
    );
    let mut command = Command::new(busybox);
    command.args(["sh", "-c", &script]).env_clear();
    command.stdout(std::process::Stdio::piped());
    // SAFETY: nothing is prepared.
    let (child, _) =
        unsafe { spawn_confined(&mut command, Some(jail), VmmPrivileges::new(), || Ok(())) }
            .unwrap_or_else(|err| panic!("{err}"));
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let top = run
        .path()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "pid 1".to_string(),
            format!("root bin dev proc {top}"),
            "share seen".into(),
            "proc self thread-self".into(),
            "kernelroot read-only".into(),
            "vm writable".into(),
        ],
        "{output:?}"
    );
    assert!(
        dir.vm_dir().join("sock").exists(),
        "the VMM's directory is the host's"
    );
}

#[test]
fn a_failed_step_is_named_with_its_path() {
    let dir = SandboxDir::new("pod");
    let jail = Jail {
        root: cstring(&dir.jail_root()).unwrap(),
        dirs: vec![],
        binds: vec![Bind {
            source: c"/dev/kvm".into(),
            target: c"/run/runv/pod/jail/dev/kvm".into(),
            file: true,
            recursive: false,
            flags: Some(DEVICE),
        }],
        proc: c"/run/runv/pod/jail/proc".into(),
    };
    let err = io::Error::from_raw_os_error(Step::Bind.code(0, libc::ENOENT));
    assert_eq!(
        jail.describe(err).to_string(),
        "the VMM's jail: bind /dev/kvm on /run/runv/pod/jail/dev/kvm: No such file or directory"
    );
    let plain = io::Error::from_raw_os_error(libc::EACCES);
    let text = plain.to_string();
    assert_eq!(jail.describe(plain).to_string(), text);
}

#[test]
fn the_plan_holds_each_path_at_its_host_path_files_first() {
    let run = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(run.path(), "pod");
    // The test binary itself is dynamic: plan around the check.
    let mut jail = Jail {
        root: cstring(&dir.jail_root()).unwrap(),
        dirs: vec![],
        binds: vec![],
        proc: cstring(&dir.jail_root().join("proc")).unwrap(),
    };
    let root = dir.jail_root();
    jail.add(&root, &dir.shared(), false, true, None).unwrap();
    // Twice: the second is the same bind and adds nothing.
    for _ in 0..2 {
        let kernel = Path::new("/usr/share/runv/vmlinux");
        jail.add(&root, kernel, true, false, Some(READ_ONLY_DATA))
            .unwrap();
    }
    let targets: Vec<_> = jail.binds.iter().map(|b| b.target.clone()).collect();
    assert_eq!(
        targets,
        [
            cstring(&root.join("usr/share/runv/vmlinux")).unwrap(),
            cstring(&root.join(dir.shared().strip_prefix("/").unwrap())).unwrap(),
        ]
    );
    let usr = cstring(&root.join("usr")).unwrap();
    let runv = cstring(&root.join("usr/share/runv")).unwrap();
    let at = |dir: &CString| jail.dirs.iter().position(|d| d == dir).unwrap();
    assert!(at(&usr) < at(&runv), "parents first: {:?}", jail.dirs);
    assert!(
        !jail
            .dirs
            .contains(&cstring(&root.join("usr/share/runv/vmlinux")).unwrap()),
        "a file's mount point is not a directory"
    );
}

#[test]
fn paths_that_are_not_absolute_and_plain_are_refused() {
    for bad in ["relative", "/a/../b", "/"] {
        assert!(plain_relative(Path::new(bad)).is_err(), "{bad}");
    }
    assert_eq!(
        plain_relative(Path::new("/dev/kvm")).unwrap(),
        Path::new("dev/kvm")
    );
}

#[test]
fn a_dynamic_program_is_told_from_a_static_one() {
    // This test binary has an interpreter; a header without one has none.
    let own = std::env::current_exe().unwrap();
    assert!(matches!(check_static(&own), Err(JailError::Dynamic { .. })));
    let mut elf = vec![0u8; 0x40 + 56];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    assert_eq!(has_interpreter(&elf), Some(false));
    elf[0x40..0x44].copy_from_slice(&PT_INTERP.to_le_bytes());
    assert_eq!(has_interpreter(&elf), Some(true));
    assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
}

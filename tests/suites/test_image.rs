//! The OCI test image that replaces a registry: it unpacks (umoci) into a root file
//! system whose busybox tools run, with the config the tests rely on.

use runv_tests::host::require_root;
use runv_tests::scratch::Scratch;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applets the suites call inside containers.
const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "sleep",
    "ls",
    "id",
    "env",
    "head",
    "dd",
    "wc",
    "yes",
    "sha256sum",
    "top",
    "ps",
];

fn image_tarball() -> PathBuf {
    let path = std::env::var_os("RUNV_TEST_IMAGE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("RUNV_TEST_IMAGE is not set: run through scripts/test or set it to the output of images/build-test-image.sh")
    });
    assert!(
        path.is_file(),
        "RUNV_TEST_IMAGE={} is not a file",
        path.display()
    );
    path
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn unpack(tarball: &Path, scratch: &Path) -> PathBuf {
    let layout = scratch.join("layout");
    let bundle = scratch.join("bundle");
    fs::create_dir_all(&layout).expect("create layout dir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(&layout));
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    bundle
}

#[test]
fn test_image_unpacks_to_a_runnable_busybox_root() {
    require_root("it chroots into the image");
    let scratch = Scratch::new("runv-test-image");
    let bundle = unpack(&image_tarball(), scratch.path());
    let rootfs = bundle.join("rootfs");

    for applet in APPLETS {
        let link = rootfs.join("bin").join(applet);
        let target = fs::read_link(&link).unwrap_or_else(|err| panic!("{}: {err}", link.display()));
        assert_eq!(
            target,
            Path::new("busybox"),
            "{} links elsewhere",
            link.display()
        );
    }
    let config = fs::read_to_string(bundle.join("config.json")).expect("read config.json");
    assert!(
        config.contains("PATH=/bin"),
        "image env lacks PATH=/bin: {config}"
    );

    let out = run(Command::new("chroot").arg(&rootfs).args([
        "/bin/sh",
        "-c",
        "echo ok; id -u; echo abc | sha256sum | head -c 8",
    ]));
    assert_eq!(out, "ok\n0\nedeaaff3");
}

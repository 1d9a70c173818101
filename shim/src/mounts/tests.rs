use super::*;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::fd::AsFd;

fn open_dir(path: &Path) -> OwnedFd {
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    // SAFETY: just opened.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn mountinfo_escapes_are_decoded() {
    assert_eq!(unescape_mountinfo("/run/a\\040b"), "/run/a b");
    assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
}

#[test]
fn only_plain_relative_paths_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let fd = open_dir(dir.path());
    for bad in ["", "/etc", "../x", "a/../b", "."] {
        let err = make_dir_beneath(fd.as_fd(), Path::new(bad)).unwrap_err();
        assert!(
            matches!(err, MountError::NotRelative { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn directories_and_files_are_made_beneath() {
    let dir = tempfile::tempdir().unwrap();
    let fd = open_dir(dir.path());
    make_dir_beneath(fd.as_fd(), Path::new("c1/mounts")).unwrap();
    make_dir_beneath(fd.as_fd(), Path::new("c1/mounts")).unwrap();
    make_file_beneath(fd.as_fd(), Path::new("c1/mounts/0")).unwrap();
    assert!(dir.path().join("c1/mounts").is_dir());
    assert!(dir.path().join("c1/mounts/0").is_file());
    let names = list_dir(open_dir(&dir.path().join("c1")).as_fd(), Path::new("c1")).unwrap();
    assert_eq!(names, vec![PathBuf::from("mounts")]);
}

#[test]
fn a_planted_symlink_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("c1")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("c1/mounts")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("c1/file")).unwrap();
    let fd = open_dir(dir.path());
    for rel in ["c1/mounts/0", "c1/mounts"] {
        let err = make_dir_beneath(fd.as_fd(), Path::new(rel)).unwrap_err();
        assert!(
            matches!(
                err,
                MountError::Sys {
                    source: Errno::ELOOP | Errno::ENOTDIR,
                    ..
                }
            ),
            "{rel}: {err}"
        );
    }
    let err = make_file_beneath(fd.as_fd(), Path::new("c1/file")).unwrap_err();
    assert!(
        matches!(
            err,
            MountError::Sys {
                source: Errno::ELOOP,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn removal_takes_only_empty_entries() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("full/keep")).unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let fd = open_dir(dir.path());
    remove_entry(fd.as_fd(), Path::new("empty")).unwrap();
    remove_entry(fd.as_fd(), Path::new("file")).unwrap();
    remove_entry(fd.as_fd(), Path::new("gone")).unwrap();
    assert!(remove_entry(fd.as_fd(), Path::new("full")).is_err());
    assert!(dir.path().join("full/keep").is_dir());
    assert!(!detach_all(fd.as_fd(), Path::new("full")).unwrap());
}

//! `runv trace POD`: one pod's start timeline, from the `start-phases.json`
//! the shim writes in its sandbox directory at boot (read bounded, never
//! through a symlink).

use crate::files;
use containerd_shim_runv_v2::paths::SandboxDir;
use containerd_shim_runv_v2::start_phases::{StartPhases, StartPhasesError, MAX_FILE_SIZE};
use std::io;
use std::path::{Path, PathBuf};

/// Why a pod's timeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The pod id is not a valid sandbox id.
    #[error("'{0}' is not a sandbox id")]
    BadId(String),
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The file holds no timeline.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: StartPhasesError,
    },
}

/// The start phases of pod `id` under `run_root`; `None` while the pod boots
/// (or was started by a shim that did not record them).
pub fn read(run_root: &Path, id: &str) -> Result<Option<StartPhases>, TraceError> {
    if protocol::id::check_id("sandbox", id).is_err() {
        return Err(TraceError::BadId(id.into()));
    }
    let path = SandboxDir::under(run_root, id).start_phases_file();
    let text = match files::read_bounded(&path, MAX_FILE_SIZE) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TraceError::Read { path, source }),
    };
    StartPhases::parse(&text)
        .map(Some)
        .map_err(|source| TraceError::Parse { path, source })
}

/// One line per phase, with its duration and when it ended since the
/// VMM's spawn began, then the total.
pub fn render(phases: &StartPhases) -> String {
    let mut out = format!("{:<12} {:>12} {:>12}\n", "PHASE", "DURATION", "AT");
    let mut at = 0.0;
    for (name, secs) in phases.seconds() {
        at += secs;
        out += &format!("{name:<12} {:>9.2} ms {:>9.2} ms\n", secs * 1e3, at * 1e3);
    }
    out + &format!("{:<12} {:>9.2} ms\n", "total", at * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pods_timeline_and_prints_one_line_a_phase() {
        let run = tempfile::tempdir().unwrap();
        assert!(read(run.path(), "pod").unwrap().is_none());
        assert!(matches!(
            read(run.path(), "../etc"),
            Err(TraceError::BadId(_))
        ));
        let dir = SandboxDir::under(run.path(), "pod");
        std::fs::create_dir(dir.path()).unwrap();
        let phases = crate::test_utils::start_phases();
        phases.write_atomic(&dir.start_phases_file()).unwrap();
        assert_eq!(read(run.path(), "pod").unwrap(), Some(phases));
        let text = render(&phases);
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(
            text.contains("guest_boot      300.00 ms    303.00 ms"),
            "{text}"
        );
        assert!(text.ends_with("total           310.00 ms\n"), "{text}");

        std::fs::remove_file(dir.start_phases_file()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.start_phases_file()).unwrap();
        assert!(matches!(
            read(run.path(), "pod"),
            Err(TraceError::Read { .. })
        ));
    }
}

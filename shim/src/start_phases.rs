//! A pod's start timeline, as the shim measured it at boot: written to
//! `start-phases.json` in the sandbox directory (by the shim, atomically)
//! and read by `runv metrics` and `runv trace`.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::Path;

/// Bytes of a phases file a reader takes at most.
pub const MAX_FILE_SIZE: u64 = 4096;

/// Why the phases file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StartPhasesError {
    /// The temporary file could not be created or written.
    #[error("write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// The temporary file could not be renamed into place.
    #[error("rename to {path}: {source}")]
    Rename {
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// The text is not a phases record.
    #[error("not a start-phases record: {0}")]
    Parse(#[from] serde_json::Error),
}

/// How long each phase of a pod's start took, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPhases {
    /// The VMM's spawn: fork to exec, with its jail.
    pub vmm_spawn_us: u64,
    /// The VMM's setup: exec to the first KVM_RUN (as the VMM measured it).
    pub vmm_setup_us: u64,
    /// The guest's boot: the first KVM_RUN to its init (the agent) starting
    /// (as the VMM measured it).
    pub guest_boot_us: u64,
    /// The rest until the shim's boot was done: the agent's start to its
    /// answer, with the guest's sandbox prepared (the shim's wall time from
    /// the spawn, less the three phases before).
    pub agent_ready_us: u64,
}

impl StartPhases {
    /// The phases by their metric names, in order, in seconds.
    pub fn seconds(&self) -> [(&'static str, f64); 4] {
        let secs = |us: u64| us as f64 / 1e6;
        [
            ("vmm_spawn", secs(self.vmm_spawn_us)),
            ("vmm_setup", secs(self.vmm_setup_us)),
            ("guest_boot", secs(self.guest_boot_us)),
            ("agent_ready", secs(self.agent_ready_us)),
        ]
    }

    /// Parses a phases file's text.
    pub fn parse(text: &str) -> Result<Self, StartPhasesError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Writes the record to `path` atomically: a temporary file beside it
    /// (mode 0644, created new), then a rename over `path`.
    pub fn write_atomic(&self, path: &Path) -> Result<(), StartPhasesError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let write_err = |source| StartPhasesError::Write {
            path: tmp.clone(),
            source,
        };
        // An earlier attempt's leftover goes; `create_new` never follows a
        // symlink planted in its place.
        match std::fs::remove_file(&tmp) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(write_err(err)),
            _ => {}
        }
        let text = serde_json::to_string(self)? + "\n";
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_err(err));
        }
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            StartPhasesError::Rename {
                path: path.into(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("start-phases.json");
        let phases = StartPhases {
            vmm_spawn_us: 1_500,
            vmm_setup_us: 20_000,
            guest_boot_us: 300_000,
            agent_ready_us: 45_000,
        };
        phases.write_atomic(&path).unwrap();
        // Written again over the first: the rename replaces it.
        phases.write_atomic(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!((text.len() as u64) < MAX_FILE_SIZE);
        assert_eq!(StartPhases::parse(&text).unwrap(), phases);
        assert_eq!(phases.seconds()[2], ("guest_boot", 0.3));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(StartPhases::parse("{\"vmm_spawn_us\": -1}").is_err());
    }
}

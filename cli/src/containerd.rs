//! containerd on this host: its binary, its version and whether its config
//! names runv's runtime.

use crate::command::{self, CommandError};
use std::path::{Path, PathBuf};

/// The runtime type containerd knows runv by.
pub const RUNTIME_TYPE: &str = "io.pouch.runv.v2";
/// The shim binary containerd looks for on its PATH for [`RUNTIME_TYPE`].
pub const SHIM_BINARY: &str = "containerd-shim-runv-v2";
/// Bytes of containerd's config read.
const MAX_CONFIG: u64 = 1 << 20;

/// containerd's binary on PATH.
pub fn binary() -> Option<PathBuf> {
    command::find_on_path("containerd")
}

/// `containerd --version`, e.g. `containerd github.com/containerd/containerd 1.6.20 ...`.
pub fn version(binary: &Path) -> Result<String, CommandError> {
    command::output_of(binary, &["--version"], command::VERSION_TIMEOUT)
}

/// Whether containerd's config at `path` names runv's runtime.
pub fn config_names_runtime(path: &Path) -> std::io::Result<bool> {
    crate::files::read_bounded(path, MAX_CONFIG).map(|text| names_runtime(&text))
}

/// Whether a containerd config (TOML text) has a line
/// `runtime_type = "io.pouch.runv.v2"` that is not commented out (either quote).
pub fn names_runtime(config: &str) -> bool {
    config.lines().any(|line| {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        if key.trim() != "runtime_type" {
            return false;
        }
        let value = value.split('#').next().unwrap_or_default().trim();
        value == format!("\"{RUNTIME_TYPE}\"") || value == format!("'{RUNTIME_TYPE}'")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_runtime_in_config_text() {
        let v2 = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv]
  runtime_type = "io.pouch.runv.v2"  # runv
"#;
        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runv]\n\
                  runtime_type = 'io.pouch.runv.v2'\n";
        assert!(names_runtime(v2));
        assert!(names_runtime(v3));
        assert!(!names_runtime(
            "# runtime_type = \"io.pouch.runv.v2\"\nruntime_type = \"io.containerd.runc.v2\"\n"
        ));
        assert!(!names_runtime("runtime_type = \"io.pouch.runv.v2x\"\n"));
        assert!(!names_runtime(""));
    }
}

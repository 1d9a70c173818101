//! Scratch directories that are removed when a test ends, pass or fail.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh directory under `TMPDIR`, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `<TMPDIR>/<name>.<pid>.<n>`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{name}.{}.{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

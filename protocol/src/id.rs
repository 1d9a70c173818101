//! Container, exec and sandbox ids: each becomes one path component on the
//! host (`/run/runv/<id>`) and in the guest, so only a safe alphabet passes.

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest part of a refused id quoted back in the error.
const QUOTED_LEN: usize = 64;

/// An id outside `[A-Za-z0-9_.-]{1,128}`, or `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {quoted:?} must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_.-], not . or ..")]
pub struct InvalidId {
    /// What the id names (`container id`, `exec_id`, ...).
    pub kind: String,
    /// The id's first characters.
    pub quoted: String,
}

/// Checks `id`, named `kind` in the error.
pub fn check_id(kind: &str, id: &str) -> Result<(), InvalidId> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        return Ok(());
    }
    Err(InvalidId {
        kind: kind.to_owned(),
        quoted: id.chars().take(QUOTED_LEN).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_path_components_pass() {
        for good in ["a", "pod-1", "A_b.c", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("id", good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            let err = check_id("container id", bad).unwrap_err();
            assert!(err.to_string().starts_with("container id "), "{err}");
        }
        let long = "/".repeat(10_000);
        let err = check_id("exec_id", &long).unwrap_err().to_string();
        assert!(err.len() < 200, "the error quotes only the start: {err}");
    }
}

//! Text from outside the shim (a guest's or a VMM's error message), cut to a
//! bound before it reaches a log, containerd or an operator.

/// Most bytes of guest-provided text (an agent's error message) a task error
/// keeps: the agent may send megabytes, containerd and its logs get this much.
pub const MAX_GUEST_TEXT: usize = 4096;

/// `text` cut to its first `max` bytes (at a char boundary), followed by how
/// many bytes were cut; whole if it is not longer.
pub fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_text_is_cut_and_says_how_much() {
        assert_eq!(bounded_text("short", MAX_GUEST_TEXT), "short");
        assert_eq!(bounded_text("abc", 3), "abc");
        assert_eq!(bounded_text("abcd", 3), "abc… (1 bytes cut)");
        // Byte 2 splits the 'é': the cut is before it.
        assert_eq!(bounded_text("aéb", 2), "a… (3 bytes cut)");
    }
}

//! Splitting long text into messages Telegram accepts.
//!
//! Telegram refuses a message over 4096 characters, counted in UTF-16 code
//! units (the unit its entity offsets use too), so that is what is counted
//! here. A cut prefers a line break, then a space, and only then falls in the
//! middle of a word; it never falls inside a character.

/// The longest text of one message, in UTF-16 code units.
pub const MESSAGE_LIMIT: usize = 4096;

/// Splits `text` into parts of at most `limit` UTF-16 code units each; only
/// a character wider than the whole limit (an astral one at a limit of 1)
/// makes a part over it, on its own.
///
/// Joining the parts gives back the text, less the one line break or space
/// at each cut. Empty text gives no parts.
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    split_points(text, limit)
        .into_iter()
        .map(|(start, end)| text[start..end].to_string())
        .collect()
}

/// The byte ranges of the parts [`split_text`] makes.
pub fn split_points(text: &str, limit: usize) -> Vec<(usize, usize)> {
    assert!(limit > 0, "a split limit of zero makes no parts");
    let mut parts = Vec::new();
    let mut at = 0;
    while utf16_len(&text[at..]) > limit {
        let rest = &text[at..];
        // At least one character, or a character wider than the limit would
        // make empty parts forever.
        let hard = match byte_index_at_utf16(rest, limit) {
            0 => rest.chars().next().map_or(rest.len(), char::len_utf8),
            hard => hard,
        };
        let window = &rest[..hard];
        // A break at the very start would make an empty part; ignore it.
        let cut = window
            .rfind('\n')
            .filter(|&i| i > 0)
            .or_else(|| window.rfind(char::is_whitespace).filter(|&i| i > 0));
        match cut {
            Some(i) => {
                let separator_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                parts.push((at, at + i));
                at += i + separator_len;
            }
            None => {
                parts.push((at, at + hard));
                at += hard;
            }
        }
    }
    if at < text.len() {
        parts.push((at, text.len()));
    }
    parts
}

pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The byte index of the longest prefix within `units` UTF-16 code units.
fn byte_index_at_utf16(text: &str, units: usize) -> usize {
    let mut used = 0;
    for (index, ch) in text.char_indices() {
        used += ch.len_utf16();
        if used > units {
            return index;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_text("hello", 4096), vec!["hello"]);
        assert!(split_text("", 4096).is_empty());
    }

    #[test]
    fn prefers_line_breaks_then_spaces() {
        assert_eq!(split_text("aaa bbb\nccc", 8), vec!["aaa bbb", "ccc"]);
        assert_eq!(split_text("aaa bbb ccc", 8), vec!["aaa bbb", "ccc"]);
        assert_eq!(split_text("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn counts_utf16_and_never_cuts_a_character() {
        // Each emoji is two UTF-16 code units.
        let text = "😀😀😀";
        let parts = split_text(text, 3);
        assert_eq!(parts, vec!["😀", "😀", "😀"]);
        let cyrillic = "привет мир ".repeat(1000);
        for part in split_text(&cyrillic, MESSAGE_LIMIT) {
            assert!(utf16_len(&part) <= MESSAGE_LIMIT);
        }
    }

    #[test]
    fn a_character_wider_than_the_limit_gets_a_part_of_its_own() {
        // Found by fuzzing (the `split` target): at a limit of 1 this
        // looped forever, pushing empty parts.
        let bytes = [0, 0, 0, 0, 0, 0, 0x0e, 0x98, 0x80, 0xf0, 0x9d, 0x84, 0x9e];
        let text = &*String::from_utf8_lossy(&bytes);
        let parts = split_text(text, 1);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts.last().map(String::as_str), Some("𝄞"));
        assert_eq!(split_text("😀a😀", 1), vec!["😀", "a", "😀"]);
    }

    #[test]
    fn long_text_keeps_every_word() {
        let text: String = (0..3000).map(|i| format!("word{i} ")).collect();
        let parts = split_text(text.trim_end(), MESSAGE_LIMIT);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| utf16_len(p) <= MESSAGE_LIMIT));
        assert_eq!(parts.join(" "), text.trim_end());
    }
}

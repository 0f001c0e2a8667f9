//! Splitting text into messages with a limit from the input: parts rebuild
//! the text (less one whitespace character per soft cut) and fit the limit.
#![no_main]

use actorbot::telegram::split::{split_points, split_text, utf16_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes(*head)) % 5000 + 1;
    let text = String::from_utf8_lossy(rest);
    let parts = split_text(&text, limit);
    let points = split_points(&text, limit);
    assert_eq!(parts.len(), points.len());
    let mut end = 0;
    for (part, &(start, stop)) in parts.iter().zip(&points) {
        assert_eq!(part, &text[start..stop]);
        assert!(!part.is_empty());
        assert!(utf16_len(part) <= limit || part.chars().count() == 1);
        let gap = &text[end..start];
        assert!(
            gap.is_empty() || (gap.chars().count() == 1 && gap.chars().all(char::is_whitespace)),
            "lost {gap:?}"
        );
        end = stop;
    }
    assert_eq!(end, text.len());
});

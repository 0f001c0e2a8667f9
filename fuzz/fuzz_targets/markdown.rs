//! A model's Markdown turned into text and entities, split into messages.
//! Every entity must lie inside its text, in UTF-16 units, and be non-empty.
#![no_main]

use actorbot::telegram::format::{Formatted, markdown};
use actorbot::telegram::split::utf16_len;
use libfuzzer_sys::fuzz_target;

fn check(f: &Formatted, limit: usize) {
    let len = utf16_len(&f.text);
    // Only a character wider than the whole limit (an astral one at a limit
    // of 1) stands alone over it.
    assert!(
        len <= limit || f.text.chars().count() == 1,
        "{len} units over {limit}"
    );
    for span in &f.spans {
        assert!(span.length > 0, "empty entity {span:?}");
        assert!(
            span.offset + span.length <= len,
            "entity {span:?} past {len}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small limit too, so seams are exercised often.
    let (small, source) = match data.split_first() {
        Some((&b, rest)) => (usize::from(b % 64) + 1, rest),
        None => (1, data),
    };
    let source = String::from_utf8_lossy(source);
    let formatted = markdown(&source);
    check(&formatted, usize::MAX);
    for limit in [4096, small] {
        for part in formatted.split(limit) {
            check(&part, limit.max(1));
            let _ = part.entities();
        }
    }
    let _ = formatted.entities();
});

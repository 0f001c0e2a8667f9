//! Word wrap for PDF reports: no line wider than its width by the same font
//! metrics, unless it is one character wider than the whole line.
#![no_main]

use actorbot::pdf::font::font;
use actorbot::pdf::report::wrap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max_w = f32::from(u16::from_le_bytes([head[0], head[1]]) % 700) + 0.5;
    let size = 4.0 + f32::from(head[2] % 40);
    let font = font().expect("the embedded font parses");
    let text = font.sanitize(&String::from_utf8_lossy(rest));
    for source in text.split('\n') {
        let lines = wrap(font, source, size, max_w);
        assert!(!lines.is_empty());
        for line in &lines {
            let width = font.width(line, size);
            assert!(
                width <= max_w + 1e-3 || line.chars().count() == 1,
                "{line:?} is {width} wide, over {max_w}"
            );
        }
        assert_eq!(lines.concat().replace(' ', ""), source.replace(' ', ""));
    }
});

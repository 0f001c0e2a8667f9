//! Property tests of the pure text machinery: message splitting, Markdown
//! entities, PDF line wrapping and the server-sent event reader.
//!
//! Each property states an invariant the code promises for every input,
//! checked on generated text that mixes ASCII, Cyrillic, emoji (astral
//! characters, two UTF-16 units each), whitespace of several kinds and long
//! runs without spaces.

use actorbot::ai::client::EventReader;
use actorbot::pdf::font::font;
use actorbot::pdf::report::wrap;
use actorbot::telegram::format::{Formatted, markdown};
use actorbot::telegram::split::{MESSAGE_LIMIT, split_points, split_text, utf16_len};
use proptest::prelude::*;

/// Text with the characters that make splitting hard: multi-byte and astral
/// characters, several kinds of whitespace, and long words.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z]{1,12}",
        2 => "[а-я]{1,8}",
        2 => prop::sample::select(vec!["😀", "👍🏽", "🤖", "𝄞", "漢字", "é", "ß"]).prop_map(String::from),
        3 => prop::sample::select(vec![" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u{3000}", "\u{2028}", "\u{a0}"]).prop_map(String::from),
        1 => "x{20,200}",
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

/// Text made for the Markdown parser: markup characters among the words.
fn markdown_source() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => text(),
        3 => prop::sample::select(vec![
            "*", "**", "_", "__", "~~", "`", "```", "```rust\n", "\n```\n", "# ", "\n## ",
            "> ", "- ", "1. ", "\n\n", "[", "](", ")", "](https://example.org)", "](ftp://x)",
            "---\n", "<b>", "  \n", "\\", "[ ] ", "\n- [x] ",
        ])
        .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|pieces| pieces.concat())
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(MESSAGE_LIMIT), 2usize..64, 64usize..600]
}

/// The exact reconstruction `split_text` promises: parts come in order,
/// the first starts the text and the last ends it, and between two parts
/// lies either nothing (a cut inside a word) or exactly the one whitespace
/// character the cut fell on.
fn check_split(text: &str, limit: usize) -> Result<(), TestCaseError> {
    let points = split_points(text, limit);
    let parts = split_text(text, limit);
    prop_assert_eq!(parts.len(), points.len());
    for (part, &(start, end)) in parts.iter().zip(&points) {
        prop_assert_eq!(part.as_str(), &text[start..end]);
        prop_assert!(!part.is_empty(), "an empty part at {}", start);
        // Only a character wider than the whole limit (an astral one at a
        // limit of 1) may stand alone over it.
        prop_assert!(
            utf16_len(part) <= limit || part.chars().count() == 1,
            "part of {} units over {}: {:?}",
            utf16_len(part),
            limit,
            part
        );
    }
    if text.is_empty() {
        prop_assert!(parts.is_empty());
        return Ok(());
    }
    prop_assert_eq!(points.first().map(|p| p.0), Some(0));
    prop_assert_eq!(points.last().map(|p| p.1), Some(text.len()));
    let mut rebuilt = String::new();
    for (i, &(start, end)) in points.iter().enumerate() {
        if let Some(&(_, previous_end)) = i.checked_sub(1).and_then(|p| points.get(p)) {
            let gap = &text[previous_end..start];
            let mut chars = gap.chars();
            match (chars.next(), chars.next()) {
                (None, _) => {}
                (Some(c), None) => prop_assert!(c.is_whitespace(), "cut on {:?}", c),
                _ => prop_assert!(false, "more than one character lost: {:?}", gap),
            }
            rebuilt.push_str(gap);
        }
        rebuilt.push_str(&text[start..end]);
    }
    prop_assert_eq!(rebuilt, text);
    Ok(())
}

/// Every entity is non-empty and inside the text, in UTF-16 units, and
/// neither end falls inside a surrogate pair.
fn check_entities(f: &Formatted) -> Result<(), TestCaseError> {
    let units: Vec<u16> = f.text.encode_utf16().collect();
    for span in &f.spans {
        prop_assert!(span.length > 0, "empty entity {:?} in {:?}", span, f.text);
        prop_assert!(
            span.offset + span.length <= units.len(),
            "entity {:?} past the end ({} units) of {:?}",
            span,
            units.len(),
            f.text
        );
        let slice = &units[span.offset..span.offset + span.length];
        prop_assert!(
            String::from_utf16(slice).is_ok(),
            "entity {:?} cuts a character in {:?}",
            span,
            f.text
        );
    }
    Ok(())
}

/// Feeds `bytes` to a fresh reader cut at `cuts`, then ends the stream.
fn read_events(bytes: &[u8], cuts: &[usize]) -> (Vec<String>, bool) {
    let mut reader = EventReader::default();
    let mut events = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        events.extend(reader.push(&bytes[at..cut]));
        at = cut;
    }
    events.extend(reader.push(&bytes[at..]));
    events.extend(reader.finish());
    (events, reader.seen_any())
}

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let line_end = prop::sample::select(vec!["\n", "\r", "\r\n"]);
    let field = prop_oneof![
        4 => text().prop_map(|t| format!("data: {t}")),
        1 => text().prop_map(|t| format!("data:{t}")),
        1 => Just("data".to_string()),
        1 => Just(": ping".to_string()),
        1 => Just("event: message".to_string()),
        1 => Just("id: 7".to_string()),
        1 => Just(String::new()),
        1 => Just("data: [DONE]".to_string()),
    ];
    let line = (field, line_end).prop_map(|(f, end)| format!("{f}{end}").into_bytes());
    let chunk = prop_oneof![
        6 => line,
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(chunk, 0..40).prop_map(|chunks| chunks.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn split_text_rebuilds_the_text_within_the_limit(text in text(), limit in limit()) {
        check_split(&text, limit)?;
    }

    #[test]
    fn split_text_at_the_smallest_limits(text in text(), limit in 1usize..4) {
        check_split(&text, limit)?;
    }

    #[test]
    fn markdown_entities_lie_inside_the_text(source in markdown_source()) {
        check_entities(&markdown(&source))?;
    }

    #[test]
    fn markdown_parts_keep_entities_inside_and_fit(source in markdown_source(), limit in limit()) {
        let formatted = markdown(&source);
        let parts = formatted.split(limit);
        let limit = limit.min(MESSAGE_LIMIT);
        let mut kept = 0;
        for part in &parts {
            prop_assert!(utf16_len(&part.text) <= limit, "{} units over {}", utf16_len(&part.text), limit);
            check_entities(part)?;
            kept += part.text.chars().filter(|c| !c.is_whitespace()).count();
        }
        // Cuts only ever drop whitespace.
        prop_assert_eq!(kept, formatted.text.chars().filter(|c| !c.is_whitespace()).count());
    }

    #[test]
    fn wrapped_lines_fit_their_width(
        text in text(),
        size in prop::sample::select(vec![9.0f32, 10.5, 11.5, 20.0]),
        max_w in 1.0f32..600.0,
    ) {
        let font = font().expect("the embedded font parses");
        let sanitized = font.sanitize(&text);
        for source in sanitized.split('\n') {
            let lines = wrap(font, source, size, max_w);
            prop_assert!(!lines.is_empty());
            for line in &lines {
                let width = font.width(line, size);
                // A character wider than the whole line has a line to itself.
                prop_assert!(
                    width <= max_w + 1e-3 || line.chars().count() == 1,
                    "{:?} is {} wide, over {}",
                    line,
                    width,
                    max_w
                );
            }
            // Only spaces are dropped or added.
            let words = |s: &str| s.replace(' ', "");
            prop_assert_eq!(words(&lines.concat()), words(source));
        }
    }

    #[test]
    fn events_do_not_depend_on_where_the_stream_is_cut(
        stream in sse_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = read_events(&stream, &[]);
        let cut = read_events(&stream, &cuts);
        prop_assert_eq!(&cut, &whole);
        // Byte by byte, too: every CR/LF pair and every UTF-8 sequence split.
        let every: Vec<usize> = (0..=stream.len()).collect();
        prop_assert_eq!(read_events(&stream, &every), whole);
    }
}

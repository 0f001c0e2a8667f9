//! A server-sent event stream pushed in chunks of sizes taken from the
//! input, then ended: the events must be those of the stream pushed whole.
#![no_main]

use actorbot::ai::client::EventReader;
use libfuzzer_sys::fuzz_target;

fn read(stream: &[u8], sizes: &[u8]) -> (Vec<String>, bool) {
    let mut reader = EventReader::default();
    let mut events = Vec::new();
    let mut rest = stream;
    for &size in sizes
        .iter()
        .cycle()
        .take(if sizes.is_empty() { 0 } else { stream.len() })
    {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(usize::from(size % 17).min(rest.len()));
        events.extend(reader.push(chunk));
        rest = tail;
    }
    events.extend(reader.push(rest));
    events.extend(reader.finish());
    (events, reader.seen_any())
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the next bytes are chunk sizes.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(n % 8).min(rest.len()));
    assert_eq!(read(stream, sizes), read(stream, &[]));
});

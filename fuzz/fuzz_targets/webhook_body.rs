//! A webhook body exactly as the route reads it: bytes, UTF-8, an update.
#![no_main]

use actorbot::telegram::update::RawUpdate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Some(update) = RawUpdate::from_json(text) {
        let _ = update.update_id;
        let _ = update.chat_id();
        let _ = update.kind();
        let _ = update.parse();
    }
});

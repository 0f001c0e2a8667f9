//! An update's JSON text as Telegram (or anyone reaching the webhook) might
//! send it: reading its header, chat and kind, then its typed content.
#![no_main]

use actorbot::telegram::update::RawUpdate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(update) = RawUpdate::from_json(&text) {
        let _ = update.chat_id();
        let _ = update.kind();
        let _ = update.parse();
    }
});

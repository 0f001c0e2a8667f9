//! A photo's bytes as a user sends them: the header probe, then the whole
//! pipeline under small limits so that decoding stays cheap.
#![no_main]

use actorbot::images::process::{ImageLimits, probe_dimensions, process};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = probe_dimensions(data);
    let limits = ImageLimits {
        max_bytes: 64 * 1024,
        max_pixels: 256 * 256,
        target_width: 32,
        target_height: 48,
        jpeg_quality: 60,
    };
    if let Ok(image) = process(data, &limits) {
        assert!(image.width <= 48 && image.height <= 48);
        assert!(image.jpeg.starts_with(&[0xFF, 0xD8]));
    }
});

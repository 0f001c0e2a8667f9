//! Writes the 12-megapixel JPEG of actorbot's documents benchmark
//! (`tests/bench/documents.rs`, `twelve_megapixels`) to the path given, so
//! that Pillow in `bench/compare.sh` processes the very bytes actorbot's
//! benchmark does: the same generator, the same `image` encoder at the same
//! quality. It measures nothing itself.

use std::io::Cursor;

fn main() {
    let path = std::env::args().nth(1).expect("usage: peer-inputs OUT.jpg");
    let jpeg = twelve_megapixels();
    std::fs::write(&path, &jpeg).expect("writes the photo");
    println!("photo: 4000 × 3000 JPEG, {} bytes, in {path}", jpeg.len());
}

/// A 4000 × 3000 photo-like JPEG: gradients with noise, so that it does
/// not compress to nothing. As in the documents benchmark.
fn twelve_megapixels() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let image = image::RgbImage::from_fn(4000, 3000, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 32) as u32;
        image::Rgb([
            ((x * 255 / 4000 + noise) % 256) as u8,
            ((y * 255 / 3000 + noise) % 256) as u8,
            (((x + y) * 255 / 7000 + noise) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&image)
        .expect("encodes");
    out.into_inner()
}

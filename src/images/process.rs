//! Turns a photo a Telegram user sent into a page-ready JPEG.
//!
//! Photos arrive as arbitrary user bytes: phone JPEGs with an EXIF rotation
//! flag, screenshots as PNG with transparency, truncated downloads, or files
//! crafted to claim enormous dimensions. [`process`] vets them cheaply first
//! (byte size, then the pixel count read from the header alone), then decodes,
//! applies the EXIF orientation, scales down to fit a page, flattens to RGB and
//! re-encodes as JPEG.
//!
//! It is a pure, blocking, CPU-bound function: the image worker pool calls it on
//! its worker threads, and the album PDF embeds the resulting JPEG as-is, so the
//! output is always baseline RGB8 JPEG no larger than the page box.

use std::fmt;
use std::io::Cursor;

use fast_image_resize::{self as fir, FilterType, PixelType, ResizeAlg, ResizeOptions};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Bounds applied to every incoming photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted input, checked before anything is parsed.
    pub max_bytes: usize,
    /// Largest accepted `width * height`, checked from the header before decoding.
    pub max_pixels: u64,
    /// The output fits within `target_width` x `target_height`; never upscaled.
    pub target_width: u32,
    pub target_height: u32,
    /// JPEG quality of the output, 1..=100 (out-of-range values are clamped).
    pub jpeg_quality: u8,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            // Telegram's Bot API getFile refuses anything larger, so more can't arrive.
            max_bytes: 20 * 1024 * 1024,
            // Generous for any phone camera; a 50 MP RGB8 decode is ~150 MB.
            max_pixels: 50_000_000,
            // A4 at 150 dpi: sharp enough in print, small enough for a many-page PDF.
            target_width: 1240,
            target_height: 1754,
            jpeg_quality: 85,
        }
    }
}

/// A photo ready to be placed on an album page.
#[derive(Clone, PartialEq, Eq)]
pub struct ProcessedImage {
    /// Baseline RGB8 JPEG.
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Format the input was in: `"jpeg"` or `"png"`.
    pub source_format: &'static str,
    /// Whether a non-identity EXIF orientation was applied.
    pub rotated: bool,
}

// The derived Debug would print megabytes of JPEG bytes into the log.
impl fmt::Debug for ProcessedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessedImage")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .field("source_format", &self.source_format)
            .field("rotated", &self.rotated)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image is {bytes} bytes, more than the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("image is {width}x{height} pixels, more than the {max} allowed")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("unsupported image format (only JPEG and PNG are accepted)")]
    UnsupportedFormat,
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("could not scale the image")]
    Resize(#[source] fir::ResizeError),
    #[error("could not encode JPEG")]
    Encode(#[source] EncodeError),
}

/// Why the page JPEG could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{0}")]
    Size(String),
    #[error(transparent)]
    Jpeg(jpeg_encoder::EncodingError),
}

/// Largest bytes per decoded pixel among the enabled formats (16-bit RGBA PNG).
const MAX_BYTES_PER_PIXEL: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
}

impl Kind {
    fn sniff(bytes: &[u8]) -> Option<Self> {
        const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(PNG_SIGNATURE) {
            Some(Self::Png)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
        }
    }
}

/// Reads width, height and format name from the header alone, allocating nothing.
pub fn probe_dimensions(bytes: &[u8]) -> Result<(u32, u32, &'static str), ImageError> {
    let kind = Kind::sniff(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let (width, height) = header_dimensions(bytes, kind)?;
    Ok((width, height, kind.name()))
}

/// Vets, decodes, orients, scales, flattens and re-encodes one photo.
pub fn process(bytes: &[u8], limits: &ImageLimits) -> Result<ProcessedImage, ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let kind = Kind::sniff(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let (width, height) = header_dimensions(bytes, kind)?;
    check_pixels(width, height, limits.max_pixels)?;
    if kind == Kind::Jpeg {
        // The JPEG decoder runs in lenient mode and fills missing data with grey,
        // so a half-downloaded photo would otherwise pass as a valid one.
        scan_jpeg(bytes, JpegScan::WholeFile)?;
    }

    let (image, orientation) = decode(bytes, kind, width, height, limits)?;
    let rgb = flatten_to_rgb8(image);
    let resized = resize_for_page(rgb, orientation, limits)?;
    let (upright, rotated) = orient(resized, orientation);
    let jpeg = encode_jpeg(&upright, limits.jpeg_quality)?;
    Ok(ProcessedImage {
        jpeg,
        width: upright.width(),
        height: upright.height(),
        source_format: kind.name(),
        rotated,
    })
}

fn header_dimensions(bytes: &[u8], kind: Kind) -> Result<(u32, u32), ImageError> {
    match kind {
        Kind::Jpeg => scan_jpeg(bytes, JpegScan::FrameHeader),
        Kind::Png => png_header(bytes),
    }
}

fn check_pixels(width: u32, height: u32, max: u64) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > max {
        return Err(ImageError::TooManyPixels { width, height, max });
    }
    Ok(())
}

fn decode(
    bytes: &[u8],
    kind: Kind,
    width: u32,
    height: u32,
    limits: &ImageLimits,
) -> Result<(DynamicImage, Orientation), ImageError> {
    let too_many = || ImageError::TooManyPixels {
        width,
        height,
        max: limits.max_pixels,
    };
    // Second line of defence behind the header check: should the decoder read
    // the header differently than `probe_dimensions`, it still refuses to
    // allocate more than an image of `max_pixels` needs.
    let mut decoder_limits = Limits::default();
    let max_side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    decoder_limits.max_image_width = Some(max_side);
    decoder_limits.max_image_height = Some(max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));

    let mut reader = ImageReader::with_format(Cursor::new(bytes), kind.image_format());
    reader.limits(decoder_limits.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(e, kind, &too_many))?;

    let (w, h) = decoder.dimensions();
    if (w, h) != (width, height) {
        log::warn!("{kind:?} header says {width}x{height}, decoder says {w}x{h}");
        check_pixels(w, h, limits.max_pixels)?;
    }
    // `into_decoder` leaves the output buffer out of the allocation budget.
    decoder_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| from_image_error(e, kind, &too_many))?;

    // A mangled EXIF block should not cost the user their photo: keep it as stored.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        log::debug!("ignoring unreadable EXIF orientation: {e}");
        Orientation::NoTransforms
    });
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| from_image_error(e, kind, &too_many))?;
    Ok((image, orientation))
}

fn from_image_error(
    e: image::ImageError,
    kind: Kind,
    too_many: &dyn Fn() -> ImageError,
) -> ImageError {
    use image::ImageError as E;
    match e {
        E::Limits(_) => too_many(),
        E::Unsupported(e) => {
            log::debug!("{kind:?} decoder refused image: {e}");
            ImageError::UnsupportedFormat
        }
        E::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt(format!("{} data ends too early", kind.label()))
        }
        // Decoder messages (checksums, chunk names) mean nothing to the user who
        // reads the reason in a chat reply; keep them for the log.
        other => {
            log::debug!("{kind:?} decode failed: {other}");
            ImageError::Corrupt(format!("{} data is damaged", kind.label()))
        }
    }
}

/// Composites any alpha over white, as the photo will sit on a white page.
fn flatten_to_rgb8(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, px) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = px.0;
        let a = u32::from(a);
        let over_white = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        out.0 = [over_white(r), over_white(g), over_white(b)];
    }
    rgb
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Scales before rotating, as rotating the page-sized result is several times
/// cheaper than rotating the full photo; the box is turned to match instead.
fn resize_for_page(
    rgb: RgbImage,
    orientation: Orientation,
    limits: &ImageLimits,
) -> Result<RgbImage, ImageError> {
    let (box_w, box_h) = if swaps_axes(orientation) {
        (limits.target_height, limits.target_width)
    } else {
        (limits.target_width, limits.target_height)
    };
    let (w, h) = rgb.dimensions();
    let (new_w, new_h) = fit_within(w, h, box_w, box_h);
    if (new_w, new_h) == (w, h) {
        return Ok(rgb);
    }
    scale_rgb(rgb, new_w, new_h, RESIZE_FILTER)
}

/// The filter the page scaling uses. A triangle whose support widens with the
/// reduction: every source pixel counts (no aliasing at the ~3x reductions
/// phone photos need), and it keeps more detail than plain area averaging at
/// the same cost; the SIMD resizer does it in about an eighth of the time
/// `image::imageops::thumbnail` takes for area averaging.
const RESIZE_FILTER: FilterType = FilterType::Bilinear;

fn scale_rgb(
    rgb: RgbImage,
    new_w: u32,
    new_h: u32,
    filter: FilterType,
) -> Result<RgbImage, ImageError> {
    let (w, h) = rgb.dimensions();
    let src = fir::images::Image::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3)
        .map_err(|_| buffer_mismatch("decoded image"))?;
    let mut dst = fir::images::Image::new(new_w, new_h, PixelType::U8x3);
    fir::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)),
        )
        .map_err(ImageError::Resize)?;
    // The buffer holds exactly `new_w * new_h` RGB pixels, as `new` made it.
    RgbImage::from_raw(new_w, new_h, dst.into_vec()).ok_or_else(|| buffer_mismatch("resized image"))
}

/// A pixel buffer whose length does not match its dimensions: a bug, not
/// bad input, but reported rather than panicking on a worker thread.
fn buffer_mismatch(what: &str) -> ImageError {
    ImageError::Encode(EncodeError::Size(format!(
        "the {what}'s buffer does not match its dimensions"
    )))
}

/// Largest size with the same aspect ratio that fits the box, never larger than
/// the original and never collapsing a side to zero.
fn fit_within(width: u32, height: u32, box_w: u32, box_h: u32) -> (u32, u32) {
    let box_w = box_w.max(1);
    let box_h = box_h.max(1);
    if width <= box_w && height <= box_h {
        return (width, height);
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let (bw, bh) = (u64::from(box_w), u64::from(box_h));
    // Rounded integer ratios; the results are bounded by the box, so they fit u32.
    if w * bh >= h * bw {
        let new_h = ((h * bw * 2 + w) / (w * 2)).clamp(1, bh);
        (box_w, new_h as u32)
    } else {
        let new_w = ((w * bh * 2 + h) / (h * 2)).clamp(1, bw);
        (new_w as u32, box_h)
    }
}

fn orient(rgb: RgbImage, orientation: Orientation) -> (RgbImage, bool) {
    if orientation == Orientation::NoTransforms {
        return (rgb, false);
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    (image.into_rgb8(), true)
}

fn encode_jpeg(rgb: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (w, h) = rgb.dimensions();
    let too_wide = || {
        ImageError::Encode(EncodeError::Size(format!(
            "{w}x{h} is beyond JPEG's 65535 pixels a side"
        )))
    };
    let width = u16::try_from(w).map_err(|_| too_wide())?;
    let height = u16::try_from(h).map_err(|_| too_wide())?;
    // Page-sized photos compress to well under a byte per pixel at these qualities.
    let mut out = Vec::with_capacity(rgb.as_raw().len() / 4);
    // 4:2:0 chroma below quality 90, as libjpeg does by default.
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    encoder
        .encode(rgb.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| ImageError::Encode(EncodeError::Jpeg(e)))?;
    Ok(out)
}

fn png_header(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    // The PNG spec requires IHDR to be the first chunk, right after the signature.
    let ihdr = bytes
        .get(8..24)
        .ok_or_else(|| ImageError::Corrupt("PNG ends inside its header".into()))?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(ImageError::Corrupt("PNG does not start with IHDR".into()));
    }
    let width = be_u32(&ihdr[8..12]);
    let height = be_u32(&ihdr[12..16]);
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("PNG has a zero dimension".into()));
    }
    Ok((width, height))
}

fn be_u32(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &x| (acc << 8) | u32::from(x))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JpegScan {
    /// Stop at the frame header: enough for the dimensions.
    FrameHeader,
    /// Walk every segment and scan to EOI: proves the file is not truncated.
    WholeFile,
}

/// Walks the JPEG marker structure without decoding anything and returns the
/// frame dimensions. Segments are skipped by their length, so EXIF thumbnails
/// (which are complete JPEGs inside APP1) are never mistaken for the frame.
fn scan_jpeg(bytes: &[u8], scan: JpegScan) -> Result<(u32, u32), ImageError> {
    let corrupt = |reason: &str| ImageError::Corrupt(reason.into());
    let truncated = || corrupt("JPEG data ends too early (truncated download?)");

    let mut frame: Option<(u32, u32)> = None;
    let mut pos = 2; // past SOI, which `Kind::sniff` checked
    loop {
        if *bytes.get(pos).ok_or_else(truncated)? != 0xFF {
            return Err(corrupt("JPEG marker expected"));
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        match marker {
            0xD9 => {
                // EOI
                return frame.ok_or_else(|| corrupt("JPEG has no frame header"));
            }
            // Standalone markers: TEM, RSTn, and a stray SOI some encoders repeat.
            0x01 | 0xD0..=0xD8 => continue,
            0x00 => return Err(corrupt("JPEG marker expected")),
            _ => {}
        }
        let len_bytes = bytes.get(pos..pos + 2).ok_or_else(truncated)?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(corrupt("JPEG segment length is invalid"));
        }
        let segment = bytes.get(pos + 2..pos + len).ok_or_else(truncated)?;
        pos += len;

        if is_start_of_frame(marker) {
            if frame.is_some() {
                // A second frame in one file (hierarchical JPEG) isn't supported.
                return Err(corrupt("JPEG has more than one frame header"));
            }
            let header = segment
                .get(..5)
                .ok_or_else(|| corrupt("JPEG frame header is too short"))?;
            let height = u32::from(u16::from_be_bytes([header[1], header[2]]));
            let width = u32::from(u16::from_be_bytes([header[3], header[4]]));
            if width == 0 || height == 0 {
                return Err(corrupt("JPEG frame has a zero dimension"));
            }
            if scan == JpegScan::FrameHeader {
                return Ok((width, height));
            }
            frame = Some((width, height));
        } else if marker == 0xDA {
            // SOS
            if frame.is_none() {
                return Err(corrupt("JPEG scan comes before its frame header"));
            }
            pos = skip_entropy_coded(bytes, pos).ok_or_else(truncated)?;
        }
    }
}

fn is_start_of_frame(marker: u8) -> bool {
    // 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Returns the offset of the first real marker after scan data starting at
/// `pos`. In entropy-coded data a 0xFF is always followed by a stuffed 0x00 or
/// a restart marker, so any other pairing ends the scan.
fn skip_entropy_coded(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos += bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(pos + 1)? {
            0x00 | 0xD0..=0xD7 => pos += 2,
            // Fill bytes before a marker: the marker loop skips them.
            _ => return Some(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageEncoder, Rgb, Rgba, RgbaImage, codecs::png::PngEncoder};
    use std::time::{Duration, Instant};

    fn encode_test_jpeg(rgb: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(rgb)
            .unwrap();
        out
    }

    fn encode_test_png(rgba: &RgbaImage) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(
                rgba.as_raw(),
                rgba.width(),
                rgba.height(),
                image::ExtendedColorType::Rgba8,
            )
            .unwrap();
        out
    }

    /// A minimal big-endian TIFF structure holding one IFD0 entry:
    /// Orientation (0x0112), SHORT, count 1.
    fn exif_app1(orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\x00\x2A");
        tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padded to 4 bytes
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no IFD1

        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        segment.extend_from_slice(&payload);
        segment
    }

    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&exif_app1(orientation));
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        chunk
    }

    /// Signature plus a valid IHDR claiming the given size; no pixel data at all.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no interlace
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&png_chunk(b"IHDR", &ihdr));
        png.extend_from_slice(&png_chunk(b"IEND", &[]));
        png
    }

    /// Deterministic noise so fixtures don't compress to nothing.
    struct Lcg(u32);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 24) as u8
        }
    }

    fn photo_like(width: u32, height: u32) -> RgbImage {
        let mut rng = Lcg(7);
        RgbImage::from_fn(width, height, |x, y| {
            let noise = i32::from(rng.next() % 32) - 16;
            let gx = (x * 200 / width) as i32;
            let gy = (y * 200 / height) as i32;
            let c = |v: i32| (v + noise).clamp(0, 255) as u8;
            Rgb([c(gx + 30), c(gy + 30), c(230 - (gx + gy) / 2)])
        })
    }

    fn close_to(px: Rgb<u8>, want: [u8; 3]) -> bool {
        px.0.iter().zip(want).all(|(&a, b)| a.abs_diff(b) <= 40)
    }

    #[test]
    fn exif_orientation_6_rotates_clockwise() {
        // 64x48 grey with a red block in the top-left corner.
        let src = RgbImage::from_fn(64, 48, |x, y| {
            if x < 16 && y < 16 {
                Rgb([255, 0, 0])
            } else {
                Rgb([128, 128, 128])
            }
        });
        let jpeg = with_exif_orientation(&encode_test_jpeg(&src, 95), 6);
        assert_eq!(probe_dimensions(&jpeg).unwrap(), (64, 48, "jpeg"));

        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert!(out.rotated);
        assert_eq!(out.source_format, "jpeg");
        assert_eq!((out.width, out.height), (48, 64));

        let decoded = image::load_from_memory(&out.jpeg).unwrap().into_rgb8();
        assert_eq!(decoded.dimensions(), (48, 64));
        // A clockwise quarter turn carries the top-left corner to the top-right.
        assert!(close_to(*decoded.get_pixel(47 - 4, 4), [255, 0, 0]));
        assert!(close_to(*decoded.get_pixel(4, 4), [128, 128, 128]));
        assert!(close_to(
            *decoded.get_pixel(47 - 4, 63 - 4),
            [128, 128, 128]
        ));
    }

    #[test]
    fn plain_jpeg_is_not_rotated() {
        let jpeg = encode_test_jpeg(&photo_like(64, 48), 90);
        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert!(!out.rotated);
        assert_eq!((out.width, out.height), (64, 48));
    }

    #[test]
    fn png_alpha_is_flattened_over_white() {
        let src = RgbaImage::from_fn(8, 8, |x, _| match x {
            0..=2 => Rgba([0, 0, 255, 255]), // opaque blue
            3..=5 => Rgba([255, 0, 0, 0]),   // fully transparent red
            _ => Rgba([0, 0, 0, 128]),       // half-transparent black
        });
        let png = encode_test_png(&src);
        assert_eq!(probe_dimensions(&png).unwrap(), (8, 8, "png"));

        let out = process(&png, &ImageLimits::default()).unwrap();
        assert_eq!(out.source_format, "png");
        assert!(!out.rotated);
        let decoded = image::load_from_memory(&out.jpeg).unwrap();
        assert_eq!(decoded.color(), image::ColorType::Rgb8);
        let decoded = decoded.into_rgb8();
        assert!(close_to(*decoded.get_pixel(1, 4), [0, 0, 255]));
        assert!(close_to(*decoded.get_pixel(4, 4), [255, 255, 255]));
        assert!(close_to(*decoded.get_pixel(7, 4), [127, 127, 127]));
    }

    #[test]
    fn flatten_blends_exactly() {
        let src = RgbaImage::from_fn(3, 1, |x, _| match x {
            0 => Rgba([10, 20, 30, 255]),
            1 => Rgba([10, 20, 30, 0]),
            _ => Rgba([0, 0, 0, 128]),
        });
        let rgb = flatten_to_rgb8(DynamicImage::ImageRgba8(src));
        assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let jpeg = encode_test_jpeg(&photo_like(320, 240), 90);
        let half = &jpeg[..jpeg.len() / 2];
        match process(half, &ImageLimits::default()) {
            Err(ImageError::Corrupt(reason)) => {
                assert!(!reason.is_empty() && reason.len() < 200, "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Missing only the EOI marker still counts as truncated.
        let no_eoi = &jpeg[..jpeg.len() - 2];
        assert!(matches!(
            process(no_eoi, &ImageLimits::default()),
            Err(ImageError::Corrupt(_))
        ));
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let png = encode_test_png(&RgbaImage::from_fn(64, 64, |x, y| {
            Rgba([(x * 4) as u8, (y * 4) as u8, (x ^ y) as u8, 255])
        }));
        for cut in [png.len() / 2, 30, 20] {
            match process(&png[..cut], &ImageLimits::default()) {
                Err(ImageError::Corrupt(reason)) => assert!(!reason.is_empty()),
                other => panic!("cut at {cut}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let mut rng = Lcg(42);
        let noise: Vec<u8> = (0..4096).map(|_| rng.next()).collect();
        assert!(matches!(
            process(&noise, &ImageLimits::default()),
            Err(ImageError::UnsupportedFormat)
        ));
        assert!(matches!(
            process(&[], &ImageLimits::default()),
            Err(ImageError::UnsupportedFormat)
        ));
        assert!(matches!(
            process(b"GIF89a\x01\x00\x01\x00", &ImageLimits::default()),
            Err(ImageError::UnsupportedFormat)
        ));

        // Right magic, garbage after it.
        for magic in [&[0xFF, 0xD8, 0xFF][..], b"\x89PNG\r\n\x1a\n"] {
            for len in [0, 1, 5, 100, 4000] {
                let mut bytes = magic.to_vec();
                bytes.extend_from_slice(&noise[..len]);
                assert!(
                    matches!(
                        process(&bytes, &ImageLimits::default()),
                        Err(ImageError::Corrupt(_))
                    ),
                    "magic {magic:?} + {len} noise bytes"
                );
            }
        }

        // Every prefix of a real JPEG must fail cleanly, never panic.
        let jpeg = with_exif_orientation(&encode_test_jpeg(&photo_like(40, 30), 80), 6);
        for cut in 0..jpeg.len() - 1 {
            assert!(process(&jpeg[..cut], &ImageLimits::default()).is_err());
        }
    }

    #[test]
    fn huge_png_header_is_refused_before_decoding() {
        let png = png_header_only(30_000, 30_000);
        assert_eq!(probe_dimensions(&png).unwrap(), (30_000, 30_000, "png"));
        let started = Instant::now();
        match process(&png, &ImageLimits::default()) {
            Err(ImageError::TooManyPixels { width, height, max }) => {
                assert_eq!((width, height, max), (30_000, 30_000, 50_000_000));
            }
            other => panic!("expected TooManyPixels, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn huge_jpeg_header_is_refused_before_decoding() {
        // SOI, then a baseline frame header claiming 30000x30000, 3 components.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 17, 8];
        jpeg.extend_from_slice(&30_000u16.to_be_bytes());
        jpeg.extend_from_slice(&30_000u16.to_be_bytes());
        jpeg.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
        assert_eq!(probe_dimensions(&jpeg).unwrap(), (30_000, 30_000, "jpeg"));
        assert!(matches!(
            process(&jpeg, &ImageLimits::default()),
            Err(ImageError::TooManyPixels {
                width: 30_000,
                height: 30_000,
                ..
            })
        ));
    }

    #[test]
    fn decoder_dimensions_are_checked_again() {
        let png = encode_test_png(&RgbaImage::new(100, 100));
        let limits = ImageLimits {
            max_pixels: 9_999,
            ..ImageLimits::default()
        };
        assert!(matches!(
            process(&png, &limits),
            Err(ImageError::TooManyPixels { .. })
        ));
        // Call the decode step directly as if the header parse had been fooled.
        assert!(matches!(
            decode(&png, Kind::Png, 10, 10, &limits),
            Err(ImageError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn oversized_input_is_refused_first() {
        let limits = ImageLimits {
            max_bytes: 1000,
            ..ImageLimits::default()
        };
        // Garbage, so only the size check can explain the error.
        let bytes = vec![0u8; 1001];
        assert!(matches!(
            process(&bytes, &limits),
            Err(ImageError::TooLarge {
                bytes: 1001,
                max: 1000
            })
        ));
        assert!(matches!(
            process(&bytes[..1000], &limits),
            Err(ImageError::UnsupportedFormat)
        ));
    }

    #[test]
    fn large_image_is_scaled_to_fit() {
        let jpeg = encode_test_jpeg(&photo_like(3000, 1000), 80);
        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (1240, 413));
        let decoded = image::load_from_memory(&out.jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (1240, 413));

        let tall = encode_test_jpeg(&photo_like(1000, 3000), 80);
        let out = process(&tall, &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (585, 1754));
    }

    #[test]
    fn rotated_photo_fits_the_page_after_rotation() {
        // Landscape sensor data that is portrait once the EXIF turn is applied.
        let jpeg = with_exif_orientation(&encode_test_jpeg(&photo_like(2000, 1500), 80), 6);
        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert!(out.rotated);
        assert_eq!((out.width, out.height), (1240, 1653));
    }

    #[test]
    fn small_image_is_not_upscaled() {
        let png = encode_test_png(&RgbaImage::from_pixel(100, 80, Rgba([1, 2, 3, 255])));
        let out = process(&png, &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (100, 80));
    }

    #[test]
    fn fit_within_keeps_aspect_and_never_upscales() {
        assert_eq!(fit_within(100, 80, 1240, 1754), (100, 80));
        assert_eq!(fit_within(1240, 1754, 1240, 1754), (1240, 1754));
        assert_eq!(fit_within(4000, 3000, 1240, 1754), (1240, 930));
        assert_eq!(fit_within(3000, 4000, 1240, 1754), (1240, 1653));
        assert_eq!(fit_within(1000, 4000, 1240, 1754), (439, 1754));
        assert_eq!(fit_within(50_000, 1, 1240, 1754), (1240, 1));
        assert_eq!(fit_within(1, 50_000, 1240, 1754), (1, 1754));
        assert_eq!(fit_within(10, 10, 0, 0), (1, 1));
    }

    #[test]
    fn exif_thumbnail_is_not_taken_for_the_frame() {
        // An APP1 segment whose payload happens to contain a complete tiny JPEG.
        let thumb = encode_test_jpeg(&photo_like(8, 8), 50);
        let main = encode_test_jpeg(&photo_like(64, 48), 80);
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&thumb);
        let mut jpeg = main[..2].to_vec();
        jpeg.extend_from_slice(&[0xFF, 0xE1]);
        jpeg.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        jpeg.extend_from_slice(&payload);
        jpeg.extend_from_slice(&main[2..]);
        assert_eq!(probe_dimensions(&jpeg).unwrap(), (64, 48, "jpeg"));
        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (64, 48));
    }

    #[test]
    fn trailing_data_after_eoi_is_accepted() {
        let mut jpeg = encode_test_jpeg(&photo_like(64, 48), 80);
        jpeg.extend_from_slice(b"camera maker trailer");
        let out = process(&jpeg, &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (64, 48));
    }

    /// Peak signal-to-noise ratio of `b` against `a`, in dB.
    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: f64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        let mse = sum / a.as_raw().len() as f64;
        10.0 * (255.0 * 255.0 / mse).log10()
    }

    fn decode_jpeg(bytes: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(bytes, ImageFormat::Jpeg)
            .unwrap()
            .into_rgb8()
    }

    /// The page image is as close to a careful reference (Lanczos3 on the full
    /// decode) as the JPEG round trip allows: scaling costs little beyond it.
    #[test]
    fn scaled_photo_stays_close_to_a_lanczos_reference() {
        let src = photo_like(1600, 1200);
        let jpeg = encode_test_jpeg(&src, 95);
        let limits = ImageLimits {
            target_width: 400,
            target_height: 400,
            ..ImageLimits::default()
        };
        let out = process(&jpeg, &limits).unwrap();
        assert_eq!((out.width, out.height), (400, 300));
        let reference = scale_rgb(decode_jpeg(&jpeg), 400, 300, FilterType::Lanczos3).unwrap();
        let ours = decode_jpeg(&out.jpeg);
        let db = psnr(&reference, &ours);
        assert!(db > 30.0, "PSNR {db:.1} dB against the Lanczos3 reference");
    }

    /// Throughput on a 12 MP phone-sized photo, and each filter's PSNR against
    /// Lanczos3 on the full decode. Run with
    /// `cargo test --release -- --ignored --nocapture bench_12mp`.
    #[test]
    #[ignore = "benchmark; run in release"]
    fn bench_12mp() {
        let src = photo_like(4000, 3000);
        let jpeg = encode_test_jpeg(&src, 90);
        let limits = ImageLimits::default();
        println!("input: 4000x3000 JPEG, {} bytes", jpeg.len());
        const RUNS: u32 = 5;
        let (w, h) = fit_within(4000, 3000, limits.target_width, limits.target_height);
        let full = decode_jpeg(&jpeg);
        let reference = scale_rgb(full.clone(), w, h, FilterType::Lanczos3).unwrap();

        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(RUNS);
        let t = Instant::now();
        for _ in 0..RUNS {
            scan_jpeg(&jpeg, JpegScan::WholeFile).unwrap();
            let (image, _) = decode(&jpeg, Kind::Jpeg, 4000, 3000, &limits).unwrap();
            assert_eq!(flatten_to_rgb8(image).width(), 4000);
        }
        println!("decode {:.1} ms", ms(t.elapsed()));
        for (name, filter) in [
            ("Box", FilterType::Box),
            ("Bilinear", FilterType::Bilinear),
            ("CatmullRom", FilterType::CatmullRom),
            ("Lanczos3", FilterType::Lanczos3),
        ] {
            let t = Instant::now();
            let mut small = None;
            for _ in 0..RUNS {
                small = Some(scale_rgb(full.clone(), w, h, filter).unwrap());
            }
            let small = small.unwrap();
            let resize_t = t.elapsed();
            let t = Instant::now();
            let mut out = Vec::new();
            for _ in 0..RUNS {
                out = encode_jpeg(&small, limits.jpeg_quality).unwrap();
            }
            let encode_t = t.elapsed();
            println!(
                "{name}: resize {:.1} ms (with a 36 MB copy), encode {:.1} ms, {} bytes, PSNR {:.2} dB scaled, {:.2} dB after JPEG",
                ms(resize_t),
                ms(encode_t),
                out.len(),
                psnr(&reference, &small),
                psnr(&reference, &decode_jpeg(&out)),
            );
        }

        let t = Instant::now();
        let mut out = None;
        for _ in 0..RUNS {
            out = Some(process(&jpeg, &limits).unwrap());
        }
        let out = out.unwrap();
        println!(
            "process() end to end: {:.1} ms = {:.2} photos/s per core, {}x{}, {} bytes",
            ms(t.elapsed()),
            f64::from(RUNS) / t.elapsed().as_secs_f64(),
            out.width,
            out.height,
            out.jpeg.len()
        );
    }
}

//! Packs photos the bot has already processed into one PDF, a photo per A4
//! page, so a user gets a single document instead of a stack of messages.
//!
//! The JPEG bytes go into the file untouched as `DCTDecode` image streams:
//! no decoding, no re-compression, no quality loss, and printpdf's `images`
//! feature is not needed. Only the JPEG header is read, for the pixel size
//! and colour model the PDF image dictionary must state.

use std::collections::BTreeMap;

use printpdf::{
    CurTransMat, DictItem, ExternalStream, ExternalXObject, Mm, Op, PdfDocument, PdfFontHandle,
    PdfPage, PdfSaveOptions, Pt, Px, TextItem, TextMatrix, XObjectTransform,
};

use super::font::{PdfError, font};
use super::report::{RenderedPdf, save};
use super::{PAGE_H, PAGE_W};

/// One photo: upright, scaled and re-encoded as JPEG by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlbumPage {
    /// Caption under the photo.
    pub name: String,
    pub jpeg: Vec<u8>,
    /// Pixel size as the caller knows it; the JPEG header is authoritative.
    pub width: u32,
    pub height: u32,
}

const MARGIN: f32 = 36.0;
/// The photo sits above this line; the caption below it.
const PHOTO_BOTTOM: f32 = 56.0;
const CAPTION_BASELINE: f32 = 34.0;
const CAPTION_SIZE: f32 = 9.0;

/// What the PDF image dictionary needs from a JPEG header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegInfo {
    width: u16,
    height: u16,
    components: u8,
}

/// Renders one page per photo, in order.
pub fn render_album(pages: &[AlbumPage]) -> Result<RenderedPdf, PdfError> {
    if pages.is_empty() {
        return Err(PdfError::EmptyInput("no photos for the album"));
    }
    let font = font()?;
    let captions: Vec<String> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = font.sanitize(p.name.trim()).replace('\n', " ");
            let name = if name.trim().is_empty() {
                format!("Photo {}", i + 1)
            } else {
                name
            };
            fit_caption(&name)
        })
        .collect::<Result<_, _>>()?;

    let mut doc = PdfDocument::new("Photo album");
    let font_id = doc.add_font(&font.for_document(captions.iter().flat_map(|c| c.chars())));
    let handle = PdfFontHandle::External(font_id);

    let mut pdf_pages = Vec::with_capacity(pages.len());
    for (page, caption) in pages.iter().zip(captions) {
        let info = jpeg_info(&page.jpeg).map_err(|reason| PdfError::Image {
            name: page.name.clone(),
            reason,
        })?;
        if (u32::from(info.width), u32::from(info.height)) != (page.width, page.height) {
            log::debug!(
                "photo {:?}: stated {}x{}, JPEG says {}x{}",
                page.name,
                page.width,
                page.height,
                info.width,
                info.height
            );
        }
        let id = doc.add_xobject(&image_xobject(&page.jpeg, info));

        let [x, y, draw_w, draw_h] = place(f32::from(info.width), f32::from(info.height));

        let caption_x = (PAGE_W - font.width(&caption, CAPTION_SIZE)) / 2.0;
        let ops = vec![
            Op::SaveGraphicsState,
            // An image XObject fills the unit square; this maps it to the box.
            Op::SetTransformationMatrix {
                matrix: CurTransMat::Raw([draw_w, 0.0, 0.0, draw_h, x, y]),
            },
            Op::UseXobject {
                id,
                transform: XObjectTransform {
                    no_auto_scale: true,
                    ..XObjectTransform::default()
                },
            },
            Op::RestoreGraphicsState,
            Op::StartTextSection,
            Op::SetFont {
                font: handle.clone(),
                size: Pt(CAPTION_SIZE),
            },
            Op::SetTextMatrix {
                matrix: TextMatrix::Translate(Pt(caption_x), Pt(CAPTION_BASELINE)),
            },
            Op::ShowText {
                items: vec![TextItem::Text(caption)],
            },
            Op::EndTextSection,
        ];
        pdf_pages.push(PdfPage::new(Mm(210.0), Mm(297.0), ops));
    }

    let total = pdf_pages.len();
    let opts = PdfSaveOptions {
        image_optimization: None,
        ..PdfSaveOptions::default()
    };
    let bytes = save(doc.with_pages(pdf_pages), &opts)?;
    Ok(RenderedPdf {
        bytes,
        pages: total,
        truncated: false,
    })
}

/// Where a `w`×`h` pixel photo goes: `[x, y, width, height]` in points,
/// as large as the area inside the margins allows, aspect kept, centred.
fn place(w: f32, h: f32) -> [f32; 4] {
    let box_w = PAGE_W - 2.0 * MARGIN;
    let box_h = PAGE_H - MARGIN - PHOTO_BOTTOM;
    let scale = (box_w / w).min(box_h / h);
    let (draw_w, draw_h) = (w * scale, h * scale);
    [
        MARGIN + (box_w - draw_w) / 2.0,
        PHOTO_BOTTOM + (box_h - draw_h) / 2.0,
        draw_w,
        draw_h,
    ]
}

/// Shortens a caption with an ellipsis so it fits within the margins.
fn fit_caption(name: &str) -> Result<String, PdfError> {
    let font = font()?;
    let max_w = PAGE_W - 2.0 * MARGIN;
    if font.width(name, CAPTION_SIZE) <= max_w {
        return Ok(name.to_string());
    }
    let budget = max_w - font.width("…", CAPTION_SIZE);
    let mut out = String::new();
    let mut w = 0.0;
    for c in name.chars() {
        w += font.advance_em(c) * CAPTION_SIZE;
        if w > budget {
            break;
        }
        out.push(c);
    }
    out.push('…');
    Ok(out)
}

fn image_xobject(jpeg: &[u8], info: JpegInfo) -> ExternalXObject {
    let name = |n: &str| DictItem::Name(n.as_bytes().to_vec());
    let color_space = if info.components == 1 {
        "DeviceGray"
    } else {
        "DeviceRGB"
    };
    let dict: BTreeMap<String, DictItem> = [
        ("Type", name("XObject")),
        ("Subtype", name("Image")),
        ("Width", DictItem::Int(i64::from(info.width))),
        ("Height", DictItem::Int(i64::from(info.height))),
        ("ColorSpace", name(color_space)),
        ("BitsPerComponent", DictItem::Int(8)),
        ("Filter", name("DCTDecode")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ExternalXObject {
        stream: ExternalStream {
            dict,
            content: jpeg.to_vec(),
            // Already compressed; deflating JPEG data only costs time.
            compress: false,
        },
        width: Some(Px(usize::from(info.width))),
        height: Some(Px(usize::from(info.height))),
        dpi: None,
    }
}

/// Reads size and component count from the frame header of a baseline,
/// extended or progressive 8-bit JPEG with one (grey) or three (YCbCr/RGB)
/// components: the kinds PDF viewers decode everywhere and the image
/// pipeline produces. Anything else is refused rather than embedded broken.
fn jpeg_info(data: &[u8]) -> Result<JpegInfo, String> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let byte = |at: usize| data.get(at).copied().ok_or("JPEG header is truncated");
    let word =
        |at: usize| -> Result<u16, &str> { Ok(u16::from_be_bytes([byte(at)?, byte(at + 1)?])) };
    let mut at = 2;
    loop {
        if byte(at)? != 0xFF {
            return Err(format!("JPEG marker expected at byte {at}"));
        }
        let marker = byte(at + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xFF => {
                at += 1;
                continue;
            }
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => {
                at += 2;
                continue;
            }
            0xD9 | 0xDA => return Err("JPEG has no frame header before its image data".into()),
            0xC0..=0xC2 => {
                let precision = byte(at + 4)?;
                let height = word(at + 5)?;
                let width = word(at + 7)?;
                let components = byte(at + 9)?;
                if precision != 8 {
                    return Err(format!("{precision}-bit JPEG is not supported"));
                }
                if width == 0 || height == 0 {
                    return Err("JPEG has no pixel size in its frame header".into());
                }
                if components != 1 && components != 3 {
                    return Err(format!(
                        "JPEG with {components} colour components is not supported"
                    ));
                }
                return Ok(JpegInfo {
                    width,
                    height,
                    components,
                });
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(
                    "lossless, hierarchical or arithmetic-coded JPEG is not supported".into(),
                );
            }
            _ => at += 2 + usize::from(word(at + 2)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actorbot_testkit::pdf::extract_text;
    use image::{ExtendedColorType, ImageEncoder, codecs::jpeg::JpegEncoder};

    fn jpeg(width: u32, height: u32, grey: bool) -> Vec<u8> {
        let channels = if grey { 1 } else { 3 };
        let pixels: Vec<u8> = (0..width * height * channels)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        let color = if grey {
            ExtendedColorType::L8
        } else {
            ExtendedColorType::Rgb8
        };
        JpegEncoder::new_with_quality(&mut out, 80)
            .write_image(&pixels, width, height, color)
            .unwrap();
        out
    }

    fn photo(name: &str, width: u32, height: u32, grey: bool) -> AlbumPage {
        AlbumPage {
            name: name.into(),
            jpeg: jpeg(width, height, grey),
            width,
            height,
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn one_page_per_photo_with_its_caption_and_untouched_jpeg() {
        let photos = [
            photo("beach.jpg", 64, 32, false),
            photo("Старый город", 20, 60, true),
            photo("square 🤖", 40, 40, false),
        ];
        let out = render_album(&photos).unwrap();
        assert_eq!(out.pages, 3);
        assert!(!out.truncated);
        let pages = extract_text(&out.bytes).unwrap();
        assert_eq!(pages, ["beach.jpg\n", "Старый город\n", "square □\n"]);
        for p in &photos {
            assert!(
                contains(&out.bytes, &p.jpeg),
                "{} not embedded verbatim",
                p.name
            );
        }
        assert!(contains(&out.bytes, b"/DeviceGray"));
        assert_eq!(
            out.bytes.windows(10).filter(|w| w == b"/DCTDecode").count(),
            3
        );
    }

    #[test]
    fn photos_fill_the_margins_keep_aspect_and_are_centred() {
        let inner_w = PAGE_W - 2.0 * MARGIN;
        let inner_h = PAGE_H - MARGIN - PHOTO_BOTTOM;
        for (w, h) in [
            (4000.0, 3000.0),
            (3000.0, 4000.0),
            (10.0, 10.0),
            (1000.0, 100.0),
        ] {
            let [x, y, dw, dh] = place(w, h);
            assert!(((dw / dh) - (w / h)).abs() < 1e-3, "{w}x{h} distorted");
            assert!(dw <= inner_w + 1e-3 && dh <= inner_h + 1e-3);
            assert!(
                (dw - inner_w).abs() < 1e-3 || (dh - inner_h).abs() < 1e-3,
                "{w}x{h} not fitted"
            );
            assert!((x - MARGIN - (inner_w - dw) / 2.0).abs() < 1e-3);
            assert!((y - PHOTO_BOTTOM - (inner_h - dh) / 2.0).abs() < 1e-3);
        }
    }

    #[test]
    fn empty_album_is_an_error() {
        assert!(matches!(render_album(&[]), Err(PdfError::EmptyInput(_))));
    }

    #[test]
    fn refuses_what_is_not_a_usable_jpeg() {
        let good = jpeg(8, 8, false);
        let cases: [(&str, Vec<u8>); 4] = [
            ("text", b"hello".to_vec()),
            ("png", b"\x89PNG\r\n\x1a\n0000".to_vec()),
            ("cut", good[..20].to_vec()),
            ("no frame", vec![0xFF, 0xD8, 0xFF, 0xD9]),
        ];
        for (name, bytes) in cases {
            let page = AlbumPage {
                name: name.into(),
                jpeg: bytes,
                width: 8,
                height: 8,
            };
            match render_album(&[photo("fine", 8, 8, false), page]) {
                Err(PdfError::Image { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_the_frame_header() {
        assert_eq!(
            jpeg_info(&jpeg(33, 17, true)),
            Ok(JpegInfo {
                width: 33,
                height: 17,
                components: 1
            })
        );
        assert_eq!(jpeg_info(&jpeg(5, 9, false)).map(|i| i.components), Ok(3));
    }

    #[test]
    fn long_and_blank_names_still_give_a_caption() {
        let long = "a very long photo name ".repeat(20);
        let out = render_album(&[photo(&long, 8, 8, false), photo("  ", 8, 8, false)]).unwrap();
        let pages = extract_text(&out.bytes).unwrap();
        let first = pages[0].trim_end();
        assert!(
            first.ends_with('…') && first.len() < long.len(),
            "{first:?}"
        );
        assert!(long.starts_with(first.trim_end_matches('…')));
        assert_eq!(pages[1], "Photo 2\n");
    }
}

//! The one typeface every actorbot PDF is set in: DejaVu Sans, compiled into
//! the binary so rendering never depends on fonts installed on the host.
//!
//! It covers Latin (with accents), Greek and Cyrillic, which is what users
//! write to the bot; anything it lacks (most emoji, CJK) is swapped for a visible
//! placeholder before layout, so a PDF never carries `.notdef` boxes that
//! extract as nothing. The font is parsed once per process. Each document
//! embeds a cut-down copy holding only the outlines it uses, because
//! printpdf (built without its `text_layout` feature) would otherwise embed
//! all 760 KB in every file.
//!
//! [`PdfError`] lives here because every renderer goes through this module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use printpdf::ParsedFont;

/// Bitstream Vera licence; see `fonts/LICENSE-DejaVu.txt`.
const DEJAVU_SANS: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Drawn instead of a character the font cannot show. WHITE SQUARE is in
/// DejaVu Sans and still reads as "something was here" once copied out.
pub const PLACEHOLDER: char = '\u{25A1}';

/// Characters below this bound get their advance from a flat table, so the
/// hot path of line measuring (Latin, Greek, Cyrillic) skips the cmap map.
const FAST_ADVANCE_LIMIT: usize = 0x0530;

/// Why a PDF could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    /// The compiled-in font did not parse; every render fails the same way,
    /// so callers should treat this as a bug, not as bad input.
    #[error("embedded font unusable: {0}")]
    Font(String),
    /// A photo handed to the album is not a JPEG that can be placed.
    #[error("photo {name:?} cannot be embedded: {reason}")]
    Image { name: String, reason: String },
    /// Nothing to render (no exchanges, no photos).
    #[error("nothing to render: {0}")]
    EmptyInput(&'static str),
    /// The PDF writer produced no usable document.
    #[error("PDF serialisation failed: {0}")]
    Serialise(String),
    /// The PDF writer failed while writing the document out.
    #[error("PDF serialisation failed")]
    Write(#[source] std::io::Error),
}

/// The parsed face plus the metrics layout needs.
pub struct Font {
    parsed: ParsedFont,
    units_per_em: f32,
    /// Advances in em for U+0000..FAST_ADVANCE_LIMIT; `None` where uncovered.
    fast_advance: Vec<Option<f32>>,
    placeholder_advance: f32,
}

static FONT: LazyLock<Result<Font, String>> = LazyLock::new(|| Font::parse(DEJAVU_SANS));

/// The process-wide font, parsed on first use.
pub fn font() -> Result<&'static Font, PdfError> {
    FONT.as_ref().map_err(|e| PdfError::Font(e.clone()))
}

impl Font {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut warnings = Vec::new();
        let parsed = ParsedFont::from_bytes(bytes, 0, &mut warnings)
            .ok_or_else(|| format!("DejaVu Sans did not parse: {warnings:?}"))?;
        let units_per_em = f32::from(parsed.units_per_em.max(1));
        let mut font = Font {
            parsed,
            units_per_em,
            fast_advance: Vec::new(),
            placeholder_advance: 0.0,
        };
        font.placeholder_advance = font
            .lookup_advance(PLACEHOLDER)
            .ok_or("DejaVu Sans lacks the placeholder glyph")?;
        font.fast_advance = (0..FAST_ADVANCE_LIMIT as u32)
            .map(|cp| char::from_u32(cp).and_then(|c| font.lookup_advance(c)))
            .collect();
        Ok(font)
    }

    fn glyph_id(&self, c: char) -> Option<u16> {
        // Glyph 0 is .notdef: a cmap entry pointing there is no coverage.
        self.parsed
            .lookup_glyph_index(u32::from(c))
            .filter(|&gid| gid != 0)
    }

    fn lookup_advance(&self, c: char) -> Option<f32> {
        let gid = self.glyph_id(c)?;
        let width = self.parsed.get_glyph_width(gid).unwrap_or(0);
        Some(f32::from(width) / self.units_per_em)
    }

    /// Whether the font has a real glyph for `c`.
    pub fn has_glyph(&self, c: char) -> bool {
        match self.fast_advance.get(c as usize) {
            Some(advance) => advance.is_some(),
            None => self.glyph_id(c).is_some(),
        }
    }

    /// Makes `text` safe to draw: characters the font lacks become
    /// [`PLACEHOLDER`], tabs become spaces, and invisible modifiers
    /// (variation selectors, joiners, skin tones, controls) are dropped, so
    /// an emoji sequence yields one box per visible symbol and copied text
    /// carries no stray format characters. Newlines are kept.
    pub fn sanitize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '\n' => out.push('\n'),
                '\t' => out.push_str("    "),
                c if c.is_control() || is_invisible_modifier(c) => {}
                c if self.has_glyph(c) => out.push(c),
                _ => out.push(PLACEHOLDER),
            }
        }
        out
    }

    /// Advance of `c` in em. Expects sanitized text; anything uncovered is
    /// measured as the placeholder that will stand in for it.
    pub fn advance_em(&self, c: char) -> f32 {
        match self.fast_advance.get(c as usize) {
            Some(advance) => advance.unwrap_or(self.placeholder_advance),
            None => self.lookup_advance(c).unwrap_or(self.placeholder_advance),
        }
    }

    /// Like [`Font::advance_em`] but never consults the cmap: characters
    /// beyond Cyrillic are guessed at placeholder width. For estimates only.
    pub fn approx_advance_em(&self, c: char) -> f32 {
        self.fast_advance
            .get(c as usize)
            .copied()
            .flatten()
            .unwrap_or(self.placeholder_advance)
    }

    /// Width of `text` in points at `size` points.
    pub fn width(&self, text: &str, size: f32) -> f32 {
        text.chars().map(|c| self.advance_em(c)).sum::<f32>() * size
    }

    /// Ascender and descender (negative) in em, for placing baselines.
    pub fn vertical_metrics_em(&self) -> (f32, f32) {
        let m = &self.parsed.font_metrics;
        (
            f32::from(m.ascent) / self.units_per_em,
            f32::from(m.descent) / self.units_per_em,
        )
    }

    /// A copy of the face to register with one document, its font program
    /// trimmed to the glyphs of `used` (sanitized text) and its maps to the
    /// characters of `used`, so printpdf's copies of it and its `/W` widths
    /// and `/ToUnicode` map cost what the document uses, not the whole face.
    /// Glyph ids are kept, so nothing referring to them needs rewriting.
    /// Falls back to the whole font program if trimming fails, which costs
    /// size but never correctness.
    pub fn for_document(&self, used: impl IntoIterator<Item = char>) -> ParsedFont {
        let codepoint_to_glyph: BTreeMap<u32, u16> = used
            .into_iter()
            .filter_map(|c| Some((u32::from(c), self.glyph_id(c)?)))
            .collect();
        let mut glyphs: BTreeSet<u16> = codepoint_to_glyph.values().copied().collect();
        glyphs.insert(0);
        let glyph_widths = glyphs
            .iter()
            .filter_map(|&g| Some((g, *self.parsed.glyph_widths.get(&g)?)))
            .collect();
        let original_bytes = subset_keeping_ids(DEJAVU_SANS, &glyphs).unwrap_or_else(|e| {
            log::warn!("embedding the whole font, trimming failed: {e}");
            DEJAVU_SANS.to_vec()
        });
        let full = &self.parsed;
        ParsedFont {
            original_bytes,
            font_index: full.font_index,
            font_name: full.font_name.clone(),
            codepoint_to_glyph,
            glyph_widths,
            units_per_em: full.units_per_em,
            font_metrics: full.font_metrics.clone(),
            font_type: full.font_type,
            pdf_font_metrics: full.pdf_font_metrics.clone(),
        }
    }
}

/// Format characters that only modify a neighbour and have no ink of their
/// own; a placeholder for them would be noise.
fn is_invisible_modifier(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{1F3FB}'..='\u{1F3FF}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Tables a PDF viewer needs to draw a CIDFontType2 program by glyph id.
/// Layout tables (GSUB, GPOS, kern, ...) are dropped: printpdf does no
/// shaping, and they are most of what is left after trimming `glyf`.
const KEPT_TABLES: [&[u8; 4]; 14] = [
    b"OS/2", b"cmap", b"cvt ", b"fpgm", b"gasp", b"glyf", b"head", b"hhea", b"hmtx", b"loca",
    b"maxp", b"name", b"post", b"prep",
];

struct Tables<'a> {
    font: &'a [u8],
    entries: Vec<([u8; 4], usize, usize)>,
}

impl<'a> Tables<'a> {
    fn read(font: &'a [u8]) -> Result<Self, String> {
        let count = usize::from(read_u16(font, 4)?);
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let rec = 12 + 16 * i;
            let tag: [u8; 4] = font
                .get(rec..rec + 4)
                .and_then(|t| t.try_into().ok())
                .ok_or("truncated table directory")?;
            let offset = read_u32(font, rec + 8)? as usize;
            let len = read_u32(font, rec + 12)? as usize;
            if offset.checked_add(len).is_none_or(|end| end > font.len()) {
                return Err(format!(
                    "table {} out of bounds",
                    String::from_utf8_lossy(&tag)
                ));
            }
            entries.push((tag, offset, len));
        }
        Ok(Tables { font, entries })
    }

    fn get(&self, tag: &[u8; 4]) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .find(|(t, _, _)| t == tag)
            .map(|&(_, off, len)| &self.font[off..off + len])
    }

    fn require(&self, tag: &[u8; 4]) -> Result<&'a [u8], String> {
        self.get(tag)
            .ok_or_else(|| format!("missing table {}", String::from_utf8_lossy(tag)))
    }
}

fn read_u16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("read past end at {at}"))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("read past end at {at}"))
}

/// Rebuilds a TrueType font in which every glyph outside `keep` (and the
/// components of composite glyphs inside it) is empty. Ids are unchanged,
/// so nothing referring to them needs rewriting; the empty slots cost
/// four bytes each in `loca` and compress to almost nothing.
fn subset_keeping_ids(font: &[u8], keep: &BTreeSet<u16>) -> Result<Vec<u8>, String> {
    let tables = Tables::read(font)?;
    let head = tables.require(b"head")?;
    let glyf = tables.require(b"glyf")?;
    let loca = tables.require(b"loca")?;
    let num_glyphs = usize::from(read_u16(tables.require(b"maxp")?, 4)?);
    let long_loca = read_u16(head, 50)? == 1;

    let glyph_range = |gid: usize| -> Result<(usize, usize), String> {
        let (start, end) = if long_loca {
            (
                read_u32(loca, gid * 4)? as usize,
                read_u32(loca, gid * 4 + 4)? as usize,
            )
        } else {
            (
                usize::from(read_u16(loca, gid * 2)?) * 2,
                usize::from(read_u16(loca, gid * 2 + 2)?) * 2,
            )
        };
        if start > end || end > glyf.len() {
            return Err(format!("glyph {gid} has a bad loca entry"));
        }
        Ok((start, end))
    };

    // Composite glyphs (accented letters in DejaVu) draw other glyphs.
    let mut wanted: BTreeSet<usize> = BTreeSet::new();
    let mut pending: Vec<usize> = keep.iter().map(|&g| usize::from(g)).collect();
    while let Some(gid) = pending.pop() {
        if gid >= num_glyphs || !wanted.insert(gid) {
            continue;
        }
        let (start, end) = glyph_range(gid)?;
        let data = &glyf[start..end];
        if data.len() < 10 || (read_u16(data, 0)? as i16) >= 0 {
            continue;
        }
        let mut at = 10;
        loop {
            let flags = read_u16(data, at)?;
            pending.push(usize::from(read_u16(data, at + 2)?));
            at += 4 + if flags & 0x0001 != 0 { 4 } else { 2 };
            at += match flags {
                f if f & 0x0008 != 0 => 2,
                f if f & 0x0040 != 0 => 4,
                f if f & 0x0080 != 0 => 8,
                _ => 0,
            };
            if flags & 0x0020 == 0 {
                break;
            }
        }
    }

    let mut new_glyf = Vec::new();
    let mut new_loca = Vec::with_capacity((num_glyphs + 1) * 4);
    for gid in 0..num_glyphs {
        new_loca.extend_from_slice(&(new_glyf.len() as u32).to_be_bytes());
        if wanted.contains(&gid) {
            let (start, end) = glyph_range(gid)?;
            new_glyf.extend_from_slice(&glyf[start..end]);
            new_glyf.resize(new_glyf.len().next_multiple_of(4), 0);
        }
    }
    new_loca.extend_from_slice(&(new_glyf.len() as u32).to_be_bytes());

    let mut new_head = head.to_vec();
    new_head.get_mut(8..12).ok_or("short head")?.fill(0);
    new_head
        .get_mut(50..52)
        .ok_or("short head")?
        .copy_from_slice(&1u16.to_be_bytes());

    // Glyph names are only for tools; version 3 says "none" in 32 bytes.
    let mut new_post = tables
        .require(b"post")?
        .get(..32)
        .ok_or("short post")?
        .to_vec();
    new_post[..4].copy_from_slice(&0x0003_0000u32.to_be_bytes());

    let mut out_tables: Vec<([u8; 4], Vec<u8>)> = Vec::new();
    for tag in KEPT_TABLES {
        let data = match tag {
            b"glyf" => std::mem::take(&mut new_glyf),
            b"loca" => std::mem::take(&mut new_loca),
            b"head" => std::mem::take(&mut new_head),
            b"post" => std::mem::take(&mut new_post),
            other => match tables.get(other) {
                Some(data) => data.to_vec(),
                None => continue,
            },
        };
        out_tables.push((*tag, data));
    }
    Ok(write_sfnt(out_tables))
}

fn checksum(data: &[u8]) -> u32 {
    data.chunks(4).fold(0u32, |sum, chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        sum.wrapping_add(u32::from_be_bytes(word))
    })
}

/// Serialises tables (given in ascending tag order) as a TrueType file and
/// fixes up `head.checkSumAdjustment`, which strict readers verify.
fn write_sfnt(tables: Vec<([u8; 4], Vec<u8>)>) -> Vec<u8> {
    let count = tables.len() as u16;
    let pow2 = if count == 0 {
        0
    } else {
        1u16 << (15 - count.leading_zeros())
    };
    let search_range = pow2 * 16;
    let entry_selector = pow2.max(1).trailing_zeros() as u16;
    let range_shift = count * 16 - search_range;

    let mut out = Vec::new();
    out.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    for v in [count, search_range, entry_selector, range_shift] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let mut offset = 12 + 16 * tables.len();
    let mut head_at = None;
    for (tag, data) in &tables {
        out.extend_from_slice(tag);
        out.extend_from_slice(&checksum(data).to_be_bytes());
        out.extend_from_slice(&(offset as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        if tag == b"head" {
            head_at = Some(offset);
        }
        offset += data.len().next_multiple_of(4);
    }
    for (_, data) in &tables {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    if let Some(at) = head_at {
        let adjust = 0xB1B0_AFBAu32.wrapping_sub(checksum(&out));
        out[at + 8..at + 12].copy_from_slice(&adjust.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_scripts_users_write_and_not_emoji() {
        let f = font().unwrap();
        for c in ['a', 'é', 'ß', 'Ж', 'я', 'Ω', 'λ', PLACEHOLDER] {
            assert!(f.has_glyph(c), "{c:?} should be covered");
        }
        // DejaVu draws the Emoticons block (😀) but not most other emoji.
        assert!(f.has_glyph('😀'));
        assert!(!f.has_glyph('🤖'));
        assert!(!f.has_glyph('漢'));
    }

    #[test]
    fn sanitize_replaces_uncovered_and_drops_modifiers() {
        let f = font().unwrap();
        assert_eq!(f.sanitize("ok 🤖!"), "ok □!");
        // Thumbs-up + skin tone + variation selector is one visible symbol.
        assert_eq!(f.sanitize("\u{1F44D}\u{1F3FD}\u{FE0F}"), "□");
        assert_eq!(f.sanitize("a\tb\u{7}\nc"), "a    b\nc");
        assert_eq!(f.sanitize("Привет, Ελλάδα, café"), "Привет, Ελλάδα, café");
    }

    #[test]
    fn widths_come_from_glyph_advances() {
        let f = font().unwrap();
        // Proportional: 'i' is much narrower than 'W' in DejaVu Sans.
        assert!(f.width("W", 10.0) > 2.0 * f.width("i", 10.0));
        assert!((f.width("iiii", 10.0) - 4.0 * f.width("i", 10.0)).abs() < 1e-4);
        assert!((f.width("m", 20.0) - 2.0 * f.width("m", 10.0)).abs() < 1e-4);
        // Fast table and cmap path agree.
        assert_eq!(f.advance_em('Ж'), f.lookup_advance('Ж').unwrap());
        assert_eq!(f.advance_em('🤖'), f.advance_em(PLACEHOLDER));
    }

    #[test]
    fn trimmed_font_is_a_valid_smaller_font_with_same_ids() {
        let f = font().unwrap();
        let trimmed = f.for_document("Hello, Привет é".chars());
        let bytes = &trimmed.original_bytes;
        assert!(bytes.len() < DEJAVU_SANS.len() / 4, "{} bytes", bytes.len());
        assert_eq!(checksum(bytes), 0xB1B0_AFBA, "checkSumAdjustment is wrong");
        let reparsed = ParsedFont::from_bytes(bytes, 0, &mut Vec::new()).unwrap();
        assert_eq!(
            reparsed.lookup_glyph_index('Ж' as u32),
            f.parsed.lookup_glyph_index('Ж' as u32)
        );
        let tables = Tables::read(bytes).unwrap();
        let gid = |c: char| usize::from(f.glyph_id(c).unwrap());
        let glyph_len = |g: usize| {
            let loca = tables.get(b"loca").unwrap();
            read_u32(loca, g * 4 + 4).unwrap() - read_u32(loca, g * 4).unwrap()
        };
        assert!(glyph_len(gid('П')) > 0);
        assert!(glyph_len(gid('é')) > 0);
        assert_eq!(glyph_len(gid('Z')), 0, "unused glyph should be emptied");
        assert!(tables.get(b"GPOS").is_none());
    }
}

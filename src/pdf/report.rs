//! Turns a user's AI conversation into a paginated A4 PDF they can keep.
//!
//! Layout is done here rather than by printpdf (whose layout engine needs
//! its heavy `html` feature): text is sanitized against the embedded font,
//! word-wrapped by measured glyph advances, and flowed onto pages that each
//! carry a "Page N of M" footer. A page cap bounds the work one request can
//! cause; when it bites, the report says what it left out. Every drawn line
//! is its own text object, so the text stays selectable and extracts one
//! line per drawn line.

use printpdf::{
    Color, Line, LinePoint, Mm, Op, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt,
    Rgb, TextItem, TextMatrix,
};

use super::font::{Font, PdfError, font};
use super::{PAGE_H, PAGE_W};

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    pub user_name: String,
    /// Shown as given; the caller picks format and time zone.
    pub generated_at: String,
    pub exchanges: Vec<Exchange>,
}

/// One question the user asked and the answer they got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub question: String,
    pub answer: String,
}

/// Bounds on one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Pages beyond this are not rendered; 0 is treated as 1.
    pub max_pages: usize,
}

/// A finished PDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPdf {
    pub bytes: Vec<u8>,
    pub pages: usize,
    /// Whether content was left out to respect a limit.
    pub truncated: bool,
}

const MARGIN_X: f32 = 56.693;
const MARGIN_TOP: f32 = 56.693;
/// Leaves room under the text for the footer.
const MARGIN_BOTTOM: f32 = 62.0;
const FOOTER_BASELINE: f32 = 34.0;
const TEXT_W: f32 = PAGE_W - 2.0 * MARGIN_X;
const BODY_H: f32 = PAGE_H - MARGIN_TOP - MARGIN_BOTTOM;

const TITLE_SIZE: f32 = 20.0;
const META_SIZE: f32 = 10.0;
const HEADING_SIZE: f32 = 11.5;
const BODY_SIZE: f32 = 10.5;
const FOOTER_SIZE: f32 = 9.0;
const LEADING: f32 = 1.4;

const HEADING_GAP: f32 = 16.0;
const QUESTION_GAP: f32 = 4.0;
const ANSWER_GAP: f32 = 6.0;

const QUESTION_LABEL: &str = "Q: ";
const ANSWER_LABEL: &str = "A: ";
const EMPTY_TEXT: &str = "(empty)";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tone {
    Title,
    Muted,
    Heading,
    Question,
    Body,
    Notice,
}

impl Tone {
    fn color(self) -> Color {
        let (r, g, b) = match self {
            Tone::Title => (0.10, 0.10, 0.12),
            Tone::Muted => (0.40, 0.40, 0.44),
            Tone::Heading => (0.12, 0.30, 0.55),
            Tone::Question => (0.15, 0.15, 0.30),
            Tone::Body => (0.0, 0.0, 0.0),
            Tone::Notice => (0.65, 0.10, 0.10),
        };
        Color::Rgb(Rgb {
            r,
            g,
            b,
            icc_profile: None,
        })
    }
}

/// One line of laid-out text, before it is given a page.
#[derive(Debug, Clone)]
struct TextLine {
    text: String,
    x: f32,
    size: f32,
    tone: Tone,
    /// Space above, dropped at the top of a page.
    gap_before: f32,
    /// Draw a separator in the gap above (section start).
    rule_before: bool,
    /// Never end a page with this line (headings).
    keep_with_next: bool,
    exchange: Option<usize>,
}

impl TextLine {
    fn height(&self) -> f32 {
        self.size * LEADING
    }
}

#[derive(Debug)]
struct Placed {
    line: usize,
    /// Distance from the top of the text area to the top of the line box.
    top: f32,
    rule: bool,
}

/// Renders the report, at most `limits.max_pages` pages long.
pub fn render_report(req: &ReportRequest, limits: &ReportLimits) -> Result<RenderedPdf, PdfError> {
    if req.exchanges.is_empty() {
        return Err(PdfError::EmptyInput("no exchanges to report"));
    }
    let font = font()?;
    let max_pages = limits.max_pages.max(1);
    let mut lines = layout(font, req);

    let mut pages = paginate(&lines, BODY_H, None);
    let truncated = pages.len() > max_pages;
    if truncated {
        // Lay out again with the notice's room reserved on the last page,
        // then append the notice there.
        let probe = notice_lines(font, req.exchanges.len(), max_pages, 0, None);
        let reserve: f32 = probe.iter().map(|l| l.gap_before + l.height()).sum();
        pages = paginate(&lines, BODY_H, Some((max_pages, reserve)));
        let (left_out, partial) = coverage(&lines, &pages, req.exchanges.len());
        let notice = notice_lines(font, req.exchanges.len(), max_pages, left_out, partial);
        let last = pages
            .last_mut()
            .ok_or(PdfError::EmptyInput("nothing fits"))?;
        let mut top = last.last().map_or(0.0, |p| p.top + lines[p.line].height());
        for n in notice {
            top += n.gap_before;
            last.push(Placed {
                line: lines.len(),
                top,
                rule: false,
            });
            top += n.height();
            lines.push(n);
        }
    }

    let mut used_chars: Vec<char> = lines.iter().flat_map(|l| l.text.chars()).collect();
    used_chars.extend("Page of 0123456789".chars());
    let title = font.sanitize(&format!("Conversation report: {}", req.user_name));
    let mut doc = PdfDocument::new(&title);
    let font_id = doc.add_font(&font.for_document(used_chars));
    let handle = PdfFontHandle::External(font_id);

    let total = pages.len();
    let pdf_pages = pages
        .iter()
        .enumerate()
        .map(|(i, placed)| {
            let ops = page_ops(font, &handle, &lines, placed, i + 1, total);
            PdfPage::new(Mm(210.0), Mm(297.0), ops)
        })
        .collect();
    let bytes = save(doc.with_pages(pdf_pages), &PdfSaveOptions::default())?;
    Ok(RenderedPdf {
        bytes,
        pages: total,
        truncated,
    })
}

/// Cheap page count guess for scheduling: no PDF is built and text is
/// measured with a flat width table, not wrapped word by word. Growing the
/// input never lowers the result.
pub fn estimate_pages(req: &ReportRequest) -> usize {
    let font = font().ok();
    let em = |c: char| font.map_or(0.6, |f| f.approx_advance_em(c));
    let label_w = |label: &str| label.chars().map(em).sum::<f32>() * BODY_SIZE;
    // Greedy wrapping leaves part of a word's width unused on most lines.
    const FILL: f32 = 0.94;

    let mut height = header_height();
    for (i, ex) in req.exchanges.iter().enumerate() {
        height += if i == 0 { 0.0 } else { HEADING_GAP } + HEADING_SIZE * LEADING;
        for (text, label, gap) in [
            (&ex.question, QUESTION_LABEL, QUESTION_GAP),
            (&ex.answer, ANSWER_LABEL, ANSWER_GAP),
        ] {
            let avail = (TEXT_W - label_w(label)) * FILL;
            let mut count = 0usize;
            for para in paragraphs(text) {
                let width: f32 = para.chars().map(em).sum::<f32>() * BODY_SIZE;
                count += ((width / avail).ceil() as usize).max(1);
            }
            height += gap + count.max(1) as f32 * BODY_SIZE * LEADING;
        }
    }
    ((height / BODY_H).ceil() as usize).max(1)
}

fn header_height() -> f32 {
    TITLE_SIZE * LEADING + 6.0 + 2.0 * META_SIZE * LEADING + HEADING_GAP
}

/// Source lines of a text, with runs of blank lines collapsed to one and
/// leading/trailing blank lines dropped; an empty text gives one line.
fn paragraphs(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() && out.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        out.push(line);
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    if out.is_empty() {
        out.push(EMPTY_TEXT);
    }
    out
}

fn layout(font: &Font, req: &ReportRequest) -> Vec<TextLine> {
    let mut lines = Vec::new();
    let plain = |text: String, size: f32, tone: Tone, gap: f32| TextLine {
        text,
        x: MARGIN_X,
        size,
        tone,
        gap_before: gap,
        rule_before: false,
        keep_with_next: false,
        exchange: None,
    };
    lines.push(plain(
        "Conversation report".into(),
        TITLE_SIZE,
        Tone::Title,
        0.0,
    ));
    for (i, meta) in [
        format!("User: {}", req.user_name),
        format!("Generated: {}", req.generated_at),
    ]
    .into_iter()
    .enumerate()
    {
        let gap = if i == 0 { 6.0 } else { 0.0 };
        for text in wrap(font, &font.sanitize(&meta), META_SIZE, TEXT_W) {
            lines.push(plain(text, META_SIZE, Tone::Muted, gap));
        }
    }

    let total = req.exchanges.len();
    for (i, ex) in req.exchanges.iter().enumerate() {
        lines.push(TextLine {
            text: format!("Exchange {} of {total}", i + 1),
            x: MARGIN_X,
            size: HEADING_SIZE,
            tone: Tone::Heading,
            gap_before: HEADING_GAP,
            rule_before: true,
            keep_with_next: true,
            exchange: Some(i),
        });
        labelled(
            font,
            &mut lines,
            QUESTION_LABEL,
            &ex.question,
            Tone::Question,
            QUESTION_GAP,
            i,
        );
        labelled(
            font,
            &mut lines,
            ANSWER_LABEL,
            &ex.answer,
            Tone::Body,
            ANSWER_GAP,
            i,
        );
    }
    lines
}

/// A labelled paragraph with a hanging indent: the label opens the first
/// line and later lines align with the text after it.
fn labelled(
    font: &Font,
    lines: &mut Vec<TextLine>,
    label: &str,
    text: &str,
    tone: Tone,
    gap: f32,
    exchange: usize,
) {
    let indent = font.width(label, BODY_SIZE);
    let sanitized = font.sanitize(text);
    let mut first = true;
    for para in paragraphs(&sanitized) {
        for wrapped in wrap(font, para, BODY_SIZE, TEXT_W - indent) {
            let (text, x, gap_before) = if first {
                (format!("{label}{wrapped}"), MARGIN_X, gap)
            } else {
                (wrapped, MARGIN_X + indent, 0.0)
            };
            first = false;
            lines.push(TextLine {
                text,
                x,
                size: BODY_SIZE,
                tone,
                gap_before,
                rule_before: false,
                keep_with_next: false,
                exchange: Some(exchange),
            });
        }
    }
}

/// Greedy word wrap of one source line (no newlines) to `max_w` points.
/// Leading spaces are kept on the first line (code, lists); words wider
/// than a line are broken between characters. Always yields a line, even
/// for empty input, so blank lines keep their space.
///
/// Public (it is pure) so that the property tests and fuzz targets can check
/// that no line it makes is wider than `max_w` by `Font::width`.
pub fn wrap(font: &Font, line: &str, size: f32, max_w: f32) -> Vec<String> {
    let space_w = font.width(" ", size);
    let trimmed = line.trim_start_matches(' ');
    let lead = (line.len() - trimmed.len()).min(((max_w / 2.0) / space_w) as usize);

    let mut out = Vec::new();
    let mut cur = " ".repeat(lead);
    let mut cur_w = lead as f32 * space_w;
    let mut has_word = false;
    for word in trimmed.split(' ').filter(|w| !w.is_empty()) {
        let word_w = font.width(word, size);
        let sep = if has_word { space_w } else { 0.0 };
        if cur_w + sep + word_w <= max_w {
            if has_word {
                cur.push(' ');
            }
            cur.push_str(word);
            cur_w += sep + word_w;
            has_word = true;
            continue;
        }
        // The word starts a fresh line; indentation alone is not kept.
        if has_word {
            out.push(std::mem::take(&mut cur));
        }
        cur.clear();
        cur_w = 0.0;
        if word_w <= max_w {
            cur.push_str(word);
            cur_w = word_w;
            has_word = true;
            continue;
        }
        for c in word.chars() {
            let w = font.advance_em(c) * size;
            if cur_w + w > max_w && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                cur_w = 0.0;
            }
            cur.push(c);
            cur_w += w;
        }
        has_word = true;
    }
    if has_word || out.is_empty() {
        out.push(cur);
    }
    out
}

/// Assigns lines to pages. With `limit = Some((max, reserve))` it stops
/// before page `max + 1` and keeps `reserve` points free on page `max`.
fn paginate(lines: &[TextLine], capacity: f32, limit: Option<(usize, f32)>) -> Vec<Vec<Placed>> {
    let mut pages: Vec<Vec<Placed>> = vec![Vec::new()];
    let mut used = 0.0f32;
    for (i, line) in lines.iter().enumerate() {
        let room = |page_count: usize| match limit {
            Some((max, reserve)) if page_count == max => capacity - reserve,
            _ => capacity,
        };
        let on_empty = pages.last().is_none_or(|p| p.is_empty());
        let gap = if on_empty { 0.0 } else { line.gap_before };
        let mut need = gap + line.height();
        if line.keep_with_next
            && let Some(next) = lines.get(i + 1)
        {
            need += next.gap_before + next.height();
        }
        if !on_empty && used + need > room(pages.len()) {
            if limit.is_some_and(|(max, _)| pages.len() >= max) {
                break;
            }
            pages.push(Vec::new());
            used = 0.0;
            let top = used;
            used += line.height();
            if let Some(page) = pages.last_mut() {
                page.push(Placed {
                    line: i,
                    top,
                    rule: false,
                });
            }
            continue;
        }
        let top = used + gap;
        used = top + line.height();
        if let Some(page) = pages.last_mut() {
            page.push(Placed {
                line: i,
                top,
                rule: line.rule_before && !on_empty,
            });
        }
    }
    pages
}

/// How many exchanges did not make it at all, and which one (1-based) was
/// cut part-way, if any.
fn coverage(lines: &[TextLine], pages: &[Vec<Placed>], total: usize) -> (usize, Option<usize>) {
    let Some(last) = pages.iter().rev().find_map(|p| p.last()) else {
        return (total, None);
    };
    let Some(ex) = lines[last.line].exchange else {
        return (total, None);
    };
    let complete = lines
        .get(last.line + 1)
        .is_none_or(|next| next.exchange != Some(ex));
    if complete {
        (total - ex - 1, None)
    } else {
        (total - ex - 1, Some(ex + 1))
    }
}

fn notice_lines(
    font: &Font,
    total: usize,
    max_pages: usize,
    left_out: usize,
    partial: Option<usize>,
) -> Vec<TextLine> {
    let pages = if max_pages == 1 { "page" } else { "pages" };
    let mut text = format!("Report truncated at the limit of {max_pages} {pages}: ");
    if let Some(ex) = partial {
        text.push_str(&format!("exchange {ex} is cut short and "));
    }
    let noun = if left_out == 1 {
        "exchange"
    } else {
        "exchanges"
    };
    text.push_str(&format!("{left_out} of {total} {noun} left out."));
    wrap(font, &text, BODY_SIZE, TEXT_W)
        .into_iter()
        .enumerate()
        .map(|(i, text)| TextLine {
            text,
            x: MARGIN_X,
            size: BODY_SIZE,
            tone: Tone::Notice,
            gap_before: if i == 0 { HEADING_GAP } else { 0.0 },
            rule_before: false,
            keep_with_next: false,
            exchange: None,
        })
        .collect()
}

fn text_op(
    ops: &mut Vec<Op>,
    font: &PdfFontHandle,
    size: f32,
    tone: Tone,
    x: f32,
    y: f32,
    text: String,
) {
    ops.extend([
        Op::StartTextSection,
        Op::SetFont {
            font: font.clone(),
            size: Pt(size),
        },
        Op::SetFillColor { col: tone.color() },
        Op::SetTextMatrix {
            matrix: TextMatrix::Translate(Pt(x), Pt(y)),
        },
        Op::ShowText {
            items: vec![TextItem::Text(text)],
        },
        Op::EndTextSection,
    ]);
}

fn page_ops(
    font: &Font,
    handle: &PdfFontHandle,
    lines: &[TextLine],
    placed: &[Placed],
    number: usize,
    total: usize,
) -> Vec<Op> {
    let (ascent, descent) = font.vertical_metrics_em();
    let mut ops = Vec::with_capacity(placed.len() * 6 + 12);
    for p in placed {
        let line = &lines[p.line];
        let box_top = PAGE_H - MARGIN_TOP - p.top;
        if p.rule {
            let y = box_top + line.gap_before / 2.0;
            ops.extend([
                Op::SetOutlineColor {
                    col: Tone::Muted.color(),
                },
                Op::SetOutlineThickness { pt: Pt(0.5) },
                Op::DrawLine {
                    line: Line {
                        points: [MARGIN_X, PAGE_W - MARGIN_X]
                            .into_iter()
                            .map(|x| LinePoint {
                                p: Point { x: Pt(x), y: Pt(y) },
                                bezier: false,
                            })
                            .collect(),
                        is_closed: false,
                    },
                },
            ]);
        }
        let half_leading = (line.height() - (ascent - descent) * line.size) / 2.0;
        let baseline = box_top - half_leading - ascent * line.size;
        text_op(
            &mut ops,
            handle,
            line.size,
            line.tone,
            line.x,
            baseline,
            line.text.clone(),
        );
    }
    let footer = format!("Page {number} of {total}");
    let x = (PAGE_W - font.width(&footer, FOOTER_SIZE)) / 2.0;
    text_op(
        &mut ops,
        handle,
        FOOTER_SIZE,
        Tone::Muted,
        x,
        FOOTER_BASELINE,
        footer,
    );
    ops
}

/// Serialises `doc`, checking the writer produced something PDF-shaped
/// (printpdf reports problems as warnings, never as errors).
///
/// Streams are compressed here rather than by printpdf's `optimize`, which
/// uses zlib's slowest level: for a report that was most of its time, for
/// a few percent of size.
pub(super) fn save(doc: &PdfDocument, opts: &PdfSaveOptions) -> Result<Vec<u8>, PdfError> {
    let mut warnings = Vec::new();
    let opts = PdfSaveOptions {
        optimize: false,
        ..opts.clone()
    };
    let mut lo = doc.to_lopdf_document(&opts, &mut warnings);
    for w in &warnings {
        if w.severity == printpdf::PdfParseErrorSeverity::Error {
            log::warn!("PDF writer: {}", w.msg);
        }
    }
    for object in lo.objects.values_mut() {
        if let lopdf::Object::Stream(stream) = object {
            compress(stream);
        }
    }
    let mut bytes = Vec::new();
    lo.save_to(&mut bytes).map_err(PdfError::Write)?;
    if !bytes.starts_with(b"%PDF-") {
        return Err(PdfError::Serialise(format!(
            "writer returned {} bytes without a PDF header",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// zlib level for the document's streams: the font program and the pages'
/// text compress to within a few percent of the slowest level.
const DEFLATE_LEVEL: u32 = 6;

/// Deflates a stream that has no filter yet (JPEG photos keep theirs), if
/// that makes it smaller.
fn compress(stream: &mut lopdf::Stream) {
    use std::io::Write as _;
    if !stream.allows_compression || stream.dict.get(b"Filter").is_ok() {
        return;
    }
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(stream.content.len() / 2),
        flate2::Compression::new(DEFLATE_LEVEL),
    );
    let Ok(compressed) = encoder
        .write_all(&stream.content)
        .and_then(|()| encoder.finish())
    else {
        return;
    };
    if compressed.len() < stream.content.len() {
        stream.dict.set("Filter", "FlateDecode");
        stream.set_content(compressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actorbot_testkit::pdf::extract_text;

    fn request(exchanges: Vec<Exchange>) -> ReportRequest {
        ReportRequest {
            user_name: "Zoë Ивanova".into(),
            generated_at: "2025-03-14 09:26".into(),
            exchanges,
        }
    }

    fn ex(q: &str, a: &str) -> Exchange {
        Exchange {
            question: q.into(),
            answer: a.into(),
        }
    }

    /// About `words` words of ordinary prose.
    fn prose(words: usize, seed: usize) -> String {
        const WORDS: [&str; 12] = [
            "the",
            "actor",
            "mailbox",
            "delivers",
            "messages",
            "in",
            "order",
            "while",
            "supervision",
            "restarts",
            "failed",
            "children",
        ];
        (0..words)
            .map(|i| WORDS[(i * 7 + seed) % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn conversation(n: usize, answer_words: usize) -> ReportRequest {
        request(
            (0..n)
                .map(|i| {
                    ex(
                        &format!("Question number {} about actors?", i + 1),
                        &prose(answer_words, i),
                    )
                })
                .collect(),
        )
    }

    fn render(req: &ReportRequest, max_pages: usize) -> (RenderedPdf, Vec<String>) {
        let out = render_report(req, &ReportLimits { max_pages }).unwrap();
        let pages = extract_text(&out.bytes).unwrap();
        (out, pages)
    }

    #[test]
    fn accents_cyrillic_and_greek_survive_extraction() {
        let req = request(vec![
            ex("Привет, как дела?", "Καλημέρα κόσμε, ώρα για φαγητό."),
            ex(
                "Crème brûlée à la façade naïve — ¿qué?",
                "Łódź, Ærøskøbing, Straße.",
            ),
        ]);
        let (out, pages) = render(&req, 10);
        assert_eq!(out.pages, 1);
        assert!(!out.truncated);
        let text = &pages[0];
        for needle in [
            "Conversation report",
            "User: Zoë Ивanova",
            "Generated: 2025-03-14 09:26",
            "Q: Привет, как дела?",
            "A: Καλημέρα κόσμε, ώρα για φαγητό.",
            "Q: Crème brûlée à la façade naïve — ¿qué?",
            "A: Łódź, Ærøskøbing, Straße.",
            "Page 1 of 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text:?}");
        }
    }

    #[test]
    fn long_conversation_flows_over_numbered_pages() {
        let req = conversation(30, 150);
        let (out, pages) = render(&req, 100);
        assert!(out.pages >= 4, "only {} pages", out.pages);
        assert!(!out.truncated);
        assert_eq!(pages.len(), out.pages);
        for (i, page) in pages.iter().enumerate() {
            let footer = format!("Page {} of {}", i + 1, out.pages);
            assert_eq!(page.lines().last(), Some(footer.as_str()), "page {}", i + 1);
        }
        // Every exchange is there, in order, each exactly once.
        let all = pages.concat();
        let mut from = 0;
        for k in 1..=30 {
            let heading = format!("Exchange {k} of 30\n");
            let at = all[from..]
                .find(&heading)
                .unwrap_or_else(|| panic!("{heading:?} missing"));
            from += at + heading.len();
        }
        assert_eq!(all.matches("Exchange ").count(), 30);
    }

    #[test]
    fn page_cap_truncates_and_says_what_was_left_out() {
        let req = conversation(60, 120);
        let (out, pages) = render(&req, 2);
        assert_eq!(out.pages, 2);
        assert!(out.truncated);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1].lines().last(), Some("Page 2 of 2"));

        let all = pages.concat();
        let shown = (1..=60)
            .filter(|k| all.contains(&format!("Exchange {k} of 60\n")))
            .count();
        assert!((1..60).contains(&shown));
        // The notice is the last thing before the footer.
        let lines: Vec<&str> = pages[1].lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("Report truncated at the limit of 2 pages: "))
            .unwrap_or_else(|| panic!("no notice in {:?}", pages[1]));
        let notice = lines[start..lines.len() - 1].join(" ");
        let partial = notice.contains("is cut short");
        let left_out = 60 - shown;
        assert!(
            notice.ends_with(&format!(" {left_out} of 60 exchanges left out.")),
            "{notice:?} with {shown} shown"
        );
        if partial {
            assert!(
                notice.contains(&format!("exchange {shown} is cut short")),
                "{notice:?}"
            );
        }
        // Without a cap the same report is much longer.
        assert!(
            render_report(&req, &ReportLimits { max_pages: 100 })
                .unwrap()
                .pages
                > 2
        );
    }

    #[test]
    fn missing_glyphs_become_placeholders_in_a_valid_pdf() {
        let req = request(vec![ex(
            "Robot 🤖 and thumbs 👍🏽 ok?",
            "DejaVu has 😀 but not 漢字.",
        )]);
        let (out, pages) = render(&req, 5);
        assert!(out.bytes.starts_with(b"%PDF-"));
        assert!(out.bytes.trim_ascii_end().ends_with(b"%%EOF"));
        assert!(
            pages[0].contains("Q: Robot □ and thumbs □ ok?"),
            "{:?}",
            pages[0]
        );
        assert!(
            pages[0].contains("A: DejaVu has 😀 but not □□."),
            "{:?}",
            pages[0]
        );
    }

    #[test]
    fn wraps_by_measured_width_breaks_long_words_and_keeps_newlines() {
        let f = font().unwrap();
        let narrow = wrap(f, &"i ".repeat(400), BODY_SIZE, 300.0);
        let wide = wrap(f, &"W ".repeat(400), BODY_SIZE, 300.0);
        assert!(narrow[0].len() > 2 * wide[0].len());
        for line in narrow.iter().chain(&wide) {
            assert!(f.width(line, BODY_SIZE) <= 300.0);
        }

        let word = "x".repeat(500);
        let broken = wrap(f, &format!("start {word} end"), BODY_SIZE, 200.0);
        assert_eq!(broken[0], "start");
        assert_eq!(broken.concat().replace(' ', ""), format!("start{word}end"));
        assert!(broken.iter().all(|l| f.width(l, BODY_SIZE) <= 200.0));

        let req = request(vec![ex(
            "one\ntwo\n\n\n\nthree",
            &format!("{word}\n  indented"),
        )]);
        let (_, pages) = render(&req, 5);
        let lines: Vec<&str> = pages[0].lines().collect();
        let q = lines.iter().position(|l| *l == "Q: one").unwrap();
        assert_eq!(&lines[q + 1..q + 4], ["two", "", "three"]);
        let rejoined: String = lines
            .iter()
            .filter(|l| l.starts_with("A: x") || l.starts_with('x'))
            .copied()
            .collect();
        assert_eq!(rejoined, format!("A: {word}"));
        assert!(lines.contains(&"  indented"));
    }

    #[test]
    fn no_exchanges_is_an_error() {
        let err = render_report(&request(vec![]), &ReportLimits { max_pages: 5 }).unwrap_err();
        assert!(matches!(err, PdfError::EmptyInput(_)));
    }

    #[test]
    fn estimate_is_monotone_and_close() {
        let mut last = 0;
        for (n, words) in [(1, 20), (3, 200), (8, 150), (15, 300), (25, 200), (40, 250)] {
            let req = conversation(n, words);
            let estimate = estimate_pages(&req);
            let real = render_report(&req, &ReportLimits { max_pages: 1000 })
                .unwrap()
                .pages;
            assert!(
                estimate.abs_diff(real) <= 1,
                "{n}x{words}: estimated {estimate}, real {real}"
            );
            assert!(estimate >= last, "{n}x{words}: {estimate} < {last}");
            last = estimate;
        }
        let short = conversation(40, 250);
        let mut longer = short.clone();
        longer.exchanges.push(ex("one more", &prose(400, 3)));
        assert!(estimate_pages(&longer) >= estimate_pages(&short));
    }

    /// `cargo test --release -- --ignored --nocapture report_timing`
    #[test]
    #[ignore]
    fn report_timing() {
        let req = conversation(9, 250);
        let _ = render_report(&req, &ReportLimits { max_pages: 50 }).unwrap();
        let runs = 20;
        let start = std::time::Instant::now();
        let mut out = None;
        for _ in 0..runs {
            out = Some(render_report(&req, &ReportLimits { max_pages: 50 }).unwrap());
        }
        let out = out.unwrap();
        println!(
            "{} pages, {} bytes, {:.2} ms per render, estimate {}",
            out.pages,
            out.bytes.len(),
            start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs),
            estimate_pages(&req)
        );
    }
}

//! Reads back the text of a PDF the bot produced, page by page, so tests can
//! check what a user would see and copy out of it.
//!
//! The parsing and text decoding come from `lopdf`'s reader (content-stream
//! decoding plus `/ToUnicode` CMaps), not from the code that wrote the file,
//! so a PDF whose text is not really extractable fails here instead of
//! passing by agreeing with itself.

use lopdf::Document;

/// Upper bound on the decompressed content of one page. The bot's pages are
/// tiny; the limit only keeps a broken or hostile file from eating memory.
const MAX_PAGE_CONTENT: usize = 64 * 1024 * 1024;

/// The text of each page in order, one string per page. Every text object
/// (`BT`…`ET`) ends in a newline, so a renderer that draws one line per text
/// object yields one extracted line per drawn line.
///
/// Fails if the bytes are not a PDF `lopdf` can load, if the document has no
/// pages, or if a page's text cannot be decoded.
pub fn extract_text(pdf: &[u8]) -> Result<Vec<String>, String> {
    let doc = Document::load_mem(pdf).map_err(|e| format!("not a readable PDF: {e}"))?;
    let pages = doc.get_pages();
    if pages.is_empty() {
        return Err("PDF has no pages".to_string());
    }
    pages
        .keys()
        .map(|&number| {
            doc.extract_text_with_limit(&[number], MAX_PAGE_CONTENT)
                .map_err(|e| format!("page {number}: cannot extract text: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bytes_that_are_not_a_pdf() {
        assert!(extract_text(b"definitely not a pdf").is_err());
        assert!(extract_text(b"").is_err());
    }
}

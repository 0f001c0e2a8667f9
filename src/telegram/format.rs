//! Markdown as models write it, turned into Telegram text and entities.
//!
//! Telegram's parse modes reject text with a stray `*` or `_` ("can't parse
//! entities"), and a model's Markdown (or half of it, mid-stream) is full of
//! them. So the bot never sends a parse mode: it parses the Markdown itself
//! (CommonMark, with `pulldown-cmark`) into plain text plus entities with
//! UTF-16 offsets, which Telegram cannot misread. Whatever the parser does not
//! understand stays as literal text.
//!
//! Long texts are split into messages at line or word boundaries with their
//! entities cut to match.

use frankenstein::types::{MessageEntity, MessageEntityType};
use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use super::split::{MESSAGE_LIMIT, split_points};

/// An entity over `[offset, offset + length)` in UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: MessageEntityType,
    pub offset: usize,
    pub length: usize,
    pub url: Option<String>,
    pub language: Option<String>,
}

/// Plain text with its entities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Formatted {
    pub text: String,
    pub spans: Vec<Span>,
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

struct Builder {
    out: Formatted,
    len16: usize,
    open: Vec<(MessageEntityType, usize, Option<String>, Option<String>)>,
    lists: Vec<Option<u64>>,
}

impl Builder {
    fn push(&mut self, text: &str) {
        self.len16 += utf16_len(text);
        self.out.text.push_str(text);
    }

    /// Ends the current block with a blank line, once.
    fn block_break(&mut self) {
        if self.out.text.is_empty() {
            return;
        }
        while !self.out.text.ends_with("\n\n") {
            self.push("\n");
        }
    }

    fn line_break(&mut self) {
        if !self.out.text.is_empty() && !self.out.text.ends_with('\n') {
            self.push("\n");
        }
    }

    fn open(&mut self, kind: MessageEntityType, url: Option<String>, language: Option<String>) {
        self.open.push((kind, self.len16, url, language));
    }

    fn close(&mut self, kind: MessageEntityType) {
        if let Some(index) = self.open.iter().rposition(|(k, ..)| *k == kind) {
            let (kind, offset, url, language) = self.open.remove(index);
            // Telegram rejects entities that end in whitespace less often than
            // empty ones; trailing newlines are left out of the entity.
            let trimmed = self.out.text.trim_end_matches('\n');
            let end = self.len16 - (self.out.text.len() - trimmed.len());
            if end > offset {
                self.out.spans.push(Span {
                    kind,
                    offset,
                    length: end - offset,
                    url,
                    language,
                });
            }
        }
    }
}

/// Parses Markdown into text and entities.
pub fn markdown(source: &str) -> Formatted {
    let mut b = Builder {
        out: Formatted::default(),
        len16: 0,
        open: Vec::new(),
        lists: Vec::new(),
    };
    let options = Options::ENABLE_STRIKETHROUGH;
    for event in Parser::new_ext(source, options) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph => {}
                Tag::Heading { .. } => {
                    b.block_break();
                    b.open(MessageEntityType::Bold, None, None);
                }
                Tag::BlockQuote(_) => {
                    b.block_break();
                    b.open(MessageEntityType::Blockquote, None, None);
                }
                Tag::CodeBlock(kind) => {
                    b.block_break();
                    let language = match kind {
                        CodeBlockKind::Fenced(lang) if !lang.is_empty() => Some(lang.to_string()),
                        _ => None,
                    };
                    b.open(MessageEntityType::Pre, None, language);
                }
                Tag::List(start) => {
                    b.line_break();
                    b.lists.push(start);
                }
                Tag::Item => {
                    b.line_break();
                    let depth = b.lists.len().saturating_sub(1);
                    b.push(&"  ".repeat(depth));
                    let marker = match b.lists.last_mut() {
                        Some(Some(n)) => {
                            let marker = format!("{n}. ");
                            *n += 1;
                            marker
                        }
                        _ => "• ".to_string(),
                    };
                    b.push(&marker);
                }
                Tag::Emphasis => b.open(MessageEntityType::Italic, None, None),
                Tag::Strong => b.open(MessageEntityType::Bold, None, None),
                Tag::Strikethrough => b.open(MessageEntityType::Strikethrough, None, None),
                Tag::Link { dest_url, .. } => {
                    let url = dest_url.to_string();
                    let usable = url.starts_with("http://")
                        || url.starts_with("https://")
                        || url.starts_with("tg://");
                    b.open(
                        if usable {
                            MessageEntityType::TextLink
                        } else {
                            MessageEntityType::Unknown
                        },
                        Some(url),
                        None,
                    );
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Paragraph => b.block_break(),
                TagEnd::Heading(_) => {
                    b.close(MessageEntityType::Bold);
                    b.block_break();
                }
                TagEnd::BlockQuote(_) => {
                    b.close(MessageEntityType::Blockquote);
                    b.block_break();
                }
                TagEnd::CodeBlock => {
                    b.close(MessageEntityType::Pre);
                    b.block_break();
                }
                TagEnd::List(_) => {
                    b.lists.pop();
                    if b.lists.is_empty() {
                        b.block_break();
                    }
                }
                TagEnd::Item => b.line_break(),
                TagEnd::Emphasis => b.close(MessageEntityType::Italic),
                TagEnd::Strong => b.close(MessageEntityType::Bold),
                TagEnd::Strikethrough => b.close(MessageEntityType::Strikethrough),
                TagEnd::Link => {
                    b.close(MessageEntityType::TextLink);
                    b.close(MessageEntityType::Unknown);
                }
                _ => {}
            },
            Event::Text(text) => b.push(&text),
            Event::Code(code) => {
                b.open(MessageEntityType::Code, None, None);
                b.push(&code);
                b.close(MessageEntityType::Code);
            }
            Event::SoftBreak | Event::HardBreak => b.push("\n"),
            Event::Rule => {
                b.block_break();
                b.push("———");
                b.block_break();
            }
            Event::Html(html) | Event::InlineHtml(html) => b.push(&html),
            Event::TaskListMarker(done) => b.push(if done { "☑ " } else { "☐ " }),
            _ => {}
        }
    }
    // Still open at the end (a stream cut mid-way): close what is open.
    while let Some((kind, ..)) = b.open.last().cloned() {
        b.close(kind);
    }
    let mut out = b.out;
    out.spans.retain(|s| s.kind != MessageEntityType::Unknown);
    let trimmed = out.text.trim_end().len();
    if trimmed < out.text.len() {
        let end16 = utf16_len(&out.text[..trimmed]);
        out.text.truncate(trimmed);
        for span in &mut out.spans {
            span.length = span.length.min(end16.saturating_sub(span.offset));
        }
        out.spans.retain(|s| s.length > 0);
    }
    out.spans
        .sort_by_key(|s| (s.offset, std::cmp::Reverse(s.length)));
    out
}

impl Formatted {
    /// Plain text without entities.
    pub fn plain(text: impl Into<String>) -> Formatted {
        Formatted {
            text: text.into(),
            spans: Vec::new(),
        }
    }

    /// Splits into parts of at most `limit` UTF-16 units, at line or word
    /// boundaries, cutting entities at the seams.
    pub fn split(&self, limit: usize) -> Vec<Formatted> {
        let limit = limit.clamp(1, MESSAGE_LIMIT);
        let mut parts = Vec::new();
        for (start, end) in split_points(&self.text, limit) {
            let text = self.text[start..end].to_string();
            let start16 = utf16_len(&self.text[..start]);
            let len16 = utf16_len(&text);
            let spans = self
                .spans
                .iter()
                .filter_map(|s| {
                    let from = s.offset.max(start16);
                    let to = (s.offset + s.length).min(start16 + len16);
                    (to > from).then(|| Span {
                        offset: from - start16,
                        length: to - from,
                        ..s.clone()
                    })
                })
                .collect();
            parts.push(Formatted { text, spans });
        }
        parts
    }

    /// The entities in the Bot API's shape (offsets must fit a message).
    pub fn entities(&self) -> Option<Vec<MessageEntity>> {
        if self.spans.is_empty() {
            return None;
        }
        Some(
            self.spans
                .iter()
                .map(|s| MessageEntity {
                    type_field: s.kind,
                    offset: s.offset.min(u16::MAX as usize) as u16,
                    length: s.length.min(u16::MAX as usize) as u16,
                    url: s.url.clone(),
                    user: None,
                    language: s.language.clone(),
                    custom_emoji_id: None,
                    unix_time: None,
                    date_time_format: None,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(f: &Formatted) -> Vec<(MessageEntityType, &str)> {
        let units: Vec<u16> = f.text.encode_utf16().collect();
        f.spans
            .iter()
            .map(|s| {
                let text = String::from_utf16(&units[s.offset..s.offset + s.length]).unwrap();
                (s.kind, Box::leak(text.into_boxed_str()) as &str)
            })
            .collect()
    }

    #[test]
    fn common_markdown_becomes_entities() {
        let f = markdown(
            "# Title\n\nSome **bold** and _italic_ and `code`.\n\n```rust\nfn main() {}\n```\n\n- one\n- two\n\n[link](https://example.org)",
        );
        assert_eq!(
            f.text,
            "Title\n\nSome bold and italic and code.\n\nfn main() {}\n\n• one\n• two\n\nlink"
        );
        assert_eq!(
            spans(&f),
            vec![
                (MessageEntityType::Bold, "Title"),
                (MessageEntityType::Bold, "bold"),
                (MessageEntityType::Italic, "italic"),
                (MessageEntityType::Code, "code"),
                (MessageEntityType::Pre, "fn main() {}"),
                (MessageEntityType::TextLink, "link"),
            ]
        );
        assert_eq!(f.spans[4].language.as_deref(), Some("rust"));
    }

    #[test]
    fn offsets_count_utf16_units() {
        let f = markdown("😀 **жирный**");
        assert_eq!(f.text, "😀 жирный");
        assert_eq!(f.spans[0].offset, 3, "the emoji is two UTF-16 units");
        assert_eq!(f.spans[0].length, 6);
    }

    #[test]
    fn unbalanced_markup_stays_literal_and_valid() {
        for source in [
            "2 * 3 = 6_",
            "**unclosed bold",
            "a ` b",
            "_x *y_ z*",
            "[broken](",
            "```\nopen fence",
        ] {
            let f = markdown(source);
            let len = f.text.encode_utf16().count();
            for s in &f.spans {
                assert!(
                    s.length > 0 && s.offset + s.length <= len,
                    "{source:?}: {f:?}"
                );
            }
        }
        assert_eq!(markdown("2 * 3 = 6_").text, "2 * 3 = 6_");
    }

    #[test]
    fn splitting_keeps_every_character_and_cuts_entities() {
        let long = format!("**{}**", "word ".repeat(2000).trim_end());
        let f = markdown(&long);
        let parts = f.split(4096);
        assert!(parts.len() >= 3);
        let words: usize = parts
            .iter()
            .map(|p| p.text.split_whitespace().count())
            .sum();
        assert_eq!(words, 2000);
        for part in &parts {
            let len = part.text.encode_utf16().count();
            assert!(len <= 4096);
            assert_eq!(part.spans.len(), 1);
            assert!(part.spans[0].offset + part.spans[0].length <= len);
        }
    }
}

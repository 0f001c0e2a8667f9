//! PDF documents: conversation reports and photo albums.
//!
//! `report` and `album` lay pages out and `font` embeds the Unicode font
//! they share; all three are pure functions run on worker threads. `jobs`
//! is the actor that makes them durable jobs and delivers the results.

pub mod album;
pub mod font;
pub mod jobs;
pub mod report;

pub use font::PdfError;

//! PDF documents: conversation reports and photo albums.
//!
//! `report` and `album` lay pages out and `font` embeds the Unicode font
//! they share; all three are pure functions run on worker threads. `jobs`
//! is the actor that makes them durable jobs and delivers the results;
//! `claims` is how it takes jobs from the shared table in a cluster.

pub mod album;
pub mod claims;
pub mod font;
pub mod jobs;
pub mod report;

pub use font::PdfError;

/// A4 portrait, in points: the page of every document.
const PAGE_W: f32 = 595.276;
const PAGE_H: f32 = 841.89;

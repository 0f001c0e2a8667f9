//! Benchmark of the CPU work behind `/report` and `/pdf`: reports per
//! second for a 5-page report, photos per second for a 12-megapixel JPEG,
//! and an album of 10 processed photos. One thread, then all cores.
//!
//! cargo bench --bench documents            # everything
//! cargo bench --bench documents -- report  # or photo, album: one part
//!
//! With `DOCUMENTS_REPORT_OUT=path` the report, and with
//! `DOCUMENTS_PHOTO_OUT=path` the processed photo, is written there, to
//! compare with another tool's output of the same input.

use std::io::Cursor;
use std::time::{Duration, Instant};

use actorbot::images::process::{ImageLimits, ProcessedImage, process};
use actorbot::pdf::album::{AlbumPage, render_album};
use actorbot::pdf::report::{Exchange, ReportLimits, ReportRequest, render_report};

/// The daemon's allocator, so that the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("documents benchmark on {cores} cores");
    // cargo passes `--bench` to a benchmark without the test harness.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wanted("report") {
        reports(cores);
    }
    if wanted("photo") || wanted("album") {
        photos(cores, wanted("photo"), wanted("album"));
    }
}

fn reports(cores: usize) {
    let report = five_page_report();
    let limits = ReportLimits { max_pages: 50 };
    let first = render_report(&report, &limits).expect("renders");
    if let Some(path) = std::env::var_os("DOCUMENTS_REPORT_OUT") {
        std::fs::write(&path, &first.bytes).expect("writes the report");
    }
    println!(
        "report: {} pages, {} bytes, {} exchanges",
        first.pages,
        first.bytes.len(),
        report.exchanges.len()
    );
    let per_thread = rate(Duration::from_secs(3), || {
        render_report(&report, &limits).expect("renders");
    });
    let all = parallel(cores, Duration::from_secs(3), || {
        render_report(&report, &limits).expect("renders");
    });
    println!(
        "reports/s ({} pages): {per_thread:.1} on one core, {all:.1} on {cores} cores",
        first.pages
    );
}

fn photos(cores: usize, rates: bool, album: bool) {
    let photo = twelve_megapixels();
    println!("photo: 4000 × 3000 JPEG, {} bytes", photo.len());
    let image_limits = ImageLimits::default();
    let processed = process(&photo, &image_limits).expect("processes");
    if let Some(path) = std::env::var_os("DOCUMENTS_PHOTO_OUT") {
        std::fs::write(&path, &processed.jpeg).expect("writes the processed photo");
    }
    if rates {
        photo_rates(cores, &photo, &image_limits, &processed);
    }
    if album {
        albums(&processed);
    }
}

fn photo_rates(cores: usize, photo: &[u8], image_limits: &ImageLimits, processed: &ProcessedImage) {
    let per_thread = rate(Duration::from_secs(5), || {
        process(photo, image_limits).expect("processes");
    });
    let all = parallel(cores, Duration::from_secs(5), || {
        process(photo, image_limits).expect("processes");
    });
    println!(
        "photos/s (12 MP JPEG → {} × {}): {per_thread:.2} on one core, {all:.2} on {cores} cores",
        processed.width, processed.height
    );
}

fn albums(processed: &ProcessedImage) {
    let pages: Vec<AlbumPage> = (0..10)
        .map(|i| AlbumPage {
            name: format!("photo {}", i + 1),
            jpeg: processed.jpeg.clone(),
            width: processed.width,
            height: processed.height,
        })
        .collect();
    let album = render_album(&pages).expect("renders");
    let per_thread = rate(Duration::from_secs(3), || {
        render_album(&pages).expect("renders");
    });
    println!(
        "albums/s (10 photos, {} bytes): {per_thread:.1} on one core",
        album.bytes.len()
    );
}

/// Runs `f` repeatedly for about `budget`; answers runs per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget {
        f();
        runs += 1;
    }
    runs as f64 / started.elapsed().as_secs_f64()
}

/// `rate` on `threads` threads at once; answers the total per second.
fn parallel(threads: usize, budget: Duration, f: impl Fn() + Sync) -> f64 {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| rate(budget, &f)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// Six exchanges of about 250 words, mixed scripts: five pages.
fn five_page_report() -> ReportRequest {
    let words = [
        "actors",
        "mailbox",
        "Привет",
        "καλημέρα",
        "naïve",
        "supervision",
        "backpressure",
        "throughput",
        "latency",
        "Zürich",
        "сообщение",
        "λόγος",
    ];
    let text = |seed: usize, n: usize| {
        (0..n)
            .map(|i| words[(seed * 7 + i * 13) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    ReportRequest {
        user_name: "Benchmark User".into(),
        generated_at: "2026-11-25 12:00 UTC".into(),
        exchanges: (0..6)
            .map(|i| Exchange {
                question: format!("Question {i}: {}", text(i, 20)),
                answer: text(i + 100, 250),
            })
            .collect(),
    }
}

/// A 4000 × 3000 photo-like JPEG: gradients with noise, so that it does
/// not compress to nothing.
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

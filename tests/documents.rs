//! PDF reports and photo albums end to end: the real daemon, the fake
//! Telegram (getFile, downloads, sendDocument) and the fake AI backend.
//! Every PDF the bot sends is read back with a text extractor.

mod common;

use std::io::Cursor;
use std::time::Duration;

use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use actorbot_testkit::pdf::extract_text;
use actorbot_testkit::telegram::SentMessage;
use common::{TestApp, TestAppBuilder, find_node, jpeg};

const WAIT: Duration = Duration::from_secs(60);

fn fake_ai() -> FakeAi {
    FakeAi::start(FakeAiConfig::default()).expect("the fake AI starts")
}

fn with_ai(ai: &FakeAi) -> TestAppBuilder {
    TestApp::builder()
        .env("AI_API_URL", ai.api_url())
        .env("TELEGRAM_PRIVATE_RATE", 100_000)
        .env("TELEGRAM_PRIVATE_BURST", 10_000)
        .env("TELEGRAM_GLOBAL_RATE", 100_000)
        .env("TELEGRAM_GLOBAL_BURST", 10_000)
        .env("ANTI_FLOOD_MESSAGES", 1000)
}

/// Waits until `chat` has a message containing `needle`.
async fn wait_for_text(app: &TestApp, chat: i64, needle: &str) -> SentMessage {
    if let Err(err) = app
        .tg
        .wait_until(WAIT, |s| {
            s.messages_to(chat).iter().any(|m| m.text.contains(needle))
        })
        .await
    {
        panic!(
            "{err}: no message with {needle:?} to {chat}; got {:#?}\nlog:\n{}",
            app.tg
                .messages_to(chat)
                .iter()
                .map(|m| &m.text)
                .collect::<Vec<_>>(),
            app.log()
        );
    }
    app.tg
        .messages_to(chat)
        .into_iter()
        .find(|m| m.text.contains(needle))
        .expect("found")
}

/// Waits until `chat` has `n` messages containing `needle`.
async fn wait_for_count(app: &TestApp, chat: i64, needle: &str, n: usize) {
    let count = |s: &actorbot_testkit::telegram::FakeState| {
        s.messages_to(chat)
            .iter()
            .filter(|m| m.text.contains(needle))
            .count()
    };
    if let Err(err) = app.tg.wait_until(WAIT, |s| count(s) >= n).await {
        panic!("{err}: fewer than {n} messages with {needle:?} to {chat}");
    }
}

/// Waits for the `n`th document (1-based) sent to `chat`; answers its bytes.
async fn wait_for_document(app: &TestApp, chat: i64, n: usize) -> (SentMessage, Vec<u8>) {
    let documents = |s: &actorbot_testkit::telegram::FakeState| {
        s.messages_to(chat)
            .into_iter()
            .filter(|m| m.method == "sendDocument")
            .collect::<Vec<_>>()
    };
    if let Err(err) = app.tg.wait_until(WAIT, |s| documents(s).len() >= n).await {
        panic!(
            "{err}: no document {n} for {chat}; messages: {:#?}\nlog:\n{}",
            app.tg
                .messages_to(chat)
                .iter()
                .map(|m| (&m.method, &m.text))
                .collect::<Vec<_>>(),
            app.log()
        );
    }
    let message = app.tg.read(documents).remove(n - 1);
    let file = message.file.clone().expect("a document carries a file");
    assert_eq!(file.content_type.as_deref(), Some("application/pdf"));
    assert!(file.bytes.starts_with(b"%PDF-"), "not a PDF");
    (message, file.bytes)
}

/// Has `user` ask `question`, answered with `answer`, and waits for it.
async fn exchange(app: &TestApp, ai: &FakeAi, user: i64, question: &str, answer: &str) {
    ai.answer_next(answer);
    app.tg.inject_text(user, question);
    let tail: String = answer
        .split_whitespace()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" ");
    wait_for_text(app, user, &tail).await;
}

fn long_answer(topic: &str, words: usize) -> String {
    (0..words)
        .map(|i| format!("{topic}{}", i % 17))
        .collect::<Vec<_>>()
        .join(" ")
}

#[actix_rt::test]
async fn report_holds_the_conversation_over_several_pages_cyrillic_included() {
    let ai = fake_ai();
    let app = with_ai(&ai).start().await;
    let user = 71_001;
    exchange(
        &app,
        &ai,
        user,
        "Привет! Как работает фотосинтез?",
        "Фотосинтез превращает свет в химическую энергию. Ελληνικά: καλημέρα. Café, naïve, Zürich.",
    )
    .await;
    for i in 0..6 {
        exchange(
            &app,
            &ai,
            user,
            &format!("Long question {i}"),
            &long_answer(&format!("word{i}x"), 450),
        )
        .await;
    }
    app.tg.inject_text(user, "/report");
    let (message, pdf) = wait_for_document(&app, user, 1).await;
    let pages = extract_text(&pdf).expect("the report's text extracts");
    assert!(
        pages.len() >= 3,
        "a long conversation spans pages: {}",
        pages.len()
    );
    assert!(
        message.text.contains(&format!("{} pages", pages.len())),
        "{}",
        message.text
    );
    // Lines wrap anywhere: compare with whitespace collapsed.
    let all = pages
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "Привет! Как работает фотосинтез?",
        "Фотосинтез превращает свет в химическую энергию.",
        "καλημέρα",
        "Café, naïve, Zürich.",
        "Long question 0",
        "Long question 5",
        "word5x16",
    ] {
        assert!(
            all.contains(needle),
            "{needle:?} missing from the report:\n{}",
            &all[..all.len().min(1500)]
        );
    }
    let last = pages.len();
    assert!(
        pages[last - 1].contains(&format!("Page {last} of {last}")),
        "page numbers: {}",
        pages[last - 1]
    );
    // /stats counts the report.
    app.tg.inject_text(user, "/stats");
    wait_for_text(&app, user, "Reports: 1").await;
}

#[actix_rt::test]
async fn report_without_a_conversation_says_so() {
    let app = TestApp::builder().start().await;
    app.tg.inject_text(71_002, "/report");
    wait_for_text(&app, 71_002, "nothing to report yet").await;
    app.tg.inject_text(71_002, "/pdf");
    wait_for_text(&app, 71_002, "Send me one or more photos first").await;
}

#[actix_rt::test]
async fn three_photos_become_a_two_page_pdf_and_a_polite_error() {
    let app = TestApp::builder()
        .env("ANTI_FLOOD_MESSAGES", 1000)
        .start()
        .await;
    let user = 72_001;
    // Stored 300 × 200 (landscape) with EXIF orientation 6: upright, it is
    // portrait.
    app.tg
        .inject_photo(user, with_orientation(&jpeg(300, 200), 6), None);
    wait_for_text(&app, user, "1 photo collected").await;
    app.tg
        .inject_document(user, png(320, 240), "scan.png", "image/png");
    wait_for_text(&app, user, "2 photos collected").await;
    let mut corrupt = jpeg(300, 200);
    corrupt.truncate(corrupt.len() / 3);
    corrupt.extend_from_slice(&[0u8; 64]);
    app.tg.inject_photo(user, corrupt, None);
    let refusal = wait_for_text(&app, user, "I could not read photo 3").await;
    assert!(refusal.text.contains("was not added"), "{}", refusal.text);

    app.tg.inject_text(user, "/pdf");
    let (message, pdf) = wait_for_document(&app, user, 1).await;
    assert!(message.text.contains("2 photos"), "{}", message.text);
    let pages = extract_text(&pdf).expect("the album extracts");
    assert_eq!(pages.len(), 2, "one page per good photo");
    assert!(pages[0].contains("photo 1"), "{:?}", pages[0]);
    assert!(pages[1].contains("scan.png"), "{:?}", pages[1]);

    // The collection starts afresh.
    app.tg.inject_text(user, "/pdf");
    wait_for_text(&app, user, "Send me one or more photos first").await;

    // The same photo sent twice is processed once.
    let processed = processed_images(&app).await;
    let (file_id, unique) = app.tg.add_file(png(320, 240), "png");
    app.tg.inject_stored_photo(user, &file_id, &unique);
    wait_for_count(&app, user, "1 photo collected", 2).await;
    app.tg.inject_stored_photo(user, &file_id, &unique);
    wait_for_count(&app, user, "2 photos collected", 2).await;
    assert_eq!(processed_images(&app).await, processed + 1);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("actorbot_images_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

/// Photos the image pool has processed (not served from its cache).
async fn processed_images(app: &TestApp) -> u64 {
    let (_, metrics) = app.get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("actorbot_images_total{outcome=\"processed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_30000_by_30000_image_is_refused_without_decoding() {
    let app = TestApp::builder().start().await;
    let user = 73_001;
    app.tg.inject_document(
        user,
        huge_png_header(30_000, 30_000),
        "bomb.png",
        "image/png",
    );
    let reply = wait_for_text(&app, user, "bomb.png is too large to process").await;
    assert!(reply.text.contains("30000 × 30000"), "{}", reply.text);
    // Refused from the header: the daemon never held the 3.6 GB of pixels.
    let (_, metrics) = app.get("/metrics").await;
    let rss: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("actorbot_process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("process metrics on Linux");
    assert!(rss < 500e6, "resident memory {rss} bytes");
}

#[actix_rt::test]
async fn an_injected_worker_panic_is_survived_and_the_job_delivered() {
    let ai = fake_ai();
    let app = with_ai(&ai).env("FAULT_PANIC", "render:1").start().await;
    let user = 74_001;
    exchange(
        &app,
        &ai,
        user,
        "What is a panic?",
        "A panic unwinds the thread.",
    )
    .await;
    app.tg.inject_text(user, "/report");
    let (_, pdf) = wait_for_document(&app, user, 1).await;
    let text = extract_text(&pdf).expect("extracts").join("\n");
    assert!(text.contains("A panic unwinds the thread."), "{text}");
    let (_, actors) = app.get_json("/actors").await;
    let pdf_actor = find_node(&actors, "pdf").unwrap_or_else(|| panic!("no pdf actor in {actors}"));
    assert_eq!(pdf_actor["restarts"], 1, "{pdf_actor}");
    app.wait_for_metric("actorbot_actor_restarts{actor=\"pdf\"} 1", WAIT)
        .await;
    assert!(app.log().contains("injected fault"));
}

#[actix_rt::test]
async fn kill_9_with_jobs_queued_then_restart_delivers_every_report() {
    let ai = fake_ai();
    let data_dir = common::unique_dir("pdf-kill9");
    let users: Vec<i64> = (1..=5).map(|i| 75_000 + i).collect();
    let app = with_ai(&ai)
        .data_dir(data_dir.clone())
        .env("PDF_SEMAPHORE_LIMIT", 1)
        .env(
            "FAULT_HOLD",
            format!("render={}", data_dir.join("gate-never-opened").display()),
        )
        .start()
        .await;
    for user in &users {
        exchange(
            &app,
            &ai,
            *user,
            &format!("Question of {user}"),
            &format!("Answer for {user}."),
        )
        .await;
    }
    for user in &users {
        app.tg.inject_text(*user, "/report");
    }
    // One renders, one waits next: the three behind are told their place.
    let told = |s: &actorbot_testkit::telegram::FakeState| {
        users
            .iter()
            .filter(|u| {
                s.messages_to(**u)
                    .iter()
                    .any(|m| m.text.contains("in the queue"))
            })
            .count()
    };
    app.tg
        .wait_until(WAIT, |s| told(s) >= 3)
        .await
        .unwrap_or_else(|e| {
            let log = app.log();
            let jobs: Vec<&str> = log.lines().filter(|l| l.contains("pdf::jobs")).collect();
            panic!(
                "{e}: {} told their place\n{}",
                app.tg.read(told),
                jobs.join("\n")
            )
        });
    // Every job recorded: submissions are written concurrently, and one
    // told its place does not mean that those before it are in the table.
    app.wait_for_log_count("accepted: kind=report", users.len(), WAIT)
        .await;
    assert!(
        app.tg.read(|s| users
            .iter()
            .all(|u| s.messages_to(*u).iter().all(|m| m.method != "sendDocument"))),
        "nothing delivered before the kill"
    );
    let (tg, _) = app.kill();
    let app = with_ai(&ai)
        .with_fake(tg)
        .data_dir(data_dir)
        .env("PDF_SEMAPHORE_LIMIT", 2)
        .start()
        .await;
    for user in &users {
        let (_, pdf) = wait_for_document(&app, *user, 1).await;
        let text = extract_text(&pdf).expect("extracts").join("\n");
        assert!(text.contains(&format!("Answer for {user}.")), "{text}");
    }
    app.wait_for_log("resumed 5 PDF jobs", WAIT).await;
}

// --- image fixtures, made in code -------------------------------------------

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, _| {
        image::Rgba([0, 128, (x % 256) as u8, 200])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation`, after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF header (big-endian), one IFD with one entry: Orientation (0x0112),
    // SHORT, count 1, the value left-aligned in the 4-byte field.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((segment.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A PNG signature and IHDR claiming `width` × `height`, then a few bytes:
/// a decompression bomb's header without the bomb.
fn huge_png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    out.extend_from_slice(&[0u8; 32]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[actix_rt::test]
async fn a_document_is_uploaded_with_a_content_length() {
    let ai = fake_ai();
    let app = with_ai(&ai).start().await;
    // As a proxy in front of a local Bot API server may: chunked bodies
    // are refused with 411.
    app.tg.require_content_length();
    let user = 76_001;
    exchange(&app, &ai, user, "What is a length?", "A count of bytes.").await;
    app.tg.inject_text(user, "/report");
    let (_, pdf) = wait_for_document(&app, user, 1).await;
    let text = extract_text(&pdf).expect("extracts").join("\n");
    assert!(text.contains("A count of bytes."), "{text}");
}

#[actix_rt::test]
async fn a_local_bot_api_server_s_files_are_read_from_disk() {
    let files = common::unique_dir("local-bot-api");
    let app = TestApp::builder()
        .env("TELEGRAM_LOCAL_MODE", "true")
        .start()
        .await;
    // As `telegram-bot-api --local` does: getFile answers a path on this
    // machine, and nothing can be downloaded over HTTP.
    app.tg.local_mode(&files);
    let user = 77_001;
    app.tg.inject_photo(user, jpeg(300, 200), None);
    wait_for_text(&app, user, "1 photo collected").await;
    app.tg.inject_text(user, "/pdf");
    let (message, pdf) = wait_for_document(&app, user, 1).await;
    assert!(message.text.contains("1 photo"), "{}", message.text);
    assert_eq!(extract_text(&pdf).expect("the album extracts").len(), 1);
}

#[actix_rt::test]
async fn a_local_bot_api_server_without_local_mode_is_named_in_the_log() {
    let files = common::unique_dir("local-bot-api");
    let app = TestApp::builder().start().await;
    app.tg.local_mode(&files);
    let user = 77_002;
    app.tg.inject_photo(user, jpeg(300, 200), None);
    let refusal = wait_for_text(&app, user, "it was not added").await;
    assert!(refusal.text.contains("photo 1"), "{}", refusal.text);
    app.wait_for_log("TELEGRAM_LOCAL_MODE=true", Duration::from_secs(5))
        .await;
}

#[actix_rt::test]
async fn a_photo_telegram_will_not_hand_over_is_called_too_large() {
    let app = TestApp::builder().start().await;
    let user = 77_003;
    // Over the Bot API's 20 MB, in a message that does not say its size:
    // getFile answers 400 "file is too big".
    let (file_id, unique) = app.tg.add_file(vec![0u8; 21 << 20], "jpg");
    app.tg.inject_raw(serde_json::json!({"message": {
        "message_id": 1, "date": 1_795_600_000,
        "chat": {"id": user, "type": "private", "first_name": "Big"},
        "from": {"id": user, "is_bot": false, "first_name": "Big"},
        "photo": [{"file_id": file_id, "file_unique_id": unique, "width": 8000, "height": 6000}],
    }}));
    let reply = wait_for_text(&app, user, "is too large").await;
    assert!(reply.text.contains("up to 20 MB"), "{}", reply.text);
}

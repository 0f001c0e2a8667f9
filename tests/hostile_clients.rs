//! The local HTTP endpoint under clients that do not play fair: oversized
//! bodies refused before they are read, slow clients timed out, wrong
//! methods and paths answered plainly, and no secret in the log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TOKEN, TestApp, WEBHOOK_SECRET};

/// The webhook's bound on a body, as the daemon has it.
const MAX_BODY: usize = actorbot::intake::webhook::MAX_BODY;

/// Sends `head` (and `body`) on a fresh connection and reads the status
/// line of the answer, with a deadline: a server that waited for the rest
/// of a body it was never sent would fail this.
fn exchange(app: &TestApp, head: &str, body: &[u8], deadline: Duration) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(app.http_addr).expect("connects");
    stream.set_read_timeout(Some(deadline)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // The server may close as soon as it has answered.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(err) => panic!("no answer within {deadline:?} to {head:?}: {err}"),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
    (status, started.elapsed())
}

fn webhook_head(secret: &str, extra: &str) -> String {
    format!(
        "POST /telegram/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Telegram-Bot-Api-Secret-Token: {secret}\r\n{extra}\r\n"
    )
}

#[actix_rt::test]
async fn oversized_and_unauthorized_bodies_are_refused_before_they_are_read() {
    let app = TestApp::builder().webhook().start().await;
    let quick = Duration::from_secs(3);

    // A declared length over the bound: 413 with none of the body sent.
    let head = webhook_head(
        WEBHOOK_SECRET,
        &format!("Content-Length: {}\r\n", MAX_BODY * 4),
    );
    assert_eq!(exchange(&app, &head, b"", quick).0, 413);

    // A wrong secret: 401, also without waiting for the body.
    let head = webhook_head("wrong", &format!("Content-Length: {}\r\n", MAX_BODY / 2));
    assert_eq!(exchange(&app, &head, b"", quick).0, 401);

    // A chunked body that passes the bound as it arrives.
    let head = webhook_head(WEBHOOK_SECRET, "Transfer-Encoding: chunked\r\n");
    let chunk = vec![b' '; 64 * 1024];
    let mut body = Vec::new();
    for _ in 0..(MAX_BODY / chunk.len() + 2) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(exchange(&app, &head, &body, quick).0, 413);

    // Still serving.
    app.tg.inject_text(901, "/start");
    app.tg
        .wait_for_messages(901, 1, Duration::from_secs(20))
        .await
        .expect("answered after the hostile requests");
    let log = app.log();
    assert!(log.contains("refused a body over"), "{log}");
    for secret in [TOKEN, WEBHOOK_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[actix_rt::test]
async fn wrong_methods_unknown_paths_and_slow_clients_get_plain_answers() {
    let app = TestApp::builder().start().await;
    let quick = Duration::from_secs(3);
    let request = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    };
    assert_eq!(
        exchange(&app, &request("GET", "/health"), b"", quick).0,
        200
    );
    assert_eq!(
        exchange(&app, &request("DELETE", "/health"), b"", quick).0,
        405
    );
    assert_eq!(
        exchange(&app, &request("GET", "/dead-letters/1/retry"), b"", quick).0,
        405
    );
    assert_eq!(
        exchange(&app, &request("GET", "/no-such-page"), b"", quick).0,
        404
    );

    // A client that sends half a request head and then nothing is answered
    // 408 and let go, not waited on.
    let (status, after) = exchange(
        &app,
        "GET /health HTTP/1.1\r\nHost: x\r\n",
        b"",
        Duration::from_secs(15),
    );
    assert_eq!(status, 408);
    assert!(after < Duration::from_secs(12), "held for {after:?}");
}

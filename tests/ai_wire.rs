//! The AI client against answers as untidy as real backends send them,
//! played byte for byte by the testkit's scripted server: bodies ended by
//! closing the connection, CR and CRLF line ends, events split inside a
//! UTF-8 character, pings and extra SSE fields, a usage chunk, an error in
//! the stream, plain JSON where a stream was asked for, stalls.

use std::time::{Duration, Instant};

use actorbot::ai::client::{AiError, Backend, ChatMessage, Progress, complete};
use actorbot_testkit::wire::{Scripted, Step, close_delimited_head, completion_chunk};

fn backend(url: String) -> Backend {
    Backend {
        url,
        api_key: String::new(),
        model: "scripted".into(),
        max_tokens: 64,
        stream: true,
        timeout: Duration::from_secs(10),
        first_token_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
    }
}

/// Asks the scripted server once; answers the result and the pieces shown.
async fn ask(server: &Scripted, backend: Backend) -> (Result<String, AiError>, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let http = reqwest::Client::new();
    let question = [ChatMessage::new("user", "hello")];
    let result = complete(&http, &backend, &question, Some(&tx)).await;
    drop(tx);
    let mut shown = String::new();
    while let Some(progress) = rx.recv().await {
        match progress {
            Progress::Delta(piece) => shown.push_str(&piece),
            Progress::Restart => shown.clear(),
        }
    }
    assert_eq!(server.completions(), 1);
    (result, shown)
}

fn stream(end: &str, pieces: &[&str]) -> Vec<Step> {
    let mut steps = vec![close_delimited_head("text/event-stream")];
    for piece in pieces {
        steps.push(Step::text(&completion_chunk(piece, None, end)));
        steps.push(Step::Pause(Duration::from_millis(5)));
    }
    steps.push(Step::text(&completion_chunk("", Some("stop"), end)));
    steps.push(Step::text(&format!("data: [DONE]{end}")));
    steps
}

#[actix_rt::test]
async fn a_stream_ended_by_closing_the_connection_is_read_to_the_end() {
    for end in ["\n\n", "\r\n\r\n", "\r\r"] {
        let server = Scripted::start(stream(end, &["Hello", ", ", "world"])).unwrap();
        let (result, shown) = ask(&server, backend(format!("{}/v1", server.url()))).await;
        assert_eq!(result.expect("a whole answer"), "Hello, world", "{end:?}");
        assert!("Hello, world".starts_with(&shown), "{shown:?}");
    }
}

#[actix_rt::test]
async fn events_split_anywhere_even_inside_a_character_are_put_together() {
    let event = completion_chunk("Привет, мир", None, "\n\n");
    let bytes = event.as_bytes();
    // Split inside the first two-byte letter, and between the two LFs.
    let cut = event.find('П').unwrap() + 1;
    let mut steps = vec![close_delimited_head("text/event-stream")];
    for part in [
        &bytes[..cut],
        &bytes[cut..bytes.len() - 1],
        &bytes[bytes.len() - 1..],
    ] {
        steps.push(Step::Write(part.to_vec()));
        steps.push(Step::Pause(Duration::from_millis(20)));
    }
    steps.push(Step::text(&completion_chunk("", Some("stop"), "\n\n")));
    steps.push(Step::text("data: [DONE]\n\n"));
    let server = Scripted::start(steps).unwrap();
    let (result, _) = ask(&server, backend(format!("{}/v1", server.url()))).await;
    assert_eq!(result.expect("a whole answer"), "Привет, мир");
}

#[actix_rt::test]
async fn pings_fields_and_a_usage_chunk_are_read_past() {
    let usage = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    let steps = vec![
        close_delimited_head("text/event-stream; charset=utf-8"),
        Step::text(": ping\n\n"),
        Step::text("event: message\nid: 1\nretry: 1000\n"),
        Step::text(&completion_chunk("Hi", None, "\n\n")),
        Step::text(": keep-alive\r\n\r\n"),
        Step::text(&completion_chunk(" there", Some("stop"), "\n\n")),
        Step::text(&format!("data: {usage}\n\n")),
        Step::text("data: [DONE]\n\n"),
    ];
    let server = Scripted::start(steps).unwrap();
    let (result, _) = ask(&server, backend(server.url())).await;
    assert_eq!(result.expect("a whole answer"), "Hi there");
}

#[actix_rt::test]
async fn an_error_in_the_stream_is_not_passed_off_as_an_answer() {
    let steps = vec![
        close_delimited_head("text/event-stream"),
        Step::text(&completion_chunk("Half", None, "\n\n")),
        Step::text(
            "data: {\"error\": {\"message\": \"model overloaded\", \"type\": \"server_error\"}}\n\n",
        ),
    ];
    let server = Scripted::start(steps).unwrap();
    let (result, _) = ask(&server, backend(format!("{}/v1/", server.url()))).await;
    match result {
        Err(AiError::Truncated { partial }) => assert_eq!(partial, "Half"),
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn plain_json_where_a_stream_was_asked_is_one_answer() {
    let body = serde_json::json!({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Whole"}, "finish_reason": "stop"}]});
    let steps = vec![
        close_delimited_head("application/json"),
        Step::text(&body.to_string()),
    ];
    let server = Scripted::start(steps).unwrap();
    let (result, shown) = ask(&server, backend(format!("{}/v1", server.url()))).await;
    assert_eq!(result.expect("an answer"), "Whole");
    assert_eq!(shown, "Whole");
}

#[actix_rt::test]
async fn a_stream_that_stalls_fails_after_the_idle_timeout_not_the_request_timeout() {
    let idle = Duration::from_millis(300);
    let mut steps = vec![close_delimited_head("text/event-stream")];
    steps.push(Step::text(&completion_chunk("One", None, "\n\n")));
    // Pings keep coming, but no event: still a stall.
    for _ in 0..20 {
        steps.push(Step::Pause(Duration::from_millis(100)));
        steps.push(Step::text(": ping\n\n"));
    }
    let server = Scripted::start(steps).unwrap();
    let started = Instant::now();
    let (result, _) = ask(
        &server,
        Backend {
            idle_timeout: idle,
            ..backend(format!("{}/v1", server.url()))
        },
    )
    .await;
    let took = started.elapsed();
    assert!(
        matches!(&result, Err(AiError::Truncated { partial }) if partial == "One"),
        "{result:?}"
    );
    assert!(took < idle * 5, "waited {took:?} for a stalled stream");
}

#[actix_rt::test]
async fn a_backend_silent_before_its_first_event_fails_after_the_first_token_timeout() {
    let first = Duration::from_millis(300);
    let steps = vec![
        close_delimited_head("text/event-stream"),
        Step::Pause(Duration::from_secs(3)),
        Step::text(&completion_chunk("Late", Some("stop"), "\n\n")),
    ];
    let server = Scripted::start(steps).unwrap();
    let started = Instant::now();
    let (result, _) = ask(
        &server,
        Backend {
            first_token_timeout: first,
            ..backend(format!("{}/v1", server.url()))
        },
    )
    .await;
    assert!(
        matches!(result, Err(AiError::Timeout(t)) if t == first),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[actix_rt::test]
async fn refusals_say_their_status_and_wait_as_the_backend_asks() {
    let cases = [
        (
            "retry-after-ms: 1500\r\n",
            429,
            Some(Duration::from_millis(1500)),
        ),
        ("Retry-After: 7\r\n", 429, Some(Duration::from_secs(7))),
        ("", 401, None),
    ];
    for (header, code, wait) in cases {
        let body = r#"{"error": {"message": "nope", "type": "x"}}"#;
        let head = format!(
            "HTTP/1.1 {code} Whatever\r\nContent-Type: application/json\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let server = Scripted::start(vec![Step::text(&head)]).unwrap();
        let (result, _) = ask(&server, backend(format!("{}/v1", server.url()))).await;
        match result {
            Err(AiError::Status {
                code: got,
                message,
                retry_after,
            }) => {
                assert_eq!((got, message.as_str(), retry_after), (code, "nope", wait));
            }
            other => panic!("{other:?}"),
        }
    }
}

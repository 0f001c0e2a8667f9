//! `actorbot sandbox`: the web chat, driven in headless Chromium as a
//! newcomer would use it, with no token and no network.

mod common;

use std::time::Duration;

use common::TestApp;

/// The conversation the page plays: each step waits for the bot's answer.
const STEPS: [&str; 5] = [
    "/start",
    "What is an actor?",
    "/report~document",
    "photo",
    "/pdf~document",
];

/// The `data-NAME` attribute of the demo step `n` in the page's DOM.
fn step_attr(dom: &str, n: usize, name: &str) -> Option<String> {
    let at = dom.find(&format!("data-step=\"{n}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("data-{name}=\"");
    let value = &tag[tag.find(&key)? + key.len()..];
    Some(value[..value.find('"')?].to_string())
}

#[actix_rt::test]
async fn a_newcomer_chats_with_the_sandbox_in_a_browser() {
    if !common::chromium_or_skip("the sandbox's headless-browser test") {
        return;
    }
    let app = TestApp::builder().sandbox().start().await;
    let (status, _) = app.get("/sandbox").await;
    assert_eq!(status, 200);

    let demo: Vec<String> = STEPS
        .iter()
        .map(|s| s.replace('?', "%3F").replace(' ', "%20"))
        .collect();
    let url = format!("{}/sandbox?demo={}", app.base_url(), demo.join("|"));
    // Page time stands still while the page waits for the bot, so a
    // generous budget costs nothing once the conversation is over.
    let check = common::check_page(url, "sandbox.png", Duration::from_secs(60)).await;
    assert!(
        check.console_errors.is_empty(),
        "console: {:?}",
        check.console_errors
    );
    let dom = &check.dom;
    assert!(
        dom.contains("data-demo=\"done\""),
        "the demo did not end: {dom}"
    );
    for n in 1..=STEPS.len() {
        assert_eq!(
            step_attr(dom, n, "answered").as_deref(),
            Some("true"),
            "step {n} ({}) unanswered: {dom}",
            STEPS[n - 1]
        );
    }
    assert!(dom.contains("Hello, Alice!"), "{dom}");
    // The answer streamed in as drafts first, then came as one message.
    let drafts: usize = step_attr(dom, 2, "drafts")
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    assert!(drafts >= 2, "{drafts} drafts of the streamed answer");
    assert!(dom.contains("offline stand-in, not an AI model"), "{dom}");
    assert!(
        !dom.contains("class=\"msg bot draft\""),
        "a draft is left over: {dom}"
    );

    // Two documents, each a PDF the page links to.
    let links: Vec<&str> = dom
        .match_indices("/sandbox/api/files/")
        .map(|(at, _)| {
            let rest = &dom[at..];
            &rest[..rest.find('"').unwrap_or(rest.len())]
        })
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    let client = awc::Client::default();
    let mut texts = Vec::new();
    for link in &links {
        let mut response = client
            .get(format!("{}{link}", app.base_url()))
            .send()
            .await
            .expect("the document downloads");
        assert_eq!(response.status().as_u16(), 200);
        let bytes = response.body().limit(50 << 20).await.expect("a body");
        assert!(bytes.starts_with(b"%PDF"), "{link} is not a PDF");
        texts.push(
            actorbot_testkit::pdf::extract_text(&bytes)
                .unwrap_or_default()
                .join(" "),
        );
    }
    // The report holds the conversation.
    assert!(
        texts[0].contains("What is an actor"),
        "the report: {}",
        texts[0]
    );
}

#[actix_rt::test]
async fn the_sandbox_needs_no_token_and_keeps_its_data_apart() {
    let app = TestApp::builder()
        .sandbox()
        .env("BOT_TOKEN", "")
        .start()
        .await;
    let (status, state) = app.get_json("/sandbox/api/state").await;
    assert_eq!(status, 200);
    assert_eq!(state["offline_ai"], true, "{state}");
    let commands = state["commands"].as_array().expect("the commands menu");
    assert!(commands.iter().any(|c| c["command"] == "report"), "{state}");
    assert!(
        app.data_dir
            .join("sandbox")
            .join("actorbot.sqlite3")
            .exists()
    );
    let log = app.log();
    assert!(log.contains("/sandbox"), "{log}");
}

//! The daemon behind an HTTP proxy: the Bot API through CONNECT tunnels,
//! the AI backend through the same proxy, `NO_PROXY` honoured.

mod common;

use std::time::Duration;

use actorbot_testkit::http_proxy::HttpProxy;
use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use common::TestApp;

const WAIT: Duration = Duration::from_secs(20);

#[actix_rt::test]
async fn telegram_and_the_ai_backend_go_through_the_proxy_with_its_credentials() {
    let (user, password) = ("operator", "pr0xy-s3cret");
    let proxy = HttpProxy::with_credentials(user, password).expect("the proxy starts");
    let ai = FakeAi::start(FakeAiConfig::default()).expect("the fake AI starts");
    let proxy_url = proxy
        .url()
        .replace("://", &format!("://{user}:{password}@"));
    let app = common::unthrottled(TestApp::builder())
        .env("HTTP_PROXY", &proxy_url)
        .env("AI_API_URL", ai.api_url())
        .start()
        .await;
    let chat = 91_001;
    app.tg.inject_text(chat, "/start");
    app.tg.inject_text(chat, "What is a proxy?");
    app.tg
        .wait_for_messages(chat, 2, WAIT)
        .await
        .expect("both answered");
    assert_eq!(ai.requests().len(), 1);
    assert!(proxy.tunnels() >= 1, "the Bot API was reached directly");
    assert!(
        proxy.forwarded() >= 1,
        "the AI backend was reached directly"
    );
    assert_eq!(proxy.refused(), 0, "the credentials were not sent");
    let log = app.log();
    assert!(
        log.contains(&format!(
            "through the proxy at {}",
            proxy.url().trim_start_matches("http://")
        )),
        "{log}"
    );
    assert!(
        !log.contains(password),
        "the proxy's password reached the log"
    );
}

#[actix_rt::test]
async fn hosts_in_no_proxy_are_reached_directly() {
    let proxy = HttpProxy::start().expect("the proxy starts");
    let app = common::unthrottled(TestApp::builder())
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "localhost,127.0.0.1")
        .start()
        .await;
    let chat = 91_002;
    app.tg.inject_text(chat, "/start");
    app.tg
        .wait_for_messages(chat, 1, WAIT)
        .await
        .expect("answered");
    assert_eq!(proxy.tunnels() + proxy.forwarded(), 0);
}

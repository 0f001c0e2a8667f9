//! Webhook mode: Telegram posts updates; the secret header is checked.

mod common;

use std::time::Duration;

use common::{TestApp, WEBHOOK_SECRET};
use serde_json::json;

#[actix_rt::test]
async fn updates_with_the_right_secret_are_answered_and_others_refused() {
    let app = TestApp::builder().webhook().start().await;
    let webhook = app.tg.webhook().expect("setWebhook was called");
    assert_eq!(webhook.secret_token.as_deref(), Some(WEBHOOK_SECRET));
    assert!(webhook.max_connections.is_some());
    assert!(!webhook.allowed_updates.is_empty());

    // The fake delivers the update to the daemon with the secret header.
    app.tg.inject_text(801, "/start");
    app.tg
        .wait_for_messages(801, 1, Duration::from_secs(20))
        .await
        .expect("answered through the webhook");

    let client = awc::Client::default();
    let url = format!("{}/telegram/webhook", app.base_url());
    let update = json!({"update_id": 999_001, "message": {"message_id": 1, "date": 0,
        "chat": {"id": 802, "type": "private"}, "from": {"id": 802, "is_bot": false, "first_name": "Eve"},
        "text": "/start", "entities": [{"offset": 0, "length": 6, "type": "bot_command"}]}});

    let wrong = client
        .post(&url)
        .insert_header(("X-Telegram-Bot-Api-Secret-Token", "not-the-secret"))
        .send_json(&update)
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let missing = client.post(&url).send_json(&update).await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);

    let broken = client
        .post(&url)
        .insert_header(("X-Telegram-Bot-Api-Secret-Token", WEBHOOK_SECRET))
        .insert_header(("Content-Type", "application/json"))
        .send_body("{not json")
        .await
        .unwrap();
    assert_eq!(
        broken.status().as_u16(),
        200,
        "broken JSON is skipped, not retried"
    );

    let right = client
        .post(&url)
        .insert_header(("X-Telegram-Bot-Api-Secret-Token", WEBHOOK_SECRET))
        .send_json(&update)
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    app.tg
        .wait_for_messages(802, 1, Duration::from_secs(20))
        .await
        .expect("the update posted with the right secret is answered");
    assert!(app.log().contains("refused a request with a wrong secret"));
}

//! The Bot API emulator's control API, as a tool in another process uses
//! it: users' messages and photos in, the bot's replies out, long-polled.

use std::time::{Duration, Instant};

use actorbot_emulator::telegram::{FakeTelegram, FakeTelegramConfig};
use serde_json::{Value, json};

const TOKEN: &str = "4242:CONTROL-api";

async fn get(url: String) -> Value {
    let mut response = awc::Client::default()
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the emulator answers");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().limit(1 << 20).await.expect("JSON")
}

/// A Bot API call, as the bot makes it.
async fn bot(tg: &FakeTelegram, method: &str, params: Value) -> Value {
    let mut response = awc::Client::default()
        .post(format!("{}/bot{TOKEN}/{method}", tg.api_url()))
        .send_json(&params)
        .await
        .expect("the emulator answers");
    response.json().limit(1 << 20).await.expect("JSON")
}

#[actix_rt::test]
async fn a_tool_sends_as_users_and_long_polls_for_the_bots_replies() {
    let tg = FakeTelegram::start(FakeTelegramConfig {
        token: TOKEN.into(),
        ..Default::default()
    })
    .expect("the emulator starts");
    let base = tg.api_url();
    let client = awc::Client::default();

    let mut sent = client
        .post(format!("{base}/_fake/updates"))
        .send_json(&json!({"chat_id": 5, "text": "/start"}))
        .await
        .unwrap();
    assert!(sent.json::<Value>().await.unwrap()["update_id"].is_i64());
    let image = vec![0xFFu8, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];
    let mut photo = client
        .post(format!("{base}/_fake/photo?chat_id=5&caption=look"))
        .send_body(image.clone())
        .await
        .unwrap();
    assert!(photo.status().is_success());
    let empty = client
        .post(format!("{base}/_fake/photo?chat_id=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status().as_u16(), 400, "a photo needs a body");
    assert!(photo.json::<Value>().await.unwrap()["update_id"].is_i64());

    // The bot sees a command and a photo it can download.
    let updates = bot(&tg, "getUpdates", json!({})).await;
    let updates = updates["result"].as_array().unwrap();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[0]["message"]["text"], "/start");
    assert_eq!(updates[0]["message"]["entities"][0]["type"], "bot_command");
    let message = &updates[1]["message"];
    assert_eq!(message["caption"], "look");
    let file_id = message["photo"][1]["file_id"].as_str().unwrap();
    let file = bot(&tg, "getFile", json!({"file_id": file_id})).await;
    let path = file["result"]["file_path"].as_str().unwrap();
    let mut download = client
        .get(format!("{base}/file/bot{TOKEN}/{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.body().await.unwrap().to_vec(), image);

    // Nothing yet; without a count to wait on, the answer comes at once.
    let chat = get(format!("{base}/_fake/chat?chat_id=5&timeout=10")).await;
    assert_eq!(chat, json!({"messages": 0, "drafts": 0, "new": []}));

    // A long poll ends when the bot replies, with what it sent.
    let waiting = actix_rt::spawn(get(format!(
        "{base}/_fake/chat?chat_id=5&messages=0&drafts=0&timeout=20"
    )));
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    bot(&tg, "sendMessage", json!({"chat_id": 5, "text": "Hello"})).await;
    let chat = waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(chat["messages"], 1, "{chat}");
    assert_eq!(chat["new"][0]["text"], "Hello", "{chat}");
    assert!(chat["new"][0]["file"].is_null(), "{chat}");

    // Drafts wake it too; `new` starts after the count given.
    let waiting = actix_rt::spawn(get(format!(
        "{base}/_fake/chat?chat_id=5&messages=1&drafts=0&timeout=20"
    )));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    bot(
        &tg,
        "sendMessageDraft",
        json!({"chat_id": 5, "draft_id": 1, "text": "Thinking"}),
    )
    .await;
    let chat = waiting.await.unwrap();
    assert_eq!(chat["drafts"], 1, "{chat}");
    assert_eq!(chat["new"], json!([]), "{chat}");

    // With no news it answers at its timeout, the counts unchanged; other
    // chats' messages are not news.
    bot(
        &tg,
        "sendMessage",
        json!({"chat_id": 6, "text": "Elsewhere"}),
    )
    .await;
    let started = Instant::now();
    let chat = get(format!(
        "{base}/_fake/chat?chat_id=5&messages=1&drafts=1&timeout=0.3"
    ))
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(chat["messages"], 1, "{chat}");

    let stats = get(format!("{base}/_fake/stats")).await;
    assert_eq!(stats["messages"], 2, "{stats}");
    assert_eq!(stats["unconfirmed"], 2, "not confirmed by an offset yet");
}

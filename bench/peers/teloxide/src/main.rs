//! teloxide's peer of actorbot in `bench/compare.sh`: an echo bot on
//! teloxide's dispatcher (long polling, one worker per chat, no
//! persistence), as a teloxide user would write it. It answers every text
//! message with its text; the benchmark measures its replies per second
//! in a burst, its update-to-reply latency under an open loop, its
//! resident memory and its time from exec to the first getUpdates.
//!
//! `BOT_TOKEN` is the token, `TELEGRAM_API_URL` the Bot API's base URL
//! (the fake Telegram of the load-test tool).
//!
//! teloxide's dispatcher starts with getMe and wants the fields of Bot API
//! 8 in its answer (`has_main_web_app`), which the project's fake does not
//! send. If getMe fails, the dispatcher's own getMe goes to a stub on
//! loopback that answers it once; polling and replies still go to
//! `TELEGRAM_API_URL`, through the same dispatcher.

use teloxide::error_handlers::LoggingErrorHandler;
use teloxide::prelude::*;
use teloxide::update_listeners;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let token = std::env::var("BOT_TOKEN").expect("BOT_TOKEN is set");
    let mut bot = Bot::new(token.clone());
    if let Ok(url) = std::env::var("TELEGRAM_API_URL") {
        bot = bot.set_api_url(url.parse().expect("TELEGRAM_API_URL is a URL"));
    }
    let replies = bot.clone();
    let handler = Update::filter_message().endpoint(move |message: Message| {
        let bot = replies.clone();
        async move {
            let text = message.text().unwrap_or("(no text)").to_string();
            bot.send_message(message.chat.id, text).await?;
            respond(())
        }
    });
    if bot.get_me().await.is_ok() {
        Dispatcher::builder(bot, handler).build().dispatch().await;
        return;
    }
    let stub = get_me_stub(&token).await;
    let listener = update_listeners::polling_default(bot.clone()).await;
    Dispatcher::builder(bot.set_api_url(stub), handler)
        .build()
        .dispatch_with_listener(listener, LoggingErrorHandler::new())
        .await;
}

/// A loopback URL that answers one request, getMe, with a bot of the
/// token's id; see the module docs.
async fn get_me_stub(token: &str) -> reqwest::Url {
    let id: u64 = token
        .split(':')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(1);
    let body = format!(
        r#"{{"ok":true,"result":{{"id":{id},"is_bot":true,"first_name":"Peer","username":"peer_bot","can_join_groups":true,"can_read_all_group_messages":false,"supports_inline_queries":false,"can_connect_to_business":false,"has_main_web_app":false}}}}"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds loopback");
    let addr = listener.local_addr().expect("has an address");
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    });
    format!("http://{addr}").parse().expect("a URL")
}

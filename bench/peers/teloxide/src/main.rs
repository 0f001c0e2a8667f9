//! teloxide's peer of actorbot in `bench/compare.sh`: an echo bot on
//! teloxide's dispatcher (long polling, one worker per chat, no
//! persistence), as a teloxide user would write it. It answers every text
//! message with its text; the benchmark measures its replies per second
//! in a burst, its update-to-reply latency under an open loop, its
//! resident memory and its time from exec to the first getUpdates.
//!
//! `BOT_TOKEN` is the token, `TELEGRAM_API_URL` the Bot API's base URL
//! (the fake Telegram of the load-test tool).

use teloxide::prelude::*;

#[tokio::main]
async fn main() {
    let token = std::env::var("BOT_TOKEN").expect("BOT_TOKEN is set");
    let mut bot = Bot::new(token);
    if let Ok(url) = std::env::var("TELEGRAM_API_URL") {
        bot = bot.set_api_url(url.parse().expect("TELEGRAM_API_URL is a URL"));
    }
    let handler = Update::filter_message().endpoint(|bot: Bot, message: Message| async move {
        let text = message.text().unwrap_or("(no text)").to_string();
        bot.send_message(message.chat.id, text).await?;
        respond(())
    });
    Dispatcher::builder(bot, handler).build().dispatch().await;
}

//! The fake Telegram Bot API as a standalone server, for load tests and
//! for trying actorbot by hand without a network.
//!
//! Point the bot at it with `TELEGRAM_API_URL=http://ADDR`, inject updates
//! with `POST /_fake/updates` (`{"chat_id": 1, "text": "/start"}` or a raw
//! update) and photos with `POST /_fake/photo?chat_id=1`, read replies at
//! `GET /_fake/messages?chat_id=1` or long-poll for them at
//! `GET /_fake/chat?chat_id=1&messages=0&timeout=30`, counters at
//! `GET /_fake/stats` (the control API, described in the emulator's
//! `telegram/server.rs`). `actorbot loadtest --emulator http://ADDR` drives
//! it with simulated users.

use std::net::SocketAddr;

use actorbot_testkit::telegram::{FakeTelegram, FakeTelegramConfig, FloodLimits};
use clap::Parser;

#[derive(Parser)]
#[command(name = "fake-telegram", about = "A fake Telegram Bot API server")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// The bot token the fake accepts.
    #[arg(long, default_value = "123456:FAKE-default-token")]
    token: String,
    /// Enforce Telegram's flood limits with 429 answers.
    #[arg(long)]
    flood_limits: bool,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Do not keep a record of every call (for long load tests).
    #[arg(long)]
    no_call_log: bool,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = FakeTelegram::start(FakeTelegramConfig {
        token: args.token,
        flood_limits: args.flood_limits.then(FloodLimits::telegram_default),
        addr: args.addr,
        workers: args.workers,
        record_calls: !args.no_call_log,
        ..FakeTelegramConfig::default()
    })?;
    println!("fake Telegram listening on {}", fake.api_url());
    loop {
        std::thread::park();
    }
}

//! The fake OpenAI-compatible backend as a standalone server, for load
//! tests and for trying actorbot's assistant by hand without a network or
//! a paid API.
//!
//! Point the bot at it with `AI_API_URL=<the printed URL>`. Every answer is
//! the fake's deterministic one (`Answer N to: QUESTION. I have seen K
//! earlier messages.`), streamed word by word unless `--no-stream`.

use std::net::SocketAddr;
use std::time::Duration;

use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "fake-ai",
    about = "A fake OpenAI-compatible chat-completions server"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// Milliseconds before the first word (or the whole unstreamed answer).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Milliseconds between streamed words.
    #[arg(long, default_value_t = 0)]
    word_delay_ms: u64,
    /// Require `Authorization: Bearer <KEY>`; others get 401.
    #[arg(long)]
    api_key: Option<String>,
    /// Answer one JSON completion even when a stream is asked for.
    #[arg(long)]
    no_stream: bool,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = FakeAi::start(FakeAiConfig {
        addr: args.addr,
        workers: args.workers,
        latency: Duration::from_millis(args.latency_ms),
        word_delay: Duration::from_millis(args.word_delay_ms),
        api_key: args.api_key,
        streaming: !args.no_stream,
        ..FakeAiConfig::default()
    })?;
    println!("fake AI listening on {}", fake.api_url());
    loop {
        std::thread::park();
    }
}

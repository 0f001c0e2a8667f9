//! Test doubles for actorbot: a fake Telegram Bot API server and a fake
//! OpenAI-compatible server that speak the real wire formats, for
//! integration tests and load tests that must run without a network.
//!
//! Each fake runs its own actix system on its own threads, so a test on any
//! runtime (or a plain `fn main`) can start one, drive it through its handle,
//! and await conditions on what the bot did.

pub mod browser;
pub mod openai;
pub mod pdf;
pub mod proxy;
mod serve;
pub mod telegram;
mod wait;
pub mod wire;

pub use wait::WaitTimeout;

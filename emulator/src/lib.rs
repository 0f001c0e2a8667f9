//! The Telegram Bot API and an OpenAI-compatible backend, emulated: what
//! `actorbot sandbox` runs the daemon against, and what the tests and the
//! load test drive it with.
//!
//! Both speak the real wire formats: the Bot API emulator long-polls with
//! offsets or delivers to a webhook, takes multipart uploads, serves file
//! downloads and, with its flood limits on, answers 429 as Telegram does;
//! the AI stand-in streams server-sent events in OpenAI's shapes. Each runs
//! its own actix system on its own threads, so a caller on any runtime (or a
//! plain `fn main`) can start one, drive it through its handle, and await
//! conditions on what the bot did. Both can play the quirks of real servers
//! (scripted failures, outages, servers that ignore `offset`), which is what
//! the tests use them for.
//!
//! [`rig`] starts an `actorbot` daemon as a child process against an
//! emulator of its own: what the load tests measure.

pub mod openai;
pub mod rig;
mod serve;
pub mod telegram;
mod tls;
mod wait;

pub use wait::WaitTimeout;

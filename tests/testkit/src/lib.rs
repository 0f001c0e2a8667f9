//! Test doubles for actorbot: the emulated Bot API and AI backend (from
//! `actorbot-emulator`, re-exported here with its rig that runs a daemon
//! against them), and what only tests need: a scripted wire-level server,
//! a TCP proxy that can cut a connection, a headless-browser driver and a
//! PDF reader.

pub mod browser;
pub mod http_proxy;
pub mod pdf;
pub mod proxy;
pub mod wire;

pub use actorbot_emulator::{WaitTimeout, openai, rig, telegram};

//! The bot's policy: what it answers. Mechanisms live elsewhere.

pub mod commands;
pub mod ratelimit;

//! actorbot: a Telegram bot daemon built as an actor system on actix.
//!
//! The library holds the whole bot so that tests and tools can build parts
//! of it; the `actorbot` binary is a thin command line over [`daemon`] (and
//! [`worker`], the document pools alone).

pub mod ai;
pub mod bot;
pub mod bucket;
pub mod cache;
pub mod cleanup;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod health;
pub mod http;
pub mod images;
pub mod intake;
pub mod journal;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod pdf;
pub(crate) mod retune;
pub mod router;
pub mod sandbox;
pub mod session;
pub mod storage;
pub mod telegram;
pub mod worker;

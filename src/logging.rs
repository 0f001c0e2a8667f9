//! Logging with env_logger, with secrets scrubbed from every line, and a
//! filter that can change while the daemon runs (`LOG_LEVEL` set live).
//!
//! The token is kept out of messages at the source, but a dependency's log
//! line could still carry a URL; the formatter replaces every secret it was
//! given, so no line can leak one whatever logged it.
//!
//! env_logger fixes its filter when a logger is built, so the installed
//! logger holds an env_logger behind a lock and a new filter builds a new
//! one in its place.

use std::io::Write;
use std::sync::{OnceLock, RwLock};

static LOGGER: OnceLock<Swappable> = OnceLock::new();

struct Swappable {
    inner: RwLock<env_logger::Logger>,
    secrets: Vec<String>,
}

fn build(filter: &str, secrets: Vec<String>) -> env_logger::Logger {
    env_logger::Builder::new()
        .parse_filters(filter)
        .format(move |buf, record| {
            let mut line = record.args().to_string();
            for secret in &secrets {
                if line.contains(secret.as_str()) {
                    line = line.replace(secret.as_str(), "<redacted>");
                }
            }
            writeln!(
                buf,
                "{} {:5} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                line
            )
        })
        .build()
}

pub fn init(filter: &str, secrets: Vec<String>) {
    let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    let logger = build(filter, secrets.clone());
    let max = logger.filter();
    let installed = LOGGER.get_or_init(|| Swappable {
        inner: RwLock::new(logger),
        secrets,
    });
    if log::set_logger(installed).is_ok() {
        log::set_max_level(max);
    }
}

/// Replaces the filter (env_logger's syntax, as `RUST_LOG`); answers false
/// when logging was not set up by [`init`].
pub fn set_filter(filter: &str) -> bool {
    let Some(installed) = LOGGER.get() else {
        return false;
    };
    let logger = build(filter, installed.secrets.clone());
    let max = logger.filter();
    *installed.inner.write().unwrap_or_else(|e| e.into_inner()) = logger;
    log::set_max_level(max);
    true
}

impl log::Log for Swappable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .log(record);
    }

    fn flush(&self) {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

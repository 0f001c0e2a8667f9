//! Logging with env_logger, with secrets scrubbed from every line.
//!
//! The token is kept out of messages at the source, but a dependency's log
//! line could still carry a URL; the formatter replaces every secret it was
//! given, so no line can leak one whatever logged it.

use std::io::Write;

pub fn init(filter: &str, secrets: Vec<String>) {
    let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    let _ = env_logger::Builder::new()
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
        .try_init();
}

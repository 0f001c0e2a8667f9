//! Errors of the Bot API layer, in Telegram's own shape.
//!
//! An error answer keeps Telegram's `error_code`, `description` and
//! `parameters` so that callers can act on them (wait `retry_after`, resend to
//! `migrate_to_chat_id`). Transport failures are a separate variant because
//! they are retried, while most API errors are final.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum TelegramError {
    /// Telegram answered `{"ok": false, ...}`.
    #[error("{method}: Telegram error {error_code}: {description}")]
    Api {
        method: String,
        error_code: i32,
        description: String,
        retry_after: Option<u32>,
        migrate_to_chat_id: Option<i64>,
    },
    /// The request did not get an answer: connect error, reset, timeout.
    #[error("{method}: no answer from the Bot API: {message}")]
    Transport { method: String, message: String },
    /// An answer came but could not be understood.
    #[error("{method}: malformed answer (HTTP {status}): {message}")]
    Decode {
        method: String,
        status: u16,
        message: String,
    },
    /// A refusal by the bot itself before anything was sent, for good (an
    /// empty text, a body that cannot be encoded).
    #[error("{method}: {message}")]
    Refused { method: String, message: String },
    /// The answer cannot be used as this daemon is configured (a file on a
    /// local Bot API server's disk without `TELEGRAM_LOCAL_MODE`, or one it
    /// cannot read): an operator's matter, not retried.
    #[error("{method}: {message}")]
    Unusable { method: String, message: String },
    /// The outbox could not take or finish the request now (full, or
    /// restarting after a crash): nothing was sent, and the same request
    /// may be posted again shortly.
    #[error("{method}: {message}")]
    Unavailable { method: String, message: String },
}

/// How a failed send is answered: the one classification every reply's
/// delivery goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Inside the daemon and passing (the outbox full or restarting):
    /// post the same reply again.
    Local,
    /// On the network or at Telegram (no answer, 5xx, floods past the
    /// retries): a replay may succeed.
    Transient,
    /// For good, for this chat (a blocked bot, a chat that is gone, a
    /// request Telegram rejects): sending again would fail the same way.
    Permanent,
}

impl TelegramError {
    /// How long Telegram asked us to wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TelegramError::Api {
                error_code: 429,
                retry_after,
                ..
            } => Some(Duration::from_secs(u64::from(
                retry_after.unwrap_or(1).max(1),
            ))),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_transient(&self) -> bool {
        self.class() == FailureClass::Transient
    }

    /// How a reply that failed this way is answered.
    pub fn class(&self) -> FailureClass {
        let transient = match self {
            TelegramError::Unavailable { .. } => return FailureClass::Local,
            TelegramError::Transport { .. } => true,
            TelegramError::Api { error_code, .. } => *error_code >= 500 || *error_code == 429,
            TelegramError::Decode { status, .. } => *status >= 500,
            TelegramError::Refused { .. } | TelegramError::Unusable { .. } => false,
        };
        if transient {
            FailureClass::Transient
        } else {
            FailureClass::Permanent
        }
    }

    /// Whether the server does not know the method at all (404): an older
    /// Bot API server, or an emulator without it.
    pub fn is_unknown_method(&self) -> bool {
        matches!(
            self,
            TelegramError::Api {
                error_code: 404,
                ..
            }
        )
    }

    pub fn migrate_to_chat_id(&self) -> Option<i64> {
        match self {
            TelegramError::Api {
                migrate_to_chat_id, ..
            } => *migrate_to_chat_id,
            _ => None,
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TelegramError::Api {
                error_code: 429, ..
            } => "flood",
            TelegramError::Api { error_code, .. } if *error_code >= 500 => "server",
            TelegramError::Api { .. } => "api",
            TelegramError::Transport { .. } => "transport",
            TelegramError::Decode { .. } => "decode",
            TelegramError::Refused { .. } => "refused",
            TelegramError::Unusable { .. } => "unusable",
            TelegramError::Unavailable { .. } => "unavailable",
        }
    }
}

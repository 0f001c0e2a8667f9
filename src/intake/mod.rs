//! Update intake: long polling or webhook, never both.
//!
//! Both end in the same hand-off: an [`Incoming`] batch sent to the router,
//! whose answer means "taken": only then does polling confirm the offset to
//! Telegram or the webhook answer 200. A router that is saturated answers
//! late, and intake slows down with it instead of buffering without bound.

pub mod polling;
pub mod webhook;

use actix::prelude::*;
use thiserror::Error;

use crate::telegram::update::RawUpdate;

/// A batch of updates for the router, in update_id order.
#[derive(Message)]
#[rtype(result = "Result<(), HandoffError>")]
pub struct Incoming(pub Vec<RawUpdate>);

/// Why a batch was not taken; intake keeps its offset and offers the
/// updates again.
#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("the bot is shutting down")]
    ShuttingDown,
    /// The router or the journal did not answer (restarting, stopped).
    #[error("the router is unavailable: {0}")]
    Unavailable(#[from] MailboxError),
    /// The journal could not write the batch to the inbox.
    #[error("the updates could not be journaled: {0}")]
    NotJournaled(#[from] crate::journal::JournalError),
}

/// The update kinds the bot asks Telegram for: the ones it acts on.
/// Messages; and a user's press of "stop" on a streamed answer. (Edited
/// messages and button presses would only be taken, journaled and set
/// aside: the bot sends no buttons and answers a message once.)
pub fn allowed_updates() -> Vec<crate::telegram::types::AllowedUpdate> {
    use crate::telegram::types::AllowedUpdate;
    vec![
        AllowedUpdate::Message,
        AllowedUpdate::StoppedMessageGeneration,
    ]
}

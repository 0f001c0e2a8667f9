//! The one delivery policy for every reply that answers an update.
//!
//! A reply's update is done once Telegram has the reply, or once Telegram
//! has refused it for good (a blocked bot, a chat that is gone): sending it
//! again would fail the same way. A reply is queued only in room the outbox
//! has for it (see [`crate::telegram`]), so the outbox never refuses one for
//! being full; a reply the outbox lost in a crash before it took it is
//! posted again after a short wait, which grows while it keeps failing. A
//! reply Telegram did not take for as long as the outbox keeps trying
//! (`TELEGRAM_SEND_PATIENCE`) is left undone: the next start replays its
//! update.
//!
//! [`next_step`] decides; [`deliver`] carries it out.

use std::time::Duration;

use crate::journal::DoneMarks;
use crate::telegram::error::FailureClass;
use crate::telegram::{Delivered, Request, Room, Telegram, TelegramError};

/// The first wait before a reply is posted again.
const FIRST_REPOST: Duration = Duration::from_millis(20);
/// The longest wait between two posts.
const MAX_REPOST: Duration = Duration::from_secs(1);
/// Posts after the first before a reply the outbox keeps refusing is left
/// to the next start: about a minute.
const MAX_REPOSTS: u32 = 64;

/// What follows a post's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The update is answered: mark it done.
    Done,
    /// Leave the update undone: the next start replays it.
    Undone,
    /// Post the same reply again after this wait.
    Repost(Duration),
}

/// Decides what follows an answer, after `reposts` posts again already.
pub fn next_step(answer: Result<(), FailureClass>, reposts: u32) -> Step {
    match answer {
        Ok(()) | Err(FailureClass::Permanent) => Step::Done,
        Err(FailureClass::Transient) => Step::Undone,
        Err(FailureClass::Local) if reposts >= MAX_REPOSTS => Step::Undone,
        Err(FailureClass::Local) => {
            let wait = FIRST_REPOST.saturating_mul(1 << reposts.min(16));
            Step::Repost(wait.min(MAX_REPOST))
        }
    }
}

/// Posts `requests` to `chat_id` in `room` (taken for them), and again
/// until [`next_step`] says otherwise, and ends the reply with the done
/// marks: answers the last result.
pub async fn deliver(
    telegram: &Telegram,
    done: &DoneMarks,
    update_id: i64,
    chat_id: i64,
    room: Room,
    requests: Vec<Request>,
) -> Result<Vec<Delivered>, TelegramError> {
    let mut reposts = 0;
    let mut result = telegram.post_in(room, chat_id, requests.clone()).await;
    loop {
        let step = next_step(
            result.as_ref().map(|_| ()).map_err(TelegramError::class),
            reposts,
        );
        match step {
            Step::Repost(wait) => {
                reposts += 1;
                if reposts == 1 {
                    log::info!(
                        "reply to update_id={update_id} not taken, posting it again: {}",
                        result
                            .as_ref()
                            .err()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    );
                }
                tokio::time::sleep(wait).await;
                result = telegram.post(chat_id, requests.clone()).await;
            }
            Step::Done | Step::Undone => {
                if let Err(err) = &result {
                    let what = if step == Step::Done {
                        "given up for good"
                    } else {
                        "left for the next start"
                    };
                    log::warn!(
                        "send failed ({what}): update_id={update_id} chat_id={chat_id}: {err}"
                    );
                }
                done.reply_ended(update_id, step == Step::Done);
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_and_refused_for_good_are_done() {
        assert_eq!(next_step(Ok(()), 0), Step::Done);
        assert_eq!(next_step(Ok(()), 5), Step::Done);
        assert_eq!(next_step(Err(FailureClass::Permanent), 0), Step::Done);
    }

    #[test]
    fn lost_on_the_way_is_left_for_the_replay() {
        assert_eq!(next_step(Err(FailureClass::Transient), 0), Step::Undone);
    }

    #[test]
    fn not_taken_is_posted_again_with_a_growing_bounded_wait() {
        let waits: Vec<Duration> = (0..MAX_REPOSTS)
            .map(|n| match next_step(Err(FailureClass::Local), n) {
                Step::Repost(wait) => wait,
                other => panic!("post {n}: {other:?}"),
            })
            .collect();
        assert_eq!(waits[0], FIRST_REPOST);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), MAX_REPOST);
        let total: Duration = waits.iter().sum();
        assert!(
            total > Duration::from_secs(30) && total < Duration::from_secs(120),
            "{total:?}"
        );
        assert_eq!(
            next_step(Err(FailureClass::Local), MAX_REPOSTS),
            Step::Undone
        );
    }

    #[test]
    fn every_telegram_error_has_one_class() {
        let unavailable = crate::telegram::outbox::outbox_stopped();
        assert_eq!(unavailable.class(), FailureClass::Local);
        let refused = TelegramError::Refused {
            method: "sendMessage".into(),
            message: "message text is empty".into(),
        };
        assert_eq!(refused.class(), FailureClass::Permanent);
        let api = |code| TelegramError::Api {
            method: "sendMessage".into(),
            error_code: code,
            description: String::new(),
            retry_after: None,
            migrate_to_chat_id: None,
        };
        assert_eq!(api(403).class(), FailureClass::Permanent);
        assert_eq!(api(502).class(), FailureClass::Transient);
        assert_eq!(api(429).class(), FailureClass::Transient);
        let transport = TelegramError::Transport {
            method: "sendMessage".into(),
            message: "reset".into(),
        };
        assert_eq!(transport.class(), FailureClass::Transient);
    }
}

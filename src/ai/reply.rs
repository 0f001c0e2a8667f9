//! Showing an answer while it is generated, then committing it.
//!
//! In a private chat the answer streams as a native draft
//! (`sendMessageDraft`, with a stop button): a draft is only a preview, so
//! the final text is then sent as real messages. In groups, or when a draft
//! is refused, the first words go out as a message that is then edited as
//! text arrives, no faster than `EDIT_INTERVAL` (each edit counts against a
//! group's 20 messages a minute). Until the first words arrive the chat
//! shows "typing…", renewed every `TYPING_INTERVAL`.
//!
//! Everything is rendered from the model's Markdown to text and entities
//! (`telegram::format`), so no partial answer can fail to parse.

use std::time::Duration;

use frankenstein::methods::{
    EditMessageTextParams, SendChatActionParams, SendMessageDraftParams, SendMessageParams,
};
use frankenstein::types::ChatAction;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::Progress;
use crate::telegram::format::{Formatted, markdown};
use crate::telegram::split::MESSAGE_LIMIT;
use crate::telegram::{Request, Telegram, TelegramError};

/// How long an answer may take before the chat shows "typing…". Telegram
/// recommends the action only for replies that take a noticeable time: an
/// answer from the cache or a quick backend shows without one, and in a
/// burst the questions reach the backend before the indicators go out.
const TYPING_AFTER: Duration = Duration::from_millis(300);

/// How fast the answer is shown.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub draft: Duration,
    pub edit: Duration,
    pub typing: Duration,
}

/// What the user has been shown when the answer ends.
#[derive(Debug, Default)]
pub struct Shown {
    /// The message being edited (groups, or where drafts were refused).
    pub message_id: Option<i32>,
    /// The text that message shows now.
    pub message_text: String,
    /// The answer so far (since the last restart).
    pub text: String,
    pub drafts: u32,
    pub edits: u32,
}

#[derive(PartialEq, Eq)]
enum Mode {
    Draft,
    Edit,
}

/// Shows the answer as it arrives; returns when the sender side closes.
pub async fn show_progress(
    telegram: &Telegram,
    chat_id: i64,
    private: bool,
    draft_id: i32,
    pace: Pace,
    mut progress: UnboundedReceiver<Progress>,
) -> Shown {
    let mut shown = Shown::default();
    let mut mode = if private && telegram.drafts_supported() {
        Mode::Draft
    } else {
        Mode::Edit
    };
    let mut changed = false;
    let start = Instant::now();
    let mut next_typing = start + TYPING_AFTER;
    let mut next_update = start;
    loop {
        let now = Instant::now();
        if shown.text.is_empty() && shown.message_id.is_none() && now >= next_typing {
            let action = SendChatActionParams::builder()
                .chat_id(chat_id)
                .action(ChatAction::Typing)
                .build();
            // Not awaited, and left out while the outbox is full: "typing…"
            // must not hold up the answer.
            if let Some(room) = telegram.try_room(chat_id, 1) {
                drop(telegram.post_in(room, chat_id, vec![Request::ChatAction(action)]));
            }
            next_typing = now + pace.typing;
        }
        if changed && !shown.text.is_empty() && now >= next_update {
            changed = false;
            let rendered = markdown(&shown.text);
            match mode {
                Mode::Draft => {
                    let part = last_part(&rendered);
                    let mut params = SendMessageDraftParams::builder()
                        .chat_id(chat_id)
                        .text(part.text.clone())
                        .build();
                    params.draft_id = Some(draft_id);
                    params.entities = part.entities();
                    params.can_stop = Some(true);
                    match deliver(telegram, chat_id, Request::Draft(params)).await {
                        Ok(()) => shown.drafts += 1,
                        Err(err) if err.is_unknown_method() => {
                            if telegram.drafts_unsupported() {
                                log::warn!(
                                    "the Bot API server has no sendMessageDraft ({err}); answers are shown by editing a message from now on"
                                );
                            }
                            mode = Mode::Edit;
                            changed = true;
                            continue;
                        }
                        Err(err) => {
                            log::info!(
                                "drafts refused in chat_id={chat_id}, editing instead: {err}"
                            );
                            mode = Mode::Edit;
                            changed = true;
                            continue;
                        }
                    }
                    next_update = Instant::now() + pace.draft;
                }
                Mode::Edit => {
                    let first = first_part(&rendered);
                    if shown.message_id.is_none() {
                        let mut params = SendMessageParams::builder()
                            .chat_id(chat_id)
                            .text(first.text.clone())
                            .build();
                        params.entities = first.entities();
                        if let Ok(delivered) =
                            telegram.post(chat_id, vec![Request::Message(params)]).await
                        {
                            shown.message_id = delivered
                                .first()
                                .and_then(|d| d.message())
                                .map(|m| m.message_id);
                            shown.message_text = first.text;
                        }
                    } else if first.text != shown.message_text
                        && let Some(edit) = edit_request(chat_id, shown.message_id, &first)
                        && deliver(telegram, chat_id, edit).await.is_ok()
                    {
                        shown.edits += 1;
                        shown.message_text = first.text;
                    }
                    next_update = Instant::now() + pace.edit;
                }
            }
        }
        let wake = if changed {
            next_update
        } else if shown.text.is_empty() && shown.message_id.is_none() {
            next_typing
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            event = progress.recv() => match event {
                None => return shown,
                Some(Progress::Delta(piece)) => {
                    shown.text.push_str(&piece);
                    changed = true;
                }
                Some(Progress::Restart) => {
                    shown.text.clear();
                    changed = false;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn deliver(telegram: &Telegram, chat_id: i64, request: Request) -> Result<(), TelegramError> {
    telegram.post(chat_id, vec![request]).await.map(|_| ())
}

fn first_part(rendered: &Formatted) -> Formatted {
    rendered
        .split(MESSAGE_LIMIT)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// The part being written: what a draft shows of a long answer.
fn last_part(rendered: &Formatted) -> Formatted {
    rendered.split(MESSAGE_LIMIT).pop().unwrap_or_default()
}

fn edit_request(chat_id: i64, message_id: Option<i32>, part: &Formatted) -> Option<Request> {
    let mut params = EditMessageTextParams::builder()
        .chat_id(chat_id)
        .message_id(message_id?)
        .text(part.text.clone())
        .build();
    params.entities = part.entities();
    Some(Request::Edit(params))
}

/// The requests that commit `text` as the final answer: the message being
/// edited (if any) becomes the first part, the rest are new messages.
pub fn final_requests(chat_id: i64, text: &str, shown: &Shown) -> Vec<Request> {
    let parts = markdown(text).split(MESSAGE_LIMIT);
    let mut requests = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        if i == 0 && shown.message_id.is_some() {
            if part.text != shown.message_text
                && let Some(edit) = edit_request(chat_id, shown.message_id, &part)
            {
                requests.push(edit);
            }
            continue;
        }
        let mut params = SendMessageParams::builder()
            .chat_id(chat_id)
            .text(part.text.clone())
            .build();
        params.entities = part.entities();
        requests.push(Request::Message(params));
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_answer_edits_the_shown_message_and_adds_the_rest() {
        let long = "word ".repeat(1500);
        let shown = Shown {
            message_id: Some(7),
            message_text: "word word".into(),
            ..Shown::default()
        };
        let requests = final_requests(5, &long, &shown);
        assert!(matches!(requests[0], Request::Edit(_)));
        assert!(
            requests[1..]
                .iter()
                .all(|r| matches!(r, Request::Message(_)))
        );
        assert_eq!(requests.len(), 2);

        let fresh = final_requests(5, "**done**", &Shown::default());
        match &fresh[..] {
            [Request::Message(p)] => {
                assert_eq!(p.text, "done");
                assert_eq!(p.entities.as_ref().map(Vec::len), Some(1));
            }
            other => panic!("{other:?}"),
        }
    }
}

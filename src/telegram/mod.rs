//! Everything that talks to the Telegram Bot API.
//!
//! `client` is the transport, `outbox` the one throttle every send to a chat
//! passes, `split` keeps texts within a message's size, and [`Telegram`] is
//! the cheap, cloneable handle the rest of the bot sends through. Bot API
//! types come from the `frankenstein` crate, re-exported as [`types`].

pub mod client;
pub mod error;
pub mod format;
pub mod outbox;
pub mod split;
pub mod update;

use std::sync::Arc;

use actix::Addr;
use actorbot_actors::registry::placement;
pub use frankenstein::methods as params;
use frankenstein::methods::{SendChatActionParams, SendMessageParams};
pub use frankenstein::types;
use frankenstein::types::{ChatAction, ChatId};

pub use client::{BotApi, Endpoint, Sent, SentOrBool, Upload};
pub use error::TelegramError;
pub use outbox::{Deliver, Delivered, Outbox, OutboxStats, Post, Request};

/// The handle every part of the bot sends through: all sends pass the outbox.
///
/// With several outbox shards, a chat's sends go to the shard at the chat's
/// [`placement`]: the same arbiter index its session has, so when shard `i`
/// runs on session arbiter `i`, a session's replies never leave its thread.
#[derive(Clone)]
pub struct Telegram {
    shards: Arc<[Addr<Outbox>]>,
}

impl Telegram {
    /// A handle over outbox shards, in the order of the arbiters they run on.
    ///
    /// # Panics
    ///
    /// With no shard.
    pub fn sharded(shards: Vec<Addr<Outbox>>) -> Telegram {
        assert!(!shards.is_empty(), "the outbox needs at least one shard");
        Telegram {
            shards: shards.into(),
        }
    }

    /// Every shard, for figures and for draining at shutdown.
    pub fn shards(&self) -> &[Addr<Outbox>] {
        &self.shards
    }

    fn outbox(&self, chat_id: i64) -> &Addr<Outbox> {
        &self.shards[placement(&chat_id, self.shards.len())]
    }

    /// The outbox's figures, summed over its shards (a shard that does not
    /// answer counts as empty).
    pub async fn stats(&self) -> OutboxStats {
        let mut total = OutboxStats::default();
        for shard in self.shards.iter() {
            if let Ok(stats) = shard.send(outbox::GetStats).await {
                total.add(&stats);
            }
        }
        total
    }

    /// Answers once every shard has sent everything it holds (a shard that
    /// does not answer counts as drained).
    pub async fn drained(&self) {
        let drains = self.shards.iter().map(|shard| shard.send(outbox::Drained));
        futures_util::future::join_all(drains).await;
    }

    /// Queues requests for one chat, in order, and waits until they are delivered.
    pub async fn deliver(
        &self,
        chat_id: i64,
        requests: Vec<Request>,
    ) -> Result<Vec<Delivered>, TelegramError> {
        self.outbox(chat_id)
            .send(Deliver { chat_id, requests })
            .await
            .map_err(|err| TelegramError::Refused {
                method: "deliver".into(),
                message: format!("the outbox is unavailable: {err}"),
            })?
    }

    /// Queues requests for one chat at once, in the order of calls, and
    /// returns a future of their delivery. Unlike [`Telegram::deliver`] the
    /// requests are queued before this returns, so an actor can post its
    /// replies in order and await their delivery elsewhere.
    pub fn post(
        &self,
        chat_id: i64,
        requests: Vec<Request>,
    ) -> impl Future<Output = Result<Vec<Delivered>, TelegramError>> + use<> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.outbox(chat_id).do_send(Post {
            chat_id,
            requests,
            reply,
        });
        async move {
            answer
                .await
                .unwrap_or_else(|_| Err(outbox::outbox_stopped()))
        }
    }

    /// Sends a message, split into several when the text is too long for
    /// one. The reply markup goes with the last part.
    pub async fn send_message(
        &self,
        params: SendMessageParams,
    ) -> Result<Vec<Sent>, TelegramError> {
        let chat_id = chat_id_of(&params.chat_id);
        let parts = split::split_text(&params.text, split::MESSAGE_LIMIT);
        if parts.is_empty() {
            return Err(TelegramError::Refused {
                method: "sendMessage".into(),
                message: "message text is empty".into(),
            });
        }
        let delivered = self
            .deliver(chat_id, message_requests(params, parts))
            .await?;
        Ok(delivered
            .into_iter()
            .filter_map(|d| match d {
                Delivered::Message(m) => Some(m),
                Delivered::Done => None,
            })
            .collect())
    }

    /// Sends plain text to a chat.
    pub async fn send_text(
        &self,
        chat_id: i64,
        text: impl Into<String>,
    ) -> Result<Vec<Sent>, TelegramError> {
        let params = SendMessageParams::builder()
            .chat_id(chat_id)
            .text(text.into())
            .build();
        self.send_message(params).await
    }

    /// Shows "typing…" or another action in the chat.
    pub async fn chat_action(&self, chat_id: i64, action: ChatAction) -> Result<(), TelegramError> {
        let params = SendChatActionParams::builder()
            .chat_id(chat_id)
            .action(action)
            .build();
        self.deliver(chat_id, vec![Request::ChatAction(params)])
            .await
            .map(|_| ())
    }
}

/// The requests that send a text, split into parts that fit a message;
/// the reply markup goes with the last part.
pub fn text_requests(chat_id: i64, text: &str) -> Vec<Request> {
    let params = SendMessageParams::builder()
        .chat_id(chat_id)
        .text(String::new())
        .build();
    message_requests(params, split::split_text(text, split::MESSAGE_LIMIT))
}

fn message_requests(params: SendMessageParams, parts: Vec<String>) -> Vec<Request> {
    let last = parts.len().saturating_sub(1);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let mut part = params.clone();
            part.text = text;
            if i != last {
                part.reply_markup = None;
            }
            Request::Message(part)
        })
        .collect()
}

fn chat_id_of(chat_id: &ChatId) -> i64 {
    match chat_id {
        ChatId::Integer(id) => *id,
        // @channelusername: such chats are groups for the limits.
        ChatId::String(_) => i64::MIN,
    }
}

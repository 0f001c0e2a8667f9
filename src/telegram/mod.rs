//! Everything that talks to the Telegram Bot API.
//!
//! `client` is the transport, `outbox` the one throttle every send to a chat
//! passes, `split` keeps texts within a message's size, and [`Telegram`] is
//! the cheap, cloneable handle the rest of the bot sends through. Bot API
//! types come from the `frankenstein` crate, re-exported as [`types`].
//!
//! # Room in the outbox
//!
//! The outbox holds at most `OUTBOX_CAPACITY` requests. A sender takes
//! [`Room`] for its requests before it queues them, and waits while there
//! is none: a session whose reply cannot be queued waits with it, its
//! mailbox fills, the router waits for the mailbox and intake for the
//! router. That is the backpressure from Telegram's flood limits back to
//! getUpdates; nothing is refused for want of space. Room is given back as
//! each request of a batch is answered. Waiters get room in the order they
//! asked (the semaphore is fair).

pub mod client;
pub mod connect;
pub mod error;
pub mod format;
pub mod outbox;
pub mod proxy;
pub mod split;
pub mod tls;
pub mod update;

use std::sync::Arc;

use actix::Addr;
use actorbot_actors::registry::placement;
pub use frankenstein::methods as params;
use frankenstein::methods::{SendChatActionParams, SendMessageParams};
pub use frankenstein::types;
use frankenstein::types::{ChatAction, ChatId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use client::{BotApi, Endpoint, EndpointError, Sent, SentOrBool, Upload};
pub use error::TelegramError;
pub use outbox::{Delivered, Outbox, OutboxStats, Post, Request};

/// The handle every part of the bot sends through: all sends pass the outbox.
///
/// With several outbox shards, a chat's sends go to the shard at the chat's
/// [`placement`]: the same arbiter index its session has, so when shard `i`
/// runs on session arbiter `i`, a session's replies never leave its thread.
#[derive(Clone)]
pub struct Telegram {
    shards: Arc<[Shard]>,
    /// Cleared when the server answers that it has no `sendMessageDraft`:
    /// answers are then shown by editing a message, for the rest of the run.
    drafts: Arc<std::sync::atomic::AtomicBool>,
}

struct Shard {
    addr: Addr<Outbox>,
    /// The shard's free places, out of `capacity`.
    room: Arc<Semaphore>,
    capacity: usize,
}

/// Places taken in an outbox shard for the requests of one batch; they are
/// given back when the outbox is done with the batch.
#[derive(Debug)]
pub struct Room {
    _places: OwnedSemaphorePermit,
}

impl Telegram {
    /// A handle over outbox shards, in the order of the arbiters they run on,
    /// each holding at most `capacity` requests.
    ///
    /// # Panics
    ///
    /// With no shard.
    pub fn sharded(shards: Vec<Addr<Outbox>>, capacity: usize) -> Telegram {
        assert!(!shards.is_empty(), "the outbox needs at least one shard");
        let capacity = capacity.max(1);
        Telegram {
            shards: shards
                .into_iter()
                .map(|addr| Shard {
                    addr,
                    room: Arc::new(Semaphore::new(capacity)),
                    capacity,
                })
                .collect(),
            drafts: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Whether the server has taken drafts so far (or not been asked).
    pub fn drafts_supported(&self) -> bool {
        self.drafts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records that the server has no `sendMessageDraft`; answers whether
    /// this is news (the first to find out logs it).
    pub fn drafts_unsupported(&self) -> bool {
        self.drafts
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Every shard, for figures and for draining at shutdown.
    pub fn shards(&self) -> impl Iterator<Item = &Addr<Outbox>> {
        self.shards.iter().map(|shard| &shard.addr)
    }

    fn shard(&self, chat_id: i64) -> &Shard {
        &self.shards[placement(&chat_id, self.shards.len())]
    }

    /// Places a batch of `count` takes: a batch larger than a shard's whole
    /// capacity takes all of it, so that it still goes, alone.
    fn places(shard: &Shard, count: usize) -> u32 {
        u32::try_from(count.clamp(1, shard.capacity)).unwrap_or(u32::MAX)
    }

    /// Room for `count` requests to `chat_id`, if the outbox has it now.
    pub fn try_room(&self, chat_id: i64, count: usize) -> Option<Room> {
        let shard = self.shard(chat_id);
        let places = Self::places(shard, count);
        Arc::clone(&shard.room)
            .try_acquire_many_owned(places)
            .ok()
            .map(|places| Room { _places: places })
    }

    /// Room for `count` requests to `chat_id`, once the outbox has it.
    pub async fn room(&self, chat_id: i64, count: usize) -> Room {
        let shard = self.shard(chat_id);
        let places = Self::places(shard, count);
        match Arc::clone(&shard.room).acquire_many_owned(places).await {
            Ok(places) => Room { _places: places },
            // The semaphore is never closed.
            Err(_) => unreachable!("the outbox's room is never closed"),
        }
    }

    /// Free places over all shards, for the figures.
    pub fn free_room(&self) -> usize {
        self.shards.iter().map(|s| s.room.available_permits()).sum()
    }

    /// The outbox's figures, summed over its shards (a shard that does not
    /// answer counts as empty).
    pub async fn stats(&self) -> OutboxStats {
        let mut total = OutboxStats::default();
        for shard in self.shards() {
            if let Ok(stats) = shard.send(outbox::GetStats).await {
                total.add(&stats);
            }
        }
        total
    }

    /// Answers once every shard has sent everything it holds (a shard that
    /// does not answer counts as drained).
    pub async fn drained(&self) {
        let drains = self.shards().map(|shard| shard.send(outbox::Drained));
        futures_util::future::join_all(drains).await;
    }

    /// Waits for room, queues requests for one chat, in order, and waits
    /// until they are delivered.
    pub async fn post(
        &self,
        chat_id: i64,
        requests: Vec<Request>,
    ) -> Result<Vec<Delivered>, TelegramError> {
        let room = self.room(chat_id, requests.len()).await;
        self.post_in(room, chat_id, requests).await
    }

    /// Queues requests for one chat at once, in the room already taken for
    /// them, and returns a future of their delivery. The requests are queued
    /// before this returns, so an actor can post its replies in order and
    /// await their delivery elsewhere.
    pub fn post_in(
        &self,
        room: Room,
        chat_id: i64,
        requests: Vec<Request>,
    ) -> impl Future<Output = Result<Vec<Delivered>, TelegramError>> + use<> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shard(chat_id).addr.do_send(Post {
            chat_id,
            requests,
            reply,
            room,
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
        let delivered = self.post(chat_id, message_requests(params, parts)).await?;
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
        self.post(chat_id, vec![Request::ChatAction(params)])
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

//! The router: takes batches from intake and answers each update.
//!
//! It parses every update on its own, so a malformed or unknown one is
//! logged and skipped without touching the rest of the batch.

use actix::prelude::*;

use crate::bot::commands;
use crate::intake::{HandoffError, Incoming};
use crate::telegram::Telegram;
use crate::telegram::types::Message;
use crate::telegram::update::RawUpdate;
use frankenstein::updates::UpdateContent;

/// Stop taking updates (the answer to a batch becomes `ShuttingDown`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIntake;

pub struct Router {
    telegram: Telegram,
    bot_username: String,
    stopping: bool,
}

impl Router {
    pub fn new(telegram: Telegram, bot_username: String) -> Router {
        Router {
            telegram,
            bot_username,
            stopping: false,
        }
    }

    fn route(&mut self, update: RawUpdate, ctx: &mut Context<Self>) {
        let parsed = match update.parse() {
            Ok(parsed) => parsed,
            Err(err) => {
                crate::metrics::UPDATES_SKIPPED
                    .with_label_values(&["malformed"])
                    .inc();
                log::warn!(
                    "skipping update_id={} kind={}: {err}",
                    update.update_id,
                    update.kind()
                );
                return;
            }
        };
        match parsed.content {
            UpdateContent::Message(message) => self.on_message(&update, &message, ctx),
            _ => {
                crate::metrics::UPDATES_SKIPPED
                    .with_label_values(&["unhandled"])
                    .inc();
                log::debug!(
                    "ignoring update_id={} kind={}",
                    update.update_id,
                    update.kind()
                )
            }
        }
    }

    fn on_message(&mut self, update: &RawUpdate, message: &Message, ctx: &mut Context<Self>) {
        let (update_id, received) = (update.update_id, update.received);
        let chat_id = message.chat.id;
        let Some(text) = message.text.as_deref() else {
            return;
        };
        let reply = match commands::parse(text, &self.bot_username) {
            Some(command) => match command.name.as_str() {
                "start" => {
                    let name = message
                        .from
                        .as_ref()
                        .map_or("there", |user| user.first_name.as_str());
                    commands::start_text(name)
                }
                "help" => commands::help_text(),
                other => commands::unknown_text(other),
            },
            None => return,
        };
        let telegram = self.telegram.clone();
        ctx.spawn(
            async move {
                match telegram.send_text(chat_id, reply).await {
                    Ok(_) => crate::metrics::REPLY_LATENCY
                        .with_label_values(&["command"])
                        .observe(received.elapsed().as_secs_f64()),
                    Err(err) => {
                        log::warn!("reply failed: update_id={update_id} chat_id={chat_id}: {err}")
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
    }
}

impl Handler<Incoming> for Router {
    type Result = Result<(), HandoffError>;

    fn handle(&mut self, msg: Incoming, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(HandoffError::ShuttingDown);
        }
        for update in msg.0 {
            self.route(update, ctx);
        }
        Ok(())
    }
}

impl Handler<StopIntake> for Router {
    type Result = ();

    fn handle(&mut self, _: StopIntake, _: &mut Self::Context) {
        self.stopping = true;
    }
}

//! Questions to the assistant: the conversation loaded on the first one,
//! the answer streamed as a draft (or edits, in a group) and delivered, and
//! the next question started when it is.

use std::collections::VecDeque;

use actix::prelude::*;
use rand::Rng;
use tokio::sync::oneshot;

use super::state::{Effect, Question};
use super::{Session, delivery};
use crate::ai::reply::{final_requests, show_progress};
use crate::ai::{AiError, failure_text};
use crate::bot::commands;
use crate::metrics;
use crate::telegram::Request;

/// The answer to a question is ready, and about to be delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AnswerReady {
    epoch: u32,
    question: String,
    answer: String,
}

/// The answer to a question has been delivered (or given up on).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AnswerFinished;

impl Handler<AnswerReady> for Session {
    type Result = ();

    fn handle(&mut self, msg: AnswerReady, ctx: &mut Self::Context) {
        let effects = self.chat.answer_ready(msg.epoch, msg.question, msg.answer);
        self.after_answer(effects, ctx);
    }
}

impl Handler<AnswerFinished> for Session {
    type Result = ();

    fn handle(&mut self, _: AnswerFinished, ctx: &mut Self::Context) {
        self.cancel = None;
        let effects = self.chat.answer_finished();
        self.after_answer(effects, ctx);
    }
}

impl Session {
    /// Carries out what follows an answer. These effects belong to no update
    /// in hand: a question carries its own.
    fn after_answer(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Ask(next) => self.ask(next, ctx),
                Effect::Changed => self.changed(ctx),
                Effect::SaveExchange {
                    question,
                    answer,
                    with_record,
                } => self.save_exchange(question, answer, with_record, ctx),
                other => log::error!("chat_id={}: {other:?} after an answer", self.chat_id),
            }
        }
    }

    /// Answers a question, loading the conversation first when it is not.
    pub(super) fn ask(&mut self, question: Question, ctx: &mut Context<Self>) {
        if self.chat.history.is_some() {
            return self.stream(question, ctx);
        }
        let storage = self.deps.storage.clone();
        let (user_id, turns) = (self.chat_id, self.deps.assistant.history_turns() as i64);
        // Held mailbox: the history is there before anything else happens.
        ctx.wait(
            async move { storage.turns_recent(user_id, turns).await }
                .into_actor(self)
                .map(move |loaded, this, ctx| {
                    let history = match loaded {
                        Ok(turns) => turns.into_iter().map(|t| (t.question, t.answer)).collect(),
                        Err(err) => {
                            log::warn!("chat_id={user_id}: could not load the conversation: {err}");
                            VecDeque::new()
                        }
                    };
                    this.chat.history = Some(history);
                    this.stream(question, ctx);
                }),
        );
    }

    fn stream(&mut self, question: Question, ctx: &mut Context<Self>) {
        let Question {
            update,
            text,
            private,
        } = question;
        let deps = self.deps.clone();
        let messages = deps
            .assistant
            .conversation(self.chat.history.iter().flatten(), &text);
        let draft_id = rand::rng().random_range(1..=i32::MAX);
        let (cancel, cancelled) = oneshot::channel();
        self.cancel = Some(cancel);
        self.chat.answering(draft_id);
        let (chat_id, epoch, me) = (self.chat_id, self.chat.conversation.epoch, ctx.address());
        let pace = self.chat.policy.pace;
        deps.done.reply_posted();
        actix_rt::spawn(async move {
            let (progress, shown_progress) = tokio::sync::mpsc::unbounded_channel();
            let asked = deps
                .assistant
                .ask(chat_id, messages, Some(progress), cancelled);
            let shown = show_progress(
                &deps.telegram,
                chat_id,
                private,
                draft_id,
                pace,
                shown_progress,
            );
            let (result, shown) = tokio::join!(asked, shown);
            let (final_text, kind) = match &result {
                Ok(answer) if answer.cached => (answer.text.clone(), "ai_cached"),
                Ok(answer) => (answer.text.clone(), "ai"),
                Err(AiError::Cancelled) if !shown.text.is_empty() => (
                    format!("{}\n\n{}", shown.text, commands::STOPPED),
                    "ai_stopped",
                ),
                Err(AiError::Truncated { partial }) => (
                    format!("{partial}\n\n{}", commands::CUT_OFF),
                    "ai_truncated",
                ),
                Err(err) => {
                    log::warn!("chat_id={chat_id}: no answer from the assistant: {err}");
                    (failure_text(err).to_string(), "ai_failed")
                }
            };
            let requests: Vec<Request> = final_requests(chat_id, &final_text, &shown);
            if let Ok(answer) = &result {
                me.do_send(AnswerReady {
                    epoch,
                    question: text,
                    answer: answer.text.clone(),
                });
            }
            let room = deps.telegram.room(chat_id, requests.len()).await;
            let delivered = delivery::deliver(
                &deps.telegram,
                &deps.done,
                update.update_id,
                chat_id,
                room,
                requests,
            )
            .await;
            if delivered.is_ok() {
                metrics::REPLIES.with_label_values(&[kind]).inc();
                metrics::REPLY_LATENCY
                    .with_label_values(&["ai"])
                    .observe(update.received.elapsed().as_secs_f64());
            }
            me.do_send(AnswerFinished);
        });
    }
}

//! The AI assistant: an OpenAI-compatible backend behind a pool with limits,
//! retries and a circuit breaker, with answers cached by conversation.
//!
//! `client` makes one call and reads its stream, `pool` is the actor that
//! decides when calls happen, `reply` shows an answer to the user as it is
//! generated. [`Assistant`] is the cheap handle sessions ask through.

pub mod client;
pub mod pool;
pub mod reply;

use std::sync::Arc;

use actix::Addr;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{oneshot, watch};

pub use client::{AiError, Backend, ChatMessage, Progress};
pub use pool::{AiPool, Ask, PoolLimits};

use crate::cache::{Cache, key_of};
use crate::config::Config;
use crate::metrics;

/// An answer, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Answered {
    pub text: String,
    pub cached: bool,
}

#[derive(Clone)]
pub struct Assistant {
    pool: Addr<AiPool>,
    cache: Arc<Cache>,
    /// The running configuration: the model, the system prompt and the
    /// history length are read from it at each question, so that a change
    /// made while running applies to the next one.
    config: watch::Receiver<Arc<Config>>,
}

impl Assistant {
    pub fn new(
        pool: Addr<AiPool>,
        cache: Arc<Cache>,
        config: watch::Receiver<Arc<Config>>,
    ) -> Assistant {
        Assistant {
            pool,
            cache,
            config,
        }
    }

    pub fn pool(&self) -> &Addr<AiPool> {
        &self.pool
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// How many earlier exchanges go with a question.
    pub fn history_turns(&self) -> usize {
        self.config.borrow().ai_history_turns
    }

    /// The messages for a question: the system prompt, the recent
    /// exchanges, the question.
    pub fn conversation<'a>(
        &self,
        history: impl IntoIterator<Item = &'a (String, String)>,
        question: &str,
    ) -> Vec<ChatMessage> {
        let prompt = self.config.borrow().ai_system_prompt.clone();
        let mut messages = vec![ChatMessage::new("system", &prompt)];
        for (asked, answered) in history {
            messages.push(ChatMessage::new("user", asked));
            messages.push(ChatMessage::new("assistant", answered));
        }
        messages.push(ChatMessage::new("user", question));
        messages
    }

    fn cache_key(&self, messages: &[ChatMessage]) -> String {
        let model = self.config.borrow().ai_model.clone();
        let parts = std::iter::once(model.as_str()).chain(
            messages
                .iter()
                .flat_map(|m| [m.role.as_str(), m.content.as_str()]),
        );
        key_of(parts)
    }

    /// Answers from the cache, or asks the pool (streaming to `progress`).
    pub async fn ask(
        &self,
        user_id: i64,
        messages: Vec<ChatMessage>,
        progress: Option<UnboundedSender<Progress>>,
        cancel: oneshot::Receiver<()>,
    ) -> Result<Answered, AiError> {
        let key = self.cache_key(&messages);
        if let Some(text) = self
            .cache
            .get(&key)
            .await
            .and_then(|bytes| String::from_utf8(bytes).ok())
        {
            metrics::AI_CACHE.with_label_values(&["hit"]).inc();
            return Ok(Answered { text, cached: true });
        }
        metrics::AI_CACHE.with_label_values(&["miss"]).inc();
        let ask = Ask {
            user_id,
            messages,
            progress,
            cancel,
        };
        let text = self
            .pool
            .send(ask)
            .await
            .map_err(|e| AiError::Connect(format!("the AI pool is unavailable: {e}")))??;
        self.cache.put(&key, text.clone().into_bytes()).await;
        Ok(Answered {
            text,
            cached: false,
        })
    }
}

/// What the user is told when there is no answer.
pub fn failure_text(error: &AiError) -> &'static str {
    match error {
        AiError::Busy => "The assistant is busy right now. Please try again in a minute.",
        AiError::Cancelled => "Stopped.",
        _ => "The assistant is unavailable right now. Please try again in a minute.",
    }
}

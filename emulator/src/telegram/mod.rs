//! A fake Telegram Bot API server.
//!
//! It speaks the real wire format (JSON, form and multipart bodies,
//! long-polled getUpdates with offset confirmation, `{"ok":false,...}`
//! errors with `retry_after`), records what the bot sent, lets a test inject
//! updates, and can enforce Telegram's flood limits with real 429 answers.
//! In webhook mode it posts updates to the bot with the secret header and
//! retries until they are accepted, as Telegram does.
//!
//! [`FakeTelegram`] is a cheap handle: clones share one server, which stops
//! when the last handle is dropped. Tools in other processes drive it over
//! HTTP instead, through its control API at `/_fake/...` (injecting texts,
//! commands and photos, reading or long-polling what the bot sent, counters;
//! listed in the docs of `telegram/server.rs`).

mod server;
mod state;
mod updates;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use serde_json::Value;

pub use state::{
    BotCommand, Call, ChatNews, Draft, Failure, FailureMatch, FakeState, FloodLimits, SentMessage,
    UploadedFile, WebhookInfo,
};

use crate::serve::{Running, Served, serve};
use crate::wait::{WaitTimeout, Watched};
use server::Shared;

/// How to start a fake.
#[derive(Clone, Debug)]
pub struct FakeTelegramConfig {
    /// The token the bot must use; others get 401.
    pub token: String,
    /// Enforce Telegram's flood limits with 429 answers.
    pub flood_limits: Option<FloodLimits>,
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// HTTP worker threads.
    pub workers: usize,
    /// Keep a record of every call (turn off for long load tests).
    pub record_calls: bool,
    /// How long an idle connection stays open before the server closes
    /// it (actix-web's default when `None`): a short one plays servers and
    /// proxies that close keep-alive connections between requests.
    pub keep_alive: Option<std::time::Duration>,
    /// Serve HTTPS with a certificate of its own, offering HTTP/2 and
    /// HTTP/1.1 by ALPN as Telegram's servers do; a client trusts it with
    /// [`FakeTelegram::certificate_pem`].
    pub tls: bool,
}

impl Default for FakeTelegramConfig {
    fn default() -> Self {
        FakeTelegramConfig {
            token: "123456:FAKE-default-token".into(),
            flood_limits: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 2,
            record_calls: true,
            keep_alive: None,
            tls: false,
        }
    }
}

/// A running fake Bot API server; see the module docs.
#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Inner>,
    /// With TLS: the certificate it presents.
    certificate_pem: Option<Arc<str>>,
}

type Inner = Running<Shared>;

impl FakeTelegram {
    /// Starts the server on its own threads and returns once it listens.
    pub fn start(config: FakeTelegramConfig) -> std::io::Result<FakeTelegram> {
        let bot_id = config
            .token
            .split(':')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(123_456);
        let shared = Arc::new(Shared {
            token: config.token.clone(),
            bot_id,
            state: Watched::new(FakeState::new(
                config.flood_limits.clone(),
                config.record_calls,
            )),
            webhook_set: Default::default(),
        });
        let data = web::Data::new(shared.clone());
        let webhooks = shared.clone();
        let identity = config.tls.then(crate::tls::identity).transpose()?;
        let certificate_pem = identity
            .as_ref()
            .map(|identity| Arc::from(identity.certificate_pem.as_str()));
        let Served { addr, system } = serve(
            "fake-telegram",
            config.addr,
            config.workers,
            config.keep_alive,
            identity.map(|identity| identity.server),
            move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(data.clone());
                server::configure(cfg);
            },
            Some(Box::new(move || {
                Box::pin(server::deliver_webhooks(webhooks))
            })),
        )?;
        Ok(FakeTelegram {
            inner: Arc::new(Inner {
                shared,
                addr,
                system,
            }),
            certificate_pem,
        })
    }

    /// The base URL to give the bot as `TELEGRAM_API_URL`: `https://` for
    /// a fake with TLS.
    pub fn api_url(&self) -> String {
        let scheme = match self.certificate_pem {
            Some(_) => "https",
            None => "http",
        };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// With TLS, the certificate the fake presents, in PEM: what a client
    /// must trust (the daemon's `TELEGRAM_CA_FILE`).
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    /// With TLS, writes the certificate into `dir` for a client to trust
    /// (the daemon's `TELEGRAM_CA_FILE`) and answers its path; `None`
    /// without TLS.
    pub fn write_certificate(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<Option<std::path::PathBuf>> {
        let Some(pem) = self.certificate_pem() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join("fake-telegram-ca.pem");
        std::fs::write(&path, pem)?;
        Ok(Some(path))
    }

    /// How many Bot API calls came over HTTP/2.
    pub fn http2_calls(&self) -> usize {
        self.read(|s| s.http2_calls)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The control API's routes (`/_fake/...`, described in the docs of
    /// `telegram/server.rs`) for another actix-web app to serve as well,
    /// e.g. in a scope: the sandbox serves its emulator's under
    /// `/sandbox/emulator`.
    pub fn control_api(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static {
        let data = web::Data::new(self.inner.shared.clone());
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(data.clone());
            server::configure_control(cfg);
        }
    }

    fn state(&self) -> &Watched<FakeState> {
        &self.inner.shared.state
    }

    /// Reads anything from the fake's state.
    pub fn read<R>(&self, f: impl FnOnce(&FakeState) -> R) -> R {
        self.state().read(f)
    }

    // --- injecting updates ----------------------------------------------

    /// Queues a raw update (its `update_id` is assigned) and returns its id.
    pub fn inject_raw(&self, update: Value) -> i64 {
        self.state().update(|s| s.push_update(update))
    }

    /// A private text message from `user`; a leading `/command` gets its
    /// `bot_command` entity.
    pub fn inject_text(&self, user: i64, text: &str) -> i64 {
        self.inject_group_text(user, user, text)
    }

    /// Private text messages, queued at once: one lock and one wake-up for
    /// the whole batch, the updates built outside the lock.
    pub fn inject_texts<'a>(&self, messages: impl IntoIterator<Item = (i64, &'a str)>) {
        let messages: Vec<_> = messages.into_iter().collect();
        let first_id = self.state().update(|s| {
            let first = s.next_message_id;
            s.next_message_id += messages.len() as i64;
            first
        });
        let updates: Vec<_> = messages
            .iter()
            .zip(first_id..)
            .map(|((user, text), message_id)| updates::text_message(*user, *user, message_id, text))
            .collect();
        self.state().update(|s| {
            for update in updates {
                s.push_update(update);
            }
        });
    }

    /// A text message from `user` in chat `chat_id` (negative for groups).
    pub fn inject_group_text(&self, chat_id: i64, user: i64, text: &str) -> i64 {
        self.state().update(|s| s.push_text(chat_id, user, text))
    }

    /// A press of an inline button with `data` under message `message_id`.
    pub fn inject_callback(&self, user: i64, message_id: i64, data: &str) -> i64 {
        self.state().update(|s| {
            let query_id = format!("cbq-{}", s.next_update_id);
            s.push_update(updates::callback_query(user, &query_id, message_id, data))
        })
    }

    /// The user pressed "stop" on the draft `draft_id` being streamed to them.
    pub fn inject_stop(&self, chat_id: i64, draft_id: i64) -> i64 {
        self.state().update(|s| {
            s.push_update(serde_json::json!({"stopped_message_generation": {
                "chat": updates::chat(chat_id),
                "draft_id": draft_id,
            }}))
        })
    }

    /// Stores a file the bot can fetch with getFile; returns its
    /// `(file_id, file_unique_id)`.
    pub fn add_file(&self, bytes: Vec<u8>, extension: &str) -> (String, String) {
        self.state().update(|s| s.store_file(bytes, extension))
    }

    /// A photo message from `user` with these image bytes.
    pub fn inject_photo(&self, user: i64, bytes: Vec<u8>, caption: Option<&str>) -> i64 {
        self.state()
            .update(|s| s.push_photo(user, user, bytes, caption))
    }

    /// A photo message for a file stored with [`FakeTelegram::add_file`]:
    /// the same photo sent again has the same `file_unique_id`.
    pub fn inject_stored_photo(&self, user: i64, file_id: &str, file_unique_id: &str) -> i64 {
        self.state().update(|s| {
            let size = s.file_size(file_id).unwrap_or(0);
            let message_id = s.next_message_id;
            s.next_message_id += 1;
            s.push_update(updates::photo_message(
                user,
                user,
                message_id,
                file_id,
                file_unique_id,
                size,
                None,
            ))
        })
    }

    /// A file sent as a document (e.g. an uncompressed image).
    pub fn inject_document(&self, user: i64, bytes: Vec<u8>, file_name: &str, mime: &str) -> i64 {
        self.state().update(|s| {
            let size = bytes.len();
            let extension = file_name.rsplit('.').next().unwrap_or("bin");
            let (file_id, unique) = s.store_file(bytes, extension);
            let message_id = s.next_message_id;
            s.next_message_id += 1;
            let file = updates::DocumentFile {
                file_id: &file_id,
                file_unique_id: &unique,
                size,
                file_name,
                mime_type: mime,
            };
            s.push_update(updates::document_message(user, user, message_id, file))
        })
    }

    /// Answers getMe with only the fields every Bot API server sends (`id`,
    /// `first_name`, `username`), as some emulators do.
    pub fn answer_minimal_get_me(&self) {
        self.state().update(|s| s.minimal_get_me = true);
    }

    /// Numbers updates from `next` on (if that is ahead): Telegram's ids
    /// keep rising across a bot's restarts, so a new fake standing in for
    /// the same server after one continues where the last one stopped.
    pub fn continue_update_ids_from(&self, next: i64) {
        self.state()
            .update(|s| s.next_update_id = s.next_update_id.max(next));
    }

    /// The id the next queued update will get.
    pub fn next_update_id(&self) -> i64 {
        self.read(|s| s.next_update_id)
    }

    /// Plays `telegram-bot-api --local`: files stored from now on are
    /// written under `dir`, getFile answers their absolute path and no size
    /// limit, and they cannot be downloaded over HTTP.
    pub fn local_mode(&self, dir: &std::path::Path) {
        let dir = dir.to_path_buf();
        self.state().update(|s| s.local_dir = Some(dir));
    }

    /// Refuses request bodies sent without a `Content-Length` (chunked)
    /// with 411, as some proxies in front of a Bot API server do.
    pub fn require_content_length(&self) {
        self.state().update(|s| s.require_content_length = true);
    }

    /// Makes getUpdates ignore `offset` and `timeout`, as some emulators
    /// do: every update the fake has, answered at once, confirmed or not.
    pub fn ignore_offset_and_timeout(&self) {
        self.state().update(|s| s.sloppy_polling = true);
    }

    /// Posts each webhook delivery to one of `urls` at random rather than
    /// to the URL the bot set: a load balancer in front of several
    /// instances of the bot.
    pub fn spread_webhook_over(&self, urls: Vec<String>) {
        self.state().update(|s| s.webhook_targets = urls);
    }

    /// Answers the next call matching `when` with `failure` instead.
    pub fn fail_next(&self, when: FailureMatch, failure: Failure) {
        self.state().update(|s| s.failures.push((when, failure)));
    }

    /// Answers every call matching `when` with `failure` until
    /// [`FakeTelegram::end_outage`]: Telegram down, or a proxy in front of
    /// it answering 502, for as long as a test likes.
    pub fn start_outage(&self, when: FailureMatch, failure: Failure) {
        self.state().update(|s| s.outage = Some((when, failure)));
    }

    /// Ends the outage [`FakeTelegram::start_outage`] began.
    pub fn end_outage(&self) {
        self.state().update(|s| s.outage = None);
    }

    // --- what the bot did -------------------------------------------------

    pub fn messages_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.read(|s| s.messages_to(chat_id))
    }

    pub fn all_messages(&self) -> Vec<SentMessage> {
        self.read(|s| s.messages.clone())
    }

    pub fn total_messages(&self) -> usize {
        self.read(|s| s.total_messages())
    }

    pub fn drafts_to(&self, chat_id: i64) -> Vec<Draft> {
        self.read(|s| s.drafts_to(chat_id))
    }

    pub fn actions_to(&self, chat_id: i64) -> Vec<String> {
        self.read(|s| s.actions_to(chat_id))
    }

    pub fn callback_answers(&self) -> Vec<(String, Option<String>)> {
        self.read(|s| s.callback_answers.clone())
    }

    pub fn commands(&self) -> Vec<BotCommand> {
        self.read(|s| s.commands.clone())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.read(|s| s.calls.clone())
    }

    /// Sends the fake refused with 429, scripted ones included.
    pub fn rejected_429(&self) -> usize {
        self.read(|s| s.rejected_429)
    }

    pub fn webhook(&self) -> Option<WebhookInfo> {
        self.read(|s| s.webhook.clone())
    }

    pub fn confirmed_offset(&self) -> i64 {
        self.read(|s| s.confirmed_offset)
    }

    // --- waiting ----------------------------------------------------------

    /// Waits until `condition` holds on the fake's state.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut(&FakeState) -> bool,
    ) -> Result<(), WaitTimeout> {
        self.state().until("a condition", timeout, condition).await
    }

    /// A chat's counts and the messages after the first `messages`, once
    /// it has more than `messages` messages or more than `drafts` drafts
    /// (a count not given is not waited for) or `timeout` has passed: what
    /// `GET /_fake/chat` answers.
    pub async fn chat_news(
        &self,
        chat_id: i64,
        messages: Option<usize>,
        drafts: Option<usize>,
        timeout: Duration,
    ) -> ChatNews {
        server::chat_news(self.state(), chat_id, messages, drafts, timeout).await
    }

    /// Waits until the bot has sent at least `n` messages in all.
    pub async fn wait_for_total_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.state().update(|s| {
            if s.messages.len() >= n {
                let _ = tx.send(());
            } else {
                s.total_waiters.push((n, tx));
            }
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(self.explain(WaitTimeout {
                what: format!("{n} messages in all"),
                after: timeout,
            })),
        }
    }

    /// Waits until the bot has sent at least `n` messages to `chat_id`.
    pub async fn wait_for_messages(
        &self,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.state()
            .until(format!("{n} messages to chat {chat_id}"), timeout, |s| {
                s.messages.iter().filter(|m| m.chat_id == chat_id).count() >= n
            })
            .await
            .map_err(|e| self.explain(e))
    }

    /// Waits until the bot has confirmed (or taken through the webhook)
    /// the update with this id.
    pub async fn wait_confirmed(
        &self,
        update_id: i64,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.state()
            .until(format!("update {update_id} confirmed"), timeout, |s| {
                s.confirmed_offset > update_id
            })
            .await
    }

    fn explain(&self, mut error: WaitTimeout) -> WaitTimeout {
        let (messages, queued, calls) =
            self.read(|s| (s.messages.len(), s.queue.len(), s.calls.len()));
        error.what = format!(
            "{} (the bot sent {messages} messages in {calls} calls; {queued} updates unconfirmed)",
            error.what
        );
        error
    }
}

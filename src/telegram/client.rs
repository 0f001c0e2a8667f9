//! The Bot API transport: typed calls over pooled awc connections.
//!
//! This layer only speaks HTTP to the Bot API. It never retries and never
//! throttles: sends to chats go through the outbox, which owns Telegram's
//! limits, and long polling owns its own backoff. Request and response bodies
//! are the types of the `frankenstein` crate, which tracks the Bot API.
//!
//! The token is part of every URL, so no URL is ever put into an error or a
//! log line; errors carry the method name instead, and any text that came
//! from below (awc's error messages) passes through [`Endpoint::redact`].
//!
//! `awc::Client` is bound to the thread that made it, so an actor builds its
//! own client from the shared, thread-safe [`Endpoint`] when it starts.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use actix_multipart_rfc7578::client::multipart;
use awc::http::StatusCode;
use bytes::Bytes;
use frankenstein::methods::{
    DeleteWebhookParams, EditMessageTextParams, GetFileParams, GetUpdatesParams,
    SendChatActionParams, SendMessageDraftParams, SendMessageParams, SetMyCommandsParams,
    SetWebhookParams,
};
use frankenstein::types::File;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::connect::DirectConnector;
use super::error::TelegramError;
use super::proxy::{Proxy, ProxyEnv, ProxyError, TunnelConnector};
use super::tls::{self, CaFileError, HttpVersions};
use crate::config::{Config, Secret};

/// The Bot API cannot be set up to be reached.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("HTTPS_PROXY / HTTP_PROXY / ALL_PROXY")]
    Proxy(#[source] ProxyError),
    #[error(transparent)]
    CaFile(#[from] CaFileError),
}

/// What the bot keeps of a message it sent. Telegram answers with the
/// whole `Message`; only its id is ever used (edits refer to it), and
/// reading just that skips building the rest on every reply.
/// A multipart body, read into one buffer.
async fn collect_body(body: multipart::Body<'_>) -> Result<Bytes, String> {
    actix_web::body::to_bytes(body)
        .await
        .map_err(|err| format!("cannot encode the form: {err}"))
}

/// The bot as getMe describes it: the fields the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Me {
    pub id: i64,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Sent {
    pub message_id: i32,
}

/// editMessageText answers with the message, or `true` for inline messages
/// (and some emulators with `null`, read as `None`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum SentOrBool {
    Sent(Sent),
    Bool(bool),
}

/// The placeholder that replaces the token in anything printed.
const TOKEN_PLACEHOLDER: &str = "<token>";

/// Where the Bot API is and how to talk to it; shared by every thread.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    api_url: String,
    token: Secret,
    timeout: Duration,
    max_connections: usize,
    local_mode: bool,
    proxy: Option<Proxy>,
    /// Roots and ALPN ([`super::tls`]), made once for every client.
    tls: Arc<rustls::ClientConfig>,
}

impl Endpoint {
    /// The Bot API `config` names, through the proxy the environment names
    /// for it, if any ([`super::proxy`]), with the TLS settings it gives.
    pub fn new(config: &Config) -> Result<Endpoint, EndpointError> {
        let proxy = ProxyEnv::from_env()
            .for_url(&config.telegram_api_url)
            .map_err(EndpointError::Proxy)?;
        let ca_file = (!config.telegram_ca_file.is_empty())
            .then(|| std::path::Path::new(&config.telegram_ca_file));
        // Validated with the configuration: only "1.1" and "2" get here.
        let versions =
            HttpVersions::parse(&config.telegram_http_version).unwrap_or(HttpVersions::Http1);
        let tls = Arc::new(tls::bot_api_config(ca_file, versions)?);
        Ok(Endpoint {
            inner: Arc::new(EndpointInner {
                api_url: config.telegram_api_url.trim_end_matches('/').to_string(),
                token: config.bot_token.clone(),
                timeout: config.http_timeout(),
                max_connections: config.telegram_max_connections,
                local_mode: config.telegram_local_mode,
                proxy,
                tls,
            }),
        })
    }

    /// The proxy the Bot API is reached through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.inner.proxy.as_ref()
    }

    /// Builds a client for the current thread.
    pub fn client(&self) -> BotApi {
        let connector = awc::Connector::new()
            .rustls_0_23(self.inner.tls.clone())
            .limit(self.inner.max_connections)
            .conn_keep_alive(Duration::from_secs(90))
            .timeout(self.inner.timeout.min(Duration::from_secs(10)));
        // The connector's type differs with a proxy, so each way finishes
        // its own builder, with the same settings.
        macro_rules! finish {
            ($builder:expr) => {
                $builder
                    .timeout(self.inner.timeout)
                    .disable_redirects()
                    .add_default_header((
                        "User-Agent",
                        concat!("actorbot/", env!("CARGO_PKG_VERSION")),
                    ))
                    .finish()
            };
        }
        let http = match &self.inner.proxy {
            Some(proxy) => finish!(
                awc::Client::builder()
                    .connector(connector.connector(TunnelConnector(proxy.clone())))
            ),
            None => finish!(
                awc::Client::builder().connector(connector.connector(DirectConnector::default()))
            ),
        };
        BotApi {
            http,
            endpoint: self.clone(),
        }
    }

    /// The API base with the token hidden, for logs.
    pub fn display_url(&self) -> String {
        format!("{}/bot{}", self.inner.api_url, TOKEN_PLACEHOLDER)
    }

    /// Removes the token from any text about to be logged or returned.
    pub fn redact(&self, text: &str) -> String {
        let token = self.inner.token.expose();
        if token.is_empty() {
            text.to_string()
        } else {
            text.replace(token, TOKEN_PLACEHOLDER)
        }
    }

    fn method_url(&self, method: &str) -> String {
        format!(
            "{}/bot{}/{}",
            self.inner.api_url,
            self.inner.token.expose(),
            method
        )
    }

    fn file_url(&self, file_path: &str) -> String {
        format!(
            "{}/file/bot{}/{}",
            self.inner.api_url,
            self.inner.token.expose(),
            file_path.trim_start_matches('/')
        )
    }
}

/// The connection was refused for the server's certificate: no retry
/// changes that, so the error says what would.
fn untrusted_certificate(err: &awc::error::SendRequestError) -> bool {
    let awc::error::SendRequestError::Connect(awc::error::ConnectError::Io(io)) = err else {
        return false;
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
}

/// A file to upload in a multipart request.
#[derive(Clone, Debug)]
pub struct Upload {
    pub file_name: String,
    pub mime: mime::Mime,
    pub bytes: Bytes,
}

/// A Bot API client bound to the current thread. Cloning shares the pool.
#[derive(Clone)]
pub struct BotApi {
    http: awc::Client,
    endpoint: Endpoint,
}

#[derive(serde::Deserialize)]
struct ApiResponse<T> {
    ok: bool,
    result: Option<T>,
    error_code: Option<i32>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

/// An error answer's `parameters`, read here rather than with
/// frankenstein's type, whose `retry_after` is a `u16`: a longer wait would
/// make the whole error unreadable and the 429 retried at once.
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    migrate_to_chat_id: Option<i64>,
    retry_after: Option<u64>,
}

impl BotApi {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Calls `method` with a JSON body and decodes its `result`.
    pub async fn call<P, R>(&self, method: &str, params: &P) -> Result<R, TelegramError>
    where
        P: Serialize,
        R: DeserializeOwned,
    {
        self.call_with_timeout(method, params, None).await
    }

    async fn call_with_timeout<P, R>(
        &self,
        method: &str,
        params: &P,
        timeout: Option<Duration>,
    ) -> Result<R, TelegramError>
    where
        P: Serialize,
        R: DeserializeOwned,
    {
        let mut request = self.http.post(self.endpoint.method_url(method));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send_json(params).await;
        self.decode(method, response).await
    }

    /// Calls `method` as multipart/form-data with one file part.
    pub async fn call_multipart<P, R>(
        &self,
        method: &str,
        params: &P,
        file_field: &str,
        upload: Upload,
    ) -> Result<R, TelegramError>
    where
        P: Serialize,
        R: DeserializeOwned,
    {
        let fields = serde_json::to_value(params).map_err(|err| TelegramError::Refused {
            method: method.to_string(),
            message: format!("cannot encode parameters: {err}"),
        })?;
        let mut form = multipart::Form::default();
        if let serde_json::Value::Object(map) = fields {
            for (name, value) in map {
                if name == file_field || value.is_null() {
                    continue;
                }
                // Scalars go as plain text, objects and arrays as JSON, as
                // the Bot API expects in form bodies.
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                form.add_text(name, text);
            }
        }
        form.add_reader_file_with_mime(
            file_field.to_string(),
            Cursor::new(upload.bytes),
            upload.file_name,
            upload.mime,
        );
        let content_type = form.content_type();
        // The document is in memory: the body is sent whole, with a
        // Content-Length, which proxies in front of a Bot API server may
        // require (a streamed body would go chunked).
        let body = collect_body(multipart::Body::from(form))
            .await
            .map_err(|message| TelegramError::Refused {
                method: method.to_string(),
                message,
            })?;
        let response = self
            .http
            .post(self.endpoint.method_url(method))
            .content_type(content_type)
            .send_body(body)
            .await;
        self.decode(method, response).await
    }

    async fn decode<R, S>(
        &self,
        method: &str,
        response: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
    ) -> Result<R, TelegramError>
    where
        R: DeserializeOwned,
        S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    {
        let mut response = response.map_err(|err| {
            let mut message = self.endpoint.redact(&err.to_string());
            if untrusted_certificate(&err) {
                message.push_str(
                    " (a Bot API server with a certificate of a private CA needs that CA in TELEGRAM_CA_FILE)",
                );
            }
            TelegramError::Transport {
                method: method.to_string(),
                message,
            }
        })?;
        let status = response.status();
        let body = response
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .map_err(|err| TelegramError::Transport {
                method: method.to_string(),
                message: self.endpoint.redact(&err.to_string()),
            })?;
        parse_response(method, status, &body)
    }

    /// Who the bot is: only what the daemon uses is read, so a Bot API
    /// server that leaves out other fields (`is_bot`, the `can_*` flags)
    /// still answers.
    pub async fn get_me(&self) -> Result<Me, TelegramError> {
        self.call("getMe", &serde_json::json!({})).await
    }

    /// Long-polls for updates. The updates are returned as their JSON text
    /// so that one malformed or unknown update cannot spoil the batch.
    pub async fn get_updates(
        &self,
        params: &GetUpdatesParams,
    ) -> Result<Vec<Box<serde_json::value::RawValue>>, TelegramError> {
        let wait = Duration::from_secs(u64::from(params.timeout.unwrap_or(0)));
        self.call_with_timeout(
            "getUpdates",
            params,
            Some(wait + self.endpoint.inner.timeout),
        )
        .await
    }

    pub async fn set_webhook(&self, params: &SetWebhookParams) -> Result<bool, TelegramError> {
        self.call("setWebhook", params).await
    }

    pub async fn delete_webhook(
        &self,
        params: &DeleteWebhookParams,
    ) -> Result<bool, TelegramError> {
        self.call("deleteWebhook", params).await
    }

    pub async fn set_my_commands(
        &self,
        params: &SetMyCommandsParams,
    ) -> Result<bool, TelegramError> {
        self.call("setMyCommands", params).await
    }

    pub async fn send_message(&self, params: &SendMessageParams) -> Result<Sent, TelegramError> {
        self.call("sendMessage", params).await
    }

    pub async fn send_message_draft(
        &self,
        params: &SendMessageDraftParams,
    ) -> Result<bool, TelegramError> {
        self.call("sendMessageDraft", params).await
    }

    pub async fn edit_message_text(
        &self,
        params: &EditMessageTextParams,
    ) -> Result<Option<SentOrBool>, TelegramError> {
        self.call("editMessageText", params).await
    }

    pub async fn send_chat_action(
        &self,
        params: &SendChatActionParams,
    ) -> Result<bool, TelegramError> {
        self.call("sendChatAction", params).await
    }

    pub async fn get_file(&self, file_id: &str) -> Result<File, TelegramError> {
        let params = GetFileParams::builder().file_id(file_id).build();
        self.call("getFile", &params).await
    }

    /// Downloads a file by the `file_path` that getFile returned, refusing
    /// anything larger than `max_bytes` without reading it all.
    pub async fn download_file(
        &self,
        file_path: &str,
        max_bytes: usize,
    ) -> Result<Bytes, TelegramError> {
        const METHOD: &str = "downloadFile";
        if std::path::Path::new(file_path).is_absolute() {
            // A local Bot API server (`--local`) answers a path on its disk.
            return if self.endpoint.inner.local_mode {
                read_local_file(file_path, max_bytes).await
            } else {
                Err(TelegramError::Unusable {
                    method: METHOD.to_string(),
                    message: "getFile answered a path on the Bot API server's disk, as a server \
                              started with --local does: set TELEGRAM_LOCAL_MODE=true on a \
                              machine that shares that disk"
                        .to_string(),
                })
            };
        }
        let transport = |err: String| TelegramError::Transport {
            method: METHOD.to_string(),
            message: self.endpoint.redact(&err),
        };
        let mut response = self
            .http
            .get(self.endpoint.file_url(file_path))
            .send()
            .await
            .map_err(|err| transport(err.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(TelegramError::Api {
                method: METHOD.to_string(),
                error_code: i32::from(status.as_u16()),
                description: status.canonical_reason().unwrap_or("error").to_string(),
                retry_after: None,
                migrate_to_chat_id: None,
            });
        }
        response
            .body()
            .limit(max_bytes)
            .await
            .map_err(|err| match err {
                awc::error::PayloadError::Overflow => TelegramError::Refused {
                    method: METHOD.to_string(),
                    message: format!("file larger than {max_bytes} bytes"),
                },
                other => transport(other.to_string()),
            })
    }
}

/// Reads a file a local Bot API server keeps, refusing anything larger than
/// `max_bytes` before reading it.
async fn read_local_file(path: &str, max_bytes: usize) -> Result<Bytes, TelegramError> {
    const METHOD: &str = "readLocalFile";
    let unusable = |err: std::io::Error| TelegramError::Unusable {
        method: METHOD.to_string(),
        message: format!("cannot read {path} (TELEGRAM_LOCAL_MODE): {err}"),
    };
    let size = tokio::fs::metadata(path).await.map_err(unusable)?.len();
    if size > max_bytes as u64 {
        return Err(TelegramError::Refused {
            method: METHOD.to_string(),
            message: format!("file larger than {max_bytes} bytes"),
        });
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(unusable)
}

/// Decodes a Bot API answer: `{"ok":true,"result":...}` or Telegram's error.
fn parse_response<R: DeserializeOwned>(
    method: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<R, TelegramError> {
    let decode_error = |message: String| TelegramError::Decode {
        method: method.to_string(),
        status: status.as_u16(),
        message,
    };
    let parsed: ApiResponse<R> = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        // A proxy's HTML error page or an empty 502: keep the status, which
        // decides whether the call is worth retrying.
        Err(err) if !status.is_success() => {
            return Err(TelegramError::Api {
                method: method.to_string(),
                error_code: i32::from(status.as_u16()),
                description: format!(
                    "{} (unreadable body: {err})",
                    status.canonical_reason().unwrap_or("error")
                ),
                retry_after: None,
                migrate_to_chat_id: None,
            });
        }
        Err(err) => return Err(decode_error(err.to_string())),
    };
    if parsed.ok {
        return match parsed.result {
            Some(result) => Ok(result),
            // `"result": null` (or none): what a caller reading an `Option`
            // takes as `None`, as editMessageText's answer from emulators
            // such as telegram-test-api; anything else needs a result.
            None => serde_json::from_value(serde_json::Value::Null)
                .map_err(|_| decode_error("\"ok\":true without a result".to_string())),
        };
    }
    let parameters = parsed.parameters.unwrap_or_default();
    Err(TelegramError::Api {
        method: method.to_string(),
        error_code: parsed
            .error_code
            .unwrap_or_else(|| i32::from(status.as_u16())),
        description: parsed.description.unwrap_or_default(),
        retry_after: parameters
            .retry_after
            .map(|secs| u32::try_from(secs).unwrap_or(u32::MAX)),
        migrate_to_chat_id: parameters.migrate_to_chat_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_longer_than_a_u16_is_read() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 86400","parameters":{"retry_after":86400}}"#;
        let err =
            parse_response::<bool>("sendMessage", StatusCode::TOO_MANY_REQUESTS, body).unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn telegram_error_shape_is_kept() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#;
        let err =
            parse_response::<bool>("sendMessage", StatusCode::TOO_MANY_REQUESTS, body).unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.is_transient());

        let body = br#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234}}"#;
        let err = parse_response::<bool>("sendMessage", StatusCode::BAD_REQUEST, body).unwrap_err();
        assert_eq!(err.migrate_to_chat_id(), Some(-1001234));
        assert!(!err.is_transient());
    }

    #[test]
    fn unreadable_error_bodies_keep_the_status() {
        let err = parse_response::<bool>("getMe", StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert!(err.is_transient(), "{err}");
        let err = parse_response::<bool>("getMe", StatusCode::OK, b"{not json").unwrap_err();
        assert!(matches!(err, TelegramError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_null_result_is_none_where_none_is_expected() {
        let ok = StatusCode::OK;
        let edit = |body: &[u8]| {
            parse_response::<Option<SentOrBool>>("editMessageText", ok, body)
                .map(|r| format!("{r:?}"))
        };
        // telegram-test-api answers every edit so.
        assert_eq!(edit(br#"{"ok":true,"result":null}"#).unwrap(), "None");
        assert_eq!(edit(br#"{"ok":true}"#).unwrap(), "None");
        assert_eq!(
            edit(br#"{"ok":true,"result":{"message_id":5,"date":0}}"#).unwrap(),
            "Some(Sent(Sent { message_id: 5 }))"
        );
        assert_eq!(
            edit(br#"{"ok":true,"result":true}"#).unwrap(),
            "Some(Bool(true))"
        );
        // Where a value is needed, a null one is still malformed.
        for body in [&br#"{"ok":true,"result":null}"#[..], br#"{"ok":true}"#] {
            let err = parse_response::<Sent>("sendMessage", ok, body).unwrap_err();
            assert!(matches!(err, TelegramError::Decode { .. }), "{err}");
            let err = parse_response::<bool>("sendChatAction", ok, body).unwrap_err();
            assert!(matches!(err, TelegramError::Decode { .. }), "{err}");
        }
    }

    #[test]
    fn redaction_hides_the_token() {
        let config = Config::load(
            &[
                ("BOT_TOKEN", "4242:SECRET_abc"),
                ("CONFIG_DIR", "/nonexistent"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
        .unwrap();
        let endpoint = Endpoint::new(&config).unwrap();
        let url = endpoint.method_url("getMe");
        assert!(url.contains("SECRET_abc"));
        let shown = endpoint.redact(&format!("failed to connect to {url}"));
        assert!(!shown.contains("SECRET_abc"), "{shown}");
        assert!(!endpoint.display_url().contains("SECRET_abc"));
    }
}

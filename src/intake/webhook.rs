//! Webhook intake: the route Telegram posts updates to.
//!
//! A request without the right `X-Telegram-Bot-Api-Secret-Token` is refused
//! with 401 before any of its body is read. A body over [`MAX_BODY`] is
//! refused with 413: at once when its `Content-Length` says so, otherwise as
//! soon as what has arrived passes the bound, so a hostile client cannot make
//! the daemon hold more than that. An update is answered 200 only after
//! the router has taken it; if the router cannot take it (shutting down,
//! overloaded) the answer is 503 and Telegram delivers it again later.
//! A body that is not an update is logged and acknowledged: Telegram would
//! only send the same bytes again.
//!
//! In a cluster any instance may receive a delivery (a load balancer in
//! front of them all): the update is written to the shared inbox and the
//! relay, and the answer is 200 once that commits; the leader routes it
//! ([`crate::cluster::relay`]). A delivery Telegram retried finds its
//! update in the inbox and is acknowledged without being relayed again.

use crate::health::memory::MemoryGauge;
use actix::Recipient;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use super::Incoming;
use crate::config::Secret;
use crate::storage::{InboxRow, Storage};
use crate::telegram::update::RawUpdate;

pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// Updates are small; anything near this is not from Telegram.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct WebhookState {
    pub sink: Recipient<Incoming>,
    pub secret: Secret,
    /// At the memory limit, or while the work in flight fills the room
    /// under it, deliveries are turned away for Telegram to retry
    /// ([`crate::health::memory`]).
    pub memory: MemoryGauge,
    /// In a cluster: updates go to the shared inbox for the leader, not to
    /// this instance's router.
    pub relay: Option<Storage>,
}

/// Why a body was not read.
enum Unread {
    TooLarge,
    Broken(actix_web::error::PayloadError),
}

/// Reads the body, giving up as soon as it is known to pass [`MAX_BODY`].
async fn read_body(request: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, Unread> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(Unread::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(Unread::Broken)?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Unread::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
) -> HttpResponse {
    let given = request
        .headers()
        .get(SECRET_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !state.secret.matches(given) {
        log::warn!(
            "webhook: refused a request with a wrong secret from {}",
            request
                .peer_addr()
                .map_or_else(|| "unknown".to_string(), |a| a.to_string())
        );
        return HttpResponse::Unauthorized().finish();
    }
    if state.memory.admit() == 0 {
        crate::metrics::INTAKE_HELD_MEMORY.inc();
        // Telegram delivers it again later; nothing is lost.
        return HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .finish();
    }
    let body = match read_body(&request, payload).await {
        Ok(body) => body,
        Err(Unread::TooLarge) => {
            log::warn!("webhook: refused a body over {MAX_BODY} bytes");
            return HttpResponse::PayloadTooLarge().finish();
        }
        Err(Unread::Broken(err)) => {
            log::warn!("webhook: the body could not be read: {err}");
            return HttpResponse::BadRequest().finish();
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        log::warn!(
            "webhook: skipping a body that is not UTF-8 ({} bytes)",
            body.len()
        );
        return HttpResponse::Ok().finish();
    };
    let Some(update) = RawUpdate::from_json(text) else {
        log::warn!(
            "webhook: skipping a body that is not an update with an update_id ({} bytes)",
            body.len()
        );
        return HttpResponse::Ok().finish();
    };
    let update_id = update.update_id;
    crate::metrics::UPDATES_IN
        .with_label_values(&["webhook"])
        .inc();
    if let Some(storage) = &state.relay {
        return relay(storage, update).await;
    }
    let refused = match state.sink.send(Incoming(vec![update])).await {
        Ok(Ok(())) => return HttpResponse::Ok().finish(),
        Ok(Err(err)) => err.to_string(),
        Err(err) => err.to_string(),
    };
    log::warn!("webhook: update_id={update_id} not taken, Telegram will retry: {refused}");
    HttpResponse::ServiceUnavailable().finish()
}

/// Writes `update` to the shared inbox for the leader; 200 once it is
/// committed, 503 (Telegram delivers it again) if it could not be.
async fn relay(storage: &Storage, update: RawUpdate) -> HttpResponse {
    let update_id = update.update_id;
    let Some(chat_id) = update.chat_id() else {
        // Taken and set aside, as the router does with such an update.
        crate::metrics::UPDATES_SKIPPED
            .with_label_values(&["unhandled"])
            .inc();
        log::warn!(
            "skipping update_id={update_id} kind={}: it belongs to no chat",
            update.kind()
        );
        return HttpResponse::Ok().finish();
    };
    let row = InboxRow {
        update_id,
        chat_id: Some(chat_id),
        body: update.body.to_string(),
    };
    match storage.inbox_relay(row).await {
        Ok(true) => HttpResponse::Ok().finish(),
        Ok(false) => {
            crate::metrics::UPDATES_SKIPPED
                .with_label_values(&["duplicate"])
                .inc();
            HttpResponse::Ok().finish()
        }
        Err(err) => {
            log::warn!(
                "webhook: update_id={update_id} could not be written for the leader, Telegram will retry: {err}"
            );
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

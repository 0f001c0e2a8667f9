//! Webhook intake: the route Telegram posts updates to.
//!
//! A request without the right `X-Telegram-Bot-Api-Secret-Token` is refused
//! with 401 and its body left unparsed (actix-web has read it, up to
//! [`MAX_BODY`], before the handler runs; a longer one is refused with 413). An update is answered 200 only after
//! the router has taken it; if the router cannot take it (shutting down,
//! overloaded) the answer is 503 and Telegram delivers it again later.
//! A body that is not an update is logged and acknowledged: Telegram would
//! only send the same bytes again.

use actix::Recipient;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{HandoffError, Incoming};
use crate::config::Secret;
use crate::telegram::update::RawUpdate;

pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// Updates are small; anything near this is not from Telegram.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct WebhookState {
    pub sink: Recipient<Incoming>,
    pub secret: Secret,
}

pub async fn receive(
    request: HttpRequest,
    body: web::Bytes,
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
    match state.sink.send(Incoming(vec![update])).await {
        Ok(Ok(())) => HttpResponse::Ok().finish(),
        Ok(Err(err @ HandoffError::ShuttingDown)) | Ok(Err(err @ HandoffError::Unavailable(_))) => {
            log::warn!("webhook: update_id={update_id} not taken, Telegram will retry: {err}");
            HttpResponse::ServiceUnavailable().finish()
        }
        Err(err) => {
            log::warn!("webhook: update_id={update_id} not taken, Telegram will retry: {err}");
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

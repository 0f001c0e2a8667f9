//! The dead-letter endpoints: updates set aside because they crashed their
//! session every time, listed, retried or dropped by an operator. Behind the
//! admin token like every endpoint but `/health` and `/ready`.

use actix::Recipient;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::Observed;
use crate::router::Replay;
use crate::telegram::update::RawUpdate;

/// Where a retried update goes: the router, which hands it to its session.
#[derive(Clone)]
pub struct Retry(pub Recipient<Replay>);

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

/// `GET /dead-letters?limit=N` (newest first, 100 by default).
pub async fn list(observed: web::Data<Observed>, query: web::Query<ListQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let storage = &observed.storage;
    match tokio::try_join!(
        storage.dead_letters_count(),
        storage.dead_letters_list(limit)
    ) {
        Ok((count, letters)) => {
            HttpResponse::Ok().json(json!({"count": count, "dead_letters": letters}))
        }
        Err(err) => HttpResponse::ServiceUnavailable().json(json!({"error": err.to_string()})),
    }
}

/// `POST /dead-letters/{update_id}/retry`: takes it back and hands it to
/// its session now.
pub async fn retry(
    observed: web::Data<Observed>,
    router: web::Data<Retry>,
    update_id: web::Path<i64>,
) -> HttpResponse {
    let update_id = update_id.into_inner();
    let letter = match observed.storage.dead_letter_take(update_id).await {
        Ok(Some(letter)) => letter,
        Ok(None) => return not_found(update_id),
        Err(err) => {
            return HttpResponse::ServiceUnavailable().json(json!({"error": err.to_string()}));
        }
    };
    let Some(update) = RawUpdate::from_json(&letter.body) else {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"error": "the stored update cannot be read", "update_id": update_id}));
    };
    match router.0.send(Replay(vec![update])).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({"retried": update_id})),
        // Taken back already: the inbox row waits for the next start.
        _ => HttpResponse::Accepted().json(json!({
            "retried": update_id,
            "note": "the router did not take it now; it is handled at the next start",
        })),
    }
}

/// `DELETE /dead-letters/{update_id}`: drops it for good.
pub async fn drop(observed: web::Data<Observed>, update_id: web::Path<i64>) -> HttpResponse {
    let update_id = update_id.into_inner();
    match observed.storage.dead_letter_drop(update_id).await {
        Ok(true) => HttpResponse::Ok().json(json!({"dropped": update_id})),
        Ok(false) => not_found(update_id),
        Err(err) => HttpResponse::ServiceUnavailable().json(json!({"error": err.to_string()})),
    }
}

fn not_found(update_id: i64) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "no such dead letter", "update_id": update_id}))
}

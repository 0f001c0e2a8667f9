//! The router: takes batches from intake, journals them, and hands each
//! update to its chat's session.
//!
//! A batch is answered ("taken") only once it is in the inbox and every new
//! update in it sits in its session's mailbox: that answer is what lets
//! polling confirm the offset or the webhook answer 200. Batches are handled
//! one at a time, in order, so a chat's updates reach its session in order;
//! when a session's mailbox is full the router waits, and intake with it.
//!
//! The router runs supervised. Updates journaled and not yet handed to
//! their sessions wait in a queue the router's restarts keep: a panic
//! between the two cannot lose them; the restarted router hands them over
//! before it takes anything new. An update the journal already has is a
//! duplicate only if this router has handed it over (or queued it): when a
//! crash of the journal or the router lost a batch's answer after the
//! inbox had it, intake offers the batch again, and those updates go on.
//!
//! Updates that name no chat (an unknown kind, a malformed body) are logged
//! and skipped here; they are still taken, so Telegram does not send them
//! again.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actorbot_actors::fault;
use actorbot_actors::probe::{Health, Probe, Vitals};
use actorbot_actors::registry::{KeyedRegistry, RouteError};

use crate::intake::{HandoffError, Incoming};
use crate::journal::{InFlight, Journal, Record};
use crate::metrics;
use crate::session::{HandleUpdate, Session};
use crate::storage::InboxRow;
use crate::telegram::update::RawUpdate;

/// Stop taking updates (the answer to a batch becomes `ShuttingDown`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIntake;

/// Updates taken before a crash and never finished, from the inbox: routed
/// without being journaled again.
#[derive(Message)]
#[rtype(result = "Result<(), HandoffError>")]
pub struct Replay(pub Vec<RawUpdate>);

pub type Sessions = KeyedRegistry<i64, Session>;

/// How many handed-over update ids the router remembers: a resend from
/// Telegram comes within seconds of the first delivery, far inside it.
const REMEMBERED: usize = 16_384;

/// What the router's restarts keep: the updates taken and not yet in their
/// sessions' mailboxes, and the latest ones that are.
#[derive(Default)]
struct Handover {
    /// Taken and not yet handed over, oldest first.
    queue: VecDeque<(i64, RawUpdate)>,
    /// The ids of the latest [`REMEMBERED`] updates handed over.
    recent: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Handover {
    fn handed_over(&mut self, update_id: i64) {
        if self.recent.insert(update_id) {
            self.order.push_back(update_id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Whether an update the journal already had is one this router has
    /// taken care of (handed over, or about to be). One it has not was
    /// journaled by a batch whose answer a crash lost: it must be handed
    /// over now, or it would wait for the next start.
    fn knows(&self, update_id: i64) -> bool {
        self.recent.contains(&update_id) || self.queue.iter().any(|(_, u)| u.update_id == update_id)
    }
}

type Undelivered = Arc<Mutex<Handover>>;

pub struct Router {
    sessions: Sessions,
    journal: Addr<Journal>,
    /// Counts each update handed over until it ends.
    in_flight: InFlight,
    stopping: bool,
    vitals: Vitals,
    undelivered: Undelivered,
}

impl Router {
    pub fn new(sessions: Sessions, journal: Addr<Journal>, in_flight: InFlight) -> Router {
        Router {
            sessions,
            journal,
            in_flight,
            stopping: false,
            vitals: Vitals::new(0),
            undelivered: Undelivered::default(),
        }
    }
}

/// Splits a batch into updates with a chat and logs the rest as skipped.
fn routable(batch: Vec<RawUpdate>) -> Vec<(i64, RawUpdate)> {
    batch
        .into_iter()
        .filter_map(|update| match update.chat_id() {
            Some(chat_id) => Some((chat_id, update)),
            None => {
                let reason = if update.parse().is_ok() {
                    "unhandled"
                } else {
                    "malformed"
                };
                metrics::UPDATES_SKIPPED.with_label_values(&[reason]).inc();
                let why = match update.parse() {
                    Ok(_) => "it belongs to no chat".to_string(),
                    Err(err) => err.to_string(),
                };
                log::warn!(
                    "skipping update_id={} kind={}: {why}",
                    update.update_id,
                    update.kind()
                );
                None
            }
        })
        .collect()
}

fn lock(undelivered: &Undelivered) -> std::sync::MutexGuard<'_, Handover> {
    undelivered.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands `updates`, after any left undelivered before them, to their
/// sessions in order, waiting for mailbox room. An update leaves the queue
/// only once it is in its session's mailbox.
async fn dispatch(
    sessions: Sessions,
    undelivered: Undelivered,
    in_flight: InFlight,
    updates: Vec<(i64, RawUpdate)>,
) -> Result<(), HandoffError> {
    lock(&undelivered).queue.extend(updates);
    loop {
        let Some((chat_id, update)) = lock(&undelivered).queue.front().cloned() else {
            return Ok(());
        };
        let update_id = update.update_id;
        // Counted before the session has it, so that its end, however
        // soon, comes after.
        in_flight.began(update_id);
        if let Err(RouteError::Closed(_) | RouteError::Full(_)) =
            sessions.route(chat_id, HandleUpdate(update)).await
        {
            // Journaled already: replayed at the next start.
            in_flight.ended(update_id);
            lock(&undelivered).queue.clear();
            return Err(HandoffError::ShuttingDown);
        }
        let mut handover = lock(&undelivered);
        handover.queue.pop_front();
        handover.handed_over(update_id);
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        // After a restart: what was taken and not handed over goes first.
        if !lock(&self.undelivered).queue.is_empty() {
            let work = dispatch(
                self.sessions.clone(),
                self.undelivered.clone(),
                self.in_flight.clone(),
                Vec::new(),
            );
            ctx.wait(work.into_actor(self).map(|result, _, _| {
                if let Err(err) = result {
                    log::warn!(
                        "router: updates taken before a restart wait for the next start: {err}"
                    );
                }
            }));
        }
    }
}

/// A restart keeps the undelivered queue, the handed-over ids and the
/// stopping flag; the batch
/// being journaled or handed over when it crashed is answered with an error,
/// and intake offers it again.
impl Supervised for Router {}

impl Handler<Incoming> for Router {
    type Result = AtomicResponse<Self, Result<(), HandoffError>>;

    fn handle(&mut self, msg: Incoming, _: &mut Self::Context) -> Self::Result {
        self.vitals.active();
        if self.stopping {
            return AtomicResponse::new(Box::pin(fut::ready(Err(HandoffError::ShuttingDown))));
        }
        let updates = routable(msg.0);
        let rows: Vec<InboxRow> = updates
            .iter()
            .map(|(chat_id, update)| InboxRow {
                update_id: update.update_id,
                chat_id: Some(*chat_id),
                body: update.body.to_string(),
            })
            .collect();
        let journal = self.journal.clone();
        let sessions = self.sessions.clone();
        let undelivered = self.undelivered.clone();
        let in_flight = self.in_flight.clone();
        let work = async move {
            if rows.is_empty() {
                return Ok(());
            }
            let new: HashSet<i64> = journal
                .send(Record(rows))
                .await
                .map_err(HandoffError::from)?
                .map_err(HandoffError::from)?;
            {
                let mut handover = lock(&undelivered);
                let fresh: Vec<_> = updates
                    .into_iter()
                    .filter(|(_, update)| {
                        // Journaled before by a run (or an instance) that
                        // did not answer it, and not handed over here: it
                        // is handed over now. Done already: never again.
                        let is_new =
                            new.contains(&update.update_id) && !handover.knows(update.update_id);
                        if !is_new {
                            metrics::UPDATES_SKIPPED
                                .with_label_values(&["duplicate"])
                                .inc();
                            log::debug!("update_id={} is already journaled", update.update_id);
                        }
                        is_new
                    })
                    .collect();
                handover.queue.extend(fresh);
            }
            // Journaled and not yet handed over: the case the undelivered
            // queue is for.
            fault::hit("router");
            dispatch(sessions, undelivered, in_flight, Vec::new()).await
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

impl Handler<Replay> for Router {
    type Result = AtomicResponse<Self, Result<(), HandoffError>>;

    fn handle(&mut self, msg: Replay, _: &mut Self::Context) -> Self::Result {
        let updates = routable(msg.0);
        let work = dispatch(
            self.sessions.clone(),
            self.undelivered.clone(),
            self.in_flight.clone(),
            updates,
        );
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

impl Handler<StopIntake> for Router {
    type Result = ();

    fn handle(&mut self, _: StopIntake, _: &mut Self::Context) {
        self.stopping = true;
    }
}

impl Handler<Probe> for Router {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let health = if self.stopping {
            Health::Degraded("stopping".into())
        } else {
            Health::Healthy
        };
        MessageResult(self.vitals.report("router", health))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: i64) -> RawUpdate {
        RawUpdate::from_json(&format!(
            r#"{{"update_id":{id},"message":{{"chat":{{"id":1}}}}}}"#
        ))
        .expect("an update")
    }

    #[test]
    fn a_duplicate_is_one_handed_over_or_queued() {
        let mut handover = Handover::default();
        handover.queue.push_back((1, update(7)));
        handover.handed_over(5);
        assert!(handover.knows(5), "handed over");
        assert!(handover.knows(7), "queued");
        assert!(
            !handover.knows(6),
            "journaled by a batch whose answer was lost"
        );
    }

    #[test]
    fn it_remembers_the_latest_handovers_only() {
        let mut handover = Handover::default();
        for id in 0..(REMEMBERED as i64 + 10) {
            handover.handed_over(id);
        }
        handover.handed_over(20);
        assert_eq!(handover.recent.len(), REMEMBERED);
        assert_eq!(handover.order.len(), REMEMBERED);
        assert!(!handover.knows(0) && handover.knows(REMEMBERED as i64 + 9));
    }
}

//! The journal: the inbox table's one writer, with group commit.
//!
//! An update is written to the inbox before its offset is confirmed to
//! Telegram (or the webhook answers 200), and marked done once its reply is
//! delivered. After a crash the daemon replays what is in the inbox and not
//! done; an update that comes again from Telegram and is already in the
//! inbox is not handled twice.
//!
//! Writes are batched: while one transaction runs, the records and done
//! marks that arrive meanwhile gather and go in the next one, so the cost per
//! update falls as load rises. Database work runs on the storage's threads, never
//! on the journal's event loop.
//!
//! The journal runs supervised. A restart keeps what waits to be written
//! and the transaction that was under way: its records and done marks are
//! written again (both writes are idempotent), and the records' callers get
//! their answer from the second write, with their updates counted as new.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::fault;
use actorbot_actors::probe::{Health, Probe, Vitals};
use tokio::sync::oneshot;

use crate::storage::{InboxRow, Storage, StorageError};

/// Records a batch of updates; answers with the ids that were new (those
/// already in the inbox are being or have been handled).
#[derive(Message)]
#[rtype(result = "Result<HashSet<i64>, JournalError>")]
pub struct Record(pub Vec<InboxRow>);

/// Marks updates done: their replies were delivered (or they need none).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Done(pub Vec<i64>);

/// The updates handed to their sessions and not yet ended: what the daemon
/// has taken and still holds in memory, in a session's mailbox, the AI
/// queue or the outbox. Intake reads the count to bound that work under
/// `MEMORY_LIMIT_MB` ([`crate::health::memory::admit`]).
///
/// An update counts from just before the router hands it over until its
/// done mark, or until its reply is left for the next start. One whose end
/// is never heard stops counting after [`IN_FLIGHT_HORIZON`], so that a
/// path that forgot to end an update cannot throttle intake for good.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<Open>>);

/// An update still counted after this long has had its end missed.
pub const IN_FLIGHT_HORIZON: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Open {
    since: HashMap<i64, Instant>,
    /// When entries past the horizon were last dropped.
    pruned: Option<Instant>,
}

impl InFlight {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An update is being handed to its session.
    pub fn began(&self, update_id: i64) {
        self.open().since.insert(update_id, Instant::now());
    }

    /// An update has ended (done, or left for the next start).
    pub fn ended(&self, update_id: i64) {
        self.open().since.remove(&update_id);
    }

    /// Updates in flight now.
    pub fn count(&self) -> usize {
        self.count_at(Instant::now())
    }

    fn count_at(&self, now: Instant) -> usize {
        let mut open = self.open();
        let due = open
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if due {
            open.pruned = Some(now);
            open.since
                .retain(|_, since| now.saturating_duration_since(*since) < IN_FLIGHT_HORIZON);
        }
        open.since.len()
    }
}

/// Where sessions send done marks, and the count of replies posted and not
/// yet ended, which the shutdown waits for. A reply counts until its done
/// mark is in the journal's mailbox, so a [`Flush`] sent after the count
/// reaches zero finds it.
///
/// Marks made during one turn of an event loop go to the journal as one
/// message at the end of that turn: under load a session thread ends many
/// replies in a turn, and a message for each woke the journal's thread for
/// each. The wait is short on purpose: the window in which a delivered
/// reply has no mark yet is what a kill -9 turns into a reply sent twice.
#[derive(Clone)]
pub struct DoneMarks {
    journal: Addr<Journal>,
    in_flight: Arc<AtomicUsize>,
    /// The updates not yet ended, which a done mark ends.
    updates: InFlight,
    gathered: Arc<Mutex<Gathered>>,
    /// Woken each time the count of replies in flight falls to zero.
    idle: Arc<tokio::sync::Notify>,
}

/// Marks waiting for the end of the turn.
#[derive(Default)]
struct Gathered {
    marks: Vec<i64>,
    /// How many of them ended a reply (counted in `in_flight` until sent).
    replies: usize,
    /// A send is scheduled.
    scheduled: bool,
}

impl DoneMarks {
    pub fn new(journal: Addr<Journal>, updates: InFlight) -> DoneMarks {
        DoneMarks {
            journal,
            in_flight: Arc::default(),
            updates,
            gathered: Arc::default(),
            idle: Arc::default(),
        }
    }

    /// Replies posted and not yet ended.
    pub fn replies_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Answers once no reply is in flight (their done marks are then in
    /// the journal's mailbox).
    pub async fn all_ended(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.replies_in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    fn ended(&self, replies: usize) {
        if replies > 0 && self.in_flight.fetch_sub(replies, Ordering::SeqCst) == replies {
            self.idle.notify_waiters();
        }
    }

    /// A reply was posted; [`DoneMarks::reply_ended`] must follow.
    pub fn reply_posted(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A posted reply has ended: delivered or refused for good (`done`, its
    /// update is done), or failed in a way a replay may fix.
    pub fn reply_ended(&self, update_id: i64, done: bool) {
        if done {
            self.gather(update_id, 1);
        } else {
            self.updates.ended(update_id);
            self.ended(1);
        }
    }

    /// An update needs no reply, or has had it.
    pub fn mark(&self, update_id: i64) {
        self.gather(update_id, 0);
    }

    fn gathered(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gather(&self, update_id: i64, replies: usize) {
        self.updates.ended(update_id);
        let mut gathered = self.gathered();
        gathered.marks.push(update_id);
        gathered.replies += replies;
        if gathered.scheduled {
            return;
        }
        gathered.scheduled = true;
        drop(gathered);
        // Spawned behind the tasks already ready on this thread's loop.
        let marks = self.clone();
        let scheduled = Arbiter::try_current()
            .is_some_and(|arbiter| arbiter.spawn(async move { marks.send() }));
        if !scheduled {
            self.send();
        }
    }

    fn send(&self) {
        let (marks, replies) = {
            let mut gathered = self.gathered();
            gathered.scheduled = false;
            (
                std::mem::take(&mut gathered.marks),
                std::mem::take(&mut gathered.replies),
            )
        };
        if !marks.is_empty() {
            self.journal.do_send(Done(marks));
        }
        self.ended(replies);
    }
}

/// Answers when every done mark received so far is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Why a batch was not journaled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The write failed; every batch in it hears the same cause.
    #[error("the inbox could not be written: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// The journal went away before it answered.
    #[error("the journal stopped before the batch was written")]
    Stopped,
}

impl From<StorageError> for JournalError {
    fn from(err: StorageError) -> Self {
        JournalError::Storage(Arc::new(err))
    }
}

type RecordReply = oneshot::Sender<Result<HashSet<i64>, JournalError>>;

/// How long a failed write of done marks waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// A batch of records waiting for its write, and its caller.
struct Pending {
    rows: Vec<InboxRow>,
    reply: RecordReply,
    /// Already in a write a restart interrupted: its rows may be in the
    /// inbox, put there for this caller.
    retried: bool,
}

/// The transaction under way.
struct InWrite {
    records: Vec<Pending>,
    done: Vec<i64>,
}

pub struct Journal {
    storage: Storage,
    records: Vec<Pending>,
    done: Vec<i64>,
    flushes: Vec<oneshot::Sender<()>>,
    writing: Option<InWrite>,
    failed_writes: u64,
    /// Writes failed since the last that worked: a long failure is logged
    /// at its 1st, 2nd, 4th, 8th… write, not at every one.
    failing: u64,
    vitals: Vitals,
}

impl Journal {
    pub fn new(storage: Storage) -> Journal {
        Journal {
            storage,
            records: Vec::new(),
            done: Vec::new(),
            flushes: Vec::new(),
            writing: None,
            failed_writes: 0,
            failing: 0,
            vitals: Vitals::new(0),
        }
    }

    /// Starts the next transaction if none is running and work is waiting.
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing.is_some() {
            return;
        }
        if self.records.is_empty() && self.done.is_empty() {
            for flush in self.flushes.drain(..) {
                let _ = flush.send(());
            }
            return;
        }
        // The rows go to the writer; the batches stay here with their
        // callers until the write ends, so that a restart can redo it.
        let records = std::mem::take(&mut self.records);
        let rows: Vec<InboxRow> = records
            .iter()
            .flat_map(|r| r.rows.iter().cloned())
            .collect();
        let done = std::mem::take(&mut self.done);
        let marks = done.clone();
        self.writing = Some(InWrite { records, done });
        fault::hit("journal");
        let storage = self.storage.clone();
        // Records and done marks are one write, committed together: a
        // done mark does not wait for a commit of records before its own.
        let work = async move { storage.inbox_journal(rows, marks).await };
        ctx.spawn(work.into_actor(self).map(move |written, this, ctx| {
            let Some(InWrite { records, done }) = this.writing.take() else {
                return;
            };
            match written {
                Ok(mut new) => {
                    if this.failing > 0 {
                        log::info!(
                            "journal: the inbox is written again after {} failed writes",
                            this.failing
                        );
                        this.failing = 0;
                    }
                    // An id is new to the first record that has it: the same
                    // update recorded twice in one write (a webhook delivery
                    // retried while the first was being written) is handled
                    // once.
                    for record in records {
                        let mine = record
                            .rows
                            .iter()
                            .map(|row| row.update_id)
                            .filter(|id| new.remove(id) || record.retried)
                            .collect();
                        let _ = record.reply.send(Ok(mine));
                    }
                }
                Err(err) => {
                    let err = JournalError::from(err);
                    this.note_failure(&err.to_string());
                    for record in records {
                        let _ = record.reply.send(Err(err.clone()));
                    }
                    if !done.is_empty() {
                        // Done marks are kept and written again: losing
                        // one would answer its update twice after a
                        // restart.
                        this.done.extend(done);
                        ctx.run_later(RETRY_DELAY, |this, ctx| this.write(ctx));
                        return;
                    }
                }
            }
            this.vitals.active();
            this.write(ctx);
        }));
    }

    fn note_failure(&mut self, message: &str) {
        self.failed_writes += 1;
        self.failing += 1;
        if self.failing.is_power_of_two() {
            log::warn!(
                "journal: {message} ({} writes failed in a row)",
                self.failing
            );
        }
    }
}

impl Actor for Journal {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // After a restart: what was kept is written at once.
        self.write(ctx);
    }
}

impl Supervised for Journal {
    fn restarting(&mut self, _: &mut Self::Context) {
        if let Some(InWrite { records, done }) = self.writing.take() {
            let newer = std::mem::take(&mut self.records);
            self.records = records
                .into_iter()
                .map(|record| Pending {
                    retried: true,
                    ..record
                })
                .chain(newer)
                .collect();
            self.done.extend(done);
        }
    }
}

impl Handler<Record> for Journal {
    type Result = ResponseFuture<Result<HashSet<i64>, JournalError>>;

    fn handle(&mut self, msg: Record, ctx: &mut Self::Context) -> Self::Result {
        self.vitals.active();
        let (reply, answer) = oneshot::channel();
        self.records.push(Pending {
            rows: msg.0,
            reply,
            retried: false,
        });
        self.write(ctx);
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(JournalError::Stopped)) })
    }
}

impl Handler<Done> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Done, ctx: &mut Self::Context) {
        self.vitals.active();
        self.done.extend(msg.0);
        self.write(ctx);
    }
}

impl Handler<Flush> for Journal {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flushes.push(tx);
        self.write(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Blocks the journal's thread for a while (the `/debug/stall` endpoint):
/// what a stuck actor looks like to the health checks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stall(pub Duration);

impl Handler<Stall> for Journal {
    type Result = ();

    fn handle(&mut self, msg: Stall, _: &mut Self::Context) {
        std::thread::sleep(msg.0);
    }
}

impl Handler<Probe> for Journal {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        // Unhealthy while writes fail; once one succeeds, the failure is
        // history.
        let health = match self.storage.failing_writes() {
            Some(failure) => Health::Unhealthy(format!(
                "writes have failed for {} s: {}",
                failure.since.elapsed().as_secs(),
                failure.error
            )),
            None => Health::Healthy,
        };
        MessageResult(
            self.vitals
                .report("journal", health)
                .detail("pending_done_marks", self.done.len())
                .detail("failed_writes", self.failed_writes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_counts_from_its_hand_over_to_its_end() {
        let updates = InFlight::default();
        updates.began(1);
        updates.began(2);
        updates.began(2);
        assert_eq!(updates.count(), 2);
        updates.ended(1);
        updates.ended(1);
        updates.ended(3);
        assert_eq!(
            updates.count(),
            1,
            "ending twice or unknown ends nothing more"
        );
    }

    #[test]
    fn an_update_whose_end_was_missed_stops_counting_after_the_horizon() {
        let updates = InFlight::default();
        updates.began(1);
        let now = Instant::now();
        assert_eq!(updates.count_at(now), 1);
        updates.began(2);
        assert_eq!(
            updates.count_at(now + IN_FLIGHT_HORIZON + Duration::from_secs(1)),
            0
        );
    }
}

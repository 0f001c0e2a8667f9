//! Long polling as an actor.
//!
//! One getUpdates at a time, with the configured timeout; the next call goes
//! out as soon as the previous batch has been handed off, and carries the
//! offset that confirms it. Errors never stop the poller: network errors and
//! 5xx answers back off exponentially with jitter, a 429 waits its
//! `retry_after`, a 409 (another instance or a webhook) is logged loudly and
//! retried. The offset only moves past updates the router has taken, so an
//! update is never confirmed to Telegram before it is safe.
//!
//! Not every Bot API server long-polls or honours `offset` (some emulators
//! answer at once, or send every update they have each time): updates
//! below the offset already confirmed are dropped here, and an answer with
//! nothing new that came back long before the timeout is followed by a short
//! pause rather than another call at once, so such a server costs a few
//! calls a second, not a busy loop.
//!
//! The poller runs supervised: restarted after a panic, it polls again from
//! the offset it had confirmed.

use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tokio::sync::oneshot;

use actorbot_actors::fault;
use actorbot_actors::probe::{Health, Probe, ProbeReport};

use super::{HandoffError, Incoming, allowed_updates};
use crate::health::memory::{MemoryGauge, Pressure};
use crate::telegram::params::GetUpdatesParams;
use crate::telegram::update::RawUpdate;
use crate::telegram::{BotApi, Endpoint, TelegramError};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The pause after an answer with nothing new from a server that did not
/// wait for updates.
const EMPTY_PAUSE: Duration = Duration::from_millis(250);

/// How often intake looks again while memory is at the limit or the work
/// in flight fills the room under it, and its pause between batches past
/// the soft mark.
const MEMORY_PAUSE: Duration = Duration::from_millis(100);

/// The most updates one getUpdates takes past the soft mark.
const MEMORY_BATCH: u32 = 10;

/// Stops polling: the current long poll is abandoned (its updates were not
/// confirmed and will come again), a batch being handed off finishes, and the
/// last offset is confirmed to Telegram before the answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPolling;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Polling,
    HandingOff,
    Waiting,
    Stopped,
}

pub struct Poller {
    endpoint: Endpoint,
    api: Option<BotApi>,
    sink: Recipient<Incoming>,
    offset: Option<i64>,
    timeout: u32,
    limit: u32,
    failures: u32,
    /// Hand-offs of the batch under way that failed (the journal could not
    /// write it): retried ever more slowly, logged at the 1st, 2nd, 4th…
    handoff_failures: u32,
    batches: u64,
    stage: Stage,
    current: Option<SpawnHandle>,
    stopping: Vec<oneshot::Sender<()>>,
    /// When the getUpdates under way went out.
    polled_at: Instant,
    /// At the memory limit no update is taken ([`crate::health::memory`]).
    memory: MemoryGauge,
    /// Past the soft mark: the pause before this batch was taken.
    paced: bool,
}

impl Poller {
    pub fn new(
        endpoint: Endpoint,
        sink: Recipient<Incoming>,
        timeout: u32,
        limit: u32,
        memory: MemoryGauge,
    ) -> Poller {
        Poller {
            endpoint,
            api: None,
            sink,
            offset: None,
            timeout,
            limit,
            failures: 0,
            handoff_failures: 0,
            batches: 0,
            stage: Stage::Waiting,
            current: None,
            stopping: Vec::new(),
            polled_at: Instant::now(),
            memory,
            paced: false,
        }
    }

    fn params(&self, timeout: u32, limit: u32) -> GetUpdatesParams {
        GetUpdatesParams {
            offset: self.offset,
            limit: Some(limit),
            timeout: Some(timeout),
            allowed_updates: Some(allowed_updates()),
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.stage == Stage::Stopped {
            return;
        }
        let Some(api) = self.api.clone() else { return };
        let room = self.memory.admit();
        let limit = match self.memory.pressure() {
            Pressure::Normal => self.limit,
            // Shedding: small batches, so that what is taken meanwhile
            // stays small.
            Pressure::Soft if !self.paced => {
                self.paced = true;
                self.stage = Stage::Waiting;
                self.current = Some(ctx.run_later(MEMORY_PAUSE, |act, ctx| act.poll(ctx)));
                return;
            }
            Pressure::Soft => self.limit.min(MEMORY_BATCH),
            Pressure::Hard => {
                // Nothing is taken, and so nothing confirmed: Telegram keeps
                // the updates until memory is back under the soft mark.
                crate::metrics::INTAKE_HELD_MEMORY.inc();
                self.stage = Stage::Waiting;
                self.current = Some(ctx.run_later(MEMORY_PAUSE, |act, ctx| act.poll(ctx)));
                return;
            }
        };
        // What is in flight already fills the room left under the limit:
        // nothing more until some of it ends.
        let limit = limit.min(u32::try_from(room).unwrap_or(u32::MAX));
        if limit == 0 {
            crate::metrics::INTAKE_HELD_MEMORY.inc();
            self.stage = Stage::Waiting;
            self.current = Some(ctx.run_later(MEMORY_PAUSE, |act, ctx| act.poll(ctx)));
            return;
        }
        self.paced = false;
        let params = self.params(self.timeout, limit);
        self.stage = Stage::Polling;
        self.polled_at = Instant::now();
        let fut = async move { api.get_updates(&params).await }
            .into_actor(self)
            .map(|result, act, ctx| act.on_updates(result, ctx));
        self.current = Some(ctx.spawn(fut));
    }

    /// Polls again after an answer with nothing new: at once if the server
    /// waited for updates as asked, after [`EMPTY_PAUSE`] if it did not.
    fn poll_after_nothing(&mut self, ctx: &mut Context<Self>) {
        let waited = self.polled_at.elapsed();
        let asked = Duration::from_secs(u64::from(self.timeout));
        if waited >= (asked / 2).min(Duration::from_secs(1)) {
            return self.poll(ctx);
        }
        self.stage = Stage::Waiting;
        self.current = Some(ctx.run_later(EMPTY_PAUSE, |act, ctx| act.poll(ctx)));
    }

    fn on_updates(
        &mut self,
        result: Result<Vec<Box<serde_json::value::RawValue>>, TelegramError>,
        ctx: &mut Context<Self>,
    ) {
        self.current = None;
        if self.stage == Stage::Stopped {
            // Answered after StopPolling: not taken, not confirmed, so it
            // comes again to whoever polls next.
            return;
        }
        let values = match result {
            Ok(values) => values,
            Err(err) => return self.on_error(err, ctx),
        };
        self.failures = 0;
        if values.is_empty() {
            return self.poll_after_nothing(ctx);
        }
        // A panic here loses nothing: the batch is not confirmed, and the
        // restarted poller asks for it again.
        fault::hit("intake");
        let mut max_id = None;
        let mut updates = Vec::with_capacity(values.len());
        for value in values {
            match RawUpdate::from_json(value.get()) {
                // Confirmed already: a server that ignored the offset.
                Some(update) if self.offset.is_some_and(|o| update.update_id < o) => {}
                Some(update) => {
                    max_id = max_id.max(Some(update.update_id));
                    updates.push(update);
                }
                None => log::warn!("skipping an update without update_id"),
            }
        }
        let Some(max_id) = max_id else {
            return self.poll_after_nothing(ctx);
        };
        log::debug!(
            "received {} updates, last update_id={max_id}",
            updates.len()
        );
        crate::metrics::UPDATES_IN
            .with_label_values(&["polling"])
            .inc_by(updates.len() as u64);
        self.hand_off(updates, max_id, ctx);
    }

    fn hand_off(&mut self, updates: Vec<RawUpdate>, max_id: i64, ctx: &mut Context<Self>) {
        if self.stage == Stage::Stopped {
            // A retry after StopPolling: the batch was not confirmed.
            return;
        }
        self.stage = Stage::HandingOff;
        let sink = self.sink.clone();
        let fut = async move {
            let result = sink.send(Incoming(updates.clone())).await;
            (updates, result.map_err(HandoffError::from).and_then(|r| r))
        }
        .into_actor(self)
        .map(move |(updates, result), act, ctx| match result {
            Ok(()) => {
                if act.handoff_failures > 0 {
                    log::info!(
                        "hand-off works again after {} failed attempts",
                        act.handoff_failures
                    );
                    act.handoff_failures = 0;
                }
                act.batches += 1;
                act.offset = Some(max_id + 1);
                if act.stopping.is_empty() {
                    act.poll(ctx);
                } else {
                    act.confirm_and_stop(ctx);
                }
            }
            Err(HandoffError::ShuttingDown) => act.confirm_and_stop(ctx),
            Err(err) => {
                // Not taken, not confirmed: offer the same batch again.
                act.handoff_failures += 1;
                let delay = handoff_retry(act.handoff_failures);
                if act.handoff_failures.is_power_of_two() {
                    log::warn!(
                        "hand-off of {} updates failed ({} times in a row), retrying in {} ms: {err}",
                        updates.len(),
                        act.handoff_failures,
                        delay.as_millis()
                    );
                }
                act.stage = Stage::Waiting;
                ctx.run_later(delay, move |act, ctx| act.hand_off(updates, max_id, ctx));
            }
        });
        ctx.spawn(fut);
    }

    fn on_error(&mut self, err: TelegramError, ctx: &mut Context<Self>) {
        self.failures += 1;
        let delay = match &err {
            e if e.retry_after().is_some() => e.retry_after().unwrap_or(MAX_BACKOFF),
            _ => backoff(self.failures),
        };
        match &err {
            TelegramError::Api {
                error_code: 409, ..
            } => log::error!(
                "getUpdates conflict (another instance running, or a webhook set?), retrying in {}ms: {err}",
                delay.as_millis()
            ),
            TelegramError::Api {
                error_code: 401, ..
            } => {
                log::error!(
                    "the Bot API refuses the token, retrying in {}ms: {err}",
                    delay.as_millis()
                )
            }
            _ => log::warn!(
                "getUpdates failed (#{}), retrying in {}ms: {err}",
                self.failures,
                delay.as_millis()
            ),
        }
        self.stage = Stage::Waiting;
        self.current = Some(ctx.run_later(delay, |act, ctx| act.poll(ctx)));
    }

    /// Confirms the offset with a non-blocking getUpdates, then stops.
    fn confirm_and_stop(&mut self, ctx: &mut Context<Self>) {
        self.stage = Stage::Stopped;
        let (Some(api), Some(_)) = (self.api.clone(), self.offset) else {
            return self.stopped(ctx);
        };
        let params = self.params(0, 1);
        let fut = async move { api.get_updates(&params).await }
            .into_actor(self)
            .map(|result, act, ctx| {
                match result {
                    Ok(_) => log::info!("polling stopped, offset {:?} confirmed", act.offset),
                    Err(err) => log::warn!("polling stopped, offset not confirmed: {err}"),
                }
                act.stopped(ctx);
            });
        ctx.spawn(fut);
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        for waiter in self.stopping.drain(..) {
            let _ = waiter.send(());
        }
        ctx.stop();
    }
}

/// The pause before offering a batch again after its `failures`th failed
/// hand-off: 200 ms, doubling up to 5 s.
fn handoff_retry(failures: u32) -> Duration {
    Duration::from_millis(200)
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(Duration::from_secs(5))
}

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.5..1.0);
    base.mul_f64(jitter)
}

impl Actor for Poller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.api = Some(self.endpoint.client());
        log::info!(
            "long polling {} (timeout {}s, up to {} updates a call)",
            self.endpoint.display_url(),
            self.timeout,
            self.limit
        );
        if self.stopping.is_empty() {
            self.poll(ctx);
        } else {
            self.confirm_and_stop(ctx);
        }
    }
}

/// A restart keeps the offset (nothing past it was confirmed, so nothing
/// is lost) and the callers waiting for a stop; the call or hand-off under
/// way is dropped, and the batch it held comes again from Telegram.
impl Supervised for Poller {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.current = None;
        self.stage = Stage::Waiting;
    }
}

impl Handler<StopPolling> for Poller {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopPolling, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stopping.push(tx);
        match self.stage {
            Stage::Polling | Stage::Waiting => {
                if let Some(handle) = self.current.take() {
                    ctx.cancel_future(handle);
                }
                self.confirm_and_stop(ctx);
            }
            // The hand-off in progress finishes, then confirms and stops.
            Stage::HandingOff => {}
            Stage::Stopped => {}
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Probe> for Poller {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let health = match self.stage {
            Stage::Stopped => Health::Unhealthy("stopped".into()),
            _ if self.failures >= 3 => Health::Degraded(format!(
                "getUpdates failed {} times in a row",
                self.failures
            )),
            _ => Health::Healthy,
        };
        let stage = match self.stage {
            Stage::Polling => "polling",
            Stage::HandingOff => "handing off",
            Stage::Waiting => "waiting",
            Stage::Stopped => "stopped",
        };
        let mut report = ProbeReport::new("intake", health)
            .detail("mode", "long polling")
            .detail("stage", stage)
            .detail("offset", self.offset)
            .detail("failures_in_a_row", self.failures);
        report.handled = self.batches;
        MessageResult(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_hand_off_is_retried_ever_more_slowly_up_to_5_s() {
        assert_eq!(handoff_retry(1), Duration::from_millis(200));
        assert_eq!(handoff_retry(2), Duration::from_millis(400));
        assert_eq!(handoff_retry(5), Duration::from_millis(3200));
        assert_eq!(handoff_retry(6), Duration::from_secs(5));
        assert_eq!(handoff_retry(1000), Duration::from_secs(5));
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1000));
        for failures in 0..40 {
            assert!(backoff(failures) <= MAX_BACKOFF);
        }
    }
}

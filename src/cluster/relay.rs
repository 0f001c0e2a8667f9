//! The relay: in webhook mode, the leader's side of the updates every
//! instance takes into the shared inbox ([`crate::storage::RELAY_CHANNEL`]).
//!
//! A thread of its own holds one PostgreSQL connection that LISTENs on the
//! channel and wakes the actor when an instance announces an update (it
//! reads what the connection received every [`LISTEN_EVERY`]: libpq hands
//! notifications over without blocking), and once a [`SWEEP`] besides, so
//! that an announcement lost with a broken connection delays an update by
//! a second at most. Woken, the actor takes the relayed updates in
//! update_id order, in batches, and has the router route each batch before
//! it takes the next: an update reaches its session after every earlier
//! one, whichever instance received it.
//!
//! The relay runs only on the leader, after its replay. A batch taken and
//! not routed (the router stopping) stays in the inbox, not done, for the
//! next leader's replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::probe::{Health, Probe, Vitals};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use crate::router::{Replay, Router};
use crate::storage::{RELAY_CHANNEL, Storage};
use crate::telegram::update::RawUpdate;

/// How often the listening connection is read.
pub const LISTEN_EVERY: Duration = Duration::from_millis(10);

/// The longest a relayed update waits for a look without an announcement.
pub const SWEEP: Duration = Duration::from_secs(1);

/// The most updates taken at once.
const BATCH: i64 = 500;

/// Something may be waiting in the relay.
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

pub struct Relay {
    storage: Storage,
    router: Addr<Router>,
    database_url: String,
    /// Taking and routing is under way; `again` if woken meanwhile.
    taking: bool,
    again: bool,
    /// Ends the listening thread; set while one runs.
    listener: Option<Arc<AtomicBool>>,
    /// The listening connection is open.
    listening: Arc<AtomicBool>,
    routed: u64,
    failures: u64,
    last_error: Option<String>,
    vitals: Vitals,
}

impl Relay {
    pub fn new(storage: Storage, router: Addr<Router>, database_url: String) -> Relay {
        Relay {
            storage,
            router,
            database_url,
            taking: false,
            again: false,
            listener: None,
            listening: Arc::default(),
            routed: 0,
            failures: 0,
            last_error: None,
            vitals: Vitals::new(0),
        }
    }

    fn take(&mut self, ctx: &mut Context<Self>) {
        if self.taking {
            self.again = true;
            return;
        }
        self.taking = true;
        self.again = false;
        let (storage, router) = (self.storage.clone(), self.router.clone());
        let work = async move {
            let mut routed = 0u64;
            loop {
                let rows = storage
                    .inbox_take_relayed(BATCH)
                    .await
                    .map_err(|e| e.to_string())?;
                let full = rows.len() as i64 == BATCH;
                let updates: Vec<RawUpdate> = rows
                    .iter()
                    .filter_map(|row| RawUpdate::from_json(&row.body))
                    .collect();
                if !updates.is_empty() {
                    let count = updates.len() as u64;
                    router
                        .send(Replay(updates))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    routed += count;
                }
                if !full {
                    return Ok::<u64, String>(routed);
                }
            }
        };
        ctx.spawn(work.into_actor(self).map(|result, this, ctx| {
            this.taking = false;
            match result {
                Ok(routed) => {
                    this.routed += routed;
                    this.last_error = None;
                    this.vitals.active();
                }
                Err(err) => {
                    this.failures += 1;
                    if this.failures.is_power_of_two() {
                        log::warn!(
                            "relay: taking relayed updates failed ({} times): {err}",
                            this.failures
                        );
                    }
                    this.last_error = Some(err);
                }
            }
            if this.again {
                this.take(ctx);
            }
        }));
    }
}

/// The listening thread: LISTEN, then read the connection every
/// [`LISTEN_EVERY`], waking the relay on an announcement and once a
/// [`SWEEP`]; a broken connection is opened again with a growing pause.
fn listen(url: String, relay: Addr<Relay>, stop: Arc<AtomicBool>, listening: Arc<AtomicBool>) {
    let mut failures: u32 = 0;
    while !stop.load(Ordering::Acquire) {
        let connected = PgConnection::establish(&url)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                conn.batch_execute(&format!("LISTEN {RELAY_CHANNEL}"))
                    .map(|()| conn)
                    .map_err(|e| e.to_string())
            });
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(err) => {
                failures += 1;
                if failures.is_power_of_two() {
                    log::warn!("relay: cannot listen on {RELAY_CHANNEL} ({failures} tries): {err}");
                }
                std::thread::sleep(Duration::from_millis(100) * failures.min(50));
                continue;
            }
        };
        if failures > 0 {
            log::info!("relay: listening on {RELAY_CHANNEL} again");
        }
        failures = 0;
        listening.store(true, Ordering::Release);
        // Whatever was relayed while nobody listened.
        relay.do_send(Wake);
        let mut swept = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let mut heard = false;
            let mut broken = None;
            for notification in conn.notifications_iter() {
                match notification {
                    Ok(_) => heard = true,
                    Err(err) => {
                        broken = Some(err);
                        break;
                    }
                }
            }
            if let Some(err) = broken {
                log::warn!("relay: the listening connection broke: {err}");
                break;
            }
            if heard || swept.elapsed() >= SWEEP {
                swept = Instant::now();
                relay.do_send(Wake);
            }
            std::thread::sleep(LISTEN_EVERY);
        }
        listening.store(false, Ordering::Release);
    }
}

impl Actor for Relay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.listener.is_none() {
            let stop = Arc::new(AtomicBool::new(false));
            let (url, relay, listening) = (
                self.database_url.clone(),
                ctx.address(),
                self.listening.clone(),
            );
            let flag = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("relay-listen".into())
                .spawn(move || listen(url, relay, flag, listening));
            match spawned {
                Ok(_) => self.listener = Some(stop),
                Err(err) => log::error!("relay: cannot start the listening thread: {err}"),
            }
        }
        self.take(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(stop) = &self.listener {
            stop.store(true, Ordering::Release);
        }
    }
}

/// A restart ends the listening thread (`stopped`) and starts another.
impl Supervised for Relay {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.listener = None;
        self.taking = false;
    }
}

impl Handler<Wake> for Relay {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.take(ctx);
    }
}

impl Handler<Probe> for Relay {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let listening = self.listening.load(Ordering::Acquire);
        let health = match (&self.last_error, listening) {
            (Some(err), _) => Health::Degraded(format!("taking relayed updates failed: {err}")),
            (None, false) => Health::Degraded(format!(
                "not listening on {RELAY_CHANNEL}: relayed updates wait for the sweep"
            )),
            (None, true) => Health::Healthy,
        };
        MessageResult(
            self.vitals
                .report("relay", health)
                .detail("listening", listening)
                .detail("routed", self.routed)
                .detail("failures", self.failures),
        )
    }
}

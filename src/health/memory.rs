//! The memory limit (`MEMORY_LIMIT_MB`): a watch on the process's resident
//! memory that sheds load before the limit and holds intake at it.
//!
//! Above the soft mark (90 % of the limit) the guard sheds, in order, every
//! quarter second while it stays there: it retires the least recently
//! active tenth of the sessions (they save their state first), halves the
//! in-process caches, has every event loop's allocator heap give its free
//! pages back to the system, and the image and PDF pools answer new jobs
//! "busy".
//! Intake reads the figure itself before each batch: past the soft mark it
//! takes small batches with a pause between them, and at the limit it stops
//! taking updates (their offsets stay unconfirmed, so Telegram keeps them)
//! until memory is back under the soft mark. The health checker alerts the
//! admins meanwhile, and `/health` says "degraded" with the figure.
//!
//! Shedding and holding act on what comes next; the updates already taken
//! go on allocating as they are answered (a session's history grows by the
//! answer, the outbox holds the reply). So intake also bounds the work in
//! flight by the room left ([`admit`]): every update taken and not yet
//! ended is reckoned at `MEMORY_PER_UPDATE_KB`, and intake takes no more
//! than fit between the resident memory and the limit. Far under the limit
//! the bound is loose (a 2 GiB limit leaves room for tens of thousands);
//! near it, intake takes updates as fast as earlier ones end.
//!
//! The decisions are [`judge`] and [`admit`], plain code; the actor only
//! reads the figure and carries the decisions out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actorbot_actors::probe::{Health, Probe, Vitals};
use actorbot_actors::process::Process;
use tokio::sync::watch;

use crate::cache::Cache;
use crate::config::Config;
use crate::journal::InFlight;
use crate::router::Sessions;

/// How often the figure is read.
const EVERY: Duration = Duration::from_millis(250);

/// The soft mark, as a share of the limit.
const SOFT: f64 = 0.9;

/// Where memory stands against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Under the soft mark, or no limit.
    Normal = 0,
    /// Past the soft mark: shed.
    Soft = 1,
    /// At the limit, or not yet back under the soft mark since: intake
    /// holds too.
    Hard = 2,
}

/// The pressure at `rss_mb` against `limit_mb` (0: no limit), given the
/// pressure before: once at the limit, intake holds until memory is back
/// under the soft mark, not just under the limit.
pub fn judge(rss_mb: f64, limit_mb: u64, before: Pressure) -> Pressure {
    if limit_mb == 0 {
        return Pressure::Normal;
    }
    let limit = limit_mb as f64;
    let soft = SOFT * limit;
    if rss_mb >= limit || (before == Pressure::Hard && rss_mb >= soft) {
        Pressure::Hard
    } else if rss_mb >= soft {
        Pressure::Soft
    } else {
        Pressure::Normal
    }
}

/// Updates intake may take while none is in flight, whatever the room:
/// what holds the memory then is not new work, and the bot keeps answering
/// while the guard sheds.
pub const LEAST: usize = 10;

/// How many more updates intake may take now: the `open` ones, reckoned at
/// `per_update_kb` each, and the new ones must fit between `rss_mb` and
/// `limit_mb` (0: no limit, no bound). Nothing at the limit.
pub fn admit(
    pressure: Pressure,
    rss_mb: f64,
    limit_mb: u64,
    open: usize,
    per_update_kb: u64,
) -> usize {
    if limit_mb == 0 {
        return usize::MAX;
    }
    if pressure == Pressure::Hard {
        return 0;
    }
    let room_kb = ((limit_mb as f64 - rss_mb) * 1024.0).max(0.0);
    let fit = (room_kb / per_update_kb.max(1) as f64) as usize;
    let room = fit.saturating_sub(open);
    if open == 0 { room.max(LEAST) } else { room }
}

/// The pressure, shared with those who act on it (intake, the pools).
#[derive(Clone, Default)]
pub struct MemoryGauge {
    level: Arc<AtomicU8>,
    /// Resident memory at the last reading, in bytes.
    rss: Arc<AtomicU64>,
    /// `MEMORY_LIMIT_MB` as the guard last read it; 0 for none.
    limit_mb: Arc<AtomicU64>,
    /// Set by the guard when nothing is left to shed: memory above the
    /// soft mark is then what the daemon needs, and holding intake would
    /// hold it for good.
    floor: Arc<std::sync::atomic::AtomicBool>,
    /// `MEMORY_PER_UPDATE_KB` as the guard last read it.
    per_update_kb: Arc<AtomicU64>,
    /// The updates taken and not yet ended.
    in_flight: InFlight,
}

impl MemoryGauge {
    pub fn new(in_flight: InFlight) -> MemoryGauge {
        MemoryGauge {
            in_flight,
            ..MemoryGauge::default()
        }
    }

    /// How many updates intake may take now ([`admit`]); reads the
    /// resident memory first, as [`MemoryGauge::refresh`].
    pub fn admit(&self) -> usize {
        let pressure = self.refresh();
        admit(
            pressure,
            self.rss_mb(),
            self.limit_mb.load(Ordering::Relaxed),
            self.in_flight.count(),
            self.per_update_kb.load(Ordering::Relaxed),
        )
    }

    /// Reads the resident memory now and judges it (a read of
    /// `/proc/self/statm`): intake calls this before each batch, so that it
    /// stops within one batch of the limit rather than within the guard's
    /// period.
    pub fn refresh(&self) -> Pressure {
        let limit = self.limit_mb.load(Ordering::Relaxed);
        if limit == 0 {
            return Pressure::Normal;
        }
        let rss = Process::Current.rss_bytes();
        let mut now = judge(rss as f64 / (1024.0 * 1024.0), limit, self.pressure());
        if now == Pressure::Hard && self.floor.load(Ordering::Relaxed) {
            // Small batches rather than none: see `floor`.
            now = Pressure::Soft;
        }
        self.set(now, rss);
        now
    }

    fn set_limit(&self, limit_mb: u64, per_update_kb: u64) {
        self.limit_mb.store(limit_mb, Ordering::Relaxed);
        self.per_update_kb.store(per_update_kb, Ordering::Relaxed);
    }

    pub fn pressure(&self) -> Pressure {
        match self.level.load(Ordering::Relaxed) {
            0 => Pressure::Normal,
            1 => Pressure::Soft,
            _ => Pressure::Hard,
        }
    }

    fn set(&self, pressure: Pressure, rss: u64) {
        self.level.store(pressure as u8, Ordering::Relaxed);
        self.rss.store(rss, Ordering::Relaxed);
    }

    /// Resident memory at the last reading, in MiB.
    pub fn rss_mb(&self) -> f64 {
        self.rss.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    }

    /// Whether new image and PDF jobs are to be refused.
    pub fn refuses_jobs(&self) -> bool {
        self.pressure() >= Pressure::Soft
    }
}

/// What the guard sheds.
pub struct MemoryGuard {
    config: watch::Receiver<Arc<Config>>,
    gauge: MemoryGauge,
    sessions: Sessions,
    caches: Vec<Arc<Cache>>,
    /// The daemon's event loops, whose allocator heaps give memory back.
    threads: Vec<ArbiterHandle>,
    shed_sessions: u64,
    shed_entries: u64,
    /// The pressure last logged.
    logged: Pressure,
    vitals: Vitals,
}

impl MemoryGuard {
    pub fn new(
        config: watch::Receiver<Arc<Config>>,
        gauge: MemoryGauge,
        sessions: Sessions,
        caches: Vec<Arc<Cache>>,
        threads: Vec<ArbiterHandle>,
    ) -> MemoryGuard {
        MemoryGuard {
            config,
            gauge,
            sessions,
            caches,
            threads,
            shed_sessions: 0,
            shed_entries: 0,
            logged: Pressure::Normal,
            vitals: Vitals::new(0),
        }
    }

    fn check(&mut self) {
        let (limit, per_update) = {
            let config = self.config.borrow();
            (config.memory_limit_mb, config.memory_per_update_kb)
        };
        self.gauge.set_limit(limit, per_update);
        let before = self.logged;
        let now = if limit == 0 {
            // No limit: the figure is still shown.
            self.gauge
                .set(Pressure::Normal, Process::Current.rss_bytes());
            Pressure::Normal
        } else {
            self.gauge.refresh()
        };
        let rss = self.gauge.rss.load(Ordering::Relaxed);
        self.logged = now;
        if now != before {
            let mb = rss / (1024 * 1024);
            match now {
                Pressure::Hard => log::warn!(
                    "memory {mb} MB reached MEMORY_LIMIT_MB={limit}: intake holds until it is under {:.0} MB",
                    SOFT * limit as f64
                ),
                Pressure::Soft => log::warn!(
                    "memory {mb} MB is past {:.0} % of MEMORY_LIMIT_MB={limit}: shedding sessions and caches, refusing new photo and PDF jobs",
                    SOFT * 100.0
                ),
                Pressure::Normal => log::info!("memory {mb} MB is back under the soft mark"),
            }
        }
        if now >= Pressure::Soft {
            let live = self.sessions.stats().live;
            let retired = self.sessions.shed(live.div_ceil(10));
            let dropped: usize = self.caches.iter().map(|c| c.shrink()).sum();
            let nothing_left = live == 0 && dropped == 0;
            if nothing_left != self.gauge.floor.swap(nothing_left, Ordering::Relaxed)
                && nothing_left
            {
                log::warn!(
                    "memory {} MB stays past the soft mark of MEMORY_LIMIT_MB={limit} with nothing left to shed: \
                     intake goes on in small batches; the limit is below what the daemon needs",
                    rss / (1024 * 1024)
                );
            }
            // What was shed is free in the allocator but still resident:
            // each event loop's heap hands its free pages back.
            for thread in &self.threads {
                thread.spawn_fn(give_back_free_memory);
            }
            give_back_free_memory();
            self.shed_sessions += retired as u64;
            self.shed_entries += dropped as u64;
            crate::metrics::MEMORY_SHED
                .with_label_values(&["sessions"])
                .inc_by(retired as u64);
            crate::metrics::MEMORY_SHED
                .with_label_values(&["cache_entries"])
                .inc_by(dropped as u64);
        }
        if now == Pressure::Normal {
            self.gauge.floor.store(false, Ordering::Relaxed);
        }
        self.vitals.active();
    }
}

/// Returns the calling thread's free allocator pages to the system
/// (mimalloc's `mi_collect`; the daemon's allocator).
fn give_back_free_memory() {
    // SAFETY: mi_collect has no preconditions; it works on the calling
    // thread's heap and the pages abandoned by others.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

impl Actor for MemoryGuard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.check();
        ctx.run_interval(EVERY, |this, _| this.check());
    }
}

impl Supervised for MemoryGuard {}

impl Handler<Probe> for MemoryGuard {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let limit = self.config.borrow().memory_limit_mb;
        let mb = self.gauge.rss_mb();
        let health = match self.gauge.pressure() {
            Pressure::Normal => Health::Healthy,
            Pressure::Soft => Health::Degraded(format!(
                "memory {mb:.0} MB past {:.0} % of MEMORY_LIMIT_MB={limit}: shedding",
                SOFT * 100.0
            )),
            Pressure::Hard => Health::Degraded(format!(
                "memory {mb:.0} MB at MEMORY_LIMIT_MB={limit}: intake holds"
            )),
        };
        let mut report = self.vitals.report("memory", health);
        report.mailbox = None;
        MessageResult(
            report
                .detail("limit_mb", limit)
                .detail("rss_mb", mb.round())
                .detail("updates_in_flight", self.gauge.in_flight.count())
                .detail("sessions_shed", self.shed_sessions)
                .detail("cache_entries_shed", self.shed_entries),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_soft_mark_sheds_at_the_limit_holds_until_back_under_it() {
        use Pressure::*;
        let limit = 100;
        assert_eq!(judge(50.0, limit, Normal), Normal);
        assert_eq!(judge(91.0, limit, Normal), Soft);
        assert_eq!(judge(100.0, limit, Soft), Hard);
        // Back under the limit but not the soft mark: still holding.
        assert_eq!(judge(95.0, limit, Hard), Hard);
        assert_eq!(judge(89.0, limit, Hard), Normal);
        // From the soft side the same figure is only shedding.
        assert_eq!(judge(95.0, limit, Soft), Soft);
        assert_eq!(judge(10_000.0, 0, Hard), Normal, "no limit");
    }

    #[test]
    fn intake_takes_what_fits_in_the_room_left() {
        use Pressure::*;
        // 10 MB left at 100 KB an update: 102 fit, 40 are in flight.
        assert_eq!(admit(Normal, 90.0, 100, 40, 100), 62);
        assert_eq!(admit(Soft, 90.0, 100, 40, 100), 62);
        // More in flight than fit: none until some end.
        assert_eq!(admit(Soft, 95.0, 100, 200, 100), 0);
        // None in flight: a few, whatever the room.
        assert_eq!(admit(Soft, 99.9, 100, 0, 100), LEAST);
        assert_eq!(admit(Normal, 120.0, 100, 0, 100), LEAST);
        // At the limit nothing; with no limit no bound.
        assert_eq!(admit(Hard, 95.0, 100, 0, 100), 0);
        assert_eq!(admit(Normal, 5_000.0, 0, 1_000_000, 100), usize::MAX);
    }
}

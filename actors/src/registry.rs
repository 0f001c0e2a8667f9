//! A keyed registry: one child actor per key, created on demand, retired when
//! idle or when too many are alive.
//!
//! A bot keeps one actor per conversation. Most conversations are quiet most
//! of the time, so a child that has had nothing to do for `idle_timeout` is
//! retired, and a hard cap (`max_children`) retires the least recently active
//! one when a new key arrives and the registry is full. Retiring always means
//! "save, then stop": the registry sends the child [`Retire`], the child
//! answers with a [`Persist`] future that saves what must survive, and only
//! when that future has finished does the child stop.
//!
//! # Why a shared handle and not an actor
//!
//! [`KeyedRegistry`] is a cloneable handle over state behind a mutex, not an
//! actor. Routing is the hot path: if the registry were an actor, every
//! message would take two mailbox hops (caller → registry → child) and the
//! registry's single mailbox would be the bottleneck for every chat. As a
//! handle, routing is a hash lookup made by the caller itself, the activity
//! clock is updated in the same critical section (no extra message per
//! routed message), and the owner (usually a router actor) can await
//! backpressure directly. Timed work (the idle sweep, waiting for a retiring
//! child's persist) runs as small Tokio tasks that hold only a weak reference,
//! so dropping the last handle stops them.
//!
//! # Where children run, and who sends to them
//!
//! A key's child always runs on the same arbiter ([`placement`]), and every
//! message for it, [`Retire`] included, is handed to that arbiter, which
//! sends it and frees its mailbox slot once it is handled. The caller pays one
//! hand-over to the child's thread; the answer that frees the slot never
//! crosses back.
//!
//! # Order and the persist/restore race
//!
//! Messages for one key are delivered in the order their routing calls
//! completed (an arbiter runs what it is handed in order). When a child is
//! retired, messages already in its mailbox are
//! handled before [`Retire`] (mailboxes are FIFO). Messages routed for that
//! key while it is retiring are held by the registry (up to the mailbox
//! capacity) and handed, in order, to a new child that is started only after
//! the old child's [`Persist`] future has completed. So a child that restores
//! its state in `started` always reads what its predecessor saved.
//!
//! # Backpressure
//!
//! Each child has `mailbox_capacity` slots (a semaphore). A slot is taken when
//! a message is routed and given back when the child has finished handling it
//! (the handler's response is ready). [`KeyedRegistry::try_route`] returns
//! [`RouteError::Full`] when no slot is free; [`KeyedRegistry::route`] waits
//! for one. A caller that awaits `route` stops taking input while a child is
//! full, which is the point. The actix mailbox underneath is unbounded so that
//! a send never parks: the semaphore is the only bound.
//!
//! The number of children is bounded too: at most `max_children` live, and
//! as many retiring. A message that needs a new child while both are at the
//! bound waits (or is [`RouteError::Full`]) until a retiring child stops.
//!
//! # Children must handle messages one at a time
//!
//! A handler that returns a `ResponseActFuture` lets the next message (and
//! [`Retire`]) run before its future finishes. Children that want strict order
//! and a complete persist should do async work with `ctx.wait`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use actix::dev::{MessageResponse, OneshotSender, ToEnvelope, channel};
use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use crate::probe::{Health, ProbeReport};
use crate::supervisor::{NodeId, Tree};

/// The arbiter, of `arbiters`, that the child for `key` runs on.
///
/// Stable for a key within and across runs, so an owner can start helpers
/// for a key's child on the same arbiter (a per-arbiter cache or sender that
/// the child then reaches without crossing threads).
pub fn placement<K: Hash + ?Sized>(key: &K, arbiters: usize) -> usize {
    use std::hash::{DefaultHasher, Hasher};
    // `DefaultHasher::new` has fixed keys, unlike a `RandomState`.
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % arbiters.max(1) as u64) as usize
}

/// Why a child is being retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetireReason {
    /// Nothing was routed to it for the idle timeout.
    Idle,
    /// The registry was full and it was the least recently active.
    Evicted,
    /// The registry is shutting down.
    Shutdown,
}

/// Tells a child to save what must survive and stop. Sent by the registry,
/// always as the last message the registry sends that child.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Retire {
    /// Why.
    pub reason: RetireReason,
}

/// A child's answer to [`Retire`]: the work that saves its state.
///
/// The future runs on the child's arbiter while the child's mailbox is
/// blocked (`ctx.wait`); when it completes the child stops and the registry is
/// told the key is free. Blocking work (a database write) belongs in
/// `tokio::task::spawn_blocking` or a worker pool inside the future, not on
/// the event loop.
pub struct Persist(Option<LocalBoxFuture<'static, ()>>);

impl Persist {
    /// Saves with `fut`, then stops.
    pub fn after<F>(fut: F) -> Self
    where
        F: Future<Output = ()> + 'static,
    {
        Persist(Some(Box::pin(fut)))
    }

    /// Nothing to save: stops at once.
    pub fn nothing() -> Self {
        Persist(None)
    }
}

impl<A> MessageResponse<A, Retire> for Persist
where
    A: Actor<Context = Context<A>>,
{
    fn handle(self, ctx: &mut Context<A>, tx: Option<OneshotSender<()>>) {
        let done = move |_: (), _: &mut A, ctx: &mut Context<A>| {
            ctx.stop();
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        };
        match self.0 {
            Some(fut) => ctx.wait(actix::fut::wrap_future::<_, A>(fut).map(done)),
            None => ctx.wait(actix::fut::ready(()).map(done)),
        }
    }
}

/// An actor a [`KeyedRegistry`] can own: it runs in a `Context` and answers
/// [`Retire`] with a [`Persist`]. Implemented for every such actor.
/// It is [`Supervised`](actix::Supervised): in a supervised registry, its
/// `restarting` resets what a panic may have left half-done.
pub trait Child:
    Actor<Context = Context<Self>> + Handler<Retire, Result = Persist> + Supervised + Unpin
{
}

impl<A> Child for A where
    A: Actor<Context = Context<A>> + Handler<Retire, Result = Persist> + Supervised + Unpin
{
}

/// Limits of a registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// A child that has had nothing routed to it for this long is retired.
    pub idle_timeout: Duration,
    /// At most this many children are live (retiring ones excepted).
    pub max_children: usize,
    /// Messages that may wait for one child before routing reports it full.
    pub mailbox_capacity: usize,
    /// How often idle children are looked for. A child is retired between
    /// `idle_timeout` and `idle_timeout + sweep_interval` after its last message.
    pub sweep_interval: Duration,
}

impl RegistryConfig {
    /// Limits with a mailbox of 16 and a sweep every quarter of the timeout
    /// (between 10 ms and 30 s).
    pub fn new(idle_timeout: Duration, max_children: usize) -> Self {
        RegistryConfig {
            idle_timeout,
            max_children: max_children.max(1),
            mailbox_capacity: 16,
            sweep_interval: (idle_timeout / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(30)),
        }
    }
}

/// Figures for a probe or `/actors`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Children accepting messages.
    pub live: usize,
    /// Children saving their state before they stop.
    pub retiring: usize,
    /// Highest `live` seen.
    pub peak: usize,
    /// The cap on `live`.
    pub max_children: usize,
    /// Messages routed and not yet handled, over all children.
    pub queued: usize,
    /// Children started since the registry was created.
    pub spawned: u64,
    /// Children retired for being idle.
    pub expired: u64,
    /// Children retired to make room.
    pub evicted: u64,
    /// Children found stopped without having been retired (they stopped
    /// themselves); a new child took their place.
    pub vanished: u64,
}

/// Why a message could not be routed. Carries the message back.
#[derive(thiserror::Error)]
pub enum RouteError<M> {
    /// The child for the key has no free mailbox slot.
    #[error("the child's mailbox is full")]
    Full(M),
    /// The registry is shutting down and takes no more messages.
    #[error("the registry is shut down")]
    Closed(M),
}

impl<M> RouteError<M> {
    /// The message that was not routed.
    pub fn into_inner(self) -> M {
        match self {
            RouteError::Full(m) | RouteError::Closed(m) => m,
        }
    }
}

impl<M> fmt::Debug for RouteError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Full(_) => f.write_str("RouteError::Full(..)"),
            RouteError::Closed(_) => f.write_str("RouteError::Closed(..)"),
        }
    }
}

/// One child actor per key; see the module documentation.
///
/// Clones share the registry. Call [`KeyedRegistry::shutdown`] before the
/// program ends: dropping the last handle drops the children's addresses, and
/// they stop without being asked to persist.
pub struct KeyedRegistry<K, A: Actor> {
    shared: Arc<Shared<K, A>>,
}

impl<K, A: Actor> Clone for KeyedRegistry<K, A> {
    fn clone(&self) -> Self {
        KeyedRegistry {
            shared: Arc::clone(&self.shared),
        }
    }
}

type Factory<K, A> = dyn Fn(&K) -> A + Send + Sync;

/// A message held for the next incarnation of a retiring child.
type Held<A> = Box<dyn FnOnce(&Addr<A>) + Send>;

struct Shared<K, A: Actor> {
    state: Mutex<State<K, A>>,
    factory: Arc<Factory<K, A>>,
    arbiters: Vec<ArbiterHandle>,
    config: RegistryConfig,
    runtime: Handle,
    /// Messages routed and not yet handled; shared with delivery tasks.
    queued: Arc<AtomicUsize>,
    /// Woken whenever the last entry leaves, for `shutdown`.
    drained: Notify,
    /// Woken whenever a retiring child has stopped, for routers waiting to
    /// start a new one.
    retired_one: Notify,
    /// The tree and group the children are supervised in, if any.
    supervision: Option<(Tree, NodeId)>,
}

struct State<K, A: Actor> {
    entries: HashMap<K, Entry<A>>,
    /// The configured idle timeout; the cap is `stats.max_children`. Both
    /// can change while the registry runs ([`KeyedRegistry::set_limits`]).
    idle_timeout: Duration,
    activity: Activity<K>,
    closed: bool,
    stats: RegistryStats,
}

struct Entry<A: Actor> {
    /// Free mailbox slots of the current incarnation.
    slots: Arc<Semaphore>,
    phase: Phase<A>,
}

enum Phase<A: Actor> {
    Live {
        addr: Addr<A>,
        tick: u64,
        last: Instant,
    },
    /// Saving; messages wait here for the next incarnation.
    Retiring { held: Vec<Held<A>> },
}

impl<K, A> KeyedRegistry<K, A>
where
    K: Clone + Eq + Hash + Send + 'static,
    A: Child,
{
    /// Creates a registry whose children are made by `factory` on one of
    /// `arbiters` (the current arbiter if the list is empty), each key always
    /// on the same one (see [`placement`]), and
    /// starts its idle sweep.
    ///
    /// The factory runs on the child's arbiter. A child that restores state
    /// should do it in `started` with `ctx.wait`, so that messages wait for it.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (any actix `System` provides one).
    pub fn new<F>(config: RegistryConfig, arbiters: Vec<ArbiterHandle>, factory: F) -> Self
    where
        F: Fn(&K) -> A + Send + Sync + 'static,
    {
        Self::build(config, arbiters, None, factory)
    }

    /// [`KeyedRegistry::new`] with every child a member of `group` in
    /// `tree` (see [`Tree::group`]): a child that panics is restarted in
    /// place, with its address and the messages queued for it, and the
    /// restart is counted on the group.
    pub fn supervised<F>(
        config: RegistryConfig,
        arbiters: Vec<ArbiterHandle>,
        tree: &Tree,
        group: NodeId,
        factory: F,
    ) -> Self
    where
        F: Fn(&K) -> A + Send + Sync + 'static,
    {
        Self::build(config, arbiters, Some((tree.clone(), group)), factory)
    }

    fn build<F>(
        config: RegistryConfig,
        arbiters: Vec<ArbiterHandle>,
        supervision: Option<(Tree, NodeId)>,
        factory: F,
    ) -> Self
    where
        F: Fn(&K) -> A + Send + Sync + 'static,
    {
        let arbiters = if arbiters.is_empty() {
            vec![Arbiter::current()]
        } else {
            arbiters
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: HashMap::new(),
                activity: Activity {
                    order: BTreeMap::new(),
                    next_tick: 0,
                },
                closed: false,
                idle_timeout: config.idle_timeout,
                stats: RegistryStats {
                    max_children: config.max_children,
                    ..RegistryStats::default()
                },
            }),
            factory: Arc::new(factory),
            arbiters,
            config,
            runtime: Handle::current(),
            queued: Arc::new(AtomicUsize::new(0)),
            drained: Notify::new(),
            retired_one: Notify::new(),
            supervision,
        });
        shared.runtime.spawn(sweep_loop(Arc::downgrade(&shared)));
        KeyedRegistry { shared }
    }

    /// Routes `msg` to the child for `key`, starting it if needed, or hands
    /// the message back if that child's mailbox is full.
    pub fn try_route<M>(&self, key: K, msg: M) -> Result<(), RouteError<M>>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(RouteError::Closed(msg));
        }
        if self.shared.no_room_for(&state, &key) {
            return Err(RouteError::Full(msg));
        }
        match self.shared.slots(&mut state, &key).try_acquire_owned() {
            Ok(permit) => {
                self.shared.deliver(&mut state, &key, msg, permit);
                Ok(())
            }
            Err(_) => Err(RouteError::Full(msg)),
        }
    }

    /// Routes `msg` to the child for `key`, starting it if needed, waiting
    /// while that child's mailbox is full. Fails only when the registry is
    /// shut down. Dropping the future before it completes drops the message.
    pub async fn route<M>(&self, key: K, msg: M) -> Result<(), RouteError<M>>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        loop {
            let room = self.shared.retired_one.notified();
            tokio::pin!(room);
            let slots = {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(RouteError::Closed(msg));
                }
                if self.shared.no_room_for(&state, &key) {
                    // Registered before the lock is let go: a child that
                    // stops meanwhile wakes it.
                    room.as_mut().enable();
                    None
                } else {
                    let slots = self.shared.slots(&mut state, &key);
                    match Arc::clone(&slots).try_acquire_owned() {
                        Ok(permit) => {
                            self.shared.deliver(&mut state, &key, msg, permit);
                            return Ok(());
                        }
                        Err(_) => Some(slots),
                    }
                }
            };
            let Some(slots) = slots else {
                room.await;
                continue;
            };
            // Closed when the child starts retiring: then look again.
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                continue;
            };
            let mut state = self.shared.lock();
            if state.closed {
                return Err(RouteError::Closed(msg));
            }
            let current = state
                .entries
                .get(&key)
                .is_some_and(|e| Arc::ptr_eq(&e.slots, &slots));
            if current {
                self.shared.deliver(&mut state, &key, msg, permit);
                return Ok(());
            }
        }
    }

    /// Changes the idle timeout and the cap while the registry runs. Live
    /// children past a lower cap are retired at once, least recently active
    /// first, and save their state as on any retirement; answers how many.
    /// The sweep keeps the period it was started with.
    pub fn set_limits(&self, idle_timeout: Duration, max_children: usize) -> usize {
        let mut state = self.shared.lock();
        state.idle_timeout = idle_timeout;
        state.stats.max_children = max_children.max(1);
        let excess = state.stats.live.saturating_sub(state.stats.max_children);
        self.retire_least_recent(&mut state, excess)
    }

    /// Retires now the children that have had nothing for `idle_for` and
    /// hold no message, as the idle sweep does past the timeout; answers
    /// how many.
    pub fn retire_idle_for(&self, idle_for: Duration) -> usize {
        let mut state = self.shared.lock();
        self.shared.retire_idle(&mut state, idle_for)
    }

    /// Retires up to `count` live children, least recently active first
    /// (they save their state as on any retirement); answers how many.
    pub fn shed(&self, count: usize) -> usize {
        let mut state = self.shared.lock();
        self.retire_least_recent(&mut state, count)
    }

    fn retire_least_recent(&self, state: &mut State<K, A>, count: usize) -> usize {
        let keys: Vec<K> = state.activity.order.values().take(count).cloned().collect();
        for key in &keys {
            state.stats.evicted += 1;
            self.shared.retire(state, key, RetireReason::Evicted);
        }
        keys.len()
    }

    /// Current figures.
    pub fn stats(&self) -> RegistryStats {
        let mut stats = self.shared.lock().stats;
        stats.queued = self.shared.queued.load(Ordering::Relaxed);
        stats
    }

    /// A probe report with [`RegistryStats`] as details: one line for all the
    /// children, however many there are. Unhealthy once shut down.
    pub fn report(&self, name: impl Into<String>) -> ProbeReport {
        let stats = self.stats();
        let health = if self.shared.lock().closed {
            Health::Unhealthy("shut down".to_owned())
        } else {
            Health::Healthy
        };
        let mut report = ProbeReport::new(name, health).detail("children", stats);
        report.handled = stats.spawned;
        report
    }

    /// Whether a child (live or retiring) exists for `key`.
    pub fn contains(&self, key: &K) -> bool {
        self.shared.lock().entries.contains_key(key)
    }

    /// Stops taking messages, retires every child and resolves when all of
    /// them have persisted and stopped. Messages held for a retiring child
    /// are still delivered to a successor, which is retired right after them.
    pub async fn shutdown(&self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            let live: Vec<K> = state.activity.order.values().cloned().collect();
            for key in live {
                self.shared.retire(&mut state, &key, RetireReason::Shutdown);
            }
        }
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.shared.lock().entries.is_empty() {
                return;
            }
            drained.await;
        }
    }
}

impl<K, A> Shared<K, A>
where
    K: Clone + Eq + Hash + Send + 'static,
    A: Child,
{
    fn lock(&self) -> MutexGuard<'_, State<K, A>> {
        // The state stays consistent between statements, so a panic
        // elsewhere while holding the lock does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a message for `key` must wait before a child can take it: it
    /// needs a new child, the live ones are at the cap, and as many as that
    /// are still retiring (saving, or finishing work they were waiting on).
    /// Without this bound, children that retire slowly would pile up behind
    /// new ones, and memory with them.
    fn no_room_for(&self, state: &State<K, A>, key: &K) -> bool {
        !state.entries.contains_key(key)
            && state.stats.live >= state.stats.max_children
            && state.stats.retiring >= state.stats.max_children
    }

    /// The mailbox slots for `key`, starting a child (and making room) if
    /// there is none.
    fn slots(self: &Arc<Self>, state: &mut State<K, A>, key: &K) -> Arc<Semaphore> {
        match state.entries.get(key) {
            Some(Entry {
                phase: Phase::Live { addr, tick, .. },
                ..
            }) if !addr.connected() => {
                // It stopped on its own; whatever it saved in `stopping` is
                // all there is. A new child takes the key.
                log::warn!("a registry child stopped without being retired; replacing it");
                let tick = *tick;
                state.activity.order.remove(&tick);
                state.entries.remove(key);
                state.stats.live -= 1;
                state.stats.vanished += 1;
            }
            Some(entry) => return Arc::clone(&entry.slots),
            None => {}
        }
        if state.stats.live >= state.stats.max_children {
            self.evict_least_recent(state);
        }
        let addr = self.start_child(state, key);
        let slots = Arc::new(Semaphore::new(self.config.mailbox_capacity));
        let phase = Phase::Live {
            addr,
            tick: state.activity.touch(key, None),
            last: Instant::now(),
        };
        let entry = Entry {
            slots: Arc::clone(&slots),
            phase,
        };
        state.entries.insert(key.clone(), entry);
        state.became_live();
        slots
    }

    /// Hands `msg` to the key's current incarnation (or holds it for the
    /// next one) and records the activity.
    fn deliver<M>(&self, state: &mut State<K, A>, key: &K, msg: M, permit: OwnedSemaphorePermit)
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let queued = Arc::clone(&self.queued);
        let arbiter = self.arbiter_for(key).clone();
        let Some(entry) = state.entries.get_mut(key) else {
            return;
        };
        match &mut entry.phase {
            Phase::Live { addr, tick, last } => {
                *last = Instant::now();
                *tick = state.activity.touch(key, Some(*tick));
                send(&arbiter, addr, msg, permit, queued);
            }
            Phase::Retiring { held } => {
                held.push(Box::new(move |addr: &Addr<A>| {
                    send(&arbiter, addr, msg, permit, queued)
                }));
            }
        }
    }

    fn evict_least_recent(self: &Arc<Self>, state: &mut State<K, A>) {
        if let Some(key) = state.activity.order.values().next().cloned() {
            state.stats.evicted += 1;
            log::debug!("registry full; evicting the least recently active child");
            self.retire(state, &key, RetireReason::Evicted);
        }
    }

    /// Sends [`Retire`] to the key's live child and waits, off the lock,
    /// for its persist to finish.
    fn retire(self: &Arc<Self>, state: &mut State<K, A>, key: &K, reason: RetireReason) {
        let Some(entry) = state.entries.get_mut(key) else {
            return;
        };
        let Phase::Live { addr, tick, .. } = &entry.phase else {
            return;
        };
        let (addr, tick) = (addr.clone(), *tick);
        entry.phase = Phase::Retiring { held: Vec::new() };
        // Wakes routers waiting for a slot of the old incarnation; they will
        // find the new semaphore and hold their message for the successor.
        entry.slots.close();
        entry.slots = Arc::new(Semaphore::new(self.config.mailbox_capacity));
        state.activity.order.remove(&tick);
        state.stats.live -= 1;
        state.stats.retiring += 1;

        // Through the child's arbiter, like every message routed to it, so
        // it arrives after them.
        let weak = Arc::downgrade(self);
        let child_key = key.clone();
        let sent = self.arbiter_for(key).spawn(async move {
            // Err means the child stopped without answering: there is
            // nothing more to wait for either way.
            let _ = addr.send(Retire { reason }).await;
            if let Some(shared) = weak.upgrade() {
                shared.retired(&child_key);
            }
        });
        if !sent {
            // The arbiter is gone, and the child with it.
            let weak = Arc::downgrade(self);
            let key = key.clone();
            self.runtime.spawn(async move {
                if let Some(shared) = weak.upgrade() {
                    shared.retired(&key);
                }
            });
        }
    }

    /// The arbiter the child for `key` runs on.
    fn arbiter_for(&self, key: &K) -> &ArbiterHandle {
        &self.arbiters[placement(key, self.arbiters.len())]
    }

    /// The child for `key` has persisted and stopped.
    fn retired(self: &Arc<Self>, key: &K) {
        let mut state = self.lock();
        state.stats.retiring -= 1;
        self.retired_one.notify_waiters();
        let held = match state.entries.get_mut(key) {
            Some(Entry {
                phase: Phase::Retiring { held },
                ..
            }) => std::mem::take(held),
            _ => return,
        };
        if held.is_empty() {
            state.entries.remove(key);
            if state.entries.is_empty() {
                self.drained.notify_waiters();
            }
            return;
        }
        // Messages arrived while it was saving: a successor starts now, after
        // the save, and gets them in order.
        if state.stats.live >= state.stats.max_children {
            self.evict_least_recent(&mut state);
        }
        let addr = self.start_child(&mut state, key);
        for message in held {
            message(&addr);
        }
        let tick = state.activity.touch(key, None);
        if let Some(entry) = state.entries.get_mut(key) {
            entry.phase = Phase::Live {
                addr,
                tick,
                last: Instant::now(),
            };
        }
        state.became_live();
        if state.closed {
            self.retire(&mut state, key, RetireReason::Shutdown);
        }
    }

    /// Starts a child on its key's arbiter. The actix channel is created
    /// unbounded: capacity is enforced by the entry's semaphore instead, so
    /// that no send ever parks.
    fn start_child(&self, state: &mut State<K, A>, key: &K) -> Addr<A> {
        let (tx, rx) = channel::channel(0);
        let factory = Arc::clone(&self.factory);
        let child_key = key.clone();
        let supervision = self.supervision.clone();
        let started = self.arbiter_for(key).spawn_fn(move || {
            let ctx = Context::with_receiver(rx);
            let actor = factory(&child_key);
            match supervision {
                Some((tree, group)) => {
                    actix::spawn(tree.run_member(group, ctx.into_future(actor)));
                }
                None => {
                    actix::spawn(ctx.into_future(actor));
                }
            }
        });
        if !started {
            log::error!("registry arbiter has stopped; a child could not start");
        }
        state.stats.spawned += 1;
        Addr::new(tx)
    }

    /// Retires children idle for longer than the timeout. A child with
    /// messages still in hand is busy, not idle: it is marked active instead.
    fn sweep(self: &Arc<Self>) {
        let mut guard = self.lock();
        let timeout = guard.idle_timeout;
        self.retire_idle(&mut guard, timeout);
    }

    /// Retires the children that have had nothing for `timeout` and hold
    /// no message; answers how many.
    fn retire_idle(self: &Arc<Self>, state: &mut State<K, A>, timeout: Duration) -> usize {
        if state.closed {
            return 0;
        }
        let now = Instant::now();
        let mut idle = Vec::new();
        let mut busy = Vec::new();
        for key in state.activity.order.values() {
            let Some(Entry {
                slots,
                phase: Phase::Live { last, .. },
            }) = state.entries.get(key)
            else {
                continue;
            };
            if now.duration_since(*last) < timeout {
                break;
            }
            if slots.available_permits() < self.config.mailbox_capacity {
                busy.push(key.clone());
            } else {
                idle.push(key.clone());
            }
        }
        for key in busy {
            if let Some(Entry {
                phase: Phase::Live { tick, last, .. },
                ..
            }) = state.entries.get_mut(&key)
            {
                *last = now;
                *tick = state.activity.touch(&key, Some(*tick));
            }
        }
        let retired = idle.len();
        for key in idle {
            state.stats.expired += 1;
            self.retire(state, &key, RetireReason::Idle);
        }
        retired
    }
}

/// Live keys ordered by last activity: the first is the least recently active.
struct Activity<K> {
    order: BTreeMap<u64, K>,
    next_tick: u64,
}

impl<K: Clone> Activity<K> {
    /// Moves `key` to the most recently active end; returns its new tick.
    fn touch(&mut self, key: &K, old: Option<u64>) -> u64 {
        if let Some(old) = old {
            self.order.remove(&old);
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, key.clone());
        tick
    }
}

impl<K, A: Actor> State<K, A> {
    fn became_live(&mut self) {
        self.stats.live += 1;
        self.stats.peak = self.stats.peak.max(self.stats.live);
    }
}

/// Enqueues `msg` and gives its slot back once the child has handled it.
fn send<A, M>(
    arbiter: &ArbiterHandle,
    addr: &Addr<A>,
    msg: M,
    permit: OwnedSemaphorePermit,
    queued: Arc<AtomicUsize>,
) where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    queued.fetch_add(1, Ordering::Relaxed);
    let addr = addr.clone();
    let counted = Arc::clone(&queued);
    // Sent from the child's own arbiter, which runs what it is given in
    // order: messages keep the order they were routed in, and the answer
    // that frees the slot comes back without crossing threads. The caller
    // pays one hand-over to that thread, not two.
    let sent = arbiter.spawn(async move {
        let _ = addr.send(msg).await;
        drop(permit);
        counted.fetch_sub(1, Ordering::Relaxed);
    });
    if !sent {
        // The arbiter is gone, and the child with it; the message and its
        // slot are dropped.
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn sweep_loop<K, A>(shared: Weak<Shared<K, A>>)
where
    K: Clone + Eq + Hash + Send + 'static,
    A: Child,
{
    let period = match shared.upgrade() {
        Some(s) => s.config.sweep_interval,
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match shared.upgrade() {
            Some(shared) if !shared.lock().closed => shared.sweep(),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads_keys() {
        let mut counts = [0usize; 4];
        for key in 0..4_000i64 {
            let at = placement(&key, 4);
            assert_eq!(at, placement(&key, 4));
            counts[at] += 1;
        }
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
        assert_eq!(placement(&42i64, 1), 0);
        assert_eq!(placement(&42i64, 0), 0);
    }
    use tokio::sync::{mpsc, oneshot};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Restored(u32, Vec<u32>),
        Handled(u32, u32),
        Persisted(u32, Vec<u32>, RetireReason),
        Stopped(u32),
    }

    /// A fake database: what each key saved, plus a log of every load and
    /// save so tests can check their order.
    #[derive(Clone)]
    struct Store {
        saved: Arc<Mutex<HashMap<u32, Vec<u32>>>>,
        events: mpsc::UnboundedSender<Event>,
        /// When set, the next persist waits for it.
        gate: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    }

    impl Store {
        fn new() -> (Self, mpsc::UnboundedReceiver<Event>) {
            let (events, rx) = mpsc::unbounded_channel();
            let store = Store {
                saved: Arc::default(),
                events,
                gate: Arc::default(),
            };
            (store, rx)
        }

        fn saved(&self, key: u32) -> Vec<u32> {
            let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            saved.get(&key).cloned().unwrap_or_default()
        }

        fn hold_next_persist(&self) -> oneshot::Sender<()> {
            let (tx, rx) = oneshot::channel();
            *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
            tx
        }
    }

    /// A per-key child that remembers every value routed to it.
    struct Session {
        key: u32,
        seen: Vec<u32>,
        store: Store,
    }

    impl Actor for Session {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            let store = self.store.clone();
            let key = self.key;
            let restore = async move {
                tokio::task::yield_now().await;
                let state = store.saved(key);
                let _ = store.events.send(Event::Restored(key, state.clone()));
                state
            };
            ctx.wait(
                actix::fut::wrap_future::<_, Self>(restore).map(|state, act, _| act.seen = state),
            );
        }

        fn stopped(&mut self, _: &mut Context<Self>) {
            let _ = self.store.events.send(Event::Stopped(self.key));
        }
    }

    impl Supervised for Session {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.seen.clear();
        }
    }

    /// A value of this makes the child panic.
    const POISON: u32 = 666;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Deliver(u32);

    impl Handler<Deliver> for Session {
        type Result = ();
        fn handle(&mut self, Deliver(value): Deliver, _: &mut Context<Self>) {
            assert!(value != POISON, "poisoned");
            self.seen.push(value);
            let _ = self.store.events.send(Event::Handled(self.key, value));
        }
    }

    /// Blocks the child's mailbox until released.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Block(oneshot::Receiver<()>);

    impl Handler<Block> for Session {
        type Result = ();
        fn handle(&mut self, Block(release): Block, ctx: &mut Context<Self>) {
            ctx.wait(actix::fut::wrap_future(async move {
                let _ = release.await;
            }));
        }
    }

    impl Handler<Retire> for Session {
        type Result = Persist;
        fn handle(&mut self, Retire { reason }: Retire, _: &mut Context<Self>) -> Persist {
            let store = self.store.clone();
            let (key, seen) = (self.key, self.seen.clone());
            let gate = store
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            Persist::after(async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                store
                    .saved
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, seen.clone());
                let _ = store.events.send(Event::Persisted(key, seen, reason));
            })
        }
    }

    fn registry(
        config: RegistryConfig,
        arbiters: Vec<ArbiterHandle>,
        store: &Store,
    ) -> KeyedRegistry<u32, Session> {
        let store = store.clone();
        KeyedRegistry::new(config, arbiters, move |key: &u32| Session {
            key: *key,
            seen: Vec::new(),
            store: store.clone(),
        })
    }

    async fn next_event(
        events: &mut mpsc::UnboundedReceiver<Event>,
        wanted: impl Fn(&Event) -> bool,
    ) -> Event {
        loop {
            match events.recv().await {
                Some(event) if wanted(&event) => return event,
                Some(_) => {}
                None => panic!("event channel closed"),
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[actix_rt::test]
    async fn a_supervised_child_that_panics_restores_and_handles_what_was_queued() {
        use crate::supervisor::{Backoff, Intensity, Strategy};
        let (store, mut events) = Store::new();
        let tree = Tree::new("app", Strategy::OneForOne, Intensity::new(1, HOUR), |_| {})
            .with_backoff(Backoff {
                first: Duration::from_millis(1),
                max: Duration::from_millis(1),
            });
        let group = tree.group(tree.root(), "sessions", Intensity::new(10, HOUR));
        let factory_store = store.clone();
        let reg = KeyedRegistry::supervised(
            RegistryConfig::new(HOUR, 100),
            vec![],
            &tree,
            group,
            move |key: &u32| Session {
                key: *key,
                seen: Vec::new(),
                store: factory_store.clone(),
            },
        );
        for value in [1, POISON, 2] {
            reg.route(7, Deliver(value)).await.unwrap();
        }
        // Restored twice: at the start and after the panic.
        let mut restored = 0;
        loop {
            match events.recv().await {
                Some(Event::Restored(7, _)) => restored += 1,
                Some(Event::Handled(7, 2)) => break,
                Some(_) => {}
                None => panic!("event channel closed"),
            }
        }
        assert_eq!(restored, 2);
        assert_eq!(tree.report().children[0].restarts, 1);
        reg.shutdown().await;
        let Event::Persisted(_, seen, _) =
            next_event(&mut events, |e| matches!(e, Event::Persisted(7, ..))).await
        else {
            unreachable!()
        };
        // What came after the restart; the poisoned message is gone.
        assert_eq!(seen, vec![2]);
    }

    #[actix_rt::test]
    async fn keeps_per_key_order_across_arbiters_and_concurrent_routers() {
        let arbiters = [Arbiter::new(), Arbiter::new()];
        let (store, _events) = Store::new();
        let mut config = RegistryConfig::new(HOUR, 100);
        config.mailbox_capacity = 3;
        let reg = registry(
            config,
            arbiters.iter().map(|a| a.handle()).collect(),
            &store,
        );

        // Eight routers at once, each feeding its own key; small mailboxes
        // make most routes wait for a slot.
        let routers = (0..8u32).map(|key| {
            let reg = reg.clone();
            tokio::spawn(async move {
                for value in 0..200 {
                    if reg.route(key, Deliver(value)).await.is_err() {
                        return false;
                    }
                }
                true
            })
        });
        for routed in futures_util::future::join_all(routers).await {
            assert!(matches!(routed, Ok(true)));
        }
        reg.shutdown().await;

        let expected: Vec<u32> = (0..200).collect();
        for key in 0..8 {
            assert_eq!(store.saved(key), expected, "key {key}");
        }
        let stats = reg.stats();
        assert_eq!((stats.live, stats.retiring, stats.queued), (0, 0, 0));
        assert_eq!(stats.spawned, 8);
        assert!(matches!(
            reg.try_route(1, Deliver(0)),
            Err(RouteError::Closed(_))
        ));
        for arbiter in arbiters {
            arbiter.stop();
        }
    }

    #[actix_rt::test]
    async fn idle_child_persists_and_its_successor_restores_what_it_saved() {
        tokio::time::pause();
        let (store, mut events) = Store::new();
        let reg = registry(
            RegistryConfig::new(Duration::from_secs(60), 100),
            Vec::new(),
            &store,
        );

        reg.route(7, Deliver(1)).await.expect("routed");
        reg.route(7, Deliver(2)).await.expect("routed");
        // Paused time jumps to the sweep that finds the child idle.
        let persisted = next_event(&mut events, |e| matches!(e, Event::Persisted(..))).await;
        assert_eq!(
            persisted,
            Event::Persisted(7, vec![1, 2], RetireReason::Idle)
        );
        assert_eq!(reg.stats().expired, 1);

        reg.route(7, Deliver(3)).await.expect("routed");
        let restored = next_event(&mut events, |e| matches!(e, Event::Restored(..))).await;
        // The first child restored nothing; skip to the second one.
        let restored = if restored == Event::Restored(7, vec![]) {
            next_event(&mut events, |e| matches!(e, Event::Restored(..))).await
        } else {
            restored
        };
        assert_eq!(restored, Event::Restored(7, vec![1, 2]));
        assert_eq!(
            next_event(&mut events, |e| matches!(e, Event::Handled(..))).await,
            Event::Handled(7, 3)
        );
        let stats = reg.stats();
        assert_eq!((stats.live, stats.spawned), (1, 2));
    }

    #[actix_rt::test]
    async fn a_lower_cap_retires_the_least_recent_children_and_they_save() {
        let (store, mut events) = Store::new();
        let reg = registry(RegistryConfig::new(HOUR, 10), Vec::new(), &store);
        for key in 1..=5u32 {
            reg.route(key, Deliver(key)).await.expect("routed");
            next_event(&mut events, |e| matches!(e, Event::Handled(..))).await;
        }
        assert_eq!(reg.set_limits(HOUR, 3), 2);
        let mut saved = Vec::new();
        for _ in 0..2 {
            if let Event::Persisted(key, seen, reason) =
                next_event(&mut events, |e| matches!(e, Event::Persisted(..))).await
            {
                assert_eq!((seen, reason), (vec![key], RetireReason::Evicted));
                saved.push(key);
            }
        }
        saved.sort();
        assert_eq!(saved, [1, 2], "the least recently active go first");
        let stats = reg.stats();
        assert_eq!((stats.max_children, stats.evicted), (3, 2));
        // The new cap holds for what comes next.
        reg.route(6, Deliver(6)).await.expect("routed");
        next_event(&mut events, |e| matches!(e, Event::Persisted(3, ..))).await;
        assert_eq!(reg.shed(1), 1);
        next_event(&mut events, |e| matches!(e, Event::Persisted(4, ..))).await;
    }

    #[actix_rt::test]
    async fn busy_child_is_not_idle() {
        tokio::time::pause();
        let (store, mut events) = Store::new();
        let reg = registry(
            RegistryConfig::new(Duration::from_secs(1), 100),
            Vec::new(),
            &store,
        );
        let (release, blocked) = oneshot::channel();
        reg.route(1, Block(blocked)).await.expect("routed");
        reg.route(1, Deliver(9)).await.expect("routed");
        // Far past the timeout, but the child still has a message in hand.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(reg.stats().expired, 0);
        let _ = release.send(());
        let persisted = next_event(&mut events, |e| matches!(e, Event::Persisted(..))).await;
        assert_eq!(persisted, Event::Persisted(1, vec![9], RetireReason::Idle));
    }

    #[actix_rt::test]
    async fn full_registry_evicts_the_least_recently_active_child() {
        let (store, mut events) = Store::new();
        let reg = registry(RegistryConfig::new(HOUR, 2), Vec::new(), &store);

        reg.route(1, Deliver(10)).await.expect("routed");
        reg.route(2, Deliver(20)).await.expect("routed");
        reg.route(1, Deliver(11)).await.expect("routed");
        reg.route(3, Deliver(30)).await.expect("routed");

        let persisted = next_event(&mut events, |e| matches!(e, Event::Persisted(..))).await;
        assert_eq!(
            persisted,
            Event::Persisted(2, vec![20], RetireReason::Evicted)
        );
        let stats = reg.stats();
        assert_eq!((stats.live, stats.peak, stats.evicted), (2, 2, 1));
        assert!(reg.contains(&1) && reg.contains(&3));
    }

    #[actix_rt::test]
    async fn messages_for_a_retiring_key_wait_for_its_persist() {
        tokio::time::pause();
        let (store, mut events) = Store::new();
        let reg = registry(RegistryConfig::new(HOUR, 1), Vec::new(), &store);

        reg.route(1, Deliver(1)).await.expect("routed");
        let release = store.hold_next_persist();
        // Key 2 takes the only place: key 1 retires, its persist held.
        reg.route(2, Deliver(100)).await.expect("routed");
        reg.route(1, Deliver(2)).await.expect("routed");
        reg.route(1, Deliver(3)).await.expect("routed");
        // Give a racing implementation every chance to restore key 1 early.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(reg.stats().retiring, 1);
        let _ = release.send(());
        reg.shutdown().await;

        let mut log = Vec::new();
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Restored(1, _) | Event::Persisted(1, ..) => log.push(event),
                _ => {}
            }
        }
        assert_eq!(
            log,
            vec![
                Event::Restored(1, vec![]),
                Event::Persisted(1, vec![1], RetireReason::Evicted),
                Event::Restored(1, vec![1]),
                Event::Persisted(1, vec![1, 2, 3], RetireReason::Shutdown),
            ]
        );
        assert_eq!(store.saved(2), vec![100]);
    }

    #[actix_rt::test]
    async fn a_new_child_waits_while_as_many_are_retiring_as_live() {
        let (store, mut events) = Store::new();
        let reg = registry(RegistryConfig::new(HOUR, 1), Vec::new(), &store);
        reg.route(1, Deliver(1)).await.expect("routed");
        let release = store.hold_next_persist();
        // Key 2 takes the only place; key 1 retires and its persist is held.
        reg.route(2, Deliver(2)).await.expect("routed");
        let stats = reg.stats();
        assert_eq!((stats.live, stats.retiring), (1, 1));

        // A third key needs a new child: one live and one retiring is the
        // bound, so it waits rather than pile up a second retiring child.
        assert!(matches!(
            reg.try_route(3, Deliver(3)),
            Err(RouteError::Full(Deliver(3)))
        ));
        let waiting = reg.route(3, Deliver(30));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err(),
            "routed past the bound"
        );
        assert_eq!(reg.stats().retiring, 1);
        // Known keys still go through meanwhile.
        reg.try_route(2, Deliver(22)).expect("a live key is routed");

        let _ = release.send(());
        waiting.await.expect("routed once key 1 has stopped");
        let persisted = next_event(&mut events, |e| matches!(e, Event::Persisted(1, ..))).await;
        assert_eq!(
            persisted,
            Event::Persisted(1, vec![1], RetireReason::Evicted)
        );
        reg.shutdown().await;
        assert_eq!(store.saved(3), vec![30]);
    }

    /// Stops the child without a retire, as a child that gives up would.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Quit;

    impl Handler<Quit> for Session {
        type Result = ();
        fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    #[actix_rt::test]
    async fn child_that_stopped_itself_is_replaced() {
        let (store, mut events) = Store::new();
        let reg = registry(RegistryConfig::new(HOUR, 10), Vec::new(), &store);
        reg.route(4, Deliver(1)).await.expect("routed");
        reg.route(4, Quit).await.expect("routed");
        next_event(&mut events, |e| matches!(e, Event::Stopped(4))).await;
        reg.route(4, Deliver(2)).await.expect("routed");
        assert_eq!(
            next_event(&mut events, |e| matches!(e, Event::Handled(4, 2))).await,
            Event::Handled(4, 2)
        );
        let stats = reg.stats();
        assert_eq!((stats.live, stats.spawned, stats.vanished), (1, 2, 1));
        let json = serde_json::to_value(reg.report("chats")).expect("serialisable");
        assert_eq!(json["details"]["children"]["vanished"], 1);
    }

    #[actix_rt::test]
    async fn full_mailbox_is_reported_then_waited_for() {
        let (store, mut events) = Store::new();
        let mut config = RegistryConfig::new(HOUR, 10);
        config.mailbox_capacity = 2;
        let reg = registry(config, Vec::new(), &store);

        let (release, blocked) = oneshot::channel();
        assert!(reg.try_route(5, Block(blocked)).is_ok());
        assert!(reg.try_route(5, Deliver(1)).is_ok());
        let full = reg.try_route(5, Deliver(2));
        assert!(matches!(full, Err(RouteError::Full(Deliver(2)))));
        // Another key is not affected by the full one.
        assert!(reg.try_route(6, Deliver(60)).is_ok());

        let waiting = tokio::spawn({
            let reg = reg.clone();
            async move { reg.route(5, Deliver(2)).await.is_ok() }
        });
        let _ = release.send(());
        assert!(matches!(waiting.await, Ok(true)));
        let mut handled = Vec::new();
        while handled.len() < 2 {
            if let Event::Handled(5, v) =
                next_event(&mut events, |e| matches!(e, Event::Handled(5, _))).await
            {
                handled.push(v);
            }
        }
        assert_eq!(handled, vec![1, 2]);
    }
}

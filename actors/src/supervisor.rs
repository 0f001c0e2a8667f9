//! Supervision: actors that panic or stop unexpectedly are restarted, in a
//! tree shaped like an Erlang/OTP supervision tree.
//!
//! actix's own [`actix::Supervisor`] restarts an actor that *stops*, keeping
//! its address and mailbox, but a panic in a handler unwinds through it and
//! takes the actor, its mailbox and every message waiting there with it.
//! The runner here polls the actor's context future the same way and also
//! catches the unwind: the actor is restarted in place through
//! [`Supervised::restarting`], so its [`Addr`] stays valid for everyone who
//! holds it and the messages queued behind the one that panicked are still
//! handled. Only the message being handled is lost; its sender sees the
//! reply channel close and decides (intake re-fetches, a session re-posts).
//!
//! The tree is data ([`Tree`]): supervisors with a [`Strategy`], workers
//! (one actor each) and worker groups (many actors of one kind, such as a
//! registry's per-key children, restarted one by one and counted together).
//! Every node has a restart [`Intensity`]: at most `max_restarts` in
//! `period`. A child past its intensity escalates to its supervisor, which
//! restarts its whole subtree and counts that against its own intensity;
//! past the root's, the tree gives up: the crashed actor stays down and the
//! `on_give_up` callback runs, for the program to report itself unhealthy
//! and exit so that its service manager starts it afresh.
//!
//! The decisions ([`Tree::exited`]) are plain code over the tree's state and
//! the time, unit-tested below; the runner only carries them out.
//!
//! ```
//! use std::time::Duration;
//! use actix::prelude::*;
//! use actorbot_actors::supervisor::{Intensity, Strategy, Tree};
//!
//! struct Counter(u32);
//! impl Actor for Counter { type Context = Context<Self>; }
//! impl Supervised for Counter {
//!     fn restarting(&mut self, _: &mut Context<Self>) { self.0 = 0; }
//! }
//!
//! #[derive(Message)]
//! #[rtype(result = "u32")]
//! struct Bump;
//! impl Handler<Bump> for Counter {
//!     type Result = u32;
//!     fn handle(&mut self, _: Bump, _: &mut Context<Self>) -> u32 {
//!         self.0 += 1;
//!         if self.0 == 2 { panic!("two is too many"); }
//!         self.0
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() {
//!     let tree = Tree::new("app", Strategy::OneForOne, Intensity::new(3, Duration::from_secs(5)), |gave_up| {
//!         eprintln!("giving up: {} ({})", gave_up.actor, gave_up.reason);
//!     });
//!     let counter = tree.start(tree.root(), "counter", &Arbiter::current(), |_| Counter(0));
//!     assert_eq!(counter.send(Bump).await.ok(), Some(1));
//!     assert!(counter.send(Bump).await.is_err()); // it panicked on this one
//!     assert_eq!(counter.send(Bump).await.ok(), Some(1)); // restarted, same address
//!     assert_eq!(tree.report().children[0].restarts, 1);
//! }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::dev::{ContextFut, channel};
use actix::prelude::*;
use futures_util::task::AtomicWaker;
use serde::Serialize;

/// What else a supervisor restarts when one of its children crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the child that crashed: its siblings do not depend on it.
    OneForOne,
    /// Every child: they share state that one crash leaves in doubt.
    OneForAll,
    /// The child that crashed and those started after it, which depend on it.
    RestForOne,
}

/// At most `max_restarts` restarts within `period`; one more escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within the period.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub period: Duration,
}

impl Intensity {
    /// `max_restarts` within `period`.
    pub fn new(max_restarts: u32, period: Duration) -> Intensity {
        Intensity {
            max_restarts,
            period,
        }
    }
}

impl Serialize for Intensity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Intensity", 2)?;
        st.serialize_field("max_restarts", &self.max_restarts)?;
        st.serialize_field("period_s", &self.period.as_secs_f64())?;
        st.end()
    }
}

/// The wait before a restart: `first`, doubling with each restart still in
/// the intensity window, at most `max`. A crash loop is slowed, a single
/// crash costs a blink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first restart within the window.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The wait before the `n`th restart in a row (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Why the tree gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GiveUp {
    /// The path of the actor whose crash went past the root's intensity.
    pub actor: String,
    /// Its last panic message, or why it stopped.
    pub reason: String,
}

/// A node of the tree, as returned by the builder methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(usize);

/// The last crash of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Crash {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The panic message, or "stopped unexpectedly".
    pub message: String,
}

/// One node of [`Tree::report`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node's name, unique among its siblings.
    pub name: String,
    /// `supervisor`, `worker` or `workers`.
    pub kind: &'static str,
    /// A supervisor's strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Its restart intensity.
    pub intensity: Intensity,
    /// Restarts of this node (of a group: of its members; of a supervisor:
    /// of its whole subtree, after an escalation).
    pub restarts: u64,
    /// The last crash, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<Crash>,
    /// The node was left down when the tree gave up.
    pub given_up: bool,
    /// Its children, in start order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<NodeReport>,
}

impl NodeReport {
    /// Every node of the subtree, depth first, with its supervisor's name.
    pub fn walk(&self) -> Vec<(&NodeReport, Option<&str>)> {
        let mut all = vec![(self, None)];
        for child in &self.children {
            for (node, parent) in child.walk() {
                all.push((node, parent.or(Some(self.name.as_str()))));
            }
        }
        all
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Supervisor(Strategy),
    Worker,
    Workers,
}

struct Node {
    name: String,
    parent: Option<usize>,
    kind: Kind,
    intensity: Intensity,
    children: Vec<usize>,
    restarts: u64,
    recent: VecDeque<Instant>,
    last_crash: Option<Crash>,
    given_up: bool,
    /// A worker's runner, for restarts its siblings' crashes call for.
    control: Option<Arc<Control>>,
}

/// What the tree decided about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Restart the actor that exited after `delay`; the workers in `also`
    /// restart with it (its supervisor's strategy, or an escalation).
    Restart {
        /// The wait before the restart.
        delay: Duration,
        /// Other workers to restart.
        also: Vec<NodeId>,
    },
    /// Past the root's intensity: leave it down.
    GiveUp(GiveUp),
}

/// The tree's state: its nodes, and what the runners share with it.
struct State {
    nodes: Vec<Node>,
    backoff: Backoff,
    given_up: Option<GiveUp>,
}

impl State {
    fn path(&self, id: usize) -> String {
        let mut names = vec![self.nodes[id].name.as_str()];
        let mut at = self.nodes[id].parent;
        while let Some(p) = at {
            // The root's name is the program's; paths start below it.
            if self.nodes[p].parent.is_some() {
                names.push(self.nodes[p].name.as_str());
            }
            at = self.nodes[p].parent;
        }
        names.reverse();
        names.join("/")
    }

    /// Counts a restart of `id` at `now`; false if it goes past its intensity.
    fn within_intensity(&mut self, id: usize, now: Instant) -> bool {
        let node = &mut self.nodes[id];
        node.restarts += 1;
        node.recent.push_back(now);
        while node
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > node.intensity.period)
        {
            node.recent.pop_front();
        }
        node.recent.len() <= node.intensity.max_restarts as usize
    }

    /// The workers of a subtree.
    fn workers(&self, id: usize, out: &mut Vec<usize>) {
        match self.nodes[id].kind {
            Kind::Worker => out.push(id),
            Kind::Workers => {}
            Kind::Supervisor(_) => {
                for &child in &self.nodes[id].children {
                    self.workers(child, out);
                }
            }
        }
    }

    fn forget_below(&mut self, id: usize) {
        for child in self.nodes[id].children.clone() {
            self.nodes[child].recent.clear();
            self.forget_below(child);
        }
    }

    fn exited(&mut self, id: usize, message: String, now: Instant) -> Decision {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.nodes[id].last_crash = Some(Crash {
            at_ms,
            message: message.clone(),
        });
        let mut failing = id;
        while !self.within_intensity(failing, now) {
            match self.nodes[failing].parent {
                Some(parent) => failing = parent,
                None => {
                    let gave_up = GiveUp {
                        actor: self.path(id),
                        reason: message,
                    };
                    self.nodes[id].given_up = true;
                    self.given_up = Some(gave_up.clone());
                    return Decision::GiveUp(gave_up);
                }
            }
        }
        let mut also = Vec::new();
        if failing == id {
            let strategy = self.nodes[id]
                .parent
                .map(|p| (p, self.nodes[p].kind))
                .and_then(|(p, kind)| match kind {
                    Kind::Supervisor(strategy) => Some((p, strategy)),
                    _ => None,
                });
            match strategy {
                Some((parent, Strategy::OneForAll)) => self.workers(parent, &mut also),
                Some((parent, Strategy::RestForOne)) => {
                    let siblings = &self.nodes[parent].children;
                    let later: Vec<usize> = siblings
                        .iter()
                        .skip_while(|&&s| s != id)
                        .skip(1)
                        .copied()
                        .collect();
                    for sibling in later {
                        self.workers(sibling, &mut also);
                    }
                }
                _ => {}
            }
        } else {
            // Escalated: the supervisor that absorbed it restarts its
            // subtree, whose nodes start with a clean history, as a
            // restarted OTP supervisor's children do.
            self.workers(failing, &mut also);
            self.forget_below(failing);
        }
        also.retain(|&w| w != id);
        let consecutive = self.nodes[failing].recent.len() as u32;
        Decision::Restart {
            delay: self.backoff.delay(consecutive),
            also: also.into_iter().map(NodeId).collect(),
        }
    }

    fn report(&self, id: usize) -> NodeReport {
        let node = &self.nodes[id];
        NodeReport {
            name: node.name.clone(),
            kind: match node.kind {
                Kind::Supervisor(_) => "supervisor",
                Kind::Worker => "worker",
                Kind::Workers => "workers",
            },
            strategy: match node.kind {
                Kind::Supervisor(s) => Some(s),
                _ => None,
            },
            intensity: node.intensity,
            restarts: node.restarts,
            last_crash: node.last_crash.clone(),
            given_up: node.given_up,
            children: node.children.iter().map(|&c| self.report(c)).collect(),
        }
    }
}

/// A worker's mailbox capacity until it sets its own in `started`, as
/// actix's default.
const MAILBOX_CAPACITY: usize = 16;

type GiveUpHook = Box<dyn Fn(&GiveUp) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    on_give_up: GiveUpHook,
    stopping: AtomicBool,
}

/// A supervision tree. Cheap to clone; every clone is the same tree.
#[derive(Clone)]
pub struct Tree {
    shared: Arc<Shared>,
}

impl Tree {
    /// A tree whose root supervisor is `name`. `on_give_up` runs once, on
    /// the thread of the crash that went past the root's intensity.
    pub fn new(
        name: impl Into<String>,
        strategy: Strategy,
        intensity: Intensity,
        on_give_up: impl Fn(&GiveUp) + Send + Sync + 'static,
    ) -> Tree {
        let root = Node {
            name: name.into(),
            parent: None,
            kind: Kind::Supervisor(strategy),
            intensity,
            children: Vec::new(),
            restarts: 0,
            recent: VecDeque::new(),
            last_crash: None,
            given_up: false,
            control: None,
        };
        Tree {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    nodes: vec![root],
                    backoff: Backoff::default(),
                    given_up: None,
                }),
                on_give_up: Box::new(on_give_up),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Sets the wait between restarts (the default: 50 ms doubling to 2 s).
    pub fn with_backoff(self, backoff: Backoff) -> Tree {
        self.lock().backoff = backoff;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The root supervisor.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    fn add(
        &self,
        parent: NodeId,
        name: String,
        kind: Kind,
        intensity: Intensity,
        control: Option<Arc<Control>>,
    ) -> NodeId {
        let mut state = self.lock();
        let id = state.nodes.len();
        state.nodes.push(Node {
            name,
            parent: Some(parent.0),
            kind,
            intensity,
            children: Vec::new(),
            restarts: 0,
            recent: VecDeque::new(),
            last_crash: None,
            given_up: false,
            control,
        });
        state.nodes[parent.0].children.push(id);
        NodeId(id)
    }

    fn intensity_of(&self, node: NodeId) -> Intensity {
        self.lock().nodes[node.0].intensity
    }

    /// A supervisor under `parent`, with its own strategy and intensity.
    pub fn supervisor(
        &self,
        parent: NodeId,
        name: impl Into<String>,
        strategy: Strategy,
        intensity: Intensity,
    ) -> NodeId {
        self.add(
            parent,
            name.into(),
            Kind::Supervisor(strategy),
            intensity,
            None,
        )
    }

    /// A group of many actors of one kind (OTP's `simple_one_for_one`):
    /// each member restarts itself, the restarts count against the group's
    /// intensity, and the group's siblings are not restarted with them.
    /// Members run through [`Tree::run_member`].
    pub fn group(&self, parent: NodeId, name: impl Into<String>, intensity: Intensity) -> NodeId {
        self.add(parent, name.into(), Kind::Workers, intensity, None)
    }

    /// Starts `factory`'s actor on `arbiter` as a worker of `parent`, with
    /// the parent's intensity. Its address stays valid across restarts.
    pub fn start<A, F>(
        &self,
        parent: NodeId,
        name: impl Into<String>,
        arbiter: &ArbiterHandle,
        factory: F,
    ) -> Addr<A>
    where
        A: Supervised + Actor<Context = Context<A>> + Unpin,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        let intensity = self.intensity_of(parent);
        self.start_with(parent, name, intensity, arbiter, factory)
    }

    /// [`Tree::start`] with an intensity of the worker's own.
    pub fn start_with<A, F>(
        &self,
        parent: NodeId,
        name: impl Into<String>,
        intensity: Intensity,
        arbiter: &ArbiterHandle,
        factory: F,
    ) -> Addr<A>
    where
        A: Supervised + Actor<Context = Context<A>> + Unpin,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        let control = Arc::new(Control::default());
        let id = self.add(
            parent,
            name.into(),
            Kind::Worker,
            intensity,
            Some(control.clone()),
        );
        let (tx, rx) = channel::channel(MAILBOX_CAPACITY);
        let tree = self.clone();
        arbiter.spawn_fn(move || {
            let mut ctx = Context::with_receiver(rx);
            let actor = factory(&mut ctx);
            actix::spawn(Runner {
                fut: ctx.into_future(actor),
                tree,
                who: Who::Worker(id.0, control),
                pause: None,
                restarts: 0,
                last_crash: None,
            });
        });
        Addr::new(tx)
    }

    /// Runs one member of `group`: a context future made by the caller
    /// (`Context::with_receiver(rx).into_future(actor)`), restarted in
    /// place when it panics. A member that stops is finished, not crashed:
    /// groups own actors that stop when their owner tells them to.
    pub fn run_member<A>(
        &self,
        group: NodeId,
        fut: ContextFut<A, Context<A>>,
    ) -> impl Future<Output = ()> + use<A>
    where
        A: Supervised + Actor<Context = Context<A>> + Unpin,
    {
        Runner {
            fut,
            tree: self.clone(),
            who: Who::Member(group.0),
            pause: None,
            restarts: 0,
            last_crash: None,
        }
    }

    /// From now on, actors that stop are stopping on purpose (shutdown).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Why the tree gave up, once it has.
    pub fn given_up(&self) -> Option<GiveUp> {
        self.lock().given_up.clone()
    }

    /// The tree as it is now.
    pub fn report(&self) -> NodeReport {
        self.lock().report(0)
    }

    /// Decides what follows an exit of `node` at `now`, and asks the workers
    /// it names to restart. The runner calls this; it is public so that the
    /// decisions can be tested and shown without actors.
    pub fn exited(&self, node: NodeId, message: String, now: Instant) -> Decision {
        let mut state = self.lock();
        let decision = state.exited(node.0, message, now);
        if let Decision::Restart { delay, also } = &decision {
            for worker in also {
                if let Some(control) = &state.nodes[worker.0].control {
                    control.request(*delay);
                }
            }
        }
        drop(state);
        if let Decision::GiveUp(gave_up) = &decision {
            (self.shared.on_give_up)(gave_up);
        }
        decision
    }
}

/// How the tree reaches a worker's runner: a restart request and its wait.
#[derive(Default)]
struct Control {
    /// The requested wait in milliseconds plus one; zero: none requested.
    requested: AtomicU64,
    waker: AtomicWaker,
}

impl Control {
    fn request(&self, delay: Duration) {
        self.requested
            .store(delay.as_millis() as u64 + 1, Ordering::SeqCst);
        self.waker.wake();
    }

    fn take(&self) -> Option<Duration> {
        match self.requested.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(Duration::from_millis(n - 1)),
        }
    }
}

enum Who {
    Worker(usize, Arc<Control>),
    Member(usize),
}

/// Polls an actor's context future, catching panics, and restarts it as
/// the tree decides.
struct Runner<A>
where
    A: Supervised + Actor<Context = Context<A>> + Unpin,
{
    fut: ContextFut<A, Context<A>>,
    tree: Tree,
    who: Who,
    /// The wait before a restart under way.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A member's own restarts in a row, for its backoff.
    restarts: u32,
    /// When the member last crashed.
    last_crash: Option<Instant>,
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

impl<A> Runner<A>
where
    A: Supervised + Actor<Context = Context<A>> + Unpin,
{
    fn name(&self) -> String {
        let state = self.tree.lock();
        match self.who {
            Who::Worker(id, _) | Who::Member(id) => state.path(id),
        }
    }

    /// What follows an exit: a restart after a wait, or the end.
    fn after_exit(&mut self, message: String) -> Option<Duration> {
        let now = Instant::now();
        match &self.who {
            Who::Worker(id, _) => match self.tree.exited(NodeId(*id), message.clone(), now) {
                Decision::Restart { delay, .. } => {
                    log::error!(
                        "actor {} crashed: {message}; restarting in {}ms",
                        self.name(),
                        delay.as_millis()
                    );
                    Some(delay)
                }
                Decision::GiveUp(_) => {
                    log::error!(
                        "actor {} crashed: {message}; restart intensity exceeded, leaving it down",
                        self.name()
                    );
                    None
                }
            },
            Who::Member(group) => {
                let decision = self.tree.exited(NodeId(*group), message.clone(), now);
                let (backoff, period) = {
                    let state = self.tree.lock();
                    (state.backoff, state.nodes[*group].intensity.period)
                };
                // Up for a whole period since its last crash: a fresh start.
                if self
                    .last_crash
                    .is_some_and(|at| now.duration_since(at) > period)
                {
                    self.restarts = 0;
                }
                self.last_crash = Some(now);
                self.restarts += 1;
                let delay = backoff.delay(self.restarts);
                // A member is never left down, even when its group's
                // crashes went past the root: its owner (a registry) still
                // routes to its address. The give-up is reported all the same.
                let verdict = match decision {
                    Decision::Restart { .. } => "",
                    Decision::GiveUp(_) => " (restart intensity exceeded)",
                };
                log::error!(
                    "a member of {} crashed: {message}; restarting it in {}ms{verdict}",
                    self.name(),
                    delay.as_millis()
                );
                Some(delay)
            }
        }
    }
}

impl<A> Future for Runner<A>
where
    A: Supervised + Actor<Context = Context<A>> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Who::Worker(_, control) = &this.who {
                control.waker.register(cx.waker());
                if let Some(delay) = control.take() {
                    log::warn!(
                        "restarting actor {} with its supervisor's subtree",
                        this.name()
                    );
                    this.pause = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
            if let Some(pause) = &mut this.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
                if !this.fut.restart() {
                    // Nobody holds its address: nothing could reach it.
                    return Poll::Ready(());
                }
                continue;
            }
            let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx)));
            let message = match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => {
                    if this.tree.stopping() || matches!(this.who, Who::Member(_)) {
                        return Poll::Ready(());
                    }
                    "stopped unexpectedly".to_string()
                }
                Err(payload) => panic_message(&*payload),
            };
            match this.after_exit(message) {
                Some(delay) => this.pause = Some(Box::pin(tokio::time::sleep(delay))),
                None => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn tree(max: u32) -> Tree {
        Tree::new(
            "app",
            Strategy::OneForOne,
            Intensity::new(max, Duration::from_secs(10)),
            |_| {},
        )
    }

    fn restart(decision: Decision) -> (Duration, Vec<NodeId>) {
        match decision {
            Decision::Restart { delay, also } => (delay, also),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    /// A worker node without an actor, for the decisions alone.
    fn worker(tree: &Tree, parent: NodeId, name: &str) -> NodeId {
        let intensity = tree.intensity_of(parent);
        tree.add(
            parent,
            name.into(),
            Kind::Worker,
            intensity,
            Some(Arc::default()),
        )
    }

    #[test]
    fn one_for_one_restarts_only_the_crashed_child() {
        let tree = tree(3);
        let a = worker(&tree, tree.root(), "a");
        let _b = worker(&tree, tree.root(), "b");
        let (delay, also) = restart(tree.exited(a, "boom".into(), Instant::now()));
        assert!(also.is_empty());
        assert_eq!(delay, Backoff::default().first);
        let report = tree.report();
        assert_eq!(report.children[0].restarts, 1);
        assert_eq!(report.children[1].restarts, 0);
        assert_eq!(
            report.children[0].last_crash.as_ref().unwrap().message,
            "boom"
        );
    }

    #[test]
    fn one_for_all_and_rest_for_one_name_their_siblings() {
        let tree = tree(10);
        let all = tree.supervisor(
            tree.root(),
            "all",
            Strategy::OneForAll,
            Intensity::new(5, Duration::from_secs(10)),
        );
        let (a, b, c) = (
            worker(&tree, all, "a"),
            worker(&tree, all, "b"),
            worker(&tree, all, "c"),
        );
        let (_, also) = restart(tree.exited(b, "x".into(), Instant::now()));
        assert_eq!(also, vec![a, c]);

        let rest = tree.supervisor(
            tree.root(),
            "rest",
            Strategy::RestForOne,
            Intensity::new(5, Duration::from_secs(10)),
        );
        let (d, e, f) = (
            worker(&tree, rest, "d"),
            worker(&tree, rest, "e"),
            worker(&tree, rest, "f"),
        );
        let (_, also) = restart(tree.exited(e, "x".into(), Instant::now()));
        assert_eq!(also, vec![f]);
        let (_, also) = restart(tree.exited(f, "x".into(), Instant::now()));
        assert!(also.is_empty());
        let _ = d;
    }

    #[test]
    fn past_its_intensity_a_child_escalates_and_its_supervisor_restarts_the_subtree() {
        let tree = tree(1);
        let sub = tree.supervisor(
            tree.root(),
            "sub",
            Strategy::OneForOne,
            Intensity::new(1, Duration::from_secs(10)),
        );
        let (a, b) = (worker(&tree, sub, "a"), worker(&tree, sub, "b"));
        let now = Instant::now();
        // One restart is within a's intensity (sub's: 1 in 10 s).
        assert!(restart(tree.exited(a, "1".into(), now)).1.is_empty());
        // The second escalates: sub restarts its subtree, b with a, and its
        // children's history starts afresh.
        let (_, also) = restart(tree.exited(a, "2".into(), now));
        assert_eq!(also, vec![b]);
        assert_eq!(tree.report().children[0].restarts, 1);
        assert!(restart(tree.exited(a, "3".into(), now)).1.is_empty());
        // Past sub's intensity too: the root absorbs it (its first) and
        // restarts everything under it.
        let (_, also) = restart(tree.exited(a, "4".into(), now));
        assert_eq!(also, vec![b]);
        assert_eq!(tree.report().restarts, 1);
        assert!(restart(tree.exited(a, "5".into(), now)).1.is_empty());
        assert!(restart(tree.exited(a, "6".into(), now)).1 == vec![b]);
        assert!(restart(tree.exited(a, "7".into(), now)).1.is_empty());
        // Then the root itself is past its intensity: the tree gives up.
        match tree.exited(a, "8".into(), now) {
            Decision::GiveUp(g) => {
                assert_eq!(g.actor, "sub/a");
                assert_eq!(g.reason, "8");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
        assert_eq!(tree.given_up().map(|g| g.actor), Some("sub/a".into()));
    }

    #[test]
    fn restarts_older_than_the_period_are_forgotten() {
        let tree = Tree::new(
            "app",
            Strategy::OneForOne,
            Intensity::new(0, Duration::from_secs(1)),
            |_| {},
        );
        let sub = tree.supervisor(
            tree.root(),
            "sub",
            Strategy::OneForOne,
            Intensity::new(1, Duration::from_secs(1)),
        );
        let a = worker(&tree, sub, "a");
        let t0 = Instant::now();
        restart(tree.exited(a, "1".into(), t0));
        restart(tree.exited(a, "2".into(), t0 + Duration::from_secs(2)));
        restart(tree.exited(a, "3".into(), t0 + Duration::from_secs(4)));
        assert!(tree.given_up().is_none());
        assert_eq!(tree.report().children[0].children[0].restarts, 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let delays: Vec<u128> = (1..=5).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        assert_eq!(backoff.delay(1000), backoff.max);
    }

    #[test]
    fn paths_and_walks_name_supervisors() {
        let tree = tree(1);
        let sub = tree.supervisor(
            tree.root(),
            "outbox",
            Strategy::OneForOne,
            Intensity::new(1, Duration::from_secs(1)),
        );
        worker(&tree, sub, "shard 0");
        let report = tree.report();
        let walked: Vec<(String, Option<String>)> = report
            .walk()
            .into_iter()
            .map(|(n, p)| (n.name.clone(), p.map(str::to_string)))
            .collect();
        assert_eq!(
            walked,
            vec![
                ("app".into(), None),
                ("outbox".into(), Some("app".into())),
                ("shard 0".into(), Some("outbox".into())),
            ]
        );
        assert_eq!(tree.lock().path(2), "outbox/shard 0");
    }

    // The runner, with real actors.

    struct Flaky {
        handled: u32,
        started: Arc<AtomicUsize>,
    }

    impl Actor for Flaky {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            self.started.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Supervised for Flaky {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.handled = 0;
        }
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Work(bool);

    impl Handler<Work> for Flaky {
        type Result = u32;
        fn handle(&mut self, msg: Work, _: &mut Context<Self>) -> u32 {
            self.handled += 1;
            if msg.0 {
                panic!("asked to panic");
            }
            self.handled
        }
    }

    fn flaky(
        started: &Arc<AtomicUsize>,
    ) -> impl FnOnce(&mut Context<Flaky>) -> Flaky + Send + use<> {
        let started = started.clone();
        move |_| Flaky {
            handled: 0,
            started,
        }
    }

    #[actix::test]
    async fn a_panicking_actor_keeps_its_address_and_its_queued_messages() {
        let tree = tree(5).with_backoff(Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(5),
        });
        let started = Arc::new(AtomicUsize::new(0));
        let addr = tree.start(tree.root(), "flaky", &Arbiter::current(), flaky(&started));
        assert_eq!(addr.send(Work(false)).await.ok(), Some(1));
        // Queued behind the panic: handled after the restart, by the reset actor.
        let (crashed, behind) = tokio::join!(addr.send(Work(true)), addr.send(Work(false)));
        assert!(crashed.is_err());
        assert_eq!(behind.ok(), Some(1));
        assert_eq!(started.load(Ordering::SeqCst), 2);
        let report = tree.report();
        assert_eq!(report.children[0].restarts, 1);
        assert_eq!(
            report.children[0]
                .last_crash
                .as_ref()
                .map(|c| c.message.as_str()),
            Some("asked to panic")
        );
    }

    #[actix::test]
    async fn a_sibling_restarts_when_the_strategy_says_so() {
        let tree = tree(5).with_backoff(Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(5),
        });
        let group = tree.supervisor(
            tree.root(),
            "pair",
            Strategy::OneForAll,
            Intensity::new(5, Duration::from_secs(10)),
        );
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = tree.start(group, "a", &Arbiter::current(), flaky(&first));
        let b = tree.start(group, "b", &Arbiter::current(), flaky(&second));
        assert_eq!(b.send(Work(false)).await.ok(), Some(1));
        assert!(a.send(Work(true)).await.is_err());
        // b was restarted with a: its count starts again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while second.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "b was not restarted");
            tokio::task::yield_now().await;
        }
        assert_eq!(b.send(Work(false)).await.ok(), Some(1));
    }

    #[actix::test]
    async fn past_the_roots_intensity_the_tree_gives_up_once() {
        let gave_up = Arc::new(Mutex::new(Vec::new()));
        let seen = gave_up.clone();
        let tree = Tree::new(
            "app",
            Strategy::OneForOne,
            Intensity::new(0, Duration::from_secs(10)),
            move |g| seen.lock().unwrap().push(g.clone()),
        )
        .with_backoff(Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
        });
        let started = Arc::new(AtomicUsize::new(0));
        let once = Intensity::new(1, Duration::from_secs(10));
        let root = tree.root();
        let addr = tree.start_with(root, "flaky", once, &Arbiter::current(), flaky(&started));
        assert!(addr.send(Work(true)).await.is_err());
        assert!(addr.send(Work(true)).await.is_err());
        // Left down: the address no longer reaches anything.
        assert!(addr.send(Work(false)).await.is_err());
        let gave_up = gave_up.lock().unwrap().clone();
        assert_eq!(gave_up.len(), 1);
        assert_eq!(gave_up[0].actor, "flaky");
        assert!(tree.report().children[0].given_up);
    }

    #[actix::test]
    async fn an_unexpected_stop_is_a_crash_and_a_stop_at_shutdown_is_not() {
        struct Quitter;
        impl Actor for Quitter {
            type Context = Context<Self>;
        }
        impl Supervised for Quitter {}
        #[derive(Message)]
        #[rtype(result = "()")]
        struct Quit(bool);
        impl Handler<Quit> for Quitter {
            type Result = ();
            fn handle(&mut self, msg: Quit, ctx: &mut Context<Self>) {
                if msg.0 {
                    ctx.stop();
                }
            }
        }
        let tree = tree(5).with_backoff(Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
        });
        let addr = tree.start(tree.root(), "quitter", &Arbiter::current(), |_| Quitter);
        addr.send(Quit(true)).await.unwrap();
        assert!(
            addr.send(Quit(false)).await.is_ok(),
            "restarted after stopping"
        );
        assert_eq!(tree.report().children[0].restarts, 1);
        tree.stop();
        addr.send(Quit(true)).await.unwrap();
        // Not restarted: it ends, and its mailbox with it.
        while addr.connected() {
            tokio::task::yield_now().await;
        }
        assert_eq!(tree.report().children[0].restarts, 1);
    }

    #[actix::test]
    async fn a_group_member_restarts_alone_and_counts_on_the_group() {
        let tree = tree(5).with_backoff(Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
        });
        let group = tree.group(
            tree.root(),
            "sessions",
            Intensity::new(100, Duration::from_secs(1)),
        );
        let started = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel::channel(16);
        let ctx = Context::with_receiver(rx);
        let actor = flaky(&started)(&mut Context::new());
        actix::spawn(tree.run_member(group, ctx.into_future(actor)));
        let addr: Addr<Flaky> = Addr::new(tx);
        assert!(addr.send(Work(true)).await.is_err());
        assert_eq!(addr.send(Work(false)).await.ok(), Some(1));
        assert_eq!(tree.report().children[0].restarts, 1);
        assert_eq!(tree.report().children[0].kind, "workers");
    }
}

//! Health probes: one question every actor answers the same way.
//!
//! An operator looking at `/actors` wants the same figures for every part of
//! the system: is it well, how full is its mailbox, has it been restarted,
//! when did it last do something. So every actor handles [`Probe`] and answers
//! with a [`ProbeReport`]; the health endpoint asks them all at once with
//! [`probe_all`] and serialises the answers.
//!
//! actix does not expose how many messages wait in a mailbox, so the depth is
//! measured here with a shared counter, a [`Mailbox`]: senders that go through
//! a [`GaugedAddr`] increment it, and the actor decrements it when it handles
//! the message ([`Vitals::handled`]). A counter costs one atomic add per
//! message, which is cheap enough to leave on in production.
//!
//! An actor that never answers is itself the most important finding, so
//! [`probe_all`] gives each actor a deadline and reports a silent one as
//! unhealthy instead of waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

/// Asks an actor how it is doing.
#[derive(Message, Debug, Clone, Copy, Default)]
#[rtype(result = "ProbeReport")]
pub struct Probe;

/// How well an actor is doing, with the reason when it is not well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Health {
    /// Working as intended.
    Healthy,
    /// Working, but something needs a look (a full queue, a failing job).
    Degraded(String),
    /// Not working, or not answering.
    Unhealthy(String),
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// The worse of two states, keeping the reason of the worse one.
    pub fn worst(self, other: Health) -> Health {
        fn rank(h: &Health) -> u8 {
            match h {
                Health::Healthy => 0,
                Health::Degraded(_) => 1,
                Health::Unhealthy(_) => 2,
            }
        }
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Mailbox figures in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MailboxFigures {
    /// Messages sent and not yet handled.
    pub depth: usize,
    /// How many may wait before senders are told the mailbox is full.
    pub capacity: usize,
}

/// What an actor says about itself when probed.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The actor's name in the supervision tree.
    pub name: String,
    /// How it is doing.
    pub health: Health,
    /// Its mailbox, when it measures it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<MailboxFigures>,
    /// How many times it has been restarted.
    pub restarts: u64,
    /// How many messages it has handled.
    pub handled: u64,
    /// Milliseconds since it last handled something; absent if it never has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Anything else worth showing, specific to the actor.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// Reports of the actors it supervises.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ProbeReport>,
}

impl ProbeReport {
    /// A report with a name and a health state and every figure at zero.
    pub fn new(name: impl Into<String>, health: Health) -> Self {
        ProbeReport {
            name: name.into(),
            health,
            mailbox: None,
            restarts: 0,
            handled: 0,
            idle_ms: None,
            details: Map::new(),
            children: Vec::new(),
        }
    }

    /// Adds a detail. A value that cannot be serialised is recorded as the
    /// serialisation error, so a report is never lost to a bad detail.
    pub fn detail(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("unserialisable: {e}")));
        self.details.insert(key.into(), value);
        self
    }

    /// Adds a supervised actor's report.
    pub fn child(mut self, report: ProbeReport) -> Self {
        self.children.push(report);
        self
    }
}

/// A shared gauge of how many messages wait in an actor's mailbox.
///
/// Cloning shares the gauge. Senders increment it through a [`GaugedAddr`];
/// the actor decrements it through [`Vitals::handled`].
#[derive(Debug, Clone)]
pub struct Mailbox {
    inner: Arc<MailboxInner>,
}

#[derive(Debug)]
struct MailboxInner {
    depth: AtomicUsize,
    capacity: usize,
}

impl Mailbox {
    /// A gauge for a mailbox that may hold `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            inner: Arc::new(MailboxInner {
                depth: AtomicUsize::new(0),
                capacity,
            }),
        }
    }

    /// Messages sent and not yet handled.
    pub fn depth(&self) -> usize {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// The capacity given at construction.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Current figures, for a report.
    pub fn figures(&self) -> MailboxFigures {
        MailboxFigures {
            depth: self.depth(),
            capacity: self.capacity(),
        }
    }

    /// Counts one more message if there is room; false when full.
    fn reserve(&self) -> bool {
        let capacity = self.inner.capacity;
        self.inner
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |d| {
                (d < capacity).then_some(d + 1)
            })
            .is_ok()
    }

    fn enqueue(&self) {
        self.inner.depth.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts one message as taken out. Saturates at zero, so a message that
    /// bypassed the gauge makes the figure read low for a moment rather than
    /// wrap around.
    fn dequeue(&self) {
        let _ = self
            .inner
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |d| d.checked_sub(1));
    }
}

/// An actor's address paired with its [`Mailbox`] gauge: every send counts.
///
/// The receiving actor must call [`Vitals::handled`] once for each message
/// received this way.
pub struct GaugedAddr<A: Actor> {
    addr: Addr<A>,
    mailbox: Mailbox,
}

impl<A: Actor> Clone for GaugedAddr<A> {
    fn clone(&self) -> Self {
        GaugedAddr {
            addr: self.addr.clone(),
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<A: Actor> GaugedAddr<A> {
    /// Pairs an address with the gauge its actor decrements.
    pub fn new(addr: Addr<A>, mailbox: Mailbox) -> Self {
        GaugedAddr { addr, mailbox }
    }

    /// The plain address (sends through it are not counted).
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// The gauge.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Sends if the gauge shows room, otherwise hands the message back in
    /// [`SendError::Full`] so the caller can slow down.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        if !self.addr.connected() {
            return Err(SendError::Closed(msg));
        }
        if !self.mailbox.reserve() {
            return Err(SendError::Full(msg));
        }
        self.addr.do_send(msg);
        Ok(())
    }

    /// Sends regardless of the gauge (it still counts).
    pub fn do_send<M>(&self, msg: M)
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.mailbox.enqueue();
        self.addr.do_send(msg);
    }

    /// Sends and waits for the answer (counts regardless of the gauge).
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<A, M>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.mailbox.enqueue();
        self.addr.send(msg)
    }
}

/// The figures an actor keeps about itself to answer [`Probe`]: embed one in
/// the actor's state.
///
/// Not shared between threads: it lives inside the actor, which handles one
/// message at a time. Only the mailbox gauge is shared, with senders.
#[derive(Debug)]
pub struct Vitals {
    mailbox: Mailbox,
    handled: u64,
    restarts: u64,
    last_activity: Option<Instant>,
}

impl Vitals {
    /// Vitals with a fresh mailbox gauge of the given capacity.
    pub fn new(mailbox_capacity: usize) -> Self {
        Vitals {
            mailbox: Mailbox::new(mailbox_capacity),
            handled: 0,
            restarts: 0,
            last_activity: None,
        }
    }

    /// The gauge, to build [`GaugedAddr`]s from.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Records that a message came out of the mailbox and was handled.
    pub fn handled(&mut self) {
        self.mailbox.dequeue();
        self.active();
    }

    /// Records activity that did not come through the gauged mailbox (a
    /// timer, a message from a plain address).
    pub fn active(&mut self) {
        self.handled += 1;
        self.last_activity = Some(Instant::now());
    }

    /// Records a restart; call it from `Supervised::restarting`.
    pub fn restarted(&mut self) {
        self.restarts += 1;
    }

    /// How many restarts were recorded.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// A report carrying these figures.
    pub fn report(&self, name: impl Into<String>, health: Health) -> ProbeReport {
        let mut report = ProbeReport::new(name, health);
        report.mailbox = Some(self.mailbox.figures());
        report.restarts = self.restarts;
        report.handled = self.handled;
        report.idle_ms = self.last_activity.map(|t| millis(t.elapsed()));
        report
    }
}

/// Probes every target at once and waits at most `deadline` for each answer.
///
/// The reports come back in the order of `targets`. A target that does not
/// answer in time, or whose actor has stopped, gets an [`Health::Unhealthy`]
/// report under the name it was given here.
pub async fn probe_all<I, S>(targets: I, deadline: Duration) -> Vec<ProbeReport>
where
    I: IntoIterator<Item = (S, Recipient<Probe>)>,
    S: Into<String>,
{
    let probes = targets.into_iter().map(|(name, recipient)| {
        let name = name.into();
        async move {
            match tokio::time::timeout(deadline, recipient.send(Probe)).await {
                Ok(Ok(report)) => report,
                Ok(Err(MailboxError::Closed)) => {
                    ProbeReport::new(name, Health::Unhealthy("stopped".to_owned()))
                }
                Ok(Err(MailboxError::Timeout)) | Err(_) => ProbeReport::new(
                    name,
                    Health::Unhealthy(format!("no answer within {} ms", millis(deadline))),
                ),
            }
        }
    });
    join_all(probes).await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers probes, and can be told to stop answering for a while.
    struct Worker {
        vitals: Vitals,
    }

    impl Actor for Worker {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Work;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Hang(tokio::sync::oneshot::Receiver<()>);

    impl Handler<Work> for Worker {
        type Result = ();
        fn handle(&mut self, _: Work, _: &mut Context<Self>) {
            self.vitals.handled();
        }
    }

    impl Handler<Hang> for Worker {
        type Result = ();
        fn handle(&mut self, msg: Hang, ctx: &mut Context<Self>) {
            // Blocks the mailbox until released, as a stuck actor would.
            ctx.wait(actix::fut::wrap_future(async move {
                let _ = msg.0.await;
            }));
        }
    }

    impl Handler<Probe> for Worker {
        type Result = MessageResult<Probe>;
        fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.vitals.report("worker", Health::Healthy))
        }
    }

    #[actix_rt::test]
    async fn reports_mailbox_depth_and_handled_count() {
        let vitals = Vitals::new(2);
        let mailbox = vitals.mailbox().clone();
        let addr = GaugedAddr::new(Worker { vitals }.start(), mailbox.clone());
        let (release, hang) = tokio::sync::oneshot::channel();
        addr.addr().do_send(Hang(hang));
        assert!(addr.try_send(Work).is_ok());
        assert!(addr.try_send(Work).is_ok());
        assert!(matches!(addr.try_send(Work), Err(SendError::Full(_))));
        assert_eq!(mailbox.depth(), 2);
        let _ = release.send(());

        let report = addr.addr().send(Probe).await.expect("worker answers");
        assert_eq!(report.handled, 2);
        assert_eq!(
            report.mailbox,
            Some(MailboxFigures {
                depth: 0,
                capacity: 2
            })
        );
        assert!(report.idle_ms.is_some());
    }

    #[actix_rt::test]
    async fn silent_actor_is_reported_unhealthy_after_the_deadline() {
        tokio::time::pause();
        let stuck = Worker {
            vitals: Vitals::new(4),
        }
        .start();
        let (_release, hang) = tokio::sync::oneshot::channel();
        stuck.do_send(Hang(hang));
        let fine = Worker {
            vitals: Vitals::new(4),
        }
        .start();

        let reports = probe_all(
            [
                ("stuck", stuck.recipient::<Probe>()),
                ("fine", fine.recipient::<Probe>()),
            ],
            Duration::from_millis(250),
        )
        .await;

        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].name, "stuck");
        assert_eq!(
            reports[0].health,
            Health::Unhealthy("no answer within 250 ms".to_owned())
        );
        assert_eq!(reports[1].name, "worker");
        assert!(reports[1].health.is_healthy());
    }

    #[test]
    fn report_serialises_health_with_reason_and_skips_empty_parts() {
        let report = ProbeReport::new("x", Health::Degraded("queue full".to_owned()))
            .detail("jobs", 3)
            .child(ProbeReport::new("y", Health::Healthy));
        let json = serde_json::to_value(&report).expect("serialisable");
        assert_eq!(json["health"]["state"], "degraded");
        assert_eq!(json["health"]["reason"], "queue full");
        assert_eq!(json["details"]["jobs"], 3);
        assert_eq!(json["children"][0]["health"]["state"], "healthy");
        assert!(json["children"][0].get("details").is_none());
        assert!(json.get("mailbox").is_none());
    }

    #[test]
    fn worst_keeps_the_worse_reason() {
        let h = Health::Healthy
            .worst(Health::Degraded("a".into()))
            .worst(Health::Unhealthy("b".into()))
            .worst(Health::Degraded("c".into()));
        assert_eq!(h, Health::Unhealthy("b".into()));
    }
}

//! Generic actor mechanisms for actix programs.
//!
//! The bot's parts are policy (what a chat does, what a PDF job renders);
//! the machinery they run on is here, and knows nothing of Telegram:
//!
//! - [`registry`]: one child actor per key, created on demand, retired after
//!   an idle timeout or under a hard cap, always persisting before it stops,
//!   with bounded mailboxes and children spread over several arbiters;
//! - [`pool`]: a supervised pool of worker threads for CPU-bound jobs, with a
//!   bounded priority queue, retries and restarts after panics;
//! - [`probe`]: the [`Probe`](probe::Probe) message every actor answers, the
//!   figures to answer it with, and a way to probe many actors under a deadline;
//! - [`scheduler`]: an actor running named periodic jobs without overlap;
//! - [`breaker`]: a circuit breaker for a dependency that keeps failing;
//! - [`supervisor`]: a supervision tree that restarts actors in place when
//!   they panic, with OTP's strategies and restart intensity.
//!
//! # Keyed registry
//!
//! ```no_run
//! use std::time::Duration;
//! use actix::prelude::*;
//! use actorbot_actors::registry::{KeyedRegistry, Persist, RegistryConfig, Retire};
//!
//! struct Chat { id: i64, messages: u32 }
//!
//! impl Actor for Chat {
//!     type Context = Context<Self>;
//!     // Restore state here with `ctx.wait(...)`: messages wait for it, and
//!     // the registry never starts a chat before its predecessor has persisted.
//! }
//!
//! // A panic restarts it in place when the registry is supervised.
//! impl Supervised for Chat {}
//!
//! #[derive(Message)]
//! #[rtype(result = "()")]
//! struct Deliver(String);
//!
//! impl Handler<Deliver> for Chat {
//!     type Result = ();
//!     fn handle(&mut self, _: Deliver, _: &mut Context<Self>) {
//!         self.messages += 1;
//!     }
//! }
//!
//! impl Handler<Retire> for Chat {
//!     type Result = Persist;
//!     fn handle(&mut self, _: Retire, _: &mut Context<Self>) -> Persist {
//!         let (id, messages) = (self.id, self.messages);
//!         Persist::after(async move {
//!             // Save (id, messages) to the database here.
//!             let _ = (id, messages);
//!         })
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() {
//!     let arbiters = vec![Arbiter::new().handle(), Arbiter::new().handle()];
//!     let config = RegistryConfig::new(Duration::from_secs(600), 10_000);
//!     let chats = KeyedRegistry::new(config, arbiters, |id: &i64| Chat { id: *id, messages: 0 });
//!
//!     // Waits while chat 42's mailbox is full: the caller slows down.
//!     if chats.route(42, Deliver("hello".into())).await.is_err() {
//!         return; // shut down
//!     }
//!     println!("{:?}", chats.stats());
//!     chats.shutdown().await; // every chat persists, then stops
//! }
//! ```
//!
//! # Worker pool
//!
//! ```
//! use actorbot_actors::pool::{Failure, JobError, PoolConfig, SubmitError, WorkerPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let pool = WorkerPool::new(PoolConfig {
//!     name: "pdf".into(),
//!     workers: 2,
//!     queue_capacity: 64,
//!     max_attempts: 3,
//! })?;
//! let render = || -> Result<Vec<u8>, Failure<String>> { Ok(b"%PDF-1.7".to_vec()) };
//! match pool.submit(5, render) {
//!     Ok(job) => {
//!         if let Some(place) = pool.position(job.id()) {
//!             println!("you're number {}, about {:?}", place.ahead + 1, place.estimated_wait);
//!         }
//!         match job.await {
//!             Ok(pdf) => assert!(pdf.starts_with(b"%PDF")),
//!             Err(JobError::Exhausted { error, .. }) => eprintln!("gave up: {error}"),
//!             Err(other) => eprintln!("{other}"),
//!         }
//!     }
//!     Err(SubmitError::Busy { .. }) => println!("busy, try again in a minute"),
//!     Err(SubmitError::Closed) => {}
//! }
//! println!("{:?}", pool.stats());
//! # Ok(())
//! # }
//! ```
//!
//! # Probes
//!
//! ```
//! use std::time::Duration;
//! use actix::prelude::*;
//! use actorbot_actors::probe::{probe_all, GaugedAddr, Health, Probe, Vitals};
//!
//! struct Outbox { vitals: Vitals }
//!
//! impl Actor for Outbox {
//!     type Context = Context<Self>;
//! }
//!
//! #[derive(Message)]
//! #[rtype(result = "()")]
//! struct Send(String);
//!
//! impl Handler<Send> for Outbox {
//!     type Result = ();
//!     fn handle(&mut self, _: Send, _: &mut Context<Self>) {
//!         self.vitals.handled(); // one per message sent through the GaugedAddr
//!     }
//! }
//!
//! impl Handler<Probe> for Outbox {
//!     type Result = MessageResult<Probe>;
//!     fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
//!         MessageResult(self.vitals.report("outbox", Health::Healthy).detail("sent_today", 3))
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() {
//!     let vitals = Vitals::new(100);
//!     let gauge = vitals.mailbox().clone();
//!     let outbox = GaugedAddr::new(Outbox { vitals }.start(), gauge);
//!     let _ = outbox.try_send(Send("hi".into())); // Err(Full) when 100 wait
//!
//!     let targets = [("outbox", outbox.addr().clone().recipient::<Probe>())];
//!     let reports = probe_all(targets, Duration::from_millis(500)).await;
//!     println!("{}", serde_json::to_string(&reports).unwrap_or_default());
//! }
//! ```
//!
//! # Scheduler
//!
//! ```
//! use std::time::Duration;
//! use actix::prelude::*;
//! use actorbot_actors::scheduler::{Outcome, RunNow, Schedule, Scheduler};
//!
//! #[actix::main]
//! async fn main() {
//!     let scheduler = Scheduler::new().start();
//!     let cleanup = || async {
//!         // Delete expired rows here.
//!         Ok::<_, std::io::Error>(())
//!     };
//!     let every_hour = Schedule::every("cleanup", Duration::from_secs(3600), cleanup);
//!     let _ = scheduler.send(every_hour.first_after(Duration::from_secs(60))).await;
//!
//!     // On demand, e.g. from an admin command; never overlaps a running one.
//!     let outcome = scheduler.send(RunNow("cleanup".into())).await;
//!     assert!(matches!(outcome, Ok(Ok(Outcome::Succeeded))));
//! }
//! ```

#![warn(missing_docs)]

pub mod breaker;
pub mod fault;
pub mod pool;
pub mod probe;
pub mod process;
pub mod registry;
pub mod scheduler;
pub mod supervisor;

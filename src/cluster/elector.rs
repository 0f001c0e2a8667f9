//! The elector: the actor that keeps this instance's side of the leader
//! lease. A standby asks for the lease four times per TTL, the leader
//! renews it three times per TTL, each call under a deadline of a third
//! of the TTL; the decisions are [`super::Lease`]'s. The role it reaches
//! is published on a watch channel, which the daemon follows: it starts
//! intake on `Leader` and stops at once on `Deposed`.
//!
//! A restart keeps its state (the lease it holds and the token in the
//! fence), so a crash in here does not cost the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::probe::{Health, Probe, Vitals};
use serde::Serialize;
use tokio::sync::watch;

use super::{Call, Effect, Lease, Outcome, Role};
use crate::metrics;
use crate::storage::{ClaimCount, Fence, InstanceRow, LeaseRow, Storage, now_millis};

pub struct Elector {
    lease: Lease,
    storage: Storage,
    fence: Arc<Fence>,
    role: watch::Sender<Role>,
    /// A lease call is under way.
    calling: bool,
    next_call: Instant,
    /// Unix ms since when this instance has had its role.
    since: i64,
    last_error: Option<String>,
    vitals: Vitals,
}

impl Elector {
    /// An elector for `fence`'s holder, and the channel its role is told on.
    pub fn new(
        storage: Storage,
        fence: Arc<Fence>,
        ttl: Duration,
    ) -> (Elector, watch::Receiver<Role>) {
        let (role, roles) = watch::channel(Role::Standby);
        metrics::CLUSTER_ROLE.set(0);
        let elector = Elector {
            lease: Lease::new(ttl),
            storage,
            fence,
            role,
            calling: false,
            next_call: Instant::now(),
            since: now_millis(),
            last_error: None,
            vitals: Vitals::new(0),
        };
        (elector, roles)
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        // By time alone, even while a renewal hangs.
        let effect = self.lease.check(now);
        self.carry_out(effect);
        if self.calling || now < self.next_call {
            return;
        }
        let Some(call) = self.lease.next_call() else {
            return;
        };
        self.calling = true;
        self.next_call = now + self.lease.period();
        let storage = self.storage.clone();
        let holder = self.fence.holder().to_string();
        let ttl = self.lease.ttl();
        let ttl_ms = ttl.as_millis() as i64;
        let sent = Instant::now();
        let asked = async move {
            let answer =
                async {
                    match call {
                        Call::Acquire => storage
                            .lease_acquire(&holder, ttl_ms)
                            .await
                            .map(|token| token.map_or(Outcome::Held, Outcome::Acquired)),
                        Call::Renew { token } => storage
                            .lease_renew(&holder, token, ttl_ms)
                            .await
                            .map(|renewed| {
                                if renewed {
                                    Outcome::Renewed
                                } else {
                                    Outcome::Lost
                                }
                            }),
                    }
                };
            match tokio::time::timeout(ttl / 3, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(err)) => Outcome::Failed(err.to_string()),
                Err(_) => Outcome::Failed(format!(
                    "no answer from the database within {:.1} s",
                    (ttl / 3).as_secs_f64()
                )),
            }
        };
        ctx.spawn(asked.into_actor(self).map(move |outcome, this, ctx| {
            this.calling = false;
            this.vitals.active();
            match &outcome {
                Outcome::Failed(why) => {
                    if this.last_error.as_deref() != Some(why) {
                        log::warn!("cluster: the lease call failed: {why}");
                    }
                    this.last_error = Some(why.clone());
                }
                _ => this.last_error = None,
            }
            let effect = this.lease.step(sent, outcome, Instant::now());
            this.carry_out(effect);
            this.heartbeat(ctx);
        }));
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Nothing => return,
            Effect::Lead { token, failover } => {
                self.fence.set(token);
                metrics::CLUSTER_ROLE.set(1);
                if failover {
                    metrics::CLUSTER_FAILOVERS.inc();
                }
                log::info!(
                    "cluster: {} leads with fencing token {token}",
                    self.fence.holder()
                );
            }
            Effect::Depose(why) => {
                self.fence.set(0);
                metrics::CLUSTER_ROLE.set(0);
                log::error!("cluster: {why}; this instance stops acting");
            }
        }
        self.since = now_millis();
        self.role.send_replace(self.lease.role());
    }

    fn heartbeat(&self, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let (id, role, since) = (
            self.fence.holder().to_string(),
            self.lease.role().name(),
            self.since,
        );
        ctx.spawn(
            async move {
                if let Err(err) = storage.instance_heartbeat(&id, role, since).await {
                    log::debug!("cluster: heartbeat not recorded: {err}");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Elector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = (self.lease.ttl() / 10).max(Duration::from_millis(20));
        self.tick(ctx);
        ctx.run_interval(every, |this, ctx| this.tick(ctx));
    }
}

impl Supervised for Elector {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.calling = false;
        self.vitals.restarted();
    }
}

/// Gives the lease up (a clean shutdown, after the last journal write):
/// a standby takes it at its next look. Answers whether it was held.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Release;

impl Handler<Release> for Elector {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, _: Release, _: &mut Self::Context) -> Self::Result {
        let held = self.lease.release();
        self.fence.set(0);
        metrics::CLUSTER_ROLE.set(0);
        self.since = now_millis();
        self.role.send_replace(Role::Released);
        let storage = self.storage.clone();
        let holder = self.fence.holder().to_string();
        Box::pin(
            async move {
                let Some(token) = held else { return false };
                match storage.lease_release(&holder, token).await {
                    Ok(released) => {
                        log::info!("cluster: released the lease (token {token})");
                        released
                    }
                    Err(err) => {
                        log::warn!(
                            "cluster: could not release the lease, it ends by itself: {err}"
                        );
                        false
                    }
                }
            }
            .into_actor(self),
        )
    }
}

/// The cluster as this instance sees it, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub instance: String,
    pub role: &'static str,
    /// Unix ms since when it has had this role.
    pub since: i64,
    /// The fencing token it holds; 0 for none.
    pub token: i64,
    pub lease_ttl_s: f64,
    /// The lease as the database has it, when it answers.
    pub lease: Option<LeaseRow>,
    /// Instances heard from within three TTLs (`actorbot worker`s too,
    /// with the role `worker`).
    pub instances: Vec<InstanceRow>,
    /// Who runs document jobs now, and how many each.
    pub job_claims: Vec<ClaimCount>,
    pub error: Option<String>,
}

#[derive(Message)]
#[rtype(result = "ClusterView")]
pub struct GetCluster;

impl Handler<GetCluster> for Elector {
    type Result = ResponseFuture<ClusterView>;

    fn handle(&mut self, _: GetCluster, _: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let ttl = self.lease.ttl();
        let mut view = ClusterView {
            instance: self.fence.holder().to_string(),
            role: self.lease.role().name(),
            since: self.since,
            token: self.fence.token(),
            lease_ttl_s: ttl.as_secs_f64(),
            lease: None,
            instances: Vec::new(),
            job_claims: Vec::new(),
            error: self.last_error.clone(),
        };
        Box::pin(async move {
            let (lease, instances, claims) = tokio::join!(
                storage.lease_read(),
                storage.instances_recent(3 * ttl.as_millis() as i64),
                storage.job_claims()
            );
            match (lease, instances, claims) {
                (Ok(lease), Ok(instances), Ok(claims)) => {
                    view.lease = lease;
                    view.instances = instances;
                    view.job_claims = claims;
                }
                (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                    view.error = Some(err.to_string())
                }
            }
            view
        })
    }
}

impl Handler<Probe> for Elector {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let role = self.lease.role();
        let health = match (role, &self.last_error) {
            (Role::Deposed, _) => Health::Unhealthy("lost the leader lease".into()),
            (_, Some(err)) => Health::Degraded(format!("the lease call failed: {err}")),
            _ => Health::Healthy,
        };
        let mut report = self.vitals.report("cluster", health);
        report.mailbox = None;
        MessageResult(
            report
                .detail("instance", self.fence.holder())
                .detail("role", role.name())
                .detail("token", self.fence.token()),
        )
    }
}

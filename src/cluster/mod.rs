//! Several instances, one bot (`CLUSTER=true`): the instances share one
//! PostgreSQL, and only the holder of the leader lease polls getUpdates,
//! routes and sends. The others serve `/health` as standbys and try for the
//! lease every quarter of its TTL; when the leader dies its lease ends
//! within `CLUSTER_LEASE_TTL`, a standby takes it, replays the inbox rows
//! the old leader had taken and not finished, and carries on.
//!
//! Safety rests on the fencing token, not on timing: the lease row's token
//! goes up at every change of holder, and every journal write checks, in
//! its own transaction, that the token it carries is still the lease's
//! ([`crate::storage::Fence`]). A leader cut off from the database can
//! therefore neither confirm an offset (intake confirms a batch only after
//! journaling it) nor mark an update done once another instance leads.
//! Timing only makes it quick: a leader that has not renewed for a TTL
//! counts itself deposed even if it cannot reach the database to learn so,
//! and a deposed leader exits (with [`LeaseLost::EXIT_STATUS`]) for its
//! service manager to start it again, as a standby.
//!
//! The decision is [`Lease`], plain code over the outcomes of the database
//! calls and the time; [`elector::Elector`] is the actor that makes the
//! calls and carries the decisions out.

pub mod elector;
pub mod relay;

use std::time::{Duration, Instant};

/// What this instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lease.
    Standby,
    /// Holding the lease with this fencing token.
    Leader { token: i64 },
    /// Lost the lease it held: it must stop acting at once.
    Deposed,
    /// Gave the lease up on purpose (a clean shutdown).
    Released,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader { .. } => "leader",
            Role::Deposed => "deposed",
            Role::Released => "released",
        }
    }
}

/// What a database call about the lease answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lease was free or had ended, and is ours with this token.
    Acquired(i64),
    /// Another instance holds it.
    Held,
    /// Our lease is extended.
    Renewed,
    /// Our lease had ended or changed hands: not renewed.
    Lost,
    /// The call failed (database unreachable, timed out).
    Failed(String),
}

/// The call to make next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Acquire,
    Renew { token: i64 },
}

/// What the instance is to do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// Start leading with this token: replay, then intake.
    Lead {
        token: i64,
        failover: bool,
    },
    /// Stop acting now, for this reason.
    Depose(String),
}

/// The lease's state machine.
#[derive(Debug, Clone)]
pub struct Lease {
    ttl: Duration,
    role: Role,
    /// When the last call that extended our lease was sent: the lease
    /// lasts at least a TTL from then, and not surely longer.
    held_from: Option<Instant>,
}

impl Lease {
    pub fn new(ttl: Duration) -> Lease {
        Lease {
            ttl,
            role: Role::Standby,
            held_from: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The call to make now, if any: standbys try to acquire, the leader
    /// renews; a deposed or released instance makes none.
    pub fn next_call(&self) -> Option<Call> {
        match self.role {
            Role::Standby => Some(Call::Acquire),
            Role::Leader { token } => Some(Call::Renew { token }),
            Role::Deposed | Role::Released => None,
        }
    }

    /// How often calls are made: a leader renews three times per TTL, a
    /// standby looks four times per TTL.
    pub fn period(&self) -> Duration {
        match self.role {
            Role::Leader { .. } => self.ttl / 3,
            _ => self.ttl / 4,
        }
    }

    /// The outcome of a call sent at `sent`, judged at `now`.
    pub fn step(&mut self, sent: Instant, outcome: Outcome, now: Instant) -> Effect {
        match (self.role, outcome) {
            (Role::Standby, Outcome::Acquired(token)) => {
                self.role = Role::Leader { token };
                self.held_from = Some(sent);
                Effect::Lead {
                    token,
                    failover: token > 1,
                }
            }
            (Role::Leader { .. }, Outcome::Renewed) => {
                self.held_from = Some(sent);
                Effect::Nothing
            }
            (Role::Leader { token }, Outcome::Lost) => self.depose(format!(
                "the lease (token {token}) ended or passed to another instance"
            )),
            (Role::Leader { .. }, Outcome::Failed(_) | Outcome::Held | Outcome::Acquired(_)) => {
                self.check(now)
            }
            _ => Effect::Nothing,
        }
    }

    /// Whether the leader has gone a TTL without a renewal it knows of:
    /// then it counts itself deposed whatever the database would say.
    pub fn check(&mut self, now: Instant) -> Effect {
        match (self.role, self.held_from) {
            (Role::Leader { token }, Some(from)) if now >= from + self.ttl => self.depose(format!(
                "the lease (token {token}) could not be renewed for {:.1} s",
                self.ttl.as_secs_f64()
            )),
            _ => Effect::Nothing,
        }
    }

    /// Given up on purpose; answers the token to release, if it led.
    pub fn release(&mut self) -> Option<i64> {
        let held = match self.role {
            Role::Leader { token } => Some(token),
            _ => None,
        };
        self.role = Role::Released;
        held
    }

    fn depose(&mut self, why: String) -> Effect {
        self.role = Role::Deposed;
        self.held_from = None;
        Effect::Depose(why)
    }
}

/// The daemon ended because it lost the leader lease: the process exits
/// with [`LeaseLost::EXIT_STATUS`], to be started again as a standby.
#[derive(Debug, thiserror::Error)]
#[error("lost the cluster's leader lease: {0}")]
pub struct LeaseLost(pub String);

impl LeaseLost {
    /// EX_TEMPFAIL: start again and it will work.
    pub const EXIT_STATUS: u8 = 75;
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn a_standby_leads_when_it_acquires_and_a_later_token_is_a_failover() {
        let mut lease = Lease::new(TTL);
        let t0 = Instant::now();
        assert_eq!(lease.next_call(), Some(Call::Acquire));
        assert_eq!(lease.step(t0, Outcome::Held, t0), Effect::Nothing);
        assert_eq!(lease.role(), Role::Standby);
        assert_eq!(
            lease.step(t0, Outcome::Acquired(4), t0),
            Effect::Lead {
                token: 4,
                failover: true
            }
        );
        assert_eq!(lease.next_call(), Some(Call::Renew { token: 4 }));
        assert_eq!(lease.period(), TTL / 3);
        let mut first = Lease::new(TTL);
        assert_eq!(
            first.step(t0, Outcome::Acquired(1), t0),
            Effect::Lead {
                token: 1,
                failover: false
            }
        );
    }

    #[test]
    fn a_leader_that_cannot_renew_for_a_ttl_deposes_itself() {
        let mut lease = Lease::new(TTL);
        let t0 = Instant::now();
        lease.step(t0, Outcome::Acquired(1), t0);
        let t1 = t0 + TTL / 3;
        assert_eq!(lease.step(t1, Outcome::Renewed, t1), Effect::Nothing);
        // The database is unreachable from here: failures within a TTL of
        // the last renewal sent change nothing.
        let t2 = t1 + TTL / 2;
        assert_eq!(
            lease.step(t2, Outcome::Failed("timeout".into()), t2),
            Effect::Nothing
        );
        assert_eq!(
            lease.check(t1 + TTL - Duration::from_millis(1)),
            Effect::Nothing
        );
        assert!(matches!(lease.check(t1 + TTL), Effect::Depose(_)));
        assert_eq!(lease.role(), Role::Deposed);
        assert_eq!(lease.next_call(), None);
    }

    #[test]
    fn a_leader_told_its_lease_is_gone_is_deposed_at_once() {
        let mut lease = Lease::new(TTL);
        let t0 = Instant::now();
        lease.step(t0, Outcome::Acquired(2), t0);
        assert!(matches!(
            lease.step(t0, Outcome::Lost, t0),
            Effect::Depose(_)
        ));
        // A late answer changes nothing once deposed.
        assert_eq!(lease.step(t0, Outcome::Renewed, t0), Effect::Nothing);
        assert_eq!(lease.role(), Role::Deposed);
    }

    #[test]
    fn the_renewal_counts_from_when_it_was_sent() {
        let mut lease = Lease::new(TTL);
        let t0 = Instant::now();
        lease.step(t0, Outcome::Acquired(1), t0);
        // A renewal answered late still extends only from when it was sent.
        let sent = t0 + Duration::from_secs(1);
        lease.step(sent, Outcome::Renewed, sent + Duration::from_secs(2));
        assert!(matches!(lease.check(sent + TTL), Effect::Depose(_)));
    }

    #[test]
    fn release_answers_the_token_only_if_it_led() {
        let mut standby = Lease::new(TTL);
        assert_eq!(standby.release(), None);
        let mut leader = Lease::new(TTL);
        let t0 = Instant::now();
        leader.step(t0, Outcome::Acquired(7), t0);
        assert_eq!(leader.release(), Some(7));
        assert_eq!(leader.next_call(), None);
    }
}

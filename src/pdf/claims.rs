//! How a process takes document jobs in a cluster: the PDF jobs actor of
//! an `actorbot worker`, and of a leader unless `JOB_LOCAL=false`, claims
//! from the shared `jobs` table as many jobs as it has workers without
//! one, every `JOB_CLAIM_INTERVAL`, and renews its leases every third of
//! `JOB_LEASE` (see [`crate::storage`]'s claims for the guarantees).
//!
//! One job per free worker, not a queue's worth: a job waiting in one
//! process's queue could have run at once on another worker with room.

use std::time::Duration;

use crate::config::Config;

/// Who claims, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimer {
    /// The name claims are made under: the instance's.
    pub worker: String,
    /// How long a claim holds unless renewed.
    pub lease: Duration,
    /// Time between two looks for jobs.
    pub every: Duration,
    /// Whether this process runs jobs itself; a leader with `false` records
    /// jobs and leaves them to the workers.
    pub local: bool,
}

impl Claimer {
    pub fn from_config(config: &Config, worker: String, local: bool) -> Claimer {
        Claimer {
            worker,
            lease: Config::secs(config.job_lease),
            every: Config::secs(config.job_claim_interval),
            local,
        }
    }

    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Leases are renewed three times per lease, so that two renewals can
    /// fail before one ends.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How many jobs to claim now, with `workers` threads and `running`
    /// jobs under way here: one per worker without a job; none while this
    /// process takes no jobs or sheds load.
    pub fn to_claim(&self, workers: usize, running: usize, refusing: bool) -> usize {
        if !self.local || refusing {
            return 0;
        }
        workers.saturating_sub(running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimer(local: bool) -> Claimer {
        Claimer {
            worker: "w".into(),
            lease: Duration::from_secs(30),
            every: Duration::from_millis(500),
            local,
        }
    }

    #[test]
    fn a_worker_claims_one_job_per_free_thread() {
        let c = claimer(true);
        assert_eq!(c.to_claim(4, 0, false), 4);
        assert_eq!(c.to_claim(4, 3, false), 1);
        assert_eq!(c.to_claim(4, 4, false), 0);
        // Jobs resumed or recorded here may run past the workers (photos
        // being fetched): never a negative claim.
        assert_eq!(c.to_claim(4, 6, false), 0);
    }

    #[test]
    fn nothing_is_claimed_while_shedding_or_when_jobs_are_left_to_workers() {
        assert_eq!(claimer(true).to_claim(4, 0, true), 0);
        assert_eq!(claimer(false).to_claim(4, 0, false), 0);
    }

    #[test]
    fn leases_are_renewed_three_times_per_lease() {
        let c = claimer(true);
        assert_eq!(c.renew_every(), Duration::from_secs(10));
        assert_eq!(c.lease_ms(), 30_000);
    }

    #[test]
    fn the_configuration_sets_lease_and_interval() {
        let mut config = Config::load(&Default::default()).expect("the defaults load");
        config.job_lease = 4.0;
        config.job_claim_interval = 0.25;
        let c = Claimer::from_config(&config, "node-1".into(), true);
        assert_eq!(c.lease, Duration::from_secs(4));
        assert_eq!(c.every, Duration::from_millis(250));
        assert_eq!(c.worker, "node-1");
    }
}

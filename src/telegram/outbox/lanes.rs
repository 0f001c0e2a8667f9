//! The lane scheduler: which chat's request goes next, as plain code over
//! the time it is given.
//!
//! Each chat has a lane: a FIFO queue, a token bucket and a pause deadline,
//! and at most one request in flight. Lanes that may send take turns
//! round-robin (the `ready` ring); lanes that must wait sit in a timer heap
//! until their time. [`Lanes::take`] answers the requests that may go now
//! and when to look again; the outbox sends them and reports back with
//! [`Lanes::finish`] or [`Lanes::requeue`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use super::GlobalLimit;
use crate::bucket::Bucket;

/// A queued request, as far as the scheduler cares.
pub(super) trait Counted {
    /// Whether it counts against the flood limits (messages do; chat
    /// actions and draft previews do not).
    fn is_counted(&self) -> bool;
}

/// The per-chat rates: private chats and groups differ.
#[derive(Debug, Clone, Copy)]
pub(super) struct LaneRates {
    pub private_rate: f64,
    pub private_burst: u32,
    pub group_rate: f64,
    pub group_burst: u32,
}

struct Lane<J> {
    queue: VecDeque<J>,
    bucket: Bucket,
    paused_until: Option<Instant>,
    /// A request of this lane is in flight.
    busy: bool,
    /// The lane is in `ready` or `waiting`.
    scheduled: bool,
}

pub(super) struct Lanes<J> {
    rates: LaneRates,
    lanes: HashMap<i64, Lane<J>>,
    ready: VecDeque<i64>,
    waiting: BinaryHeap<Reverse<(Instant, i64)>>,
    queued: usize,
}

impl<J: Counted> Lanes<J> {
    pub fn new(rates: LaneRates) -> Lanes<J> {
        Lanes {
            rates,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            waiting: BinaryHeap::new(),
            queued: 0,
        }
    }

    /// New per-chat rates from `now` on, for the lanes there are and those
    /// to come.
    pub fn set_rates(&mut self, rates: LaneRates, now: Instant) {
        self.rates = rates;
        for (chat_id, lane) in &mut self.lanes {
            if *chat_id > 0 {
                lane.bucket
                    .retune(rates.private_rate, rates.private_burst, now);
            } else {
                lane.bucket.retune(rates.group_rate, rates.group_burst, now);
            }
        }
        // Lanes waiting for their bucket were timed by the old rate.
        let waiting: Vec<i64> = self.waiting.drain().map(|Reverse((_, c))| c).collect();
        for chat_id in waiting {
            if let Some(lane) = self.lanes.get_mut(&chat_id) {
                lane.scheduled = false;
            }
            self.schedule(chat_id, now);
        }
    }

    /// Requests waiting in every lane (not those in flight).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The `n` chats with the most requests waiting, most first.
    pub fn most_waiting(&self, n: usize) -> Vec<(i64, usize)> {
        let mut waiting: Vec<(i64, usize)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| !lane.queue.is_empty())
            .map(|(chat_id, lane)| (*chat_id, lane.queue.len()))
            .collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        waiting.truncate(n);
        waiting
    }

    /// Lanes that exist (busy, waiting, or refilling their bucket).
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Queues `jobs` for `chat_id`, in order, behind what it has.
    pub fn push(&mut self, chat_id: i64, jobs: impl IntoIterator<Item = J>, now: Instant) {
        let rates = self.rates;
        let lane = self.lanes.entry(chat_id).or_insert_with(|| {
            let bucket = if chat_id > 0 {
                Bucket::new(rates.private_rate, rates.private_burst, now)
            } else {
                Bucket::new(rates.group_rate, rates.group_burst, now)
            };
            Lane {
                queue: VecDeque::new(),
                bucket,
                paused_until: None,
                busy: false,
                scheduled: false,
            }
        });
        let before = lane.queue.len();
        lane.queue.extend(jobs);
        self.queued += lane.queue.len() - before;
        self.schedule(chat_id, now);
    }

    /// Puts a lane that has work and nothing in flight into `ready` or, if
    /// it must wait, into the timer heap.
    fn schedule(&mut self, chat_id: i64, now: Instant) {
        let Some(lane) = self.lanes.get_mut(&chat_id) else {
            return;
        };
        if lane.busy || lane.scheduled || lane.queue.is_empty() {
            return;
        }
        let mut at = lane.paused_until.filter(|t| *t > now).unwrap_or(now);
        if lane.queue.front().is_some_and(Counted::is_counted) {
            at = at.max(lane.bucket.ready_at(now));
        }
        lane.scheduled = true;
        if at <= now {
            self.ready.push_back(chat_id);
        } else {
            self.waiting.push(Reverse((at, chat_id)));
        }
    }

    /// The requests that may go at `now`, at most `room` of them, one per
    /// chat, in turn; and when to look again, if anything waits.
    pub fn take(
        &mut self,
        now: Instant,
        room: usize,
        global: &GlobalLimit,
    ) -> (Vec<(i64, J)>, Option<Instant>) {
        while let Some(Reverse((at, chat_id))) = self.waiting.peek().copied() {
            if at > now {
                break;
            }
            self.waiting.pop();
            if let Some(lane) = self.lanes.get_mut(&chat_id) {
                lane.scheduled = false;
            }
            self.schedule(chat_id, now);
        }
        let mut next_wake = self.waiting.peek().map(|Reverse((at, _))| *at);
        if let Some(until) = global.paused_until(now) {
            return (Vec::new(), Some(until));
        }
        let mut taken = Vec::new();
        while taken.len() < room {
            let Some(chat_id) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&chat_id) else {
                continue;
            };
            if lane.queue.front().is_some_and(Counted::is_counted) {
                if let Err(global_at) = global.take(now) {
                    self.ready.push_front(chat_id);
                    next_wake = Some(next_wake.map_or(global_at, |t| t.min(global_at)));
                    break;
                }
                lane.bucket.take(now);
            }
            lane.scheduled = false;
            let Some(job) = lane.queue.pop_front() else {
                continue;
            };
            lane.busy = true;
            self.queued -= 1;
            taken.push((chat_id, job));
        }
        (taken, next_wake)
    }

    /// The request in flight for `chat_id` ended: the lane may send again.
    pub fn finish(&mut self, chat_id: i64, now: Instant) {
        if let Some(lane) = self.lanes.get_mut(&chat_id) {
            lane.busy = false;
        }
        self.schedule(chat_id, now);
    }

    /// Puts a request back at the front of its lane, which sends nothing
    /// before `not_before`. Call [`Lanes::finish`] after.
    pub fn requeue(&mut self, chat_id: i64, job: J, not_before: Instant) {
        if let Some(lane) = self.lanes.get_mut(&chat_id) {
            lane.queue.push_front(job);
            lane.paused_until = Some(not_before);
            self.queued += 1;
        }
    }

    /// Forgets what was in flight and every schedule, after a restart:
    /// `in_flight` go back to the front of their lanes, and every lane with
    /// work is scheduled afresh.
    pub fn restart(&mut self, in_flight: impl IntoIterator<Item = (i64, J)>, now: Instant) {
        for (chat_id, job) in in_flight {
            if let Some(lane) = self.lanes.get_mut(&chat_id) {
                lane.queue.push_front(job);
                self.queued += 1;
            }
        }
        for lane in self.lanes.values_mut() {
            lane.busy = false;
            lane.scheduled = false;
        }
        self.ready.clear();
        self.waiting.clear();
        let chats: Vec<i64> = self.lanes.keys().copied().collect();
        for chat_id in chats {
            self.schedule(chat_id, now);
        }
    }

    /// Drops lanes with nothing to do and a full bucket: they would start
    /// the same way afresh.
    pub fn sweep(&mut self, now: Instant) {
        self.lanes.retain(|_, lane| {
            lane.busy || lane.scheduled || !lane.queue.is_empty() || !lane.bucket.is_full(now)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::Limits;
    use super::*;

    /// A request: its name, and whether it counts.
    #[derive(Debug, Clone, PartialEq)]
    struct Job(&'static str, bool);

    impl Counted for Job {
        fn is_counted(&self) -> bool {
            self.1
        }
    }

    const RATES: LaneRates = LaneRates {
        private_rate: 1.0,
        private_burst: 1,
        group_rate: 0.5,
        group_burst: 1,
    };

    /// Chats that may send as fast as they like.
    const UNTHROTTLED: LaneRates = LaneRates {
        private_rate: 1e6,
        private_burst: 1000,
        ..RATES
    };

    fn global(rate: f64, burst: u32) -> Arc<GlobalLimit> {
        GlobalLimit::new(&Limits {
            global_rate: rate,
            global_burst: burst,
            private_rate: RATES.private_rate,
            private_burst: RATES.private_burst,
            group_rate: RATES.group_rate,
            group_burst: RATES.group_burst,
            attempts: 3,
            patience: Duration::from_secs(60),
            max_in_flight: 10,
            capacity: 100,
        })
    }

    fn names(taken: &[(i64, Job)]) -> Vec<(i64, &'static str)> {
        taken.iter().map(|(chat, job)| (*chat, job.0)).collect()
    }

    #[test]
    fn the_chats_with_most_waiting_come_first() {
        let now = Instant::now();
        let mut lanes = Lanes::new(RATES);
        lanes.push(1, [Job("a1", true)], now);
        lanes.push(2, [Job("b1", true), Job("b2", true), Job("b3", true)], now);
        lanes.push(-3, [Job("g1", true), Job("g2", true)], now);
        assert_eq!(lanes.most_waiting(2), [(2, 3), (-3, 2)]);
        assert_eq!(lanes.most_waiting(10).len(), 3);
    }

    #[test]
    fn a_new_rate_applies_to_the_lanes_there_are() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(RATES);
        lanes.push(1, [Job("a1", true), Job("a2", true)], now);
        let (first, _) = lanes.take(now, 10, &unlimited);
        assert_eq!(names(&first), [(1, "a1")]);
        lanes.finish(1, now);
        // At one a second the next would wait; a hundred a second, 10 ms.
        lanes.set_rates(
            LaneRates {
                private_rate: 100.0,
                ..RATES
            },
            now,
        );
        let (later, _) = lanes.take(now + Duration::from_millis(10), 10, &unlimited);
        assert_eq!(names(&later), [(1, "a2")]);
    }

    #[test]
    fn chats_take_turns_one_request_each_in_flight() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(UNTHROTTLED);
        lanes.push(1, [Job("a1", true), Job("a2", true)], now);
        lanes.push(2, [Job("b1", true)], now);
        assert_eq!(lanes.queued(), 3);
        let (taken, _) = lanes.take(now, 10, &unlimited);
        // One per chat: a2 waits for a1 to end, keeping the chat in order.
        assert_eq!(names(&taken), [(1, "a1"), (2, "b1")]);
        assert!(lanes.take(now, 10, &unlimited).0.is_empty());
        lanes.finish(1, now);
        assert_eq!(names(&lanes.take(now, 10, &unlimited).0), [(1, "a2")]);
        assert_eq!(lanes.queued(), 0);
    }

    #[test]
    fn room_bounds_what_goes_at_once() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(RATES);
        for chat in 1..=5 {
            lanes.push(chat, [Job("m", true)], now);
        }
        let (taken, _) = lanes.take(now, 2, &unlimited);
        assert_eq!(names(&taken), [(1, "m"), (2, "m")]);
        let (taken, _) = lanes.take(now, 10, &unlimited);
        assert_eq!(names(&taken), [(3, "m"), (4, "m"), (5, "m")]);
    }

    #[test]
    fn a_chat_keeps_to_its_rate_and_says_when_it_may_send() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(RATES);
        lanes.push(7, [Job("m1", true), Job("m2", true)], now);
        assert_eq!(names(&lanes.take(now, 10, &unlimited).0), [(7, "m1")]);
        lanes.finish(7, now);
        let (taken, wake) = lanes.take(now, 10, &unlimited);
        assert!(taken.is_empty());
        let wake = wake.expect("a wake-up for the second message");
        let period = Duration::from_secs_f64(1.0 / RATES.private_rate);
        assert!(wake > now && wake <= now + period, "{:?}", wake - now);
        assert!(
            lanes
                .take(wake - Duration::from_millis(1), 10, &unlimited)
                .0
                .is_empty()
        );
        assert_eq!(names(&lanes.take(wake, 10, &unlimited).0), [(7, "m2")]);
    }

    #[test]
    fn uncounted_requests_pass_the_chat_rate() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(RATES);
        lanes.push(7, [Job("msg", true), Job("typing", false)], now);
        lanes.take(now, 10, &unlimited);
        lanes.finish(7, now);
        assert_eq!(names(&lanes.take(now, 10, &unlimited).0), [(7, "typing")]);
    }

    #[test]
    fn a_requeued_request_waits_out_its_pause_first() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(UNTHROTTLED);
        lanes.push(7, [Job("m1", true), Job("m2", true)], now);
        let (mut taken, _) = lanes.take(now, 10, &unlimited);
        let (_, job) = taken.remove(0);
        let retry_after = Duration::from_secs(3);
        lanes.requeue(7, job, now + retry_after);
        lanes.finish(7, now);
        let (taken, wake) = lanes.take(now, 10, &unlimited);
        assert!(taken.is_empty());
        assert_eq!(wake, Some(now + retry_after));
        assert_eq!(
            names(&lanes.take(now + retry_after, 10, &unlimited).0),
            [(7, "m1")],
            "the same request again, before the one behind it"
        );
    }

    #[test]
    fn the_global_rate_holds_every_lane_back() {
        let now = Instant::now();
        let global = global(1.0, 1);
        let mut lanes = Lanes::new(RATES);
        lanes.push(1, [Job("a", true)], now);
        lanes.push(2, [Job("b", true)], now);
        let (taken, wake) = lanes.take(now, 10, &global);
        assert_eq!(names(&taken), [(1, "a")]);
        let wake = wake.expect("the global rate's next token");
        assert!(wake > now && wake <= now + Duration::from_secs(1));
        assert_eq!(names(&lanes.take(wake, 10, &global).0), [(2, "b")]);
    }

    #[test]
    fn a_global_pause_stops_everything_until_it_ends() {
        let now = Instant::now();
        let global = global(1e6, 1000);
        let wait = Duration::from_secs(2);
        for chat in 1..=3 {
            global.note_flood(chat, now, wait);
        }
        let mut lanes = Lanes::new(RATES);
        lanes.push(9, [Job("m", true)], now);
        assert_eq!(lanes.take(now, 10, &global), (Vec::new(), Some(now + wait)));
        assert_eq!(names(&lanes.take(now + wait, 10, &global).0), [(9, "m")]);
    }

    #[test]
    fn a_restart_sends_what_was_in_flight_again_first() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(UNTHROTTLED);
        lanes.push(1, [Job("a1", true), Job("a2", true)], now);
        let (in_flight, _) = lanes.take(now, 10, &unlimited);
        lanes.restart(in_flight, now);
        assert_eq!(lanes.queued(), 2);
        assert_eq!(names(&lanes.take(now, 10, &unlimited).0), [(1, "a1")]);
    }

    #[test]
    fn idle_lanes_are_swept_once_their_bucket_is_full() {
        let now = Instant::now();
        let unlimited = global(1e6, 1000);
        let mut lanes = Lanes::new(RATES);
        lanes.push(1, [Job("m", true)], now);
        lanes.take(now, 10, &unlimited);
        lanes.finish(1, now);
        lanes.sweep(now);
        assert_eq!(lanes.len(), 1, "its bucket is refilling");
        lanes.sweep(now + Duration::from_secs(5));
        assert_eq!(lanes.len(), 0);
    }
}

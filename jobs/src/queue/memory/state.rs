//! The memory queue's state: waiting, in-flight, delayed and dead jobs, staged and parked
//! ones, and the published backlogs in the claim order; the steps a claim takes on it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_DEAD_LETTERS;
use crate::job::Job;
use crate::queue::fair::{Backlogs, Served};
use crate::queue::{DeadLetter, Delivery};

#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) job: Job,
    /// Deliveries so far (0 for a job never delivered).
    pub(super) deliveries: u64,
}

#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) job: Job,
    pub(super) deliveries: u64,
    pub(super) deadline: Instant,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) next_id: u64,
    pub(super) pending: VecDeque<Waiting>,
    pub(super) in_flight: HashMap<u64, InFlight>,
    /// In-flight handles by visibility deadline, so reclaiming never scans the whole map.
    pub(super) expiries: BTreeMap<(Instant, u64), ()>,
    pub(super) delayed: BTreeMap<(Instant, u64), Job>,
    pub(super) dead: VecDeque<(Instant, DeadLetter)>,
    pub(super) high_water: HashMap<String, u64>,
    /// Jobs of batches being submitted, not yet visible to `claim`.
    pub(super) staged: HashMap<String, VecDeque<Job>>,
    /// Jobs parked for the offload lane, by batch and job id.
    pub(super) parked: HashMap<String, BTreeMap<String, Job>>,
    /// Published batches, in the claim order; drawn once `pending` is empty.
    pub(super) backlogs: Backlogs,
    pub(super) served: Served,
}

impl State {
    /// Marks chunk `chunk_no` of a batch applied; false if it was already (idempotent adds).
    pub(super) fn take_chunk(&mut self, batch_id: &str, chunk_no: u64) -> bool {
        if self
            .high_water
            .get(batch_id)
            .is_some_and(|&hwm| chunk_no <= hwm)
        {
            return false;
        }
        self.high_water.insert(batch_id.to_string(), chunk_no);
        true
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn take_in_flight(&mut self, handle: &str) -> Option<InFlight> {
        let id: u64 = handle.parse().ok()?;
        let entry = self.in_flight.remove(&id)?;
        self.expiries.remove(&(entry.deadline, id));
        Some(entry)
    }

    pub(super) fn deliver(
        &mut self,
        id: u64,
        job: Job,
        deliveries: u64,
        deadline: Instant,
        out: &mut Vec<Delivery>,
    ) {
        out.push(Delivery {
            handle: id.to_string(),
            job: job.clone(),
            deliveries,
        });
        self.expiries.insert((deadline, id), ());
        self.in_flight.insert(
            id,
            InFlight {
                job,
                deliveries,
                deadline,
            },
        );
    }

    /// Hands expired in-flight jobs to this claimer, keeping their handles.
    pub(super) fn reclaim(
        &mut self,
        now: Instant,
        visibility: Duration,
        max: usize,
        out: &mut Vec<Delivery>,
    ) {
        while out.len() < max {
            let Some((&(deadline, id), ())) = self.expiries.first_key_value() else {
                break;
            };
            if deadline > now {
                break;
            }
            self.expiries.remove(&(deadline, id));
            if let Some(entry) = self.in_flight.remove(&id) {
                self.deliver(id, entry.job, entry.deliveries + 1, now + visibility, out);
            }
        }
    }

    /// Moves at most `chunk` due delayed jobs to the back of the pending queue.
    pub(super) fn promote(&mut self, now: Instant, chunk: usize) -> usize {
        let mut moved = 0;
        while moved < chunk {
            match self.delayed.first_key_value() {
                Some((&(due, _), _)) if due <= now => {}
                _ => break,
            }
            if let Some((_, job)) = self.delayed.pop_first() {
                self.pending.push_back(Waiting { job, deliveries: 0 });
                moved += 1;
            }
        }
        moved
    }

    pub(super) fn prune_dead(&mut self, now: Instant, retention: Duration) {
        while let Some((at, _)) = self.dead.front() {
            if now.saturating_duration_since(*at) > retention || self.dead.len() > MAX_DEAD_LETTERS
            {
                self.dead.pop_front();
            } else {
                break;
            }
        }
    }

    /// When a sleeping claimer should look again even if nothing is enqueued.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let due = self.delayed.first_key_value().map(|(&(due, _), _)| due);
        let expiry = self.expiries.first_key_value().map(|(&(at, _), ())| at);
        match (due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

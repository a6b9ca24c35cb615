//! The claim order across batches: strict priority first, then weighted fair share by
//! tenant, then fair across one tenant's batches (stride scheduling on virtual times).
//!
//! The Redis queue keeps it in sorted sets and picks in Lua (`scripts/refill.lua`); this file
//! holds what both queues share: a published batch's place ([`FairClass`]), the shares it is
//! getting ([`Shares`]), and the in-process scheduler the memory queue draws from
//! ([`Backlogs`], linear per pick: `batchyard run` holds a handful of batches at most).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::job::Job;
use crate::priority::Priority;

/// Where a published batch stands in the claim order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairClass {
    pub tenant: String,
    pub priority: Priority,
    /// The tenant's weight from the publisher's config; `None` keeps the one Redis knows
    /// (a worker's sweep finishing someone else's submit), else 1.
    pub weight: Option<u32>,
}

impl FairClass {
    /// The `default` tenant at `normal` priority, weight as known.
    pub fn default_tenant() -> Self {
        Self {
            tenant: crate::batch::DEFAULT_TENANT.to_string(),
            priority: Priority::NORMAL,
            weight: None,
        }
    }
}

/// The share of the workers each batch and tenant is getting: jobs dispatched to workers in
/// the last [`Shares::window_secs`], and what the weights say they should get.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shares {
    pub window_secs: u64,
    /// Jobs dispatched in the window, by staging id (a batch id, or `<batch>.<replay>`).
    pub batches: BTreeMap<String, u64>,
    /// Jobs dispatched in the window, by tenant.
    pub tenants: BTreeMap<String, u64>,
    /// Backlogs with jobs waiting: staging id -> (priority, tenant).
    pub active: BTreeMap<String, (i32, String)>,
    /// Tenant weights as the queue knows them (absent: 1).
    pub weights: BTreeMap<String, u32>,
}

impl Shares {
    fn weight(&self, tenant: &str) -> u32 {
        self.weights.get(tenant).copied().unwrap_or(1).max(1)
    }

    /// The priority being served: the highest with a backlog.
    pub fn top_priority(&self) -> Option<i32> {
        self.active.values().map(|(p, _)| *p).max()
    }

    /// Dispatched jobs of the window, all batches.
    pub fn total(&self) -> u64 {
        self.tenants.values().sum()
    }

    /// The part of the workers `tenant` should get now (0..=1): its weight over the weights
    /// of every tenant with a backlog at the top priority; 0 below it.
    pub fn tenant_target(&self, tenant: &str) -> f64 {
        let Some(top) = self.top_priority() else {
            return 0.0;
        };
        let mut at_top: Vec<&str> = self
            .active
            .values()
            .filter(|(p, _)| *p == top)
            .map(|(_, t)| t.as_str())
            .collect();
        at_top.sort_unstable();
        at_top.dedup();
        if !at_top.contains(&tenant) {
            return 0.0;
        }
        let sum: u32 = at_top.iter().map(|t| self.weight(t)).sum();
        f64::from(self.weight(tenant)) / f64::from(sum.max(1))
    }

    /// The part of the workers a backlog should get now: its tenant's target, split evenly
    /// among the tenant's backlogs at the top priority.
    pub fn batch_target(&self, staging: &str) -> f64 {
        let Some((prio, tenant)) = self.active.get(staging) else {
            return 0.0;
        };
        if Some(*prio) != self.top_priority() {
            return 0.0;
        }
        let siblings = self
            .active
            .values()
            .filter(|(p, t)| p == prio && t == tenant)
            .count();
        self.tenant_target(tenant) / siblings.max(1) as f64
    }

    /// The part of the window's dispatches that went to `count` (0 when nothing moved).
    pub fn share(&self, count: u64) -> f64 {
        match self.total() {
            0 => 0.0,
            total => count as f64 / total as f64,
        }
    }
}

/// One tenant's backlogs at one priority, with the virtual times that order them.
#[derive(Debug, Default)]
struct Lane {
    vt: f64,
    /// (virtual time, staging id)
    batches: Vec<(f64, String)>,
}

/// The in-process claim order: published backlogs by priority, tenant and batch.
#[derive(Debug, Default)]
pub struct Backlogs {
    jobs: HashMap<String, VecDeque<Job>>,
    /// priority -> tenant -> lane
    levels: BTreeMap<Priority, BTreeMap<String, Lane>>,
    /// Virtual times of levels and tenants without work, so coming back gains no credit.
    level_clock: HashMap<Priority, f64>,
    tenant_clock: HashMap<(Priority, String), f64>,
    weights: HashMap<String, u32>,
    waiting: usize,
}

impl Backlogs {
    /// Jobs waiting in published backlogs.
    pub fn len(&self) -> usize {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Adds a published batch's jobs under `staging`; a staging id already published keeps
    /// its place and gets the jobs appended.
    pub fn publish(&mut self, staging: &str, class: &FairClass, jobs: VecDeque<Job>) {
        if let Some(w) = class.weight {
            self.weights.insert(class.tenant.clone(), w.max(1));
        }
        if jobs.is_empty() {
            return;
        }
        self.waiting += jobs.len();
        if let Some(queued) = self.jobs.get_mut(staging) {
            queued.extend(jobs);
            return;
        }
        self.jobs.insert(staging.to_string(), jobs);
        let level_now = self.level_clock.get(&class.priority).copied();
        let own = self
            .tenant_clock
            .get(&(class.priority, class.tenant.clone()))
            .copied()
            .unwrap_or(0.0);
        let level = self.levels.entry(class.priority).or_default();
        let now = level
            .values()
            .map(|l| l.vt)
            .min_by(f64::total_cmp)
            .or(level_now)
            .unwrap_or(0.0);
        let lane = level.entry(class.tenant.clone()).or_insert_with(|| Lane {
            vt: now.max(own),
            batches: Vec::new(),
        });
        let start = lane
            .batches
            .iter()
            .map(|(vt, _)| *vt)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0);
        lane.batches.push((start, staging.to_string()));
    }

    /// The next job in the claim order, with its staging id and tenant.
    pub fn pop(&mut self) -> Option<(Job, String, String)> {
        let (&prio, level) = self.levels.iter_mut().next_back()?;
        let (tenant, lane) = level
            .iter_mut()
            .min_by(|a, b| a.1.vt.total_cmp(&b.1.vt).then_with(|| a.0.cmp(b.0)))?;
        let tenant = tenant.clone();
        let pick = (0..lane.batches.len()).min_by(|&a, &b| {
            let (x, y) = (&lane.batches[a], &lane.batches[b]);
            x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1))
        })?;
        let staging = lane.batches[pick].1.clone();
        let queued = self.jobs.get_mut(&staging);
        let job = queued.and_then(VecDeque::pop_front);
        let left = self.jobs.get(&staging).map_or(0, VecDeque::len);
        if job.is_some() {
            self.waiting = self.waiting.saturating_sub(1);
            let w = self.weights.get(&tenant).copied().unwrap_or(1).max(1);
            lane.vt += 1.0 / f64::from(w);
            lane.batches[pick].0 += 1.0;
        }
        if left == 0 {
            lane.batches.swap_remove(pick);
            self.jobs.remove(&staging);
        }
        if lane.batches.is_empty() {
            let vt = lane.vt;
            level.remove(&tenant);
            self.tenant_clock.insert((prio, tenant.clone()), vt);
            if level.is_empty() {
                self.levels.remove(&prio);
                self.level_clock.insert(prio, vt);
            }
        }
        match job {
            Some(job) => Some((job, staging, tenant)),
            // A backlog emptied under us: the next pick looks again.
            None => self.pop(),
        }
    }

    /// Backlogs with jobs waiting: staging id -> (priority, tenant).
    pub fn active(&self) -> BTreeMap<String, (i32, String)> {
        let mut out = BTreeMap::new();
        for (prio, level) in &self.levels {
            for (tenant, lane) in level {
                for (_, staging) in &lane.batches {
                    out.insert(staging.clone(), (prio.value(), tenant.clone()));
                }
            }
        }
        out
    }

    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.weights.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests;

/// Jobs dispatched per 10-second slot, the last [`SERVED_SLOTS`] kept: the in-process
/// counterpart of the Redis queue's `fair:s:<slot>` hashes.
#[derive(Debug, Default)]
pub struct Served {
    /// (slot, by staging id, by tenant), oldest first.
    slots: VecDeque<(u64, Counts, Counts)>,
}

type Counts = HashMap<String, u64>;

/// Slots of 10 s in the share window.
pub const SERVED_SLOTS: u64 = 6;

impl Served {
    pub fn record(&mut self, now_secs: u64, staging: &str, tenant: &str) {
        let slot = now_secs / 10;
        if self.slots.back().is_none_or(|(s, _, _)| *s != slot) {
            self.slots.push_back((slot, HashMap::new(), HashMap::new()));
        }
        while self
            .slots
            .front()
            .is_some_and(|(s, _, _)| *s + SERVED_SLOTS <= slot)
        {
            self.slots.pop_front();
        }
        if let Some((_, batches, tenants)) = self.slots.back_mut() {
            *batches.entry(staging.to_string()).or_default() += 1;
            *tenants.entry(tenant.to_string()).or_default() += 1;
        }
    }

    /// Adds the window's counts (as of `now_secs`) to `shares`.
    pub fn fill(&self, now_secs: u64, shares: &mut Shares) {
        shares.window_secs = SERVED_SLOTS * 10;
        let oldest = (now_secs / 10).saturating_sub(SERVED_SLOTS - 1);
        for (_, batches, tenants) in self.slots.iter().filter(|(s, _, _)| *s >= oldest) {
            for (k, n) in batches {
                *shares.batches.entry(k.clone()).or_default() += n;
            }
            for (k, n) in tenants {
                *shares.tenants.entry(k.clone()).or_default() += n;
            }
        }
    }
}

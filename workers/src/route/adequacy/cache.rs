//! A short-lived in-process copy of what the store observed, so a worker running thousands
//! of jobs a second reads the store about once a second per (task, bucket), not once per job.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Observed;

/// How stale a cached copy may get: evidence from other workers shows up after at most this.
pub(super) const CACHE_TTL: Duration = Duration::from_secs(1);

/// Beyond this many (task, bucket) entries the cache starts over, which bounds its memory
/// whatever the mix of tasks and prompt lengths.
pub(super) const CACHE_MAX_ENTRIES: usize = 4096;

struct Entry {
    at: Instant,
    observed: Observed,
}

#[derive(Default)]
struct Inner {
    /// Task → bucket → entry, so a record touches only its own task's entries.
    tasks: HashMap<String, HashMap<u32, Entry>>,
    entries: usize,
}

#[derive(Default)]
pub(super) struct ObservedCache {
    inner: Mutex<Inner>,
}

impl ObservedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps stay consistent even if a holder panicked: every update is one assignment.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh copy for (task, bucket), if there is one.
    pub(super) fn get(&self, task: &str, bucket: u32) -> Option<Observed> {
        let inner = self.lock();
        let entry = inner.tasks.get(task)?.get(&bucket)?;
        (entry.at.elapsed() < CACHE_TTL).then(|| entry.observed.clone())
    }

    pub(super) fn put(&self, task: &str, bucket: u32, observed: Observed) {
        let mut inner = self.lock();
        if inner.entries >= CACHE_MAX_ENTRIES {
            inner.tasks.clear();
            inner.entries = 0;
        }
        let entry = Entry {
            at: Instant::now(),
            observed,
        };
        let replaced = inner
            .tasks
            .entry(task.to_owned())
            .or_default()
            .insert(bucket, entry)
            .is_some();
        if !replaced {
            inner.entries += 1;
        }
    }

    /// Applies one outcome to every cached copy of `task`, so this process learns from its
    /// own answers at once instead of after the TTL. The task level is shared by all buckets.
    pub(super) fn record(
        &self,
        task: &str,
        bucket: u32,
        model: &str,
        passed: bool,
        max_evidence: f64,
    ) {
        let mut inner = self.lock();
        let Some(buckets) = inner.tasks.get_mut(task) else {
            return;
        };
        for (b, entry) in buckets.iter_mut() {
            let observed = &mut entry.observed;
            observed
                .task
                .entry(model.to_owned())
                .or_default()
                .add(passed, max_evidence);
            if *b == bucket {
                observed
                    .bucket
                    .entry(model.to_owned())
                    .or_default()
                    .add(passed, max_evidence);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_size() {
        let cache = ObservedCache::default();
        for b in 0..(CACHE_MAX_ENTRIES as u32 + 10) {
            cache.put("t", b, Observed::default());
        }
        assert!(cache.len() <= CACHE_MAX_ENTRIES);
        assert!(cache.get("t", CACHE_MAX_ENTRIES as u32 + 9).is_some());
    }

    #[test]
    fn record_updates_every_bucket_of_the_task() {
        let cache = ObservedCache::default();
        cache.put("t", 1, Observed::default());
        cache.put("t", 2, Observed::default());
        cache.put("u", 1, Observed::default());
        cache.record("t", 1, "m", true, 100.0);
        let one = cache.get("t", 1).unwrap();
        let two = cache.get("t", 2).unwrap();
        assert_eq!(one.task["m"].passes, 1.0);
        assert_eq!(one.bucket["m"].passes, 1.0);
        assert_eq!(two.task["m"].passes, 1.0);
        assert!(two.bucket.is_empty());
        assert!(cache.get("u", 1).unwrap().task.is_empty());
    }
}

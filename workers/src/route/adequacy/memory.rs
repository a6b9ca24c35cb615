//! In-process adequacy evidence, for `run`: the same levels and decay as the Redis store.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{AdequacyError, AdequacyStore, Evidence, Observed};

/// One task's evidence: over all its items, and per bucket.
#[derive(Debug, Default)]
struct TaskEvidence {
    all: HashMap<String, Evidence>,
    buckets: HashMap<u32, HashMap<String, Evidence>>,
}

#[derive(Debug, Default)]
pub struct MemoryAdequacy {
    max_evidence: f64,
    tasks: Mutex<HashMap<String, TaskEvidence>>,
}

impl MemoryAdequacy {
    pub fn new(max_evidence: f64) -> Self {
        Self {
            max_evidence,
            tasks: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TaskEvidence>> {
        // Every update leaves the maps consistent, so a panicked holder corrupts nothing.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl AdequacyStore for MemoryAdequacy {
    async fn observed(&self, task: &str, bucket: u32) -> Result<Observed, AdequacyError> {
        let tasks = self.lock();
        let Some(t) = tasks.get(task) else {
            return Ok(Observed::default());
        };
        Ok(Observed {
            task: t.all.clone(),
            bucket: t.buckets.get(&bucket).cloned().unwrap_or_default(),
        })
    }

    async fn record(
        &self,
        task: &str,
        bucket: u32,
        model: &str,
        passed: bool,
    ) -> Result<(), AdequacyError> {
        let mut tasks = self.lock();
        let t = tasks.entry(task.to_owned()).or_default();
        t.all
            .entry(model.to_owned())
            .or_default()
            .add(passed, self.max_evidence);
        t.buckets
            .entry(bucket)
            .or_default()
            .entry(model.to_owned())
            .or_default()
            .add(passed, self.max_evidence);
        Ok(())
    }

    async fn reset(&self, task: Option<&str>) -> Result<(), AdequacyError> {
        let mut tasks = self.lock();
        match task {
            Some(task) => {
                tasks.remove(task);
            }
            None => tasks.clear(),
        }
        Ok(())
    }
}

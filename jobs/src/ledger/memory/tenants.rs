//! The memory ledger's per-tenant index and the readers of uploaded files (the Redis
//! ledger's `tenants` and `uploads` modules): a tenant's listing reads only its own batches.

use std::collections::{BTreeSet, HashMap};

use super::MemoryLedger;
use crate::batch::{BatchRecord, now_secs};
use crate::error::QueueError;
use crate::ledger::UPLOAD_READ_SECS;

/// Each tenant's batches by (creation time, id), and whose each batch is.
#[derive(Default)]
pub(super) struct TenantIndex {
    by_tenant: HashMap<String, BTreeSet<(u64, String)>>,
    owner: HashMap<String, (String, u64)>,
}

impl TenantIndex {
    pub(super) fn add(&mut self, record: &BatchRecord) {
        self.remove(&record.id);
        self.by_tenant
            .entry(record.tenant.clone())
            .or_default()
            .insert((record.created_at, record.id.clone()));
        self.owner.insert(
            record.id.clone(),
            (record.tenant.clone(), record.created_at),
        );
    }

    fn remove(&mut self, id: &str) {
        if let Some((tenant, at)) = self.owner.remove(id)
            && let Some(set) = self.by_tenant.get_mut(&tenant)
        {
            set.remove(&(at, id.to_string()));
            if set.is_empty() {
                self.by_tenant.remove(&tenant);
            }
        }
    }

    /// The newest `limit` ids of `tenant`, newest first (ties: the greater id first, as
    /// Redis orders a sorted set read backwards).
    fn newest(&self, tenant: &str, limit: usize) -> Vec<String> {
        self.by_tenant
            .get(tenant)
            .map(|set| {
                set.iter()
                    .rev()
                    .take(limit)
                    .map(|(_, id)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl MemoryLedger {
    pub(super) async fn tenant_batches(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        let ids = self.tenants.lock().await.newest(tenant, limit);
        let batches = self.batches.lock().await;
        Ok(ids
            .iter()
            .filter_map(|id| batches.get(id).and_then(|e| e.record.clone()))
            .collect())
    }

    pub(super) async fn add_upload_reader(&self, file_id: &str, batch_id: &str) {
        self.readers
            .lock()
            .await
            .entry(file_id.to_string())
            .or_default()
            .insert(batch_id.to_string(), now_secs());
    }

    pub(super) async fn remove_upload_reader(&self, file_id: &str, batch_id: &str) {
        let mut readers = self.readers.lock().await;
        if let Some(r) = readers.get_mut(file_id) {
            r.remove(batch_id);
            if r.is_empty() {
                readers.remove(file_id);
            }
        }
    }

    pub(super) async fn upload_has_readers(&self, file_id: &str) -> bool {
        let since = now_secs().saturating_sub(UPLOAD_READ_SECS);
        self.readers
            .lock()
            .await
            .get(file_id)
            .is_some_and(|r| r.values().any(|at| *at >= since))
    }
}

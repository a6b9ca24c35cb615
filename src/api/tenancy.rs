//! Who may see which batch: a batch belongs to the tenant that submitted it, and a tenant's
//! tokens see, read, cancel and retry only that tenant's batches (the `default` tenant's see
//! all). Another tenant's batch answers 404, exactly as one that never was, so ids don't leak.

use batchyard_jobs::batch::BatchRecord;

use super::auth::Caller;
use super::batches::load_api;
use super::http_error::ApiError;
use super::state::ApiState;

/// The most batch records one listing reads while looking for a tenant's own.
pub const MAX_SCAN: usize = 100_000;

/// Whose batch `record` is.
pub fn owner(record: &BatchRecord) -> &str {
    &record.tenant
}

/// Whether `caller` may see batch `id`: by its ledger record, else by its API record (a
/// batch that never got a ledger record, or whose record is gone), else only the `default`
/// tenant may (it answers 404 either way when nothing is there).
pub async fn may_see_batch(state: &ApiState, caller: &Caller, id: &str) -> Result<bool, ApiError> {
    if caller.sees_all() {
        return Ok(true);
    }
    if let Some(record) = state.app.ledger.get(id).await? {
        return Ok(caller.may_see(owner(&record)));
    }
    let api = load_api(state, id).await?;
    Ok(api.is_some_and(|a| caller.may_see(&a.tenant)))
}

/// The record of batch `id` when `caller` may see it; `None` both when there is none and
/// when it is another tenant's.
pub async fn visible_record(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Option<BatchRecord>, ApiError> {
    Ok(state
        .app
        .ledger
        .get(id)
        .await?
        .filter(|r| caller.may_see(owner(r))))
}

/// The newest records `caller` may see, newest first: at least `want` of them unless the
/// ledger has fewer (or [`MAX_SCAN`] records were read). Also says whether the ledger had
/// more records than were read.
pub async fn visible_records(
    state: &ApiState,
    caller: &Caller,
    want: usize,
) -> Result<(Vec<BatchRecord>, bool), ApiError> {
    let mut fetch = want.max(1);
    loop {
        let records = state.app.ledger.list(fetch).await?;
        let exhausted = records.len() < fetch || fetch >= MAX_SCAN;
        let mine: Vec<BatchRecord> = records
            .into_iter()
            .filter(|r| caller.may_see(owner(r)))
            .collect();
        if mine.len() >= want || exhausted {
            return Ok((mine, !exhausted));
        }
        fetch = fetch.saturating_mul(4).min(MAX_SCAN);
    }
}

/// The tenant a new batch or upload from `caller` belongs to.
pub fn tenant_of(caller: &Caller) -> String {
    caller.tenant.to_string()
}

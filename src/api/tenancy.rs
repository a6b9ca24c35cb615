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

/// The newest records `caller` may see, newest first: at least `want` of them unless there
/// are fewer (or [`MAX_SCAN`] records were read). Also says whether there may be more. A
/// tenant's token reads its tenant's own index, so its cost is its own batches; the
/// `default` tenant's sees every batch and reads the whole index's newest.
pub async fn visible_records(
    state: &ApiState,
    caller: &Caller,
    want: usize,
) -> Result<(Vec<BatchRecord>, bool), ApiError> {
    let want = want.max(1);
    let records = if caller.sees_all() {
        state.app.ledger.list(want).await?
    } else {
        state.app.ledger.list_tenant(&caller.tenant, want).await?
    };
    let more = records.len() >= want && want < MAX_SCAN;
    Ok((records, more))
}

/// The tenant a new batch or upload from `caller` belongs to.
pub fn tenant_of(caller: &Caller) -> String {
    caller.tenant.to_string()
}

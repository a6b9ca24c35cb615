//! The offload lane's limits and money: how a model's parked items are cut into provider
//! batches (the provider's count and file-size limits, and the room left in the model's
//! enqueued-token quota), each batch's share of that quota, and the budget a provider batch
//! holds once its items were given to real-time (its answers may still come, and are paid).

use std::ops::Range;

use batchyard_jobs::batch::{BatchRecord, now_secs, usd_to_nanos};
use batchyard_jobs::ledger::Reservation;

use super::Coordinator;
use super::state::{LaneState, Phase, ProviderBatch};
use crate::catalog::ModelSpec;
use crate::catalog::tokens::completions_per_call;
use crate::provider::batch::BatchItem;
use crate::route::router::{DEFAULT_OUTPUT_TOKENS, requested_output_tokens};

/// What a model's account is held for after the provider refused a batch for its quota and
/// none of batchyard's own batches holds a share that could free room sooner.
const QUOTA_HOLD_SECS: u64 = 300;

/// One item as the limits see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Weight {
    /// Its line in the provider's input file.
    pub bytes: u64,
    /// Its prompt tokens, as the enqueued-token quota counts them.
    pub tokens: u64,
    /// The most it can cost at the batch price.
    pub worst_nanos: i64,
}

/// Cuts `weights` (in order) into provider batches of at most `max_items` items and
/// `max_bytes` bytes, stopping where the next item would pass `room` tokens in all. A single
/// item bigger than `max_bytes` goes alone (the provider judges it, and refuses only it).
pub(super) fn split(
    weights: &[Weight],
    max_items: usize,
    max_bytes: u64,
    room: Option<u64>,
) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut end) = (0, 0);
    let (mut bytes, mut tokens) = (0u64, 0u64);
    for (i, w) in weights.iter().enumerate() {
        if room.is_some_and(|room| tokens + w.tokens > room) {
            break;
        }
        if i > start && (i - start >= max_items.max(1) || bytes + w.bytes > max_bytes) {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += w.bytes;
        tokens += w.tokens;
        end = i + 1;
    }
    if end > start {
        chunks.push(start..end);
    }
    chunks
}

impl Coordinator {
    /// What each item weighs for `model`.
    pub(super) fn weigh(&self, model: &ModelSpec, items: &[BatchItem]) -> Vec<Weight> {
        items
            .iter()
            .map(|item| {
                let tokens = self.tokens.prompt_tokens(model, &item.body);
                let output = requested_output_tokens(&item.body, None)
                    .unwrap_or(DEFAULT_OUTPUT_TOKENS)
                    .saturating_mul(completions_per_call(&item.body));
                Weight {
                    bytes: serde_json::to_vec(&item.body).map_or(0, |b| b.len() as u64)
                        + item.custom_id.len() as u64
                        + 96,
                    tokens,
                    worst_nanos: usd_to_nanos(model.batch_worst_case_usd(tokens, output)),
                }
            })
            .collect()
    }

    /// The tokens `model`'s quota has room for now (`None`: no known limit), or `Err` when
    /// nothing should be sent to it this tick (held, or the account is unreadable).
    pub(super) async fn room(&self, model: &ModelSpec) -> Result<Option<u64>, ()> {
        let account = match self.ledger.enqueued(&model.key).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(model = %model.key, error = %e, "offload: cannot read the enqueued-token account; not sending this tick");
                return Err(());
            }
        };
        if account.held_until > now_secs() {
            return Err(());
        }
        let configured = model.batch.and_then(|b| b.enqueued_token_limit);
        let learned = (account.learned_limit > 0).then_some(account.learned_limit);
        let limit = match (configured, learned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(limit.map(|limit| limit.saturating_sub(account.tokens)))
    }

    /// Puts `pb`'s share into its model's account (`Some`), or takes it out (`None`).
    pub(super) async fn share(
        &self,
        record: &BatchRecord,
        pb: &ProviderBatch,
        tokens: Option<u64>,
    ) -> bool {
        let member = format!("{}/{}", record.id, pb.key);
        match self.ledger.set_enqueued(&pb.model, &member, tokens).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(key = %pb.key, error = %e, "offload: cannot update the enqueued-token account");
                false
            }
        }
    }

    /// Takes each ended provider batch's share out of its model's enqueued-token account.
    pub(super) async fn release_shares(&self, record: &BatchRecord, lane: &mut LaneState) {
        for index in 0..lane.provider_batches.len() {
            let pb = &lane.provider_batches[index];
            if pb.phase == Phase::Done && pb.shared && self.share(record, pb, None).await {
                lane.provider_batches[index].shared = false;
            }
        }
    }

    /// The provider refused `pb` for its model's quota: nothing more goes to that model until
    /// one of batchyard's own provider batches for it ends, or for a while if none is open.
    pub(super) async fn quota_refused(&self, pb: &ProviderBatch, message: &str) {
        let until = now_secs() + QUOTA_HOLD_SECS;
        let limit = named_limit(message);
        tracing::warn!(model = %pb.model, key = %pb.key, ?limit, "offload: the provider refused a batch for its enqueued-token quota");
        if let Err(e) = self.ledger.hold_enqueued(&pb.model, until, limit).await {
            tracing::warn!(model = %pb.model, error = %e, "offload: cannot hold the model's quota");
        }
    }

    /// Whether `pb`'s items may run real-time before it ends. Under a budget its answers may
    /// still come and be paid, so its worst case is reserved first (released to what they
    /// cost when it is ingested); without room for it, the items wait for the cancelled
    /// batch to end instead. Fail closed: no reservation, no giving back.
    pub(super) async fn may_give_back(&self, record: &BatchRecord, pb: &ProviderBatch) -> bool {
        if record.budget_usd.is_none() || pb.remote_id.is_none() {
            return true;
        }
        let tag = offload_tag(pb);
        match self
            .ledger
            .reserve(&record.id, &tag, pb.worst_nanos.max(1))
            .await
        {
            Ok(Reservation::Granted | Reservation::Unlimited) => true,
            Ok(Reservation::Denied { .. }) => {
                tracing::warn!(key = %pb.key, "offload: the budget has no room for a cancelled provider batch's answers; its items wait for it to end");
                false
            }
            Err(e) => {
                tracing::warn!(key = %pb.key, error = %e, "offload: cannot reserve for a cancelled provider batch; trying again next tick");
                false
            }
        }
    }
}

/// The limit a quota refusal names: OpenAI's message reads "… Limit: 90,000 enqueued tokens.
/// …".
fn named_limit(message: &str) -> Option<u64> {
    let rest = &message[message.find("Limit: ")? + "Limit: ".len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// The ledger's name for what a provider batch's unused answers cost.
pub(super) fn offload_tag(pb: &ProviderBatch) -> String {
    format!("offload:{}", pb.key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn w(bytes: u64, tokens: u64) -> Weight {
        Weight {
            bytes,
            tokens,
            worst_nanos: 0,
        }
    }

    #[test]
    fn the_limit_a_quota_refusal_names_is_read() {
        let openai = "Enqueued token limit reached for gpt-4o in organization org-x. \
                      Limit: 90,000 enqueued tokens. Please try again once some in_progress \
                      batches have been completed.";
        assert_eq!(named_limit(openai), Some(90_000));
        assert_eq!(named_limit("Limit: 1200 enqueued tokens"), Some(1200));
        assert_eq!(named_limit("quota reached"), None);
        assert_eq!(named_limit("Limit: 0 tokens"), None);
    }

    #[test]
    fn a_group_is_cut_by_count_and_by_file_size() {
        let items = vec![w(10, 1); 7];
        assert_eq!(split(&items, 3, 1000, None), vec![0..3, 3..6, 6..7]);
        assert_eq!(split(&items, 100, 25, None), vec![0..2, 2..4, 4..6, 6..7]);
        assert_eq!(split(&items, 100, 1000, None), vec![0..7]);
        assert!(split(&[], 3, 1000, None).is_empty());
    }

    #[test]
    fn an_item_bigger_than_a_file_goes_alone() {
        let items = vec![w(10, 1), w(500, 1), w(10, 1)];
        assert_eq!(split(&items, 100, 100, None), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn the_quota_room_stops_the_cut() {
        let items = vec![w(10, 40); 10];
        // Room for 2.5 items: 2 go, the rest waits for room.
        assert_eq!(split(&items, 100, 1000, Some(100)), vec![0..2]);
        assert_eq!(split(&items, 1, 1000, Some(100)), vec![0..1, 1..2]);
        assert!(split(&items, 100, 1000, Some(39)).is_empty());
        assert_eq!(split(&items, 100, 1000, Some(400)), vec![0..10]);
    }
}

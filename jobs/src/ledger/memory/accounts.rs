//! The memory ledger's side accounts: where each batch's end notification stands, and the
//! offload lane's enqueued-token accounts by model (the Redis ledger's `notify` and
//! `enqueued` modules).

use std::collections::HashMap;
use std::time::Duration;

use super::MemoryLedger;
use crate::ledger::Enqueued;

/// Where one batch's end notification stands.
#[derive(Default)]
pub(super) struct Notification {
    pub(super) ended_at: u64,
    pub(super) attempts: u32,
    pub(super) next_at: u64,
    pub(super) done: bool,
}

/// One model's enqueued-token account.
#[derive(Default)]
pub(super) struct Account {
    pub(super) shares: HashMap<String, u64>,
    pub(super) held_until: u64,
    pub(super) learned_limit: u64,
}

impl MemoryLedger {
    pub(super) async fn claim_notify(
        &self,
        batch_id: &str,
        ended_at: u64,
        now: u64,
        hold: Duration,
    ) -> Option<u32> {
        let mut all = self.notifications.lock().await;
        let n = all.entry(batch_id.to_owned()).or_default();
        if n.ended_at != ended_at {
            *n = Notification {
                ended_at,
                ..Notification::default()
            };
        }
        if n.done || n.next_at > now {
            return None;
        }
        n.attempts += 1;
        n.next_at = now + hold.as_secs().max(1);
        Some(n.attempts)
    }

    pub(super) async fn settle_notify(&self, batch_id: &str, retry_at: Option<u64>) {
        let mut all = self.notifications.lock().await;
        let n = all.entry(batch_id.to_owned()).or_default();
        match retry_at {
            Some(at) => n.next_at = at,
            None => n.done = true,
        }
    }

    pub(super) async fn set_share(&self, model: &str, member: &str, tokens: Option<u64>) {
        let mut accounts = self.enqueued.lock().await;
        let account = accounts.entry(model.to_owned()).or_default();
        match tokens {
            Some(n) => {
                account.shares.insert(member.to_owned(), n);
            }
            None => {
                account.shares.remove(member);
                account.held_until = 0;
            }
        }
    }

    pub(super) async fn hold_account(&self, model: &str, until_unix: u64, limit: Option<u64>) {
        let mut accounts = self.enqueued.lock().await;
        let account = accounts.entry(model.to_owned()).or_default();
        match limit {
            Some(n) => account.learned_limit = n,
            None => account.held_until = until_unix,
        }
    }

    pub(super) async fn account(&self, model: &str) -> Enqueued {
        let accounts = self.enqueued.lock().await;
        accounts
            .get(model)
            .map(|a| Enqueued {
                tokens: a.shares.values().sum(),
                held_until: a.held_until,
                learned_limit: a.learned_limit,
            })
            .unwrap_or_default()
    }
}

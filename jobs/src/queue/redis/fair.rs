//! The claim order on Redis: publishing a batch's backlog into it, refilling the stream's
//! ready window from it (`scripts/refill.lua`), and reading the shares back for status.
//!
//! The stream holds at most `ready_window` undelivered jobs; everything else waits in its
//! batch's backlog (the staging list it was submitted into) until a refill picks it, so a
//! new or higher-priority batch is at most one window behind the head of the queue.

use std::collections::{BTreeMap, HashMap};

use super::{GROUP, RedisQueue};
use crate::error::QueueError;
use crate::keys;
use crate::queue::{FairClass, Shares};

/// Jobs moved per pick of the refill: the sorted-set updates are paid once per pick, and
/// the order is exact to within one pick.
const PICK: usize = 8;
/// Slots of the served counters (10 s each) that make up the share window.
const SHARE_SLOTS: u64 = 6;
const SLOT_SECS: u64 = 10;

impl RedisQueue {
    /// KEYS[2..=6] of both claim-order scripts: `fair:b`, `fair:w`, `fair:n`, `fair:prios`,
    /// `fair:vt`.
    fn order_keys<'a, 'b>(
        &self,
        invocation: &'a mut redis::ScriptInvocation<'b>,
    ) -> &'a mut redis::ScriptInvocation<'b> {
        let name = &self.opts.name;
        invocation
            .key(keys::queue_fair_batches(name))
            .key(keys::queue_fair_weights(name))
            .key(keys::queue_fair_waiting(name))
            .key(keys::queue_fair_prios(name))
            .key(keys::queue_fair_clock(name))
    }

    pub(super) async fn publish_fair(
        &self,
        staging: &str,
        class: &FairClass,
    ) -> Result<u64, QueueError> {
        let name = &self.opts.name;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.fair_publish.key(self.staged_key(staging));
        let waiting: u64 = self
            .order_keys(&mut invocation)
            .arg(staging)
            .arg(class.priority.value())
            .arg(&class.tenant)
            .arg(class.weight.unwrap_or(0))
            .arg(keys::queue_fair_base(name))
            .invoke_async(&mut conn)
            .await?;
        // Workers blocked on an empty stream wake as soon as the window has jobs.
        self.refill().await?;
        Ok(waiting)
    }

    /// Tops the stream's ready window up from the backlogs, in the claim order; returns how
    /// many jobs moved. Cheap when nothing waits (one `GET`).
    pub async fn refill(&self) -> Result<u64, QueueError> {
        let name = &self.opts.name;
        let window = self.opts.ready_window.max(1);
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.refill.key(&self.stream);
        let moved: u64 = self
            .order_keys(&mut invocation)
            .arg(GROUP)
            .arg(keys::queue_fair_base(name))
            .arg(keys::queue_staged(name, ""))
            .arg(window)
            .arg(window)
            .arg(PICK)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
    }

    pub(super) async fn read_shares(&self) -> Result<Shares, QueueError> {
        let name = &self.opts.name;
        let mut conn = self.conn.clone();
        let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_slot = secs / SLOT_SECS;
        let mut pipe = redis::pipe();
        pipe.hgetall(keys::queue_fair_batches(name))
            .hgetall(keys::queue_fair_weights(name));
        for back in 0..SHARE_SLOTS {
            pipe.hgetall(keys::queue_fair_served(name, now_slot.saturating_sub(back)));
        }
        let mut replies: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let served = replies.split_off(2.min(replies.len()));
        let mut shares = Shares {
            window_secs: SHARE_SLOTS * SLOT_SECS,
            ..Shares::default()
        };
        let mut replies = replies.into_iter();
        for (staging, place) in replies.next().unwrap_or_default() {
            if let Some((prio, tenant)) = place.split_once('|')
                && let Ok(prio) = prio.parse::<i32>()
            {
                shares.active.insert(staging, (prio, tenant.to_string()));
            }
        }
        shares.weights = replies
            .next()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(t, w)| Some((t, w.parse::<u32>().ok()?)))
            .collect();
        for slot in served {
            for (field, count) in slot {
                let count: u64 = count.parse().unwrap_or(0);
                let (map, key): (&mut BTreeMap<String, u64>, &str) = match field.split_once(':') {
                    Some(("b", id)) => (&mut shares.batches, id),
                    Some(("t", tenant)) => (&mut shares.tenants, tenant),
                    _ => continue,
                };
                *map.entry(key.to_string()).or_default() += count;
            }
        }
        Ok(shares)
    }
}

//! The real-time throughput the fleet measured on recent items: what the offload lane's
//! deadline is judged on where a model declares no rate limits.
//!
//! A count of items settled per second undercounts when little ran real-time (a batch whose
//! items all went to provider batches runs a handful real-time), so it would make the lane
//! switch to real-time for nothing. What is measured instead is the mean time one real-time
//! item held a worker slot (its calls, limiter waits and retries included), and the rate is
//! the fleet's slots (the workers' `concurrency`, summed over the workers seen in the last
//! two minutes) over that time: what the workers do when every slot is busy, never more.
//!
//! Recording is an in-process add (nothing talks to Redis per job). Shared through Redis, each
//! worker's counts are pushed to the one hash [`batchyard_jobs::keys::REALTIME_RATE`] when
//! its offload coordinator ticks, one field per minute (the server's clock), so any
//! coordinator reads the whole fleet's; in process (`run`) the window is kept here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use ::redis::Script;
use batchyard_jobs::batch::now_secs;
use batchyard_jobs::outcome::OutputLine;
use batchyard_jobs::redis_conn::RedisConn;

/// The minutes of history a measurement looks at.
pub const WINDOW_MINUTES: u64 = 5;
/// Fewer real-time items than this in the window is no measurement.
pub const MIN_ITEMS: u64 = 10;

/// Counts of real-time items.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub items: u64,
    pub busy_ms: u64,
    pub tokens: u64,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.items += other.items;
        self.busy_ms += other.busy_ms;
        self.tokens += other.tokens;
    }
}

/// What the window holds, when it holds enough.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Real-time items settled in the window.
    pub items: u64,
    /// The mean time one of them held a worker slot.
    pub secs_per_item: f64,
    /// Prompt and output tokens per item.
    pub tokens_per_item: f64,
    /// Worker slots seen in the last two minutes.
    pub slots: u64,
}

impl Measured {
    /// Items a second with every slot busy.
    pub fn items_per_sec(&self) -> f64 {
        self.slots.max(1) as f64 / self.secs_per_item.max(0.001)
    }

    fn of(sample: Sample, slots: u64) -> Option<Self> {
        if sample.items < MIN_ITEMS {
            return None;
        }
        Some(Self {
            items: sample.items,
            secs_per_item: sample.busy_ms as f64 / 1000.0 / sample.items as f64,
            tokens_per_item: sample.tokens as f64 / sample.items as f64,
            slots: slots.max(1),
        })
    }
}

struct Shared {
    conn: RedisConn,
    owner: String,
}

/// One process's meter: records its real-time items, measures the fleet's.
pub struct RealtimeMeter {
    slots: u64,
    /// Counts not pushed to Redis yet (shared), or the minute buckets (in process).
    pending: Mutex<Sample>,
    window: Mutex<VecDeque<(u64, Sample)>>,
    shared: Option<Shared>,
}

/// KEYS: the rate hash. ARGV: items, busy ms, tokens, owner, slots, minutes kept.
const PUSH_LUA: &str = r#"
local t = redis.call('TIME')
local m = math.floor(tonumber(t[1]) / 60)
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], m .. ':items', ARGV[1])
  redis.call('HINCRBY', KEYS[1], m .. ':busy_ms', ARGV[2])
  redis.call('HINCRBY', KEYS[1], m .. ':tokens', ARGV[3])
end
redis.call('HSET', KEYS[1], m .. ':slots:' .. ARGV[4], ARGV[5])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local fm = tonumber(string.match(f, '^(%d+):'))
  if fm == nil or fm <= m - tonumber(ARGV[6]) then redis.call('HDEL', KEYS[1], f) end
end
redis.call('EXPIRE', KEYS[1], 3600)
return m
"#;

/// KEYS: the rate hash. ARGV: window minutes. Returns items, busy ms, tokens, slots.
const READ_LUA: &str = r#"
local t = redis.call('TIME')
local m = math.floor(tonumber(t[1]) / 60)
local w = tonumber(ARGV[1])
local kv = redis.call('HGETALL', KEYS[1])
local items, busy, tokens = 0, 0, 0
local owners = {}
for i = 1, #kv, 2 do
  local fm, rest = string.match(kv[i], '^(%d+):(.*)$')
  local v = tonumber(kv[i + 1]) or 0
  fm = tonumber(fm)
  if fm ~= nil and fm > m - w then
    if rest == 'items' then items = items + v
    elseif rest == 'busy_ms' then busy = busy + v
    elseif rest == 'tokens' then tokens = tokens + v
    elseif fm >= m - 1 then
      local o = string.match(rest, '^slots:(.*)$')
      if o ~= nil and (owners[o] or 0) < v then owners[o] = v end
    end
  end
end
local slots = 0
for _, s in pairs(owners) do slots = slots + s end
return {items, busy, tokens, slots}
"#;

impl RealtimeMeter {
    /// The meter of `batchyard run`: this process is the whole fleet.
    pub fn in_process(slots: usize) -> Self {
        Self {
            slots: slots as u64,
            pending: Mutex::default(),
            window: Mutex::default(),
            shared: None,
        }
    }

    /// A worker's meter, shared with every other worker through Redis.
    pub fn shared(conn: RedisConn, owner: String, slots: usize) -> Self {
        Self {
            shared: Some(Shared { conn, owner }),
            ..Self::in_process(slots)
        }
    }

    /// Counts one settled item if it was answered real-time (a call, not a provider batch's
    /// answer, the result cache or the simulated provider).
    pub fn observe(&self, line: &OutputLine, took: Duration) {
        let ext = &line.batchyard;
        if ext.cached || ext.simulated {
            return;
        }
        let calls: Vec<_> = ext
            .cascade
            .iter()
            .filter(|s| s.provider_batch.is_none() && !s.cached)
            .collect();
        if calls.is_empty() {
            return;
        }
        let tokens = calls.iter().map(|s| s.input_tokens + s.output_tokens).sum();
        self.record(took, tokens);
    }

    /// Counts one real-time item that held a slot for `took`.
    pub fn record(&self, took: Duration, tokens: u64) {
        let one = Sample {
            items: 1,
            busy_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            tokens,
        };
        if self.shared.is_some() {
            if let Ok(mut p) = self.pending.lock() {
                p.add(one);
            }
            return;
        }
        let minute = now_secs() / 60;
        if let Ok(mut w) = self.window.lock() {
            match w.back_mut() {
                Some((m, s)) if *m == minute => s.add(one),
                _ => w.push_back((minute, one)),
            }
            while w
                .front()
                .is_some_and(|(m, _)| *m + WINDOW_MINUTES <= minute)
            {
                w.pop_front();
            }
        }
    }

    /// Pushes this worker's counts (and its slots, so the fleet's capacity counts it) to
    /// Redis. What Redis refuses stays pending for the next push.
    pub async fn push(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let taken = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let mut conn = shared.conn.clone();
        let pushed: Result<u64, _> = Script::new(PUSH_LUA)
            .key(batchyard_jobs::keys::REALTIME_RATE)
            .arg(taken.items)
            .arg(taken.busy_ms)
            .arg(taken.tokens)
            .arg(&shared.owner)
            .arg(self.slots)
            .arg(WINDOW_MINUTES + 1)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = pushed {
            tracing::debug!(error = %e, "cannot push the real-time throughput; next tick");
            if let Ok(mut p) = self.pending.lock() {
                p.add(taken);
            }
        }
    }

    /// The fleet's recent real-time throughput, or `None` while too few items ran
    /// real-time in the window (or Redis cannot say). Shared, it reads what the workers
    /// pushed (a submitting process is no worker: it neither pushes nor counts its slots).
    pub async fn measure(&self) -> Option<Measured> {
        let Some(shared) = &self.shared else {
            let minute = now_secs() / 60;
            let mut sum = Sample::default();
            if let Ok(w) = self.window.lock() {
                for (m, s) in w.iter() {
                    if m + WINDOW_MINUTES > minute {
                        sum.add(*s);
                    }
                }
            }
            return Measured::of(sum, self.slots);
        };
        let mut conn = shared.conn.clone();
        let read: Result<(u64, u64, u64, u64), _> = Script::new(READ_LUA)
            .key(batchyard_jobs::keys::REALTIME_RATE)
            .arg(WINDOW_MINUTES)
            .invoke_async(&mut conn)
            .await;
        match read {
            Ok((items, busy_ms, tokens, slots)) => Measured::of(
                Sample {
                    items,
                    busy_ms,
                    tokens,
                },
                slots,
            ),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the real-time throughput");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn too_few_items_are_no_measurement() {
        let meter = RealtimeMeter::in_process(8);
        for _ in 0..MIN_ITEMS - 1 {
            meter.record(Duration::from_millis(500), 100);
        }
        assert_eq!(meter.measure().await, None);
        meter.record(Duration::from_millis(500), 100);
        let m = meter.measure().await.unwrap();
        assert_eq!(m.items, MIN_ITEMS);
        assert!((m.secs_per_item - 0.5).abs() < 1e-9);
        assert!((m.tokens_per_item - 100.0).abs() < 1e-9);
        // Eight slots, half a second an item.
        assert!((m.items_per_sec() - 16.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn slow_items_lower_the_rate() {
        let meter = RealtimeMeter::in_process(4);
        for _ in 0..20 {
            meter.record(Duration::from_secs(2), 0);
        }
        let m = meter.measure().await.unwrap();
        assert!((m.items_per_sec() - 2.0).abs() < 1e-9, "{m:?}");
    }
}

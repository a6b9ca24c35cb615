//! Queue depth over the last hour, sampled by `serve` itself, so a dashboard opened now shows
//! the hour behind it instead of starting empty. With Redis the samples are kept there too
//! (a sorted set by time, at most [`POINTS`] of the last hour), so the history survives a
//! restart of `serve`, and several `serve` processes share one history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use batchyard_jobs::batch::now_secs;
use batchyard_jobs::queue::{Queue, QueueDepth};
use batchyard_jobs::redis_conn::RedisConn;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often the depth is sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// One hour of samples at [`EVERY`].
pub const POINTS: usize = 360;

/// The queue depth at one moment (`t`, Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub t: u64,
    pub pending: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead: u64,
}

impl Point {
    pub fn new(t: u64, d: QueueDepth) -> Self {
        Self {
            t,
            pending: d.pending,
            in_flight: d.in_flight,
            delayed: d.delayed,
            dead: d.dead,
        }
    }
}

/// Adds one sample unless another `serve` added one within half an interval, then drops
/// samples older than an hour and beyond the newest `ARGV[4]`.
const PUSH_LUA: &str = r#"
local t = tonumber(ARGV[1])
if redis.call('ZCOUNT', KEYS[1], t - tonumber(ARGV[3]), '+inf') > 0 then return 0 end
redis.call('ZADD', KEYS[1], t, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (t - 3600))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
return 1
"#;

/// Where the samples live in Redis.
#[derive(Clone)]
pub struct Persist {
    conn: RedisConn,
    key: String,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist").field("key", &self.key).finish()
    }
}

impl Persist {
    pub fn new(conn: RedisConn, queue: &str) -> Self {
        Self {
            conn,
            key: batchyard_jobs::keys::api_queue_history(queue),
        }
    }
}

/// A bounded ring of samples, oldest first, shared by the sampler and the handlers.
#[derive(Debug, Clone)]
pub struct QueueHistory {
    points: Arc<Mutex<VecDeque<Point>>>,
    capacity: usize,
    persist: Option<Persist>,
}

impl Default for QueueHistory {
    fn default() -> Self {
        Self::with_capacity(POINTS)
    }
}

impl QueueHistory {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            points: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity: capacity.max(1),
            persist: None,
        }
    }

    /// Keeps the samples in Redis as well, and reads them from there.
    pub fn persisted(mut self, persist: Persist) -> Self {
        self.persist = Some(persist);
        self
    }

    /// The samples of the last hour, oldest first: from Redis when it is kept there (this
    /// process's own samples when Redis can't be read).
    pub async fn read(&self) -> Vec<Point> {
        let Some(p) = &self.persist else {
            return self.points();
        };
        let since = now_secs().saturating_sub(3600);
        let got: Result<Vec<String>, _> = p.conn.clone().zrangebyscore(&p.key, since, "+inf").await;
        match got {
            Ok(raw) => raw
                .iter()
                .filter_map(|r| serde_json::from_str(r).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the queue history from redis; showing this process's samples");
                self.points()
            }
        }
    }

    async fn store(&self, point: Point) {
        let Some(p) = &self.persist else { return };
        let Ok(json) = serde_json::to_string(&point) else {
            return;
        };
        let added: Result<i64, _> = redis::Script::new(PUSH_LUA)
            .key(&p.key)
            .arg(point.t)
            .arg(json)
            .arg(EVERY.as_secs() / 2)
            .arg(self.capacity)
            .invoke_async(&mut p.conn.clone())
            .await;
        if let Err(e) = added {
            tracing::warn!(error = %e, "cannot keep a queue history sample in redis");
        }
    }

    pub fn push(&self, point: Point) {
        // A panic elsewhere can't leave a ring half-written, so a poisoned lock is still usable.
        let mut points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        while points.len() >= self.capacity {
            points.pop_front();
        }
        points.push_back(point);
    }

    pub fn points(&self) -> Vec<Point> {
        let points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        points.iter().copied().collect()
    }
}

/// Samples `queue` every `every` until `stop`; the first sample is taken at once.
pub async fn sample(
    queue: Arc<dyn Queue>,
    history: QueueHistory,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match queue.depth().await {
            Ok(depth) => {
                let point = Point::new(now_secs(), depth);
                history.push(point);
                history.store(point).await;
            }
            // A gap in the history says Redis was away; the next tick tries again.
            Err(e) => tracing::warn!(error = %e, "cannot sample the queue depth for its history"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::queue::memory::MemoryQueue;

    #[test]
    fn the_ring_keeps_the_newest_points() {
        let h = QueueHistory::with_capacity(3);
        for t in 0..5 {
            h.push(Point::new(t, QueueDepth::default()));
        }
        let ts: Vec<u64> = h.points().iter().map(|p| p.t).collect();
        assert_eq!(ts, vec![2, 3, 4]);
        assert_eq!(QueueHistory::default().capacity, POINTS);
    }

    #[tokio::test]
    async fn the_sampler_records_at_once_and_stops() {
        let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new(Default::default()));
        let h = QueueHistory::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(
            queue,
            h.clone(),
            Duration::from_secs(3600),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while h.points().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no sample");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(h.points().len(), 1);
    }
}

//! Queue depth over the last hour, sampled by `serve` itself, so a dashboard opened now shows
//! the hour behind it instead of starting empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use batchyard_jobs::batch::now_secs;
use batchyard_jobs::queue::{Queue, QueueDepth};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the depth is sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// One hour of samples at [`EVERY`].
pub const POINTS: usize = 360;

/// The queue depth at one moment (`t`, Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// A bounded ring of samples, oldest first, shared by the sampler and the handlers.
#[derive(Debug, Clone)]
pub struct QueueHistory {
    points: Arc<Mutex<VecDeque<Point>>>,
    capacity: usize,
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
            Ok(depth) => history.push(Point::new(now_secs(), depth)),
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

//! Jobs that let go of their slot before they end. A job whose remaining work is only waiting
//! (for the segment holding its outcome to be written, then settle and ack) frees its slot, so
//! the pool claims the next job meanwhile; it goes on in its own task, its claim still renewed
//! by the heartbeat until it ends. A pool holds at most [`HELD_PER_SLOT`] such jobs per slot:
//! past that, a job keeps its slot until one ends, which is the back pressure on a slow store.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Jobs a pool holds past their slot, per slot of concurrency.
pub const HELD_PER_SLOT: usize = 16;

/// Given to [`super::DeliveryHandler::handle_held`]: lets the job free its slot early.
#[derive(Debug)]
pub struct Held {
    pool: Option<PoolSide>,
}

#[derive(Debug)]
struct PoolSide {
    permits: Arc<Semaphore>,
    release: Option<oneshot::Sender<()>>,
    /// Held until the job ends: it counts toward the pool's bound.
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Outside a pool (the handler called directly): there is no slot to free, and the job
    /// ends before the call returns.
    pub fn inline() -> Self {
        Self { pool: None }
    }

    /// A job of a pool whose bound is `permits`; the receiver hears once the job frees its
    /// slot (or closes when the job ends without freeing it).
    pub(super) fn new(permits: Arc<Semaphore>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let side = PoolSide {
            permits,
            release: Some(tx),
            permit: None,
        };
        (Self { pool: Some(side) }, rx)
    }

    /// Frees the job's slot: the pool claims the next job while this one goes on. Waits while
    /// the pool already holds its bound of such jobs.
    pub async fn release_slot(&mut self) {
        let Some(side) = &mut self.pool else { return };
        if side.release.is_none() {
            return;
        }
        // Closed only if the pool is gone: then the job just keeps its slot.
        let Ok(permit) = Arc::clone(&side.permits).acquire_owned().await else {
            return;
        };
        side.permit = Some(permit);
        if let Some(tx) = side.release.take() {
            let _ = tx.send(());
        }
    }
}

/// Jobs held past their slot now, of a pool whose bound is `bound` permits of `permits`.
pub(super) fn held_now(permits: &Semaphore, bound: usize) -> usize {
    bound.saturating_sub(permits.available_permits())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn release_is_bounded_and_returned_when_the_job_ends() {
        let permits = Arc::new(Semaphore::new(2));
        let (mut a, ra) = Held::new(Arc::clone(&permits));
        let (mut b, rb) = Held::new(Arc::clone(&permits));
        let (mut c, rc) = Held::new(Arc::clone(&permits));
        a.release_slot().await;
        b.release_slot().await;
        ra.await.unwrap();
        rb.await.unwrap();
        assert_eq!(held_now(&permits, 2), 2);
        // The bound is reached: the third waits until a held job ends.
        let third = tokio::spawn(async move {
            c.release_slot().await;
            c
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("a freed permit lets the third go")
            .unwrap();
        rc.await.unwrap();
        drop((b, c));
        assert_eq!(held_now(&permits, 2), 0);
        let mut inline = Held::inline();
        inline.release_slot().await;
    }
}

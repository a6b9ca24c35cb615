//! The heartbeat: renews the claims of the deliveries this process is running, so a call that
//! outlasts the visibility timeout is not reclaimed (and paid for twice) while its worker
//! lives. One queue call per beat covers every running delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchyard_jobs::queue::Queue;
use tokio_util::sync::CancellationToken;

/// The deliveries running now: handle -> delivery count.
#[derive(Debug, Default)]
pub(crate) struct Running(Mutex<HashMap<String, u64>>);

impl Running {
    pub(crate) fn start(&self, handle: &str, deliveries: u64) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(handle.to_string(), deliveries);
        }
    }

    pub(crate) fn end(&self, handle: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(handle);
        }
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .map(|map| map.iter().map(|(h, n)| (h.clone(), *n)).collect())
            .unwrap_or_default()
    }
}

/// Renews every running delivery's claim each `every` until `stop`. Errors are logged: a
/// missed beat only matters if the next ones miss too, and then the job is reclaimed.
pub(crate) async fn beat(
    queue: Arc<dyn Queue>,
    consumer: String,
    running: Arc<Running>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let held = running.snapshot();
        if held.is_empty() {
            continue;
        }
        match queue.extend(&consumer, &held).await {
            Ok(lost) if !lost.is_empty() => tracing::warn!(
                consumer = %consumer,
                lost = lost.len(),
                "running jobs were reclaimed by another worker (this one stalled); their answers will not overwrite the other's"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(consumer = %consumer, error = %e, "cannot renew the claims of running jobs")
            }
        }
    }
}

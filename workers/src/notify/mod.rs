//! Webhooks: a batch's end (`completed`, `failed`, `expired`, `cancelled`) announced by a
//! signed POST to its `--notify` URL (or `[notify] url`), per the Standard Webhooks spec
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`). Delivered at least once: every
//! worker runs a [`Notifier`]; the ledger hands each attempt to one of them, and a failed
//! attempt is tried again after a growing pause, for a day. Every attempt for one end carries
//! the same `webhook-id`, so a receiver can drop repeats.
//!
//! - `sign`: the Standard Webhooks signature.
//!
//! May use: the jobs crate. Used by the binary.

pub mod sign;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, now_secs};
use batchyard_jobs::ledger::Ledger;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use sign::Signer;

/// `[notify]`.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Where batches without a `--notify` URL of their own are announced.
    pub url: Option<String>,
    /// Signs each delivery; `None`: sent unsigned (the receiver can't tell it is ours).
    pub signer: Option<Signer>,
    /// The pause after the first failed attempt; each next one is 6 times longer (at most
    /// 10 hours).
    pub retry_base: Duration,
    /// No attempt is made this long after the batch ended.
    pub give_up_after: Duration,
    /// How often ended batches are looked at.
    pub poll_interval: Duration,
    /// How long one delivery may take.
    pub timeout: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            url: None,
            signer: None,
            retry_base: Duration::from_secs(5),
            give_up_after: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The batch object a notification carries (the binary's `status --json` shape).
pub type Render = Arc<dyn Fn(&BatchRecord) -> Value + Send + Sync>;

/// Announces the end of each batch that asked for it. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    ledger: Arc<dyn Ledger>,
    options: Arc<NotifyOptions>,
    render: Render,
    http: reqwest::Client,
    /// Ends already delivered or given up by this process: not looked at again.
    settled: Arc<Mutex<HashSet<(String, u64)>>>,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Failed(String),
}

impl Notifier {
    pub fn new(ledger: Arc<dyn Ledger>, options: NotifyOptions, render: Render) -> Self {
        // Redirects are not followed: a webhook URL says where the event goes, and a
        // redirect would carry it (and its signature) somewhere the user did not name.
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            ledger,
            options: Arc::new(options),
            render,
            http,
            settled: Arc::default(),
        }
    }

    /// Delivers what is due, every `poll_interval`, until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        loop {
            self.tick_all().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }

    /// One pass over the ended batches that asked to be announced.
    pub async fn tick_all(&self) {
        let batches = match self.ledger.list(500).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "notify: cannot list batches; trying again next tick");
                return;
            }
        };
        for record in batches {
            if !record.state.is_terminal() {
                continue;
            }
            let Some(url) = record.notify_url.clone().or(self.options.url.clone()) else {
                continue;
            };
            let ended_at = record.completed_at.unwrap_or(record.created_at);
            let key = (record.id.clone(), ended_at);
            if self.settled.lock().is_ok_and(|s| s.contains(&key)) {
                continue;
            }
            self.notify(&record, &url, ended_at).await;
        }
    }

    async fn notify(&self, record: &BatchRecord, url: &str, ended_at: u64) {
        let now = now_secs();
        let late = now.saturating_sub(ended_at) > self.options.give_up_after.as_secs();
        let hold = self.options.timeout + Duration::from_secs(5);
        let attempt = match self
            .ledger
            .claim_notification(&record.id, ended_at, now, hold)
            .await
        {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(batch_id = %record.id, error = %e, "notify: cannot claim a delivery; trying again next tick");
                return;
            }
        };
        let target = host_of(url);
        let next = if late {
            tracing::warn!(batch_id = %record.id, target, attempt, "notify: gave up: the batch ended more than the retry window ago");
            crate::metrics::notified("gave_up");
            None
        } else {
            match self.deliver(record, url, ended_at).await {
                Attempt::Delivered => {
                    tracing::info!(batch_id = %record.id, target, attempt, "notify: delivered");
                    crate::metrics::notified("delivered");
                    None
                }
                Attempt::Failed(why) => {
                    let pause = self.pause_after(attempt);
                    tracing::warn!(batch_id = %record.id, target, attempt, why, retry_in_secs = pause.as_secs(), "notify: delivery failed; trying again");
                    crate::metrics::notified("failed");
                    Some(now_secs() + pause.as_secs())
                }
            }
        };
        if next.is_none()
            && let Ok(mut settled) = self.settled.lock()
        {
            if settled.len() > 10_000 {
                settled.clear();
            }
            settled.insert((record.id.clone(), ended_at));
        }
        if let Err(e) = self.ledger.settle_notification(&record.id, next).await {
            // The hold lapses and the attempt is made again: at least once, never lost.
            tracing::warn!(batch_id = %record.id, error = %e, "notify: cannot record the attempt");
        }
    }

    /// Announces one ended batch now, for a process that ends with it (`batchyard run`):
    /// up to `tries` attempts, `retry_base` apart. True once delivered (or nothing to do).
    pub async fn flush(&self, record: &BatchRecord, tries: u32) -> bool {
        let Some(url) = record.notify_url.clone().or(self.options.url.clone()) else {
            return true;
        };
        let ended_at = record.completed_at.unwrap_or(record.created_at);
        for attempt in 1..=tries.max(1) {
            match self.deliver(record, &url, ended_at).await {
                Attempt::Delivered => {
                    crate::metrics::notified("delivered");
                    return true;
                }
                Attempt::Failed(why) => {
                    crate::metrics::notified("failed");
                    tracing::warn!(batch_id = %record.id, target = host_of(&url), attempt, why, "notify: delivery failed");
                    if attempt < tries {
                        tokio::time::sleep(self.options.retry_base).await;
                    }
                }
            }
        }
        false
    }

    /// The pause after failed attempt `n`: `retry_base` × 6^(n−1), at most 10 hours.
    fn pause_after(&self, n: u32) -> Duration {
        let factor = 6u32.saturating_pow(n.saturating_sub(1).min(12));
        self.options
            .retry_base
            .saturating_mul(factor)
            .min(Duration::from_secs(10 * 3600))
    }

    async fn deliver(&self, record: &BatchRecord, url: &str, ended_at: u64) -> Attempt {
        let id = format!("evt_{}_{ended_at}", record.id);
        let timestamp = now_secs();
        let body = json!({
            "type": format!("batch.{}", record.state.as_str()),
            "timestamp": timestamp,
            "data": (self.render)(record),
        });
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("cannot encode the event: {e}")),
        };
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.options.signer {
            request = request.header("webhook-signature", signer.sign(&id, timestamp, &body));
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => Attempt::Failed(format!("the receiver answered {}", response.status())),
            // Without the URL: it may hold a token (many webhook URLs do).
            Err(e) => Attempt::Failed(describe(&e)),
        }
    }
}

/// The host of a URL, for logs: the rest may carry a token.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "(unparsable url)".into())
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the receiver did not answer in time".into()
    } else if e.is_connect() {
        "cannot connect to the receiver".into()
    } else {
        "the request failed".into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_sixfold_up_to_ten_hours() {
        let n = Notifier::new(
            Arc::new(batchyard_jobs::ledger::memory::MemoryLedger::new()),
            NotifyOptions::default(),
            Arc::new(|_| Value::Null),
        );
        let secs: Vec<u64> = (1..=7).map(|a| n.pause_after(a).as_secs()).collect();
        assert_eq!(secs, [5, 30, 180, 1080, 6480, 36_000, 36_000]);
    }

    #[test]
    fn logs_name_the_host_only() {
        assert_eq!(
            host_of("https://hooks.example.com/services/T0/B0/secret-token"),
            "hooks.example.com"
        );
    }
}

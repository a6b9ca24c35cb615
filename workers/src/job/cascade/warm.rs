//! Cache-warm dispatch: the first call of a worker for a (model, cached prefix) goes alone and
//! the others with that prefix wait for it (at most [`MAX_WAIT`]), so a provider's prompt cache
//! is written once and then read, instead of N concurrent first calls all paying the write
//! (or, with automatic caching, all missing). Only bodies with a cache point (tasks with
//! `prompt_cache = "auto"` and a long static prefix) take part.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::catalog::prompt_cache::cached_prefix;

/// How long the calls after a written prefix go straight on: under the 5-minute TTL
/// Anthropic and OpenAI give a cached prefix, so the cache is still warm when they arrive.
pub const WARM_FOR: Duration = Duration::from_secs(240);
/// The longest a call waits for the one warming its prefix (a slow or stuck first call
/// must not hold the batch back).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Prefixes remembered at most; past it the cold ones are forgotten.
const MAX_KEYS: usize = 4096;

type Key = (String, u64);

enum State {
    /// Its first call is in flight; waiters watch for its end.
    Warming(watch::Receiver<()>),
    /// Written at this instant.
    Warm(Instant),
}

/// A worker's prefixes and their warmth, shared by its concurrent jobs.
pub(crate) struct Warmth {
    keys: Mutex<HashMap<Key, State>>,
    max_wait: Duration,
}

impl Default for Warmth {
    fn default() -> Self {
        Self {
            keys: Mutex::default(),
            max_wait: MAX_WAIT,
        }
    }
}

/// Held by the call that warms a prefix; its drop lets the waiters go.
pub(crate) struct Ticket<'a> {
    warmth: &'a Warmth,
    warming: Option<(Key, watch::Sender<()>)>,
    warmed: bool,
}

impl Ticket<'_> {
    /// The call answered: its prefix is now in the provider's cache.
    pub(crate) fn warmed(&mut self) {
        self.warmed = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some((key, sender)) = self.warming.take() else {
            return;
        };
        let mut keys = self.warmth.lock();
        if self.warmed {
            keys.insert(key, State::Warm(Instant::now()));
        } else {
            // A failed first call wrote nothing: the next call warms it instead.
            keys.remove(&key);
        }
        drop(keys);
        // Dropping the sender wakes every waiter.
        drop(sender);
    }
}

impl Warmth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, State>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits, when another call is warming this body's prefix on `model`, until it ends (at
    /// most [`MAX_WAIT`]); or makes this call the one that warms it.
    pub(crate) async fn enter(&self, model: &str, body: &Map<String, Value>) -> Ticket<'_> {
        let go = Ticket {
            warmth: self,
            warming: None,
            warmed: false,
        };
        let Some(prefix) = cached_prefix(body) else {
            return go;
        };
        let key = (model.to_owned(), prefix.hash);
        let mut waiting = {
            let mut keys = self.lock();
            match keys.get(&key) {
                Some(State::Warm(at)) if at.elapsed() < WARM_FOR => return go,
                Some(State::Warming(receiver)) => receiver.clone(),
                _ => {
                    if keys.len() >= MAX_KEYS {
                        keys.retain(|_, s| match s {
                            State::Warming(_) => true,
                            State::Warm(at) => at.elapsed() < WARM_FOR,
                        });
                    }
                    let (sender, receiver) = watch::channel(());
                    keys.insert(key.clone(), State::Warming(receiver));
                    return Ticket {
                        warming: Some((key, sender)),
                        ..go
                    };
                }
            }
        };
        // Ends when the warming call's ticket is dropped (the sender with it), or at the bound.
        let _ = tokio::time::timeout(self.max_wait, waiting.changed()).await;
        go
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    fn body(doc: &str) -> Map<String, Value> {
        json!({"messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": doc}]})
        .as_object()
        .unwrap()
        .clone()
    }

    #[tokio::test]
    async fn the_first_call_goes_alone_and_the_rest_follow_it() {
        let warmth = Arc::new(Warmth::default());
        let call = Duration::from_millis(200);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (warmth, in_flight, most) = (warmth.clone(), in_flight.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let mut ticket = warmth.enter("m", &body(&format!("doc {i}"))).await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(call).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                ticket.warmed();
                tokio::time::Instant::now()
            }));
            // Let each task reach `enter` in order.
            tokio::task::yield_now().await;
        }
        let mut ends = Vec::new();
        for t in tasks {
            ends.push(t.await.unwrap());
        }
        // One call, then seven at once: two call times in all, not eight.
        assert_eq!(most.load(Ordering::SeqCst), 7);
        let last = ends.iter().max().unwrap();
        assert!(last.duration_since(ends[0]) >= call);
        assert!(last.duration_since(ends[0]) < 4 * call);
        // Warm now: the next call goes straight on; another model warms on its own.
        assert!(warmth.enter("m", &body("x")).await.warming.is_none());
        assert!(warmth.enter("other", &body("x")).await.warming.is_some());
    }

    #[tokio::test]
    async fn a_failed_first_call_hands_warming_on_and_waits_are_bounded() {
        let warmth = Warmth {
            max_wait: Duration::from_millis(100),
            ..Warmth::default()
        };
        let first = warmth.enter("m", &body("a")).await;
        assert!(first.warming.is_some());
        // A stuck first call holds the others back only max_wait.
        let t0 = Instant::now();
        let second = warmth.enter("m", &body("b")).await;
        assert!(second.warming.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(first);
        // It failed (never marked warmed): the next call warms instead.
        assert!(warmth.enter("m", &body("c")).await.warming.is_some());
        // No cache point, no waiting.
        let plain = json!({"messages": [{"role": "user", "content": "x"}]});
        let plain = plain.as_object().unwrap();
        assert!(warmth.enter("m", plain).await.warming.is_none());
    }
}

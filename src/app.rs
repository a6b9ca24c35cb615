//! The running context of a command: settings plus the queue, ledger and store they name.

use std::sync::Arc;

use anyhow::Context;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::memory::MemoryLedger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_jobs::queue::Queue;
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::redis::{RedisQueue, unique_consumer_name};
use batchyard_jobs::storage::ResultStore;
use std::time::Duration;

use batchyard_workers::call::Guards;
use batchyard_workers::call::health::ModelHealth;
use batchyard_workers::call::health::memory::MemoryHealth;
use batchyard_workers::call::health::redis::RedisHealth;
use batchyard_workers::call::limiter::memory::MemoryLimiter;
use batchyard_workers::call::limiter::redis::RedisLimiter;
use batchyard_workers::finalize::Finalizer;
use batchyard_workers::job::cache::ResultCache;
use batchyard_workers::job::runner::JobRunner;
use batchyard_workers::metrics::throughput::RealtimeMeter;
use batchyard_workers::route::adequacy::Adequacy;
use batchyard_workers::route::adequacy::memory::MemoryAdequacy;
use batchyard_workers::route::adequacy::redis::RedisAdequacy;
use batchyard_workers::route::router::Router;

use crate::config::Settings;
use crate::error::UsageError;

pub struct App {
    pub settings: Settings,
    pub queue: Arc<dyn Queue>,
    pub ledger: Arc<dyn Ledger>,
    pub store: ResultStore,
    /// This process's unique consumer identity.
    pub consumer: String,
    /// Model health and rate limits: shared through Redis, or in process for `run`.
    pub guards: Guards,
    pub health: Arc<dyn ModelHealth>,
    /// What the router has learned about which models pass each task.
    pub adequacy: Arc<Adequacy>,
    /// The real-time throughput measured on recent items (shared through Redis, or in
    /// process for `run`): what a deadline is judged on where models declare no limits.
    pub meter: Arc<RealtimeMeter>,
}

impl App {
    /// Connects what the settings name. Without a Redis URL, only `run` may go on, in-process.
    pub async fn connect(
        settings: Settings,
        storage_override: Option<&str>,
        allow_in_process: bool,
        command: &str,
    ) -> anyhow::Result<Self> {
        let storage_url = storage_override
            .unwrap_or(&settings.storage_url)
            .to_string();
        let store = ResultStore::open(&storage_url, &settings.env)
            .map_err(|e| UsageError(e.to_string()))?;
        let consumer = unique_consumer_name();
        let mut guards: Option<Guards> = None;
        let mut adequacy: Option<Arc<Adequacy>> = None;
        let mut meter: Option<Arc<RealtimeMeter>> = None;
        let (queue, ledger): (Arc<dyn Queue>, Arc<dyn Ledger>) = match &settings.redis_url {
            Some(url) => {
                let conn = batchyard_jobs::redis_conn::connect(url)
                    .await
                    .context("cannot connect to redis")?;
                // Blocking claims get their own connection, so they never hold up acks.
                let blocking = batchyard_jobs::redis_conn::connect(url)
                    .await
                    .context("cannot connect to redis")?;
                let queue = Arc::new(
                    RedisQueue::new(conn.clone(), settings.queue.clone())
                        .await
                        .context("cannot open the redis queue")?
                        .with_blocking_connection(blocking),
                );
                // A call may wait for rate-limit capacity, but never long enough for its
                // job to be reclaimed.
                let max_wait = (settings.queue.visibility_timeout / 3).min(Duration::from_secs(30));
                guards = Some(Guards::new(
                    Arc::new(RedisHealth::new(conn.clone(), settings.health.clone())),
                    Arc::new(RedisLimiter::with_tuning(
                        conn.clone(),
                        batchyard_jobs::keys::PREFIX,
                        settings.limits,
                    )),
                    max_wait,
                ));
                adequacy = Some(Arc::new(Adequacy::new(
                    Arc::new(RedisAdequacy::new(
                        conn.clone(),
                        settings.routing.max_evidence,
                    )),
                    settings.routing,
                )));
                meter = Some(Arc::new(RealtimeMeter::shared(
                    conn.clone(),
                    consumer.clone(),
                    settings.concurrency,
                )));
                (
                    queue as Arc<dyn Queue>,
                    Arc::new(RedisLedger::new(conn)) as Arc<dyn Ledger>,
                )
            }
            None if allow_in_process => (
                Arc::new(MemoryQueue::new(settings.queue.clone())) as Arc<dyn Queue>,
                Arc::new(MemoryLedger::new()) as Arc<dyn Ledger>,
            ),
            None => {
                return Err(UsageError(format!(
                        "`batchyard {command}` needs redis; set BATCHYARD_REDIS_URL or [queue] redis_url in the config (only `run` works without it)"
                    ))
                    .into());
            }
        };
        let mut settings = settings;
        settings.storage_url = storage_url;
        // Nothing can resume a paused model inside one process: its items end instead.
        settings.runner.paused_ends_items = settings.redis_url.is_none();
        // In process, the same guards run without Redis.
        let guards = guards.unwrap_or_else(|| {
            Guards::new(
                Arc::new(MemoryHealth::new(settings.health.clone())),
                Arc::new(MemoryLimiter::with_tuning(settings.limits)),
                Duration::from_secs(30),
            )
        });
        let health = Arc::clone(guards.health());
        let adequacy = adequacy.unwrap_or_else(|| {
            Arc::new(Adequacy::new(
                Arc::new(MemoryAdequacy::new(settings.routing.max_evidence)),
                settings.routing,
            ))
        });
        let meter =
            meter.unwrap_or_else(|| Arc::new(RealtimeMeter::in_process(settings.concurrency)));
        Ok(Self {
            meter,
            adequacy,
            settings,
            queue,
            ledger,
            store,
            consumer,
            guards,
            health,
        })
    }

    pub fn finalizer(&self) -> Finalizer {
        Finalizer::new(
            Arc::clone(&self.ledger),
            self.store.clone(),
            self.consumer.clone(),
        )
    }

    /// The router workers use: shared adequacy, the catalog's token estimates.
    pub fn router(&self) -> Router {
        Router::new(Arc::clone(&self.adequacy))
    }

    /// The offload lane's coordinator of this process.
    pub fn coordinator(&self) -> batchyard_workers::offload::Coordinator {
        batchyard_workers::offload::Coordinator::new(
            Arc::clone(&self.queue),
            Arc::clone(&self.ledger),
            self.store.clone(),
            Arc::clone(&self.settings.catalog),
            self.settings.offload.clone(),
            self.consumer.clone(),
        )
        .with_meter(Arc::clone(&self.meter))
    }

    /// The webhook notifier of this process.
    pub fn notifier(&self) -> batchyard_workers::notify::Notifier {
        let store = self.store.clone();
        batchyard_workers::notify::Notifier::new(
            Arc::clone(&self.ledger),
            self.settings.notify.clone(),
            Arc::new(move |record| crate::batch_view::batch_json(record, &store)),
        )
    }

    pub fn runner(&self) -> JobRunner {
        let runner = JobRunner::new(
            Arc::clone(&self.settings.catalog),
            Arc::clone(&self.queue),
            Arc::clone(&self.ledger),
            self.store.clone(),
            self.settings.retry,
            batchyard_workers::job::RunnerOptions {
                segments: batchyard_workers::job::segments::SegmentOptions {
                    slots: self.settings.concurrency,
                    ..self.settings.runner.segments
                },
                ..self.settings.runner.clone()
            },
            self.finalizer(),
        );
        let cache = self
            .settings
            .cache
            .enabled
            .then(|| ResultCache::new(self.store.clone(), self.settings.cache.ttl));
        runner
            .with_guards(self.guards.clone())
            .with_router(self.router())
            .with_cache(cache)
            .with_meter(Arc::clone(&self.meter))
    }
}

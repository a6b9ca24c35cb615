//! The harness of `ledger_budget.rs`: one ledger under test, memory or Redis, with a look at
//! the Redis `:resv` hash, and a watcher of the budget invariant.

/// Runs each scenario as two tests, `on_memory::<scenario>` and `on_redis::<scenario>` (on a
/// throwaway redis-server).
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(super::Target::memory()).await;
                }
            )*
        }

        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let Some(server) = super::TestRedis::start_or_external(stringify!($scenario)) else {
                        return;
                    };
                    super::$scenario(super::Target::redis(&server).await).await;
                }
            )*
        }
    };
}

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use batchyard_jobs::batch::BatchRecord;
use batchyard_jobs::ledger::memory::MemoryLedger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_jobs::ledger::{Ledger, Reservation};
use batchyard_jobs::redis_conn::RedisConn;
use redis::AsyncCommands;

use batchyard_testkit::TestRedis;

use crate::support::{batch_record, unique_name};

pub const USD: i64 = 1_000_000_000;

/// The ledger under test, plus a way to look at the `:resv` hash on Redis.
pub struct Target {
    pub ledger: Arc<dyn Ledger>,
    pub conn: Option<RedisConn>,
}

impl Target {
    pub fn memory() -> Self {
        Self {
            ledger: Arc::new(MemoryLedger::new()),
            conn: None,
        }
    }

    pub async fn redis(server: &TestRedis) -> Self {
        let conn = batchyard_jobs::redis_conn::connect(server.url())
            .await
            .unwrap();
        Self {
            ledger: Arc::new(RedisLedger::new(conn.clone())),
            conn: Some(conn),
        }
    }

    /// Another handle on the same ledger: on Redis, over its own cloned connection manager, as
    /// each worker has.
    pub fn fork(&self) -> Arc<dyn Ledger> {
        match &self.conn {
            Some(conn) => Arc::new(RedisLedger::new(conn.clone())),
            None => Arc::clone(&self.ledger),
        }
    }

    pub async fn create(&self, budget_usd: Option<f64>) -> String {
        let id = unique_name("budget");
        self.ledger.create(&record(&id, budget_usd)).await.unwrap();
        id
    }

    pub async fn get(&self, id: &str) -> BatchRecord {
        self.ledger.get(id).await.unwrap().unwrap()
    }

    /// The Redis reservations hash (job id -> nanos); `None` on the memory ledger.
    pub async fn held(&self, id: &str) -> Option<HashMap<String, i64>> {
        let mut conn = self.conn.clone()?;
        Some(
            conn.hgetall(format!("by:batch:{{{id}}}:resv"))
                .await
                .unwrap(),
        )
    }

    /// On Redis: the hash sums to `reserved_nanos` and holds exactly `jobs`.
    pub async fn assert_held(&self, id: &str, jobs: &[(&str, i64)]) {
        let record = self.get(id).await;
        let expected: i64 = jobs.iter().map(|(_, n)| n).sum();
        assert_eq!(record.reserved_nanos, expected, "reserved_nanos of {id}");
        if let Some(held) = self.held(id).await {
            let want: HashMap<String, i64> =
                jobs.iter().map(|(j, n)| (j.to_string(), *n)).collect();
            assert_eq!(held, want, "the reservations hash of {id}");
        }
    }
}

pub fn record(id: &str, budget_usd: Option<f64>) -> BatchRecord {
    BatchRecord {
        budget_usd,
        ..batch_record(id)
    }
}

pub fn denied(spent_nanos: i64, reserved_nanos: i64, budget_nanos: i64) -> Reservation {
    Reservation::Denied {
        spent_nanos,
        reserved_nanos,
        budget_nanos,
    }
}

/// Checks `spent + reserved <= budget` on every snapshot it can take until told to stop.
pub fn watch(
    t: &Target,
    id: &str,
    budget_nanos: i64,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = t.fork();
    let (id, flag) = (id.to_string(), Arc::clone(&stop));
    let watcher = tokio::spawn(async move {
        let mut looks = 0;
        // At least one look, even when the workers finish before this task is first polled
        // (a loaded machine).
        loop {
            let done = flag.load(Ordering::Relaxed);
            let r = ledger.get(&id).await.unwrap().unwrap();
            assert!(
                r.spent_nanos + r.reserved_nanos <= budget_nanos,
                "overbooked: spent {} + reserved {} > {budget_nanos}",
                r.spent_nanos,
                r.reserved_nanos
            );
            looks += 1;
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        looks
    });
    (stop, watcher)
}

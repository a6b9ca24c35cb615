//! The real-time throughput meter shared through a real redis-server: two workers' counts
//! (two connections) reach one measurement, with both workers' slots.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use batchyard_jobs::redis_conn::connect;
use batchyard_testkit::TestRedis;
use batchyard_workers::metrics::throughput::{MIN_ITEMS, RealtimeMeter};

#[tokio::test]
async fn two_workers_counts_make_one_fleet_measurement() {
    let Some(redis) = TestRedis::start("two_workers_counts_make_one_fleet_measurement") else {
        return;
    };
    let a = RealtimeMeter::shared(connect(&redis.url).await.unwrap(), "worker-a".into(), 4);
    let b = RealtimeMeter::shared(connect(&redis.url).await.unwrap(), "worker-b".into(), 6);
    // Half the needed items on each side: neither alone is a measurement.
    for _ in 0..MIN_ITEMS / 2 {
        a.record(Duration::from_millis(500), 100);
    }
    a.push().await;
    assert_eq!(a.measure().await, None, "a's items alone are too few");
    for _ in 0..MIN_ITEMS / 2 {
        b.record(Duration::from_millis(1500), 300);
    }
    b.push().await;
    // a reads what b pushed: every item, a mean of one second, both workers' 10 slots.
    let m = a
        .measure()
        .await
        .expect("a measurement across both workers");
    assert_eq!(m.items, MIN_ITEMS);
    assert_eq!(m.slots, 10);
    assert!((m.secs_per_item - 1.0).abs() < 1e-9, "{m:?}");
    assert!((m.tokens_per_item - 200.0).abs() < 1e-9, "{m:?}");
    assert!((m.items_per_sec() - 10.0).abs() < 1e-9, "{m:?}");
    // A push only adds what was recorded since: pushing again counts nothing twice.
    a.push().await;
    b.push().await;
    assert_eq!(b.measure().await.unwrap().items, MIN_ITEMS);
}

#[tokio::test]
async fn counts_redis_refused_are_pushed_later() {
    let Some(mut redis) = TestRedis::start("counts_redis_refused_are_pushed_later") else {
        return;
    };
    let a = RealtimeMeter::shared(connect(&redis.url).await.unwrap(), "worker-a".into(), 2);
    for _ in 0..MIN_ITEMS {
        a.record(Duration::from_millis(200), 10);
    }
    redis.kill();
    // Redis is down: the push fails, the counts stay with the worker.
    a.push().await;
    assert_eq!(a.measure().await, None);
    redis.restart();
    let started = std::time::Instant::now();
    let m = loop {
        a.push().await;
        if let Some(m) = a.measure().await {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never pushed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m.items, MIN_ITEMS);
}

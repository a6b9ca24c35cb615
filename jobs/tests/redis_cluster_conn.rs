//! `redis+cluster://` with a password, on a real Redis Cluster (3 masters, 3 replicas,
//! `requirepass`): the connection works across slots and masters, and a wrong password fails
//! without showing either password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_jobs::batch::BatchState;
use batchyard_jobs::error::ErrorKind;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_jobs::redis_conn::connect;
use batchyard_testkit::{RedisOptions, TestRedis};
use support::{batch_record, unique_name};

const PASSWORD: &str = "cluster-s3cret";

#[tokio::test]
async fn a_cluster_with_a_password_serves_and_a_wrong_one_is_named_safely() {
    let Some(redis) = TestRedis::start_cluster_with(
        "redis_cluster_password",
        RedisOptions {
            password: Some(PASSWORD.into()),
            ..RedisOptions::default()
        },
    ) else {
        return;
    };
    assert!(redis.url().starts_with("redis+cluster://:"));
    let conn = connect(redis.url()).await.unwrap();
    assert!(conn.is_cluster());
    assert_eq!(
        conn.scan_targets().await.unwrap().len(),
        3,
        "one per master"
    );
    let ledger = RedisLedger::new(conn);
    let ids: Vec<String> = (0..6).map(|_| unique_name("tls")).collect();
    for id in &ids {
        ledger.create(&batch_record(id)).await.unwrap();
        ledger.set_state(id, BatchState::Completed).await.unwrap();
    }
    let listed: Vec<String> = ledger
        .list(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    for id in &ids {
        assert!(listed.contains(id), "{id} in {listed:?}");
    }

    let wrong = redis.url().replace(PASSWORD, "not-the-pw");
    let e = connect(&wrong)
        .await
        .expect_err("a wrong password")
        .to_string();
    assert!(!e.contains("not-the-pw") && !e.contains(PASSWORD), "{e}");
}

/// Batches created while the master of their slot is killed and its replica promoted: each
/// creation succeeds or fails as weather (unavailable: callers retry), never with a Redis error;
/// after the promotion every one succeeds. A creation is a transaction (MULTI/EXEC), which the
/// cluster aborts with `MOVED` or `CLUSTERDOWN` around a promotion and redis-rs does not send
/// again by itself.
#[tokio::test]
async fn batches_created_through_a_failover_fail_only_as_weather() {
    let Some(redis) = TestRedis::start_cluster("redis_cluster_moved") else {
        return;
    };
    let nodes = redis.cluster().expect("a cluster");
    let ledger = RedisLedger::new(connect(redis.url()).await.unwrap());
    let first = unique_name("moved");
    ledger.create(&batch_record(&first)).await.unwrap();
    let key = format!("by:batch:{{{first}}}");
    let (master, _) = nodes.owner_of(&key).unwrap();
    nodes.kill_node(master);
    let killed_at = Instant::now();
    let (mut created, mut weather) = (0, 0);
    let mut promoted_at = None;
    while promoted_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2)) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no promotion"
        );
        if promoted_at.is_none() && nodes.owner_of(&key).is_some_and(|(m, _)| m != master) {
            promoted_at = Some(Instant::now());
        }
        let id = unique_name("moved");
        match ledger.create(&batch_record(&id)).await {
            Ok(()) => created += 1,
            Err(e) if e.kind() == ErrorKind::Unavailable && promoted_at.is_none() => weather += 1,
            Err(e) => panic!("{id} after {:?}: {e}", killed_at.elapsed()),
        }
    }
    assert!(
        created > 10,
        "{created} batches created ({weather} refused as weather)"
    );
    eprintln!(
        "batches through a failover: {created} created, {weather} refused as weather before \
         the promotion"
    );
}

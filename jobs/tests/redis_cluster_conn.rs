//! `redis+cluster://` with a password, on a real Redis Cluster (3 masters, 3 replicas,
//! `requirepass`): the connection works across slots and masters, and a wrong password fails
//! without showing either password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batchyard_jobs::batch::BatchState;
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

//! Budget reservations, one scenario each, run on the memory ledger and on a real Redis: both
//! must give the same answers with the same exact nano arithmetic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use batchyard_jobs::batch::{BatchRecord, BatchState, usd_to_nanos};
use batchyard_jobs::error::QueueError;
use batchyard_jobs::ledger::{Reopen, Reservation};
use batchyard_testkit::TestRedis;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use support::ledger_budget::{Target, USD, denied, record, watch};
use support::unique_name;

on_both! {
    unlimited_without_budget,
    create_stores_no_reservations,
    grants_until_budget,
    replaces_a_jobs_reservation,
    racing_reservations_never_overbook,
    spend_never_exceeds_budget,
    set_budget_lifts_the_mark,
    end_and_reopen_drop_reservations,
    missing_batch_is_not_found,
    budgets_round_like_rust,
    racing_replays_reopen_once,
}

async fn unlimited_without_budget(t: Target) {
    let id = t.create(None).await;
    assert_eq!(
        t.ledger.reserve(&id, "j1", 300 * USD).await.unwrap(),
        Reservation::Unlimited
    );
    t.assert_held(&id, &[]).await;
    // The spend of an unreserved call still counts.
    t.ledger.commit(&id, "j1", 123).await.unwrap();
    let r = t.get(&id).await;
    assert_eq!((r.spent_nanos, r.reserved_nanos), (123, 0));
    assert_eq!(r.budget_exhausted_at, None);
}

async fn create_stores_no_reservations(t: Target) {
    let id = unique_name("budget");
    let given = BatchRecord {
        reserved_nanos: 77,
        budget_exhausted_at: Some(1_700_000_000),
        no_cache: true,
        ..record(&id, Some(2.0))
    };
    t.ledger.create(&given).await.unwrap();
    let r = t.get(&id).await;
    assert_eq!(r.reserved_nanos, 0, "nothing is in flight for a new batch");
    assert_eq!(r.budget_exhausted_at, Some(1_700_000_000));
    assert!(r.no_cache);
    assert_eq!(r.budget_usd, Some(2.0));
    t.assert_held(&id, &[]).await;
    if let Some(conn) = &t.conn {
        let fields: Vec<String> = conn
            .clone()
            .hkeys(format!("by:batch:{{{id}}}"))
            .await
            .unwrap();
        assert!(!fields.iter().any(|f| f == "reserved_nanos"), "{fields:?}");
    }

    // Creating the same id again starts from nothing.
    t.ledger.reserve(&id, "j1", USD).await.unwrap();
    t.ledger.create(&record(&id, Some(2.0))).await.unwrap();
    t.assert_held(&id, &[]).await;
}

async fn grants_until_budget(t: Target) {
    let id = t.create(Some(1.0)).await;
    let part = 300_000_000;
    for job in ["j1", "j2", "j3"] {
        assert_eq!(
            t.ledger.reserve(&id, job, part).await.unwrap(),
            Reservation::Granted,
            "{job}"
        );
    }
    assert_eq!(t.get(&id).await.budget_exhausted_at, None);
    assert_eq!(
        t.ledger.reserve(&id, "j4", part).await.unwrap(),
        denied(0, 900_000_000, USD)
    );
    assert_eq!(
        t.get(&id).await.budget_exhausted_at,
        None,
        "room held by calls in flight is not exhaustion: it frees as they settle"
    );
    t.assert_held(&id, &[("j1", part), ("j2", part), ("j3", part)])
        .await;

    // j1's call cost 0.1 of its 0.3: 0.2 comes back, and 0.1 + 0.6 + 0.3 fits exactly.
    t.ledger.commit(&id, "j1", 100_000_000).await.unwrap();
    let r = t.get(&id).await;
    assert_eq!(
        (r.spent_nanos, r.reserved_nanos),
        (100_000_000, 600_000_000)
    );
    assert_eq!(
        t.ledger.reserve(&id, "j5", part).await.unwrap(),
        Reservation::Granted
    );
    assert_eq!(
        t.ledger.reserve(&id, "j6", 1).await.unwrap(),
        denied(100_000_000, 900_000_000, USD)
    );

    // A denied job loses the reservation its lost run held.
    assert_eq!(
        t.ledger.reserve(&id, "j2", 500_000_000).await.unwrap(),
        denied(100_000_000, 600_000_000, USD)
    );
    t.assert_held(&id, &[("j3", part), ("j5", part)]).await;
    assert_eq!(t.get(&id).await.budget_exhausted_at, None);
    // A call that can't fit even once everything in flight settles exhausts the batch, and
    // the first exhaustion's time stays.
    assert_eq!(
        t.ledger.reserve(&id, "j7", 950_000_000).await.unwrap(),
        denied(100_000_000, 600_000_000, USD)
    );
    let exhausted_at = t.get(&id).await.budget_exhausted_at;
    assert!(exhausted_at.is_some());
    assert_eq!(
        t.ledger.reserve(&id, "j8", 950_000_000).await.unwrap(),
        denied(100_000_000, 600_000_000, USD)
    );
    assert_eq!(t.get(&id).await.budget_exhausted_at, exhausted_at);
    assert_eq!(t.get(&id).await.spent_nanos, 100_000_000);
}

async fn replaces_a_jobs_reservation(t: Target) {
    let id = t.create(Some(1.0)).await;
    for _ in 0..3 {
        assert_eq!(
            t.ledger.reserve(&id, "j1", 300_000_000).await.unwrap(),
            Reservation::Granted
        );
    }
    t.assert_held(&id, &[("j1", 300_000_000)]).await;
    // Growing its own reservation to the whole budget fits; it only counts once.
    assert_eq!(
        t.ledger.reserve(&id, "j1", USD).await.unwrap(),
        Reservation::Granted
    );
    t.assert_held(&id, &[("j1", USD)]).await;
    assert_eq!(
        t.ledger.reserve(&id, "j2", 1).await.unwrap(),
        denied(0, USD, USD)
    );
    assert_eq!(
        t.ledger.reserve(&id, "j1", 200_000_000).await.unwrap(),
        Reservation::Granted
    );
    assert_eq!(
        t.ledger.reserve(&id, "j2", 800_000_000).await.unwrap(),
        Reservation::Granted
    );
    t.assert_held(&id, &[("j1", 200_000_000), ("j2", 800_000_000)])
        .await;
    // Committing twice: the second finds no reservation, and still counts its spend.
    t.ledger.commit(&id, "j1", 50).await.unwrap();
    t.ledger.commit(&id, "j1", 50).await.unwrap();
    t.assert_held(&id, &[("j2", 800_000_000)]).await;
    assert_eq!(t.get(&id).await.spent_nanos, 100);
}

async fn racing_reservations_never_overbook(t: Target) {
    let id = t.create(Some(1.0)).await;
    let (stop, watcher) = watch(&t, &id, USD);
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (ledger, id, start) = (t.fork(), id.clone(), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let job = format!("j{n}");
            (
                job.clone(),
                ledger.reserve(&id, &job, 50_000_000).await.unwrap(),
            )
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (job, Reservation::Granted) => granted.push(job),
            (
                _,
                Reservation::Denied {
                    spent_nanos,
                    reserved_nanos,
                    budget_nanos,
                },
            ) => {
                assert_eq!((spent_nanos, budget_nanos), (0, USD));
                assert!(reserved_nanos + 50_000_000 > USD, "{reserved_nanos}");
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    assert_eq!(granted.len(), 20, "exactly $1 / $0.05 reservations fit");
    let held: Vec<(&str, i64)> = granted.iter().map(|j| (j.as_str(), 50_000_000)).collect();
    t.assert_held(&id, &held).await;
    assert!(
        t.get(&id).await.budget_exhausted_at.is_none(),
        "nothing is spent: the room is only held"
    );
}

async fn spend_never_exceeds_budget(t: Target) {
    // One worker against a model of the rules: every answer is exactly what they predict.
    let id = t.create(Some(1.0)).await;
    let mut rng = StdRng::seed_from_u64(7);
    let (mut spent, mut held) = (0i64, HashMap::<String, i64>::new());
    for _ in 0..300 {
        let job = format!("j{}", rng.random_range(0..12));
        if let Some(&reserved) = held.get(&job)
            && rng.random_bool(0.6)
        {
            let actual = rng.random_range(0..=reserved);
            t.ledger.commit(&id, &job, actual).await.unwrap();
            held.remove(&job);
            spent += actual;
        } else {
            let nanos = rng.random_range(1..=150_000_000);
            held.remove(&job);
            let others: i64 = held.values().sum();
            let want = if spent + others + nanos <= USD {
                held.insert(job.clone(), nanos);
                Reservation::Granted
            } else {
                denied(spent, others, USD)
            };
            assert_eq!(t.ledger.reserve(&id, &job, nanos).await.unwrap(), want);
        }
        let r = t.get(&id).await;
        assert_eq!(r.spent_nanos, spent);
        assert!(r.spent_nanos + r.reserved_nanos <= USD);
    }
    let jobs: Vec<(&str, i64)> = held.iter().map(|(j, n)| (j.as_str(), *n)).collect();
    t.assert_held(&id, &jobs).await;

    // Then eight workers at once, two jobs each, each call costing at most what it reserved.
    let id = t.create(Some(1.0)).await;
    let (stop, watcher) = watch(&t, &id, USD);
    let committed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (ledger, id, committed) = (t.fork(), id.clone(), Arc::clone(&committed));
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1_000 + w);
            let mut held: HashMap<String, i64> = HashMap::new();
            for _ in 0..80 {
                let job = format!("w{w}-j{}", rng.random_range(0..2));
                match held.remove(&job) {
                    Some(reserved) => {
                        let actual = rng.random_range(0..=reserved);
                        ledger.commit(&id, &job, actual).await.unwrap();
                        committed.fetch_add(actual as u64, Ordering::Relaxed);
                    }
                    None => {
                        let nanos = rng.random_range(1..=120_000_000);
                        if ledger.reserve(&id, &job, nanos).await.unwrap() == Reservation::Granted {
                            held.insert(job, nanos);
                        }
                    }
                }
            }
            for (job, reserved) in held {
                ledger.commit(&id, &job, reserved).await.unwrap();
                committed.fetch_add(reserved as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    let r = t.get(&id).await;
    assert_eq!(r.spent_nanos, committed.load(Ordering::Relaxed) as i64);
    assert!(r.spent_nanos <= USD, "spent {}", r.spent_nanos);
    t.assert_held(&id, &[]).await;
}

async fn set_budget_lifts_the_mark(t: Target) {
    let id = t.create(Some(1.0)).await;
    assert_eq!(
        t.ledger.reserve(&id, "j1", 800_000_000).await.unwrap(),
        Reservation::Granted
    );
    assert_eq!(
        t.ledger.reserve(&id, "j2", 1_200_000_000).await.unwrap(),
        denied(0, 800_000_000, USD)
    );
    assert!(t.get(&id).await.budget_exhausted_at.is_some());

    t.ledger.set_budget(&id, Some(2.0)).await.unwrap();
    let r = t.get(&id).await;
    assert_eq!(r.budget_usd, Some(2.0));
    assert_eq!(r.budget_exhausted_at, None);
    assert_eq!(
        r.reserved_nanos, 800_000_000,
        "calls in flight stay reserved"
    );
    assert_eq!(
        t.ledger.reserve(&id, "j2", 1_200_000_000).await.unwrap(),
        Reservation::Granted
    );

    // Lowering it denies new calls, and one that can't fit at all marks the batch again.
    t.ledger.set_budget(&id, Some(1.0)).await.unwrap();
    assert_eq!(
        t.ledger.reserve(&id, "j3", 1_000_000_001).await.unwrap(),
        denied(0, 2_000_000_000, USD)
    );
    assert!(t.get(&id).await.budget_exhausted_at.is_some());

    t.ledger.set_budget(&id, None).await.unwrap();
    let r = t.get(&id).await;
    assert_eq!((r.budget_usd, r.budget_exhausted_at), (None, None));
    assert_eq!(
        t.ledger.reserve(&id, "j3", 5 * USD).await.unwrap(),
        Reservation::Unlimited
    );
    // Reservations made under the old budget still resolve through commit.
    t.ledger.commit(&id, "j1", 200_000_000).await.unwrap();
    t.assert_held(&id, &[("j2", 1_200_000_000)]).await;
    assert_eq!(t.get(&id).await.spent_nanos, 200_000_000);
}

async fn end_and_reopen_drop_reservations(t: Target) {
    let id = t.create(Some(1.0)).await;
    t.ledger.reserve(&id, "j1", 100).await.unwrap();
    t.ledger.reserve(&id, "j2", 200).await.unwrap();
    t.ledger
        .set_state(&id, BatchState::Finalizing)
        .await
        .unwrap();
    t.assert_held(&id, &[("j1", 100), ("j2", 200)]).await;

    t.ledger
        .set_state(&id, BatchState::Cancelled)
        .await
        .unwrap();
    t.assert_held(&id, &[]).await;
    if let Some(conn) = &t.conn {
        let exists: bool = conn
            .clone()
            .exists(format!("by:batch:{{{id}}}:resv"))
            .await
            .unwrap();
        assert!(!exists, "the reservations hash is gone");
    }

    // A run lost after its batch ended leaves a reservation; replay must not inherit it.
    t.ledger.reserve(&id, "j3", 300).await.unwrap();
    t.assert_held(&id, &[("j3", 300)]).await;
    assert_eq!(
        t.ledger.reopen(&id, 0, "replay-1").await.unwrap(),
        batchyard_jobs::ledger::Reopen::Reopened
    );
    t.assert_held(&id, &[]).await;
    let r = t.get(&id).await;
    assert_eq!((r.state, r.spent_nanos), (BatchState::InProgress, 0));
}

async fn missing_batch_is_not_found(t: Target) {
    let missing = unique_name("missing");
    // A finalization lease alone (the memory ledger keeps an entry for it) is not a batch.
    t.ledger
        .try_lock_finalize(&missing, "me", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let not_found = |e: QueueError| matches!(e, QueueError::BatchNotFound(ref b) if *b == missing);
    assert!(not_found(
        t.ledger.reserve(&missing, "j1", 1).await.unwrap_err()
    ));
    assert!(not_found(
        t.ledger.commit(&missing, "j1", 1).await.unwrap_err()
    ));
    assert!(not_found(
        t.ledger.set_budget(&missing, Some(1.0)).await.unwrap_err()
    ));
    assert!(not_found(
        t.ledger.set_budget(&missing, None).await.unwrap_err()
    ));
    assert!(t.ledger.get(&missing).await.unwrap().is_none());
    assert_eq!(t.held(&missing).await.unwrap_or_default(), HashMap::new());
}

async fn budgets_round_like_rust(t: Target) {
    // 4.999999999999999e-10 is where `floor(x * 1e9 + 0.5)` gives 1 nano and Rust's round 0.
    let budgets = [
        0.1,
        0.3,
        0.1 + 0.2,
        1.0000000005,
        2.5e-9,
        1.5e-9,
        4.999999999999999e-10,
        7.0000000015,
        123.456789123456,
        4_503_599.627_370_495,
    ];
    for budget in budgets {
        let id = t.create(Some(budget)).await;
        let nanos = usd_to_nanos(budget);
        assert_eq!(
            t.ledger.reserve(&id, "all", nanos).await.unwrap(),
            Reservation::Granted,
            "budget {budget} = {nanos} nanos"
        );
        assert_eq!(
            t.ledger.reserve(&id, "one-more", 1).await.unwrap(),
            denied(0, nanos, nanos),
            "budget {budget}"
        );
    }
}

/// Issue 13: two `retry`s at once both reopened a batch and drove `failed` to -75.
async fn racing_replays_reopen_once(t: Target) {
    let id = unique_name("replays");
    let mut given = record(&id, None);
    (given.state, given.counts.completed, given.counts.failed) = (BatchState::Failed, 25, 75);
    t.ledger.create(&given).await.unwrap();
    let answers = futures::future::join_all((0..8).map(|i| {
        let ledger = Arc::clone(&t.ledger);
        let id = id.clone();
        async move {
            ledger
                .reopen(&id, 75, &format!("replay-{i}"))
                .await
                .unwrap()
        }
    }))
    .await;
    let won: Vec<usize> = (0..8).filter(|i| answers[*i] == Reopen::Reopened).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let busy = Reopen::Busy {
        state: BatchState::InProgress,
        replay: Some(format!("replay-{}", won[0])),
    };
    assert!(
        answers
            .iter()
            .filter(|a| **a != Reopen::Reopened)
            .all(|a| *a == busy)
    );
    assert_eq!(t.get(&id).await.counts.failed, 0);
    assert_eq!(
        t.ledger.last_replay(&id).await.unwrap(),
        Some(format!("replay-{}", won[0]))
    );

    // More items than the count holds (a stale count) floor it at zero, never below.
    t.ledger
        .set_state(&id, BatchState::Completed)
        .await
        .unwrap();
    assert_eq!(
        t.ledger.reopen(&id, 80, "again").await.unwrap(),
        Reopen::Reopened
    );
    assert_eq!(t.get(&id).await.counts.failed, 0);
    if let Some(conn) = &t.conn {
        let raw: String = conn
            .clone()
            .hget(format!("by:batch:{{{id}}}"), "failed")
            .await
            .unwrap();
        assert_eq!(raw, "0");
    }
}

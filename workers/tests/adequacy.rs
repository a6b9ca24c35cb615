//! Learned adequacy against the in-process store and a real redis-server: priors by tier,
//! learning from answers, the bucket hierarchy, decay, exploration, evidence shared between
//! workers, a simulated router learning true pass rates, and an unreachable store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batchyard_testkit::TestRedis;
use batchyard_workers::route::adequacy::memory::MemoryAdequacy;
use batchyard_workers::route::adequacy::{Adequacy, AdequacyPolicy, Evidence, tier_prior};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use support::adequacy::{
    LIMIT, ProbeStore, Store, greedy, learned, mean, redis_store, simulate, stores, task,
};

#[tokio::test]
async fn without_evidence_the_mean_is_the_tier_prior() {
    let redis = TestRedis::start("without_evidence_the_mean_is_the_tier_prior");
    for (name, store) in stores(&redis, 400.0).await {
        let a = Adequacy::new(store, greedy());
        let t = task("priors");
        let models = [("low", 2), ("mid", 3), ("high", 5), ("top", 9)];
        let got = a.estimates(&t, 4, 2, &models).await;
        let want = [0.6, 0.7, 0.9, 0.95];
        for ((e, want), (m, _)) in got.iter().zip(want).zip(models) {
            assert!((e.mean - want).abs() < 1e-12, "{name} {m}: {e:?}");
            assert_eq!(e.score, e.mean, "{name} {m}");
            assert_eq!((e.passes, e.fails), (0.0, 0.0), "{name} {m}");
        }
    }
    assert_eq!(tier_prior(1, 3), 0.6);
}

#[tokio::test]
async fn learn_false_is_cheapest_first_and_never_touches_the_store() {
    let probe = Arc::new(ProbeStore::default());
    let policy = AdequacyPolicy {
        learn: false,
        ..AdequacyPolicy::default()
    };
    let a = Adequacy::new(probe.clone(), policy);
    a.record("t", 3, "m", false).await;
    let got = a.estimates("t", 3, 1, &[("m", 1), ("n", 4)]).await;
    for e in got {
        assert_eq!((e.mean, e.score, e.passes, e.fails), (1.0, 1.0, 0.0, 0.0));
    }
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn answers_move_the_mean_the_right_way() {
    let redis = TestRedis::start("answers_move_the_mean_the_right_way");
    for (name, store) in stores(&redis, 400.0).await {
        let a = Adequacy::new(store.clone(), greedy());
        let t = task("move");
        let prior = mean(&a, &t, 5, "good", 2).await;
        for _ in 0..10 {
            a.record(&t, 5, "good", true).await;
            a.record(&t, 5, "bad", false).await;
        }
        // The cached copy learned at once, and the store has the same evidence.
        let fresh = Adequacy::new(store, greedy());
        for a in [&a, &fresh] {
            let good = a.estimates(&t, 5, 1, &[("good", 2), ("bad", 2)]).await;
            assert!(good[0].mean > prior + 0.1, "{name}: {good:?}");
            assert!(good[1].mean < prior - 0.3, "{name}: {good:?}");
            assert_eq!((good[0].passes, good[0].fails), (10.0, 0.0), "{name}");
            assert_eq!((good[1].passes, good[1].fails), (0.0, 10.0), "{name}");
        }
    }
}

#[tokio::test]
async fn both_stores_agree_on_the_same_answers() {
    let Some(redis) = TestRedis::start("both_stores_agree_on_the_same_answers") else {
        return;
    };
    // A small cap, so the sequence halves many times.
    let memory: Store = Arc::new(MemoryAdequacy::new(20.0));
    let shared = redis_store(&redis, 20.0).await;
    let t = task("agree");
    let models = ["m1", "vendor|m2", "m3"];
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..1_000 {
        let model = models[rng.random_range(0..models.len())];
        let bucket = rng.random_range(0..4);
        let passed = rng.random_bool(0.6);
        memory.record(&t, bucket, model, passed).await.unwrap();
        shared.record(&t, bucket, model, passed).await.unwrap();
    }
    for bucket in 0..5 {
        let m = memory.observed(&t, bucket).await.unwrap();
        let r = shared.observed(&t, bucket).await.unwrap();
        assert_eq!(m.task.len(), 3);
        for (level, m, r) in [("task", &m.task, &r.task), ("bucket", &m.bucket, &r.bucket)] {
            assert_eq!(m.len(), r.len(), "bucket {bucket} {level}");
            for (model, e) in m {
                let other = r[model];
                assert!(e.passes + e.fails <= 20.0, "{model}: {e:?}");
                assert!(
                    (e.passes - other.passes).abs() < 1e-9,
                    "{model}: {e:?} {other:?}"
                );
                assert!(
                    (e.fails - other.fails).abs() < 1e-9,
                    "{model}: {e:?} {other:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn bucket_evidence_counts_most_in_its_own_bucket() {
    let redis = TestRedis::start("bucket_evidence_counts_most_in_its_own_bucket");
    for (name, store) in stores(&redis, 400.0).await {
        let t = task("hierarchy");
        let a = Adequacy::new(store.clone(), greedy());
        for _ in 0..30 {
            a.record(&t, 10, "m", false).await;
        }
        let prior = tier_prior(2, 1);
        let ten = a.estimates(&t, 10, 1, &[("m", 2)]).await[0];
        let three = a.estimates(&t, 3, 1, &[("m", 2)]).await[0];
        assert!(ten.mean < three.mean, "{name}: {ten:?} vs {three:?}");
        assert!(
            three.mean < prior - 0.3,
            "{name}: the task level moved bucket 3"
        );
        assert_eq!((ten.passes, ten.fails), (0.0, 30.0), "{name}");
        assert_eq!((three.passes, three.fails), (0.0, 0.0), "{name}");
        // Bucket 3 has no evidence of its own: its mean is the task-level mean.
        let task_mean = (prior * 4.0) / (4.0 + 30.0);
        assert!((three.mean - task_mean).abs() < 1e-12, "{name}: {three:?}");

        let flat = Adequacy::new(
            store,
            AdequacyPolicy {
                feature_buckets: false,
                ..greedy()
            },
        );
        let ten = flat.estimates(&t, 10, 1, &[("m", 2)]).await[0];
        let three = flat.estimates(&t, 3, 1, &[("m", 2)]).await[0];
        assert_eq!(
            ten, three,
            "{name}: without buckets every bucket is the task"
        );
        assert!((ten.mean - task_mean).abs() < 1e-12, "{name}: {ten:?}");
    }
}

#[tokio::test]
async fn evidence_past_the_cap_is_halved() {
    let redis = TestRedis::start("evidence_past_the_cap_is_halved");
    for (name, store) in stores(&redis, 10.0).await {
        let t = task("cap");
        for _ in 0..10 {
            store.record(&t, 1, "m", true).await.unwrap();
        }
        let o = store.observed(&t, 1).await.unwrap();
        assert_eq!(
            o.task["m"],
            Evidence {
                passes: 10.0,
                fails: 0.0
            },
            "{name}"
        );
        store.record(&t, 1, "m", false).await.unwrap();
        let o = store.observed(&t, 1).await.unwrap();
        let halved = Evidence {
            passes: 5.0,
            fails: 0.5,
        };
        assert_eq!((o.task["m"], o.bucket["m"]), (halved, halved), "{name}");
    }
}

#[tokio::test]
async fn a_model_that_got_worse_is_noticed() {
    let redis = TestRedis::start("a_model_that_got_worse_is_noticed");
    for (name, store) in stores(&redis, 200.0).await {
        let t = task("worse");
        let a = Adequacy::new(store.clone(), greedy());
        for passed in [true, false] {
            for _ in 0..300 {
                a.record(&t, 7, "m", passed).await;
            }
        }
        let fresh = Adequacy::new(store, greedy());
        for a in [&a, &fresh] {
            let e = a.estimates(&t, 7, 1, &[("m", 3)]).await[0];
            assert!(e.mean < 0.3, "{name}: {e:?}");
            assert!(e.passes + e.fails <= 200.0, "{name}: {e:?}");
        }
    }
}

#[tokio::test]
async fn exploration_blends_a_thompson_sample_into_the_score() {
    let store: Store = Arc::new(MemoryAdequacy::new(400.0));
    let t = task("explore");
    let greedy = Adequacy::new(store.clone(), greedy());
    for passed in [true, true, true, false, false] {
        greedy.record(&t, 2, "m", passed).await;
    }
    for _ in 0..400 {
        greedy.record(&t, 2, "hopeless", false).await;
    }
    let models = [("m", 1), ("hopeless", 1)];
    for _ in 0..50 {
        for e in greedy.estimates(&t, 2, 1, &models[..1]).await {
            assert_eq!(e.score, e.mean);
        }
    }
    let full = Adequacy::new(
        store,
        AdequacyPolicy {
            exploration: 1.0,
            ..AdequacyPolicy::default()
        },
    );
    let draws = 400;
    let mut scores = Vec::new();
    let mut mean = 0.0;
    for _ in 0..draws {
        let got = full.estimates(&t, 2, 1, &models).await;
        mean = got[0].mean;
        for e in &got {
            assert!((0.001..=1.0).contains(&e.score), "{e:?}");
        }
        scores.push(got[0].score);
    }
    let mut distinct = scores.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(distinct.len() > draws * 9 / 10, "scores hardly vary");
    let average = scores.iter().sum::<f64>() / draws as f64;
    // Thompson draws average to the posterior mean (their sd is ~0.15, so ~0.008 here).
    assert!((average - mean).abs() < 0.05, "{average} vs {mean}");
    let spread = distinct[distinct.len() - 1] - distinct[0];
    assert!(spread > 0.3, "samples span only {spread}");
}

#[tokio::test]
async fn redis_evidence_is_shared_between_workers() {
    let Some(redis) = TestRedis::start("redis_evidence_is_shared_between_workers") else {
        return;
    };
    let t = task("shared");
    let one = Adequacy::new(redis_store(&redis, 400.0).await, greedy());
    let two = Adequacy::new(redis_store(&redis, 400.0).await, greedy());
    let prior = mean(&two, &t, 6, "m", 2).await;
    for _ in 0..20 {
        one.record(&t, 6, "m", false).await;
    }
    // A fresh worker reads the store, and the other one's cache expires within its TTL.
    let fresh = Adequacy::new(redis_store(&redis, 400.0).await, greedy());
    assert!(mean(&fresh, &t, 6, "m", 2).await < prior - 0.3);
    let started = Instant::now();
    while mean(&two, &t, 6, "m", 2).await > prior - 0.3 {
        assert!(
            started.elapsed() < LIMIT,
            "the other worker never saw the answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut raw = redis.raw().await;
    let key = format!("by:adequacy:{{{t}}}");
    let fails: f64 = raw.hget(&key, "all|m|f").await.unwrap();
    let in_bucket: f64 = raw.hget(&key, "6|m|f").await.unwrap();
    assert_eq!((fails, in_bucket), (20.0, 20.0));
}

#[tokio::test]
async fn reset_forgets_one_task_or_all() {
    let redis = TestRedis::start("reset_forgets_one_task_or_all");
    for (name, store) in stores(&redis, 400.0).await {
        let (t1, t2) = (task("reset"), task("reset"));
        for t in [&t1, &t2] {
            store.record(t, 1, "m", true).await.unwrap();
        }
        store.reset(Some(&t1)).await.unwrap();
        assert!(
            store.observed(&t1, 1).await.unwrap().task.is_empty(),
            "{name}"
        );
        assert!(
            !store.observed(&t2, 1).await.unwrap().task.is_empty(),
            "{name}"
        );
        store.reset(None).await.unwrap();
        assert!(
            store.observed(&t2, 1).await.unwrap().task.is_empty(),
            "{name}"
        );
    }
    if let Some(redis) = &redis {
        let mut raw = redis.raw().await;
        let _: () = raw.set("by:other", "kept").await.unwrap();
        let store = redis_store(redis, 400.0).await;
        for i in 0..1_200 {
            store
                .record(&format!("many-{i}"), 1, "m", true)
                .await
                .unwrap();
        }
        store.reset(None).await.unwrap();
        let keys: Vec<String> = raw.keys("by:*").await.unwrap();
        assert_eq!(keys, vec!["by:other".to_string()]);
    }
}

/// On a Redis Cluster the tasks' hashes are spread over the masters, and SCAN sees one node:
/// `reset(None)` scans each master, so every hash goes and nothing else does.
#[tokio::test]
async fn reset_all_scans_every_master_of_a_cluster() {
    let Some(redis) = TestRedis::start_cluster("reset_all_scans_every_master_of_a_cluster") else {
        return;
    };
    let store = redis_store(&redis, 400.0).await;
    let tasks: Vec<String> = (0..60).map(|_| task("cluster-reset")).collect();
    for t in &tasks {
        store.record(t, 1, "m", true).await.unwrap();
    }
    let mut raw = redis.raw().await;
    let _: () = raw.set("by:other", "kept").await.unwrap();
    let nodes = redis.cluster().unwrap();
    let masters: std::collections::BTreeSet<u16> = tasks
        .iter()
        .map(|t| nodes.owner_of(&format!("by:adequacy:{{{t}}}")).unwrap().0)
        .collect();
    assert_eq!(masters.len(), 3, "the tasks' hashes sit on every master");
    store.reset(None).await.unwrap();
    let keys: Vec<String> = raw.keys("by:*").await.unwrap();
    assert_eq!(keys, vec!["by:other".to_string()]);
}

#[tokio::test]
async fn routing_learns_the_true_pass_rates() {
    let redis = TestRedis::start("routing_learns_the_true_pass_rates");
    // (key, tier, cost, true pass rate): cost / rate ranks cheap 3.3, mid 7.1, strong 30.3.
    let models = [
        ("cheap", 1, 1.0, 0.3),
        ("mid", 2, 5.0, 0.7),
        ("strong", 3, 30.0, 0.99),
    ];
    for (name, store) in stores(&redis, 400.0).await {
        let t = task("simulate");
        let a = Adequacy::new(store.clone(), AdequacyPolicy::default());
        let first = simulate(&a, &t, &models).await;
        assert!(
            first[0] > 900,
            "{name}: cheap should lead, first = {first:?}"
        );
        let means = learned(store, &t, &models).await;
        for ((key, _, _, rate), mean) in models.iter().zip(&means) {
            let mean = mean.unwrap_or_else(|| panic!("{name}: {key} was hardly tried"));
            assert!((mean - rate).abs() < 0.1, "{name} {key}: {mean} vs {rate}");
        }
    }
}

#[tokio::test]
async fn routing_learns_to_skip_a_cheap_model_that_fails() {
    let redis = TestRedis::start("routing_learns_to_skip_a_cheap_model_that_fails");
    // By the priors cheap leads (1 / 0.6 = 1.7 vs 5 / 0.7 = 7.1); by the truth it comes last
    // (1 / 0.02 = 50, mid 5 / 0.9 = 5.6, strong 30 / 0.99 = 30.3).
    let models = [
        ("cheap", 1, 1.0, 0.02),
        ("mid", 2, 5.0, 0.9),
        ("strong", 3, 30.0, 0.99),
    ];
    for (name, store) in stores(&redis, 400.0).await {
        let t = task("flip");
        let a = Adequacy::new(store.clone(), AdequacyPolicy::default());
        let first = simulate(&a, &t, &models).await;
        assert!(first[1] > 950, "{name}: mid should lead, first = {first:?}");
        let means = learned(store, &t, &models).await;
        let mid = means[1].unwrap_or_else(|| panic!("{name}: mid was hardly tried"));
        assert!((mid - 0.9).abs() < 0.1, "{name}: {means:?}");
        let cheap = a.estimates(&t, 9, 1, &[("cheap", 1)]).await[0];
        assert!(
            cheap.mean < 0.15,
            "{name}: cheap still looks adequate: {cheap:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_store_falls_back_to_priors() {
    let probe = Arc::new(ProbeStore {
        fail: true,
        ..ProbeStore::default()
    });
    let a = Adequacy::new(probe.clone(), greedy());
    let e = a.estimates("t", 1, 1, &[("m", 2)]).await[0];
    assert_eq!((e.mean, e.passes, e.fails), (tier_prior(2, 1), 0.0, 0.0));
    // This process still learns from its own answers while the store is down.
    a.record("t", 1, "m", false).await;
    let e = a.estimates("t", 1, 1, &[("m", 2)]).await[0];
    assert_eq!(e.fails, 1.0);
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        2,
        "one read per TTL, one write"
    );

    let Some(mut redis) = TestRedis::start("an_unreachable_store_falls_back_to_priors") else {
        return;
    };
    let store = redis_store(&redis, 400.0).await;
    let t = task("down");
    for _ in 0..20 {
        store.record(&t, 1, "m", false).await.unwrap();
    }
    redis.kill();
    let bounded = tokio::time::timeout(Duration::from_secs(60), async {
        let a = Adequacy::new(store.clone(), greedy());
        let e = a.estimates(&t, 1, 1, &[("m", 2)]).await[0];
        assert_eq!((e.mean, e.passes, e.fails), (tier_prior(2, 1), 0.0, 0.0));
        a.record(&t, 1, "m", true).await;
        assert!(store.observed(&t, 1).await.is_err());
    });
    bounded
        .await
        .expect("a dead redis should fail calls, not hang them");
}

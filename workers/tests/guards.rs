//! The guards around a call, over real HTTP: a 429 pauses the model for every caller that
//! shares the limiter, even a model with no declared limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use batchyard_testkit::FakeProvider;
use batchyard_workers::call::health::HealthPolicy;
use batchyard_workers::call::health::memory::MemoryHealth;
use batchyard_workers::call::limiter::memory::MemoryLimiter;
use batchyard_workers::call::{Guards, ModelOutcome};
use batchyard_workers::catalog::ModelSpec;
use batchyard_workers::provider::Provider;
use support::fake_provider::{OpenAiFake as _, body_for, call, fast_policy};

fn model() -> ModelSpec {
    ModelSpec {
        input_usd_per_mtok: 0.1,
        output_usd_per_mtok: 0.4,
        context_window: 16_000,
        ..support::model_spec("small", "fake", "small-1")
    }
}

#[tokio::test]
async fn a_429_pauses_an_undeclared_model_for_everyone_sharing_the_limiter() {
    // The provider allows one request a minute; we declared no limit for the model.
    let server = FakeProvider::start(&["--rpm", "1"]);
    let provider = Provider::OpenAi(server.provider());
    let guards = Guards::new(
        Arc::new(MemoryHealth::new(HealthPolicy::default())),
        Arc::new(MemoryLimiter::new()),
        Duration::from_millis(200),
    );
    let other_worker = guards.clone();
    let model = model();
    let body = body_for("hello");
    let policy = fast_policy(3);
    let first = guards
        .call_model(
            &policy,
            &provider,
            &model,
            None,
            call("small-1", &body),
            100,
            false,
        )
        .await;
    assert!(matches!(first, ModelOutcome::Answer { .. }), "{first:?}");
    let second = guards
        .call_model(
            &policy,
            &provider,
            &model,
            None,
            call("small-1", &body),
            100,
            false,
        )
        .await;
    match second {
        ModelOutcome::Wait(delay) => assert!(delay > Duration::from_millis(200), "{delay:?}"),
        other => panic!("expected a wait after the 429, got {other:?}"),
    }
    assert_eq!(server.count(429), 1, "one 429, then no more calls");
    let third = other_worker
        .call_model(
            &policy,
            &provider,
            &model,
            None,
            call("small-1", &body),
            100,
            false,
        )
        .await;
    assert!(matches!(third, ModelOutcome::Wait(_)), "{third:?}");
    assert_eq!(
        server.count(429),
        1,
        "the paused model was not called again"
    );
    assert_eq!(server.count(200), 1);
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::catalog::ModelSpec;
use crate::metrics::throughput::RealtimeMeter;

fn spec(key: &str, provider: &str, rpm: Option<u32>, tpm: Option<u64>) -> ModelSpec {
    ModelSpec {
        key: key.into(),
        provider: provider.into(),
        name: key.into(),
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        cached_input_usd_per_mtok: None,
        cache_write_usd_per_mtok: None,
        context_window: 16_000,
        max_output_tokens: None,
        tier: 1,
        capabilities: Default::default(),
        rpm,
        tpm,
        batch: None,
    }
}

fn catalog(models: Vec<ModelSpec>, accounts: &[(&str, Option<u32>, Option<u64>)]) -> Catalog {
    let limits = accounts
        .iter()
        .map(|(p, r, t)| ((*p).to_owned(), (*r, *t)))
        .collect();
    Catalog::new(models, vec![], BTreeMap::new())
        .unwrap()
        .with_provider_limits(limits)
}

fn left(by_model: &[(&str, u64)], unattributed: u64, tokens: f64) -> Left {
    Left {
        by_model: by_model
            .iter()
            .map(|(m, n)| ((*m).to_owned(), *n))
            .collect(),
        unattributed,
        tokens_per_item: tokens,
    }
}

#[test]
fn a_model_rpm_sets_the_time_of_its_items() {
    let c = catalog(vec![spec("small", "p", Some(600), None)], &[]);
    // 1,200 items at 600 a minute: two minutes.
    let n = realtime_needed(&c, &left(&[("small", 1_200)], 0, 100.0), None, 2.0);
    assert!((n.secs - 120.0).abs() < 1e-9, "{n:?}");
    assert_eq!(n.basis, Basis::Limit("model small rpm 600".into()));
}

#[test]
fn a_tpm_counts_the_tokens_of_each_item() {
    let c = catalog(vec![spec("small", "p", Some(60_000), Some(100_000))], &[]);
    // 1,000 items of 500 tokens at 100,000 a minute: five minutes.
    let n = realtime_needed(&c, &left(&[("small", 1_000)], 0, 500.0), None, 2.0);
    assert!((n.secs - 300.0).abs() < 1e-9, "{n:?}");
    assert_eq!(n.basis.kind(), "limit");
}

#[test]
fn an_account_limit_is_shared_by_its_models() {
    let c = catalog(
        vec![spec("a", "p", None, None), spec("b", "p", None, None)],
        &[("p", Some(60), None)],
    );
    // 30 + 30 items through one 60-a-minute account: a minute, though each alone is half.
    let n = realtime_needed(&c, &left(&[("a", 30), ("b", 30)], 0, 1.0), None, 1_000.0);
    assert!((n.secs - 60.0).abs() < 1e-9, "{n:?}");
    assert_eq!(n.basis, Basis::Limit("provider p rpm 60".into()));
}

#[test]
fn without_limits_or_a_measurement_the_configured_rate_is_used_and_named() {
    let c = catalog(vec![spec("small", "p", None, None)], &[]);
    let n = realtime_needed(&c, &left(&[("small", 100)], 100, 1.0), None, 2.0);
    // 200 items at 2 a second.
    assert!((n.secs - 100.0).abs() < 1e-9, "{n:?}");
    assert_eq!(n.basis, Basis::Configured { items_per_sec: 2.0 });
    assert!(
        n.basis
            .to_string()
            .contains("no real-time items measured yet")
    );
}

#[test]
fn limited_items_are_not_held_to_the_configured_default() {
    // A declared 6,000 rpm is 100 a second; the default 2 a second applies only to items
    // no limit covers (none here).
    let c = catalog(vec![spec("small", "p", Some(6_000), None)], &[]);
    let n = realtime_needed(&c, &left(&[("small", 1_000)], 0, 1.0), None, 2.0);
    assert!((n.secs - 10.0).abs() < 1e-9, "{n:?}");
}

#[tokio::test]
async fn a_measured_rate_replaces_the_default_and_bounds_every_item() {
    let c = catalog(
        vec![
            spec("small", "p", Some(60_000), None),
            spec("big", "q", None, None),
        ],
        &[],
    );
    let meter = RealtimeMeter::in_process(10);
    for _ in 0..20 {
        meter.record(Duration::from_secs(1), 50);
    }
    let m = meter.measure().await.unwrap();
    // Ten slots at a second an item: 10 a second for all 1,000 items, limited ones included
    // (small's 1,000 a second would allow more).
    let l = left(&[("small", 500), ("big", 300)], 200, m.tokens_per_item);
    let n = realtime_needed(&c, &l, Some(&m), 2.0);
    assert!((n.secs - 100.0).abs() < 1e-9, "{n:?}");
    assert_eq!(
        n.basis,
        Basis::Measured {
            items_per_sec: 10.0,
            items: 20
        }
    );
}

#[tokio::test]
async fn a_slower_limit_still_wins_over_a_measured_rate() {
    let c = catalog(vec![spec("small", "p", Some(60), None)], &[]);
    let meter = RealtimeMeter::in_process(10);
    for _ in 0..20 {
        meter.record(Duration::from_millis(100), 50);
    }
    let m = meter.measure().await.unwrap();
    // 100 a second measured, but small takes one a second.
    let n = realtime_needed(&c, &left(&[("small", 120)], 0, 50.0), Some(&m), 2.0);
    assert!((n.secs - 120.0).abs() < 1e-9, "{n:?}");
    assert_eq!(n.basis.kind(), "limit");
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use batchyard_jobs::batch::{BatchState, RequestCounts};

use super::*;
use batchyard_jobs::batch::BatchRecord;

fn record(total: u64, settled: u64, in_progress_at: Option<u64>) -> BatchRecord {
    BatchRecord {
        state: BatchState::InProgress,
        counts: RequestCounts {
            total,
            completed: settled,
            failed: 0,
        },
        in_progress_at,
        ..BatchRecord::new("batch_x".into(), 0, String::new(), 0)
    }
}

#[test]
fn first_estimate_uses_the_rate_since_the_start() {
    let mut history = VecDeque::new();
    // 100 of 1000 settled in 10 s: 10/s, 900 left.
    let eta = estimate(
        &record(1000, 100, Some(90)),
        &mut history,
        Instant::now(),
        100,
    );
    assert_eq!(eta, Some(90.0));
}

#[test]
fn later_estimates_use_the_recent_rate_and_forget_old_samples() {
    let mut history = VecDeque::new();
    let t0 = Instant::now();
    estimate(&record(1000, 0, Some(0)), &mut history, t0, 0);
    let eta = estimate(
        &record(1000, 50, Some(0)),
        &mut history,
        t0 + Duration::from_secs(5),
        5,
    );
    // 50 in 5 s: 10/s, 950 left.
    assert_eq!(eta, Some(95.0));
    for i in 2..40u64 {
        estimate(
            &record(1000, 50 * i, Some(0)),
            &mut history,
            t0 + Duration::from_secs(5 * i),
            5 * i,
        );
    }
    let oldest = history.front().unwrap().0;
    let newest = history.back().unwrap().0;
    assert!(newest.duration_since(oldest) <= RATE_WINDOW + Duration::from_secs(5));
}

#[test]
fn no_progress_means_no_estimate_and_done_means_zero() {
    let mut history = VecDeque::new();
    assert_eq!(
        estimate(&record(10, 0, Some(0)), &mut history, Instant::now(), 100),
        None
    );
    let mut history = VecDeque::new();
    assert_eq!(
        estimate(&record(10, 10, None), &mut history, Instant::now(), 100),
        Some(0.0)
    );
}

#[test]
fn etas_render_in_the_text_format() {
    if let Ok(mut etas) = ETAS.lock() {
        etas.insert("batch_\"q".into(), 12.5);
    }
    let mut out = String::new();
    render_batch_etas(&mut out);
    assert!(
        out.contains("# TYPE batchyard_batch_eta_seconds gauge"),
        "{out}"
    );
    assert!(
        out.contains("batchyard_batch_eta_seconds{batch=\"batch_\\\"q\"} 12.5"),
        "{out}"
    );
    if let Ok(mut etas) = ETAS.lock() {
        etas.clear();
    }
}

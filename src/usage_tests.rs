use batchyard_jobs::batch::{BatchRecord, BatchState, RequestCounts, usd_to_nanos};

use super::*;

fn record(id: &str, tenant: &str, task: Option<&str>, created_at: u64, usd: f64) -> BatchRecord {
    BatchRecord {
        tenant: tenant.into(),
        task: task.map(str::to_string),
        state: BatchState::Completed,
        counts: RequestCounts {
            total: 10,
            completed: 9,
            failed: 1,
        },
        spent_nanos: usd_to_nanos(usd),
        ..BatchRecord::new(id.into(), 10, "memory://".into(), created_at)
    }
}

#[test]
fn sums_per_tenant_and_task_within_the_period() {
    let mut active = record("b4", "search", None, 150, 0.75);
    active.state = BatchState::InProgress;
    let records = [
        record("b1", "search", Some("summarize"), 100, 1.25),
        record("b2", "search", Some("classify"), 120, 0.25),
        record("b3", "billing", Some("summarize"), 130, 2.0),
        active,
        record("old", "search", Some("summarize"), 99, 100.0),
        record("late", "billing", None, 200, 100.0),
    ];
    let period = Period {
        since: 100,
        until: 200,
    };
    let usage = summarize(&records, period, |_| true, false);
    let names: Vec<&str> = usage.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["search", "billing"], "most spent first");
    let search = &usage.tenants[0];
    assert_eq!(
        (
            search.sums.batches,
            search.sums.active_batches,
            search.sums.items
        ),
        (3, 1, 30)
    );
    assert!((search.sums.spent_usd - 2.25).abs() < 1e-9);
    assert_eq!(
        search.by_task.keys().collect::<Vec<_>>(),
        ["-", "classify", "summarize"]
    );
    assert!((usage.total.spent_usd - 4.25).abs() < 1e-9);
    assert_eq!((usage.total.completed, usage.total.failed), (36, 4));

    let only = summarize(&records, period, |t| t == "billing", true);
    assert_eq!(only.tenants.len(), 1);
    assert!((only.total.spent_usd - 2.0).abs() < 1e-9);
    let text = only.render();
    assert!(
        text.contains("billing") && !text.contains("search"),
        "{text}"
    );
    assert!(text.contains("only the newest"), "{text}");
}

#[test]
fn periods_read_spans_dates_and_times_and_refuse_the_rest() {
    let now = 1_764_547_200; // 2025-12-01T00:00:00Z
    let p = Period::parse(Some("2d"), None, now, "--").unwrap();
    assert_eq!((p.since, p.until), (now - 2 * 86_400, now + 1));
    let p = Period::parse(Some("2025-11-01"), Some("2025-11-02T00:00:00Z"), now, "--").unwrap();
    assert_eq!((p.since, p.until), (1_761_955_200, 1_762_041_600));
    let e = Period::parse(Some("last week"), None, now, "--").unwrap_err();
    assert!(e.starts_with("--since: \"last week\" is not a time"), "{e}");
    let e = Period::parse(Some("1d"), Some("2d"), now, "--").unwrap_err();
    assert!(e.contains("--since must be before --until"), "{e}");
    let default = Period::parse(None, None, now, "").unwrap();
    assert_eq!(default.since, now - 30 * 86_400);
}

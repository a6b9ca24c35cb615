//! Tenants, priorities and fair share end to end: `submit --tenant/--priority` against
//! `[tenants.*]`, a worker draining two tenants' batches 3:1 by weight, and `status` showing
//! each one's share beside its target. The claim order itself is tested in
//! jobs/tests/queue_fair.rs; 50,000 items are in `scripts/bench --only B10`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options, wait_exit};
use support::*;

fn input(cluster: &Cluster, name: &str, items: usize) -> String {
    let body: String = (0..items)
        .map(|i| request_line(&format!("{name}-{i}"), "x") + "\n")
        .collect();
    let path = write_file(
        cluster.dir.path(),
        &format!("{name}.jsonl"),
        body.as_bytes(),
    );
    path.to_str().unwrap().to_string()
}

#[test]
fn tenants_share_the_workers_by_weight_and_status_shows_it() {
    let Some(cluster) = Cluster::start_opts(
        "fair-share",
        &["--latency-ms", "40"],
        Options {
            ready_window: Some(4),
            extra_toml: "[tenants.heavy]\nweight = 3\n\n[tenants.light]\nweight = 1\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let heavy_in = input(&cluster, "heavy", 160);
    let light_in = input(&cluster, "light", 160);

    let out = run(cluster
        .cmd()
        .args(["submit", &heavy_in, "--tenant", "nobody"]));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("unknown tenant \"nobody\""),
        "{}",
        text(&out.stderr)
    );

    let heavy = cluster.submit(&heavy_in, &["--tenant", "heavy"]);
    assert_eq!(
        (&heavy["tenant"], &heavy["priority"]),
        (&"heavy".into(), &"normal".into())
    );
    let out = run(cluster.cmd().args([
        "submit",
        &light_in,
        "--json",
        "--tenant",
        "light",
        "--priority",
        "high",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("max_priority"),
        "{}",
        text(&out.stderr)
    );
    let light = last_json(&out);
    assert_eq!(
        light["priority"], "normal",
        "capped to light's max_priority"
    );
    let (heavy_id, light_id) = (
        heavy["id"].as_str().unwrap().to_string(),
        light["id"].as_str().unwrap().to_string(),
    );

    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    // While both have work: shares follow the weights.
    let started = Instant::now();
    let view = loop {
        std::thread::sleep(Duration::from_millis(300));
        let out = run(cluster.cmd().args(["status", "--json"]));
        let view = last_json(&out);
        let dispatched: u64 = view["tenants"].as_array().map_or(0, |t| {
            t.iter()
                .map(|t| t["dispatched"].as_u64().unwrap_or(0))
                .sum()
        });
        if dispatched >= 80 || started.elapsed() > Duration::from_secs(20) {
            break view;
        }
    };
    let tenant = |name: &str| {
        view["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no tenant {name}: {view}"))
    };
    let (h, l) = (tenant("heavy"), tenant("light"));
    assert_eq!(
        (h["target"].as_f64(), l["target"].as_f64()),
        (Some(0.75), Some(0.25)),
        "{view}"
    );
    let ratio = h["dispatched"].as_f64().unwrap() / l["dispatched"].as_f64().unwrap().max(1.0);
    assert!(
        (2.0..=4.0).contains(&ratio),
        "heavy:light dispatched {ratio:.2}: {view}"
    );
    let active = view["active_batches"].as_array().unwrap();
    let of = |id: &str| {
        active
            .iter()
            .find(|b| b["id"] == id)
            .map(|b| b["share"].clone())
    };
    assert_eq!(
        of(&light_id).map(|s| s["target"].clone()),
        Some(0.25.into()),
        "{view}"
    );
    let stdout = text(&run(cluster.cmd().arg("status")).stdout);
    assert!(
        stdout.contains("TENANTS") && stdout.contains("heavy"),
        "{stdout}"
    );

    for id in [&heavy_id, &light_id] {
        assert_eq!(
            cluster.wait_terminal(id, Duration::from_secs(60))["status"],
            "completed"
        );
        assert_eq!(cluster.results(id, false).len(), 160, "each item once");
    }
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    // Chargeback: each tenant's items and spend, the sum of its batches'.
    let usage = last_json(&run(cluster
        .cmd()
        .args(["usage", "--json", "--since", "1h"])));
    for (name, id) in [("heavy", &heavy_id), ("light", &light_id)] {
        let line = usage["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == name)
            .unwrap_or_else(|| panic!("no {name}: {usage}"));
        assert_eq!(
            (&line["batches"], &line["completed"]),
            (&1.into(), &160.into()),
            "{usage}"
        );
        let status = last_json(&run(cluster.cmd().args(["status", id, "--json"])));
        let cost = status["cost_usd"].as_f64().unwrap();
        assert!(cost > 0.0, "{status}");
        assert!(
            (line["spent_usd"].as_f64().unwrap() - cost).abs() < 1e-6,
            "{usage} vs {status}"
        );
    }
    let out = run(cluster.cmd().args(["usage", "--tenant", "light"]));
    let table = text(&out.stdout);
    assert!(
        table.contains("light") && !table.contains("heavy"),
        "{table}"
    );
    let out = run(cluster.cmd().args(["usage", "--since", "last tuesday"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--since"),
        "{}",
        text(&out.stderr)
    );
}

//! `batchyard estimate --deadline`: the cost real-time only against the offload lane, the
//! models without a batch API named, and the finish time, with the real binary and no
//! services (nothing is called: the router's plans are priced).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

#[test]
fn estimate_with_a_deadline_compares_real_time_with_offload() {
    let dir = tempfile::tempdir().unwrap();
    // The lane's usual config (`small` and `large` through the provider's batch API), plus a
    // model whose provider has none. Nothing is called: the address is never reached.
    support::offload::lane_config(
        dir.path(),
        "kind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nbatch_api = true",
        ["small-1", "large-1"],
        "min_items = 3\nrealtime_items_per_sec = 2",
        "",
    );
    let other = "\n[providers.plain]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
                 [models.other]\nprovider = \"plain\"\nname = \"other-1\"\n\
                 input_usd_per_mtok = 4.0\noutput_usd_per_mtok = 8.0\ncontext_window = 16000\ntier = 1\n";
    let path = dir.path().join("batchyard.toml");
    let config = std::fs::read_to_string(&path).unwrap() + other;
    std::fs::write(&path, config).unwrap();
    let input = support::offload::docs(dir.path(), 9, 0);
    let estimate = |extra: &[&str]| {
        let out = run(batchyard(dir.path())
            .args([
                "--config",
                "batchyard.toml",
                "estimate",
                input.to_str().unwrap(),
            ])
            .args(["--task", "read"])
            .args(extra));
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let json = last_json(&estimate(&["--deadline", "1h", "--json"]));
    let o = &json["offload"];
    let routed = json["routed_expected_usd"].as_f64().unwrap();
    let small = json["models"]["small"]["expected_cost_usd"]
        .as_f64()
        .unwrap();
    assert!(small > 0.0, "{json}");
    assert!(
        (o["realtime_usd"].as_f64().unwrap() - routed).abs() < 1e-12,
        "{o}"
    );
    // small's turns at its batch price (half, by default); other's stay real-time.
    let want = routed - small / 2.0;
    assert!(
        (o["offload_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{o}"
    );
    assert_eq!(o["no_batch_api"], serde_json::json!(["other"]), "{o}");
    assert_eq!(o["waves_at_most"], 1, "{o}");
    // 9 items at 2 a second, as submit judges the deadline.
    assert_eq!(o["realtime_secs"], 5, "{o}");
    assert_eq!(o["meets_deadline"], true);
    let left = o["deadline_in_secs"].as_u64().unwrap();
    assert!((3590..=3600).contains(&left), "{o}");
    assert_eq!(
        o["offload_finish_by_secs"], left,
        "the deadline caps the window"
    );

    let text_out = text(&estimate(&["--deadline", "1h"]).stdout);
    eprintln!("{text_out}");
    for want in ["with offload $", "no batch API other", "up to 1 wave(s)"] {
        assert!(text_out.contains(want), "{want}: {text_out}");
    }
    // Too close even for real-time: said, as submit would refuse it.
    let tight = last_json(&estimate(&["--deadline", "2s", "--json"]));
    assert_eq!(tight["offload"]["meets_deadline"], false, "{tight}");
    // Without a deadline, the estimate is as before.
    assert!(last_json(&estimate(&["--json"])).get("offload").is_none());
}

//! `batchyard estimate --deadline`: the cost real-time only against the offload lane, the
//! models without a batch API named, and the finish time, with the real binary and no
//! services (nothing is called: the router's plans are priced).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

#[test]
fn estimate_with_a_deadline_compares_real_time_with_offload() {
    let dir = tempfile::tempdir().unwrap();
    // `small` can go through its provider's batch API; `other`'s provider has none.
    write_file(
        dir.path(),
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[routing]
learn = false

[offload]
min_items = 3
realtime_items_per_sec = 2

[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
batch_api = true

[providers.plain]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.small]
provider = "fake"
name = "small-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_window = 16000
tier = 1

[models.other]
provider = "plain"
name = "other-1"
input_usd_per_mtok = 4.0
output_usd_per_mtok = 8.0
context_window = 16000
tier = 1

[tasks.read]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
"#,
            store = dir.path().join("store").display()
        )
        .as_bytes(),
    );
    let body: String = (0..9)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document number {i}\"}}\n"))
        .collect();
    let input = write_file(dir.path(), "docs.jsonl", body.as_bytes());
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

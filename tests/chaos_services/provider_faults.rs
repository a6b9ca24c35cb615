//! C4: the provider fault mix at once, against the fake provider over HTTP.

use super::*;

/// Every error code `errors.jsonl` may carry (ARCHITECTURE.md's taxonomy and the job-level codes).
const TYPED_CODES: [&str; 18] = [
    "rate_limited",
    "transient",
    "context_overflow",
    "invalid_request",
    "auth",
    "quota_exhausted",
    "content_filter",
    "malformed_response",
    "response_too_large",
    "validation_failed",
    "budget_exhausted",
    "cancelled",
    "expired",
    "worker_lost",
    "invalid_input",
    "no_adequate_model",
    "model_unavailable",
    "model_paused",
];

#[test]
fn c4_the_provider_fault_mix_at_once() {
    let started = Instant::now();
    // One 429 pauses the model for every worker for its hint (call.rs), so with 10% of calls
    // limited the hint sets the pace: CI keeps OpenAI's `retry-after-ms: 50` alone, the soak adds
    // a standard `retry-after: 1` (the longer hint wins) and runs at about 10 calls a second.
    let n = if long() { 5_000 } else { 1_000 };
    let mut fake = vec![
        "--fail-rate-429",
        "0.10",
        "--fail-rate-500",
        "0.05",
        "--hang-rate",
        "0.02",
        "--hang-secs",
        "1",
        "--malformed-rate",
        "0.01",
        "--length-rate",
        "0.01",
    ];
    if long() {
        fake.extend(["--retry-after-secs", "1"]);
    }
    let Some(cluster) = Cluster::start_opts(
        "chaos_c4",
        &fake,
        Options {
            visibility_secs: 10,
            ..Options::default()
        },
    ) else {
        return;
    };
    // The random faults are all retryable, so most runs end with no error at all: three items
    // that always fail make sure errors.jsonl is checked, each with the code it must carry.
    let doomed = [
        ("doomed-context", "FAKE:CONTEXT", "context_overflow"),
        ("doomed-malformed", "FAKE:MALFORMED", "malformed_response"),
        ("doomed-500", "FAKE:500_ALWAYS", "transient"),
    ];
    let path = input(&cluster, "c4", n - doomed.len());
    let mut body = std::fs::read_to_string(&path).unwrap();
    for (cid, magic, _) in doomed {
        body += &(support::request_line(cid, &format!("{magic} please")) + "\n");
    }
    std::fs::write(&path, body).unwrap();
    let id = cluster.submit(path.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let _workers = Children(
        (0..2)
            .map(|_| cluster.spawn_worker(&["--concurrency", "16"]))
            .collect(),
    );
    let done = wait_done(
        &cluster,
        &id,
        Duration::from_secs(if long() { 900 } else { 75 }),
    );
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, n);

    let stats = cluster.fake.stats();
    let faults = &stats["faults"];
    for kind in ["429", "500", "hang", "malformed", "length"] {
        assert!(
            faults[kind].as_u64().unwrap_or(0) > 0,
            "the fake served no {kind} fault: {stats}"
        );
    }
    assert!(
        stats["by_status"]["429"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    for (cid, _, code) in doomed {
        let line = errors.iter().find(|l| l["custom_id"] == cid);
        assert_eq!(
            line.map(|l| l["error"]["code"].clone()),
            Some(Value::from(code)),
            "{cid} in errors.jsonl: {line:?}"
        );
    }
    for line in &errors {
        let code = line["error"]["code"].as_str().unwrap_or_default();
        assert!(TYPED_CODES.contains(&code), "an untyped error: {line}");
        assert!(line["response"].is_null(), "{line}");
        assert!(
            !line["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{line}"
        );
    }
    // A truncated or malformed answer is never passed off as a success while a larger model
    // is left: truncation escalates. On the last model (`large`) a truncated answer is what
    // the provider gave, and it stays a 200 with `finish_reason: "length"`, as in OpenAI's
    // batch output (1% of calls are truncated here, so about one run in ten sees one).
    for line in &ok {
        let body = &line["response"]["body"];
        let finish = body["choices"][0]["finish_reason"].as_str();
        let last_model = line["batchyard"]["model"] == "large";
        assert!(
            finish == Some("stop") || (finish == Some("length") && last_model),
            "{line}"
        );
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "{line}"
        );
    }
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    for line in &errors {
        *codes
            .entry(line["error"]["code"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    eprintln!(
        "C4: {n} jobs ({} ok, {} errors {codes:?}); provider requests {} faults {}; wall {:.1}s",
        ok.len(),
        errors.len(),
        stats["requests"],
        faults,
        started.elapsed().as_secs_f64()
    );
}

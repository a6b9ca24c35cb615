//! Tenants on the API: each token belongs to a tenant (`tenant:token` in
//! `BATCHYARD_API_TOKENS`, or a tenant's `tokens_env`), a batch belongs to its creator's
//! tenant, and a tenant's token sees, reads, cancels and retries only its own batches and
//! files. The `default` tenant's (bare) tokens see everything. Real Redis, S3, fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::api::*;
use support::cluster::{Cluster, Options};

const ROOT: &str = "root-token-1";
const TEAM_A: &str = "ta-token-1";
const TEAM_B: &str = "tb-token-1";

fn as_tenant(s: &Server, token: &str, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    curl(&s.base, method, path, Some(token), extra)
}

fn upload_as(s: &Server, token: &str, path: &std::path::Path) -> serde_json::Value {
    let file = format!("file=@{}", path.display());
    ok_json(as_tenant(
        s,
        token,
        "POST",
        "/v1/files",
        &["-F", "purpose=batch", "-F", &file],
    ))
}

fn create_as(s: &Server, token: &str, file_id: &str) -> (u16, String) {
    let body = format!(
        r#"{{"input_file_id":"{file_id}","endpoint":"/v1/chat/completions","completion_window":"24h"}}"#
    );
    as_tenant(
        s,
        token,
        "POST",
        "/v1/batches",
        &["-H", "Content-Type: application/json", "-d", &body],
    )
}

fn wait_as(s: &Server, token: &str, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let b = ok_json(as_tenant(
            s,
            token,
            "GET",
            &format!("/v1/batches/{id}"),
            &[],
        ));
        if b["status"] == "completed" || b["status"] == "failed" {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not finished: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids(list: &serde_json::Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_tenants_token_sees_only_its_own_batches_and_files() {
    let opts = Options {
        extra_toml:
            "[tenants.team-a]\nweight = 2\n\n[tenants.team-b]\ntokens_env = \"TEAM_B_TOKENS\"\n"
                .into(),
        ..Options::default()
    };
    let Some(cluster) = Cluster::start_opts("api_tenants", &[], opts) else {
        return;
    };
    let tokens = format!("{ROOT}, team-a:{TEAM_A}");
    let s = Server::start_env(
        &cluster,
        &[
            ("BATCHYARD_API_TOKENS", tokens.as_str()),
            ("TEAM_B_TOKENS", TEAM_B),
        ],
    );
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let dir = cluster.dir.path();

    // Each team uploads and runs a batch of its own.
    let file_a = upload_as(&s, TEAM_A, &input(dir, "ta", 3));
    let file_a = file_a["id"].as_str().unwrap().to_string();
    let file_b = upload_as(&s, TEAM_B, &input(dir, "tb", 2));
    let file_b = file_b["id"].as_str().unwrap().to_string();
    let batch_a = ok_json(create_as(&s, TEAM_A, &file_a));
    let batch_a = batch_a["id"].as_str().unwrap().to_string();
    let batch_b = ok_json(create_as(&s, TEAM_B, &file_b));
    let batch_b = batch_b["id"].as_str().unwrap().to_string();
    let done_a = wait_as(&s, TEAM_A, &batch_a);
    assert_eq!(done_a["status"], "completed", "{done_a}");
    assert_eq!(done_a["tenant"], "team-a", "{done_a}");
    assert_eq!(wait_as(&s, TEAM_B, &batch_b)["status"], "completed");
    let output_a = done_a["output_file_id"].as_str().unwrap().to_string();

    // Team B can't see, read, use, cancel or retry anything of team A's: 404, as if absent.
    let json = ["-H", "Content-Type: application/json", "-d", "{}"];
    let hidden: [(&str, String, &[&str]); 9] = [
        ("GET", format!("/v1/files/{file_a}"), &[]),
        ("GET", format!("/v1/files/{file_a}/content"), &[]),
        ("DELETE", format!("/v1/files/{file_a}"), &[]),
        ("GET", format!("/v1/files/{output_a}"), &[]),
        ("GET", format!("/v1/files/{output_a}/content"), &[]),
        ("GET", format!("/v1/batches/{batch_a}"), &[]),
        ("POST", format!("/v1/batches/{batch_a}/cancel"), &[]),
        ("GET", format!("/api/batches/{batch_a}"), &[]),
        ("POST", format!("/api/batches/{batch_a}/retry"), &json),
    ];
    for (method, path, extra) in &hidden {
        let e = expect_error(as_tenant(&s, TEAM_B, method, path, extra), 404);
        assert!(
            !e["message"].as_str().unwrap().contains("tenant"),
            "{method} {path}: {e}"
        );
    }
    let e = expect_error(create_as(&s, TEAM_B, &file_a), 400);
    assert_eq!(e["param"], "input_file_id", "{e}");

    // Lists hold only the caller's own; the default tenant's token sees both.
    let v1_b = ok_json(as_tenant(&s, TEAM_B, "GET", "/v1/batches?limit=100", &[]));
    assert_eq!(ids(&v1_b, "data"), vec![batch_b.clone()], "{v1_b}");
    let api_a = ok_json(as_tenant(&s, TEAM_A, "GET", "/api/batches?limit=100", &[]));
    assert_eq!(ids(&api_a, "data"), vec![batch_a.clone()], "{api_a}");
    let v1_root = ok_json(as_tenant(&s, ROOT, "GET", "/v1/batches?limit=100", &[]));
    let mut all = ids(&v1_root, "data");
    all.sort();
    let mut both = vec![batch_a.clone(), batch_b.clone()];
    both.sort();
    assert_eq!(all, both, "{v1_root}");
    // The shares: a tenant sees its own line, the operator every tenant's.
    let names = |token: &str| -> Vec<String> {
        let q = ok_json(as_tenant(&s, token, "GET", "/api/queues", &[]));
        q["tenants"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}"))
            .iter()
            .map(|t| t["tenant"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(TEAM_B), vec!["team-b".to_string()]);
    let all_names = names(ROOT);
    assert!(
        all_names.contains(&"team-a".to_string()) && all_names.contains(&"team-b".to_string()),
        "{all_names:?}"
    );

    // Usage for chargeback: a tenant sees its own line, the operator both, with items and spend.
    let usage = |token: &str, query: &str| ok_json(as_tenant(&s, token, "GET", query, &[]));
    let mine = usage(TEAM_B, "/api/usage?tenant=team-a");
    assert_eq!(mine["tenants"].as_array().map(Vec::len), Some(0), "{mine}");
    let mine = usage(TEAM_B, "/api/usage");
    assert_eq!(mine["tenants"][0]["tenant"], "team-b", "{mine}");
    assert_eq!(mine["tenants"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(
        (&mine["total"]["batches"], &mine["total"]["items"]),
        (&1.into(), &2.into()),
        "{mine}"
    );
    let all_usage = usage(ROOT, "/api/usage?since=1h");
    let items: Vec<(String, u64)> = all_usage["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap().to_string(),
                t["completed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        items.contains(&("team-a".into(), 3)) && items.contains(&("team-b".into(), 2)),
        "{all_usage}"
    );
    // The spend is the batches' own, summed.
    let cost = |id: &str| {
        ok_json(as_tenant(
            &s,
            ROOT,
            "GET",
            &format!("/v1/batches/{id}"),
            &[],
        ))["cost_usd"]
            .as_f64()
            .unwrap()
    };
    let spent = all_usage["total"]["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "{all_usage}");
    assert!(
        (spent - cost(&batch_a) - cost(&batch_b)).abs() < 1e-6,
        "{all_usage}"
    );
    let e = expect_error(
        as_tenant(&s, ROOT, "GET", "/api/usage?since=yesterday", &[]),
        400,
    );
    assert_eq!(e["param"], "since", "{e}");
    let none = usage(ROOT, "/api/usage?since=2020-01-01&until=2020-02-01");
    assert_eq!(none["total"]["batches"], 0, "{none}");

    // The operator reads and acts on any tenant's: here, team A's output.
    let (code, body) = as_tenant(
        &s,
        ROOT,
        "GET",
        &format!("/v1/files/{output_a}/content"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.lines().count(), 3, "{body}");
    // Team A still reads its own output.
    let (code, body) = as_tenant(
        &s,
        TEAM_A,
        "GET",
        &format!("/v1/files/{output_a}/content"),
        &[],
    );
    assert_eq!((code, body.lines().count()), (200, 3), "{body}");

    // Pages of a tenant's own list, read from its own index: more batches of both, paged
    // two at a time with `after`, hold exactly team A's, newest first, in the operator's order.
    for (token, file) in [(TEAM_A, &file_a), (TEAM_B, &file_b), (TEAM_A, &file_a)] {
        ok_json(create_as(&s, token, file));
    }
    ok_json(create_as(&s, TEAM_A, &file_a));
    let of_a: Vec<String> = {
        let root = ok_json(as_tenant(&s, ROOT, "GET", "/v1/batches?limit=100", &[]));
        let mut mine = Vec::new();
        for b in root["data"].as_array().unwrap() {
            if b["tenant"] == "team-a" {
                mine.push(b["id"].as_str().unwrap().to_string());
            }
        }
        mine
    };
    assert_eq!(of_a.len(), 4, "{of_a:?}");
    let mut paged = Vec::new();
    let mut after = String::new();
    for page in 0..3 {
        let q = if after.is_empty() {
            "/v1/batches?limit=2".to_string()
        } else {
            format!("/v1/batches?limit=2&after={after}")
        };
        let list = ok_json(as_tenant(&s, TEAM_A, "GET", &q, &[]));
        let got = ids(&list, "data");
        assert_eq!(list["has_more"], page == 0, "page {page}: {list}");
        paged.extend(got);
        if list["has_more"] != true {
            break;
        }
        after = list["last_id"].as_str().unwrap().to_string();
    }
    assert_eq!(paged, of_a);
    // The CLI lists one tenant's batches the same way.
    let out = cluster
        .cmd()
        .args(["status", "--tenant", "team-b", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = ids(&status, "batches");
    assert_eq!(listed.len(), 2, "{status}");
    assert!(listed.contains(&batch_b), "{listed:?}");
    assert!(listed.iter().all(|id| !of_a.contains(id)), "{listed:?}");

    // Unknown tokens, and a tenant prefix sent as part of the token, are refused.
    for bad in ["nope", "team-a:ta-token-1"] {
        let e = expect_error(as_tenant(&s, bad, "GET", "/v1/batches", &[]), 401);
        assert_eq!(e["code"], "invalid_api_key");
    }
    s.stop();
}

#[test]
fn a_token_for_an_unconfigured_tenant_stops_serve_without_showing_the_token() {
    let Some(cluster) = Cluster::start_opts("api_tenants_bad", &[], Options::default()) else {
        return;
    };
    let out = cluster
        .cmd()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("BATCHYARD_API_TOKENS", "tema-a:very-secret-token-9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"tema-a\"") && stderr.contains("[tenants.tema-a]"),
        "{stderr}"
    );
    assert!(!stderr.contains("very-secret-token-9"), "{stderr}");
}

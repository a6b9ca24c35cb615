//! `batchyard check`: the config, the age of catalog prices, Redis and the object store, each
//! against the real thing (a real redis-server, SeaweedFS, a folder store, a closed port).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use batchyard_testkit::process::free_port;
use serde_json::Value;
use support::cluster::Cluster;
use support::*;

fn findings(stdout: &[u8]) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(stdout).unwrap();
    doc["findings"].as_array().unwrap().clone()
}

fn level_of<'a>(findings: &'a [Value], what: &str) -> &'a str {
    findings
        .iter()
        .find(|f| f["what"] == what)
        .unwrap_or_else(|| panic!("no {what} finding in {findings:?}"))["level"]
        .as_str()
        .unwrap()
}

/// A config with no Redis unless `redis` is given, a folder store, and one model priced from
/// the shipped catalog.
fn write_config(dir: &Path, redis: Option<&str>) -> std::path::PathBuf {
    let store = dir.join("store");
    let queue = redis.map_or_else(String::new, |url| {
        format!("[queue]\nredis_url = \"{url}\"\n")
    });
    let config = dir.join("batchyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"{queue}
[storage]
url = "file://{store}"

[providers.oai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "CHECK_TEST_KEY"

[models.mini]
provider = "oai"
catalog = "openai/gpt-4.1-mini"
"#,
            store = store.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_working_deployment_checks_clean() {
    let Some(cluster) = Cluster::start("check_clean", &[], 30) else {
        return;
    };
    let out = run(cluster.cmd().args(["check", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let found = findings(&out.stdout);
    assert_eq!(level_of(&found, "config"), "ok", "{found:?}");
    assert_eq!(level_of(&found, "redis"), "ok", "{found:?}");
    assert_eq!(level_of(&found, "storage"), "ok", "{found:?}");
    let config = found.iter().find(|f| f["what"] == "config").unwrap();
    assert!(
        config["detail"].as_str().unwrap().contains("2 model(s)"),
        "{config}"
    );
}

#[test]
fn a_down_redis_is_an_error_that_hides_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let url = format!("redis://:hunter2-check-secret@127.0.0.1:{port}");
    let config = write_config(dir.path(), Some(&url));
    let out = run(batchyard(dir.path())
        .args(["--config", config.to_str().unwrap(), "check"])
        .env("CHECK_TEST_KEY", "sk-check-key-777"));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("ERROR redis"), "{stdout}");
    assert!(stdout.contains("ok    storage"), "{stdout}");
    for secret in ["hunter2-check-secret", "sk-check-key-777"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}\n{stderr}"
        );
    }
    // The store probe leaves nothing behind.
    let probes = dir.path().join("store").join("check");
    let left = std::fs::read_dir(&probes).map_or(0, |d| d.count());
    assert_eq!(left, 0, "probe objects left in {}", probes.display());
}

#[test]
fn offline_lists_catalog_prices_and_touches_no_service() {
    let dir = tempfile::tempdir().unwrap();
    // Redis on a closed port: --offline must not try it.
    let url = format!("redis://127.0.0.1:{}", free_port().unwrap());
    let config = write_config(dir.path(), Some(&url));
    let out = run(batchyard(dir.path())
        .args(["--config", config.to_str().unwrap(), "check", "--offline"])
        .args(["--json"])
        .env("CHECK_TEST_KEY", "k"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let found = findings(&out.stdout);
    assert!(found.iter().all(|f| f["what"] != "redis"), "{found:?}");
    let catalog = found.iter().find(|f| f["what"] == "catalog").unwrap();
    assert_eq!(catalog["level"], "ok", "{catalog}");
    assert!(
        catalog["detail"]
            .as_str()
            .unwrap()
            .contains("mini (openai/gpt-4.1-mini)"),
        "{catalog}"
    );
    assert!(
        !dir.path().join("store").exists(),
        "offline wrote to the store"
    );
}

#[test]
fn a_bad_config_fails_check_with_the_loaders_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let typo = std::fs::read_to_string(&config)
        .unwrap()
        .replace("gpt-4.1-mini", "gpt-4.1-mimi");
    std::fs::write(&config, typo).unwrap();
    let out = run(batchyard(dir.path()).args(["--config", config.to_str().unwrap(), "check"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gpt-4.1-mini"),
        "closest match named: {stderr}"
    );
}

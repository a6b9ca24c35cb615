//! The `bedrock` provider's AWS credential chain against loopback stand-ins of its cloud
//! sources (the fake provider's instance metadata, container agent and STS routes), which hand
//! out the keys its Converse route checks signatures with.
//!
//! The chain reads the process environment, so each case runs this test binary again as a
//! child (`chain_child`) with a clean, chosen environment: no `AWS_*` of the machine, a HOME
//! without `.aws`, and the variables that point one source at the fake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::{BedrockAuth, BedrockConfig, BedrockProvider};
use support::fake_provider::{body_for, call};

const KEY_ID: &str = "AKIDCHAINTEST";
const SECRET: &str = "chain/Secret+0123456789";

/// Set in the child's environment: what it should do, and where the fake is.
const CHILD_ENV: &str = "BATCHYARD_BEDROCK_CHAIN_CHILD";
const FAKE_ENV: &str = "BATCHYARD_BEDROCK_CHAIN_FAKE";

/// Runs `chain_child` with only `vars` (and PATH) set; returns its output on success.
fn run_child(mode: &str, fake: &FakeProvider, home: &Path, vars: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .args(["--exact", "chain_child", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env(CHILD_ENV, mode)
        .env(FAKE_ENV, &fake.url);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child {mode} failed:\n{text}");
    assert!(text.contains("CHILD OK"), "the child did not run:\n{text}");
    assert!(
        !text.contains(SECRET),
        "a secret reached the output:\n{text}"
    );
    text
}

fn signing_fake(ttl_secs: &str) -> FakeProvider {
    FakeProvider::start(&[
        "--bedrock-secret",
        SECRET,
        "--bedrock-key-id",
        KEY_ID,
        "--credentials-ttl-secs",
        ttl_secs,
    ])
}

fn served(fake: &FakeProvider) -> u64 {
    fake.stats()["credentials_served"].as_u64().unwrap()
}

/// Only does something as a child: two signed calls with the chain (`chain`), or with
/// `profile = "bedrock"` (`profile`), to the fake named in its environment.
#[tokio::test]
async fn chain_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let url = std::env::var(FAKE_ENV).unwrap();
    let mut config = BedrockConfig::new("us-east-1");
    config.base_url = url;
    config.auth = BedrockAuth::Chain {
        profile: (mode == "profile").then(|| "bedrock".to_owned()),
    };
    let bedrock = BedrockProvider::new(config).unwrap();
    for text in ["first", "second"] {
        let done = bedrock
            .complete(call(
                "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                &body_for(text),
            ))
            .await;
        match done {
            Ok(done) => assert_eq!(done.finish_reason.as_deref(), Some("stop")),
            Err(err) => panic!("the {text} call failed: {err}"),
        }
    }
    println!("CHILD OK");
}

#[test]
fn container_credentials_sign_calls_and_are_reused_until_near_expiry() {
    let home = tempfile::tempdir().unwrap();
    let fake = signing_fake("3600");
    let vars = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/container-credentials", fake.url),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    run_child("chain", &fake, home.path(), &vars);
    assert_eq!(served(&fake), 1, "an hour left: fetched once for two calls");
    assert_eq!(fake.count(200), 2);

    // Credentials within five minutes of expiry are fetched again before each call.
    let fake = signing_fake("120");
    let vars = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/container-credentials", fake.url),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    run_child("chain", &fake, home.path(), &vars);
    assert_eq!(
        served(&fake),
        2,
        "near expiry: refreshed for the second call"
    );
}

#[test]
fn instance_metadata_credentials_sign_calls() {
    let home = tempfile::tempdir().unwrap();
    let fake = signing_fake("3600");
    let vars = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url.clone())];
    run_child("chain", &fake, home.path(), &vars);
    assert_eq!(served(&fake), 1);
    assert_eq!(fake.count(200), 2);
}

#[test]
fn web_identity_credentials_come_from_sts() {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, "eyJ-fake-web-identity-token").unwrap();
    let fake = signing_fake("3600");
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/bedrock".to_owned(),
        ),
        ("AWS_ROLE_SESSION_NAME", "batchyard-test".to_owned()),
        ("AWS_ENDPOINT_URL_STS", fake.url.clone()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    run_child("chain", &fake, home.path(), &vars);
    assert_eq!(served(&fake), 1);
    assert_eq!(fake.count(200), 2);
}

#[test]
fn a_named_profile_wins_over_the_environments_keys() {
    let home = tempfile::tempdir().unwrap();
    let credentials = home.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[bedrock]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let fake = signing_fake("3600");
    // Storage's keys in the generic variables must not sign Bedrock calls.
    let vars = [
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.display().to_string(),
        ),
        ("AWS_ACCESS_KEY_ID", "AKIDSTORAGE".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "storage-secret".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    run_child("profile", &fake, home.path(), &vars);
    assert_eq!(fake.count(200), 2);
    assert_eq!(fake.count(403), 0);
}

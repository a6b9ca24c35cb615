//! The S3-compatible server the integration tests write results to.
//!
//! `scripts/test` starts SeaweedFS (`weed mini`) on a free loopback port with a
//! SigV4 identity, creates the bucket, and exports:
//!
//! | variable | example |
//! |---|---|
//! | `BATCHYARD_TEST_S3_ENDPOINT` | `http://127.0.0.1:34567` |
//! | `BATCHYARD_TEST_S3_BUCKET` | `batchyard-test` |
//! | `BATCHYARD_TEST_S3_KEY_ID` | random per run |
//! | `BATCHYARD_TEST_S3_SECRET` | random per run |
//! | `BATCHYARD_TEST_S3_REGION` | `us-east-1` (optional here; that is the default) |
//!
//! Tests share one bucket, so each test works under its own prefix
//! ([`S3Env::storage_url`]).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::in_ci;

/// Where the test S3 server is and how to sign for it.
#[derive(Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    pub region: String,
}

impl std::fmt::Debug for S3Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Env")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .field("region", &self.region)
            .finish()
    }
}

const REQUIRED: [&str; 4] = [
    "BATCHYARD_TEST_S3_ENDPOINT",
    "BATCHYARD_TEST_S3_BUCKET",
    "BATCHYARD_TEST_S3_KEY_ID",
    "BATCHYARD_TEST_S3_SECRET",
];

/// Environment variables that could make a child sign differently (a session
/// token, a profile, instance credentials); [`S3Env::apply`] removes them.
const AMBIENT_AWS: [&str; 8] = [
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
];

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads the `BATCHYARD_TEST_S3_*` variables.
///
/// When they are missing: with `CI=true` this panics (scripts/test must start
/// SeaweedFS); otherwise it returns `None` and the caller skips the test.
/// A partial set is always a mistake and panics.
pub fn s3_env() -> Option<S3Env> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|n| non_empty(n).is_none())
        .collect();
    if missing.len() == REQUIRED.len() {
        if in_ci() {
            panic!(
                "CI=true but BATCHYARD_TEST_S3_* are not set: run the tests through scripts/test, \
                 which starts SeaweedFS (weed mini) as the S3 server and exports them"
            );
        }
        return None;
    }
    if !missing.is_empty() {
        panic!(
            "incomplete test S3 settings, missing {}: run the tests through scripts/test",
            missing.join(", ")
        );
    }
    let get = |n: &str| non_empty(n).unwrap_or_default();
    Some(S3Env {
        endpoint: get("BATCHYARD_TEST_S3_ENDPOINT")
            .trim_end_matches('/')
            .to_string(),
        bucket: get("BATCHYARD_TEST_S3_BUCKET"),
        key_id: get("BATCHYARD_TEST_S3_KEY_ID"),
        secret: get("BATCHYARD_TEST_S3_SECRET"),
        region: non_empty("BATCHYARD_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".to_string()),
    })
}

/// [`s3_env`], printing a `SKIP <test>: ...` line when it returns `None`.
pub fn s3_env_or_skip(test: &str) -> Option<S3Env> {
    crate::require(
        s3_env(),
        test,
        "no test S3 server (BATCHYARD_TEST_S3_* unset); run scripts/test to start SeaweedFS",
    )
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `test_name` reduced to characters that are safe in an object key.
fn key_safe(test_name: &str) -> String {
    let s: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    if s.is_empty() { "test".to_string() } else { s }
}

impl S3Env {
    /// Variables for a batchyard child process so that it uses this S3
    /// (object_store reads them in `AmazonS3Builder::from_env`).
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".to_string(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".to_string(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), self.secret.clone()),
            ("AWS_REGION".to_string(), self.region.clone()),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ]
    }

    /// Sets [`S3Env::child_env`] on `cmd` and removes ambient AWS variables
    /// (session token, profile, ...) that would change how the child signs.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for name in AMBIENT_AWS {
            cmd.env_remove(name);
        }
        cmd.envs(self.child_env())
    }

    /// Flags for the fake provider: its Bedrock batch jobs read and write this S3 server, and
    /// its Bedrock routes check signatures made with this server's keys (which the AWS
    /// chain of a child with [`S3Env::child_env`] signs with).
    pub fn fake_bedrock_args(&self) -> Vec<String> {
        [
            ("--bedrock-secret", &self.secret),
            ("--bedrock-key-id", &self.key_id),
            ("--bedrock-batch-s3-endpoint", &self.endpoint),
            ("--bedrock-batch-s3-key-id", &self.key_id),
            ("--bedrock-batch-s3-secret", &self.secret),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    /// A unique prefix for one test: `<test>-<pid>-<nanos>-<n>`.
    pub fn unique_prefix(&self, test_name: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{nanos}-{n}", key_safe(test_name), std::process::id())
    }

    /// A storage URL under a unique prefix for one test: `s3://<bucket>/<prefix>`.
    pub fn storage_url(&self, test_name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.unique_prefix(test_name))
    }
}

//! The services batchyard's tests run against, written once for all three crates' tests
//! (a dev-dependency of `batchyard`, `batchyard-jobs` and `batchyard-workers`):
//!
//! - [`redis`]: [`TestRedis`], a throwaway redis-server per test (AOF, password, TLS; kill and
//!   restart), or an external one named by `BATCHYARD_TEST_REDIS_URL` where a test allows it;
//! - [`s3`]: [`S3Env`], the test S3 server `scripts/test` starts (`BATCHYARD_TEST_S3_*`);
//! - [`fake`]: [`FakeProvider`], the `batchyard-fake-provider` binary as a process on loopback;
//! - [`process`]: reading a child's `listening on URL` line, free loopback ports;
//! - here: the CI-must-fail rule ([`skip_or_fail`]), in one place.
//!
//! Helpers fail the calling test by panicking, as assertions do: that is their job, so the
//! workspace's panic/unwrap/expect denials are lifted for this test-only crate.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod fake;
pub mod process;
pub mod redis;
pub mod s3;

pub use fake::{FakeProvider, fake_provider_bin};
pub use process::{free_port, listening_line};
pub use redis::{RawConn, RedisOptions, TestCluster, TestRedis, make_tls_certificates};
pub use s3::{S3Env, s3_env, s3_env_or_skip};

/// Whether the tests run under CI (`CI=true` or `CI=1`), where every service must be there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The CI-must-fail rule for a service `test` needs and cannot find (`why` says which and how
/// to get it): under CI the test fails here; elsewhere this prints `SKIP <test>: <why>` and the
/// caller skips the test by returning.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}, and CI=true requires it (run the tests through scripts/test)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// `found`, or (after [`skip_or_fail`]) `None` when it is missing.
pub fn require<T>(found: Option<T>, test: &str, why: &str) -> Option<T> {
    if found.is_none() {
        skip_or_fail(test, why);
    }
    found
}

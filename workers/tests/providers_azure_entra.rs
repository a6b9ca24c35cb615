//! Azure OpenAI with Microsoft Entra ID tokens fetched and refreshed in the process, over real
//! HTTP on loopback: the fake provider issues short-lived tokens (its token endpoint and its
//! managed-identity endpoint) and its Azure route accepts only live ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::azure_openai::entra::{EntraCredential, EntraSource};
use batchyard_workers::provider::{
    AzureAuth, AzureOpenAiConfig, AzureOpenAiProvider, ProviderErrorKind, Secret,
};
use support::fake_provider::{AzureFake as _, body_for, call, content};

const SECRET: &str = "entra-client-secret-4b1f";

fn source(server: &FakeProvider, pairs: &[(&str, &str)]) -> EntraSource {
    let mut env: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("AZURE_AUTHORITY_HOST".into(), server.url.clone());
    EntraSource::from_env(&env).unwrap().expect("a source")
}

fn with_entra(server: &FakeProvider, source: EntraSource) -> AzureOpenAiProvider {
    let credential = EntraCredential::new(source, Duration::from_secs(10)).unwrap();
    server.provider_with(AzureOpenAiConfig {
        auth: AzureAuth::Entra(Arc::new(credential)),
        ..AzureOpenAiConfig::default()
    })
}

fn issued(server: &FakeProvider) -> u64 {
    server.stats()["entra_tokens_issued"].as_u64().unwrap()
}

/// A fake whose tokens live two seconds.
fn short_lived() -> FakeProvider {
    FakeProvider::start(&[
        "--entra-client-secret",
        SECRET,
        "--entra-token-ttl-secs",
        "2",
    ])
}

#[tokio::test]
async fn a_service_principal_token_is_reused_then_refreshed_before_it_expires() {
    let server = short_lived();
    let provider = with_entra(
        &server,
        source(
            &server,
            &[
                ("AZURE_TENANT_ID", "tenant-1"),
                ("AZURE_CLIENT_ID", "app-1"),
                ("AZURE_CLIENT_SECRET", SECRET),
            ],
        ),
    );
    let body = body_for("hello");
    for _ in 0..3 {
        let done = provider.complete(call("dep", &body)).await.unwrap();
        assert!(content(&done).starts_with("fake reply from dep"));
    }
    assert_eq!(issued(&server), 1, "one token for calls within its life");
    // Past the refresh point (half of a 2 s life) but before expiry: a new token, no 401.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    provider.complete(call("dep", &body)).await.unwrap();
    assert_eq!(issued(&server), 2);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    provider.complete(call("dep", &body)).await.unwrap();
    assert_eq!(issued(&server), 3);
    assert_eq!(server.count(401), 0);
}

#[tokio::test]
async fn a_wrong_client_secret_is_auth_and_never_shown() {
    let server = short_lived();
    let wrong = "entra-wrong-secret-0000";
    let provider = with_entra(
        &server,
        source(
            &server,
            &[
                ("AZURE_TENANT_ID", "tenant-1"),
                ("AZURE_CLIENT_ID", "app-1"),
                ("AZURE_CLIENT_SECRET", wrong),
            ],
        ),
    );
    let err = provider
        .complete(call("dep", &body_for("hi")))
        .await
        .expect_err("refused");
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
    assert!(err.message.contains("AADSTS7000215"), "{err}");
    assert!(
        err.message.contains("AZURE_CLIENT_ID"),
        "says what to check: {err}"
    );
    assert!(!format!("{err} {err:?}").contains(wrong));
    assert_eq!(issued(&server), 0);
}

#[tokio::test]
async fn workload_identity_reads_the_rewritten_token_file_on_every_fetch() {
    let server = short_lived();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let provider = with_entra(
        &server,
        source(
            &server,
            &[
                ("AZURE_TENANT_ID", "tenant-1"),
                ("AZURE_CLIENT_ID", "app-1"),
                ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
            ],
        ),
    );
    let body = body_for("hello");
    provider.complete(call("dep", &body)).await.unwrap();
    // The platform rotates the file to an assertion the service no longer accepts: the next
    // fetch, after the token's refresh point, must read it again and fail.
    std::fs::write(&file, "rotated-but-revoked").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = provider
        .complete(call("dep", &body))
        .await
        .expect_err("refused");
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
    std::fs::write(&file, SECRET).unwrap();
    provider.complete(call("dep", &body)).await.unwrap();
    assert_eq!(issued(&server), 2);
}

#[tokio::test]
async fn a_managed_identity_endpoint_gives_tokens_too() {
    let server = short_lived();
    let endpoint = format!("{}/msi/token", server.url);
    let provider = with_entra(
        &server,
        source(
            &server,
            &[
                ("IDENTITY_ENDPOINT", endpoint.as_str()),
                ("IDENTITY_HEADER", SECRET),
            ],
        ),
    );
    provider
        .complete(call("dep", &body_for("hello")))
        .await
        .unwrap();
    assert_eq!(issued(&server), 1);
}

#[tokio::test]
async fn a_static_token_that_was_never_issued_or_expired_is_refused() {
    let server = short_lived();
    let provider = server.provider_with(AzureOpenAiConfig {
        auth: AzureAuth::AdToken(Secret::new("entra-1-0000000000000000".into())),
        ..AzureOpenAiConfig::default()
    });
    let err = provider
        .complete(call("dep", &body_for("hello")))
        .await
        .expect_err("refused");
    assert_eq!(err.status, Some(401), "{err}");
}

//! The `bedrock` provider over real HTTP on loopback, against the fake provider's Converse
//! route, which recomputes every SigV4 signature with the secret it was given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batchyard_testkit::FakeProvider;
use batchyard_workers::call::retry::call_with_retry;
use batchyard_workers::provider::{
    BedrockAuth, BedrockConfig, BedrockProvider, ProviderErrorKind, Secret,
};
use support::fake_provider::{body_for, call, content, fast_policy};

const KEY_ID: &str = "AKIDBEDROCKTEST";
const SECRET: &str = "bedrock/Test+Secret0123456789";
const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

fn signing_fake(extra: &[&str]) -> FakeProvider {
    let mut args = vec!["--bedrock-secret", SECRET, "--bedrock-key-id", KEY_ID];
    args.extend_from_slice(extra);
    FakeProvider::start(&args)
}

fn keys(id: &str, secret: &str, token: Option<&str>) -> BedrockAuth {
    BedrockAuth::Keys {
        access_key_id: Secret::new(id.to_owned()),
        secret_access_key: Secret::new(secret.to_owned()),
        session_token: token.map(|t| Secret::new(t.to_owned())),
    }
}

fn provider(server: &FakeProvider, auth: BedrockAuth, fault: Option<&str>) -> BedrockProvider {
    let mut config = BedrockConfig::new("us-east-1");
    config.base_url = server.url.clone();
    config.auth = auth;
    if let Some(fault) = fault {
        config.headers = vec![("x-fake-fault".into(), fault.into())];
    }
    BedrockProvider::new(config).expect("build the provider")
}

#[tokio::test]
async fn a_signed_call_with_a_colon_in_the_model_id_answers_with_usage_and_cache_counts() {
    let server = signing_fake(&[]);
    let bedrock = provider(&server, keys(KEY_ID, SECRET, None), None);
    let text = "Summarise this long report [[cached_tokens=6]] [[cache_write_tokens=3]]";
    let done = bedrock
        .complete(call(HAIKU, &body_for(text)))
        .await
        .expect("a completion");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(
        content(&done).starts_with(&format!("fake reply from {HAIKU}: ")),
        "the fake saw the decoded model id: {}",
        content(&done)
    );
    // The fake counts a quarter of the characters plus 4 per message; the system prompt goes
    // in `system`, not as a message.
    let expected_input = ("You summarise documents.".len() + text.len()) as u64 / 4 + 4;
    assert_eq!(
        done.input_tokens, expected_input,
        "cache reads and writes included"
    );
    assert_eq!(done.cached_input_tokens, 6);
    assert_eq!(done.cache_write_input_tokens, 3);
    assert!(done.output_tokens > 0);
    assert!(
        done.request_id.starts_with("fake-bedrock-"),
        "{}",
        done.request_id
    );
    assert_eq!(
        done.body["usage"]["prompt_tokens_details"]["cached_tokens"],
        6
    );

    // Temporary credentials: the session token is sent and signed.
    let temporary = provider(&server, keys(KEY_ID, SECRET, Some("session-tok")), None);
    temporary
        .complete(call("amazon.nova-lite-v1:0", &body_for("hi")))
        .await
        .expect("signed with a session token");
    assert_eq!(server.count(200), 2);
}

#[tokio::test]
async fn a_bad_signature_or_key_is_auth_and_never_shows_a_secret() {
    let server = signing_fake(&["--require-key", "ABSK-right-bearer-key"]);
    let wrong_secret = "bedrock/Wrong+Secret-777";
    let cases = [
        (
            keys(KEY_ID, wrong_secret, None),
            "InvalidSignatureException",
        ),
        (
            keys("AKIDSOMEONEELSE", SECRET, None),
            "UnrecognizedClientException",
        ),
        (
            BedrockAuth::Bearer(Secret::new("ABSK-wrong-bearer-key".into())),
            "AccessDeniedException",
        ),
    ];
    for (auth, name) in cases {
        let bedrock = provider(&server, auth, None);
        let err = bedrock
            .complete(call(HAIKU, &body_for("hello")))
            .await
            .expect_err("refused");
        assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
        assert_eq!(err.status, Some(403));
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(name), "{shown}");
        for secret in [wrong_secret, SECRET, "ABSK-wrong-bearer-key"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    assert_eq!(server.count(403), 3);
    // The right Bedrock API key is taken as a bearer token, unsigned.
    let bearer = provider(
        &server,
        BedrockAuth::Bearer(Secret::new("ABSK-right-bearer-key".into())),
        None,
    );
    let done = bearer
        .complete(call(HAIKU, &body_for("hello")))
        .await
        .expect("a completion with the bearer key");
    assert!(content(&done).contains("hello"));
}

#[tokio::test]
async fn throttling_is_retried_and_typed() {
    let server = signing_fake(&[]);
    let bedrock = provider(&server, keys(KEY_ID, SECRET, None), None);
    let body = body_for("please summarise FAKE:429_ONCE bedrock document 3");
    let (result, attempts) =
        call_with_retry(&fast_policy(4), || bedrock.complete(call(HAIKU, &body))).await;
    result.expect("success after one retry");
    assert_eq!(attempts, 2);
    assert_eq!(server.count(429), 1);

    let server = signing_fake(&["--rpm", "1"]);
    let bedrock = provider(&server, keys(KEY_ID, SECRET, None), None);
    bedrock
        .complete(call(HAIKU, &body_for("one")))
        .await
        .unwrap();
    let err = bedrock
        .complete(call(HAIKU, &body_for("two")))
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    assert!(err.message.contains("ThrottlingException"), "{err}");
}

#[tokio::test]
async fn overflow_validation_missing_models_and_server_errors_are_typed() {
    let server = signing_fake(&[]);
    let signed = |fault| provider(&server, keys(KEY_ID, SECRET, None), fault);
    let kind_of = |err: batchyard_workers::provider::ProviderError| err.kind;

    let err = signed(None)
        .complete(call(HAIKU, &body_for("x FAKE:CONTEXT")))
        .await
        .expect_err("too long");
    assert_eq!(err.kind, ProviderErrorKind::ContextOverflow, "{err}");
    let err = signed(None)
        .complete(call(
            HAIKU,
            &body_for("x [[stop_reason=model_context_window_exceeded]]"),
        ))
        .await
        .expect_err("ran out of context");
    assert_eq!(kind_of(err), ProviderErrorKind::ContextOverflow);
    let cut = signed(None)
        .complete(call(HAIKU, &body_for("x [[stop_reason=max_tokens]]")))
        .await
        .unwrap();
    assert_eq!(cut.finish_reason.as_deref(), Some("length"));

    let err = signed(None)
        .complete(call("missing.model-v1:0", &body_for("x")))
        .await
        .expect_err("no such model");
    assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{err}");
    assert_eq!(err.status, Some(404));
    assert!(err.message.contains("check the model id"), "{err}");

    for (fault, want) in [
        ("filter", ProviderErrorKind::ContentFilter),
        ("503", ProviderErrorKind::Transient),
        ("500", ProviderErrorKind::Transient),
        ("quota", ProviderErrorKind::RateLimited),
        ("no_choices", ProviderErrorKind::MalformedResponse),
    ] {
        let err = signed(Some(fault))
            .complete(call(HAIKU, &body_for("x")))
            .await
            .expect_err(fault);
        assert_eq!(err.kind, want, "{fault}: {err}");
    }
}

/// An independent signer agrees: botocore's SigV4Auth (from PyPI) reproduces the signature
/// `sign.rs` pins, and the fake accepts botocore's signature for a model id with `:` and
/// refuses a wrong one (`scripts/bedrock_sigv4_check.py`). scripts/test installs botocore;
/// under CI a missing one fails.
#[test]
fn botocore_agrees_with_our_signer_and_the_fake() {
    let test = "botocore_agrees_with_our_signer_and_the_fake";
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bedrock_sigv4_check.py");
    let server = signing_fake(&[]);
    let output = match std::process::Command::new("python3")
        .arg(&script)
        .args([server.url.as_str(), KEY_ID, SECRET])
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            batchyard_testkit::skip_or_fail(test, &format!("python3 does not run ({e})"));
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.code() == Some(2) {
        batchyard_testkit::skip_or_fail(
            test,
            "botocore is missing (python3 -m pip install botocore)",
        );
        return;
    }
    assert!(output.status.success(), "{text}");
    assert!(text.contains("botocore agrees with sign.rs"), "{text}");
    assert!(text.contains("accepts botocore's signature"), "{text}");
    assert_eq!(server.count(200), 1);
    assert_eq!(server.count(403), 1);
}

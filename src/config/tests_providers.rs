//! Provider tables as the config loads them: default endpoints, keys from the environment
//! and never printed, and which kinds batch.

use super::tests::{EXAMPLE, env, load};
use super::*;

#[test]
fn anthropic_providers_default_their_base_url_and_hide_the_key() {
    let text = format!(
        "{EXAMPLE}\n[providers.claude]\nkind = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n\
         timeout_secs = 30\nheaders = {{ \"anthropic-beta\" = \"prompt-caching-2024-07-31\" }}\n"
    );
    let key = "sk-ant-verysecret-42";
    let s = Settings::from_toml(&text, None, &env(&[("ANTHROPIC_API_KEY", key)])).unwrap();
    let claude = s.catalog.provider("claude").unwrap();
    assert_eq!(claude.kind_name(), "anthropic");
    let debug = format!("{claude:?}");
    assert!(
        debug.contains("https://api.anthropic.com/v1/messages"),
        "{debug}"
    );
    assert!(debug.contains("30s"), "{debug}");
    assert!(!debug.contains(key), "{debug}");

    let proxied = text.replace(
        "kind = \"anthropic\"",
        "kind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9/v1\"",
    );
    let s = load(&proxied).unwrap();
    let debug = format!("{:?}", s.catalog.provider("claude").unwrap());
    assert!(debug.contains("http://127.0.0.1:9/v1/messages"), "{debug}");

    let e = load(&text.replace(
        "kind = \"anthropic\"",
        "kind = \"anthropic\"\nlatency_ms = 5",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("providers.claude.latency_ms"), "{e}");
    let e = load(&text.replace(
        "kind = \"anthropic\"",
        "kind = \"anthropic\"\nbase_url = \"ftp://x\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("providers.claude.base_url"), "{e}");
}

#[test]
fn gemini_providers_default_to_the_public_endpoint_and_hide_the_key() {
    let text = format!(
        "{EXAMPLE}\n[providers.google]\nkind = \"gemini\"\napi_key_env = \"GEMINI_API_KEY\"\n\
         timeout_secs = 45\n"
    );
    let key = "AIzaSyVerySecret-42";
    let s = Settings::from_toml(&text, None, &env(&[("GEMINI_API_KEY", key)])).unwrap();
    let google = s.catalog.provider("google").unwrap();
    assert_eq!(google.kind_name(), "gemini");
    let debug = format!("{google:?}");
    assert!(
        debug.contains("https://generativelanguage.googleapis.com/v1beta/models"),
        "{debug}"
    );
    assert!(debug.contains("45s"), "{debug}");
    assert!(!debug.contains(key), "{debug}");

    let proxied = text.replace(
        "kind = \"gemini\"",
        "kind = \"gemini\"\nbase_url = \"http://127.0.0.1:9/v1beta\"",
    );
    let debug = format!("{:?}", load(&proxied).unwrap().catalog.provider("google"));
    assert!(
        debug.contains("http://127.0.0.1:9/v1beta/models"),
        "{debug}"
    );

    for (extra, key_path) in [
        ("latency_ms = 5", "providers.google.latency_ms"),
        ("base_url = \"ftp://x\"", "providers.google.base_url"),
        ("api_key_env = \"AIza key\"", "providers.google.api_key_env"),
    ] {
        let bad = text
            .replace("api_key_env = \"GEMINI_API_KEY\"\n", "")
            .replace("kind = \"gemini\"", &format!("kind = \"gemini\"\n{extra}"));
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains(key_path), "{extra}: {e}");
    }
    let e = load(&text.replace("kind = \"gemini\"", "kind = \"gemni\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"gemini\""), "the message lists the kind: {e}");
}

#[test]
fn anthropic_and_gemini_providers_batch_unless_told_not_to() {
    let provider = |name: &str, kind: &str, extra: &str| {
        format!(
            "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"http://127.0.0.1:9\"\n{extra}\n"
        )
    };
    let model = |key: &str, provider: &str| {
        format!(
            "[models.{key}]\nprovider = \"{provider}\"\nname = \"{key}\"\n\
             input_usd_per_mtok = 2.0\noutput_usd_per_mtok = 8.0\ncontext_window = 8000\ntier = 1\n"
        )
    };
    let text = [
        provider("a", "anthropic", ""),
        provider("g", "gemini", ""),
        provider("quiet", "anthropic", "batch_api = false"),
        provider("compat", "openai", ""),
        model("claude", "a"),
        model("gem", "g"),
        model("kept", "quiet"),
        model("local", "compat"),
    ]
    .concat();
    let s = load(&text).unwrap();
    let batch = |key: &str| s.catalog.model(key).unwrap().batch;
    for key in ["claude", "gem"] {
        let prices = batch(key).unwrap_or_else(|| panic!("{key} has no batch price"));
        assert_eq!(
            (prices.input_usd_per_mtok, prices.output_usd_per_mtok),
            (1.0, 4.0),
            "half the real-time price by default"
        );
    }
    assert!(
        batch("kept").is_none(),
        "batch_api = false keeps it real-time"
    );
    assert!(
        batch("local").is_none(),
        "an OpenAI-compatible server has no batch API by default"
    );
}

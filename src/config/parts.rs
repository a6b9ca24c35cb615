//! Pieces of config validation: URLs, providers, and pointing at the spot of a TOML error.

use std::collections::BTreeMap;
use std::time::Duration;

use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, OpenAiConfig, OpenAiProvider, Provider, Secret,
    SimulatedConfig, SimulatedProvider,
};

use super::raw::RawProvider;

pub(super) fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!(
            "not a valid url ({e}): {}",
            batchyard_jobs::error::redact(url)
        )
    })?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!(
            "unsupported scheme {:?}; use one of: {}",
            parsed.scheme(),
            schemes.join(", ")
        ));
    }
    Ok(())
}

pub(super) fn build_provider(
    key: &str,
    p: &RawProvider,
    env: &BTreeMap<String, String>,
) -> Result<Provider, (String, String)> {
    let at = |field: &str| format!("providers.{key}.{field}");
    let only_for = |field: &str, kind: &str| {
        (
            at(field),
            format!(
                "is not a setting of kind {:?}; it belongs to kind {kind:?}",
                p.kind
            ),
        )
    };
    match p.kind.as_str() {
        "simulated" => {
            if p.base_url.is_some() {
                return Err(only_for("base_url", "openai"));
            }
            if p.api_key_env.is_some() {
                return Err(only_for("api_key_env", "openai"));
            }
            let mut config = SimulatedConfig::default();
            if let Some(ms) = p.latency_ms {
                config.latency = Duration::from_millis(ms);
            }
            if let Some(tokens) = p.output_tokens {
                config.output_tokens = Some(tokens);
            }
            Ok(Provider::Simulated(SimulatedProvider::new(config)))
        }
        "openai" | "anthropic" => {
            let anthropic = p.kind == "anthropic";
            if p.latency_ms.is_some() {
                return Err(only_for("latency_ms", "simulated"));
            }
            if p.output_tokens.is_some() {
                return Err(only_for("output_tokens", "simulated"));
            }
            let base_url = match (&p.base_url, anthropic) {
                (Some(url), _) => url.as_str(),
                (None, true) => "https://api.anthropic.com",
                (None, false) => {
                    return Err((at("base_url"), "is required for kind \"openai\"".into()));
                }
            };
            check_url(base_url, &["http", "https"]).map_err(|r| (at("base_url"), r))?;
            let api_key = p
                .api_key_env
                .as_ref()
                .and_then(|var| env.get(var))
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.clone()));
            let base_url = base_url.trim_end_matches('/').to_string();
            let headers = p.headers.clone().unwrap_or_default().into_iter().collect();
            let built = if anthropic {
                let mut config = AnthropicConfig {
                    base_url,
                    api_key,
                    headers,
                    ..AnthropicConfig::default()
                };
                config.timeout = p.timeout_secs.map_or(config.timeout, Duration::from_secs);
                AnthropicProvider::new(config).map(Provider::Anthropic)
            } else {
                let mut config = OpenAiConfig {
                    base_url,
                    api_key,
                    headers,
                    ..OpenAiConfig::default()
                };
                config.timeout = p.timeout_secs.map_or(config.timeout, Duration::from_secs);
                OpenAiProvider::new(config).map(Provider::OpenAi)
            };
            built.map_err(|e| (at("base_url"), e.message))
        }
        other => Err((
            at("kind"),
            format!(
                "unknown provider kind {other:?}; use \"openai\", \"anthropic\" or \"simulated\""
            ),
        )),
    }
}

/// The key path and `:line:col` of a TOML error, for a message that points at the spot.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> (String, String) {
    let Some(span) = e.span() else {
        return ("-".into(), String::new());
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let mut table = String::new();
    for l in before.lines() {
        let t = l.trim();
        if t.starts_with('[') && t.ends_with(']') {
            table = t.trim_matches(|c| c == '[' || c == ']').to_string();
        }
    }
    let snippet = text[span.start.min(text.len())..span.end.min(text.len())]
        .split(['=', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let key = match (
        table.is_empty(),
        snippet.is_empty() || snippet.starts_with('['),
    ) {
        (true, _) => snippet,
        (false, true) => table,
        (false, false) => format!("{table}.{snippet}"),
    };
    (key, format!(":{line}:{col}"))
}

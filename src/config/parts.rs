//! Pieces of config validation: URLs, providers, and pointing at the spot of a TOML error.

use std::collections::BTreeMap;
use std::time::Duration;

use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, AzureOpenAiConfig, AzureOpenAiProvider, BedrockConfig,
    BedrockProvider, GeminiConfig, GeminiProvider, OpenAiConfig, OpenAiProvider, Provider, Secret,
    SimulatedConfig, SimulatedProvider, gemini,
};

use super::raw::RawProvider;

/// A task's `response_format` as the JSON it is sent as.
pub(super) fn response_format(
    key: &str,
    value: &toml::Value,
) -> Result<serde_json::Value, (String, String)> {
    let json = serde_json::to_value(value).map_err(|e| {
        (
            format!("tasks.{key}.response_format"),
            format!("cannot be turned into JSON: {e}"),
        )
    })?;
    if json
        .get("type")
        .and_then(serde_json::Value::as_str)
        .is_none()
    {
        return Err((
            format!("tasks.{key}.response_format"),
            "needs a `type` (\"json_schema\", \"json_object\" or \"text\")".into(),
        ));
    }
    Ok(json)
}

/// Words that make a header name a credential's (`Authorization`, `X-Auth-Token`,
/// `anthropic-api-key`, `Cookie`, `X-Amz-Signature`, ...): such a header's value belongs in
/// the environment, not the config file. Matched inside the trimmed, case-folded name, so a
/// new vendor's spelling is caught too.
const CREDENTIAL_WORDS: [&str; 7] = [
    "auth",
    "key",
    "token",
    "secret",
    "cookie",
    "signature",
    "passw",
];

fn says_credential(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|w| name.contains(w))
}

/// A header value that names an environment variable: `${VAR}`.
fn env_reference(value: &str) -> Option<&str> {
    value
        .trim()
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .filter(|v| is_env_name(v))
}

/// An HTTP header name: a non-empty token (RFC 9110), once trimmed.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The provider's headers, names trimmed, `${VAR}` values read from the environment (a
/// header whose variable is unset or empty is not sent, as with `api_key_env`). Refuses a
/// credential-named header whose value is not a `${VAR}`, without repeating the value.
pub(super) fn build_headers(
    at: &dyn Fn(&str) -> String,
    headers: Option<&BTreeMap<String, String>>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (raw_name, value) in headers.into_iter().flatten() {
        let name = raw_name.trim();
        let key = at(&format!("headers.{raw_name}"));
        if !is_header_name(name) {
            return Err((
                key,
                "is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)".into(),
            ));
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err((key, "is given twice (header names ignore case)".into()));
        }
        match env_reference(value) {
            Some(var) => {
                if let Some(v) = env.get(var).filter(|v| !v.is_empty()) {
                    out.push((name.to_string(), v.clone()));
                }
            }
            None if says_credential(name) => {
                return Err((
                    key,
                    "credentials are not read from the config file; put the value in an environment variable and write \"${VAR}\" here (or use api_key_env for the provider's key)".into(),
                ));
            }
            None => out.push((name.to_string(), value.clone())),
        }
    }
    Ok(out)
}

/// The longest duration any setting may have: ten years. Longer ones overflow clock
/// arithmetic at run time, far from the config that caused it.
pub(super) const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// `secs`, if it is at most [`MAX_SECS`].
pub(super) fn bounded_secs(key: &str, secs: u64) -> Result<u64, (String, String)> {
    if secs > MAX_SECS {
        return Err((
            key.to_string(),
            format!("must be at most {MAX_SECS} (ten years), not {secs}"),
        ));
    }
    Ok(secs)
}

/// True when `url` carries a user name or password.
pub(super) fn has_credentials(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
}

/// True when `url` carries a password.
pub(super) fn has_password(url: &str) -> bool {
    // A Redis Cluster URL names many hosts, which no URL parser takes: look at a seed's URL.
    if let Some(seeds) = batchyard_jobs::redis_conn::cluster_seeds(url) {
        return seeds.is_ok_and(|s| s.first().is_some_and(|u| has_password(u)));
    }
    url::Url::parse(url).is_ok_and(|u| u.password().is_some())
}

/// True for a plausible environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A TOML error message without the values it quotes (`invalid type: string "..."`): a value
/// in the wrong place may be a secret.
pub(super) fn scrub_toml_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + "string \"".len()..];
        // The closing quote is the last one before the next ", expected" (values may hold quotes).
        let end = after
            .find("\", expected")
            .or_else(|| after.rfind('"'))
            .map_or(after.len(), |j| j + 1);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

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

/// A provider setting given to a kind it does not belong to.
fn only_for(key: &str, p: &RawProvider, field: &str, kind: &str) -> (String, String) {
    (
        format!("providers.{key}.{field}"),
        format!(
            "is not a setting of kind {:?}; it belongs to kind {kind:?}",
            p.kind
        ),
    )
}

pub(super) fn build_provider(
    key: &str,
    p: &RawProvider,
    env: &BTreeMap<String, String>,
) -> Result<Provider, (String, String)> {
    let at = |field: &str| format!("providers.{key}.{field}");
    let only_for = |field: &str, kind: &str| only_for(key, p, field, kind);
    if p.api_version.is_some() && p.kind != "azure_openai" {
        return Err(only_for("api_version", "azure_openai"));
    }
    if let Some(field) = super::provider_bedrock::own_fields(p)
        && p.kind != "bedrock"
    {
        return Err(only_for(field, "bedrock"));
    }
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
        "openai" | "anthropic" | "gemini" | "azure_openai" | "bedrock" => {
            http_provider(key, p, env)
        }
        other => Err((
            at("kind"),
            format!(
                "unknown provider kind {other:?}; use \"openai\", \"anthropic\", \"gemini\", \"azure_openai\", \"bedrock\" or \"simulated\""
            ),
        )),
    }
}

/// A provider reached over HTTP: the URL, key, headers and limits every HTTP kind shares.
fn http_provider(
    key: &str,
    p: &RawProvider,
    env: &BTreeMap<String, String>,
) -> Result<Provider, (String, String)> {
    let at = |field: &str| format!("providers.{key}.{field}");
    let only_for = |field: &str, kind: &str| only_for(key, p, field, kind);
    let anthropic = p.kind == "anthropic";
    if p.latency_ms.is_some() {
        return Err(only_for("latency_ms", "simulated"));
    }
    if p.output_tokens.is_some() {
        return Err(only_for("output_tokens", "simulated"));
    }
    let bedrock_url;
    let base_url = match (&p.base_url, anthropic) {
        (Some(url), _) => url.as_str(),
        (None, _) if p.kind == "bedrock" => {
            bedrock_url = super::provider_bedrock::default_base_url(p, env)
                .map_err(|(field, r)| (at(&field), r))?;
            bedrock_url.as_str()
        }
        (None, true) => "https://api.anthropic.com",
        (None, false) if p.kind == "gemini" => gemini::DEFAULT_BASE_URL,
        (None, false) => {
            return Err((at("base_url"), format!("is required for kind {:?}", p.kind)));
        }
    };
    check_url(base_url, &["http", "https"]).map_err(|r| (at("base_url"), r))?;
    if has_credentials(base_url) {
        return Err((
                at("base_url"),
                "holds a user name or password; remove it, and name the key's environment variable with api_key_env".into(),
            ));
    }
    if let Some(var) = &p.api_key_env
        && !is_env_name(var)
    {
        // Never repeat the value: a key pasted here is the usual way to get this.
        return Err((
                at("api_key_env"),
                "must be the name of an environment variable (letters, digits and _), not the key itself; put the key in an environment variable and name that variable here".into(),
            ));
    }
    let headers = build_headers(&at, p.headers.as_ref(), env)?;
    if let Some(secs) = p.timeout_secs {
        bounded_secs(&at("timeout_secs"), secs)?;
    }
    let max_response_bytes = match p.max_response_mib {
        None => batchyard_workers::provider::DEFAULT_MAX_RESPONSE_BYTES,
        Some(mib @ 1..=1024) => (mib as usize) << 20,
        Some(mib) => {
            return Err((
                at("max_response_mib"),
                format!("must be from 1 to 1024 (MiB per answer), not {mib}"),
            ));
        }
    };
    let api_key = p
        .api_key_env
        .as_ref()
        .and_then(|var| env.get(var))
        .filter(|v| !v.is_empty())
        .map(|v| Secret::new(v.clone()));
    let base_url = base_url.trim_end_matches('/').to_string();
    http_client(p, &at, base_url, api_key, headers, max_response_bytes, env)
}

/// The client of one HTTP kind, from the checked parts.
#[allow(clippy::too_many_arguments)]
fn http_client(
    p: &RawProvider,
    at: &dyn Fn(&str) -> String,
    base_url: String,
    api_key: Option<Secret>,
    headers: Vec<(String, String)>,
    max_response_bytes: usize,
    env: &BTreeMap<String, String>,
) -> Result<Provider, (String, String)> {
    if p.kind == "bedrock" {
        let config = super::provider_bedrock::config(p, base_url, headers, env)
            .map_err(|(field, r)| (at(&field), r))?;
        return BedrockProvider::new(BedrockConfig {
            max_response_bytes,
            timeout: p.timeout_secs.map_or(config.timeout, Duration::from_secs),
            ..config
        })
        .map(Provider::Bedrock)
        .map_err(|e| (at("base_url"), e.message));
    }
    if p.kind == "azure_openai" {
        let config = super::provider_azure::config(p, base_url, api_key, headers, env)
            .map_err(|(field, r)| (at(field), r))?;
        return AzureOpenAiProvider::new(AzureOpenAiConfig {
            max_response_bytes,
            timeout: p.timeout_secs.map_or(config.timeout, Duration::from_secs),
            ..config
        })
        .map(Provider::AzureOpenAi)
        .map_err(|e| (at("base_url"), e.message));
    }
    // The kinds whose config is exactly the shared HTTP settings.
    macro_rules! shared_http {
        ($config:ident, $provider:ident, $variant:ident) => {{
            let defaults = $config::default();
            $provider::new($config {
                base_url,
                api_key,
                headers,
                max_response_bytes,
                timeout: p.timeout_secs.map_or(defaults.timeout, Duration::from_secs),
                ..defaults
            })
            .map(Provider::$variant)
        }};
    }
    let built = match p.kind.as_str() {
        "gemini" => shared_http!(GeminiConfig, GeminiProvider, Gemini),
        "anthropic" => shared_http!(AnthropicConfig, AnthropicProvider, Anthropic),
        _ => shared_http!(OpenAiConfig, OpenAiProvider, OpenAi),
    };
    built.map_err(|e| (at("base_url"), e.message))
}

/// A bare key (`a.b-c_d`) or a quoted one (`"x-y"`).
fn looks_like_key(key: &str) -> bool {
    let quoted = key.len() >= 2 && key.starts_with('"') && key.ends_with('"');
    !key.is_empty()
        && (quoted
            || key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c)))
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
    // The key is what precedes `=` on the error's line; the span itself may cover a value,
    // and a value in the wrong place may be a secret.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("").trim();
    let snippet = if line_text.starts_with('[') {
        line_text.to_string()
    } else {
        match line_text.split_once('=') {
            Some((key, _)) if looks_like_key(key.trim()) => key.trim().to_string(),
            _ => String::new(),
        }
    };
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

/// Every duration setting at most ten years, so clock arithmetic can't overflow later.
pub(super) fn check_durations(raw: &super::raw::RawConfig) -> Result<(), (String, String)> {
    let (q, r) = (&raw.queue, &raw.retry);
    let hours = MAX_SECS / 3600;
    let ms = MAX_SECS * 1000;
    let settings = [
        (
            "queue.visibility_timeout_secs",
            q.visibility_timeout_secs,
            MAX_SECS,
        ),
        ("queue.submit_lease_secs", q.submit_lease_secs, MAX_SECS),
        (
            "queue.dead_letter_retention_hours",
            q.dead_letter_retention_hours,
            hours,
        ),
        (
            "worker.drain_timeout_secs",
            raw.worker.drain_timeout_secs,
            MAX_SECS,
        ),
        ("health.cooldown_secs", raw.health.cooldown_secs, MAX_SECS),
        ("limits.window_secs", raw.limits.window_secs, MAX_SECS),
        ("cache.ttl_secs", raw.cache.ttl_secs, MAX_SECS),
        ("retry.base_ms", r.base_ms, ms),
        ("retry.cap_ms", r.cap_ms, ms),
    ];
    for (key, value, limit) in settings {
        if let Some(v) = value
            && v > limit
        {
            return Err((
                key.to_string(),
                format!("must be at most {limit} (ten years), not {v}"),
            ));
        }
    }
    Ok(())
}

//! The Azure OpenAI dialect: `POST /openai/deployments/{deployment}/chat/completions
//! ?api-version=...`. The body and reply are the OpenAI dialect's; what differs is checked or
//! shaped here: the `api-version` query, the `api-key` header (or an Entra ID bearer token),
//! the deployment in the path, and Azure's error bodies and 429 headers.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::flow::Fault;
use crate::json_response;
use crate::limits::Admission;
use crate::options::Options;

/// The hint of a fault 429 (random, header or magic text): `retry-after-ms` alone, so a test
/// can tell that this header, not `retry-after`, set the wait.
pub const FAULT_RETRY_AFTER_MS: u64 = 300;

/// Azure's error body: `{"error": {"code", "message"}}`, the code a string.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}

/// A dated GA version (`2024-10-21`) or a preview (`2025-04-01-preview`), as Azure names them.
fn known_version(version: &str) -> bool {
    let (date, rest) = version.split_at(version.len().min(10));
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && (rest.is_empty() || rest == "-preview")
}

/// The `api-version` query (404 when missing, 400 when unknown, as Azure answers) and, with
/// `--require-key`, the `api-key` header or `Authorization: Bearer` (401); with
/// `--entra-client-secret`, a live Entra ID token issued by this fake is accepted too.
pub fn check_request(
    options: &Options,
    entra: &crate::entra::Tokens,
    headers: &HeaderMap,
    query: &str,
) -> Option<Response> {
    let version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="));
    match version {
        None => {
            return Some(error_response(
                StatusCode::NOT_FOUND,
                "404",
                "Resource not found",
            ));
        }
        Some(v) if !known_version(v) => {
            return Some(error_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "API version not supported",
            ));
        }
        Some(_) => {}
    }
    let with_entra = options.entra_client_secret.is_some();
    if options.require_key.is_none() && !with_entra {
        return None;
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let api_key = text(header::HeaderName::from_static("api-key"));
    let bearer = text(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    if let Some(key) = &options.require_key
        && (api_key == Some(key.as_str()) || bearer == Some(key.as_str()))
    {
        return None;
    }
    if with_entra && bearer.is_some_and(|token| entra.live(token)) {
        return None;
    }
    // Echoes what it was given (the real service does not), so tests can prove clients scrub.
    let message = match api_key.or(bearer) {
        Some(wrong) => format!(
            "Access denied due to invalid subscription key or wrong API endpoint ({wrong}). \
             Make sure to provide a valid key for an active subscription and use a correct \
             regional API endpoint for your resource."
        ),
        None => "Access denied due to missing subscription key. Make sure to include \
                 subscription key when making requests to an API."
            .to_owned(),
    };
    Some(error_response(StatusCode::UNAUTHORIZED, "401", &message))
}

/// The body with `model` set to the deployment: Azure needs none in the body, and the OpenAI
/// dialect's parser wants one.
pub fn with_deployment(body: &[u8], deployment: &str) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => {
            map.insert("model".into(), Value::String(deployment.to_owned()));
            serde_json::to_vec(&Value::Object(map)).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: u64) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, value);
    }
}

/// `x-ratelimit-remaining-*`, as Azure sends them on every reply (no reset headers).
pub fn headers(admission: &Admission, headers: &mut HeaderMap) {
    if let Some(rpm) = admission.rpm {
        let left = rpm.saturating_sub(admission.requests_used);
        insert(headers, "x-ratelimit-remaining-requests", left);
    }
    if let Some(tpm) = admission.tpm {
        let left = tpm.saturating_sub(admission.tokens_used);
        insert(headers, "x-ratelimit-remaining-tokens", left);
    }
}

/// Over `--rpm` / `--tpm`: Azure's 429, with `retry-after-ms` and `retry-after` to the
/// window's end.
pub fn over_limit(admission: &Admission) -> Response {
    let ms = u64::try_from(admission.reset.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let what = if admission.rejected_by == "tokens" {
        "token rate limit"
    } else {
        "call rate limit"
    };
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "429",
        &format!(
            "Requests to the ChatCompletions_Create Operation have exceeded {what} of your \
             current pricing tier (fake). Please retry after {} seconds.",
            ms.div_ceil(1000)
        ),
    );
    let out = response.headers_mut();
    insert(out, "retry-after-ms", ms);
    insert(out, "retry-after", ms.div_ceil(1000));
    headers(admission, out);
    response
}

/// A fault in Azure's shapes; the ones Azure answers like OpenAI go to the OpenAI dialect.
pub fn fault(fault: Fault, shutdown: &tokio_util::sync::CancellationToken) -> Response {
    match fault {
        Fault::Status(429) => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "429",
                "Requests to the ChatCompletions_Create Operation have exceeded call rate limit \
                 of your current pricing tier (fake).",
            );
            insert(
                response.headers_mut(),
                "retry-after-ms",
                FAULT_RETRY_AFTER_MS,
            );
            response
        }
        Fault::Filter => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure \
                            OpenAI's content management policy (fake).",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        "hate": {"filtered": true, "severity": "high"},
                        "self_harm": {"filtered": false, "severity": "safe"},
                        "sexual": {"filtered": false, "severity": "safe"},
                        "violence": {"filtered": false, "severity": "safe"},
                    },
                },
            }}),
        ),
        other => crate::openai::fault(other, shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::known_version;

    #[test]
    fn versions_are_dated_or_preview() {
        assert!(known_version("2024-10-21"));
        assert!(known_version("2025-04-01-preview"));
        for bad in ["", "latest", "2024-10-2", "2024-10-21-beta", "v1"] {
            assert!(!known_version(bad), "{bad}");
        }
    }
}

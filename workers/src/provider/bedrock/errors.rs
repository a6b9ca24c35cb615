//! Bedrock error replies as typed errors.
//!
//! AWS names the error in the `x-amzn-ErrorType` header (`ThrottlingException:http://...`) and
//! often in the body's `__type` (`com.amazon...#ThrottlingException`), with the text in
//! `message` (or `Message`). The name decides; the HTTP status (through the shared
//! classification) only when there is none:
//! - `ThrottlingException`, `ServiceQuotaExceededException`: `rate_limited`;
//! - `ServiceUnavailableException`, `InternalServerException`, `ModelTimeoutException`,
//!   `ModelNotReadyException`, `ModelErrorException`: `transient`;
//! - `ValidationException` naming the input's length: `context_overflow`, else
//!   `invalid_request`;
//! - `AccessDeniedException`, `UnrecognizedClientException`, `InvalidSignatureException`,
//!   `ExpiredTokenException`, `MissingAuthenticationTokenException` (and any other 403):
//!   `auth`, which pauses the model;
//! - `ResourceNotFoundException`: the model is not found (`invalid_request`, with a message
//!   saying to check the model id, its region and the account's model access).

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::provider::http::{self, MAX_PROVIDER_MESSAGE_CHARS, header_str, snippet};
use crate::provider::{ProviderError, ProviderErrorKind};

/// The AWS error name of a reply: the header's, else the body's `__type`, without the
/// namespace or URL around it.
pub fn error_type<'a>(headers: &'a HeaderMap, body: &'a Value) -> Option<&'a str> {
    let from_header = header_str(headers, "x-amzn-errortype")
        .and_then(|t| t.split(':').next())
        .map(str::trim);
    let from_body = body
        .get("__type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('#').next())
        .and_then(|t| t.split(':').next());
    from_header.or(from_body).filter(|t| !t.is_empty())
}

fn said(body: &Value, raw: &[u8]) -> String {
    let message = body
        .get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(raw).trim().to_owned());
    if message.is_empty() {
        "no message".to_owned()
    } else {
        snippet(&message, MAX_PROVIDER_MESSAGE_CHARS)
    }
}

/// A validation message that is about the input being longer than the model takes.
fn too_long(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "too long",
        "too many input tokens",
        "too many tokens",
        "input length",
        "context window",
        "context length",
        "maximum tokens",
        "exceeds the maximum",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// Turns an error response into a typed error, with the provider's retry hint.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    use ProviderErrorKind as K;
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let shared = http::classify(status, headers, body);
    let said = said(&value, body);
    let name = error_type(headers, &value).unwrap_or("");
    let (kind, message) = match name {
        "ThrottlingException" | "ServiceQuotaExceededException" => (
            K::RateLimited,
            format!(
                "rate limited by bedrock ({status} {name}): {said}; lower this model's rpm/tpm \
                 in the catalog or raise the account's quota if it keeps happening"
            ),
        ),
        "ServiceUnavailableException"
        | "InternalServerException"
        | "ModelTimeoutException"
        | "ModelNotReadyException"
        | "ModelErrorException" => (
            K::Transient,
            format!("bedrock failed temporarily ({status} {name}): {said}"),
        ),
        "ValidationException" if too_long(&said) => (
            K::ContextOverflow,
            format!(
                "the request does not fit the model's context window ({status} {name}): {said}; \
                 shorten the input or route it to a model with a larger context"
            ),
        ),
        "ValidationException" => (
            K::InvalidRequest,
            format!("bedrock rejected the request ({status} {name}): {said}; check the request"),
        ),
        "ResourceNotFoundException" => (
            K::InvalidRequest,
            format!(
                "bedrock does not know this model ({status} {name}): {said}; check the model id \
                 (or inference profile id), the provider's region and the account's model access"
            ),
        ),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "MissingAuthenticationTokenException" => (K::Auth, auth_message(status, name, &said)),
        _ if status == 403 || status == 401 => (K::Auth, auth_message(status, name, &said)),
        _ => (shared.kind, shared.message),
    };
    ProviderError {
        kind,
        message,
        status: Some(status),
        retry_after: shared.retry_after,
    }
}

fn auth_message(status: u16, name: &str, said: &str) -> String {
    let name = if name.is_empty() {
        String::new()
    } else {
        format!(" {name}")
    };
    format!(
        "bedrock rejected the credentials ({status}{name}): {said}; check the provider's AWS \
         credentials (access_key_id_env / profile / the standard AWS chain, or \
         AWS_BEARER_TOKEN_BEDROCK), their region and the account's access to this model"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn aws(status: u16, name: &str, message: &str) -> ProviderError {
        let mut headers = HeaderMap::new();
        let header = format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/");
        headers.insert("x-amzn-errortype", header.parse().unwrap());
        let body = serde_json::json!({"message": message}).to_string();
        classify(status, &headers, body.as_bytes())
    }

    #[test]
    fn aws_error_names_are_typed() {
        use ProviderErrorKind as K;
        let cases = [
            (
                429,
                "ThrottlingException",
                "Too many requests",
                K::RateLimited,
            ),
            (
                400,
                "ServiceQuotaExceededException",
                "quota",
                K::RateLimited,
            ),
            (503, "ServiceUnavailableException", "down", K::Transient),
            (500, "InternalServerException", "oops", K::Transient),
            (408, "ModelTimeoutException", "slow", K::Transient),
            (429, "ModelNotReadyException", "warming", K::Transient),
            (424, "ModelErrorException", "model failed", K::Transient),
            (
                400,
                "ValidationException",
                "Input is too long for requested model.",
                K::ContextOverflow,
            ),
            (
                400,
                "ValidationException",
                "prompt is too long: 210000 tokens > 200000 maximum",
                K::ContextOverflow,
            ),
            (
                400,
                "ValidationException",
                "The provided model identifier is invalid.",
                K::InvalidRequest,
            ),
            (403, "AccessDeniedException", "no access", K::Auth),
            (403, "UnrecognizedClientException", "bad key id", K::Auth),
            (403, "InvalidSignatureException", "bad signature", K::Auth),
            (403, "ExpiredTokenException", "expired", K::Auth),
            (403, "SomethingNewException", "denied", K::Auth),
            (
                404,
                "ResourceNotFoundException",
                "Model not found",
                K::InvalidRequest,
            ),
        ];
        for (status, name, message, want) in cases {
            let err = aws(status, name, message);
            assert_eq!(err.kind, want, "{name}: {}", err.message);
            assert!(err.message.contains(message), "{}", err.message);
            assert_eq!(err.status, Some(status));
        }
        assert!(
            aws(404, "ResourceNotFoundException", "x")
                .message
                .contains("check the model id")
        );
    }

    #[test]
    fn the_body_type_names_the_error_when_no_header_does() {
        let body = br#"{"__type":"com.amazon.coral.service#ThrottlingException","message":"slow"}"#;
        let err = classify(400, &HeaderMap::new(), body);
        assert_eq!(err.kind, ProviderErrorKind::RateLimited);
        let body = br#"{"Message":"User is not authorized"}"#;
        let err = classify(403, &HeaderMap::new(), body);
        assert_eq!(err.kind, ProviderErrorKind::Auth);
        assert!(err.message.contains("not authorized"), "{}", err.message);
        // No name at all: the status decides, as for any HTTP provider.
        assert_eq!(
            classify(502, &HeaderMap::new(), b"<html>").kind,
            ProviderErrorKind::Transient
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        h.insert("x-amzn-errortype", "ThrottlingException".parse().unwrap());
        let err = classify(429, &h, b"{}");
        assert_eq!(err.retry_after, Some(std::time::Duration::from_secs(7)));
    }
}

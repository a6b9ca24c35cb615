//! The Converse URL and its SigV4 signature, as the AWS SDKs make them.
//!
//! The model id is one path label: every byte but the unreserved ones (`A-Za-z0-9-_.~`) is
//! percent-encoded once in the URL sent (`...v1:0` goes as `...v1%3A0`), and the signer
//! encodes that path once more for the canonical request (`%253A`), as botocore and the Rust
//! SDK do for every service but S3. `aws-sigv4` does the second encoding (its default
//! `PercentEncodingMode::Double`); the botocore check in `scripts/bedrock_sigv4_check.py`
//! proves the pair agrees with an independent signer.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::provider::{ProviderError, ProviderErrorKind};

/// The SigV4 service name of the Bedrock runtime.
pub const SERVICE: &str = "bedrock";

/// Every byte but the unreserved ones, percent-encoded: one path label, as the SDKs send it.
pub fn encode_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for byte in label.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `{base}/model/{model id, encoded}/converse`.
pub fn converse_url(base: &reqwest::Url, model: &str) -> Result<reqwest::Url, ProviderError> {
    let model = model.trim();
    if model.is_empty() {
        return Err(ProviderError::new(
            ProviderErrorKind::InvalidRequest,
            "the model has an empty name: set `name` in the model's config to a bedrock model id \
             or inference profile id",
        ));
    }
    let mut url = base.clone();
    let path = format!(
        "{}/model/{}/converse",
        url.path().trim_end_matches('/'),
        encode_label(model)
    );
    url.set_path(&path);
    Ok(url)
}

/// The headers that sign one POST of `body` to `url`: `x-amz-date`, `authorization`, and
/// `x-amz-security-token` for temporary credentials, with the `content-type` they cover.
pub fn signed_headers(
    credentials: &Credentials,
    region: &str,
    url: &reqwest::Url,
    body: &[u8],
    time: SystemTime,
) -> Result<HeaderMap, ProviderError> {
    signed_method_headers("POST", credentials, region, url, body, time)
}

/// [`signed_headers`] for any method: the batch control plane reads with GET.
pub fn signed_method_headers(
    method: &str,
    credentials: &Credentials,
    region: &str,
    url: &reqwest::Url,
    body: &[u8],
    time: SystemTime,
) -> Result<HeaderMap, ProviderError> {
    let failed = |what: String| {
        ProviderError::new(
            ProviderErrorKind::Auth,
            format!("could not sign the bedrock request ({what}): check the provider's region"),
        )
    };
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(e.to_string()))?
        .into();
    let content_type = "application/json";
    let request = SignableRequest::new(
        method,
        url.as_str(),
        std::iter::once(("content-type", content_type)),
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| failed(e.to_string()))?
        .into_parts();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let mut value = HeaderValue::from_str(value).map_err(|e| failed(e.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn model_ids_are_one_encoded_label() {
        let base = reqwest::Url::parse("https://bedrock-runtime.us-east-1.amazonaws.com").unwrap();
        let url = converse_url(&base, "us.anthropic.claude-3-5-haiku-20241022-v1:0").unwrap();
        assert_eq!(
            url.as_str(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/\
             us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        );
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/x";
        let base = reqwest::Url::parse("http://127.0.0.1:9/proxy/").unwrap();
        assert_eq!(
            converse_url(&base, arn).unwrap().path(),
            "/proxy/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fx/converse"
        );
        assert!(converse_url(&base, " ").is_err());
    }

    /// A known answer, computed independently with botocore 1.x (`SigV4Auth`, service
    /// `bedrock`) for this exact request; `scripts/bedrock_sigv4_check.py` recomputes it.
    #[test]
    fn the_signature_matches_botocore_for_a_model_id_with_a_colon() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let base = reqwest::Url::parse("http://127.0.0.1:8080").unwrap();
        let url = converse_url(&base, "us.anthropic.claude-3-5-haiku-20241022-v1:0").unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let headers = signed_headers(&credentials, "us-east-1", &url, body, time).unwrap();
        assert_eq!(headers["x-amz-date"], "20231114T221320Z");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        assert_eq!(
            auth.rsplit('=').next().unwrap(),
            "3fe350d41fc5c1d341b5c3da147192aff09282849d822000283fe41f3b79bf02",
            "{auth}"
        );
        assert!(headers["authorization"].is_sensitive());
        let with_token = Credentials::new("AKID", "secret", Some("tok".into()), None, "test");
        let headers = signed_headers(&with_token, "eu-west-1", &url, body, time).unwrap();
        assert_eq!(headers["x-amz-security-token"], "tok");
        assert!(
            headers["authorization"]
                .to_str()
                .unwrap()
                .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token")
        );
    }
}

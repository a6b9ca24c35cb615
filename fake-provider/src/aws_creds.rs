//! Loopback stand-ins for the cloud sources of the AWS credential chain, so the chain can be
//! tested without a cloud: each hands out the key pair the Bedrock dialect checks signatures
//! with (`--bedrock-key-id`, `--bedrock-secret`), a session token, and an expiry
//! `--credentials-ttl-secs` away (default 3600).
//!
//! - instance metadata (IMDSv2), for `AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:P`:
//!   `PUT /latest/api/token`, then `GET /latest/meta-data/iam/security-credentials/` (the role
//!   name) and `.../security-credentials/{role}` (the credentials), with the token required;
//! - the container agent, for `AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:P/container-credentials`:
//!   `GET /container-credentials`;
//! - STS `AssumeRoleWithWebIdentity`, for `AWS_ENDPOINT_URL_STS=http://127.0.0.1:P`:
//!   `POST /` with the form body the SDKs send, answered in STS's XML.
//!
//! `/stats` counts what was handed out as `credentials_served`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::bedrock::DEFAULT_KEY_ID;
use crate::limits::rfc3339;

/// The IMDSv2 session token the fake hands out and then requires.
const IMDS_TOKEN: &str = "fake-imds-token";
const ROLE: &str = "fake-bedrock-role";

/// The secret handed out when `--bedrock-secret` is not set.
const DEFAULT_SECRET: &str = "fake-chain-secret";

/// The key id, secret, session token and expiry to hand out now.
fn issue(state: &AppState) -> (String, String, String, String) {
    let n = state.credentials_served.fetch_add(1, Ordering::Relaxed) + 1;
    let options = &state.options;
    (
        options
            .bedrock_key_id
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_ID.to_owned()),
        options
            .bedrock_secret
            .clone()
            .unwrap_or_else(|| DEFAULT_SECRET.to_owned()),
        format!("fake-session-token-{n}"),
        rfc3339(SystemTime::now() + Duration::from_secs(options.credentials_ttl_secs)),
    )
}

fn json_credentials(state: &AppState) -> Response {
    let (id, secret, token, expiration) = issue(state);
    crate::json_response(
        StatusCode::OK,
        json!({
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": id,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": expiration,
            "LastUpdated": rfc3339(SystemTime::now()),
        }),
    )
}

/// `PUT /latest/api/token`.
pub fn imds_token() -> Response {
    (
        StatusCode::OK,
        [("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
        IMDS_TOKEN,
    )
        .into_response()
}

/// `GET /latest/meta-data/iam/security-credentials/[role]`.
pub fn imds_credentials(state: &AppState, headers: &HeaderMap, role: Option<&str>) -> Response {
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(IMDS_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match role {
        None | Some("") => ROLE.into_response(),
        Some(ROLE) => json_credentials(state),
        Some(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /container-credentials`.
pub fn container_credentials(state: &AppState) -> Response {
    json_credentials(state)
}

/// `POST /`: STS `AssumeRoleWithWebIdentity`, from its form body.
pub fn assume_role_with_web_identity(state: &AppState, body: &[u8]) -> Response {
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    if field("Action").as_deref() != Some("AssumeRoleWithWebIdentity")
        || field("WebIdentityToken").is_none_or(|t| t.is_empty())
    {
        return (
            StatusCode::BAD_REQUEST,
            "<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>",
        )
            .into_response();
    }
    let (id, secret, token, expiration) = issue(state);
    let xml = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>fake-subject</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/{ROLE}/fake</Arn>
      <AssumedRoleId>AROAFAKE:fake</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{id}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>fake-sts-1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#
    );
    (StatusCode::OK, [("content-type", "text/xml")], xml).into_response()
}

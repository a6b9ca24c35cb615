//! Microsoft Entra ID, as much as an Azure OpenAI client needs of it:
//!
//! - `POST /{tenant}/oauth2/v2.0/token`, the client-credentials grant with a client secret or
//!   a federated assertion (workload identity): `grant_type=client_credentials`, `client_id`,
//!   `scope`, and `client_secret` or `client_assertion` + `client_assertion_type`. It answers
//!   `{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}`; a wrong secret
//!   or assertion is a 401 `invalid_client` with an `AADSTS7000215` description.
//! - `GET /msi/token?resource=...&api-version=2019-08-01` with `X-IDENTITY-HEADER`: managed
//!   identity as App Service and Container Apps serve it (`IDENTITY_ENDPOINT`), answering
//!   `{"access_token", "expires_on"` (unix seconds, a string)`, "resource", "token_type"}`.
//!
//! Tokens live `--entra-token-ttl-secs` (default 3599). With `--entra-client-secret S` the
//! Azure route accepts, as `Authorization: Bearer`, only tokens issued here and not expired
//! (besides `--require-key`), so a client that never refreshes starts failing with 401.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::options::Options;
use crate::{json_response, lock};

/// Tokens remembered at once; older ones are forgotten (and so refused).
const MAX_TOKENS: usize = 4096;

/// The tokens issued so far, newest last.
#[derive(Default)]
pub struct Tokens {
    issued: Mutex<VecDeque<(String, Instant)>>,
    count: AtomicU64,
}

impl Tokens {
    fn issue(&self, ttl: Duration) -> String {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("entra-{n}-{:016x}", rand::random::<u64>());
        let mut issued = lock(&self.issued);
        if issued.len() == MAX_TOKENS {
            issued.pop_front();
        }
        issued.push_back((token.clone(), Instant::now() + ttl));
        token
    }

    /// True for a token issued here that has not expired.
    pub fn live(&self, token: &str) -> bool {
        lock(&self.issued)
            .iter()
            .any(|(t, until)| t == token && *until > Instant::now())
    }

    /// How many tokens were issued.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// `application/x-www-form-urlencoded` values: `+` is a space, `%XX` a byte.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn aad_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description, "error_codes": [7000215]}),
    )
}

/// The client-credentials grant.
pub fn token(options: &Options, tokens: &Tokens, form: &str) -> Response {
    if form_value(form, "grant_type").as_deref() != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if form_value(form, "client_id").is_none_or(|id| id.is_empty())
        || form_value(form, "scope").is_none_or(|s| !s.ends_with("/.default"))
    {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain client_id and a scope ending in /.default.",
        );
    }
    let secret = form_value(form, "client_secret");
    let assertion = form_value(form, "client_assertion");
    let accepted = match (&options.entra_client_secret, secret, assertion) {
        (None, _, _) => true,
        (Some(want), Some(got), _) => *want == got,
        // A federated token file holds the same text in these tests.
        (Some(want), None, Some(got)) => *want == got,
        (Some(_), None, None) => false,
    };
    if !accepted {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the \
             request is the client secret value, not the client secret ID.",
        );
    }
    let ttl = options.entra_token_ttl;
    json_response(
        StatusCode::OK,
        json!({
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "ext_expires_in": ttl.as_secs(),
            "access_token": tokens.issue(ttl),
        }),
    )
}

/// Managed identity (`IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`).
pub fn managed_identity(
    options: &Options,
    tokens: &Tokens,
    headers: &HeaderMap,
    query: &str,
) -> Response {
    let header = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    let want = options.entra_client_secret.as_deref();
    if want.is_some() && header != want {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"statusCode": 401, "message": "Unauthorized: wrong or missing X-IDENTITY-HEADER"}),
        );
    }
    let Some(resource) = form_value(query, "resource") else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"statusCode": 400, "message": "resource is required"}),
        );
    };
    let ttl = options.entra_token_ttl;
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + ttl.as_secs();
    json_response(
        StatusCode::OK,
        json!({
            "access_token": tokens.issue(ttl),
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        let form = "grant_type=client_credentials&scope=https%3A%2F%2Fx%2F.default&a=b+c%2";
        assert_eq!(
            form_value(form, "scope").as_deref(),
            Some("https://x/.default")
        );
        assert_eq!(form_value(form, "a").as_deref(), Some("b c%2"));
        assert_eq!(form_value(form, "missing"), None);
    }
}

//! What the HTTP providers share: the URL they show, how a failed request reads, and keeping
//! secrets out of error messages.
//!
//! - [`classify`]: the generic error classification (status, body, retry hints).
//! - [`time`]: HTTP dates and RFC 3339 timestamps from headers.
//! - [`endpoint`]: one configured endpoint: URL checks, headers and key, the pooled client,
//!   and the POST every kind makes.

mod classify;
mod endpoint;
mod time;

pub(crate) use classify::{ErrorInfo, MAX_HINT, MAX_PROVIDER_MESSAGE_CHARS, header_str, snippet};
pub use classify::{classify, parse_go_duration, parse_retry_after, retry_hint};
pub(crate) use endpoint::{Endpoint, EndpointConfig, KeyHeader, base_url};
pub use time::{parse_http_date, parse_rfc3339};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{ProviderError, ProviderErrorKind, Secret};

/// The default cap on one answer's body: far above any real completion (a 128k-token reply
/// with logprobs is a few MiB), far below what hurts a worker.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The most all answers being read in this process may hold at once (or one answer's cap, if
/// that is larger). Each answer is capped on its own, but 64 calls in flight at 16 MiB each
/// would still be a gigabyte: past this, a read fails as transient and the job tries later.
const PROCESS_RESPONSE_BYTES: usize = 128 * 1024 * 1024;

/// Bytes held by answers being read right now, across every provider of the process.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// The bytes one read holds in [`BUFFERED`], given back when the read ends, however it ends.
struct Held(usize);

impl Held {
    /// Takes `more` bytes if the process total stays within `ceiling`.
    fn take(&mut self, more: usize, ceiling: usize) -> bool {
        let taken = BUFFERED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            now.checked_add(more).filter(|total| *total <= ceiling)
        });
        if taken.is_ok() {
            self.0 += more;
        }
        taken.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// What the process's answers hold right now, for tests and metrics.
pub fn buffered_response_bytes() -> usize {
    BUFFERED.load(Ordering::Acquire)
}

/// Reads a whole answer, refusing one larger than `limit` as soon as it says so
/// (`Content-Length`) or its bytes pass the limit, so a huge or endless body costs at most
/// `limit` bytes of memory.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    display_url: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ProviderError> {
    let status = response.status().as_u16();
    let too_big = |what: String| ProviderError {
        kind: ProviderErrorKind::ResponseTooLarge,
        message: format!(
            "the provider answered {status} with {what}, more than the {} allowed per answer: \
             check that base_url points at the model's api and not at a proxy or file server; \
             raise the provider's max_response_mib if replies really are this large",
            human_bytes(limit)
        ),
        status: Some(status),
        retry_after: None,
    };
    let announced = response.content_length();
    if let Some(n) = announced.filter(|n| *n > limit as u64) {
        return Err(too_big(format!("a body of {}", human_bytes_u64(n))));
    }
    let ceiling = PROCESS_RESPONSE_BYTES.max(limit);
    let mut held = Held(0);
    let first = announced.map_or(0, |n| n as usize);
    let mut bytes = Vec::new();
    if first > 0 && held.take(first, ceiling) {
        bytes.reserve_exact(first);
    }
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(display_url, timeout, &e))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(too_big("a body that went on past that".to_owned()));
        }
        let before = bytes.capacity();
        bytes.reserve(chunk.len());
        let grown = bytes.capacity() - before;
        if grown > 0 && !held.take(grown, ceiling) {
            return Err(ProviderError {
                kind: ProviderErrorKind::Transient,
                message: format!(
                    "answers being read in this worker already hold {}: this one is dropped and \
                     its job runs again later; a provider sending huge bodies is the likely cause",
                    human_bytes(ceiling)
                ),
                status: Some(status),
                retry_after: None,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn human_bytes(n: usize) -> String {
    human_bytes_u64(n as u64)
}

fn human_bytes_u64(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

/// The URL as it may be printed: no user, password or query (where keys sometimes go).
pub(crate) fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// A request that got no HTTP answer: timed out, refused, or cut. Always transient.
pub(crate) fn transport_error(
    display_url: &str,
    timeout: Duration,
    err: &reqwest::Error,
) -> ProviderError {
    let url = display_url;
    let message = if err.is_timeout() {
        format!(
            "request to {url} timed out after {timeout:?}: the provider is slow or overloaded; \
             raise the provider timeout if replies are long"
        )
    } else if err.is_connect() {
        format!(
            "could not connect to {url} ({}): check base_url and that the server is up",
            error_chain(err)
        )
    } else {
        format!("request to {url} failed: {}", error_chain(err))
    };
    ProviderError::new(ProviderErrorKind::Transient, message)
}

/// A 2xx reply that does not read as the kind's answer.
pub(crate) fn malformed(status: u16, message: String) -> ProviderError {
    ProviderError {
        kind: ProviderErrorKind::MalformedResponse,
        message,
        status: Some(status),
        retry_after: None,
    }
}

/// A 2xx reply's body as JSON; `expected` names the API base_url should point at.
pub(crate) fn json_body(
    status: u16,
    bytes: &[u8],
    expected: &str,
) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_slice(bytes).map_err(|e| {
        malformed(
            status,
            format!(
                "the provider answered {status} with a body that is not json ({e}): check that \
                 base_url points at {expected}; body starts {:?}",
                snippet(&String::from_utf8_lossy(bytes), 80)
            ),
        )
    })
}

/// The names of a provider's extra headers, for `Debug`: their values are secrets.
pub(crate) struct HeaderNames<'a>(pub(crate) &'a [(String, String)]);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Replaces every secret that shows up in the message with `***`.
pub(crate) fn scrub(secrets: &[Secret], err: &mut ProviderError) {
    for secret in secrets {
        let text = secret.expose();
        if !text.is_empty() && err.message.contains(text) {
            err.message = err.message.replace(text, "***");
        }
    }
}

/// Header names whose values are treated as secrets.
pub(crate) fn looks_secret(header_name: &str) -> bool {
    let name = header_name.to_ascii_lowercase();
    [
        "key",
        "token",
        "auth",
        "secret",
        "cookie",
        "password",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// The error and its sources, without the URL (we print our own, credential-free one).
fn error_chain(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        // reqwest appends " for url (...)"; drop it.
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = err.source();
    // Error chains are short; the bound guards against a cyclic one.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_shown_url_has_no_credentials_or_query() {
        let url = reqwest::Url::parse("https://user:pw@api.example.test/v1/chat?key=sk-1").unwrap();
        assert_eq!(display_url(&url), "https://api.example.test/v1/chat");
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let mut err = ProviderError::new(ProviderErrorKind::Auth, "bad key sk-abcdef given");
        scrub(&[Secret::new("sk-abcdef".into())], &mut err);
        assert_eq!(err.message, "bad key *** given");
        assert!(looks_secret("X-Api-Key") && looks_secret("Authorization"));
        assert!(!looks_secret("Accept"));
    }
}

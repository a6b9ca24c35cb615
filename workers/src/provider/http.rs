//! What the HTTP providers share: the URL they show, how a failed request reads, and keeping
//! secrets out of error messages.

use std::time::Duration;

use super::{ProviderError, ProviderErrorKind, Secret};

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

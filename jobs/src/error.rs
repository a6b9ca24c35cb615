//! Errors at the boundaries this crate owns: the queue and ledger (Redis) and object storage.

use thiserror::Error;

/// What kind of failure a boundary error is, so callers can decide to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service was unreachable, timed out or dropped the connection: try again later.
    Unavailable,
    /// The data or request is wrong: retrying will not help.
    Invalid,
    /// Something that should exist does not.
    NotFound,
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error(
        "redis is unavailable: {0}; check that redis is running and BATCHYARD_REDIS_URL is right"
    )]
    Unavailable(String),
    #[error("redis answered with an error: {0}")]
    Redis(String),
    #[error("a queued job could not be decoded: {0}; the entry was left for inspection")]
    Decode(String),
    #[error("batch {0} was not found; check the batch id with `batchyard status`")]
    BatchNotFound(String),
}

impl QueueError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Redis(_) | Self::Decode(_) => ErrorKind::Invalid,
            Self::BatchNotFound(_) => ErrorKind::NotFound,
        }
    }
}

impl crate::retry::Retryable for QueueError {
    fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

/// What to do when rustls refused a TLS server's certificate (`invalid peer certificate:
/// UnknownIssuer`, `BadSignature`, ...): most often the CA that signed it is not trusted.
const UNTRUSTED_CERT_HINT: &str = "; the server's TLS certificate is not trusted: point \
     tls_ca_file in the rediss:// (or rediss+cluster://) url at the PEM file of the CA that signed it";

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        // The URL (and any password in it) is never part of the message we keep.
        let mut msg = redact(&e.to_string());
        if msg.contains("peer certificate") {
            msg.push_str(UNTRUSTED_CERT_HINT);
        }
        // A transaction a cluster refused in a failover, after its resends (redis_conn::moved).
        let refused_by_cluster = crate::redis_conn::refused_transaction(&e);
        if refused_by_cluster
            || e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
            || matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
            )
        {
            Self::Unavailable(msg)
        } else {
            Self::Redis(msg)
        }
    }
}

#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("object storage is unavailable at {path}: {message}; it will be retried")]
    Unavailable { path: String, message: String },
    #[error("object {path} was not found")]
    NotFound { path: String },
    #[error("object storage rejected {path}: {message}")]
    Rejected { path: String, message: String },
    #[error("bad storage url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object {path} is not valid: {message}")]
    Corrupt { path: String, message: String },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Rejected { .. } | Self::BadUrl { .. } | Self::Corrupt { .. } => {
                ErrorKind::Invalid
            }
        }
    }

    pub fn from_object_store(path: &str, e: object_store::Error) -> Self {
        let path = path.to_string();
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound { path },
            object_store::Error::InvalidPath { source } => Self::Rejected {
                path,
                message: source.to_string(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Self::Rejected {
                path,
                message: "access denied; check the storage credentials".into(),
            },
            other => Self::Unavailable {
                path,
                message: redact(&other.to_string()),
            },
        }
    }
}

impl crate::retry::Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

/// Removes the credentials of any URL inside a message: the `user:password@` part, also when
/// the password holds a raw `/` that stops a URL parser, and the value of a `pass=` or
/// `password=` query parameter (unix socket URLs carry the password there).
pub fn redact(message: &str) -> String {
    redact_query_passwords(&redact_userinfo(message))
}

fn redact_userinfo(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        out.push_str(head);
        let token_end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        let token = &tail[..token_end];
        let authority_end = token.find('/').unwrap_or(token.len());
        let at = token[..authority_end].rfind('@').or_else(|| {
            // `redis://:pa/ss@host` is not a valid URL, but its password must not show either.
            token.rfind('@').filter(|at| token[..*at].contains(':'))
        });
        rest = match at {
            Some(at) => {
                out.push_str("***@");
                &tail[at + 1..]
            }
            None => {
                out.push_str(&token[..authority_end]);
                &tail[authority_end..]
            }
        };
    }
    out.push_str(rest);
    out
}

fn redact_query_passwords(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['?', '&']) {
        let (head, tail) = rest.split_at(i + 1);
        out.push_str(head);
        let key_len = ["password=", "pass="]
            .iter()
            .find(|k| {
                tail.get(..k.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(k))
            })
            .map_or(0, |k| k.len());
        if key_len == 0 {
            rest = tail;
            continue;
        }
        out.push_str(&tail[..key_len]);
        out.push_str("***");
        let value = &tail[key_len..];
        let end = value
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | '#' | '"' | '\'' | '`'))
            .unwrap_or(value.len());
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_certificate_names_tls_ca_file() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let e = QueueError::from(redis::RedisError::from(io));
        let msg = e.to_string();
        assert!(
            msg.contains("tls_ca_file") && msg.contains("UnknownIssuer"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let msg = QueueError::from(redis::RedisError::from(refused)).to_string();
        assert!(!msg.contains("tls_ca_file"), "{msg}");
    }

    #[test]
    fn redact_hides_passwords_in_urls() {
        let s = redact("cannot connect to redis://:hunter2@127.0.0.1:6379/0 now");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://***@127.0.0.1:6379/0"), "{s}");
        assert_eq!(redact("no url here"), "no url here");
        let cases = [
            (
                "redis://user:hunter2@h:1 and rediss://:hunter2@h:2/",
                "rediss://***@h:2/",
            ),
            (
                "\"redis://:hun/ter2@h:1/0\" failed",
                "\"redis://***@h:1/0\" failed",
            ),
            (
                "unix:///run/redis.sock?db=1&pass=hunter2&x=1",
                "?db=1&pass=***&x=1",
            ),
            ("redis+unix:///s?PASSWORD=hunter2", "?PASSWORD=***"),
        ];
        for (input, expected) in cases {
            let s = redact(input);
            assert!(!s.contains("hunter2") && !s.contains("ter2"), "{s}");
            assert!(s.contains(expected), "{s}");
        }
        // A path with an `@` but no credentials is kept.
        let path = "s3://bucket/batches/b1/results/a@b.json";
        assert_eq!(redact(path), path);
    }
}

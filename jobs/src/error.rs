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

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        // The URL (and any password in it) is never part of the message we keep.
        let msg = redact(&e.to_string());
        if e.is_io_error()
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

#[derive(Debug, Error)]
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

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
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

/// Removes `user:password@` from any URL inside a message.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_in_urls() {
        let s = redact("cannot connect to redis://:hunter2@127.0.0.1:6379/0 now");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://***@127.0.0.1:6379/0"), "{s}");
        assert_eq!(redact("no url here"), "no url here");
    }
}

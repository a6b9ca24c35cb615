//! Bearer-token authentication for `/v1/*`.
//!
//! Tokens come from `BATCHYARD_API_TOKENS` (comma-separated). A presented token is compared
//! with every configured one in constant time and without an early exit, so the answer time
//! does not tell how much of a token matched or which one it was. Tokens are never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::http_error::ApiError;

pub const TOKENS_ENV: &str = "BATCHYARD_API_TOKENS";

/// The configured tokens. `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// The tokens in `env`, or `None` when none is set (blank entries don't count).
    pub fn from_env(env: &BTreeMap<String, String>) -> Option<Self> {
        let tokens: Vec<Vec<u8>> = env
            .get(TOKENS_ENV)?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.as_bytes().to_vec())
            .collect();
        (!tokens.is_empty()).then(|| Self(Arc::new(tokens)))
    }

    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for token in self.0.iter() {
            // Slices of different lengths compare unequal at once; that leaks only the length.
            found |= token.as_slice().ct_eq(presented);
        }
        bool::from(found) && !presented.is_empty()
    }
}

/// Lets a request through only with `Authorization: Bearer <configured token>`.
pub async fn require_token(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if tokens.accepts(presented.as_bytes()) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tokens_parse_and_compare() {
        let env = BTreeMap::from([(TOKENS_ENV.to_string(), " a1 ,, b2 ".to_string())]);
        let t = Tokens::from_env(&env).unwrap();
        assert!(t.accepts(b"a1"));
        assert!(t.accepts(b"b2"));
        assert!(!t.accepts(b"a"));
        assert!(!t.accepts(b""));
        assert!(!format!("{t:?}").contains("a1"));
        let blank = BTreeMap::from([(TOKENS_ENV.to_string(), " , ".to_string())]);
        assert!(Tokens::from_env(&blank).is_none());
        assert!(Tokens::from_env(&BTreeMap::new()).is_none());
    }
}

//! Bearer-token authentication for `/v1/*` and `/api/*`, and whose request it is.
//!
//! Tokens come from `BATCHYARD_API_TOKENS` (comma-separated) and from each tenant's
//! `[tenants.<name>] tokens_env`. An entry `team-a:s3cr3t` belongs to tenant `team-a`; a bare
//! entry belongs to the `default` tenant, which sees everything (so deployments from before
//! tenants keep working). A presented token is compared with every configured one in constant
//! time and without an early exit, so the answer time does not tell how much of a token
//! matched, which one it was, or whose. Tokens are never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::http_error::ApiError;

pub const TOKENS_ENV: &str = "BATCHYARD_API_TOKENS";
/// The tenant of bare tokens, and of everything from before tenants: it sees every batch.
pub use batchyard_jobs::batch::DEFAULT_TENANT;

/// Who made a request: the tenant its token belongs to. Handlers take it as an
/// `Extension<Caller>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Arc<str>,
}

impl Caller {
    #[cfg(test)]
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: Arc::from(tenant),
        }
    }

    /// The `default` tenant's tokens are the operators': they see and act on every batch.
    pub fn sees_all(&self) -> bool {
        &*self.tenant == DEFAULT_TENANT
    }

    /// Whether this caller may see and act on something owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.sees_all() || &*self.tenant == owner
    }
}

/// The configured tokens, each with its tenant. `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Tokens(Arc<Vec<(Vec<u8>, Arc<str>)>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// Where a tenant's tokens come from besides `BATCHYARD_API_TOKENS`: `(tenant, env var)`.
pub type TenantTokenEnvs<'a> = &'a [(&'a str, &'a str)];

impl Tokens {
    /// The tokens in `env`: `Ok(None)` when none is set (blank entries don't count). A
    /// `tenant:token` entry whose tenant is not in `tenants` is refused, so a typo does not
    /// quietly make a tenant of its own. Errors never contain a token.
    pub fn from_env(
        env: &BTreeMap<String, String>,
        tenants: &[&str],
        tenant_envs: TenantTokenEnvs<'_>,
    ) -> Result<Option<Self>, String> {
        let mut tokens = Vec::new();
        if let Some(list) = env.get(TOKENS_ENV) {
            for (n, entry) in entries(list).enumerate() {
                let (tenant, token) = match entry.split_once(':') {
                    Some((tenant, token)) => (tenant.trim(), token.trim()),
                    None => (DEFAULT_TENANT, entry),
                };
                if tenant != DEFAULT_TENANT && !tenants.contains(&tenant) {
                    return Err(format!(
                        "{TOKENS_ENV} entry {} names tenant {tenant:?}, which is not configured; add [tenants.{tenant}] to the config or fix the name",
                        n + 1
                    ));
                }
                if token.is_empty() {
                    return Err(format!(
                        "{TOKENS_ENV} entry {} gives tenant {tenant:?} an empty token; write `tenant:token`",
                        n + 1
                    ));
                }
                tokens.push((token.as_bytes().to_vec(), Arc::from(tenant)));
            }
        }
        for (tenant, var) in tenant_envs {
            let Some(list) = env.get(*var) else { continue };
            tokens.extend(entries(list).map(|t| (t.as_bytes().to_vec(), Arc::from(*tenant))));
        }
        Ok((!tokens.is_empty()).then(|| Self(Arc::new(tokens))))
    }

    /// The caller a presented token identifies, or `None` when it matches no token.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, (token, _)) in self.0.iter().enumerate() {
            // Slices of different lengths compare unequal at once; that leaks only the length.
            let hit = token.as_slice().ct_eq(presented);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.conditional_assign(&i, hit);
            found |= hit;
        }
        if !bool::from(found) || presented.is_empty() {
            return None;
        }
        let (_, tenant) = self.0.get(usize::try_from(index).ok()?)?;
        Some(Caller {
            tenant: Arc::clone(tenant),
        })
    }

    #[cfg(test)]
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.identify(presented).is_some()
    }
}

fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Lets a request through only with `Authorization: Bearer <configured token>`, and tells the
/// handlers whose it is.
pub async fn require_token(State(tokens): State<Tokens>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    match tokens.identify(presented.as_bytes()) {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tokens_parse_and_compare() {
        let t = Tokens::from_env(&env(&[(TOKENS_ENV, " a1 ,, b2 ")]), &[], &[])
            .unwrap()
            .unwrap();
        assert!(t.accepts(b"a1"));
        assert!(t.accepts(b"b2"));
        assert!(!t.accepts(b"a"));
        assert!(!t.accepts(b""));
        assert!(!format!("{t:?}").contains("a1"));
        let blank = env(&[(TOKENS_ENV, " , ")]);
        assert!(Tokens::from_env(&blank, &[], &[]).unwrap().is_none());
        assert!(
            Tokens::from_env(&BTreeMap::new(), &[], &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn each_token_names_its_tenant() {
        let e = env(&[
            (TOKENS_ENV, "root1, team-a:ta1, team-b:tb1"),
            ("TEAM_A_TOKENS", "ta2,ta3"),
        ]);
        let t = Tokens::from_env(&e, &["team-a", "team-b"], &[("team-a", "TEAM_A_TOKENS")])
            .unwrap()
            .unwrap();
        assert_eq!(t.identify(b"root1"), Some(Caller::new(DEFAULT_TENANT)));
        assert_eq!(t.identify(b"ta1"), Some(Caller::new("team-a")));
        assert_eq!(t.identify(b"ta3"), Some(Caller::new("team-a")));
        assert_eq!(t.identify(b"tb1"), Some(Caller::new("team-b")));
        // The tenant prefix is not part of the token.
        assert_eq!(t.identify(b"team-a:ta1"), None);
        assert!(t.identify(b"root1").unwrap().sees_all());
        let a = t.identify(b"ta1").unwrap();
        assert!(!a.sees_all() && a.may_see("team-a") && !a.may_see("team-b"));
    }

    #[test]
    fn an_unknown_tenant_is_refused_without_its_token() {
        let e = env(&[(TOKENS_ENV, "tema-a:secretvalue")]);
        let err = Tokens::from_env(&e, &["team-a"], &[]).unwrap_err();
        assert!(
            err.contains("\"tema-a\"") && err.contains("[tenants.tema-a]"),
            "{err}"
        );
        assert!(!err.contains("secretvalue"), "{err}");
        let empty = env(&[(TOKENS_ENV, "team-a: ")]);
        let err = Tokens::from_env(&empty, &["team-a"], &[]).unwrap_err();
        assert!(err.contains("empty token"), "{err}");
    }
}

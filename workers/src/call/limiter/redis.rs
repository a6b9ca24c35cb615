//! The cluster-wide limiter: the algorithm of [`super`] in Lua, one script call per
//! admission, checking and taking from every scope atomically on the Redis server's clock.
//!
//! Keys: one hash per scope, `{<prefix>:lim}:<scope>` (`{by:lim}:model:small` with the
//! default prefix `by`). The common `{<prefix>:lim}` hash tag puts every limiter key in one
//! Redis Cluster slot, which a script that takes from several scopes at once requires. Each
//! key carries a TTL (the window plus a bucket, or longer while a pause, a provider report
//! or a pacer backlog lasts), so idle scopes vanish by themselves.

use std::time::Duration;

use async_trait::async_trait;
use batchyard_jobs::redis_conn::RedisConn;
use redis::Script;

use super::memory::token_diff;
use super::{
    Admission, DEFAULT_REPORT_HOLD, LimitSpec, Limiter, LimiterError, MeterParams, Reservation,
    Tuning, normalize, wait_from_us,
};

macro_rules! script {
    ($file:literal) => {
        concat!(include_str!("common.lua"), include_str!($file))
    };
}

/// Limits shared by every worker that uses the same Redis and prefix.
pub struct RedisLimiter {
    conn: RedisConn,
    prefix: String,
    tuning: Tuning,
    acquire: Script,
    settle: Script,
    pause: Script,
    observe: Script,
}

impl RedisLimiter {
    /// `prefix` namespaces the keys (`by` in production).
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self::with_tuning(conn, prefix, Tuning::default())
    }

    /// Every worker sharing limits must use the same tuning.
    pub fn with_tuning(conn: RedisConn, prefix: &str, tuning: Tuning) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            tuning,
            acquire: Script::new(script!("acquire.lua")),
            settle: Script::new(script!("settle.lua")),
            pause: Script::new(script!("pause.lua")),
            observe: Script::new(script!("observe.lua")),
        }
    }

    /// The Redis key of one scope.
    pub fn key(&self, scope: &str) -> String {
        batchyard_jobs::keys::limiter(&self.prefix, scope)
    }

    /// Starts an invocation with the grid arguments every script reads first.
    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.tuning.bucket_us()).arg(self.tuning.buckets());
        inv
    }
}

fn push_meter(inv: &mut redis::ScriptInvocation<'_>, m: &MeterParams) {
    inv.arg(m.limit)
        .arg(m.unit_us.to_string())
        .arg(m.capacity_us.to_string());
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2)
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn try_acquire(
        &self,
        specs: &[LimitSpec],
        tokens: u64,
    ) -> Result<Admission, LimiterError> {
        let specs = normalize(specs, tokens)?;
        let mut inv = self.invocation(&self.acquire);
        inv.arg(tokens);
        for spec in &specs {
            inv.key(self.key(&spec.scope));
            let (req, tok) = self.tuning.meters(spec);
            push_meter(&mut inv, &req);
            push_meter(&mut inv, &tok);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
        match reply.as_slice() {
            [1, now, bucket] => Ok(Admission::Granted(Reservation {
                scopes: specs.into_iter().map(|s| (s.scope, s.tpm)).collect(),
                tokens,
                bucket: *bucket,
                granted_at: Duration::from_micros(u64::try_from(*now).unwrap_or_default()),
            })),
            [0, wait] => Ok(Admission::Wait(wait_from_us(*wait as f64))),
            other => Err(LimiterError::Redis(format!(
                "the admission script answered {other:?}"
            ))),
        }
    }

    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError> {
        let diff = token_diff(actual_tokens, reservation.tokens);
        if diff == 0 || reservation.scopes.is_empty() {
            return Ok(());
        }
        let mut inv = self.invocation(&self.settle);
        inv.arg(diff).arg(reservation.bucket);
        for (scope, tpm) in &reservation.scopes {
            let tok = self.tuning.meter(*tpm, self.tuning.token_burst);
            inv.key(self.key(scope))
                .arg(tok.unit_us.to_string())
                .arg(tok.limit);
        }
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    async fn pause(&self, scope: &str, for_: Duration) -> Result<(), LimiterError> {
        let mut inv = self.invocation(&self.pause);
        inv.key(self.key(scope)).arg(micros(for_));
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    async fn observe_remaining(
        &self,
        scope: &str,
        remaining_requests: Option<u64>,
        remaining_tokens: Option<u64>,
        reset: Option<Duration>,
    ) -> Result<(), LimiterError> {
        if remaining_requests.is_none() && remaining_tokens.is_none() {
            return Ok(());
        }
        let text = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        let mut inv = self.invocation(&self.observe);
        inv.key(self.key(scope))
            .arg(text(remaining_requests))
            .arg(text(remaining_tokens))
            .arg(micros(reset.unwrap_or(DEFAULT_REPORT_HOLD)));
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }
}

//! Adequacy evidence shared by every worker through Redis.
//!
//! STUB.

use ::redis::aio::ConnectionManager;
use async_trait::async_trait;

use super::{AdequacyError, AdequacyStore, Observed};

#[derive(Clone)]
pub struct RedisAdequacy {
    _conn: ConnectionManager,
    _max_evidence: f64,
}

impl RedisAdequacy {
    pub fn new(conn: ConnectionManager, max_evidence: f64) -> Self {
        Self {
            _conn: conn,
            _max_evidence: max_evidence,
        }
    }
}

#[async_trait]
impl AdequacyStore for RedisAdequacy {
    async fn observed(&self, _task: &str, _bucket: u32) -> Result<Observed, AdequacyError> {
        Ok(Observed::default())
    }
    async fn record(
        &self,
        _task: &str,
        _bucket: u32,
        _model: &str,
        _passed: bool,
    ) -> Result<(), AdequacyError> {
        Ok(())
    }
    async fn reset(&self, _task: Option<&str>) -> Result<(), AdequacyError> {
        Ok(())
    }
}

//! In-process adequacy evidence, for `run`.
//!
//! STUB.

use async_trait::async_trait;

use super::{AdequacyError, AdequacyStore, Observed};

#[derive(Debug, Default)]
pub struct MemoryAdequacy {
    _max_evidence: f64,
}

impl MemoryAdequacy {
    pub fn new(max_evidence: f64) -> Self {
        Self {
            _max_evidence: max_evidence,
        }
    }
}

#[async_trait]
impl AdequacyStore for MemoryAdequacy {
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

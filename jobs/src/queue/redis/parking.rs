//! The offload lane's parking in Redis: a batch's parked jobs in one hash
//! (`by:{<queue>}:parked:<batch>`, job id → job JSON) beside the stream, moved in and out by
//! one script each, so a job is in the stream or parked, never both and never neither.

use redis::AsyncCommands as _;

use super::{GROUP, RedisQueue};
use crate::error::QueueError;
use crate::job::Job;
use crate::keys;
use crate::queue::Delivery;

fn encode(job: &Job) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(job)
        .map_err(|e| QueueError::Decode(format!("job could not be encoded: {e}")))
}

impl RedisQueue {
    fn parked_key(&self, batch_id: &str) -> String {
        keys::queue_parked(&self.opts.name, batch_id)
    }

    pub(super) async fn park_job(&self, delivery: &Delivery, job: &Job) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .park
            .key(&self.stream)
            .key(self.parked_key(&job.batch_id))
            .arg(GROUP)
            .arg(&delivery.handle)
            .arg(&job.job_id)
            .arg(encode(job)?)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn parked_page(
        &self,
        batch_id: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Job>, u64), QueueError> {
        let mut conn = self.conn.clone();
        let (next, pairs): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
            .arg(self.parked_key(batch_id))
            .arg(cursor)
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut conn)
            .await?;
        let mut jobs = Vec::with_capacity(pairs.len());
        for (job_id, raw) in pairs {
            match serde_json::from_slice::<Job>(&raw) {
                Ok(job) => jobs.push(job),
                // Written by this code only; a bad entry is logged and left for an operator.
                Err(e) => {
                    tracing::error!(batch_id, job_id, error = %e, "a parked job does not decode")
                }
            }
        }
        Ok((jobs, next))
    }

    pub(super) async fn parked_one(
        &self,
        batch_id: &str,
        job_id: &str,
    ) -> Result<Option<Job>, QueueError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.hget(self.parked_key(batch_id), job_id).await?;
        raw.map(|raw| {
            serde_json::from_slice(&raw).map_err(|e| {
                QueueError::Decode(format!("parked job {job_id} does not decode: {e}"))
            })
        })
        .transpose()
    }

    pub(super) async fn parked_len(&self, batch_id: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.hlen(self.parked_key(batch_id)).await?)
    }

    pub(super) async fn release_job(&self, job: &Job) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let moved: i64 = self
            .scripts
            .release
            .key(self.parked_key(&job.batch_id))
            .key(&self.stream)
            .arg(&job.job_id)
            .arg(encode(job)?)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }
}

//! A transaction (MULTI/EXEC) that a Redis Cluster aborted because its slot had just moved
//! (a failover or a reshard), sent again. redis-rs follows `MOVED`/`ASK` for a single command
//! and rebuilds its slot map, but not for the commands queued inside a transaction: EXEC then
//! answers `EXECABORT`, and nothing of it ran. Found by the pipeline scheduler's failover test
//! (`tests/redis_cluster.rs`): a batch created just after a promotion failed with
//! `Transaction aborted: [(Index 0, error: Moved: …)]`.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Pipeline, RedisError, RedisResult, ServerErrorKind, Value};

/// Sends of one transaction at most; the client needs one redirection to learn the new owner.
const TRIES: u32 = 4;

/// Whether `e` is a transaction aborted because a queued command's slot is served elsewhere.
/// Nothing of an aborted transaction ran, so sending it again is safe.
pub(super) fn aborted_by_moved_slot(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(ServerErrorKind::ExecAbort)
        && e.clone().into_server_errors().is_some_and(|errs| {
            errs.iter().any(|(_, s)| {
                matches!(
                    s.kind(),
                    Some(ServerErrorKind::Moved | ServerErrorKind::Ask)
                )
            })
        })
}

/// The first key of a pipeline (its first command's first argument): the client routes the
/// whole pipeline by it, and every key of one of our transactions shares its hash tag.
fn first_key(pipeline: &Pipeline) -> Option<Vec<u8>> {
    match pipeline.cmd_iter().next()?.args_iter().nth(1)? {
        Arg::Simple(key) => Some(key.to_vec()),
        _ => None,
    }
}

/// `pipeline` on the cluster; a transaction aborted by a moved slot is sent again after an
/// `EXISTS` on its first key, which the client follows to the new master (rebuilding its slot
/// map), so the next send goes there.
pub(super) async fn send(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let mut tries = 1;
    loop {
        let result = conn.req_packed_commands(pipeline, offset, count).await;
        let key = match &result {
            Err(e) if pipeline.is_transaction() && tries < TRIES && aborted_by_moved_slot(e) => {
                first_key(pipeline)
            }
            _ => None,
        };
        let Some(key) = key else {
            return result;
        };
        tracing::debug!(tries, "a transaction's slot moved; sending it again");
        // Its answer does not matter: it is asked for the redirection it brings.
        let _ = conn.req_packed_command(redis::cmd("EXISTS").arg(key)).await;
        tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
        tries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_routed_again_by_its_first_key() {
        let mut p = redis::pipe();
        p.atomic()
            .hset("by:batch:{b1}", "state", "queued")
            .del("by:batch:{b1}:settled");
        assert_eq!(first_key(&p).as_deref(), Some(&b"by:batch:{b1}"[..]));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!aborted_by_moved_slot(&refused));
    }
}

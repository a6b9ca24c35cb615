//! A transaction (MULTI/EXEC) that a Redis Cluster refused during a failover or a reshard,
//! sent again. redis-rs follows `MOVED`/`ASK` for a single command (rebuilding its slot map)
//! and waits out `CLUSTERDOWN`, but not inside a transaction: EXEC answers `EXECABORT` with
//! the queued commands' `MOVED` or `CLUSTERDOWN`, and nothing of it ran. Found by the pipeline
//! scheduler's failover test (`tests/redis_cluster.rs`): a batch created just after a
//! promotion failed with `Transaction aborted: [(Index 0, error: Moved: …)]`.
//! `jobs/tests/redis_cluster_conn.rs` creates batches through a failover.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Arg, Pipeline, RedisError, RedisResult, ServerErrorKind, Value};

/// Sends of one transaction at most: one redirection teaches the client the new owner, and a
/// cluster that is down (a master lost, its replica not yet promoted) is waited out with
/// waits of 50 ms doubling up to 1 s, about 3.5 s in all, like the client's own retries.
const TRIES: u32 = 8;

/// Why the cluster refused a transaction (nothing of which ran), when it is worth sending again.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// A slot is served by another master now (the one named, `host:port`): send it there.
    Moved(Option<(String, u16)>),
    /// The cluster is down or busy for a moment: wait, then send again.
    Down,
}

/// `Some` when `e` is a transaction the cluster refused for a moved slot or while down.
pub(crate) fn refusal(e: &RedisError) -> Option<Refusal> {
    let errors = match e.kind() {
        redis::ErrorKind::Server(_) => e.clone().into_server_errors().unwrap_or_default(),
        _ => return None,
    };
    let kinds: Vec<ServerErrorKind> = errors.iter().filter_map(|(_, s)| s.kind()).collect();
    let any = |want: &[ServerErrorKind]| kinds.iter().any(|k| want.contains(k));
    if any(&[ServerErrorKind::Moved, ServerErrorKind::Ask]) {
        // `MOVED <slot> <host>:<port>`
        let to = errors.iter().find_map(|(_, s)| {
            let (host, port) = s.details()?.split_whitespace().nth(1)?.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        });
        Some(Refusal::Moved(to))
    } else if any(&[ServerErrorKind::ClusterDown, ServerErrorKind::TryAgain]) {
        Some(Refusal::Down)
    } else {
        None
    }
}

/// The first key of a pipeline (its first command's first argument): the client routes the
/// whole pipeline by it, and every key of one of our transactions shares its hash tag.
fn first_key(pipeline: &Pipeline) -> Option<Vec<u8>> {
    match pipeline.cmd_iter().next()?.args_iter().nth(1)? {
        Arg::Simple(key) => Some(key.to_vec()),
        _ => None,
    }
}

/// `pipeline` on the cluster. A transaction refused for a moved slot is sent again to the
/// master the refusal names, after an `EXISTS` on its first key, which the client follows there
/// (rebuilding its slot map for what comes next); one refused by a cluster that is down, after
/// a wait.
pub(super) async fn send(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let mut tries = 1;
    let mut to: Option<(String, u16)> = None;
    loop {
        let result = match to.take() {
            Some((host, port)) => {
                let route = SingleNodeRoutingInfo::ByAddress { host, port };
                conn.route_pipeline(pipeline.clone(), offset, count, route)
                    .await
            }
            None => conn.req_packed_commands(pipeline, offset, count).await,
        };
        let refused = match &result {
            Err(e) if pipeline.is_transaction() && tries < TRIES => refusal(e),
            _ => None,
        };
        let Some(refused) = refused else {
            return result;
        };
        tracing::debug!(
            tries,
            ?refused,
            "the cluster refused a transaction; sending it again"
        );
        if let Refusal::Moved(node) = refused {
            if let Some(key) = first_key(pipeline) {
                // Its answer does not matter: it is asked for the redirection it brings.
                let _ = conn.req_packed_command(redis::cmd("EXISTS").arg(key)).await;
            }
            to = node;
        }
        let wait = (50u64 << (tries - 1)).min(1_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
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
        assert_eq!(refusal(&refused), None);
    }
}

//! [`RawConn`]: a plain connection to a test server or cluster, for looking at keys.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed connection to one server, or a cluster connection (the URL's
/// `redis+cluster://` seeds). Commands on many keys (`KEYS`, `DEL`) go to every master.
#[derive(Clone)]
pub enum RawConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RawConn {
    pub async fn open(url: &str) -> Self {
        if let Some(seeds) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = seeds
                .trim_end_matches('/')
                .split(',')
                .map(|s| format!("redis://{s}/"))
                .collect();
            let client = redis::cluster::ClusterClient::new(nodes).expect("valid seed nodes");
            return Self::Cluster(
                client
                    .get_async_connection()
                    .await
                    .expect("a connection to the test cluster"),
            );
        }
        Self::Single(
            redis::Client::open(url)
                .expect("a valid redis URL")
                .get_multiplexed_async_connection()
                .await
                .expect("a connection to the test redis-server"),
        )
    }
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

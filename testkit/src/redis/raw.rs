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
        if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            return Self::open_tls_cluster(rest).await;
        }
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

impl RawConn {
    /// The test kit's `rediss+cluster://[auth@]seeds/?tls_ca_file=<ca.pem>`, trusting that CA.
    async fn open_tls_cluster(rest: &str) -> Self {
        let (seeds, query) = rest.split_once('?').unwrap_or((rest, ""));
        let ca = query
            .strip_prefix("tls_ca_file=")
            .expect("the test cluster's url names its CA file");
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {ca}: {e}"));
        let (auth, hosts) = match seeds.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), seeds),
        };
        let nodes: Vec<String> = hosts
            .trim_end_matches('/')
            .split(',')
            .map(|h| format!("rediss://{auth}{h}/"))
            .collect();
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            .certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            })
            .build()
            .expect("valid seed nodes");
        Self::Cluster(
            client
                .get_async_connection()
                .await
                .expect("a connection to the TLS test cluster"),
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

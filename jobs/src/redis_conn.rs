//! One way to open a Redis connection: auto-reconnecting, with timeouts that treat a slow
//! Redis as weather (retry) rather than death.
//!
//! - `cluster`: `redis+cluster://` URLs, a Redis Cluster client, and SCAN over every master;
//! - `moved`: a transaction the cluster aborted because its slot moved, sent again.
//!
//! URLs: `redis://[:password@]host[:port][/db]`, and `rediss://` for TLS (rustls). A TLS server
//! is checked against the system's root certificates, or, when the URL carries
//! `?tls_ca_file=/path/ca.pem`, against the PEM certificates in that file only: that is how a
//! server with a self-signed or private CA is trusted. Certificate checks are never turned off
//! (`#insecure` is refused). Errors never contain the password.
//!
//! A Redis Cluster is `redis+cluster://[:password@]host:port[,host:port...]` (seed nodes; the
//! client learns the rest), or `rediss+cluster://` for TLS, with the same `tls_ca_file`.
//! Either way callers get a [`RedisConn`], and use it as any redis-rs async connection.

mod cluster;
mod moved;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{QueueError, redact};

pub use cluster::ScanTarget;

/// The query parameter of a `rediss://` URL that names a PEM file of CA certificates to trust.
pub const TLS_CA_PARAM: &str = "tls_ca_file";

/// How long one answer may take: a big enqueue on another queue can stall Redis for a while,
/// and that is not an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one Redis server (a self-reconnecting manager) or to a Redis Cluster
/// (redis-rs routes each command to the master of its key's slot and follows `MOVED`/`ASK`
/// and failovers by itself). Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
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
            Self::Cluster(c) => Box::pin(moved::send(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands of one [`RedisConn::query_each`] call in flight at once on a cluster.
const EACH_AT_ONCE: usize = 64;

/// Whether `e` is a transaction a Redis Cluster refused for a moved slot or while down (a
/// failover): weather, like a connection refused.
pub fn refused_transaction(e: &redis::RedisError) -> bool {
    moved::refusal(e).is_some()
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs commands whose keys may sit in different cluster slots, answers in order: one
    /// pipeline on a single server; on a cluster each command on its own (a few dozen at
    /// once), since a pipeline there may not cross slots.
    pub async fn query_each<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<T>, redis::RedisError> {
        use futures::{StreamExt, TryStreamExt};
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for c in cmds {
                pipe.add_command(c);
            }
            return pipe.query_async(&mut self.clone()).await;
        }
        futures::stream::iter(cmds)
            .map(|c| {
                let mut conn = self.clone();
                async move { c.query_async::<T>(&mut conn).await }
            })
            .buffered(EACH_AT_ONCE)
            .try_collect()
            .await
    }
}

/// Opens a connection that reconnects by itself after drops, restarts and failovers.
pub async fn connect(url: &str) -> Result<RedisConn, QueueError> {
    connect_with_ca(url, None).await
}

/// As [`connect`], trusting the CA certificates (PEM) in `ca_file` for a TLS URL, e.g. from a
/// config key. A `tls_ca_file` in the URL is the same setting; give only one.
pub async fn connect_with_ca(url: &str, ca_file: Option<&Path>) -> Result<RedisConn, QueueError> {
    if let Some(seeds) = cluster::seeds(url)? {
        return cluster::connect(seeds, ca_file)
            .await
            .map(RedisConn::Cluster);
    }
    let client = client(url, ca_file)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let manager = ConnectionManager::new_with_config(client, config).await?;
    Ok(RedisConn::Single(manager))
}

/// For a `redis+cluster://` or `rediss+cluster://` URL: its seed nodes as plain `redis://` /
/// `rediss://` URLs, or why it is malformed (without the password). `None` for other URLs.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    match cluster::seeds(url) {
        Ok(None) => None,
        Ok(Some(seeds)) => Some(Ok(seeds.into_nodes())),
        Err(QueueError::Unavailable(reason)) => Some(Err(reason)),
        Err(e) => Some(Err(e.to_string())),
    }
}

fn bad_url(reason: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("bad redis url: {}", redact(&reason.to_string())))
}

/// The redis-rs client for `url`, with the CA of the URL or of `ca_file` when there is one.
fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, QueueError> {
    let (url, from_url) = split_ca_param(url)?;
    let tls = url.starts_with("rediss://");
    match trusted_ca(tls, from_url, ca_file)? {
        None => redis::Client::open(url.as_str()).map_err(bad_url),
        Some(certs) => redis::Client::build_with_tls(url.as_str(), certs).map_err(bad_url),
    }
}

/// The CA to trust: the URL's `tls_ca_file` or `ca_file` (not both), read and checked to be
/// PEM certificates; `None` when neither is given (the system's roots are used).
fn trusted_ca(
    tls: bool,
    from_url: Option<PathBuf>,
    ca_file: Option<&Path>,
) -> Result<Option<redis::TlsCertificates>, QueueError> {
    let ca_file = match (from_url, ca_file) {
        (Some(_), Some(_)) => {
            return Err(bad_url(format!(
                "the CA file is given twice ({TLS_CA_PARAM} in the url and in the config); keep one"
            )));
        }
        (Some(p), None) => Some(p),
        (None, p) => p.map(Path::to_path_buf),
    };
    let Some(ca_file) = ca_file else {
        return Ok(None);
    };
    if !tls {
        return Err(bad_url(format!(
            "{TLS_CA_PARAM} is only for TLS; use a rediss:// (or rediss+cluster://) url"
        )));
    }
    let pem = std::fs::read(&ca_file).map_err(|e| {
        bad_url(format!(
            "cannot read the CA file {}: {e}; point {TLS_CA_PARAM} at a PEM file of CA certificates",
            ca_file.display()
        ))
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad_url(format!(
            "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca_file.display()
        )));
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Takes `tls_ca_file` out of the URL's query (redis-rs does not know it) and refuses
/// `#insecure`, which would turn certificate checks off.
fn split_ca_param(raw: &str) -> Result<(String, Option<PathBuf>), QueueError> {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        // redis-rs gives the precise reason (and unix socket paths are its business).
        return Ok((raw.to_string(), None));
    };
    if matches!(parsed.scheme(), "rediss" | "valkeys") && parsed.fragment() == Some("insecure") {
        return Err(bad_url(format!(
            "#insecure (no certificate check) is not supported; to trust a self-signed server, \
             add ?{TLS_CA_PARAM}=/path/to/ca.pem"
        )));
    }
    let mut ca = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == TLS_CA_PARAM {
                ca = Some(PathBuf::from(v.as_ref()));
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if ca.is_none() {
        return Ok((raw.to_string(), None));
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), ca))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_ca_parameter_is_taken_out_of_the_url() {
        let (url, ca) =
            split_ca_param("rediss://:pw@127.0.0.1:6380/2?tls_ca_file=/etc/ca.pem&protocol=resp3")
                .unwrap();
        assert_eq!(url, "rediss://:pw@127.0.0.1:6380/2?protocol=resp3");
        assert_eq!(ca, Some(PathBuf::from("/etc/ca.pem")));
        let (url, ca) = split_ca_param("rediss://h:1/?tls_ca_file=%2Ftmp%2Fa%20b.pem").unwrap();
        assert_eq!(url, "rediss://h:1/");
        assert_eq!(ca, Some(PathBuf::from("/tmp/a b.pem")));
        let plain = "redis://:pw@h:1/0";
        assert_eq!(split_ca_param(plain).unwrap(), (plain.to_string(), None));
    }

    #[test]
    fn bad_tls_settings_are_named_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let cases: [(&str, Option<&Path>, &str); 5] = [
            ("rediss://:sekrit@h:1/#insecure", None, "?tls_ca_file="),
            (
                "redis://:sekrit@h:1/?tls_ca_file=/x.pem",
                None,
                "use a rediss://",
            ),
            (
                "rediss://:sekrit@h:1/?tls_ca_file=/no/such/ca.pem",
                None,
                "/no/such/ca.pem",
            ),
            (
                "rediss://:sekrit@h:1/?tls_ca_file=/a.pem",
                Some(Path::new("/b.pem")),
                "twice",
            ),
            ("rediss://:sekrit@h:1/", Some(&junk), "no PEM certificate"),
        ];
        for (url, ca, expected) in cases {
            let e = client(url, ca).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("sekrit"), "{url}: {e}");
        }
    }
}

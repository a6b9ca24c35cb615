//! Redis Cluster: the `redis+cluster://` URL, the client, and SCAN on every master.
//!
//! The client keeps a connection per node, routes each command to the master of its key's
//! slot, follows `MOVED`/`ASK`, and refreshes the slot map when a node fails or a replica is
//! promoted. batchyard keeps every script and transaction on keys of one hash tag (one
//! slot), so nothing here needs to split a command.

use std::path::{Path, PathBuf};

use redis::Value;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use super::{CONNECTION_TIMEOUT, RESPONSE_TIMEOUT, RedisConn, TLS_CA_PARAM, bad_url, trusted_ca};
use crate::error::QueueError;

const SCHEME: &str = "redis+cluster://";
const TLS_SCHEME: &str = "rediss+cluster://";

/// A cluster URL taken apart: one `redis://` / `rediss://` URL per seed node (credentials and
/// query of the cluster URL on each), and the CA file of its `tls_ca_file`.
#[derive(Debug, PartialEq)]
pub(super) struct Seeds {
    tls: bool,
    nodes: Vec<String>,
    ca_file: Option<PathBuf>,
}

impl Seeds {
    pub(super) fn into_nodes(self) -> Vec<String> {
        self.nodes
    }
}

/// `Some` for a `redis+cluster://` or `rediss+cluster://` URL, `None` for any other.
pub(super) fn seeds(url: &str) -> Result<Option<Seeds>, QueueError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix(SCHEME) {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix(TLS_SCHEME) {
        (true, rest)
    } else {
        return Ok(None);
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    if tls && fragment == Some("insecure") {
        return Err(bad_url(format!(
            "#insecure (no certificate check) is not supported; to trust a self-signed server, \
             add ?{TLS_CA_PARAM}=/path/to/ca.pem"
        )));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    // Taken apart here, not by a URL parser: a password may hold characters none accepts.
    let mut ca_file = None;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter_map(|(k, v)| {
            if k == TLS_CA_PARAM {
                ca_file = Some(PathBuf::from(v.as_ref()));
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    let query = if kept.is_empty() {
        String::new()
    } else {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(kept);
        format!("?{}", q.finish())
    };
    // The password may hold a '/', so the host list starts after the last '@'.
    let (auth, hosts_and_path) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = match hosts_and_path.split_once('/') {
        Some((h, p)) => (h, p),
        None => (hosts_and_path, ""),
    };
    if !(path.is_empty() || path == "0") {
        return Err(bad_url(format!(
            "a Redis Cluster has only database 0; drop /{path} from the redis+cluster:// url"
        )));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let mut nodes = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !host.contains(':') {
            return Err(bad_url(format!(
                "the seed node {host} has no port; write host:port (e.g. {host}:6379)"
            )));
        }
        let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
        nodes.push(format!("{scheme}://{auth}{host}/{query}"));
    }
    if nodes.is_empty() {
        return Err(bad_url(
            "a redis+cluster:// url names no seed node; write redis+cluster://host:port[,host:port]",
        ));
    }
    Ok(Some(Seeds {
        tls,
        nodes,
        ca_file,
    }))
}

/// Connects to the cluster through its seed nodes.
pub(super) async fn connect(
    seeds: Seeds,
    ca_file: Option<&Path>,
) -> Result<ClusterConnection, QueueError> {
    let certs = trusted_ca(seeds.tls, seeds.ca_file, ca_file)?;
    let mut builder = ClusterClientBuilder::new(seeds.nodes)
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        // A failover takes the cluster a few node timeouts; waits between tries stay short so
        // a command lands soon after, and the overall response timeout bounds them all.
        .retries(8)
        .min_retry_wait(50)
        .max_retry_wait(1_000)
        .retry_wait_formula(100, 2);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    let client = builder.build().map_err(bad_url)?;
    Ok(client.get_async_connection().await?)
}

/// Where one SCAN runs: the one server, or the master of one cluster slot (each master once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTarget(Option<u16>);

impl RedisConn {
    /// One [`ScanTarget`] per master: SCAN walks the keys of one node only, so a cluster is
    /// scanned master by master.
    pub async fn scan_targets(&self) -> Result<Vec<ScanTarget>, redis::RedisError> {
        let Self::Cluster(conn) = self else {
            return Ok(vec![ScanTarget(None)]);
        };
        let mut conn = conn.clone();
        let slots = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        Ok(first_slot_per_master(&slots)
            .into_iter()
            .map(|slot| ScanTarget(Some(slot)))
            .collect())
    }

    /// One `SCAN cursor MATCH pattern COUNT count` on `target`: the next cursor (0 at the end)
    /// and the keys of this page.
    pub async fn scan_page(
        &self,
        target: ScanTarget,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), redis::RedisError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let value = match (self, target.0) {
            (Self::Cluster(conn), Some(slot)) => {
                let route = Route::new(slot, SlotAddr::Master);
                conn.clone()
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?
            }
            _ => cmd.query_async::<Value>(&mut self.clone()).await?,
        };
        Ok(redis::from_redis_value(value)?)
    }
}

/// From a `CLUSTER SLOTS` answer (`[[start, end, [ip, port, id], replicas...], ...]`), the
/// first slot of each master.
fn first_slot_per_master(slots: &Value) -> Vec<u16> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut seen: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (parts.first(), parts.get(2))
        else {
            continue;
        };
        let id = match master.get(2) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => format!("{:?}{:?}", master.first(), master.get(1)),
        };
        let Ok(start) = u16::try_from(*start) else {
            continue;
        };
        match seen.iter_mut().find(|(m, _)| *m == id) {
            Some((_, first)) => *first = (*first).min(start),
            None => seen.push((id, start)),
        }
    }
    seen.into_iter().map(|(_, slot)| slot).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        let s = seeds("redis+cluster://:pw@h1:7000,h2:7001/")
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            Seeds {
                tls: false,
                nodes: vec!["redis://:pw@h1:7000/".into(), "redis://:pw@h2:7001/".into()],
                ca_file: None,
            }
        );
        let s = seeds("rediss+cluster://u:p/w@h1:7000?tls_ca_file=/ca.pem&protocol=resp3")
            .unwrap()
            .unwrap();
        assert!(s.tls);
        assert_eq!(s.nodes, vec!["rediss://u:p/w@h1:7000/?protocol=resp3"]);
        assert_eq!(s.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(seeds("redis://h:1/").unwrap(), None);
    }

    #[test]
    fn bad_cluster_urls_are_named_without_the_password() {
        for (url, expected) in [
            ("redis+cluster://:sekrit@h1:1/3", "only database 0"),
            ("redis+cluster://:sekrit@h1", "has no port"),
            ("redis+cluster://:sekrit@/", "no seed node"),
            (
                "redis+cluster://:sekrit@h:1/?tls_ca_file=/x.pem",
                "only for TLS",
            ),
        ] {
            let e = match seeds(url) {
                Err(e) => e,
                Ok(Some(s)) => trusted_ca(s.tls, s.ca_file, None).unwrap_err(),
                Ok(None) => panic!("{url} is a cluster url"),
            }
            .to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("sekrit"), "{url}: {e}");
        }
    }

    #[test]
    fn each_master_is_scanned_once() {
        let node = |id: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let range = |a: i64, b: i64, id: &str| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                node(id),
                node("replica"),
            ])
        };
        let slots = Value::Array(vec![
            range(100, 200, "m2"),
            range(0, 99, "m1"),
            range(300, 16383, "m1"),
        ]);
        assert_eq!(first_slot_per_master(&slots), vec![100, 0]);
    }
}
